package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
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

func init() {
	addCommand(newSyncCmd)
}

func newSyncCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "sync [MOUNTPOINT] [--timeout DUR]",
		Short: "Wait until every change is uploaded",
		Long: `Wait until every change made on the mount is uploaded. Exits 0 once
everything is; otherwise says what is stuck and exits 1.`,
		Args: argsBetween(0, 1, "at most one MOUNTPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmdSync(args, timeout, cmd.OutOrStdout())
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0 = wait until done)")
	return cmd
}

func cmdSync(pos []string, timeout time.Duration, stdout io.Writer) error {
	path, err := optionalPath(pos, "MOUNTPOINT")
	if err != nil {
		return err
	}
	var msg string
	if err := callControlReq(path, controlRequest{Op: "sync", Timeout: timeout}, &msg); err != nil {
		var de daemonError
		if errors.As(err, &de) {
			return syncFailure(path, err)
		}
		return err
	}
	fmt.Fprintln(stdout, msg)
	return nil
}

// syncFailure says in one line why a sync did not finish, from the
// mount's status; the mount's log has the journal's whole account
// (every op, every attempt).
func syncFailure(path string, err error) error {
	var rep statusReport
	if serr := callControl(path, "status", &rep); serr != nil {
		return fmt.Errorf("not everything is uploaded: %s", shorten(oneLine(err.Error()), 150))
	}
	left := fmt.Sprintf("%d change(s) (%s)", rep.Uploads.Pending, formatBytes(rep.Uploads.PendingBytes))
	switch {
	case !rep.Online:
		return fmt.Errorf("not everything is uploaded: %s wait while the store is offline (%s); they upload once it is back",
			left, offlineCause(rep.Error))
	case len(rep.Uploads.Parked) > 0:
		p := rep.Uploads.Parked[0]
		return fmt.Errorf("not everything is uploaded: %d change(s) are stuck, such as %q (%s): see nimbus status",
			len(rep.Uploads.Parked), shorten(p.Key, 40), shorten(p.Err, 60))
	case rep.Uploads.Pending == 0:
		return fmt.Errorf("not everything is uploaded: %s", shorten(oneLine(err.Error()), 150))
	}
	return fmt.Errorf("not everything is uploaded yet: %s still uploading; run nimbus sync again, or with a longer --timeout", left)
}
