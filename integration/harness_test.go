package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/integration/minio"
	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// nimbusBin is the binary under test, built once by TestMain.
var nimbusBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nimbus-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	nimbusBin = filepath.Join(dir, "nimbus")
	args := []string{"build", "-o", nimbusBin}
	if os.Getenv("NIMBUS_TEST_RACE") == "1" {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/nimbus")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build nimbus:", err)
		return 1
	}
	return m.Run()
}

// requireFUSE fails under CI and skips elsewhere when FUSE is unusable.
func requireFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("/dev/fuse is missing: the integration tests need FUSE (%v)", err)
		}
		t.Skipf("no FUSE here: %v", err)
	}
}

// requireRoot fails under CI and skips elsewhere when the test does not run
// as root; why says what needs it.
func requireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: run as root", why)
		}
		t.Skipf("%s: needs root", why)
	}
}

// env is one test's world: a MinIO server with a bucket.
type env struct {
	t      testing.TB
	minio  *minio.Server
	s3     *awss3.Client
	bucket string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvWith(t, minio.Options{})
}

// newEnvWith is newEnv on a MinIO started with opts (TLS, a KMS).
func newEnvWith(t testing.TB, opts minio.Options) *env {
	t.Helper()
	requireFUSE(t)
	srv := minio.StartWith(t, opts)
	e := &env{t: t, minio: srv, s3: srv.Client(), bucket: "nimbus-test"}
	srv.MakeBucket(t, e.bucket)
	return e
}

// put stores an object with the SDK, as another machine would.
func (e *env) put(key string, data []byte) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := e.s3.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: &e.bucket, Key: &key, Body: bytes.NewReader(data),
	})
	if err != nil {
		e.t.Fatalf("put %q: %v", key, err)
	}
}

// delete removes an object with the SDK, as another machine would.
func (e *env) delete(key string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.s3.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: &e.bucket, Key: &key}); err != nil {
		e.t.Fatalf("delete %q: %v", key, err)
	}
}

// putStream stores size bytes from r (seekable, so that it can be signed).
func (e *env) putStream(key string, r io.ReadSeeker, size int64) {
	e.t.Helper()
	if err := e.tryPut(key, r, size); err != nil {
		e.t.Fatal(err)
	}
}

// tryPut is putStream for other goroutines than the test's: it returns the
// error instead of failing the test.
func (e *env) tryPut(key string, r io.ReadSeeker, size int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, err := e.s3.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: &e.bucket, Key: &key, Body: r, ContentLength: &size,
	})
	if err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// putAll uploads objects 16 at a time.
func (e *env) putAll(objs map[string]io.ReadSeeker, sizes map[string]int64) {
	e.t.Helper()
	keys := make(chan string)
	errs := make(chan error, len(objs))
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for k := range keys {
				if err := e.tryPut(k, objs[k], sizes[k]); err != nil {
					errs <- err
				}
			}
		})
	}
	for k := range objs {
		keys <- k
	}
	close(keys)
	wg.Wait()
	close(errs)
	for err := range errs {
		e.t.Fatal(err)
	}
}

// mount is a running nimbus mount.
type mount struct {
	t        testing.TB
	dir      string // the mountpoint
	cacheDir string
	cmd      *exec.Cmd
	stderr   *syncBuffer
	exited   chan struct{}
}

type mountOpt struct {
	cacheDir string
	args     []string
	endpoint string   // "" = the MinIO server; else, e.g., a counting proxy in front of it
	env      []string // more environment for nimbus (NAME=value)
}

// mount starts nimbus in the foreground on a fresh mountpoint and waits
// until the mount is up.
func (e *env) mount(opt mountOpt) *mount {
	e.t.Helper()
	if opt.cacheDir == "" {
		opt.cacheDir = e.t.TempDir()
	}
	endpoint := e.minio.Endpoint
	if opt.endpoint != "" {
		endpoint = opt.endpoint
	}
	args := append([]string{"mount", "--endpoint", endpoint, "--cache-dir", opt.cacheDir}, opt.args...)
	args = append(args, "s3://"+e.bucket)
	return startMount(e.t, append(e.minio.Env(), opt.env...), opt.cacheDir, args)
}

