package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/counting"
	"github.com/nimbus-fs/nimbus/backend/dir"
	"github.com/nimbus-fs/nimbus/backend/health"
	"github.com/nimbus-fs/nimbus/backend/pointintime"
	"github.com/nimbus-fs/nimbus/backend/s3"
	"github.com/nimbus-fs/nimbus/backend/trash"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
	"github.com/nimbus-fs/nimbus/vfs"
)

// mountOptions are the flags of nimbus mount.
type mountOptions struct {
	remote     remote
	mountpoint string
	endpoint   string
	region     string
	cacheDir   string
	cacheSize  int64
	partialMin int64
	dirTTL     time.Duration
	poll       time.Duration
	daemon     bool
	readOnly   bool
	allowOther bool
	// passthrough lets the kernel read files entirely in the cache from
	// their cache files (--passthrough).
	passthrough bool
	// virtualHost keeps virtual-hosted-style addressing with a custom
	// endpoint (--virtual-host).
	virtualHost bool
	verbose     bool
	metricsAddr string       // --metrics-addr: serve /metrics there; "" = off
	logFile     string       // --log-file; "" = stderr, or <cache-dir>/nimbus.log for --daemon
	logMaxSize  int64        // rotate the log file at this size
	store       storeOptions // --sse…, --trash, --at: mount_store.go
	options     []string     // -o lists, applied by applyOptions
	argv        []string     // the whole command line, run again by a --daemon child
}

// readyFDEnv names the pipe a daemon child reports its mount outcome on.
const readyFDEnv = "NIMBUS_READY_FD"

func init() { addCommand(newMountCmd) }

func newMountCmd() *cobra.Command {
	cmd, _ := mountCommand()
	return cmd
}

