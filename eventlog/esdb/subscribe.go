package esdb

import (
	"context"
	"errors"
	"math"
	"time"

	esdbclient "github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/backoff"
)

// The projection runner stores the checkpoints of filtered subscriptions
// through eventlog.CheckpointSubscriber.
var _ eventlog.CheckpointSubscriber = (*Log)(nil)

// checkpointIntervalMultiplier spaces a filtered subscription's checkpoints
// to one per 100 search windows (3,200 scanned events with the default
// window of 32) instead of the client's default of one per window: each
// checkpoint the projection runner stores is a transaction.
const checkpointIntervalMultiplier = 100

// resubscribe spaces the resubscriptions after a drop; a subscription that
// delivered something resets it.
var resubscribe = backoff.Policy{Min: 50 * time.Millisecond, Max: 5 * time.Second}

// Subscribe implements eventlog.Log. It is SubscribeCheckpoints without a
// checkpoint callback: checkpoints still move the point it resubscribes from.
func (l *Log) Subscribe(ctx context.Context, from eventlog.Position, h eventlog.Handler) error {
	return l.SubscribeCheckpoints(ctx, from, h, nil)
}

// SubscribeCheckpoints is Subscribe that also hands the subscription's
// checkpoints to cp (nil: none). When the subscription drops it resubscribes
// from the later of the last delivered record and the last checkpoint; it
// returns only when ctx is done, h or cp fails, a record cannot be decoded,
// or the Log is closed.
func (l *Log) SubscribeCheckpoints(ctx context.Context, from eventlog.Position, h eventlog.Handler,
	cp func(ctx context.Context, pos eventlog.Position) error) error {
	s := &subscription{log: l, h: h, cp: cp, resume: from}
	retry := backoff.New(resubscribe)
	for {
		delivered := s.delivered
		err := s.follow(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if stop, ok := errors.AsType[stopError](err); ok {
			return stop.err
		}
		if s.delivered != delivered {
			retry.Reset()
		}
		delay := retry.Next()
		l.logger.Warn("esdb event log: subscription dropped; resubscribing", "from", s.resume.String(), "retry_in", delay.String(), "err", err)
		if err := backoff.Sleep(ctx, delay); err != nil {
			return err
		}
	}
}

// subscribeOptions subscribes to the ledger's events in $all after from.
func (l *Log) subscribeOptions(from eventlog.Position) esdbclient.SubscribeToAllOptions {
	opts := esdbclient.SubscribeToAllOptions{
		From:               esdbclient.Start{},
		Filter:             &esdbclient.SubscriptionFilter{Type: esdbclient.StreamFilterType, Prefixes: []string{l.prefix}},
		CheckpointInterval: checkpointIntervalMultiplier,
	}
	if from != eventlog.Start {
		opts.From = esdbclient.Position{Commit: from.Commit, Prepare: from.Prepare}
	}
	return opts
}

// stopError ends SubscribeCheckpoints instead of resubscribing.
type stopError struct{ err error }

func (e stopError) Error() string { return e.err.Error() }

type subscription struct {
	log       *Log
	h         eventlog.Handler
	cp        func(context.Context, eventlog.Position) error
	resume    eventlog.Position // everything at or before it is delivered (or skipped by a checkpoint)
	delivered int               // batches handed to h, for the back-off
}

// follow runs one server subscription from s.resume until it drops.
func (s *subscription) follow(ctx context.Context) error {
	client, err := s.log.conn()
	if err != nil {
		return stopError{err}
	}
	opts := s.log.subscribeOptions(s.resume)
	sub, err := detach(ctx, s.log, client, func() (*esdbclient.Subscription, error) { return client.SubscribeToAll(leader(ctx), opts) },
		func(sub *esdbclient.Subscription) { _ = sub.Close() })
	if err != nil {
		return classify(err)
	}

	// The reader goroutine lets follow batch what has already arrived.
	events := make(chan *esdbclient.SubscriptionEvent, s.log.batch)
	done := make(chan struct{})
	readerCtx, stopReader := context.WithCancel(ctx)
	go func() {
		defer close(done)
		for {
			ev := sub.Recv()
			select {
			case events <- ev:
			case <-readerCtx.Done():
				return
			}
			if ev.SubscriptionDropped != nil {
				return
			}
		}
	}()
	defer func() {
		stopReader()
		_ = sub.Close() // ends a Recv in progress
		<-done
	}()

	var batch []eventlog.Record
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := s.h(ctx, batch); err != nil {
			return stopError{err}
		}
		s.resume = batch[len(batch)-1].Position
		s.delivered++
		batch = nil
		return nil
	}
	for {
		var ev *esdbclient.SubscriptionEvent
		select {
		case ev = <-events:
		case <-ctx.Done():
			return ctx.Err()
		default:
			// Nothing more has arrived: hand over what has, then wait.
			if err := flush(); err != nil {
				return err
			}
			select {
			case ev = <-events:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		switch {
		case ev.EventAppeared != nil:
			rec := ev.EventAppeared.OriginalEvent()
			last := s.resume
			if len(batch) > 0 {
				last = batch[len(batch)-1].Position
			}
			if !after(position(rec.Position), last) {
				continue // a server that resumed at, not after, our position
			}
			r, ok, err := s.log.decode(rec)
			if err != nil {
				return stopError{err}
			}
			if !ok {
				continue
			}
			if batch = append(batch, r); len(batch) >= s.log.batch {
				if err := flush(); err != nil {
					return err
				}
			}
		case ev.CheckPointReached != nil:
			if err := flush(); err != nil {
				return err
			}
			if err := s.checkpoint(ctx, position(*ev.CheckPointReached)); err != nil {
				return err
			}
		case ev.SubscriptionDropped != nil:
			if err := flush(); err != nil { // what arrived before the drop is good
				return err
			}
			return classify(ev.SubscriptionDropped.Error)
		}
	}
}

// checkpoint moves the resume position forward to pos and reports it. It
// ignores a checkpoint at or before the resume position (live checkpoints
// can repeat, kurrent-io/KurrentDB#3697), one at 2^64-1 (#4892), and one
// that is not the position of an event the subscription skipped: a
// checkpoint past the end of $all (#4975), read afresh from the leader, or
// at a ledger event it has not delivered. The last two would make a
// consumer that stores them skip the events after.
func (s *subscription) checkpoint(ctx context.Context, pos eventlog.Position) error {
	if !s.resume.Less(pos) {
		return nil
	}
	if pos.Commit == math.MaxUint64 || pos.Prepare == math.MaxUint64 {
		s.log.logger.Warn("esdb event log: ignoring an invalid checkpoint from the server", "position", pos)
		return nil
	}
	client, err := s.log.conn()
	if err != nil {
		return stopError{err}
	}
	skipped, err := s.log.skippedAt(ctx, client, pos)
	if errors.Is(err, eventlog.ErrUnavailable) {
		return err // resubscribe
	}
	if err != nil || !skipped {
		s.log.logger.Warn("esdb event log: ignoring a checkpoint that is not at an event the subscription skipped",
			"position", pos, "err", err)
		return nil
	}
	if s.cp != nil {
		if err := s.cp(ctx, pos); err != nil {
			return stopError{err}
		}
	}
	s.resume = pos
	return nil
}
