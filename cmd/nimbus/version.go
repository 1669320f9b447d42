package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// version describes this build from its module build info: the module
// version ("(devel)" when built from a checkout), and the VCS revision and
// time when the build recorded them (go build does, unless -buildvcs=false).
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "nimbus (unknown version: built without module information)"
	}
	return versionOf(info)
}

// versionOf is version for the build info info.
func versionOf(info *debug.BuildInfo) string {
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, at, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = ", modified"
			}
		}
	}
	out := "nimbus " + v
	if rev != "" {
		out += fmt.Sprintf(" (revision %s%s%s)", rev[:min(12, len(rev))], strings.TrimSuffix(" "+at, " "), dirty)
	}
	return out + ", " + info.GoVersion
}

func init() { addCommand(newManCmd) }

func newManCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "man DIR",
		Short: "Write man pages for nimbus and its commands into DIR",
		Long: `Write a man page (section 1) for nimbus and for each of its commands into
DIR, which is created if needed, for example:
  nimbus man /usr/local/share/man/man1 && mandb`,
		Args: argsBetween(1, 1, "DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			root := cmd.Root()
			root.DisableAutoGenTag = true // pages that do not change with the day they were made
			header := &doc.GenManHeader{Title: "NIMBUS", Section: "1", Source: version()}
			if err := doc.GenManTree(root, header, dir); err != nil {
				return fmt.Errorf("man pages in %s: %w", dir, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote man pages to %s\n", dir)
			return nil
		},
	}
}