// mountCommand returns nimbus mount and the options its flags fill in.
func mountCommand() (*cobra.Command, *mountOptions) {
	o := &mountOptions{cacheSize: 10 << 30, partialMin: 32 << 20, logMaxSize: defaultLogMaxSize}
	cmd := &cobra.Command{
		Use:   "mount [flags] REMOTE MOUNTPOINT",
		Short: "Mount s3://BUCKET[/PREFIX] or dir:/PATH on MOUNTPOINT",
		Long: `Mount s3://BUCKET[/PREFIX], or dir:/PATH (a local folder acting as the
remote), on MOUNTPOINT, an empty folder. In the foreground by default:
Ctrl-C or nimbus unmount unmounts cleanly.

Every flag is also an -o option ("_" and "-" alike), so that mount(8) can
mount from an fstab line such as
  s3://my-bucket /mnt/bucket fuse.nimbus cache_size=20GiB,cache_dir=/var/cache/nimbus,_netdev 0 0
mount.fuse then runs "nimbus REMOTE MOUNTPOINT -o OPTIONS", which mounts and
returns once mounted, as --daemon does. Options of mount(8) and systemd
(rw, defaults, noauto, _netdev, nofail, x-systemd.*, user, dev, suid, exec…)
are ignored; ro is --read-only.`,
		Example: `  nimbus mount --endpoint http://127.0.0.1:9000 s3://my-bucket/some/prefix ~/bucket
  nimbus mount --daemon --cache-size 20GiB s3://my-bucket ~/bucket`,
		Args: argsBetween(2, 2, "REMOTE and MOUNTPOINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.finish(cmd.Flags(), args); err != nil {
				return err
			}
			o.argv = o.store.pinAt(invocation(cmd))
			return cmdMount(*o, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.Var((*sizeValue)(&o.cacheSize), "cache-size", "cap on clean cached bytes (512MiB, 2GiB, …)")
	f.Var((*sizeValue)(&o.partialMin), "partial-edit-min", "edit files this large that are not cached without downloading them first (0 = always download)")
	f.StringVar(&o.endpoint, "endpoint", "", "S3-compatible endpoint `URL` (default: AWS_ENDPOINT_URL(_S3), endpoint_url in the AWS config, else AWS S3); a custom endpoint switches to path-style addressing")
	f.BoolVar(&o.virtualHost, "virtual-host", false, "keep virtual-hosted-style addressing (bucket.host) with a custom endpoint")
	f.StringVar(&o.region, "region", "", "`region` (default: from the AWS config/env, else us-east-1)")
	f.StringVar(&o.cacheDir, "cache-dir", "", "cache `folder` (default $XDG_CACHE_HOME/nimbus/<id of the remote>)")
	f.DurationVar(&o.dirTTL, "dir-ttl", 30*time.Second, "re-list a directory whose listing is older than this `duration`")
	f.DurationVar(&o.poll, "poll", time.Minute, "re-list watched and pinned directories this often (`duration`, 0 = off)")
	f.BoolVar(&o.daemon, "daemon", false, "return once mounted, serving in the background")
	f.BoolVar(&o.readOnly, "read-only", false, "refuse every change")
	f.BoolVar(&o.passthrough, "passthrough", false, "let the kernel read files that are entirely in the cache straight from their cache files (FUSE passthrough, Linux 6.9 or later, as root); off by default because, while a file is open that way, opening it for writing waits up to 2s for its readers to close, then fails with ETXTBSY")
	f.BoolVar(&o.allowOther, "allow-other", false, "let other users access the mount (needs user_allow_other in /etc/fuse.conf)")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log debug detail, from every part of nimbus")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics (e.g. 127.0.0.1:9101)")
	f.StringVar(&o.logFile, "log-file", "", "log to this `file`, rotated at --log-max-size (default: stderr; <cache-dir>/nimbus.log with --daemon)")
	f.Var((*sizeValue)(&o.logMaxSize), "log-max-size", "rotate the log file at this size, keeping 3 older ones")
	o.store.addFlags(f)
	f.StringArrayVarP(&o.options, "options", "o", nil, "mount `options`, comma-separated, for fstab: every flag, as in cache_size=64MiB,dir_ttl=5m,ro")
	f.SortFlags = false
	return cmd, o
}

// parseMountArgs parses nimbus mount's flags and arguments as the command
// does, without mounting.
func parseMountArgs(args []string, stdout io.Writer) (mountOptions, error) {
	cmd, o := mountCommand()
	cmd.SetOut(stdout)
	if err := cmd.ParseFlags(args); err != nil {
		return *o, usageError{err.Error()}
	}
	pos := cmd.Flags().Args()
	if err := cmd.ValidateArgs(pos); err != nil {
		return *o, err
	}
	err := o.finish(cmd.Flags(), pos)
	return *o, err
}

// finish checks the parsed flags and fills in what follows from them.
func (o *mountOptions) finish(f *pflag.FlagSet, pos []string) error {
	if err := applyOptions(f, o.options); err != nil {
		return err
	}
	var err error
	if o.remote, err = parseRemote(pos[0]); err != nil {
		return usageError{err.Error()}
	}
	if o.cacheSize < 1<<20 {
		return usageError{"--cache-size must be at least 1MiB"}
	}
	if o.dirTTL < 0 || o.poll < 0 {
		return usageError{"--dir-ttl and --poll cannot be negative"}
	}
	if o.remote.scheme == "dir" && o.endpoint != "" {
		return usageError{"--endpoint applies to s3:// remotes only"}
	}
	if o.remote.scheme == "dir" && o.virtualHost {
		return usageError{"--virtual-host applies to s3:// remotes only"}
	}
	if err := o.store.finish(o, f); err != nil {
		return err
	}
	if o.mountpoint, err = filepath.Abs(pos[1]); err != nil {
		return err
	}
	if o.cacheDir == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return fmt.Errorf("no cache folder: set --cache-dir or $HOME (%v)", err)
			}
			base = filepath.Join(home, ".cache")
		}
		o.cacheDir = filepath.Join(base, "nimbus", o.remote.id(o.endpoint)+o.store.atSuffix())
	}
	if o.cacheDir, err = filepath.Abs(o.cacheDir); err != nil {
		return err
	}
	if o.logMaxSize < 64<<10 {
		return usageError{"--log-max-size must be at least 64KiB"}
	}
	if o.logFile != "" {
		if o.logFile, err = filepath.Abs(o.logFile); err != nil {
			return err
		}
	}
	return nil
}

