package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/integration/wait"
)

// xattr reads a Nimbus attribute of path.
func xattr(t testing.TB, path, name string) string {
	t.Helper()
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, name, buf)
	for attempt := 1; errors.Is(err, unix.EINTR) && attempt < 5; attempt++ {
		// The Go runtime signals its threads (SIGURG) and the kernel
		// interrupts the FUSE request; getxattr(2) may then fail with
		// EINTR, and Go's wrapper does not retry it. A careful caller
		// does.
		n, err = unix.Getxattr(path, name, buf)
	}
	if err != nil {
		t.Fatalf("getxattr %s %s: %v", path, name, err)
	}
	return string(buf[:n])
}

// nimbusCmd runs a nimbus command and returns its combined output.
func nimbusCmd(t testing.TB, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(nimbusBin, args...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		if cmd.Process != nil {
			if kerr := cmd.Process.Kill(); kerr != nil {
				t.Logf("kill: %v", kerr)
			}
		}
		<-done
		t.Fatalf("nimbus %s did not finish within %s: %s", strings.Join(args, " "), timeout, out)
	}
	return string(out), err
}

// TestPinOfflineAndResume checks promises 6 and 7: a pinned folder of about
// 200 files (50 MiB) is downloaded with flat listings and stays complete
// whatever the cache cap; with MinIO stopped it reads back identical, the
// whole known tree lists, and writes are journaled; when MinIO is back the
// writes are uploaded with no command given. Pins persist across remounts,
// new remote files under a pinned folder are fetched by the poller, and
// unpin and free return content to on-demand.
func TestPinOfflineAndResume(t *testing.T) {
	e := newEnv(t)
	const files = 200
	want := make(map[string]pattern)
	var total int64
	for i := range files {
		p := pattern{seed: uint64(1000 + i), size: int64(100<<10 + (i%9)*50<<10)} // 100–500 KiB
		key := fmt.Sprintf("pinned/sub%d/f%03d.bin", i%5, i)
		want[key] = p
		total += p.size
	}
	putPatterns(e, want)
	other := pattern{seed: 7, size: 40 << 20}
	e.putStream("other/big.bin", other.reader(), other.size)
	t.Logf("pinned folder: %d files, %d MiB", files, total>>20)

	cacheDir := t.TempDir()
	// No poller while the pin's requests are counted; it runs after the
	// remount below.
	m := e.mount(mountOpt{cacheDir: cacheDir, args: []string{"--cache-size", "16MiB", "--poll", "0"}})
	before := m.requests()
	out, err := nimbusCmd(t, 5*time.Minute, "pin", m.path("pinned"))
	if err != nil {
		t.Fatalf("nimbus pin: %v\n%s", err, out)
	}
	if !strings.Contains(out, fmt.Sprintf("%d/%d files", files, files)) {
		t.Errorf("pin progress does not end with %d/%d files:\n%s", files, files, out)
	}
	d := delta(before, m.requests())
	t.Logf("pin requests: %v", d)
	if d["ListObjectsV2"] > 3 {
		t.Errorf("pinning %d keys made %d ListObjectsV2, want a flat listing (about 1 per 1000 keys)", files, d["ListObjectsV2"])
	}
	st := m.status()
	if st.Cache.Pinned != total {
		t.Errorf("status: %d bytes pinned, want %d", st.Cache.Pinned, total)
	}
	// Reading more than the cap of other data evicts none of the pinned.
	if got := fileSHA(t, m.path("other/big.bin")); got != other.sha256() {
		t.Fatal("other/big.bin differs")
	}
	st = m.status()
	if st.Cache.Pinned != total || st.Cache.Used > st.Cache.Capacity {
		t.Errorf("after reading 40 MiB through a 16 MiB cache: pinned %d (want %d), used %d of %d", st.Cache.Pinned, total, st.Cache.Used, st.Cache.Capacity)
	}
	if s := xattr(t, m.path("pinned/sub1/f001.bin"), "user.nimbus.state"); s != "pinned" {
		t.Errorf("state of a pinned file = %q", s)
	}
	if s := xattr(t, m.path("pinned"), "user.nimbus.pin"); s != "1" {
		t.Errorf("user.nimbus.pin of the pinned folder = %q", s)
	}
	onlineListing := bytes.ReplaceAll(run(t, time.Minute, "ls", "-lR", m.dir), []byte(m.dir), []byte("MNT"))

	// The store goes away.
	e.minio.Stop()
	dropPageCache(t)
	for key, p := range want {
		if got := fileSHA(t, m.path(key)); got != p.sha256() {
			t.Fatalf("offline read of pinned %s differs", key)
		}
	}
	offlineListing := bytes.ReplaceAll(run(t, time.Minute, "ls", "-lR", m.dir), []byte(m.dir), []byte("MNT"))
	if !bytes.Equal(onlineListing, offlineListing) {
		t.Errorf("offline ls -lR differs from the online one")
	}
	writeFile(t, m.path("pinned/written-offline.txt"), []byte("written while offline"))
	ef, err := os.OpenFile(m.path("pinned/sub0/f000.bin"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ef.WriteAt([]byte("EDITED OFFLINE"), 0); err != nil {
		t.Fatal(err)
	}
	if err := ef.Close(); err != nil {
		t.Fatal(err)
	}
	if s := xattr(t, m.path("pinned/written-offline.txt"), "user.nimbus.state"); s != "dirty" {
		t.Errorf("state of a file written offline = %q, want dirty", s)
	}
	st = m.status()
	if st.Online {
		t.Error("status says online while MinIO is stopped")
	}
	if st.Uploads.Pending == 0 {
		t.Error("status shows no pending uploads after offline writes")
	}

	// The store comes back: the journal drains with no command given.
	e.minio.Restart()
	edited := want["pinned/sub0/f000.bin"].bytes(0, want["pinned/sub0/f000.bin"].size)
	copy(edited, "EDITED OFFLINE")
	wait.Until(t, 90*time.Second, "offline writes uploaded by themselves", func() bool {
		objs := e.objectsQuiet()
		return string(objs["pinned/written-offline.txt"]) == "written while offline" &&
			bytes.Equal(objs["pinned/sub0/f000.bin"], edited)
	})

	// Pins persist across a remount.
	m.unmount()
	m = e.mount(mountOpt{cacheDir: cacheDir, args: []string{"--cache-size", "16MiB", "--poll", "1s"}})
	st = m.status()
	if len(st.Pins) != 1 || st.Pins[0].Path != "pinned" {
		t.Errorf("pins after remount: %+v", st.Pins)
	}
	if st.Cache.Pinned < total {
		t.Errorf("pinned bytes after remount: %d, want >= %d", st.Cache.Pinned, total)
	}
	// A new remote file under the pinned folder is fetched by the poller.
	fresh := pattern{seed: 99, size: 300 << 10}
	e.putStream("pinned/sub2/fresh.bin", fresh.reader(), fresh.size)
	wait.Until(t, 30*time.Second, "a new remote file under a pinned folder becomes pinned", func() bool {
		buf := make([]byte, 32)
		n, err := unix.Getxattr(m.path("pinned/sub2/fresh.bin"), "user.nimbus.state", buf)
		return err == nil && string(buf[:n]) == "pinned"
	})
	// So is a file created here under the pinned folder, once uploaded.
	wait.Until(t, 30*time.Second, "a file created under a pinned folder becomes pinned", func() bool {
		buf := make([]byte, 32)
		n, err := unix.Getxattr(m.path("pinned/written-offline.txt"), "user.nimbus.state", buf)
		return err == nil && string(buf[:n]) == "pinned"
	})

	// Unpin: content stays but becomes evictable; free drops it now.
	if out, err := nimbusCmd(t, time.Minute, "unpin", m.path("pinned")); err != nil {
		t.Fatalf("nimbus unpin: %v\n%s", err, out)
	}
	if st := m.status(); st.Cache.Pinned != 0 || len(st.Pins) != 0 {
		t.Errorf("after unpin: pinned %d bytes, pins %+v", st.Cache.Pinned, st.Pins)
	}
	if out, err := nimbusCmd(t, time.Minute, "free", m.path("pinned")); err != nil {
		t.Fatalf("nimbus free: %v\n%s", err, out)
	}
	if s := xattr(t, m.path("pinned/sub1/f001.bin"), "user.nimbus.state"); s != "online" {
		t.Errorf("state after free = %q, want online", s)
	}
	// The xattr pins too.
	if err := unix.Setxattr(m.path("pinned/sub3"), "user.nimbus.pin", []byte("1"), 0); err != nil {
		t.Fatalf("setxattr user.nimbus.pin: %v", err)
	}
	wait.Until(t, time.Minute, "pin through the xattr completes", func() bool {
		for _, p := range m.status().Pins {
			if p.Path == "pinned/sub3" && p.Complete {
				return true
			}
		}
		return false
	})
	if s := xattr(t, m.path("pinned/sub3/f003.bin"), "user.nimbus.state"); s != "pinned" {
		t.Errorf("state after pinning through the xattr = %q", s)
	}
}

// putPatterns uploads many pattern objects in parallel.
func putPatterns(e *env, objs map[string]pattern) {
	e.t.Helper()
	readers := make(map[string]io.ReadSeeker, len(objs))
	sizes := make(map[string]int64, len(objs))
	for k, p := range objs {
		readers[k], sizes[k] = p.reader(), p.size
	}
	e.putAll(readers, sizes)
}

// TestPinThatDoesNotFit: a pin larger than the disk of the cache folder
// stops with a clear error before filling it, and what was cached before is
// still there.
func TestPinThatDoesNotFit(t *testing.T) {
	e := newEnv(t)
	objs := make(map[string]pattern)
	for i := range 12 {
		objs[fmt.Sprintf("huge/f%02d.bin", i)] = pattern{seed: uint64(500 + i), size: 8 << 20}
	}
	putPatterns(e, objs)
	small := pattern{seed: 9, size: 100 << 10}
	e.putStream("small.bin", small.reader(), small.size)

	cacheDir := t.TempDir()
	if err := unix.Mount("tmpfs", cacheDir, "tmpfs", 0, "size=80m"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount a small tmpfs for the cache (needs root): %v", err)
		}
		t.Skipf("mount a small tmpfs for the cache (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(cacheDir, unix.MNT_DETACH); err != nil {
			t.Logf("unmount tmpfs: %v", err)
		}
	})
	m := e.mount(mountOpt{cacheDir: cacheDir})
	if got := fileSHA(t, m.path("small.bin")); got != small.sha256() {
		t.Fatal("small.bin differs")
	}
	out, err := nimbusCmd(t, 2*time.Minute, "pin", m.path("huge"))
	if err == nil {
		t.Fatalf("pinning 96 MiB into an 80 MiB disk succeeded:\n%s", out)
	}
	if !strings.Contains(out, "disk space") {
		t.Errorf("the error does not say the disk is too small:\n%s", out)
	}
	t.Logf("nimbus pin: %s", strings.TrimSpace(out))
	if s := xattr(t, m.path("small.bin"), "user.nimbus.state"); s != "local" {
		t.Errorf("small.bin state after the failed pin = %q, want local (still cached)", s)
	}
	dropPageCache(t)
	before := m.requests()
	if got := fileSHA(t, m.path("small.bin")); got != small.sha256() {
		t.Fatal("small.bin differs after the failed pin")
	}
	if d := delta(before, m.requests()); d["GetObject"] != 0 {
		t.Errorf("reading small.bin after the failed pin made %d GETs: cached data was lost", d["GetObject"])
	}
}
