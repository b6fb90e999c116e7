package esdb

// SetAfterAppend installs a hook between the append to EventStoreDB and the
// guard's commit; an error from it aborts Append there, as a crash would.
func (l *Log) SetAfterAppend(f func() error) { l.afterAppend = f }
