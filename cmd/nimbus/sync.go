package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/nimbus-fs/nimbus/journal"
)

// sync waits for the journal to drain and the attribute index to be
// written, at most timeout (0: until done).
func (m *mountState) sync(timeout time.Duration) (string, error) {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if err := m.journal.WaitIdle(ctx); err != nil {
		return "", err
	}
	// Then the sidecars that let other mounts list the uploaded files'
	// mode and mtime (written shortly after each upload).
	if err := m.fsys.FlushAttrs(ctx); err != nil {
		return "", err
	}
	return "everything is uploaded", nil
}

func cmdSync(args []string, stdout io.Writer) error {
	fset := flag.NewFlagSet("sync", flag.ContinueOnError)
	timeout := fset.Duration("timeout", 0, "give up after this long (0 = wait until done)")
	pos, err := parseCommand(fset, args, stdout, "nimbus sync [MOUNTPOINT] [--timeout DUR]")
	if err != nil {
		return err
	}
	path, err := optionalPath(pos, "MOUNTPOINT")
	if err != nil {
		return err
	}
	var msg string
	if err := callControlReq(path, controlRequest{Op: "sync", Timeout: *timeout}, &msg); err != nil {
		return fmt.Errorf("not everything is uploaded: %w", err)
	}
	fmt.Fprintln(stdout, msg)
	return nil
}

func cmdConflicts(args []string, stdout io.Writer) error {
	path, err := optionalPath(args, "MOUNTPOINT")
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
