package cache

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// pin pins c and returns what its progress calls added up to. The
// progress function takes the store's lock (through Stats), which would
// deadlock if Pin called it holding the lock.
func (e *blockEnv) pin(ctx context.Context, c Content) (int64, error) {
	e.t.Helper()
	var mu sync.Mutex
	var sum int64
	err := e.s.Pin(ctx, c, func(n int64) {
		if n <= 0 {
			e.t.Errorf("progress(%d)", n)
		}
		_ = e.s.Stats() // only to take the lock; the counters do not matter
		mu.Lock()
		sum += n
		mu.Unlock()
	})
	mu.Lock()
	defer mu.Unlock()
	return sum, err
}

// mustPin pins c and fails the test on error.
func (e *blockEnv) mustPin(c Content) {
	e.t.Helper()
	if _, err := e.pin(context.Background(), c); err != nil {
		e.t.Fatalf("Pin(%q): %v", c.Key, err)
	}
}

// firstMissing returns the first block of c that is not cached.
func firstMissing(s *BlockStore, c Content) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	cc := s.contents[contentIDOf(c.Key, c.ETag)]
	i := int64(0)
	for cc != nil && i < cc.nblocks && s.cachedLocked(blockKey{cc, uint32(i)}) {
		i++
	}
	return i
}

// fakeFreeSpace makes statfsFree report free bytes for the test's duration.
func fakeFreeSpace(t *testing.T, free int64) {
	t.Helper()
	orig := statfsFree
	statfsFree = func(string) (int64, error) { return free, nil }
	t.Cleanup(func() { statfsFree = orig })
}

func TestBlockStorePinFetchesAllInParallel(t *testing.T) {
	// 16 blocks of capacity: 4 blocks per GET. The content is 4 times the
	// capacity, which pinned blocks do not count against.
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 16 * testBS })
	c := e.fake.put("album/track.flac", 64*testBS+1000) // 65 blocks
	e.readOnce(c, 0, 2*testBS)                          // blocks 0 and 1, cached before
	filler := e.fake.put("album/cover.jpg", 14*testBS)  // fills the budget with c's 2 blocks
	e.readOnce(filler, 0, filler.Size)
	gets, fetched := e.gets(), e.fetchedBytes()
	e.fake.set(func(f *fakeStore) { f.delay = 20 * time.Millisecond; f.maxInFlight = 0 })

	sum, err := e.pin(context.Background(), c)
	if err != nil {
		t.Fatalf("Pin: %v", err)
	}
	if sum != c.Size {
		t.Errorf("progress added up to %d, want the size %d", sum, c.Size)
	}
	if got := e.fetchedBytes() - fetched; got != c.Size-2*testBS {
		t.Errorf("Pin fetched %d bytes, want the %d missing", got, c.Size-2*testBS)
	}
	if g := e.gets() - gets; g != 16 {
		t.Errorf("Pin made %d GETs for 63 missing blocks, want 16 (4 blocks per GET)", g)
	}
	e.fake.mu.Lock()
	maxInFlight := e.fake.maxInFlight
	e.fake.mu.Unlock()
	if maxInFlight < 2 {
		t.Errorf("at most %d GET in flight at once: Pin does not fetch in parallel", maxInFlight)
	}
	if maxInFlight > DefaultFetchConcurrency {
		t.Errorf("%d GETs in flight at once, more than the %d fetch slots", maxInFlight, DefaultFetchConcurrency)
	}
	st := e.s.Stats()
	if st.Pinned != c.Size || st.PinnedBlocks != 65 || st.Used != filler.Size || st.Blocks != 14 || st.Evictions != 0 {
		t.Errorf("stats after pinning: %+v; want Pinned %d in 65 blocks, the filler's 14 evictable, no eviction", st, c.Size)
	}
	if got := e.s.CachedBytes(filler); got != filler.Size {
		t.Errorf("CachedBytes(filler) = %d after pinning, want %d: fetching pinned blocks evicted", got, filler.Size)
	}
	if !e.s.Pinned(c.Key) || e.s.Pinned("album/other.flac") {
		t.Error("Pinned does not report the pinned key alone")
	}

	gets = e.gets()
	e.readOnce(c, 0, c.Size)
	if g := e.gets() - gets; g != 0 {
		t.Errorf("reading a pinned content made %d GETs, want 0", g)
	}
	if st := e.s.Stats(); st.Pinned != c.Size || st.Used != filler.Size {
		t.Errorf("after reading it: %+v", st)
	}

	// Pinning what is present costs nothing and reports all of it.
	if sum, err := e.pin(context.Background(), c); err != nil || sum != c.Size || e.gets() != gets {
		t.Errorf("Pin again = %d bytes of progress, %v, %d GETs; want %d, nil, 0", sum, err, e.gets()-gets, c.Size)
	}
}

