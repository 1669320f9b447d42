// Command nimbus mounts an S3 bucket (or a local folder acting as one) as a
// folder, with contents fetched on demand into a bounded disk cache.
//
// The command line is built with cobra: each subcommand lives in its own
// file, whose init() registers its constructor with addCommand, so a new
// command is one new file. This is the only package that exits the process.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
)

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// commands holds the constructors of the subcommands, registered by each
// command's file in its init(). Constructors (not commands) are kept so
// that every run, and every test, gets fresh flag values.
var commands []func() *cobra.Command

// addCommand registers a subcommand's constructor.
func addCommand(newCmd func() *cobra.Command) { commands = append(commands, newCmd) }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// argvKey is the context key of the whole argument list, which a --daemon
// mount runs again in its child.
type argvKey struct{}

// invocation returns the argument list nimbus was run with.
func invocation(cmd *cobra.Command) []string {
	args, _ := cmd.Context().Value(argvKey{}).([]string)
	return args
}

// newRoot builds the nimbus command with every registered subcommand.
func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "nimbus",
		Short: "Mount an S3 bucket (or a local folder acting as one) as a folder",
		Long: `Nimbus mounts an S3 bucket, or a prefix of one, as a folder. Listings show
the whole remote tree at once; file contents are fetched when a program reads
them, into a bounded disk cache. Changes are journaled on disk and uploaded in
the background with conditional writes, so a change made meanwhile elsewhere
is kept as a conflicted copy.`,
		Version:       version(),
		SilenceErrors: true, // run prints errors, as one line
		SilenceUsage:  true,
		// A first argument that is no command is a mistake, not a topic.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Sprintf("unknown command %q", args[0])}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(cmd.ErrOrStderr(), "usage: nimbus COMMAND [flags] [ARGS]\n\n%s", cmd.UsageString())
			return usageError{}
		},
	}
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	for _, newCmd := range commands {
		root.AddCommand(newCmd())
	}
	return root
}

// run executes one command and returns the exit status: 0 ok, 1 failure,
// 2 usage. Errors are printed as one line that says what went wrong and
// what to do.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && fuseRemote(args[0]) {
		// mount.fuse runs `nimbus REMOTE MOUNTPOINT -o …` and waits for it:
		// mount, and return once mounted.
		args = append([]string{"mount", "--daemon"}, args...)
	}
	root := newRoot()
	root.SetArgs(longFlagsWithOneDash(root, args))
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(context.WithValue(context.Background(), argvKey{}, args))
	if err == nil {
		return 0
	}
	name := "nimbus"
	if cmd != nil && cmd != root {
		name = cmd.CommandPath()
	}
	var ue usageError
	if errors.As(err, &ue) {
		if ue.msg != "" {
			fmt.Fprintf(stderr, "%s: %v\n", name, ue.msg)
			fmt.Fprintf(stderr, "run \"nimbus help%s\" for usage\n", strings.TrimPrefix(name, "nimbus"))
		}
		return 2
	}
	fmt.Fprintf(stderr, "%s: %s\n", name, oneLine(err.Error()))
	return 1
}

var oneDashLong = regexp.MustCompile(`^-([a-z][a-z0-9-]+)(=.*)?$`)

// longFlagsWithOneDash rewrites -name to --name where name is a long flag
// of the command being run: nimbus used Go's flag package before, which
// accepts both, and scripts may still say -daemon or -cache-size.
func longFlagsWithOneDash(root *cobra.Command, args []string) []string {
	cmd, _, err := root.Find(args)
	if err != nil || cmd == nil {
		return args
	}
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if m := oneDashLong.FindStringSubmatch(a); m != nil && cmd.Flags().Lookup(m[1]) != nil {
			a = "-" + a
		}
		out = append(out, a)
	}
	return out
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// optionalPath returns the one optional PATH argument, "." by default.
func optionalPath(pos []string, what string) (string, error) {
	switch len(pos) {
	case 0:
		return ".", nil
	case 1:
		return pos[0], nil
	}
	return "", usageError{"give at most one " + what}
}

// argsBetween is a cobra.PositionalArgs that gives a usage error unless
// there are min to max arguments (max < 0: no bound).
func argsBetween(min, max int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < min || (max >= 0 && len(args) > max) {
			return usageError{fmt.Sprintf("expected %s, got %d argument(s)", what, len(args))}
		}
		return nil
	}
}