// logPath returns the file the mount logs to; "" means stderr.
func (o *mountOptions) logPath(daemon bool) string {
	if o.logFile == "" && daemon {
		return filepath.Join(o.cacheDir, "nimbus.log")
	}
	return o.logFile
}

func cmdMount(o mountOptions, stderr io.Writer) error {
	if err := checkMountpoint(o.mountpoint); err != nil {
		return err
	}
	if o.daemon && !daemonChild() {
		return startDaemon(o.argv, o, stderr)
	}
	return serve(o, stderr)
}

// checkMountpoint refuses a mountpoint that is missing, not a folder, not
// empty, or already mounted: mounting over files would hide them.
func checkMountpoint(mp string) error {
	st, err := os.Stat(mp)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("mountpoint %s does not exist: create it with mkdir -p %s", mp, mp)
	case err != nil:
		return fmt.Errorf("mountpoint %s: %v (is a stale mount there? try nimbus unmount %s)", mp, err, mp)
	case !st.IsDir():
		return fmt.Errorf("mountpoint %s is not a folder", mp)
	}
	if mounted, err := isMountpoint(mp); err == nil && mounted {
		return fmt.Errorf("mountpoint %s is already mounted: unmount it first", mp)
	}
	d, err := os.Open(mp)
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("mountpoint %s is not empty: mounting would hide its files; use an empty folder", mp)
	}
	return nil
}

// isMountpoint reports whether mp is listed in /proc/self/mountinfo.
func isMountpoint(mp string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMountinfo(fields[4]) == mp {
			return true, nil
		}
	}
	return false, sc.Err()
}

func unescapeMountinfo(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// startDaemon re-runs this mount in the background and waits until it
// reports the mount ready (or why it failed).
func startDaemon(args []string, o mountOptions, stderr io.Writer) error {
	if err := os.MkdirAll(o.cacheDir, 0o700); err != nil {
		return fmt.Errorf("cache folder %s: %w", o.cacheDir, err)
	}
	logPath := o.logPath(true)
	// The child logs there itself, rotating it; this is its stderr, for
	// what is no log line (a crash).
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("daemon log %s: %w", logPath, err)
	}
	defer logFile.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// The child gets the same arguments, --daemon included: it knows it is
	// the child from readyFDEnv and the pipe on fd 3 (daemonChild), which
	// no spelling of the flag can change.
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start daemon: %w", err)
	}
	w.Close()
	msg, _ := io.ReadAll(r) // EOF when the child exits or reports; the message is all we need
	if err := cmd.Process.Release(); err != nil {
		return err
	}
	// "ok", then a notice for the user if there is one; else the error.
	status, notice, _ := strings.Cut(strings.TrimSpace(string(msg)), "\n")
	switch status {
	case "ok":
		// One line: the notice if there is one, and where the log is.
		if notice == "" {
			notice = fmt.Sprintf("mounted %s on %s", o.remote, o.mountpoint)
		}
		fmt.Fprintf(stderr, "nimbus: %s; log in %s\n", notice, logPath)
		return nil
	case "":
		return errors.New("the daemon exited before mounting; see " + logPath)
	}
	return errors.New(status)
}

