package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

const testBS = 64 << 10 // block size of most tests: many blocks, small objects

// blockEnv is one block store over a fake object store, with the directory
// and database kept for reopening.
type blockEnv struct {
	t    *testing.T
	fake *fakeStore
	db   *bbolt.DB
	cfg  BlockStoreConfig
	s    *BlockStore
}

func newBlockEnv(t *testing.T, mod func(*BlockStoreConfig)) *blockEnv {
	t.Helper()
	tmp := t.TempDir()
	db, err := bbolt.Open(filepath.Join(tmp, "nimbus.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &blockEnv{t: t, fake: newFakeStore(), db: db}
	e.cfg = BlockStoreConfig{
		Dir:           filepath.Join(tmp, "blocks"),
		DB:            db,
		Fetcher:       e.fake,
		BlockSize:     testBS,
		Capacity:      64 << 20,
		FlushInterval: time.Hour, // tests flush explicitly, by Close or flush
		Logger:        slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	if mod != nil {
		mod(&e.cfg)
	}
	e.open()
	t.Cleanup(func() {
		if e.s != nil {
			e.waitIdle()
			checkInvariants(t, e.s)
			if err := e.s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
		if err := db.Close(); err != nil {
			t.Errorf("close db: %v", err)
		}
	})
	return e
}

func (e *blockEnv) open() {
	e.t.Helper()
	s, err := OpenBlockStore(e.cfg)
	if err != nil {
		e.t.Fatalf("OpenBlockStore: %v", err)
	}
	e.s = s
}

// reopen closes the store cleanly and opens it again on the same
// directory and database, with mod applied to the config.
func (e *blockEnv) reopen(mod func(*BlockStoreConfig)) {
	e.t.Helper()
	e.waitIdle()
	checkInvariants(e.t, e.s)
	if err := e.s.Close(); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	if mod != nil {
		mod(&e.cfg)
	}
	e.open()
}

// crash stops the store the way a crash would: no final flush, no clean
// marker. (The page cache survives, unlike in a real crash; the tests of
// recovery only rely on what the records claim.)
func (e *blockEnv) crash() {
	s := e.s
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	for _, c := range s.contents {
		s.closeFileLocked(c)
	}
	s.mu.Unlock()
	e.s = nil
}

// waitIdle waits until no fetch is in flight.
func (e *blockEnv) waitIdle() {
	e.t.Helper()
	wait.Until(e.t, 10*time.Second, "fetches to finish", func() bool {
		e.s.mu.Lock()
		defer e.s.mu.Unlock()
		return len(e.s.flights) == 0
	})
}

// read reads [off, off+n) through h and checks the bytes against the
// source, and io.EOF exactly when the read reaches past the end.
func (e *blockEnv) read(h *Handle, c Content, off, n int64) {
	e.t.Helper()
	p := make([]byte, n)
	got, err := h.ReadAt(context.Background(), p, off)
	exp := want(c, off, n)
	switch {
	case off+n > c.Size && !errors.Is(err, io.EOF):
		e.t.Fatalf("ReadAt(%d, %d) of %d bytes: err %v, want io.EOF", off, n, c.Size, err)
	case off+n <= c.Size && err != nil:
		e.t.Fatalf("ReadAt(%d, %d): %v", off, n, err)
	case got != len(exp):
		e.t.Fatalf("ReadAt(%d, %d) = %d bytes, want %d", off, n, got, len(exp))
	case !bytes.Equal(p[:got], exp):
		e.t.Fatalf("ReadAt(%d, %d): wrong bytes", off, n)
	}
}

// readOnce reads through a handle of its own, so that no earlier read
// makes this one look sequential and start read-ahead.
func (e *blockEnv) readOnce(c Content, off, n int64) {
	e.t.Helper()
	h := e.s.Open(c)
	defer h.Close()
	e.read(h, c, off, n)
}

func (e *blockEnv) gets() int {
	g, _ := e.fake.counts()
	return g
}

func (e *blockEnv) fetchedBytes() int64 {
	_, b := e.fake.counts()
	return b
}

// diskUsage is the space really allocated to content files under dir.
func diskUsage(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		total += info.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// checkInvariants checks the index against itself: every cached block is
// in exactly one of the LRU, the pinned map and the held map; the LRU
// holds only unpinned contents' blocks, in access order, and the pinned
// map only pinned ones'; the byte counts add up; nothing is reserved or in
// flight while idle.
func checkInvariants(t *testing.T, s *BlockStore) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var used, ahead, pinnedBytes, pinnedBlocks int64
	blocks := make(map[*content]int64)
	bytesOf := make(map[*content]int64)
	count := func(k blockKey) {
		n := s.cachedLenLocked(k)
		if k.c.pinned {
			pinnedBytes += n
			pinnedBlocks++
		} else {
			used += n
		}
		blocks[k.c]++
		bytesOf[k.c] += n
		if k.c.gone() {
			t.Errorf("block %d of retired content %q is cached", k.i, k.c.key)
		}
		if s.contents[k.c.id] != k.c {
			t.Errorf("block %d of %q belongs to a content not in the index", k.i, k.c.key)
		}
	}
	var lastSeq uint64
	for _, k := range s.lru.Keys() {
		if _, ok := s.held[k]; ok {
			t.Errorf("block %d of %q is both in the LRU and held", k.i, k.c.key)
		}
		if _, ok := s.pinned[k]; ok {
			t.Errorf("block %d of %q is both in the LRU and pinned", k.i, k.c.key)
		}
		if k.c.pinned {
			t.Errorf("block %d of pinned %q is in the LRU", k.i, k.c.key)
		}
		e, _ := s.lru.Peek(k)
		if e.ahead {
			ahead += s.blockLen(k.c, int64(k.i))
		}
		if e.seq < lastSeq {
			t.Errorf("LRU out of access order at block %d of %q: seq %d after %d", k.i, k.c.key, e.seq, lastSeq)
		}
		lastSeq = e.seq
		count(k)
	}
	for k := range s.pinned {
		if _, ok := s.held[k]; ok {
			t.Errorf("block %d of %q is both pinned and held", k.i, k.c.key)
		}
		if !k.c.pinned {
			t.Errorf("block %d of unpinned %q is in the pinned map", k.i, k.c.key)
		}
		count(k)
	}
	for k, h := range s.held {
		if h.refs <= 0 {
			t.Errorf("held block %d of %q has %d refs", k.i, k.c.key, h.refs)
		}
		count(k)
	}
	if used != s.used {
		t.Errorf("used = %d, blocks add up to %d", s.used, used)
	}
	for k, m := range s.partial {
		if !s.cachedLocked(k) {
			t.Errorf("block %d of %q is partial but not cached", k.i, k.c.key)
		}
		if n := s.blockPages(k.c, int64(k.i)); m.count() == 0 || m.hasRange(0, n) {
			t.Errorf("partial block %d of %q has %d of %d pages", k.i, k.c.key, m.count(), n)
		}
		if e, ok := s.lru.Peek(k); ok && e.ahead {
			t.Errorf("partial block %d of %q counts as read-ahead", k.i, k.c.key)
		}
	}
	if pinnedBytes != s.pinnedBytes || pinnedBlocks != s.pinnedBlocks {
		t.Errorf("pinned = %d bytes / %d blocks, blocks add up to %d / %d", s.pinnedBytes, s.pinnedBlocks, pinnedBytes, pinnedBlocks)
	}
	for c := range blocks {
		if s.contents[c.id] != c {
			t.Errorf("content %q has cached blocks but is not in the index", c.key)
		}
	}
	for _, c := range s.contents {
		if c.blocks != blocks[c] || c.bytes != bytesOf[c] {
			t.Errorf("content %q counts %d blocks / %d bytes, index has %d / %d", c.key, c.blocks, c.bytes, blocks[c], bytesOf[c])
		}
	}
	if len(s.flights) == 0 {
		if s.reserved != 0 {
			t.Errorf("reserved = %d with no fetch in flight", s.reserved)
		}
		if s.pinPending < 0 {
			t.Errorf("pinPending = %d", s.pinPending)
		}
		if ahead != s.ahead {
			t.Errorf("read-ahead bytes = %d, unread read-ahead blocks add up to %d", s.ahead, ahead)
		}
		if len(s.held) == 0 && s.used > s.capacity {
			t.Errorf("used %d > capacity %d with nothing held", s.used, s.capacity)
		}
	}
}

func TestBlockStoreRandomReadsMatchSource(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("data/big.bin", 5<<20+12345) // a short last block
	h := e.s.Open(c)
	defer h.Close()

	// Edges first: straddling block boundaries, the short last block,
	// at and after the end.
	e.read(h, c, testBS-10, 20)
	e.read(h, c, 3*testBS-1, 2*testBS+2)
	e.read(h, c, c.Size-12345, 12345)
	e.read(h, c, c.Size-1, 1)
	e.read(h, c, c.Size-100, 1000)
	e.read(h, c, c.Size, 10)
	e.read(h, c, c.Size+testBS, 10)
	if n, err := h.ReadAt(context.Background(), nil, 7); n != 0 || err != nil {
		t.Errorf("empty ReadAt = %d, %v; want 0, nil", n, err)
	}

	// Random reads from several goroutines, each with its own handle.
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			h := e.s.Open(c)
			defer h.Close()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 100 {
				off := rng.Int64N(c.Size + 1000)
				n := 1 + rng.Int64N(3*testBS)
				p := make([]byte, n)
				got, err := h.ReadAt(context.Background(), p, off)
				if err != nil && !(errors.Is(err, io.EOF) && off+n > c.Size) {
					t.Errorf("ReadAt(%d, %d): %v", off, n, err)
					return
				}
				if !bytes.Equal(p[:got], want(c, off, n)) {
					t.Errorf("ReadAt(%d, %d): wrong bytes", off, n)
					return
				}
			}
		})
	}
	wg.Wait()

	// And the whole object, hashed.
	whole := make([]byte, c.Size)
	if n, err := h.ReadAt(context.Background(), whole, 0); n != len(whole) || err != nil {
		t.Fatalf("read whole object: %d, %v", n, err)
	}
	if sha256.Sum256(whole) != sha256.Sum256(want(c, 0, c.Size)) {
		t.Fatal("sha256 of the object read back differs from the source")
	}
	if got := e.s.CachedBytes(c); got != c.Size {
		t.Errorf("CachedBytes = %d after reading everything, want %d", got, c.Size)
	}
}

func TestBlockStoreFetchesOnlyCoveringBlocks(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("a.bin", 4<<20+1000)
	// A handle each: a handle's first read fetches whole blocks, and so
	// would not one that seeks (TestHandleSeekingReadsFetchPages).
	e.readOnce(c, 3*testBS-5, 10) // blocks 2 and 3
	if got := e.fetchedBytes(); got != 2*testBS {
		t.Fatalf("reading across one block boundary fetched %d bytes, want %d", got, 2*testBS)
	}
	e.readOnce(c, 40*testBS+100, 1) // block 40
	e.readOnce(c, c.Size-1, 1)      // the short last block
	e.readOnce(c, 3*testBS+7, 100)  // cached
	e.readOnce(c, 40*testBS, 50)    // cached
	e.waitIdle()
	if got, want := e.fetchedBytes(), int64(3*testBS+1000); got != want {
		t.Errorf("fetched %d bytes, want %d (blocks 2, 3, 40 and the last)", got, want)
	}
	if got := e.s.CachedBytes(c); got != 3*testBS+1000 {
		t.Errorf("CachedBytes = %d, want %d", got, 3*testBS+1000)
	}
	e.fake.mu.Lock()
	defer e.fake.mu.Unlock()
	if e.fake.noIfMatch != 0 {
		t.Errorf("%d GETs were not pinned to the ETag", e.fake.noIfMatch)
	}
	for _, r := range e.fake.ranges {
		if r[0]%testBS != 0 || (r[1]%testBS != 0 && r[1] != c.Size) {
			t.Errorf("GET [%d, %d) is not block-aligned", r[0], r[1])
		}
	}
}

func TestBlockStoreConcurrentReadersShareOneFetch(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("shared.bin", 2<<20)
	e.fake.hold()

	const readers = 16
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for r := range readers {
		wg.Go(func() {
			h := e.s.Open(c)
			defer h.Close()
			off := int64(5*testBS + r*1000)
			p := make([]byte, 500)
			if _, err := h.ReadAt(context.Background(), p, off); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(p, want(c, off, 500)) {
				errs <- fmt.Errorf("reader %d: wrong bytes", r)
			}
		})
	}
	wait.Until(t, 10*time.Second, "all readers to wait for the block", func() bool {
		st := e.s.Stats()
		return st.Misses+st.Joins == readers
	})
	e.fake.release()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if g := e.gets(); g != 1 {
		t.Errorf("%d concurrent readers of one missing block made %d GETs, want 1", readers, g)
	}
}

func TestHandleJoinsReadAheadInFlight(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("seq.bin", 2<<20)
	a := e.s.Open(c)
	defer a.Close()
	e.read(a, c, 0, 16<<10)
	e.fake.hold()
	e.read(a, c, 16<<10, 16<<10) // sequential: read-ahead of blocks 1 and 2 starts, and waits
	e.fake.waitBlocked(t, 2)

	b := e.s.Open(c)
	defer b.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.read(b, c, testBS+100, 100) // block 1, in flight
	}()
	wait.Until(t, 10*time.Second, "the reader to join the read-ahead", func() bool { return e.s.Stats().Joins == 1 })
	e.fake.release()
	<-done
	if g := e.gets(); g != 3 {
		t.Errorf("GETs = %d, want 3 (block 0, then read-ahead of blocks 1 and 2)", g)
	}
}