func TestBlockStorePinnedBlocksAreNotEvicted(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 8 * testBS })
	c := e.fake.put("keep.bin", 12*testBS+77)
	e.readOnce(c, 0, 2*testBS) // cached before: Pin takes them out of the LRU
	e.mustPin(c)

	other := e.fake.put("stream.bin", 64*testBS) // 8 times the capacity
	h := e.s.Open(other)
	for off := int64(0); off < other.Size; off += testBS / 2 {
		e.read(h, other, off, testBS/2)
	}
	h.Close()
	for i := range int64(16) {
		e.readOnce(e.fake.put(fmt.Sprintf("small-%d", i), 1000), 0, 1000)
	}
	e.waitIdle()

	st := e.s.Stats()
	if st.Pinned != c.Size || st.PinnedBlocks != 13 {
		t.Errorf("pinned %d bytes in %d blocks after reading 8x the capacity of other data, want %d in 13", st.Pinned, st.PinnedBlocks, c.Size)
	}
	if st.Used > e.cfg.Capacity || st.Evictions == 0 {
		t.Errorf("stats: %+v; want Used <= %d and evictions", st, e.cfg.Capacity)
	}
	if got := e.s.CachedBytes(c); got != c.Size {
		t.Errorf("CachedBytes(pinned) = %d, want %d", got, c.Size)
	}
	if du := diskUsage(t, e.cfg.Dir); du > e.cfg.Capacity+c.Size+fsBlockSize {
		t.Errorf("%d bytes on disk, want at most capacity %d + pinned %d", du, e.cfg.Capacity, c.Size)
	}
	gets := e.gets()
	e.readOnce(c, 0, c.Size)
	if g := e.gets() - gets; g != 0 {
		t.Errorf("reading the pinned content made %d GETs", g)
	}
}

func TestBlockStoreUnpinMakesBlocksEvictable(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 8 * testBS })
	c := e.fake.put("was-pinned.bin", 16*testBS)
	o := e.fake.put("other.bin", 4*testBS)
	e.mustPin(c)
	for i := range int64(4) {
		e.readOnce(o, i*testBS, 10)
	}
	e.readOnce(c, 0, 10) // block 0 of c is now the most recently used block
	if st := e.s.Stats(); st.Used != 4*testBS || st.Pinned != c.Size {
		t.Fatalf("before Unpin: %+v", st)
	}

	e.s.Unpin(c.Key)
	if e.s.Pinned(c.Key) {
		t.Error("still pinned after Unpin")
	}
	st := e.s.Stats()
	if st.Pinned != 0 || st.PinnedBlocks != 0 || st.Used > e.cfg.Capacity {
		t.Errorf("after Unpin: %+v; want nothing pinned, Used <= %d", st, e.cfg.Capacity)
	}
	// The budget keeps the 8 most recently used blocks: c's block 0, all
	// of o (read after c was fetched) and 3 blocks of c.
	if got := e.s.CachedBytes(c); got != 4*testBS {
		t.Errorf("CachedBytes(c) = %d after Unpin, want %d", got, 4*testBS)
	}
	if got := e.s.CachedBytes(o); got != o.Size {
		t.Errorf("CachedBytes(o) = %d after Unpin, want %d: recently read blocks were evicted before old pinned ones", got, o.Size)
	}
	gets := e.gets()
	e.readOnce(c, 0, 10)
	if g := e.gets() - gets; g != 0 {
		t.Errorf("the most recently read block of c cost %d GETs after Unpin, want 0", g)
	}

	// Reading other data now evicts c.
	p := e.fake.put("more.bin", 8*testBS)
	for i := range int64(8) {
		e.readOnce(p, i*testBS, 10)
	}
	if got := e.s.CachedBytes(c); got != 0 {
		t.Errorf("CachedBytes(c) = %d after reading a capacity of other data, want 0", got)
	}
	if du := diskUsage(t, e.cfg.Dir); du > e.cfg.Capacity {
		t.Errorf("%d bytes on disk, capacity %d", du, e.cfg.Capacity)
	}
}