// startMount runs `nimbus <args> MOUNTPOINT` with a fresh mountpoint.
func startMount(t testing.TB, extraEnv []string, cacheDir string, args []string) *mount {
	t.Helper()
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	m := &mount{t: t, dir: mp, cacheDir: cacheDir, stderr: &syncBuffer{}, exited: make(chan struct{})}
	m.cmd = exec.Command(nimbusBin, append(args, mp)...)
	m.cmd.Env = append(os.Environ(), extraEnv...)
	m.cmd.Stderr = m.stderr
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		// The exit status is read from ProcessState by whoever needs it.
		_ = m.cmd.Wait()
		close(m.exited)
	}()
	t.Cleanup(m.cleanup)
	deadline := time.Now().Add(30 * time.Second)
	// Mounted, and serving its control socket (nimbus logs "mounted" once
	// it listens): a nimbus sync or status right after must find it.
	for !isMounted(mp) || !strings.Contains(m.stderr.String(), "msg=mounted") {
		select {
		case <-m.exited:
			t.Fatalf("nimbus exited before mounting: %v\n%s", m.cmd.ProcessState, m.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not mounted after 30s\n%s", m.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return m
}

// cleanup stops the mount however it is: unmounted, alive, or stuck.
func (m *mount) cleanup() {
	select {
	case <-m.exited:
	default:
		if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			m.t.Logf("signal nimbus: %v", err)
		}
		select {
		case <-m.exited:
		case <-time.After(15 * time.Second):
			m.t.Errorf("nimbus did not stop within 15s of SIGTERM; killing it")
			if err := syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL); err != nil {
				m.t.Logf("kill nimbus: %v", err)
			}
			<-m.exited
		}
	}
	if isMounted(m.dir) {
		// Lazy detach: a dead daemon's mount would hang whoever touches it.
		if err := syscall.Unmount(m.dir, syscall.MNT_DETACH); err != nil {
			m.t.Errorf("detach stale mount %s: %v", m.dir, err)
		}
	}
	if m.t.Failed() {
		m.t.Logf("nimbus log of %s:\n%s", m.dir, m.stderr)
	}
}

// unmount stops the mount cleanly with nimbus unmount and waits for the
// daemon to exit.
func (m *mount) unmount() {
	m.t.Helper()
	out, err := exec.Command(nimbusBin, "unmount", m.dir).CombinedOutput()
	if err != nil {
		m.t.Fatalf("nimbus unmount: %v: %s", err, out)
	}
	select {
	case <-m.exited:
	case <-time.After(20 * time.Second):
		m.t.Fatalf("daemon still running 20s after unmount\n%s", m.stderr)
	}
	if isMounted(m.dir) {
		m.t.Fatalf("%s still mounted after nimbus unmount", m.dir)
	}
}

func (m *mount) path(rel string) string { return filepath.Join(m.dir, rel) }

// statusReport is the part of `nimbus status --json` the tests read.
type statusReport struct {
	PID      int              `json:"pid"`
	Online   bool             `json:"online"`
	Requests map[string]int64 `json:"requests"`
	Uploads  struct {
		Pending      int       `json:"pending"`
		PendingBytes int64     `json:"pending_bytes"`
		Oldest       time.Time `json:"oldest"`
	} `json:"uploads"`
	Pins []struct {
		Path     string `json:"path"`
		Complete bool   `json:"complete"`
		Running  bool   `json:"running"`
	} `json:"pins"`
	Cache struct {
		Pinned   int64 `json:"pinned"`
		Used     int64 `json:"used"`
		Capacity int64 `json:"capacity"`
		Blocks   int64 `json:"blocks"`
		Hits     int64 `json:"hits"`
	} `json:"cache"`
	Conflicts []struct {
		Key         string `json:"key"`
		ConflictKey string `json:"conflict_key"`
		Reason      string `json:"reason"`
	} `json:"conflicts"`
	Skipped []struct {
		Key    string `json:"key"`
		Reason string `json:"reason"`
	} `json:"skipped"`
}

func (m *mount) status() statusReport {
	m.t.Helper()
	out, err := exec.Command(nimbusBin, "status", "--json", m.dir).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			m.t.Fatalf("nimbus status: %v: %s", err, ee.Stderr)
		}
		m.t.Fatalf("nimbus status: %v", err)
	}
	var r statusReport
	if err := json.Unmarshal(out, &r); err != nil {
		m.t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return r
}

// requests returns the request counts since the mount started.
func (m *mount) requests() map[string]int64 { return m.status().Requests }

// nimbusOwnKey reports whether key is one of nimbus's own objects, which
// mounts hide: a folder's attribute index (.nimbus-attrs), a snapshot
// under .nimbus-snapshots/, or a deleted file kept under .nimbus-trash/.
// Comparisons of the bucket with a local tree leave them out.
func nimbusOwnKey(key string) bool {
	for _, seg := range strings.Split(key, "/") {
		if seg == ".nimbus-attrs" || seg == ".nimbus-snapshots" || seg == ".nimbus-trash" {
			return true
		}
	}
	return false
}

// delta returns after-before for each counter.
func delta(before, after map[string]int64) map[string]int64 {
	d := make(map[string]int64)
	for k, v := range after {
		if v-before[k] != 0 {
			d[k] = v - before[k]
		}
	}
	return d
}

func isMounted(mp string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == mp {
			return true
		}
	}
	return false
}

// run runs a shell tool (ls, cat, head…) with a timeout, as a user would.
func run(t testing.TB, timeout time.Duration, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.Bytes()
}

// syncBuffer collects a child's stderr safely.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startProxy starts a counting proxy (integration/s3proxy) in front of the
// test's MinIO, closed when the test ends: mount through its URL to count
// the requests that reach the store.
func (e *env) startProxy(t testing.TB) *s3proxy.Server {
	t.Helper()
	proxy, err := s3proxy.Start(e.minio.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	return proxy
}