// daemonChild reports whether this process is the background half of a
// --daemon mount: its parent set readyFDEnv and passed the pipe it waits on
// as fd 3. The flags do not decide it, so a child never forks again.
func daemonChild() bool {
	if os.Getenv(readyFDEnv) != "3" {
		return false
	}
	var st unix.Stat_t
	return unix.Fstat(3, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO
}

// mountReport tells a waiting parent (--daemon) how the mount went.
func mountReport(msg string) {
	fd := os.Getenv(readyFDEnv)
	if fd == "" {
		return
	}
	os.Unsetenv(readyFDEnv)
	f := os.NewFile(3, "ready")
	if f == nil {
		return
	}
	fmt.Fprintln(f, msg)
	f.Close()
}

// mountState is everything a running mount owns.
type mountState struct {
	opts     mountOptions
	log      *slog.Logger
	db       *bolt.DB
	counts   *counting.Counting
	health   *health.Checker
	tree     *cache.Tree
	blocks   *cache.BlockStore
	pins     *cache.Pins
	journal  *journal.Journal
	fsys     *vfs.FS
	server   *fuse.Server
	started  time.Time
	socket   string
	unmountC chan struct{}

	// The end of the mount, for nimbus unmount: final is set, then finalC
	// closed, once the uploader stopped; unmountReplied is signalled once
	// the unmount request was answered.
	unmountRequested atomic.Bool
	final            unmountReport
	finalC           chan struct{}
	unmountReplied   chan struct{}
}

// metaDBOptions open the cache's database (journal, block index, pins).
// Its freelist is not written at each commit but rebuilt when the file is
// opened (bbolt's NoFreelistSync, as etcd opens its own): the journal's inline
// contents come and go, so the freelist ran to thousands of pages, and
// every close() rewrote it (56 KiB per commit after one untar). The
// hashmap freelist keeps allocation cheap when it is that long.
var metaDBOptions = &bolt.Options{
	Timeout:        time.Second,
	NoFreelistSync: true,
	FreelistType:   bolt.FreelistMapType,
}

// serve mounts and serves until unmounted or signalled.
func serve(o mountOptions, stderr io.Writer) (err error) {
	defer func() {
		if err != nil {
			mountReport(oneLine(err.Error()))
		}
	}()
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	var logOut io.Writer = stderr
	if path := o.logPath(daemonChild()); path != "" {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return fmt.Errorf("log folder: %w (check --log-file)", err)
		}
		lf, err := openLogFile(path, o.logMaxSize)
		if err != nil {
			return err
		}
		defer lf.Close()
		logOut = lf
		if !daemonChild() {
			fmt.Fprintf(stderr, "nimbus: logging to %s\n", path)
		}
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level}))
	// The packages that log to the default logger (the backends, the AWS
	// SDK's lines) log here too, at the same level.
	slog.SetDefault(log)
	setSoftMemoryLimit()
	startProfiling(log)

	m := &mountState{opts: o, log: log, started: time.Now(), unmountC: make(chan struct{}, 1),
		finalC: make(chan struct{}), unmountReplied: make(chan struct{}, 1)}
	if err := os.MkdirAll(o.cacheDir, 0o700); err != nil {
		return fmt.Errorf("cache folder %s: %w", o.cacheDir, err)
	}
	m.db, err = bolt.Open(filepath.Join(o.cacheDir, "meta.db"), 0o600, metaDBOptions)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return fmt.Errorf("cache folder %s is in use by another nimbus mount: unmount it, or give this one its own --cache-dir", o.cacheDir)
	}
	if err != nil {
		return fmt.Errorf("open cache database in %s: %w", o.cacheDir, err)
	}
	defer m.db.Close()
	treeDB, err := cache.OpenTreeDB(filepath.Join(o.cacheDir, "tree.db"), log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := treeDB.Close(); cerr != nil {
			log.Error("close tree database", "err", cerr)
		}
	}()
	if m.tree, err = cache.OpenTree(treeDB.DB); err != nil {
		return err
	}
	if err := cache.RemoveTree(m.db); err != nil { // kept there by earlier versions
		return fmt.Errorf("open cache database in %s: %w", o.cacheDir, err)
	}
	if m.pins, err = cache.OpenPins(m.db); err != nil {
		return err
	}

	var offlineNotice string // set when starting offline
	store, reachErr := openStore(o)
	if store == nil {
		return reachErr
	}
	m.counts = counting.New(store)
	m.health = health.New(m.counts)
	if reachErr != nil {
		// The store is down but the tree was listed before: come up offline
		// from it, as a laptop booting without network must.
		if _, known, _ := m.tree.Dir(""); !known {
			return reachErr
		}
		log.Warn("starting offline from the known tree", "err", reachErr)
		m.health.MarkOffline(reachErr)
		offlineNotice = fmt.Sprintf("mounted %s offline: %s; changes are queued and upload once the store can be reached (see nimbus status)",
			o.mountpoint, oneLine(reachErr.Error()))
	}

	m.blocks, err = cache.OpenBlockStore(cache.BlockStoreConfig{
		Dir:      filepath.Join(o.cacheDir, "blocks"),
		DB:       m.db,
		Fetcher:  m.health,
		Capacity: o.cacheSize,
		Logger:   log,
	})
	if err != nil {
		return fmt.Errorf("open block cache in %s: %w", o.cacheDir, err)
	}
	defer func() {
		if cerr := m.blocks.Close(); cerr != nil {
			log.Error("close block cache", "err", cerr)
		}
	}()

	var fsys *vfs.FS // set below; the journal reports to it once running
	m.journal, err = journal.Open(journal.Config{
		DB:      m.db,
		Dir:     filepath.Join(o.cacheDir, "staging"),
		Store:   m.health,
		Logger:  log,
		Applied: func(r journal.Result) { fsys.Applied(r) },
	})
	if err != nil {
		return fmt.Errorf("open journal in %s: %w", o.cacheDir, err)
	}
	defer func() {
		if cerr := m.journal.Close(); cerr != nil {
			log.Error("close journal", "err", cerr)
		}
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.health.Prober(ctx)

	useTrash := m.trashOn(ctx, reachErr != nil)
	m.socket, err = controlSocketPath(o.mountpoint)
	if err != nil {
		return err
	}
	mountID, err := cacheMountID(o.cacheDir)
	if err != nil {
		return err
	}
	objects, err := openBucketObjects(m.health, o, m.journal, mountID, m.health.Online, &fsys, log)
	if err != nil {
		return err
	}
	defer objects.index.Close() // after the vfs stops (deferred below)
	cfg := vfs.Config{
		Health:        m.health,
		Tree:          m.tree,
		Blocks:        m.blocks,
		Journal:       m.journal,
		ReadOnly:      o.readOnly,
		Pins:          m.pins,
		Prefix:        o.remote.prefix,
		DirTTL:        o.dirTTL,
		ControlSocket: m.socket,
		Logger:        log,
		PartialMin:    o.partialMin,
		Trash:         useTrash,
		Passthrough:   o.passthrough,
	}
	objects.configure(&cfg)
	fsys, err = vfs.New(cfg)
	if err != nil {
		return err
	}
	m.fsys = fsys
	defer fsys.Stop()
	if err := fsys.Reconcile(); err != nil {
		return fmt.Errorf("show pending changes: %w", err)
	}
	uploads := make(chan struct{})
	go func() {
		defer close(uploads)
		m.journal.Run(ctx)
	}()
	// Stop the uploader before the journal closes (deferred above, so run
	// after this): in-flight uploads resume at the next mount.
	stopUploads := sync.OnceFunc(func() { cancel(); <-uploads })
	defer stopUploads()
	go fsys.Poll(ctx, o.poll)
	sweepingSnapshots := make(chan struct{})
	go objects.keepSweeping(ctx, sweepingSnapshots)
	defer func() { stopUploads(); <-sweepingSnapshots }()
	if useTrash {
		sweeping := make(chan struct{})
		go func() {
			defer close(sweeping)
			trash.SweepEvery(ctx, m.health, o.remote.prefix, o.store.trash, trashSweepInterval, log)
		}()
		// Ends with the uploader (cancel), before the store is let go.
		defer func() { stopUploads(); <-sweeping }()
	}
	opts := fsys.Options(o.remote.String(), o.allowOther)
	if o.readOnly {
		opts.MountOptions.Options = append(opts.MountOptions.Options, "ro")
	}
	raw := fsys.NodeFS(opts)
	if o.metricsAddr != "" {
		reg := newMetricsRegistry(m)
		raw = newFuseMetrics(raw, reg)
		srv, err := listenMetrics(o.metricsAddr, reg, log)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	m.server, err = fuse.NewServer(raw, o.mountpoint, &opts.MountOptions)
	if err != nil {
		return fmt.Errorf("mount on %s: %w (is /dev/fuse there, and fuse3 installed?)", o.mountpoint, err)
	}
	go m.server.Serve()
	if err := m.server.WaitMount(); err != nil {
		return fmt.Errorf("mount on %s: %w", o.mountpoint, err)
	}
	raiseReadahead(o.mountpoint, log)
	fsys.StartPassthrough(m.server, o.cacheDir)
	ctl, err := listenControl(m.socket, m)
	if err != nil {
		m.unmount()
		m.server.Wait()
		return err
	}
	defer ctl.Close()
	log.Info("mounted", "remote", o.remote.String(), "store", store.String(), "mountpoint", o.mountpoint, "cache", o.cacheDir)
	report := "ok"
	if offlineNotice != "" {
		// One line on the terminal (for --daemon, the one it was started
		// from): mounting offline is a feature, but the user must know.
		if daemonChild() {
			report += "\n" + offlineNotice
		} else {
			fmt.Fprintln(stderr, "nimbus: "+offlineNotice)
		}
	}
	mountReport(report)
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("systemd readiness", "err", err)
	}

	// Also when unmounted from outside (umount, fusermount3 -u).
	stopping := sync.OnceFunc(func() {
		if err := sdNotify("STOPPING=1"); err != nil {
			log.Warn("systemd notification", "err", err)
		}
	})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			log.Info("unmounting", "signal", s.String())
		case <-m.unmountC:
			log.Info("unmounting on request")
		}
		stopping()
		m.unmount()
	}()
	m.server.Wait()
	stopping()
	log.Info("unmounted", "mountpoint", o.mountpoint)
	// No file is open any more: snapshots no pending upload needs can go.
	sweepCtx, stopSweep := context.WithTimeout(context.Background(), 10*time.Second)
	defer stopSweep()
	if err := objects.sweepFinal(sweepCtx); err != nil {
		log.Info("snapshots left for the next mount to delete", "err", err)
	}
	stopUploads()
	m.stopped(stderr)
	return nil
}