func TestBlockStoreFreeDropsBlocks(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("big/movie.mkv", 8*testBS+5)
	e.mustPin(c)
	if du := diskUsage(t, e.cfg.Dir); du < c.Size {
		t.Fatalf("%d bytes on disk after pinning %d", du, c.Size)
	}
	if got := e.s.Free(c.Key); got != c.Size {
		t.Errorf("Free = %d, want %d", got, c.Size)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 0 {
		t.Errorf("%d bytes on disk after Free", du)
	}
	st := e.s.Stats()
	if e.s.Pinned(c.Key) || st.Pinned != 0 || st.Used != 0 || e.s.CachedBytes(c) != 0 || len(e.s.Keys("")) != 0 {
		t.Errorf("after Free: pinned %v, %+v, keys %q", e.s.Pinned(c.Key), st, e.s.Keys(""))
	}

	// With a handle open and a block under a reader: the others go now,
	// that one once released, and the handle keeps reading.
	h := e.s.Open(c)
	defer h.Close()
	e.mustPin(c)
	k := blockKey{h.c, 3}
	e.s.mu.Lock()
	if !e.s.acquireLocked(k) {
		t.Fatal("block 3 is not cached")
	}
	e.s.mu.Unlock()
	if got := e.s.Free(c.Key); got != c.Size-testBS {
		t.Errorf("Free with a block held = %d, want %d", got, c.Size-testBS)
	}
	if got, du := e.s.CachedBytes(c), diskUsage(t, e.cfg.Dir); got != testBS || du != testBS {
		t.Errorf("with block 3 held: %d bytes cached, %d on disk; want %d", got, du, testBS)
	}
	e.s.mu.Lock()
	e.s.releaseLocked(k)
	e.s.mu.Unlock()
	if got, du := e.s.CachedBytes(c), diskUsage(t, e.cfg.Dir); got != 0 || du != 0 {
		t.Errorf("after the release: %d bytes cached, %d on disk; want 0", got, du)
	}
	gets := e.gets()
	e.read(h, c, 0, c.Size)
	if e.gets() == gets {
		t.Error("reading after Free made no GET")
	}
	if st := e.s.Stats(); st.Pinned != 0 || st.Used != c.Size {
		t.Errorf("read back after Free: %+v; want it cached, evictable", st)
	}

	// Free of an unpinned key works the same.
	if got := e.s.Free(c.Key); got != c.Size {
		t.Errorf("Free of unpinned cached content = %d, want %d", got, c.Size)
	}
	if got := e.s.Free("never/seen"); got != 0 {
		t.Errorf("Free of an unknown key = %d", got)
	}
}

func TestBlockStorePinsSurviveRestart(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 8 * testBS })
	c := e.fake.put("docs/thesis.pdf", 12*testBS+3)
	e.mustPin(c)
	o := e.fake.put("docs/notes.txt", 4*testBS)
	e.readOnce(o, 0, o.Size)

	// A pin that fetched nothing yet (offline) survives too.
	d := e.fake.put("docs/later.bin", 3*testBS)
	e.fake.set(func(f *fakeStore) { f.err = backend.ErrOffline })
	if _, err := e.pin(context.Background(), d); !errors.Is(err, backend.ErrOffline) {
		t.Fatalf("offline Pin: %v", err)
	}
	e.fake.set(func(f *fakeStore) { f.err = nil })

	e.reopen(nil)
	st := e.s.Stats()
	// A GET the offline Pin had started may complete once the store is
	// back: d may hold blocks, pinned like the rest of it.
	dHeld := e.s.CachedBytes(d)
	if st.Pinned != c.Size+dHeld || st.PinnedBlocks != 13+dHeld/testBS || st.Used != o.Size || st.Blocks != 4 {
		t.Errorf("after reopen: %+v; want Pinned %d in %d blocks, Used %d in 4", st, c.Size+dHeld, 13+dHeld/testBS, o.Size)
	}
	if !e.s.Pinned(c.Key) || !e.s.Pinned(d.Key) || e.s.Pinned(o.Key) {
		t.Errorf("after reopen: pinned c %v, d %v, o %v; want true, true, false", e.s.Pinned(c.Key), e.s.Pinned(d.Key), e.s.Pinned(o.Key))
	}
	if got := e.s.Keys("docs/"); strings.Join(got, ",") != "docs/later.bin,docs/notes.txt,docs/thesis.pdf" {
		t.Errorf("Keys(docs/) = %q", got)
	}

	// A smaller budget at open evicts only unpinned blocks.
	e.reopen(func(cfg *BlockStoreConfig) { cfg.Capacity = 2 * testBS })
	st = e.s.Stats()
	if st.Pinned != c.Size+dHeld || st.Used > 2*testBS {
		t.Errorf("after reopening with 2 blocks of capacity: %+v", st)
	}
	gets := e.gets()
	e.readOnce(c, 0, c.Size)
	if g := e.gets() - gets; g != 0 {
		t.Errorf("reading the pinned content after restarts made %d GETs", g)
	}

	// The pin without blocks resumes; its blocks are pinned as well.
	if _, err := e.pin(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if st := e.s.Stats(); st.Pinned != c.Size+d.Size {
		t.Errorf("pinned %d after resuming d, want %d", st.Pinned, c.Size+d.Size)
	}

	// After a crash, what the flusher committed holds, the pins included.
	if err := e.s.flush(false); err != nil {
		t.Fatal(err)
	}
	e.crash()
	e.open()
	if st := e.s.Stats(); st.Pinned != c.Size+d.Size || !e.s.Pinned(d.Key) {
		t.Errorf("after a crash: %+v", st)
	}

	// And an Unpin persists.
	e.s.Unpin(c.Key)
	e.s.Unpin(d.Key)
	e.reopen(nil)
	if st := e.s.Stats(); e.s.Pinned(c.Key) || st.Pinned != 0 || st.Used > e.cfg.Capacity {
		t.Errorf("after Unpin and reopen: pinned %v, %+v", e.s.Pinned(c.Key), st)
	}
}

