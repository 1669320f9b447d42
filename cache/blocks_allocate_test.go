package cache

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/wait"
)

// skipWithoutFallocate skips a test whose folder's file system cannot
// allocate ranges (the block store then writes without allocating).
func skipWithoutFallocate(t *testing.T, dir string) {
	t.Helper()
	f, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := allocate(f, 0, fsBlockSize); err != nil {
		t.Skipf("no fallocate in %s: %v", dir, err)
	}
}

// TestBlockStoreRunAllocatesBeforeWriting: a long run of whole blocks has its
// disk space before the first byte of its body arrives, so that its
// writes go into allocated blocks (and a full disk fails it before the
// body is read).
func TestBlockStoreRunAllocatesBeforeWriting(t *testing.T) {
	e := newBlockEnv(t, nil)
	skipWithoutFallocate(t, filepath.Dir(e.cfg.Dir))
	c := e.fake.put("run.bin", minAllocateBytes) // one run: runs reach 8 MiB
	stall := make(chan struct{})
	release := sync.OnceFunc(func() { close(stall) })
	t.Cleanup(release) // a failed wait must not leave the GET stalled
	e.fake.mu.Lock()
	e.fake.stall, e.fake.stallAfter = stall, 0
	e.fake.mu.Unlock()

	done := make(chan struct{})
	go func() {
		defer close(done)
		e.readOnce(c, 0, c.Size)
	}()
	wait.Until(t, 10*time.Second, "the run's space to be allocated while its body is stalled", func() bool {
		return diskUsage(t, e.cfg.Dir) >= c.Size
	})
	release()
	<-done
	e.waitIdle()
	if du := diskUsage(t, e.cfg.Dir); du != c.Size {
		t.Errorf("%d bytes on disk after the run, want %d", du, c.Size)
	}
}

// TestBlockStoreFailedRunGivesBackAllocation: a run whose body breaks
// leaves no allocated space behind, neither for the blocks it never wrote
// nor for those it wrote but did not publish.
func TestBlockStoreFailedRunGivesBackAllocation(t *testing.T) {
	e := newBlockEnv(t, nil)
	skipWithoutFallocate(t, filepath.Dir(e.cfg.Dir))
	c := e.fake.put("short.bin", minAllocateBytes)
	e.fake.mu.Lock()
	e.fake.shortBy = testBS / 2 // the last block never completes
	e.fake.mu.Unlock()
	h := e.s.Open(c)
	defer h.Close()
	p := make([]byte, c.Size)
	if _, err := h.ReadAt(t.Context(), p, 0); err == nil {
		t.Fatal("read of a short body succeeded")
	}
	e.waitIdle()
	cached := e.s.CachedBytes(c)
	if cached == c.Size {
		t.Fatalf("all %d bytes cached from a short body", cached)
	}
	if du := diskUsage(t, e.cfg.Dir); du != cached {
		t.Errorf("%d bytes on disk after the failed run, want the %d cached", du, cached)
	}
}

// TestBlockStoreCrashPunchesAllocatedRuns: a crash can leave a run's
// allocated range with no record and no data (unwritten extents, which
// SEEK_DATA skips). The next open gives that space back.
func TestBlockStoreCrashPunchesAllocatedRuns(t *testing.T) {
	e := newBlockEnv(t, nil)
	skipWithoutFallocate(t, filepath.Dir(e.cfg.Dir))
	c := e.fake.put("cut.bin", 8*testBS)
	e.readOnce(c, 0, 2*testBS)
	e.waitIdle()
	if err := e.s.flush(false); err != nil {
		t.Fatal(err)
	}
	e.s.mu.Lock()
	path := e.s.contents[contentIDOf(c.Key, c.ETag)].path
	e.s.mu.Unlock()
	e.crash()

	// What a run of blocks 4 to 7 leaves when the crash comes between
	// its allocation and its first write.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := allocate(f, 4*testBS, 4*testBS); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 6*testBS {
		t.Fatalf("%d bytes on disk before reopening, the test needs %d", du, 6*testBS)
	}

	e.open()
	if got := e.s.CachedBytes(c); got != 2*testBS {
		t.Errorf("after the crash %d bytes count as cached, want the %d recorded", got, 2*testBS)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 2*testBS {
		t.Errorf("after the crash %d bytes on disk, want the %d recorded: an allocated run was kept", du, 2*testBS)
	}
	e.readOnce(c, 0, c.Size) // the bytes are checked: zeros would fail
}
