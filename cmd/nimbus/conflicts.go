package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/nimbus-fs/nimbus/journal"
)

func init() {
	addCommand(newConflictsCmd)
}

func newConflictsCmd() *cobra.Command {
	var clear, all bool
	cmd := &cobra.Command{
		Use:   "conflicts [MOUNTPOINT] | conflicts --clear PATH... | conflicts --clear --all MOUNTPOINT",
		Short: "Conflicts found while uploading, and clearing them",
		Long: `List the files that were changed both here and elsewhere, and where this
machine's version went (its conflicted copy).

A conflict leaves the list by itself once its conflicted copy no longer
exists under its name (deleted, or renamed away). --clear PATH removes the
conflicts of PATH (the file or its conflicted copy) from the list; with --all,
every conflict of the mount at MOUNTPOINT. Clearing touches no file.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case all && !clear:
				return usageError{"--all goes with --clear"}
			case clear && all:
				if len(args) != 1 {
					return usageError{"--clear --all needs the MOUNTPOINT, and nothing else"}
				}
				return cmdClearConflicts(args, true, cmd.OutOrStdout())
			case clear:
				if len(args) == 0 {
					return usageError{"--clear needs the PATH of a file or of its conflicted copy (or --all)"}
				}
				return cmdClearConflicts(args, false, cmd.OutOrStdout())
			}
			if len(args) > 1 {
				return usageError{"give at most one MOUNTPOINT"}
			}
			return cmdConflicts(args, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&clear, "clear", false, "remove the conflicts of the PATHs from the list (the files stay)")
	cmd.Flags().BoolVar(&all, "all", false, "with --clear: every conflict of the mount")
	return cmd
}

func cmdConflicts(pos []string, stdout io.Writer) error {
	path, err := optionalPath(pos, "MOUNTPOINT")
	if err != nil {
		return err
	}
	var conflicts []journal.Conflict
	if err := callControl(path, "conflicts", &conflicts); err != nil {
		return err
	}
	if len(conflicts) == 0 {
		fmt.Fprintln(stdout, "no conflicts")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tFILE\tYOUR VERSION\tWHY")
	for _, c := range conflicts {
		copyKey := c.ConflictKey
		if copyKey == "" {
			copyKey = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Time.Local().Format("2006-01-02 15:04:05"), c.Key, copyKey, c.Reason)
	}
	return tw.Flush()
}

// clearArgs is the request to clear conflicts: of the absolute Paths, or
// All of the mount (Paths then holds its mountpoint).
type clearArgs struct {
	Paths []string `json:"paths,omitempty"`
	All   bool     `json:"all,omitempty"`
}

func cmdClearConflicts(pos []string, all bool, stdout io.Writer) error {
	if all {
		abs, err := filepath.Abs(pos[0])
		if err != nil {
			return err
		}
		return sendClear(abs, clearArgs{Paths: []string{abs}, All: true}, stdout)
	}
	for _, p := range pos {
		abs, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		// The file may be gone: the mount is found from what exists.
		if err := sendClear(existingAncestor(abs), clearArgs{Paths: []string{abs}}, stdout); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	return nil
}

func sendClear(at string, args clearArgs, stdout io.Writer) error {
	raw, err := json.Marshal(args)
	if err != nil {
		return err
	}
	var cleared []journal.Conflict
	if err := callControlReq(at, controlRequest{Op: "clear-conflicts", Args: raw}, &cleared); err != nil {
		return err
	}
	for _, c := range cleared {
		fmt.Fprintf(stdout, "cleared the conflict of %s\n", c.Key)
	}
	if len(cleared) == 0 && args.All {
		fmt.Fprintln(stdout, "no conflicts")
	}
	return nil
}

// existingAncestor is path, or the nearest folder above it that exists.
func existingAncestor(path string) string {
	for {
		if _, err := os.Lstat(path); err == nil || !errors.Is(err, os.ErrNotExist) {
			return path
		}
		parent := filepath.Dir(path)
		if parent == path {
			return path
		}
		path = parent
	}
}

// conflicts lists the recorded conflicts, first clearing those whose
// conflicted copy is known to be gone from its name (deleted or renamed
// away, on this machine or elsewhere).
func (m *mountState) conflicts() []journal.Conflict {
	all := m.journal.Conflicts()
	var gone []string
	for _, c := range all {
		since := c.Recorded
		if since.IsZero() {
			since = c.Time
		}
		if c.ConflictKey != "" && m.fsys.CopyGone(c.ConflictKey, since) {
			gone = append(gone, c.ConflictKey)
		}
	}
	if len(gone) == 0 {
		return all
	}
	if _, err := m.journal.ClearConflicts(gone...); err != nil {
		m.log.Warn("clear conflicts whose copy is gone", "err", err)
		return all
	}
	return m.journal.Conflicts()
}

func (m *mountState) clearConflicts(raw json.RawMessage) (any, error) {
	var args clearArgs
	if err := json.Unmarshal(raw, &args); err != nil {
		return nil, fmt.Errorf("bad clear-conflicts request: %w", err)
	}
	if args.All {
		if len(args.Paths) != 1 || filepath.Clean(args.Paths[0]) != m.opts.mountpoint {
			return nil, fmt.Errorf("--all clears a whole mount: give its mountpoint %s, not a path inside it", m.opts.mountpoint)
		}
		cleared, err := m.journal.ClearConflicts()
		return nonNil(cleared), err
	}
	var keys []string
	for _, p := range args.Paths {
		rel, err := m.relPath(p)
		if err != nil {
			return nil, err
		}
		if rel == "" || strings.HasSuffix(rel, "/") {
			return nil, fmt.Errorf("%s is not a file", p)
		}
		keys = append(keys, m.fsys.Key(rel))
	}
	cleared, err := m.journal.ClearConflicts(keys...)
	if err == nil && len(cleared) == 0 {
		return nil, errors.New("no conflict is recorded for it (see nimbus conflicts)")
	}
	return nonNil(cleared), err
}

func nonNil(cs []journal.Conflict) []journal.Conflict {
	if cs == nil {
		return []journal.Conflict{}
	}
	return cs
}