func TestBlockStorePinNoSpace(t *testing.T) {
	e := newBlockEnv(t, nil)
	a := e.fake.put("cached.bin", 4*testBS)
	e.readOnce(a, 0, a.Size)
	c := e.fake.put("huge.iso", 32*testBS)
	e.readOnce(c, 0, testBS)
	fakeFreeSpace(t, pinSpareBytes+8*testBS)
	gets := e.gets()

	_, err := e.pin(context.Background(), c)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Pin of more than the free space: %v, want ErrNoSpace", err)
	}
	for _, s := range []string{`pin "huge.iso"`, "needs 1.9 MiB", "64.5 MiB free"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if g := e.gets() - gets; g != 0 {
		t.Errorf("Pin without space made %d GETs", g)
	}
	if got := e.s.CachedBytes(a); got != a.Size {
		t.Errorf("CachedBytes(a) = %d after the failed Pin, want %d", got, a.Size)
	}
	if got := e.s.CachedBytes(c); got != testBS {
		t.Errorf("CachedBytes(c) = %d after the failed Pin, want the %d cached before", got, testBS)
	}
	if !e.s.Pinned(c.Key) {
		t.Error("c is not pinned after a failed Pin")
	}

	// Pins in progress count against the free space.
	fakeFreeSpace(t, pinSpareBytes+40*testBS)
	c2 := e.fake.put("huge2.iso", 32*testBS)
	e.fake.hold()
	done := make(chan error, 1)
	go func() { done <- e.s.Pin(context.Background(), c, nil) }()
	e.fake.waitBlocked(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // it would wait at the gate
	defer cancel()
	if _, err := e.pin(ctx, c2); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "taken by other pins in progress") {
		t.Errorf("second Pin while the first still needs the space: %v, want ErrNoSpace", err)
	}
	e.fake.release()
	if err := <-done; err != nil {
		t.Fatalf("Pin with enough space: %v", err)
	}
	if _, err := e.pin(context.Background(), c2); err != nil {
		t.Errorf("Pin once the first one is done: %v", err)
	}
}

