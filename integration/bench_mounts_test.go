package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/minio"
)

// benchMount is one mounted file system under comparison: nimbus, rclone or
// s3fs, each on a fresh mountpoint with a fresh cache folder.
type benchMount interface {
	path(rel string) string
	// pid is the process serving the mount, whose peak RSS the table shows.
	pid() int
	// flush returns once the system itself says that every change made
	// through the mount is uploaded. Systems with no such command return at
	// once; the benchmark then watches the bucket.
	flush(ctx context.Context) error
	// unmount unmounts cleanly and waits until the process has exited.
	unmount() error
	// abort kills the process and detaches the mount, so that a workload
	// blocked in a file-system call past its time limit gets an error. It may
	// be called from any goroutine.
	abort()
}

// benchSystem is one of the file systems the benchmark compares.
type benchSystem struct {
	name    string
	missing string // why it cannot run ("not installed"), or ""
	about   string // version and mount options, for the notes under the table
	mount   func() (benchMount, error)
	// only, if set, are the workloads the system runs (the groups of
	// workloads holding one of them) and has rows for.
	only []string
}

// How long a daemon may take to mount, to unmount, or to exit.
const (
	mountTimeout   = 30 * time.Second
	unmountTimeout = 60 * time.Second
)

// nimbusSystem mounts the binary under test as the other integration tests
// do, with its default options, through the counting proxy.
func (bx *bench) nimbusSystem() benchSystem {
	return benchSystem{
		name:  "nimbus",
		about: "the binary under test: `nimbus mount --endpoint PROXY --cache-dir FRESH s3://BUCKET MNT` (defaults otherwise: 10 GiB cache, --dir-ttl 30s, --poll 1m, FUSE passthrough off)",
		mount: func() (benchMount, error) {
			cache := freshCacheDir(bx.b)
			return nimbusMount{bx.e.mount(mountOpt{endpoint: bx.proxy.URL, cacheDir: cache}), cache}, nil
		},
	}
}

// nimbusPassthroughSystem is nimbus with FUSE passthrough on, for the
// workloads that read files entirely in the cache, where passthrough acts:
// the pair of rows shows what it changes.
func (bx *bench) nimbusPassthroughSystem() benchSystem {
	return benchSystem{
		name:  "nimbus-pt",
		about: "nimbus as above with `--passthrough` (files entirely in the cache read by the kernel from their cache files), for the warm read workloads only",
		mount: func() (benchMount, error) {
			cache := freshCacheDir(bx.b)
			return nimbusMount{bx.e.mount(mountOpt{endpoint: bx.proxy.URL, cacheDir: cache, args: []string{"--passthrough"}}), cache}, nil
		},
		only: []string{wWarmRead, wPageRead, wRandomWarm},
	}
}

type nimbusMount struct {
	m        *mount
	cacheDir string // removed once unmounted
}

var _ benchMount = nimbusMount{}

func (n nimbusMount) path(rel string) string { return n.m.path(rel) }
func (n nimbusMount) pid() int               { return n.m.cmd.Process.Pid }

func (n nimbusMount) flush(ctx context.Context) error {
	_, err := runCtx(ctx, nimbusBin, "sync", n.m.dir)
	return err
}

func (n nimbusMount) unmount() error {
	select {
	case <-n.m.exited:
		return fmt.Errorf("nimbus had exited before the unmount: %v", n.m.cmd.ProcessState)
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), unmountTimeout)
	defer cancel()
	if _, err := runCtx(ctx, nimbusBin, "unmount", n.m.dir); err != nil {
		return err
	}
	select {
	case <-n.m.exited:
	case <-time.After(unmountTimeout):
		return fmt.Errorf("nimbus still running %v after nimbus unmount", unmountTimeout)
	}
	return os.RemoveAll(n.cacheDir)
}

func (n nimbusMount) abort() {
	// ESRCH means it is gone already; the harness's cleanup reaps it.
	_ = syscall.Kill(-n.m.cmd.Process.Pid, syscall.SIGKILL)
	detach(n.m.dir)
}

