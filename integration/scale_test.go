package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Scale: a mount that knows a million keys keeps its memory bounded, and a
// directory of 100,000 entries starts listing before all of it has arrived.
// The remote is the dir: backend, the fastest honest way to hold a million
// keys on a 2-core machine (MinIO would need a million PUTs).

// scaleRSSLimit is the bound on the mount's resident memory.
const scaleRSSLimit = 200 << 20

// TestScaleMillionKeys generates 1,000,000 empty files (1000 folders of
// 1000), mounts them, walks the whole mount with find, and checks that the
// nimbus process's peak resident memory stays under 200 MiB.
// NIMBUS_SCALE_KEYS lowers the count (a multiple of 1000) for quick runs.
func TestScaleMillionKeys(t *testing.T) {
	requireFUSE(t)
	dirs, perDir := 1000, 1000
	if s := os.Getenv("NIMBUS_SCALE_KEYS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1000 || n%1000 != 0 {
			t.Fatalf("NIMBUS_SCALE_KEYS=%q: want a multiple of 1000", s)
		}
		dirs = n / perDir
	}
	keys := dirs * perDir

	remote := filepath.Join(t.TempDir(), "remote")
	start := time.Now()
	generateTree(t, remote, dirs, perDir)
	t.Logf("generated %d keys in %d folders in %v", keys, dirs, time.Since(start).Round(time.Millisecond))

	cacheDir := t.TempDir()
	m := startMount(t, nil, cacheDir, []string{"mount", "--cache-dir", cacheDir, "dir:" + remote})
	pid := m.cmd.Process.Pid

	// A user's first walk of the tree: every folder listed, every entry
	// looked up by the kernel (find reads every directory).
	start = time.Now()
	files := countLines(t, 20*time.Minute, "find", m.dir, "-type", "f")
	t.Logf("find -type f: %d files in %v", files, time.Since(start).Round(time.Millisecond))
	if files != keys {
		t.Fatalf("find saw %d files, want %d", files, keys)
	}
	logMemory(t, pid, "after the first find")

	// A second walk that stats every entry, as ls -lR or du would.
	start = time.Now()
	sized := countLines(t, 20*time.Minute, "find", m.dir, "-type", "f", "-size", "0")
	t.Logf("find -size 0 (stats every file): %d files in %v", sized, time.Since(start).Round(time.Millisecond))
	if sized != keys {
		t.Fatalf("find -size 0 saw %d files, want %d", sized, keys)
	}
	mem := logMemory(t, pid, "after the second find")
	// The file-backed part is mostly the tree's bbolt file, mapped: page
	// cache the kernel can reclaim, bounded by the database's size.
	if fi, err := os.Stat(filepath.Join(cacheDir, "tree.db")); err == nil {
		t.Logf("tree database: %s for %d keys", mib(fi.Size()), keys)
	}
	if mem.hwm >= scaleRSSLimit {
		t.Errorf("peak resident memory (VmHWM) %s, want under %s", mib(mem.hwm), mib(scaleRSSLimit))
	}
	m.unmount()
}

// generateTree creates dirs folders of perDir empty files under root, 8
// folders at a time.
func generateTree(t *testing.T, root string, dirs, perDir int) {
	t.Helper()
	work := make(chan int)
	errs := make(chan error, 8)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for d := range work {
				if err := generateDir(filepath.Join(root, fmt.Sprintf("d%04d", d)), perDir); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	go func() {
		defer close(work)
		for d := range dirs {
			select {
			case work <- d:
			case err := <-errs:
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func generateDir(dir string, n int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("f%06d", i))
		fd, err := unix.Open(p, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return fmt.Errorf("create %s: %w", p, err)
		}
		if err := unix.Close(fd); err != nil {
			return fmt.Errorf("close %s: %w", p, err)
		}
	}
	return nil
}

// countLines runs a command and counts the lines of its output without
// keeping them.
func countLines(t *testing.T, timeout time.Duration, name string, args ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := 0
	r := bufio.NewReaderSize(out, 1<<16)
	for {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			n++
		}
		if err == io.EOF {
			break
		}
		if err != nil && err != bufio.ErrBufferFull {
			t.Fatalf("read %s output: %v", name, err)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return n
}

// procMemory is the memory of a process, from /proc/PID/status.
type procMemory struct {
	hwm, rss, anon, file int64 // VmHWM, VmRSS, RssAnon, RssFile in bytes
}

func readProcMemory(t *testing.T, pid int) procMemory {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var m procMemory
	fields := map[string]*int64{"VmHWM:": &m.hwm, "VmRSS:": &m.rss, "RssAnon:": &m.anon, "RssFile:": &m.file}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" && fields[f[0]] != nil {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("parse %q: %v", line, err)
			}
			*fields[f[0]] = kb << 10
		}
	}
	return m
}

func logMemory(t *testing.T, pid int, when string) procMemory {
	t.Helper()
	m := readProcMemory(t, pid)
	t.Logf("nimbus memory %s: peak (VmHWM) %s, now (VmRSS) %s = anonymous %s + file-backed %s",
		when, mib(m.hwm), mib(m.rss), mib(m.anon), mib(m.file))
	return m
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// TestHugeDirListing lists a directory of 100,000 keys through the mount
// the way a program reading it incrementally does (ReadDir in batches of
// 256) and reports the time to the first batch and to the whole listing,
// cold (the mount lists the store) and warm (served from the tree).
func TestHugeDirListing(t *testing.T) {
	requireFUSE(t)
	const entries = 100_000
	remote := filepath.Join(t.TempDir(), "remote")
	start := time.Now()
	if err := generateDir(filepath.Join(remote, "big"), entries); err != nil {
		t.Fatal(err)
	}
	t.Logf("generated %d keys in one folder in %v", entries, time.Since(start).Round(time.Millisecond))
	cacheDir := t.TempDir()
	m := startMount(t, nil, cacheDir, []string{"mount", "--cache-dir", cacheDir, "dir:" + remote})

	for _, pass := range []string{"cold", "warm"} {
		first, all, n := readDirIncrementally(t, m.path("big"), 256)
		t.Logf("%s listing of %d entries: first %d after %v, all after %v", pass, entries, min(n, 256), first.Round(time.Millisecond), all.Round(time.Millisecond))
		if n != entries {
			t.Fatalf("%s listing: %d entries, want %d", pass, n, entries)
		}
	}
	start = time.Now()
	lines := countLines(t, 5*time.Minute, "ls", "-l", m.path("big"))
	t.Logf("ls -l of the folder: %d lines in %v", lines, time.Since(start).Round(time.Millisecond))
	if lines != entries+1 { // "total 0" first
		t.Errorf("ls -l printed %d lines, want %d", lines, entries+1)
	}
	logMemory(t, m.cmd.Process.Pid, "after listing")
	m.unmount()
}

// readDirIncrementally reads dir in batches of batch entries and returns
// when the first batch arrived, when the last did, and the entry count.
func readDirIncrementally(t *testing.T, dir string, batch int) (first, all time.Duration, n int) {
	t.Helper()
	start := time.Now()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for {
		des, err := d.ReadDir(batch)
		if n == 0 && len(des) > 0 {
			first = time.Since(start)
		}
		n += len(des)
		if err == io.EOF {
			return first, time.Since(start), n
		}
		if err != nil {
			t.Fatalf("read %s: %v", dir, err)
		}
	}
}
