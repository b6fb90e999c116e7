package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
)

// runVersion is `ledger version`.
func (c *cli) runVersion(context.Context) error {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return errors.New("version: this binary carries no build information")
	}
	writeVersion(c.stdout, info)
	return nil
}

// writeVersion prints one line: module version, revision (marked modified
// when built from a dirty tree), commit time and Go version. Fields the
// build did not record are "unknown".
func writeVersion(w io.Writer, info *debug.BuildInfo) {
	version, revision, when, modified := info.Main.Version, "unknown", "unknown", ""
	if version == "" {
		version = "unknown"
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.time":
			when = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = " (modified)"
			}
		}
	}
	fmt.Fprintf(w, "ledger %s revision %s%s committed %s %s\n", version, revision, modified, when, info.GoVersion)
}
