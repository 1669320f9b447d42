package cache

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

const (
	mib  = 1 << 20
	page = 4096
)

// seekingHandle opens c and makes its first read (at offset 0, whole
// blocks, like a database reading its header), so that its next reads
// seek.
func seekingHandle(e *blockEnv, c Content) *Handle {
	e.t.Helper()
	h := e.s.Open(c)
	e.t.Cleanup(h.Close)
	e.read(h, c, 0, page)
	return h
}

// randomOffsets returns n 4 KiB-aligned offsets in [from, size), seeded.
func randomOffsets(n int, from, size int64) []int64 {
	rng := rand.New(rand.NewPCG(7, 7))
	out := make([]int64, n)
	for i := range out {
		out[i] = from + rng.Int64N((size-from)/page)*page
	}
	return out
}

// TestHandleSeekingReadsFetchPages is a database doing 4 KiB preads all
// over a large object: its misses fetch a few pages, not whole blocks, at
// most 4x the bytes it asks for, and nothing is read ahead.
func TestHandleSeekingReadsFetchPages(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 1 << 30 })
	c := e.fake.put("db.bin", 512*mib)
	h := seekingHandle(e, c)
	g0, b0 := e.fake.counts()

	const reads = 500
	for _, off := range randomOffsets(reads, mib, c.Size) {
		e.read(h, c, off, page)
	}
	e.waitIdle()
	g, b := e.fake.counts()
	if asked := int64(reads * page); b-b0 > 4*asked {
		t.Errorf("%d random 4 KiB reads fetched %d bytes, more than 4x the %d asked", reads, b-b0, asked)
	}
	if g-g0 > reads {
		t.Errorf("%d random reads made %d GETs: read-ahead or split fetches", reads, g-g0)
	}
	st := e.s.Stats()
	if st.Used != 1*mib+(b-b0) || st.FetchedBytes != b {
		t.Errorf("used %d, fetched %d: want the %d bytes fetched, counted once", st.Used, st.FetchedBytes, b)
	}
	// Every read again: all cached, no GET.
	for _, off := range randomOffsets(reads, mib, c.Size) {
		e.read(h, c, off, page)
	}
	if g2, _ := e.fake.counts(); g2 != g {
		t.Errorf("reading the same offsets again made %d GETs", g2-g)
	}
}

// TestHandleSequentialAgainReadsAhead: a handle that seeked and then
// reads on sequentially goes back to whole blocks and read-ahead.
func TestHandleSequentialAgainReadsAhead(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 1 << 30 })
	c := e.fake.put("video.bin", 256*mib)
	h := seekingHandle(e, c)
	e.read(h, c, 100*mib, page) // a seek
	const chunk = 128 << 10
	start := int64(40 * mib)
	for j := range int64(32) { // 4 MiB read in kernel-sized chunks
		e.read(h, c, start+j*chunk, chunk)
	}
	e.waitIdle()
	end := start + 32*chunk
	e.fake.mu.Lock()
	var beyond int64
	for _, r := range e.fake.ranges {
		if r[1] > end && r[0] < 100*mib {
			beyond += r[1] - max(r[0], end)
		}
	}
	e.fake.mu.Unlock()
	if beyond < 2*mib {
		t.Errorf("a sequential reader after a seek read %d bytes ahead, want at least 2 MiB", beyond)
	}
	if st := e.s.Stats(); st.Used != e.s.CachedBytes(c) {
		t.Errorf("used %d, cached %d", st.Used, e.s.CachedBytes(c))
	}
}

// TestPartialBlockCompletedBySequentialRead: a block that a seeking read
// left partial is completed by a sequential reader, which fetches only
// the pages it lacks, and then counts whole.
func TestPartialBlockCompletedBySequentialRead(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 1 << 30 })
	c := e.fake.put("log.bin", 16*mib)
	h := seekingHandle(e, c)
	e.read(h, c, 5*mib, page) // block 5, pages [0, 4) fetched
	e.waitIdle()
	if got := e.s.CachedBytes(c); got != mib+randomFetchBytes {
		t.Fatalf("cached %d bytes after a seeking read, want %d", got, mib+randomFetchBytes)
	}
	_, b0 := e.fake.counts()

	h2 := e.s.Open(c)
	defer h2.Close()
	for off := int64(5 * mib); off < 6*mib; off += 128 << 10 {
		e.read(h2, c, off, 128<<10)
	}
	e.waitIdle()
	e.fake.mu.Lock()
	var inBlock5 int64
	for _, r := range e.fake.ranges {
		if r[0] < 6*mib && r[1] > 5*mib {
			inBlock5 += min(r[1], 6*mib) - max(r[0], 5*mib)
		}
	}
	e.fake.mu.Unlock()
	if inBlock5 != mib {
		t.Errorf("block 5 cost %d bytes in all, want exactly its %d", inBlock5, mib)
	}
	e.s.mu.Lock()
	_, partial := e.s.partial[blockKey{e.s.contents[contentIDOf(c.Key, c.ETag)], 5}]
	e.s.mu.Unlock()
	if partial {
		t.Error("block 5 is still partial after a sequential read of all of it")
	}
	if _, b := e.fake.counts(); b-b0 < mib-randomFetchBytes {
		t.Errorf("the sequential read fetched %d bytes", b-b0)
	}
}

