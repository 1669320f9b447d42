package main

// nimbus share, versions, restore and deleted: the CLI side. The mount
// does the work (versions.go), reached through its control socket.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nimbus-fs/nimbus/backend"
)

func init() {
	addCommand(newShareCmd)
	addCommand(newVersionsCmd)
	addCommand(newRestoreCmd)
	addCommand(newDeletedCmd)
}

// mountPath returns the absolute form of p, and the nearest path at or
// above it that exists, through which the mount is found (p itself may be
// deleted: restore and deleted name such paths).
func mountPath(p string) (abs, existing string, err error) {
	abs, err = filepath.Abs(p)
	if err != nil {
		return "", "", err
	}
	for existing = abs; ; existing = filepath.Dir(existing) {
		if _, err := os.Lstat(existing); err == nil || existing == "/" {
			return abs, existing, nil
		}
	}
}

// callVersions sends a version request about abs.
func callVersions(p, op string, args, result any) (string, error) {
	abs, existing, err := mountPath(p)
	if err != nil {
		return "", err
	}
	req := controlRequest{Op: op, Path: abs}
	switch op {
	case "share":
		req.Timeout = shareSyncWait // --sync may wait for an upload
	case "restore":
		req.Timeout = restoreWait
	}
	if args != nil {
		if req.Args, err = json.Marshal(args); err != nil {
			return "", err
		}
	}
	err = callControlReq(existing, req, result)
	if errors.Is(err, errNotInMount) && existing != abs {
		// The message would name the folder found, not the path given.
		return abs, fmt.Errorf("%s is not inside a nimbus mount (%s, the nearest folder that exists, is not one): give a path in a mount", abs, existing)
	}
	return abs, err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newShareCmd() *cobra.Command {
	expires := daysValue(backend.MaxPresignExpiry)
	var asJSON, sync bool
	cmd := &cobra.Command{
		Use:   "share PATH [--expires DUR] [--json] [--sync]",
		Short: "Print a download link to a file",
		Long: `Print a presigned download link (a URL anyone holding it can use) to a
file, valid for --expires (at most 7 days, the limit of S3's signatures).
The link is printed on stdout only, and never logged. A file whose latest
change is not uploaded yet is refused, unless --sync uploads it first.`,
		Args: argsBetween(1, 1, "one PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := time.Duration(expires)
			if d <= 0 || d > backend.MaxPresignExpiry {
				return usageError{fmt.Sprintf("--expires %s: %v: use --expires 7d or less", expires.String(), backend.ErrPresignExpiry)}
			}
			var res shareResult
			if _, err := callVersions(args[0], "share", shareArgs{Expires: d, Sync: sync}, &res); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.URL)
			return nil
		},
	}
	cmd.Flags().Var(&expires, "expires", "how long the link works (`duration`: 7d, 24h, 30m; at most 7d)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the URL and its expiry as JSON")
	cmd.Flags().BoolVar(&sync, "sync", false, "upload the file's pending changes first")
	return cmd
}

func newVersionsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "versions PATH [--json]",
		Short: "List a file's versions, newest first",
		Long: `List the versions a versioned bucket keeps of a file, newest first: the
version ID (for nimbus restore --version), when it was written, its size,
which one is current, and deletes.

In a point-in-time mount (nimbus mount --at TIME), it lists the history as
it stood at TIME: the versions written up to TIME, and "current" marks the
one the view shows, not the one current now. Run it in a live mount to see
later versions.`,
		Args: argsBetween(1, 1, "one PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var vs []versionEntry
			if _, err := callVersions(args[0], "versions", nil, &vs); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), vs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tMODIFIED\tSIZE\t")
			for _, v := range vs {
				size, note := formatBytes(v.Size), ""
				if v.Deleted {
					size, note = "-", "deleted"
				}
				if v.Current {
					note = strings.TrimSpace(note + " current")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.ID, v.Modified.Local().Format("2006-01-02 15:04:05"), size, note)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: [{id, modified, size, current, deleted}]")
	return cmd
}

func newRestoreCmd() *cobra.Command {
	var version string
	cmd := &cobra.Command{
		Use:   "restore PATH [--version ID]",
		Short: "Make an earlier version current, or bring back what was deleted",
		Long: `With --version, make that version of the file current again (a server-side
copy, conditional on the version now current: if the file changed meanwhile,
nothing is changed). Without it, bring back what was deleted at PATH: a file,
or everything deleted under a folder, each as its last version before the
delete, never over a file that exists again. Restores are journaled like
any other change: offline they run once the store is back.

A point-in-time mount (nimbus mount --at TIME) is read-only: there, restore
names the command to run on a writable mount instead.`,
		Args: argsBetween(1, 1, "one PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var res restoreResult
			abs, err := callVersions(args[0], "restore", restoreArgs{Version: version}, &res)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch {
			case res.Queued:
				fmt.Fprintf(out, "%s: the restore is journaled and runs once the store is reachable (see nimbus status)\n", abs)
			case version != "":
				fmt.Fprintf(out, "restored %s to version %s\n", abs, version)
			default:
				fmt.Fprintf(out, "restored %d file(s) and folder(s) at %s\n", len(res.Restored), abs)
			}
			if len(res.Refused) > 0 {
				paths := make([]string, 0, len(res.Refused))
				for p := range res.Refused {
					paths = append(paths, p)
				}
				sort.Strings(paths)
				for _, p := range paths {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", p, res.Refused[p])
				}
				return errors.New("some paths were not restored (above)")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&version, "version", "", "the version `ID` to restore (see nimbus versions)")
	return cmd
}

func newDeletedCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "deleted [DIR] [--json]",
		Short: "List what can be restored under a folder",
		Long: `List the files deleted under DIR (default: the current folder) that
nimbus restore can bring back, with the time of each delete. On a bucket
without versions, each delete of a path is listed (newest first), and
restore brings back the newest. In a point-in-time mount (--at TIME), it
lists what had been deleted by TIME.`,
		Args: argsBetween(0, 1, "at most one DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := optionalPath(args, "DIR")
			if err != nil {
				return err
			}
			var ds []deletedEntry
			if _, err := callVersions(dir, "deleted", nil, &ds); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), ds)
			}
			if len(ds) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing deleted to restore")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DELETED\tSIZE\tPATH")
			for _, d := range ds {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", d.Deleted.Local().Format("2006-01-02 15:04:05"), formatBytes(d.Size), d.Path)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: [{path, deleted, version, size}]")
	return cmd
}