func TestHandleSequentialReadAhead(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.ReadAhead = 1 << 20 })
	e.fake.set(func(f *fakeStore) { f.delay = 2 * time.Millisecond })
	c := e.fake.put("movie.mkv", 8<<20)
	h := e.s.Open(c)
	defer h.Close()
	const chunk = 32 << 10
	for off := int64(0); off < c.Size; off += chunk {
		e.read(h, c, off, chunk)
	}
	e.waitIdle()

	nblocks := c.Size / testBS
	st := e.s.Stats()
	e.fake.mu.Lock()
	maxInFlight := e.fake.maxInFlight
	e.fake.mu.Unlock()
	if maxInFlight < 2 {
		t.Errorf("at most %d GET in flight during a sequential read, want parallel read-ahead", maxInFlight)
	}
	if st.Misses >= nblocks/4 {
		t.Errorf("sequential read of %d blocks missed %d of them (hits %d, joins %d): read-ahead is not working", nblocks, st.Misses, st.Hits, st.Joins)
	}
	if got := e.fetchedBytes(); got != c.Size {
		t.Errorf("fetched %d bytes for a %d-byte object: read-ahead fetched twice or past the end", got, c.Size)
	}
	t.Logf("GETs %d, max in flight %d, stats %+v", e.gets(), maxInFlight, st)
}

