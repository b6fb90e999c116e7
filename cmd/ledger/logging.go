package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// newLogger builds the process's logger from LEDGER_LOG_LEVEL (debug, info,
// warn, error; default info) and LEDGER_LOG_FORMAT (json, the default, or
// text). Durations are written as strings ("1.5s"), not nanoseconds.
func newLogger(w io.Writer, getenv func(string) string) (*slog.Logger, error) {
	var level slog.Level
	if v := getenv("LEDGER_LOG_LEVEL"); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			return nil, fmt.Errorf("LEDGER_LOG_LEVEL must be debug, info, warn or error, not %q", v)
		}
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: durationsAsStrings}
	switch format := strings.ToLower(getenv("LEDGER_LOG_FORMAT")); format {
	case "", "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("LEDGER_LOG_FORMAT must be json or text, not %q", format)
	}
}

func durationsAsStrings(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}