// TestPartialBlocksSurviveRestart: partial blocks keep their pages and
// their accounting across a clean restart and a crash; pages a crash left
// unrecorded are punched, not counted.
func TestPartialBlocksSurviveRestart(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 1 << 30 })
	c := e.fake.put("index.bin", 64*mib)
	h := e.s.Open(c)
	e.read(h, c, 0, page)
	offs := randomOffsets(50, mib, c.Size)
	for _, off := range offs {
		e.read(h, c, off, page)
	}
	h.Close()
	e.waitIdle()
	before := e.s.Stats()
	cached := e.s.CachedBytes(c)
	if cached >= 20*mib {
		t.Fatalf("cached %d bytes for 50 seeking reads", cached)
	}

	e.reopen(nil)
	if st := e.s.Stats(); st.Used != before.Used || st.Blocks != before.Blocks || e.s.CachedBytes(c) != cached {
		t.Fatalf("after a restart: used %d in %d blocks, cached %d; before: %d in %d, %d",
			st.Used, st.Blocks, e.s.CachedBytes(c), before.Used, before.Blocks, cached)
	}
	g0 := e.gets()
	h = seekingHandle(e, c)
	for _, off := range offs {
		e.read(h, c, off, page)
	}
	if g := e.gets(); g != g0 {
		t.Errorf("reading what was cached before the restart made %d GETs", g-g0)
	}

	// A crash after a fill that was never recorded: the record still
	// says partial, and the pages the fill wrote are punched.
	if err := e.s.flush(false); err != nil {
		t.Fatal(err)
	}
	blk := offs[0] / mib * mib
	h2 := e.s.Open(c)
	e.read(h2, c, blk, mib) // completes that block
	h2.Close()
	h.Close()
	e.waitIdle()
	e.crash()
	e.open()
	if st := e.s.Stats(); st.Used != before.Used || e.s.CachedBytes(c) != cached {
		t.Errorf("after a crash: used %d, cached %d, want %d, %d", st.Used, e.s.CachedBytes(c), before.Used, cached)
	}
	if du := diskUsage(t, e.cfg.Dir); du > cached+64<<10 {
		t.Errorf("after a crash the cache files hold %d bytes, the index %d", du, cached)
	}
	g0 = e.gets()
	for _, off := range offs {
		e.readOnce(c, off, page)
	}
	if g := e.gets(); g != g0 {
		t.Errorf("reading what was recorded before the crash made %d GETs", g-g0)
	}
}

// TestPartialBlocksCountTheirBytes: the budget counts the bytes partial
// blocks hold, so a small cache keeps many of them, and eviction still
// keeps it within its cap.
func TestPartialBlocksCountTheirBytes(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 4 * mib })
	c := e.fake.put("big.bin", 1024*mib)
	h := seekingHandle(e, c)
	for i := range int64(100) {
		e.read(h, c, (i*7+3)%1000*mib+mib, page)
	}
	e.waitIdle()
	st := e.s.Stats()
	if st.Blocks < 100 {
		t.Errorf("a 4 MiB cache keeps %d blocks after 100 seeking reads of distinct blocks, want all", st.Blocks)
	}
	for i := range int64(300) {
		e.read(h, c, (i*13+5)%1000*mib+mib+8*page, page)
	}
	e.waitIdle()
	if st := e.s.Stats(); st.Used > st.Capacity || st.Evictions == 0 {
		t.Errorf("used %d of %d after %d evictions", st.Used, st.Capacity, st.Evictions)
	}
}