// TestHandleReorderedSequentialReads swaps every pair of reads, as the
// kernel's concurrent reads of one stream may arrive: still sequential.
func TestHandleReorderedSequentialReads(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.ReadAhead = 1 << 20 })
	c := e.fake.put("stream.ts", 8<<20)
	h := e.s.Open(c)
	defer h.Close()
	const chunk = 24 << 10 // not a divisor of the block size: pairs straddle boundaries
	for off := int64(0); off < c.Size; off += 2 * chunk {
		e.read(h, c, off+chunk, chunk)
		e.read(h, c, off, chunk)
	}
	e.waitIdle()
	if st := e.s.Stats(); st.Misses >= c.Size/testBS/4 {
		t.Errorf("reordered sequential reads missed %d of %d blocks: read-ahead kept resetting", st.Misses, c.Size/testBS)
	}
	if got := e.fetchedBytes(); got != c.Size {
		t.Errorf("fetched %d bytes for a %d-byte object", got, c.Size)
	}
}

func TestBlockStoreFetchConcurrencyBound(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.FetchConcurrency = 3; cfg.ReadAhead = 1 << 20 })
	e.fake.set(func(f *fakeStore) { f.delay = time.Millisecond })
	var wg sync.WaitGroup
	for r := range 4 {
		c := e.fake.put(fmt.Sprintf("stream-%d", r), 4<<20)
		wg.Go(func() {
			h := e.s.Open(c)
			defer h.Close()
			for off := int64(0); off < c.Size; off += 32 << 10 {
				e.read(h, c, off, 32<<10)
			}
		})
	}
	wg.Wait()
	e.waitIdle()
	e.fake.mu.Lock()
	defer e.fake.mu.Unlock()
	if e.fake.maxInFlight > 3 || e.fake.maxInFlight < 2 {
		t.Errorf("max GETs in flight = %d with FetchConcurrency 3 and 4 sequential readers", e.fake.maxInFlight)
	}
}

