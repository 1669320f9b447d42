package main

import (
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nimbus-fs/nimbus/journal"
)

func init() { addCommand(newUnmountCmd) }

func newUnmountCmd() *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:     "unmount MOUNTPOINT [--wait[=DUR]]",
		Aliases: []string{"umount"},
		Short:   "Unmount cleanly",
		Long: `Unmount MOUNTPOINT cleanly, and say how many changes are not uploaded yet:
they stay in the journal of the cache folder and upload at its next mount.
With --wait, upload everything first (at most DUR); if that fails, the mount
stays. If the daemon does not answer, the mount is detached.`,
		Example: `  nimbus unmount ~/bucket
  nimbus unmount --wait ~/bucket        # upload everything first, however long it takes
  nimbus unmount --wait=2m ~/bucket     # at most 2 minutes, else stay mounted`,
		Args: argsBetween(1, 1, "exactly one MOUNTPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmdUnmount(args[0], cmd.Flags().Changed("wait"), wait, cmd.OutOrStdout())
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 0, "upload every change first, waiting at most `DUR` (--wait alone: until done); if not everything is uploaded by then, stay mounted")
	cmd.Flags().Lookup("wait").NoOptDefVal = "0s"
	return cmd
}

func cmdUnmount(mountpoint string, wait bool, timeout time.Duration, stdout io.Writer) error {
	mp := mustAbs(mountpoint)
	if wait {
		var msg string
		err := callControlReq(mp, controlRequest{Op: "sync", Timeout: timeout}, &msg)
		var de daemonError
		if errors.As(err, &de) {
			return fmt.Errorf("%s stays mounted: not everything is uploaded: %w (nimbus unmount without --wait unmounts anyway)", mp, err)
		}
		if err != nil {
			return err
		}
	}
	var rep unmountReport
	if err := callControlReq(mp, controlRequest{Op: "unmount"}, &rep); err == nil {
		if err := waitUnmounted(mp, 30*time.Second); err != nil {
			return err
		}
		fmt.Fprintln(stdout, rep.message(mp))
		return nil
	} else if mounted, _ := isMountpoint(mp); !mounted {
		return fmt.Errorf("%s is not mounted", mp)
	}
	// The daemon is gone or stuck: detach the mount so that the folder is
	// usable again. Nothing is lost: the journal is on disk.
	if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
		if err := runFusermount(mp); err != nil {
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	fmt.Fprintf(stdout, "detached %s (its daemon did not answer); changes not uploaded yet upload at the next mount of its cache folder\n", mp)
	return nil
}

func waitUnmounted(mp string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if mounted, err := isMountpoint(mp); err == nil && !mounted {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s is still mounted after %s: a program may hold files open (see lsof %s)", mp, timeout, mp)
}

// unmountReport is a mount's answer to nimbus unmount: what was left to
// upload once it was unmounted and its uploader stopped.
type unmountReport struct {
	Pending      int    `json:"pending"`
	PendingBytes int64  `json:"pending_bytes"`
	CacheDir     string `json:"cache_dir"`
	// Final is false when the mount took too long to stop to say.
	Final bool `json:"final"`
}

func newUnmountReport(js journal.Stats, cacheDir string) unmountReport {
	return unmountReport{Pending: js.Pending, PendingBytes: js.PendingBytes, CacheDir: cacheDir, Final: true}
}

// pendingNote says what is not uploaded yet and when it will be, or ""
// when everything is.
func (r unmountReport) pendingNote() string {
	switch {
	case !r.Final:
		return "changes not uploaded yet upload at the next mount of the cache folder " + r.CacheDir
	case r.Pending == 0:
		return ""
	}
	changes := "1 change"
	if r.Pending != 1 {
		changes = fmt.Sprintf("%d changes", r.Pending)
	}
	return fmt.Sprintf("%s (%s) not uploaded yet: they upload at the next mount of the cache folder %s",
		changes, formatBytes(r.PendingBytes), r.CacheDir)
}

func (r unmountReport) message(mp string) string {
	if note := r.pendingNote(); note != "" {
		return "unmounted " + mp + "; " + note
	}
	return "unmounted " + mp + "; every change is uploaded"
}

// requestUnmount starts the unmount and waits until the mount has stopped
// and knows what is left to upload.
func (m *mountState) requestUnmount() (unmountReport, error) {
	m.unmountRequested.Store(true)
	select {
	case m.unmountC <- struct{}{}:
	default: // an unmount is already requested
	}
	select {
	case <-m.finalC:
		return m.final, nil
	case <-time.After(30 * time.Second):
		return unmountReport{CacheDir: m.opts.cacheDir}, nil
	}
}

// stopped records what is left to upload once the mount is gone and the
// uploader stopped, says it on stderr (the terminal of a foreground mount,
// the log of a daemon), and gives nimbus unmount a moment to read it.
func (m *mountState) stopped(stderr io.Writer) {
	m.final = newUnmountReport(m.journal.Stats(), m.opts.cacheDir)
	close(m.finalC)
	if note := m.final.pendingNote(); note != "" {
		m.log.Warn("unmounted with changes not uploaded", "pending", m.final.Pending, "pending_bytes", m.final.PendingBytes, "cache", m.opts.cacheDir)
		fmt.Fprintln(stderr, "nimbus: "+note)
	}
	if m.unmountRequested.Load() {
		select {
		case <-m.unmountReplied:
		case <-time.After(5 * time.Second):
		}
	}
}
