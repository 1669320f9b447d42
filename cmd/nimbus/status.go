package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
	"github.com/nimbus-fs/nimbus/vfs"
)

// statusReport is what nimbus status --json prints.
type statusReport struct {
	Remote     string             `json:"remote"`
	Store      string             `json:"store"`
	Mountpoint string             `json:"mountpoint"`
	CacheDir   string             `json:"cache_dir"`
	PID        int                `json:"pid"`
	Started    time.Time          `json:"started"`
	Online     bool               `json:"online"`
	Since      time.Time          `json:"online_since"`
	Error      string             `json:"offline_error,omitempty"`
	Cache      cacheReport        `json:"cache"`
	Uploads    uploadReport       `json:"uploads"`
	Conflicts  []journal.Conflict `json:"conflicts"`
	Pins       []vfs.PinProgress  `json:"pins"`
	Requests   map[string]int64   `json:"requests"`
	Skipped    []cache.Skipped    `json:"skipped"`
	Options    optionsReport      `json:"options"`
	// Passthrough: whether reads of files entirely in the cache bypass
	// nimbus (on, or off and why), and how many opens did.
	Passthrough vfs.PassthroughStatus `json:"passthrough"`
}

// optionsReport is what the mount was started with, for checking that
// flags and -o options took effect.
type optionsReport struct {
	DirTTL      string `json:"dir_ttl"`
	Poll        string `json:"poll"`
	ReadOnly    bool   `json:"read_only"`
	AllowOther  bool   `json:"allow_other"`
	LogFile     string `json:"log_file"` // "" = stderr
	MetricsAddr string `json:"metrics_addr,omitempty"`
}

type uploadReport struct {
	Pending      int                `json:"pending"`
	PendingBytes int64              `json:"pending_bytes"`
	Oldest       time.Time          `json:"oldest,omitzero"`
	Uploading    int                `json:"uploading"`
	Parked       []journal.Parked   `json:"parked"`
	Retrying     []journal.Retrying `json:"retrying"`
}

type cacheReport struct {
	Pinned    int64 `json:"pinned"` // not counted in Used: pinned data is never evicted
	Used      int64 `json:"used"`
	Capacity  int64 `json:"capacity"`
	Blocks    int64 `json:"blocks"`
	Hits      int64 `json:"hits"`
	Misses    int64 `json:"misses"`
	Evictions int64 `json:"evictions"`
}

func (m *mountState) status() (*statusReport, error) {
	hs := m.health.State()
	bs := m.blocks.Stats()
	js := m.journal.Stats()
	conflicts := m.conflicts()
	if conflicts == nil {
		conflicts = []journal.Conflict{}
	}
	pins, err := m.fsys.PinStatus()
	if err != nil {
		return nil, err
	}
	skipped, err := m.tree.Skipped()
	if err != nil {
		return nil, err
	}
	if skipped == nil {
		skipped = []cache.Skipped{}
	}
	return &statusReport{
		Remote:     m.opts.remote.String(),
		Store:      m.health.String(),
		Mountpoint: m.opts.mountpoint,
		CacheDir:   m.opts.cacheDir,
		PID:        os.Getpid(),
		Started:    m.started,
		Online:     hs.Online,
		Since:      hs.Since,
		Error:      hs.Error,
		Pins:       pins,
		Cache: cacheReport{
			Pinned: bs.Pinned,
			Used:   bs.Used, Capacity: bs.Capacity, Blocks: bs.Blocks,
			Hits: bs.Hits, Misses: bs.Misses, Evictions: bs.Evictions,
		},
		Uploads: uploadReport{
			Pending: js.Pending, PendingBytes: js.PendingBytes, Oldest: js.Oldest,
			Uploading: js.Uploading, Parked: js.Parked, Retrying: js.Retrying,
		},
		Conflicts:   conflicts,
		Requests:    m.counts.Snapshot(),
		Skipped:     skipped,
		Passthrough: m.fsys.PassthroughStatus(),
		Options: optionsReport{
			DirTTL: m.opts.dirTTL.String(), Poll: m.opts.poll.String(),
			ReadOnly: m.opts.readOnly, AllowOther: m.opts.allowOther,
			LogFile: m.opts.logPath(daemonChild()), MetricsAddr: m.opts.metricsAddr,
		},
	}, nil
}

func init() { addCommand(newStatusCmd) }

func newStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status [PATH] [--json]",
		Short: "State of the mount, or of each entry of PATH",
		Long: `Without PATH, or with a mountpoint: online or offline, pending uploads,
conflicts, cache use, pins and their progress, request counts. With a PATH
inside a mount: the state of PATH and, for a folder, of each entry (online,
partial, local, pinned, dirty, uploading, conflict).`,
		Args: argsBetween(0, 1, "at most one PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmdStatus(args, asJSON, cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func cmdStatus(pos []string, asJSON bool, stdout io.Writer) error {
	path, err := optionalPath(pos, "PATH")
	if err != nil {
		return err
	}
	var rep statusReport
	if err := callControl(path, "status", &rep); err != nil {
		return err
	}
	if len(pos) == 1 && filepath.Clean(mustAbs(path)) != rep.Mountpoint {
		return printEntryStates(stdout, path, asJSON)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printStatus(stdout, &rep)
	return nil
}

func mustAbs(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return abs
}

func printStatus(w io.Writer, r *statusReport) {
	state := "online"
	if !r.Online {
		state = fmt.Sprintf("OFFLINE since %s (%s); changes are queued until the store is back", r.Since.Format(time.TimeOnly), offlineCause(r.Error))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "remote:\t%s (%s)\n", r.Remote, r.Store)
	fmt.Fprintf(tw, "mountpoint:\t%s (pid %d, up %s)\n", r.Mountpoint, r.PID, time.Since(r.Started).Round(time.Second))
	fmt.Fprintf(tw, "state:\t%s\n", state)
	fmt.Fprintf(tw, "cache:\t%s used of %s, plus %s pinned (%d blocks, %d hits, %d misses, %d evictions) in %s\n",
		formatBytes(r.Cache.Used), formatBytes(r.Cache.Capacity), formatBytes(r.Cache.Pinned), r.Cache.Blocks, r.Cache.Hits, r.Cache.Misses, r.Cache.Evictions, r.CacheDir)
	for _, p := range r.Pins {
		fmt.Fprintf(tw, "pinned:\t%s\n", progressLine(filepath.Join(r.Mountpoint, p.Path), &p, time.Since(p.Started)))
	}
	up := fmt.Sprintf("%d pending (%s)", r.Uploads.Pending, formatBytes(r.Uploads.PendingBytes))
	if !r.Uploads.Oldest.IsZero() {
		up += fmt.Sprintf(", oldest from %s", r.Uploads.Oldest.Local().Format(time.DateTime))
	}
	if r.Uploads.Uploading > 0 {
		up += fmt.Sprintf(", %d uploading", r.Uploads.Uploading)
	}
	fmt.Fprintf(tw, "uploads:\t%s\n", up)
	fmt.Fprintf(tw, "passthrough:\t%s\n", passthroughLine(r.Passthrough))
	for _, p := range r.Uploads.Parked {
		fmt.Fprintf(tw, "\t  STUCK %s: %s (since %s; kept, retried at next mount)\n", p.Key, p.Err, p.Since.Local().Format(time.DateTime))
	}
	for _, p := range r.Uploads.Retrying {
		fmt.Fprintf(tw, "\t  retrying %s (%d attempts): %s\n", p.Key, p.Attempts, p.Err)
	}
	if len(r.Conflicts) > 0 {
		fmt.Fprintf(tw, "conflicts:\t%d (see nimbus conflicts)\n", len(r.Conflicts))
	}
	ops := make([]string, 0, len(r.Requests))
	for op, n := range r.Requests {
		if strings.HasPrefix(op, "bytes_") {
			continue
		}
		ops = append(ops, fmt.Sprintf("%s %d", op, n))
	}
	sort.Strings(ops)
	bytes := fmt.Sprintf("%s in, %s out", formatBytes(r.Requests["bytes_in"]), formatBytes(r.Requests["bytes_out"]))
	if c := r.Requests["bytes_copied"]; c > 0 {
		// Unchanged parts of edited files, copied by the store itself.
		bytes += fmt.Sprintf(", %s copied server-side", formatBytes(c))
	}
	fmt.Fprintf(tw, "requests:\t%s; %s\n", strings.Join(ops, ", "), bytes)
	if len(r.Skipped) > 0 {
		fmt.Fprintf(tw, "skipped:\t%d keys that cannot be shown as files:\n", len(r.Skipped))
		for _, s := range r.Skipped {
			fmt.Fprintf(tw, "\t  %q: %s\n", s.Key, s.Reason)
		}
	}
	tw.Flush()
}

// entryState is one line of nimbus status PATH.
type entryState struct {
	Path  string `json:"path"`
	State string `json:"state"`
}

// printEntryStates prints the state of PATH, and of each entry if it is a
// folder, from the user.nimbus.state xattr.
func printEntryStates(w io.Writer, path string, asJSON bool) error {
	paths := []string{path}
	if st, err := os.Stat(path); err != nil {
		return err
	} else if st.IsDir() {
		names, err := readDirNames(path)
		if err != nil {
			return err
		}
		for _, n := range names {
			paths = append(paths, filepath.Join(path, n))
		}
	}
	var states []entryState
	for _, p := range paths {
		buf := make([]byte, 64)
		n, err := unix.Getxattr(p, "user.nimbus.state", buf)
		if err != nil {
			return fmt.Errorf("state of %s: %w", p, err)
		}
		states = append(states, entryState{Path: p, State: string(buf[:n])})
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(states)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range states {
		fmt.Fprintf(tw, "%s\t%s\n", s.State, s.Path)
	}
	return tw.Flush()
}

func readDirNames(path string) ([]string, error) {
	d, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	sort.Strings(names)
	return names, err
}

// offlineCause is the part of the error that made a mount go offline that
// says why, short enough for one line: "backend unreachable: connection
// refused" rather than the request that met it. status --json and the log
// have the whole error.
func offlineCause(err string) string {
	if i := strings.Index(err, backend.ErrOffline.Error()); i >= 0 {
		err = err[i:]
	}
	return shorten(err, 100)
}

// shorten cuts s to at most n runes, marking the cut with "…".
func shorten(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

// passthroughLine says whether reads of cached files bypass nimbus.
func passthroughLine(p vfs.PassthroughStatus) string {
	if !p.On {
		return "off: " + p.Reason + "; every read goes through nimbus"
	}
	line := fmt.Sprintf("on: files entirely in the cache are read straight from it (%d opens, %d open now)", p.Opens, p.Open)
	if p.Busy > 0 {
		line += fmt.Sprintf("; %d changes refused while a file was open so", p.Busy)
	}
	return line
}