// trashSweepInterval is how often a mount deletes expired trash.
const trashSweepInterval = time.Hour

// trashOn decides whether deletes go to the trash: --trash is not 0, the
// mount can write, and the store keeps no versions (a versioned bucket
// keeps deleted files as versions already). Asked once, at mount; a store
// that cannot be asked (offline) gets the trash, which is only a copy too
// many on a versioned bucket.
func (m *mountState) trashOn(ctx context.Context, offline bool) bool {
	if m.opts.store.trash <= 0 || m.opts.readOnly {
		return false
	}
	if offline {
		m.log.Info("trash on: the store is offline, so whether it keeps versions is unknown")
		return true
	}
	askCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	on, err := m.versioned(askCtx)
	if err != nil {
		m.log.Warn("trash on: cannot tell whether the bucket keeps versions", "err", err)
		return true
	}
	m.log.Info("deletes", "trash", !on, "versioned", on, "keep", (*daysValue)(&m.opts.store.trash).String())
	return !on
}

// cacheMountID returns the id of the mount that uses cache folder dir,
// made at its first use. It keeps this mount's snapshots apart from other
// mounts' of the same bucket.
func cacheMountID(dir string) (string, error) {
	path := filepath.Join(dir, "mount-id")
	b, err := os.ReadFile(path)
	if id := strings.TrimSpace(string(b)); err == nil && id != "" {
		return id, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("mount id: %w", err)
	}
	raw := make([]byte, 8)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("mount id: %w", err)
	}
	id := hex.EncodeToString(raw)
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("mount id: %w", err)
	}
	return id, nil
}