// rcloneSystem mounts with `rclone mount --vfs-cache-mode full`, the mode
// rclone recommends for applications that read and write like on a local
// disk, and rclone's defaults otherwise. The remote is configured in the
// environment only (RCLONE_CONFIG_BENCH_*), with no config file. rclone
// refuses to start while AWS_CA_BUNDLE is set, so it is removed from the
// child's environment (as `env -u AWS_CA_BUNDLE rclone …` would).
func (bx *bench) rcloneSystem() benchSystem {
	sys := benchSystem{name: "rclone"}
	if _, err := exec.LookPath("rclone"); err != nil {
		sys.missing = "not installed"
		return sys
	}
	sys.about = firstLine(bx.b, "rclone", "version") +
		": `rclone mount bench:BUCKET MNT --vfs-cache-mode full --cache-dir FRESH` (defaults otherwise: --vfs-write-back 5s, --transfers 4, --dir-cache-time 5m, 5 MiB upload parts 4 at a time)"
	env := append(withoutEnv(os.Environ(), "AWS_CA_BUNDLE"),
		"RCLONE_CONFIG="+filepath.Join(bx.b.TempDir(), "none.conf"), // no config file
		"RCLONE_CONFIG_BENCH_TYPE=s3",
		"RCLONE_CONFIG_BENCH_PROVIDER=Minio",
		"RCLONE_CONFIG_BENCH_ENDPOINT="+bx.proxy.URL,
		"RCLONE_CONFIG_BENCH_REGION="+minio.Region,
		"RCLONE_CONFIG_BENCH_ACCESS_KEY_ID="+bx.e.minio.AccessKey,
		"RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY="+bx.e.minio.SecretKey,
	)
	sys.mount = func() (benchMount, error) {
		mp := newMountpoint(bx.b)
		cache := freshCacheDir(bx.b)
		cmd := exec.Command("rclone", "mount", "bench:"+bx.e.bucket, mp,
			"--vfs-cache-mode", "full", "--cache-dir", cache)
		cmd.Env = env
		return startFUSEProcess(bx.b, "rclone", mp, cache, cmd)
	}
	return sys
}

// s3fsSystem mounts with s3fs in the foreground, with the options a user
// who reads `s3fs --help` for performance would pick:
//
//   - url=PROXY, use_path_request_style: a local S3-compatible endpoint;
//   - passwd_file=FILE (0600): the credentials;
//   - use_cache=FRESH: keep fetched content on disk (without it every read
//     goes to the store);
//   - enable_noobj_cache: remember that a name does not exist, which the
//     help recommends "for performance" (fewer HEAD/LIST for new files).
//
// Everything else is the default: 10 MB multipart parts, 5 in parallel,
// stat cache of 100,000 entries for 900 s, directories without a marker
// object recognised (the dataset has none).
func (bx *bench) s3fsSystem() benchSystem {
	sys := benchSystem{name: "s3fs"}
	if _, err := exec.LookPath("s3fs"); err != nil {
		sys.missing = "not installed"
		return sys
	}
	sys.about = firstLine(bx.b, "s3fs", "--version") +
		": `s3fs BUCKET MNT -f -o url=PROXY,use_path_request_style,passwd_file=FILE,use_cache=FRESH,enable_noobj_cache`"
	passwd := filepath.Join(bx.b.TempDir(), "passwd-s3fs")
	if err := os.WriteFile(passwd, []byte(bx.e.minio.AccessKey+":"+bx.e.minio.SecretKey+"\n"), 0o600); err != nil {
		bx.b.Fatal(err)
	}
	sys.mount = func() (benchMount, error) {
		mp := newMountpoint(bx.b)
		cache := freshCacheDir(bx.b)
		opts := strings.Join([]string{
			"url=" + bx.proxy.URL, "use_path_request_style", "passwd_file=" + passwd,
			"use_cache=" + cache, "enable_noobj_cache",
		}, ",")
		cmd := exec.Command("s3fs", bx.e.bucket, mp, "-f", "-o", opts)
		return startFUSEProcess(bx.b, "s3fs", mp, cache, cmd)
	}
	return sys
}

// fuseProcess is a FUSE daemon running in the foreground (rclone mount,
// s3fs -f). Every one is unmounted and killed by the benchmark's cleanup,
// however it ends, so that a stuck mount never hangs the next run.
type fuseProcess struct {
	tb       testing.TB
	name     string
	dir      string
	cacheDir string // removed once unmounted
	cmd      *exec.Cmd
	stderr   *syncBuffer
	exited   chan struct{}
}

var _ benchMount = (*fuseProcess)(nil)

func newMountpoint(tb testing.TB) string {
	mp := filepath.Join(tb.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		tb.Fatal(err)
	}
	return mp
}

