package main

import (
	"fmt"
	"time"
)

// dateLayout is the plain-date form time flags accept beside RFC 3339.
const dateLayout = "2006-01-02"

// parseTimeFlag reads a time flag's value: an RFC 3339 time, or a plain date
// (UTC midnight; with endOfDay, the last instant of that day, so that an
// upper bound given as a date includes the day). An empty value is the zero
// time. Errors are usage errors naming the flag.
func parseTimeFlag(flag, value string, endOfDay bool) (time.Time, error) {
	if value == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, value); err == nil {
		return t, nil
	}
	d, err := time.Parse(dateLayout, value)
	if err != nil {
		return time.Time{}, usageError(fmt.Sprintf("%s: %q is neither an RFC 3339 time (2026-11-01T09:30:00Z) nor a date (2026-11-01)", flag, value))
	}
	if endOfDay {
		d = d.AddDate(0, 0, 1).Add(-time.Nanosecond)
	}
	return d, nil
}