// kernelReadaheadKB is the kernel's read-ahead for the mount. FUSE starts at
// 128 KiB, which caps each sequential read request at 128 KiB and keeps few
// in flight; 16 MiB lets the kernel ask for large, parallel reads (measured:
// a warm 1 GiB read twice as fast, a cold one faster too).
const kernelReadaheadKB = 16 << 10

// raiseReadahead sets the read-ahead of the mount's backing device info. It
// needs root; without it the kernel default stays, which is slower but fine.
func raiseReadahead(mountpoint string, log *slog.Logger) {
	var st syscall.Stat_t
	if err := syscall.Stat(mountpoint, &st); err != nil {
		log.Debug("readahead: stat mountpoint", "err", err)
		return
	}
	path := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(path, []byte(strconv.Itoa(kernelReadaheadKB)), 0); err != nil {
		log.Debug("readahead: keeping the kernel default", "path", path, "err", err)
	}
}

// unmount detaches the mount; if a program still holds files open, it is
// detached lazily so that the daemon can still stop cleanly.
func (m *mountState) unmount() {
	err := m.server.Unmount()
	if err == nil {
		return
	}
	m.log.Warn("unmount busy, detaching lazily", "err", err)
	if err := syscall.Unmount(m.opts.mountpoint, syscall.MNT_DETACH); err != nil {
		if ferr := runFusermount(m.opts.mountpoint); ferr != nil {
			m.log.Error("lazy unmount failed", "err", err, "fusermount3", ferr)
		}
	}
}

