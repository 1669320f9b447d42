package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/integration/wait"
)

// passthroughReport is the passthrough part of nimbus status --json.
type passthroughReport struct {
	On     bool   `json:"on"`
	Reason string `json:"reason"`
	Opens  int64  `json:"opens"`
	Open   int64  `json:"open"`
	Busy   int64  `json:"busy"`
}

func (m *mount) passthrough() passthroughReport {
	m.t.Helper()
	out, err := exec.Command(nimbusBin, "status", "--json", m.dir).Output()
	if err != nil {
		m.t.Fatalf("nimbus status: %v", err)
	}
	var r struct {
		Passthrough passthroughReport `json:"passthrough"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		m.t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return r.Passthrough
}

// requirePassthrough fails under CI and skips elsewhere when the kernel
// (before 6.9) or the privileges keep passthrough off.
func requirePassthrough(t *testing.T, m *mount) {
	t.Helper()
	if pt := m.passthrough(); !pt.On {
		if os.Getenv("CI") == "true" {
			t.Fatalf("passthrough is off: %s", pt.Reason)
		}
		t.Skipf("passthrough is off on this machine: %s", pt.Reason)
	}
}

const fuseReads = `nimbus_fuse_operation_duration_seconds_count{op="read"}`

// readUncached opens path read-only, drops the kernel's page cache of it
// (so that a read not passed through must ask nimbus), and reads it all.
// The file is returned open, for the caller to read again and close.
func readUncached(t *testing.T, path string) (*os.File, []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("fadvise: %v", err)
	}
	got, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		t.Fatalf("read %s: %v", path, err)
	}
	return f, got
}

func randomData(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestPassthroughReadsCachedFiles (issue 14, point 1): a file entirely in
// the cache, opened read-only, is read by the kernel straight from its
// cache file: the bytes are exact and no READ reaches nimbus. Eviction and
// nimbus free while it is open do not disturb the reader; a change of the
// file waits for it (ETXTBSY if it stays open); a remote change is seen at
// the next open; a file written here and uploaded passes through too.
func TestPassthroughReadsCachedFiles(t *testing.T) {
	requireRoot(t, "FUSE passthrough needs CAP_SYS_ADMIN")
	e := newEnv(t)
	data := randomData(1, 3<<20+12345)
	e.put("p/data.bin", data)
	e.put("p/filler.bin", randomData(2, 6<<20))
	addr := freeLoopbackAddr(t)
	m := e.mount(mountOpt{args: []string{"-o", "passthrough,metrics_addr=" + addr + ",cache_size=8MiB"}})
	requirePassthrough(t, m)
	path := m.path("p/data.bin")

	// The first open finds nothing cached: it reads through nimbus and
	// fills the cache.
	f, got := readUncached(t, path)
	f.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("first read: %d bytes, not the %d put", len(got), len(data))
	}
	if pt := m.passthrough(); pt.Opens != 0 {
		t.Fatalf("an uncached file was opened in passthrough: %+v", pt)
	}

	before := scrape(t, addr)[fuseReads]
	f, got = readUncached(t, path)
	defer f.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("passthrough read: %d bytes, not the %d put", len(got), len(data))
	}
	if after := scrape(t, addr)[fuseReads]; after != before {
		t.Errorf("reading a cached file sent %v READs to nimbus, want none", after-before)
	}
	if pt := m.passthrough(); pt.Opens != 1 || pt.Open != 1 {
		t.Errorf("status while open: %+v, want 1 open, 1 open now", pt)
	}

	// Eviction (another file fills the 8 MiB cache) and free while the
	// reader is open: its bytes stay, the free takes effect at close.
	if got := run(t, time.Minute, "cat", m.path("p/filler.bin")); len(got) != 6<<20 {
		t.Fatalf("filler: %d bytes", len(got))
	}
	if out, err := nimbusCmd(t, time.Minute, "free", path); err != nil {
		t.Fatalf("nimbus free: %v\n%s", err, out)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	again := make([]byte, len(data))
	if n, err := f.ReadAt(again, 0); n != len(data) || (err != nil && !errors.Is(err, io.EOF)) || !bytes.Equal(again, data) {
		t.Fatalf("read after eviction and free: %d bytes, err %v, equal %v", n, err, bytes.Equal(again[:n], data[:n]))
	}

	// Writing waits for the passthrough reader, and gives up with ETXTBSY
	// while it stays open.
	start := time.Now()
	if _, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0); !errors.Is(err, syscall.ETXTBSY) {
		t.Errorf("open for writing while read in passthrough: %v, want ETXTBSY", err)
	}
	if waited := time.Since(start); waited < time.Second {
		t.Errorf("open for writing gave up after %v, before the reader had a chance to close", waited)
	}
	f.Close()
	wait.Until(t, 10*time.Second, "the passthrough handle to be released", func() bool { return m.passthrough().Open == 0 })
	if s := xattr(t, path, "user.nimbus.state"); s != "online" {
		t.Errorf("state after the freed file was closed = %q, want online", s)
	}

	// A remote change is seen at the next open, though the old version
	// was cached and passed through.
	f, _ = readUncached(t, path) // caches it again
	f.Close()
	f, _ = readUncached(t, path) // in passthrough
	f.Close()
	if pt := m.passthrough(); pt.Opens != 2 {
		t.Fatalf("status after a second cached open: %+v, want 2 opens", pt)
	}
	newData := randomData(3, 1<<20+77)
	e.put("p/data.bin", newData)
	f, got = readUncached(t, path)
	f.Close()
	if !bytes.Equal(got, newData) {
		t.Fatalf("read after a remote change: %d bytes, want the new %d", len(got), len(newData))
	}

	// A file written here, once uploaded, is read in passthrough. (Not
	// nimbus sync, which would skip the upload's delay: the upload must
	// land after the writer's release, as it does when nobody hurries it.)
	written := randomData(4, 2<<20)
	if err := os.WriteFile(m.path("p/written.bin"), written, 0o644); err != nil {
		t.Fatal(err)
	}
	opens := m.passthrough().Opens
	wait.Until(t, 30*time.Second, "the uploaded file to open in passthrough", func() bool {
		f, got := readUncached(t, m.path("p/written.bin"))
		f.Close()
		if !bytes.Equal(got, written) {
			t.Fatalf("read of the uploaded file: %d bytes, want %d", len(got), len(written))
		}
		return m.passthrough().Opens > opens
	})
}

// TestPassthroughNewVersionWaitsForReaders: a file open in passthrough
// keeps serving the version it opened; an open that finds a new version
// cannot share the kernel's backing file, so it waits for the reader and
// reads the new version once the reader is closed.
func TestPassthroughNewVersionWaitsForReaders(t *testing.T) {
	requireRoot(t, "FUSE passthrough needs CAP_SYS_ADMIN")
	e := newEnv(t)
	old := randomData(5, 1<<20)
	e.put("v.bin", old)
	m := e.mount(mountOpt{args: []string{"--passthrough"}})
	requirePassthrough(t, m)
	f, _ := readUncached(t, m.path("v.bin"))
	f.Close()
	f, got := readUncached(t, m.path("v.bin"))
	defer f.Close()
	if !bytes.Equal(got, old) || m.passthrough().Open != 1 {
		t.Fatalf("cached open: equal %v, status %+v", bytes.Equal(got, old), m.passthrough())
	}
	newData := randomData(6, 1<<20)
	e.put("v.bin", newData)
	go func() {
		time.Sleep(500 * time.Millisecond)
		f.Close()
	}()
	g, got := readUncached(t, m.path("v.bin"))
	g.Close()
	if !bytes.Equal(got, newData) {
		t.Fatalf("open after a remote change: %d bytes, not the new version", len(got))
	}
}

// TestPassthroughOff: by default (passthrough is opt-in), status says it is
// off and why, and reads of a cached file go through nimbus.
func TestPassthroughOff(t *testing.T) {
	e := newEnv(t)
	data := randomData(7, 1<<20)
	e.put("off.bin", data)
	addr := freeLoopbackAddr(t)
	m := e.mount(mountOpt{args: []string{"-o", "metrics_addr=" + addr}})
	if pt := m.passthrough(); pt.On || pt.Reason == "" {
		t.Errorf("status by default: %+v, want off with a reason", pt)
	}
	f, _ := readUncached(t, m.path("off.bin"))
	f.Close()
	before := scrape(t, addr)[fuseReads]
	f, got := readUncached(t, m.path("off.bin"))
	f.Close()
	if !bytes.Equal(got, data) {
		t.Fatalf("read: %d bytes, want %d", len(got), len(data))
	}
	if after := scrape(t, addr)[fuseReads]; after <= before {
		t.Errorf("reading a cached file with passthrough off sent no READ to nimbus (%v → %v)", before, after)
	}
	if pt := m.passthrough(); pt.Opens != 0 {
		t.Errorf("passthrough opens with passthrough off: %+v", pt)
	}
}