// freshCacheDir is an empty folder for one mount's cache. The mount removes
// it once unmounted, so that a run does not keep every mount's copy of the
// dataset on disk until the end; the cleanup here catches the rest.
func freshCacheDir(tb testing.TB) string {
	dir, err := os.MkdirTemp("", "nimbus-bench-cache-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Logf("remove cache: %v", err)
		}
	})
	return dir
}

// startFUSEProcess starts cmd, which mounts on mp, and waits until the
// mount is up.
func startFUSEProcess(tb testing.TB, name, mp, cacheDir string, cmd *exec.Cmd) (*fuseProcess, error) {
	p := &fuseProcess{tb: tb, name: name, dir: mp, cacheDir: cacheDir, cmd: cmd, stderr: &syncBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		// The exit status of a daemon we stop is uninteresting; its log
		// holds anything worth knowing.
		_ = cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(p.stop)
	deadline := time.Now().Add(mountTimeout)
	for !isMounted(mp) {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited before mounting: %v: %s", name, cmd.ProcessState, tail(p.stderr.String()))
		default:
		}
		if time.Now().After(deadline) {
			p.abort()
			return nil, fmt.Errorf("%s not mounted after %v: %s", name, mountTimeout, tail(p.stderr.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p, nil
}

func (p *fuseProcess) path(rel string) string          { return filepath.Join(p.dir, rel) }
func (p *fuseProcess) pid() int                        { return p.cmd.Process.Pid }
func (p *fuseProcess) flush(ctx context.Context) error { return nil }

// unmount is what a user does: fusermount3 -u, and the daemon exits.
func (p *fuseProcess) unmount() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s had exited before the unmount: %v", p.name, p.cmd.ProcessState)
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), unmountTimeout)
	defer cancel()
	if _, err := runCtx(ctx, "fusermount3", "-u", p.dir); err != nil {
		return err
	}
	select {
	case <-p.exited:
		return os.RemoveAll(p.cacheDir)
	case <-time.After(unmountTimeout):
		return fmt.Errorf("%s still running %v after fusermount3 -u", p.name, unmountTimeout)
	}
}

func (p *fuseProcess) abort() {
	// ESRCH means it is gone already.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	detach(p.dir)
}

// stop ends the daemon however it is: unmounted, alive, or stuck.
func (p *fuseProcess) stop() {
	if isMounted(p.dir) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if _, err := runCtx(ctx, "fusermount3", "-u", p.dir); err != nil {
			p.tb.Logf("%s: %v", p.name, err)
		}
		cancel()
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM); err != nil {
			p.tb.Logf("signal %s: %v", p.name, err)
		}
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.tb.Logf("%s did not stop within 10s of SIGTERM; killing it", p.name)
			p.abort()
			<-p.exited
		}
	}
	detach(p.dir)
	if p.tb.Failed() {
		p.tb.Logf("%s log of %s:\n%s", p.name, p.dir, tail(p.stderr.String()))
	}
}

// detach lazily unmounts mp if it is still mounted (umount -l): a dead
// daemon's mount would hang or fail whoever touches it.
func detach(mp string) {
	if isMounted(mp) {
		// Nothing more can be done about a failure here; the mount table
		// shows what is left.
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
}

// runCtx runs a command until ctx ends and returns its output; the error
// carries stderr.
func runCtx(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// firstLine returns the first line of a command's output, for versions.
func firstLine(tb testing.TB, name string, args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := runCtx(ctx, name, args...)
	if err != nil {
		tb.Logf("%v", err)
		return name
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

func withoutEnv(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// tail returns the end of a log, enough to say why a daemon failed.
func tail(s string) string {
	const max = 4 << 10
	if len(s) > max {
		return "…" + s[len(s)-max:]
	}
	return s
}

// peakRSS returns the peak resident set size (VmHWM) of a process in
// bytes, or 0 if it cannot be read.
func peakRSS(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kib << 10
		}
	}
	return 0
}

// processCPU returns the user+system CPU time a process has used so far
// (/proc/PID/stat, in clock ticks of 1/100 s), or 0 if it cannot be read.
func processCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces: count from its ")".
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	const userHZ = 100 // USER_HZ: /proc reports ticks of 1/100 s on Linux
	return time.Duration(utime+stime) * time.Second / userHZ
}