func TestHandleRandomReadsDoNoReadAhead(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("db.sqlite", 128*testBS)
	h := e.s.Open(c)
	defer h.Close()
	const reads = 40
	for i := range int64(reads) {
		block := i * 37 % 128 // consecutive reads are far apart
		e.read(h, c, block*testBS+100, 4096)
	}
	e.waitIdle()
	// The first read fetches its block; the others seek, and fetch the
	// randomFetchBytes around them.
	if g, b := e.fake.counts(); g != reads || b != testBS+(reads-1)*randomFetchBytes {
		t.Errorf("%d random reads made %d GETs of %d bytes, want %d of %d", reads, g, b, reads, testBS+(reads-1)*randomFetchBytes)
	}
	if st := e.s.Stats(); st.Misses != reads {
		t.Errorf("misses = %d, want %d", st.Misses, reads)
	}
}

// TestHandleHeadOfLargeObject is `head -c 1` of a 1 GiB object with the
// default configuration: the kernel reads 128 KiB, maybe twice.
func TestHandleHeadOfLargeObject(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 10 << 30 })
	c := e.fake.put("disk.iso", 1<<30)
	h := e.s.Open(c)
	e.read(h, c, 0, 128<<10)
	e.read(h, c, 128<<10, 128<<10)
	h.Close()
	e.waitIdle()
	if got := e.fetchedBytes(); got > 4<<20 {
		t.Errorf("head -c 1 of a 1 GiB object moved %d bytes, want at most 4 MiB", got)
	}
}

