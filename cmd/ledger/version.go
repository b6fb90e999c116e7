package main

import (
	"fmt"
	"io"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func newVersionCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the module version and VCS revision this binary was built from",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			info, ok := debug.ReadBuildInfo()
			if !ok {
				return fmt.Errorf("version: this binary carries no build information")
			}
			writeVersion(c.stdout, info)
			return nil
		},
	}
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