// TestBlockStorePinWriteENOSPC makes the disk really full for one
// content, by pointing its file at /dev/full.
func TestBlockStorePinWriteENOSPC(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	e := newBlockEnv(t, nil)
	a := e.fake.put("cached.bin", 4*testBS)
	e.readOnce(a, 0, a.Size)
	c := e.fake.put("full.bin", 4*testBS)
	name := contentIDOf(c.Key, c.ETag).String()
	path := filepath.Join(e.cfg.Dir, name[:2], name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/dev/full", path); err != nil {
		t.Fatal(err)
	}

	_, err := e.pin(context.Background(), c)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Pin onto a full disk: %v, want ErrNoSpace", err)
	}
	e.waitIdle()
	if got := e.s.CachedBytes(c); got != 0 {
		t.Errorf("CachedBytes = %d after failed writes", got)
	}
	if got := e.s.CachedBytes(a); got != a.Size {
		t.Errorf("CachedBytes(a) = %d after the failed Pin, want %d", got, a.Size)
	}
	e.s.Free(c.Key) // removes the link
}

func TestBlockStorePinOffline(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 8 * testBS }) // 2 blocks per GET
	c := e.fake.put("trip/photos.zip", 16*testBS)
	e.readOnce(c, 0, 4*testBS)
	e.fake.set(func(f *fakeStore) { f.err, f.okGets = backend.ErrOffline, 2 })

	start := time.Now()
	_, err := e.pin(context.Background(), c)
	if !errors.Is(err, backend.ErrOffline) || !strings.Contains(err.Error(), `pin "trip/photos.zip"`) {
		t.Fatalf("offline Pin: %v, want a wrapped ErrOffline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("offline Pin took %v", d)
	}
	e.waitIdle()
	// The 4 blocks cached before, and the 2 GETs that succeeded.
	if got := e.s.CachedBytes(c); got != 8*testBS {
		t.Errorf("CachedBytes = %d after the offline Pin, want %d", got, 8*testBS)
	}
	if st := e.s.Stats(); !e.s.Pinned(c.Key) || st.Pinned != 8*testBS || st.Used != 0 {
		t.Errorf("after the offline Pin: pinned %v, %+v", e.s.Pinned(c.Key), st)
	}

	// Back online, a read of the pinned content pins what it fetches, and
	// Pin fetches the rest only.
	e.fake.set(func(f *fakeStore) { f.err = nil })
	e.readOnce(c, firstMissing(e.s, c)*testBS, 10)
	if st := e.s.Stats(); st.Pinned != 9*testBS || st.Used != 0 {
		t.Errorf("after reading a block of the pinned content: %+v", st)
	}
	fetched := e.fetchedBytes()
	sum, err := e.pin(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.fetchedBytes() - fetched; got != 7*testBS {
		t.Errorf("resumed Pin fetched %d bytes, want the %d missing", got, 7*testBS)
	}
	if sum != c.Size {
		t.Errorf("resumed Pin progress added up to %d, want %d", sum, c.Size)
	}
}

func TestBlockStorePinCancel(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("slow.bin", 64*testBS)
	e.fake.hold()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.s.Pin(ctx, c, nil) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("cancelled Pin: %v, want DeadlineExceeded", err)
		}
	case <-time.After(2 * time.Second):
		e.fake.release()
		t.Fatalf("cancelled Pin had not returned after 2s; it returned %v once the GETs went on", <-done)
	}
	e.fake.release()
	e.waitIdle()
	// The GET already started completes, pinned.
	st := e.s.Stats()
	if !e.s.Pinned(c.Key) || st.Pinned == 0 || st.Pinned != e.s.CachedBytes(c) || st.Used != 0 {
		t.Errorf("after the cancelled Pin: pinned %v, %+v", e.s.Pinned(c.Key), st)
	}
	before := e.s.CachedBytes(c)
	fetched := e.fetchedBytes()
	e.mustPin(c)
	if got := e.fetchedBytes() - fetched; got != c.Size-before {
		t.Errorf("resumed Pin fetched %d bytes, want %d", got, c.Size-before)
	}
}