func TestBlockStoreEvictsLRUWithinCapacity(t *testing.T) {
	const capBlocks = 16
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = capBlocks * testBS })
	c := e.fake.put("video.mp4", 64*testBS)
	h := e.s.Open(c)
	for off := int64(0); off < c.Size; off += 32 << 10 {
		e.read(h, c, off, 32<<10)
		if du := diskUsage(t, e.cfg.Dir); du > e.cfg.Capacity+testBS {
			t.Fatalf("after reading to %d: %d bytes on disk, capacity %d", off, du, e.cfg.Capacity)
		}
	}
	h.Close()
	e.waitIdle()
	st := e.s.Stats()
	if st.Used > e.cfg.Capacity || st.Evictions == 0 {
		t.Fatalf("stats after reading 4x the capacity: %+v", st)
	}
	if du := diskUsage(t, e.cfg.Dir); du > e.cfg.Capacity {
		t.Errorf("%d bytes on disk, capacity %d", du, e.cfg.Capacity)
	}

	// The most recent blocks are still there, in any order...
	gets := e.gets()
	h = e.s.Open(c)
	defer h.Close()
	for b := int64(63); b >= 56; b-- {
		e.read(h, c, b*testBS, 100)
	}
	if g := e.gets(); g != gets {
		t.Errorf("re-reading the 8 most recent blocks made %d GETs, want 0", g-gets)
	}
	// ...and the oldest are gone.
	e.read(h, c, 0, 100)
	e.read(h, c, 5*testBS, 100)
	if g := e.gets(); g != gets+2 {
		t.Errorf("re-reading 2 of the oldest blocks made %d GETs, want 2", g-gets)
	}
}

func TestBlockStoreEvictsLeastRecentlyUsed(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 4 * testBS })
	c := e.fake.put("lru.bin", 8*testBS)
	read := func(block int64) { e.readOnce(c, block*testBS, 10) }
	for _, b := range []int64{0, 1, 2, 3, 0, 4} { // 0 is used again before 4 evicts
		read(b)
	}
	gets := e.gets()
	for _, b := range []int64{0, 2, 3, 4} {
		read(b)
	}
	if g := e.gets(); g != gets {
		t.Errorf("the 4 most recently used blocks cost %d GETs, want 0", g-gets)
	}
	read(1)
	if g := e.gets(); g != gets+1 {
		t.Errorf("the least recently used block cost %d GETs, want 1 (evicted)", g-gets)
	}
}

// TestBlockStoreLongSequentialReadStaysWithinCapacity is `cat` of a large
// object through a much smaller cache, with the default block size and
// read-ahead: the disk never holds more than the budget plus the blocks
// being written, and the bytes are right.
func TestBlockStoreLongSequentialReadStaysWithinCapacity(t *testing.T) {
	size := int64(1 << 30)
	if testing.Short() {
		size = 256 << 20
	}
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 64 << 20 })
	c := e.fake.put("backup.tar", size)
	const slack = 2 << 20 // two blocks being written

	var maxDU int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			maxDU = max(maxDU, diskUsage(t, e.cfg.Dir))
		}
	}()

	h := e.s.Open(c)
	p := make([]byte, 128<<10)
	exp := make([]byte, len(p))
	seed := seedOf(c.ETag)
	for off := int64(0); off < size; off += int64(len(p)) {
		if _, err := h.ReadAt(context.Background(), p, off); err != nil {
			t.Fatalf("ReadAt(%d): %v", off, err)
		}
		fakeFill(seed, off, exp)
		if !bytes.Equal(p, exp) {
			t.Fatalf("ReadAt(%d): wrong bytes", off)
		}
	}
	h.Close()
	close(stop)
	<-sampled
	e.waitIdle()

	if maxDU > e.cfg.Capacity+slack {
		t.Errorf("disk usage peaked at %d bytes, capacity %d", maxDU, e.cfg.Capacity)
	}
	st := e.s.Stats()
	if got := e.fetchedBytes(); got > size+size/16 {
		t.Errorf("fetched %d bytes to read %d: read-ahead blocks were evicted before being read (wasted %d)", got, size, st.ReadAheadWasted)
	}
	t.Logf("peak disk %d MiB, GETs %d, stats %+v", maxDU>>20, e.gets(), st)
}