// runFusermount detaches mp lazily the way an unprivileged user can.
func runFusermount(mp string) error {
	out, err := exec.Command("fusermount3", "-u", "-z", mp).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 -u -z %s: %v: %s", mp, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// openStore opens the remote. When the store cannot be reached it returns
// the store together with an error wrapping backend.ErrOffline, so that the
// caller may come up offline; other errors come with no store.
func openStore(o mountOptions) (backend.Backend, error) {
	if o.remote.scheme == "dir" {
		st, err := dir.New(o.remote.path)
		if errors.Is(err, backend.ErrNoBucket) {
			return nil, fmt.Errorf("folder %s does not exist: create it, or check the dir: remote", o.remote.path)
		}
		if err != nil {
			return nil, err
		}
		return st, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	enc, err := o.store.encryption()
	if err != nil {
		return nil, err
	}
	copyThreshold, err := sizeFromEnv(copyThresholdEnv)
	if err != nil {
		return nil, err
	}
	partSize, err := sizeFromEnv(partSizeEnv)
	if err != nil {
		return nil, err
	}
	st, err := s3.New(ctx, s3.Config{Bucket: o.remote.bucket, Endpoint: o.endpoint, Region: o.region,
		VirtualHost: o.virtualHost, Encryption: enc, CopyThreshold: copyThreshold, PartSize: partSize})
	if err == nil && o.store.at != "" {
		return atView(ctx, o, st)
	}
	// The store as the s3 package found it: the endpoint may come from the
	// AWS configuration, and then says from where.
	where, check := o.endpoint, "--endpoint"
	if w, ok := s3.Where(err); ok {
		where = w
	}
	if where == "" {
		where = "AWS S3"
	}
	if o.endpoint == "" && !strings.HasPrefix(where, "AWS S3") {
		check = "that setting"
	}
	switch {
	case err == nil:
		return st, nil
	case errors.Is(err, s3.ErrNoCredentials):
		return nil, err // says where to set them
	case errors.Is(err, backend.ErrNoBucket):
		return nil, fmt.Errorf("bucket %q not found at %s: check the bucket name and %s", o.remote.bucket, where, check)
	case errors.Is(err, backend.ErrAccess):
		return nil, fmt.Errorf("access to bucket %q at %s was denied: check your credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and --region", o.remote.bucket, where)
	case errors.Is(err, backend.ErrOffline):
		msg := fmt.Errorf("%w: check %s and the network", err, check)
		if st == nil {
			return nil, msg
		}
		return st, msg
	}
	return nil, err // names the bucket, the endpoint and the cause
}

// atView is the point-in-time view of st for --at, on a versioned bucket
// only: without versions there is no past to show.
func atView(ctx context.Context, o mountOptions, st *s3.Store) (backend.Backend, error) {
	on, err := st.Versioning(ctx)
	switch {
	case errors.Is(err, backend.ErrOffline):
		// Come up offline from the tree listed before, if there is one.
		return pointintime.New(st, o.store.atTime), fmt.Errorf("%w: check --endpoint and the network", err)
	case err != nil:
		return nil, fmt.Errorf("--at: cannot tell whether bucket %q keeps versions: %w", o.remote.bucket, err)
	case !on:
		return nil, fmt.Errorf("--at needs a versioned bucket, and versioning is off on %q: there is no past to show (turn it on for the future with: aws s3api put-bucket-versioning --bucket %s --versioning-configuration Status=Enabled)", o.remote.bucket, o.remote.bucket)
	}
	return pointintime.New(st, o.store.atTime), nil
}
