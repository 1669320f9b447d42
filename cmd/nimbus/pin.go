package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/vfs"
)

// relPath turns an absolute path inside the mount into the path below its
// root ("" = the root).
func (m *mountState) relPath(abs string) (string, error) {
	abs = filepath.Clean(abs)
	if abs == m.opts.mountpoint {
		return "", nil
	}
	rel, ok := strings.CutPrefix(abs, m.opts.mountpoint+"/")
	if !ok {
		return "", fmt.Errorf("%s is not inside the mount %s", abs, m.opts.mountpoint)
	}
	return rel, nil
}

func (m *mountState) pin(path string) (any, error) {
	rel, err := m.relPath(path)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return "ok", m.fsys.Pin(ctx, rel)
}

func (m *mountState) unpin(path string) (any, error) {
	rel, err := m.relPath(path)
	if err != nil {
		return nil, err
	}
	inherited, err := m.fsys.Unpin(rel)
	if err != nil {
		return nil, err
	}
	if inherited {
		return fmt.Sprintf("%s stays pinned: a folder above it is pinned", path), nil
	}
	return "", nil
}

func (m *mountState) free(path string, unpin bool) (any, error) {
	rel, err := m.relPath(path)
	if err != nil {
		return nil, err
	}
	freed, unpinned, err := m.fsys.Free(rel, unpin)
	if err != nil {
		return nil, err
	}
	msg := fmt.Sprintf("freed %s under %s", formatBytes(freed), path)
	if len(unpinned) > 0 {
		msg = fmt.Sprintf("unpinned %d path(s) and %s", len(unpinned), msg)
	}
	return msg, nil
}

func init() {
	addCommand(newPinCmd)
	addCommand(newUnpinCmd)
	addCommand(newFreeCmd)
}

func newPinCmd() *cobra.Command {
	var noWait bool
	cmd := &cobra.Command{
		Use:   "pin PATH… [--no-wait]",
		Short: "Keep PATH complete on this machine (offline use)",
		Long: `Pin each PATH: download all of its content, with a progress bar, keep it
downloaded (never evicted), and fetch new remote files under it at each poll.`,
		Args: argsBetween(1, -1, "at least one PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmdPin(args, noWait, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return at once; the download goes on in the background")
	return cmd
}

func newUnpinCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unpin PATH…",
		Short: "Return PATH to on-demand",
		Long:  `Unpin each PATH: its cached content becomes evictable again.`,
		Args:  argsBetween(1, -1, "at least one PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return eachPath("unpin", args, cmd.OutOrStdout())
		},
	}
}

func newFreeCmd() *cobra.Command {
	var unpin bool
	cmd := &cobra.Command{
		Use:   "free PATH… [--unpin]",
		Short: "Drop the cached content of PATH now",
		Long: `Drop the cached clean content of each PATH now. Changes not uploaded yet are
never dropped. A pinned PATH (or one holding pins) is refused, since its
content is kept for offline use; --unpin unpins it first.`,
		Args: argsBetween(1, -1, "at least one PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			op := "free"
			if unpin {
				op = "free-unpin"
			}
			return eachPath(op, args, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&unpin, "unpin", false, "unpin PATH (and pins under it) first, then free it")
	return cmd
}

// absPaths makes each PATH absolute and checks that it exists.
func absPaths(pos []string) ([]string, error) {
	paths := make([]string, len(pos))
	for i, p := range pos {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		if _, err := os.Lstat(abs); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		paths[i] = abs
	}
	return paths, nil
}

func cmdPin(pos []string, noWait bool, stdout, stderr io.Writer) error {
	paths, err := absPaths(pos)
	if err != nil {
		return err
	}
	for _, p := range paths {
		if err := callControlReq(p, controlRequest{Op: "pin", Path: p}, nil); err != nil {
			return fmt.Errorf("pin %s: %w", p, err)
		}
	}
	if noWait {
		fmt.Fprintf(stdout, "pinned %d path(s); downloading in the background (see nimbus status)\n", len(paths))
		return nil
	}
	for _, p := range paths {
		if err := waitPin(p, stderr); err != nil {
			return err
		}
	}
	return nil
}

// waitPin shows the progress of the pin of path until it completes.
func waitPin(path string, w io.Writer) error {
	tty := isTerminal(w)
	start := time.Now()
	var last string
	for {
		var pins []vfs.PinProgress
		if err := callControl(path, "pins", &pins); err != nil {
			return err
		}
		var p *vfs.PinProgress
		for i := range pins {
			if "/"+pins[i].Path == pinSuffix(path, pins[i].Path) {
				p = &pins[i]
			}
		}
		if p == nil {
			return fmt.Errorf("pin %s: the mount does not list it (unpinned meanwhile?)", path)
		}
		line := progressLine(path, p, time.Since(start))
		if tty {
			fmt.Fprintf(w, "\r\033[K%s", line)
		} else if line != last && (!p.Running || time.Since(start) > 2*time.Second) {
			fmt.Fprintln(w, line)
		}
		last = line
		if !p.Running && (p.Complete || p.Err != "") {
			if tty {
				fmt.Fprintln(w)
			}
			if p.Err != "" {
				return fmt.Errorf("pin %s stopped: %s (what was downloaded stays; run nimbus pin again to resume)", path, p.Err)
			}
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// pinSuffix returns "/"+rel if path ends with it, for matching a pin to
// the path the user gave.
func pinSuffix(path, rel string) string {
	if rel == "" || strings.HasSuffix(path, "/"+rel) {
		return "/" + rel
	}
	return ""
}

// progressLine is one line of the progress bar: files, bytes, rate, ETA.
func progressLine(path string, p *vfs.PinProgress, elapsed time.Duration) string {
	const width = 24
	counting := p.Running && p.Files == 0 // still listing what to fetch
	frac := 0.0
	switch {
	case p.Bytes > 0:
		frac = float64(p.BytesDone) / float64(p.Bytes)
	case !counting && !p.Running:
		frac = 1 // nothing to fetch: done
	}
	filled := min(int(frac*width), width)
	bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
	rate := float64(p.BytesDone) / max(elapsed.Seconds(), 0.001)
	state := "done"
	switch {
	case counting:
		return fmt.Sprintf("%s [%s] listing what to download…", path, bar)
	case p.Running && rate > 0:
		left := time.Duration(float64(p.Bytes-p.BytesDone) / rate * float64(time.Second))
		state = "ETA " + left.Round(time.Second).String()
	case p.Running:
		state = "ETA -"
	case p.Err != "":
		state = "stopped"
	}
	return fmt.Sprintf("%s [%s] %d/%d files, %s/%s, %s/s, %s", path, bar, p.FilesDone, p.Files,
		formatBytes(p.BytesDone), formatBytes(p.Bytes), formatBytes(int64(rate)), state)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// eachPath sends op for each PATH and prints what the mount says.
func eachPath(op string, pos []string, stdout io.Writer) error {
	paths, err := absPaths(pos)
	if err != nil {
		return err
	}
	for _, p := range paths {
		var msg string
		if err := callControlReq(p, controlRequest{Op: op, Path: p}, &msg); err != nil {
			if strings.Contains(err.Error(), p) {
				return err
			}
			return fmt.Errorf("%s: %w", p, err)
		}
		if msg != "" {
			fmt.Fprintln(stdout, msg)
		}
	}
	return nil
}