// TestBlockStoreHeldBlockIsNotEvicted holds a block as a reader inside its
// pread would, then fills the cache: the block survives, bytes intact.
func TestBlockStoreHeldBlockIsNotEvicted(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 2 * testBS })
	a := e.fake.put("a", 4*testBS)
	b := e.fake.put("b", 4*testBS)
	ha, hb := e.s.Open(a), e.s.Open(b)
	defer ha.Close()
	defer hb.Close()
	e.read(ha, a, 0, 10)

	k := blockKey{ha.c, 0}
	e.s.mu.Lock()
	if !e.s.acquireLocked(k) {
		t.Fatal("block 0 of a is not cached")
	}
	e.s.mu.Unlock()
	for i := range int64(4) {
		e.read(hb, b, i*testBS, 10)
	}
	p := make([]byte, testBS)
	if _, err := ha.c.f.ReadAt(p, 0); err != nil || !bytes.Equal(p, want(a, 0, testBS)) {
		t.Fatalf("held block was evicted under its reader (err %v)", err)
	}
	e.s.mu.Lock()
	e.s.releaseLocked(k)
	e.s.mu.Unlock()
	if st := e.s.Stats(); st.Used > e.cfg.Capacity {
		t.Errorf("used %d > capacity %d after the hold was released", st.Used, e.cfg.Capacity)
	}
}

func TestBlockStorePersistsAcrossRestart(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("notes.txt", 10*testBS)
	for i := range int64(10) {
		e.readOnce(c, i*testBS, 10)
	}
	before := e.s.Stats()

	e.reopen(nil)
	if st := e.s.Stats(); st.Blocks != 10 || st.Used != before.Used {
		t.Fatalf("after reopen: %d blocks / %d bytes, want 10 / %d", st.Blocks, st.Used, before.Used)
	}
	gets := e.gets()
	e.readOnce(c, 0, c.Size)
	if g := e.gets(); g != gets {
		t.Errorf("reading blocks cached before the restart made %d GETs", g-gets)
	}

	// A smaller budget is enforced at open, keeping the most recently
	// used: after the whole-object read the order is 0..9; reading 0 and
	// 1 again makes it 2..9, 0, 1, and the order must survive the restart.
	e.readOnce(c, 0, 10)
	e.readOnce(c, testBS, 10)
	e.reopen(func(cfg *BlockStoreConfig) { cfg.Capacity = 5 * testBS })
	st := e.s.Stats()
	if st.Used > 5*testBS || st.Blocks != 5 {
		t.Fatalf("after reopening with 5 blocks of capacity: %+v", st)
	}
	if du := diskUsage(t, e.cfg.Dir); du > 5*testBS {
		t.Errorf("%d bytes on disk after shrinking to %d", du, 5*testBS)
	}
	gets = e.gets()
	for _, b := range []int64{0, 1, 7, 8, 9} {
		e.readOnce(c, b*testBS+1, 10)
	}
	if g := e.gets(); g != gets {
		t.Errorf("the 5 most recent blocks cost %d GETs after shrinking, want 0", g-gets)
	}
	e.readOnce(c, 2*testBS+1, 10)
	if g := e.gets(); g != gets+1 {
		t.Errorf("the oldest block cost %d GETs after shrinking, want 1", g-gets)
	}
}

func TestBlockStoreFlusherPersistsWithoutClose(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.FlushInterval = 10 * time.Millisecond })
	c := e.fake.put("log.txt", 4*testBS)
	h := e.s.Open(c)
	e.read(h, c, 0, c.Size)
	h.Close()
	e.waitIdle()
	wait.Until(t, 10*time.Second, "the flusher", func() bool {
		e.s.mu.Lock()
		defer e.s.mu.Unlock()
		return len(e.s.pending) == 0 && len(e.s.unsynced) == 0
	})
	e.crash()
	e.open()
	gets := e.gets()
	h = e.s.Open(c)
	defer h.Close()
	e.read(h, c, 0, c.Size)
	if g := e.gets(); g != gets {
		t.Errorf("blocks flushed before a crash cost %d GETs after it", g-gets)
	}
}