// TestPartialBlockFetchFailure: while the store cannot be reached, a read
// of pages a partial block lacks fails at once, reads of its present
// pages still work, and a fill that fails half-way leaves the present
// pages intact.
func TestPartialBlockFetchFailure(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 1 << 30 })
	c := e.fake.put("doc.bin", 8*mib)
	h := seekingHandle(e, c)
	e.read(h, c, 3*mib, page)        // pages [0, 4) of block 3
	e.read(h, c, 3*mib+8*page, page) // pages [8, 12)
	e.waitIdle()

	e.fake.set(func(f *fakeStore) { f.err = backend.ErrOffline })
	p := make([]byte, page)
	if _, err := h.ReadAt(context.Background(), p, 3*mib+100*page); !errors.Is(err, backend.ErrOffline) {
		t.Errorf("reading a missing page offline: %v, want ErrOffline", err)
	}
	e.read(h, c, 3*mib+8*page, page)
	e.fake.set(func(f *fakeStore) { f.err = nil; f.shortBy = 100 << 10 })
	h2 := e.s.Open(c)
	defer h2.Close()
	if _, err := h2.ReadAt(context.Background(), make([]byte, mib), 3*mib); err == nil {
		t.Error("a fill cut short succeeded")
	}
	e.waitIdle()
	e.fake.set(func(f *fakeStore) { f.shortBy = 0 })
	g0 := e.gets()
	e.read(h, c, 3*mib, page)
	e.read(h, c, 3*mib+8*page, page)
	if g := e.gets(); g != g0 {
		t.Errorf("present pages cost %d GETs after a failed fill", g-g0)
	}
	if cached := e.s.CachedBytes(c); cached != mib+2*randomFetchBytes {
		t.Errorf("cached %d after a failed fill, want %d", cached, mib+2*randomFetchBytes)
	}
	e.read(h2, c, 3*mib, mib)
}

// TestSeekingReadersShareOneFetch: readers that seek to the same page at
// once share one GET.
func TestSeekingReadersShareOneFetch(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0; cfg.Capacity = 1 << 30 })
	c := e.fake.put("shared.bin", 32*mib)
	hs := []*Handle{seekingHandle(e, c), seekingHandle(e, c), seekingHandle(e, c)}
	g0 := e.gets()
	e.fake.hold()
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Go(func() { e.read(h, c, 20*mib+5*page, page) })
	}
	e.fake.waitBlocked(t, 1)
	wait.Until(t, 10*time.Second, "the readers to join", func() bool {
		e.s.mu.Lock()
		defer e.s.mu.Unlock()
		return e.s.stats.Joins >= 2
	})
	e.fake.release()
	wg.Wait()
	if g := e.gets(); g != g0+1 {
		t.Errorf("3 readers of one page made %d GETs, want 1", g-g0)
	}
}

// TestRunPublishesBlocksAsTheyArrive: a reader waiting for the first
// block of a long GET gets it once that block is written, not when the
// whole run is.
func TestRunPublishesBlocksAsTheyArrive(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("stream.bin", 16*testBS)
	stall := make(chan struct{})
	e.fake.set(func(f *fakeStore) { f.stall, f.stallAfter = stall, 2*testBS })
	whole := make(chan error, 1)
	go func() {
		h := e.s.Open(c)
		defer h.Close()
		_, err := h.ReadAt(context.Background(), make([]byte, 8*testBS), 0) // one run of 8 blocks
		whole <- err
	}()
	wait.Until(t, 10*time.Second, "the run to start", func() bool { return e.gets() == 1 })

	first := make(chan struct{})
	go func() {
		defer close(first)
		e.readOnce(c, testBS+10, 100) // block 1, within the bytes sent
	}()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Error("a read of block 1 waited for the whole run")
	}
	select {
	case err := <-whole:
		t.Errorf("the read of the whole run ended before its bytes came: %v", err)
	default:
	}
	close(stall)
	if err := <-whole; err != nil {
		t.Fatal(err)
	}
	<-first
	if g := e.gets(); g != 1 {
		t.Errorf("%d GETs, want the one run", g)
	}
}

// TestHandleConcurrentStreamReadsKeepReadingAhead is a sequential reader
// whose reads the kernel sent together and that arrive in any order,
// groups of 4 here in reverse: once the stream has a read-ahead window,
// reads within it, ahead or late, neither reset it nor turn the handle
// into one that seeks.
func TestHandleConcurrentStreamReadsKeepReadingAhead(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("movie.mkv", 512*testBS)
	h := e.s.Open(c)
	defer h.Close()
	const chunk, group = 2 * testBS, 4
	for off := range int64(4) { // the first reads come in order
		e.read(h, c, off*chunk, chunk)
	}
	for off := int64(4 * chunk); off < c.Size; off += group * chunk {
		for j := int64(group - 1); j >= 0; j-- {
			e.read(h, c, off+j*chunk, chunk)
		}
	}
	e.waitIdle()
	if st := e.s.Stats(); st.Misses >= 512/4 {
		t.Errorf("a reordered stream missed %d of 512 blocks: read-ahead kept resetting", st.Misses)
	}
	if got := e.fetchedBytes(); got != c.Size {
		t.Errorf("fetched %d bytes for a %d-byte object", got, c.Size)
	}
}
