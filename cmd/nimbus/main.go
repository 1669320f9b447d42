// Command nimbus mounts an S3 bucket (or a local folder acting as one) as a
// folder, with contents fetched on demand into a bounded disk cache.
//
// This is the only package that exits the process.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

const usage = `usage:
  nimbus mount [flags] REMOTE MOUNTPOINT   mount s3://BUCKET[/PREFIX] or dir:/PATH
  nimbus unmount MOUNTPOINT                unmount cleanly
  nimbus status [PATH] [--json]            state of the mount, or of each entry of PATH
  nimbus sync [MOUNTPOINT] [--timeout DUR] wait until every change is uploaded
  nimbus conflicts [MOUNTPOINT]            conflicts found while uploading
  nimbus pin PATH… [--no-wait]             keep PATH complete on this machine (offline use)
  nimbus unpin PATH…                       return PATH to on-demand
  nimbus free PATH…                        drop the cached content of PATH now
  nimbus help [COMMAND]                    flags of a command

Run "nimbus mount -h" for the mount flags.
`

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the exit status. Errors are printed
// as one line that says what went wrong and what to do.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "mount":
		err = cmdMount(rest, stdout, stderr)
	case "unmount", "umount":
		err = cmdUnmount(rest, stdout)
	case "status":
		err = cmdStatus(rest, stdout)
	case "sync":
		err = cmdSync(rest, stdout)
	case "conflicts":
		err = cmdConflicts(rest, stdout)
	case "pin":
		err = cmdPin(rest, stdout, stderr)
	case "unpin":
		err = cmdUnpin(rest, stdout)
	case "free":
		err = cmdFree(rest, stdout)
	case "help", "-h", "--help":
		if len(rest) > 0 {
			return run([]string{rest[0], "-h"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usageError{fmt.Sprintf("unknown command %q", cmd)}
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintf(stderr, "nimbus %s: %v\n", cmd, err)
		fmt.Fprintf(stderr, "run \"nimbus help %s\" for usage\n", cmd)
		return 2
	default:
		fmt.Fprintf(stderr, "nimbus %s: %s\n", cmd, oneLine(err.Error()))
		return 1
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// parseCommand parses a command's flags and arguments; -h prints usage
// and the flags to stdout and returns flag.ErrHelp.
func parseCommand(fset *flag.FlagSet, args []string, stdout io.Writer, usageLine string) ([]string, error) {
	fset.SetOutput(io.Discard)
	pos, err := parseInterleaved(fset, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stdout, "usage: "+usageLine)
		fset.SetOutput(stdout)
		fset.PrintDefaults()
	}
	return pos, err
}

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

// parseInterleaved parses flags that may come before, between or after the
// positional arguments, and returns the positional ones.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