func TestBlockStoreCrashForgetsUnrecordedContent(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("fresh.bin", 8*testBS)
	h := e.s.Open(c)
	e.read(h, c, 0, c.Size)
	h.Close()
	e.waitIdle()
	e.crash() // before any flush: nothing is recorded

	e.open()
	if st := e.s.Stats(); st.Blocks != 0 || st.Used != 0 {
		t.Errorf("after a crash before any flush: %+v, want nothing cached", st)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 0 {
		t.Errorf("%d bytes of unrecorded blocks left on disk", du)
	}
	gets := e.gets()
	h = e.s.Open(c)
	defer h.Close()
	e.read(h, c, 0, c.Size)
	if e.gets() == gets {
		t.Error("unrecorded blocks were served after a crash")
	}
}

// TestBlockStoreCrashPunchesUnrecordedBlocks: a content is recorded with
// some blocks, more are fetched, and the crash comes before they are
// flushed. After it, only the recorded blocks count, and the others' bytes
// are given back.
func TestBlockStoreCrashPunchesUnrecordedBlocks(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("half.bin", 8*testBS)
	h := e.s.Open(c)
	defer h.Close()
	e.read(h, c, 0, 2*testBS)
	e.waitIdle()
	if err := e.s.flush(false); err != nil {
		t.Fatal(err)
	}
	e.readOnce(c, 6*testBS, 2*testBS)
	e.waitIdle()
	e.crash()

	e.open()
	if got := e.s.CachedBytes(c); got != 2*testBS {
		t.Errorf("after the crash %d bytes count as cached, want the %d recorded", got, 2*testBS)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 2*testBS {
		t.Errorf("after the crash %d bytes on disk, want the %d recorded", du, 2*testBS)
	}
}

// TestBlockStoreCrashAfterEvictionDoesNotServeHoles: records committed,
// then blocks evicted (punched) and the crash comes before the next flush.
// The records still claim the blocks, in a file that still exists because
// another block of it is cached; they must not be believed.
func TestBlockStoreCrashAfterEvictionDoesNotServeHoles(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 4 * testBS })
	a := e.fake.put("a.bin", 4*testBS)
	b := e.fake.put("b.bin", 4*testBS)
	h := e.s.Open(a)
	e.read(h, a, 0, a.Size)
	h.Close()
	e.waitIdle()
	if err := e.s.flush(false); err != nil {
		t.Fatal(err)
	}
	for i := range int64(3) {
		e.readOnce(b, i*testBS, 10) // evicts blocks 0, 1 and 2 of a
	}
	e.waitIdle()
	if got := e.s.CachedBytes(a); got != testBS {
		t.Fatalf("a has %d bytes cached; the test needs exactly its last block", got)
	}
	e.crash()

	e.open()
	if got := e.s.CachedBytes(a); got != testBS {
		t.Errorf("after the crash a counts %d bytes cached, want %d: punched blocks were believed", got, testBS)
	}
	if got := e.s.CachedBytes(b); got != 0 {
		t.Errorf("after the crash b counts %d bytes cached, never recorded", got)
	}
	gets := e.gets()
	h = e.s.Open(a)
	defer h.Close()
	e.read(h, a, 0, a.Size) // checks the bytes: zeros from holes would fail
	if g := e.gets(); g == gets {
		t.Error("no GET to restore the punched blocks")
	}
	if du := diskUsage(t, e.cfg.Dir); du > e.cfg.Capacity {
		t.Errorf("%d bytes on disk after recovery, capacity %d", du, e.cfg.Capacity)
	}
}

func TestBlockStoreETagChange(t *testing.T) {
	e := newBlockEnv(t, nil)
	v1 := e.fake.put("doc.odt", 8*testBS)
	h1 := e.s.Open(v1)
	defer h1.Close()
	e.read(h1, v1, 0, 2*testBS)
	if got := e.s.CachedBytes(v1); got != 2*testBS {
		t.Fatalf("CachedBytes = %d, want %d", got, 2*testBS)
	}

	v2 := e.fake.put("doc.odt", 8*testBS) // changed remotely
	_, err := h1.ReadAt(context.Background(), make([]byte, 10), 5*testBS)
	if !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("reading a block of a replaced object: %v, want ErrPrecondition", err)
	}
	if !strings.Contains(err.Error(), `fetch "doc.odt" block 5`) {
		t.Errorf("error lacks context: %v", err)
	}

	e.s.Forget(v1.Key, v2.ETag)
	if got := e.s.CachedBytes(v1); got != 0 {
		t.Errorf("CachedBytes(old) = %d after Forget", got)
	}
	if st := e.s.Stats(); st.Used != 0 || st.Blocks != 0 {
		t.Errorf("after Forget: %+v, want nothing cached", st)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 0 {
		t.Errorf("after Forget %d bytes remain on disk", du)
	}
	gets := e.gets()
	if _, err := h1.ReadAt(context.Background(), make([]byte, 10), 0); !errors.Is(err, backend.ErrPrecondition) {
		t.Errorf("reading a forgotten version: %v, want ErrPrecondition", err)
	}
	if e.gets() != gets {
		t.Error("reading a forgotten version went to the store")
	}

	h2 := e.s.Open(v2)
	defer h2.Close()
	e.read(h2, v2, 0, 2*testBS)
	if e.s.CachedBytes(v2) != 2*testBS {
		t.Errorf("CachedBytes(new) = %d", e.s.CachedBytes(v2))
	}
	e.reopen(nil)
	if e.s.CachedBytes(v1) != 0 || e.s.CachedBytes(v2) != 2*testBS {
		t.Errorf("after reopen: old %d bytes, new %d bytes", e.s.CachedBytes(v1), e.s.CachedBytes(v2))
	}
	e.s.Forget(v2.Key, "")
	if st := e.s.Stats(); st.Used != 0 {
		t.Errorf("Forget(key, \"\") left %d bytes", st.Used)
	}
}