func TestBlockStoreUnpinOrForgetStopsPin(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 8 * testBS })
	for _, tc := range []struct {
		name string
		stop func(c Content)
		want error
	}{
		{"unpin", func(c Content) { e.s.Unpin(c.Key) }, context.Canceled},
		{"free", func(c Content) { e.s.Free(c.Key) }, context.Canceled},
		{"forget", func(c Content) { e.s.Forget(c.Key, "") }, backend.ErrPrecondition},
	} {
		c := e.fake.put(tc.name+".bin", 64*testBS)
		e.fake.hold()
		done := make(chan error, 1)
		go func() { done <- e.s.Pin(context.Background(), c, nil) }()
		e.fake.waitBlocked(t, 1)
		tc.stop(c)
		e.fake.release()
		if err := <-done; !errors.Is(err, tc.want) {
			t.Errorf("%s during Pin: Pin returned %v, want %v", tc.name, err, tc.want)
		}
		e.waitIdle()
		checkInvariants(t, e.s)
		if e.s.Pinned(c.Key) {
			t.Errorf("%s during Pin: still pinned", tc.name)
		}
		if st := e.s.Stats(); st.Pinned != 0 || st.Used > e.cfg.Capacity {
			t.Errorf("%s during Pin: %+v", tc.name, st)
		}
	}
}

func TestBlockStoreForgetDropsPinnedVersion(t *testing.T) {
	e := newBlockEnv(t, nil)
	v1 := e.fake.put("report.pdf", 6*testBS)
	e.mustPin(v1)
	v2 := e.fake.put("report.pdf", 5*testBS)
	e.s.Forget(v1.Key, v2.ETag)
	if st := e.s.Stats(); e.s.Pinned(v1.Key) || st.Pinned != 0 || st.PinnedBlocks != 0 {
		t.Errorf("after Forget of the pinned version: pinned %v, %+v", e.s.Pinned(v1.Key), st)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 0 {
		t.Errorf("%d bytes on disk after Forget", du)
	}
	e.mustPin(v2)
	e.reopen(nil)
	if st := e.s.Stats(); st.Pinned != v2.Size || e.s.CachedBytes(v1) != 0 {
		t.Errorf("after reopen: %+v, old version %d bytes", st, e.s.CachedBytes(v1))
	}
}

// TestBlockStorePinConcurrency runs Pin, Unpin, Free and reads (with
// read-ahead) of the same contents at once, under a small budget, for
// the race detector and the invariants; every byte read must be right.
func TestBlockStorePinConcurrency(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 16 * testBS; cfg.FetchConcurrency = 4 })
	var cs []Content
	for i := range 4 {
		cs = append(cs, e.fake.put(fmt.Sprintf("k%d", i), int64(20+i)*testBS+int64(i)*100))
	}
	e.fake.set(func(f *fakeStore) { f.delay = time.Millisecond })

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for ctx.Err() == nil {
				c := cs[rng.IntN(len(cs))]
				switch op := rng.IntN(10); {
				case op < 2:
					err := e.s.Pin(ctx, c, nil)
					if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("Pin(%s): %v", c.Key, err)
						return
					}
				case op < 3:
					e.s.Unpin(c.Key)
				case op < 4:
					e.s.Free(c.Key)
				default:
					h := e.s.Open(c)
					off := rng.Int64N(c.Size)
					for range 8 { // sequential: read-ahead starts
						n := min(testBS/2, c.Size-off)
						if n <= 0 {
							break
						}
						p := make([]byte, n)
						if _, err := h.ReadAt(context.Background(), p, off); err != nil {
							t.Errorf("ReadAt(%s, %d): %v", c.Key, off, err)
						} else if string(p) != string(want(c, off, n)) {
							t.Errorf("ReadAt(%s, %d): wrong bytes", c.Key, off)
						}
						off += n
					}
					h.Close()
				}
			}
		})
	}
	wg.Wait()
	e.waitIdle()
	checkInvariants(t, e.s)
	for _, c := range cs {
		e.s.Unpin(c.Key)
	}
	if st := e.s.Stats(); st.Pinned != 0 || st.Used > e.cfg.Capacity {
		t.Errorf("after unpinning everything: %+v", st)
	}
}