func TestBlockStoreFetchErrors(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("remote.bin", 8*testBS)
	h := e.s.Open(c)
	defer h.Close()

	e.fake.set(func(f *fakeStore) { f.err = backend.ErrOffline })
	start := time.Now()
	_, err := h.ReadAt(context.Background(), make([]byte, 100), 3*testBS)
	if !errors.Is(err, backend.ErrOffline) || !strings.Contains(err.Error(), `fetch "remote.bin" block 3`) {
		t.Fatalf("offline read: %v, want ErrOffline with context", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("offline read took %v", d)
	}

	e.fake.set(func(f *fakeStore) { f.err, f.shortBy = nil, 100 })
	_, err = h.ReadAt(context.Background(), make([]byte, 100), 3*testBS)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short body: %v, want io.ErrUnexpectedEOF", err)
	}
	e.waitIdle()
	if got := e.s.CachedBytes(c); got != 0 {
		t.Errorf("failed fetches left %d bytes marked cached", got)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 0 {
		t.Errorf("failed fetches left %d bytes on disk", du)
	}

	e.fake.set(func(f *fakeStore) { f.shortBy = 0 })
	gets := e.gets()
	e.read(h, c, 3*testBS, 100)
	if e.gets() != gets+1 {
		t.Errorf("after recovery: %d GETs, want 1", e.gets()-gets)
	}
}

func TestHandleReadCancelStopsWaitingNotFetching(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("slow.bin", 4*testBS)
	h := e.s.Open(c)
	defer h.Close()
	e.fake.hold()

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.ReadAt(ctx, make([]byte, 10), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled read: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancelled read returned after %v", d)
	}
	e.fake.release()
	e.waitIdle()
	if got := e.s.CachedBytes(c); got != testBS {
		t.Errorf("CachedBytes = %d: the fetch abandoned by a cancelled reader did not complete into the cache", got)
	}
	gets := e.gets()
	h2 := e.s.Open(c) // a new handle: h's next read would count as sequential
	defer h2.Close()
	e.read(h2, c, 0, 10)
	if e.gets() != gets {
		t.Error("the block fetched for a cancelled reader was fetched again")
	}
}

func TestBlockStoreClosed(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("x", 4*testBS)
	h := e.s.Open(c)
	e.read(h, c, 0, 10)
	if err := e.s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ReadAt(context.Background(), make([]byte, 10), 0); !errors.Is(err, ErrBlockStoreClosed) {
		t.Errorf("read after Close: %v, want ErrBlockStoreClosed", err)
	}
	h.Close()
	if _, err := e.s.Open(c).ReadAt(context.Background(), make([]byte, 10), 0); !errors.Is(err, ErrBlockStoreClosed) {
		t.Errorf("read from a handle opened after Close: %v", err)
	}
	e.open() // for the cleanup
}

func TestBlockStoreConfigValidation(t *testing.T) {
	e := newBlockEnv(t, nil)
	for _, mod := range []func(*BlockStoreConfig){
		func(c *BlockStoreConfig) { c.Capacity = 0 },
		func(c *BlockStoreConfig) { c.BlockSize = 1000 },
		func(c *BlockStoreConfig) { c.Fetcher = nil },
	} {
		cfg := e.cfg
		mod(&cfg)
		if s, err := OpenBlockStore(cfg); err == nil {
			t.Errorf("OpenBlockStore accepted %+v", cfg)
			if err := s.Close(); err != nil {
				t.Error(err)
			}
		}
	}
}
