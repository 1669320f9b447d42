package cache

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// cacheWhole reads all of c through a handle of its own.
func (e *blockEnv) cacheWhole(c Content) {
	e.t.Helper()
	e.readOnce(c, 0, c.Size)
	e.waitIdle()
}

// mustHoldWhole holds c whole and checks that its file holds exactly c.
func (e *blockEnv) mustHoldWhole(c Content) *WholeHold {
	e.t.Helper()
	w, err := e.s.HoldWhole(c)
	if err != nil {
		e.t.Fatalf("HoldWhole(%q): %v", c.Key, err)
	}
	e.t.Cleanup(w.Release)
	e.checkHeldFile(w, c)
	return w
}

// checkHeldFile reads the held file from start to end, as the kernel's
// passthrough reads would, and compares it with the source.
func (e *blockEnv) checkHeldFile(w *WholeHold, c Content) {
	e.t.Helper()
	got, err := io.ReadAll(io.NewSectionReader(w.File(), 0, c.Size+1))
	if err != nil {
		e.t.Fatalf("read held file of %q: %v", c.Key, err)
	}
	if !bytes.Equal(got, want(c, 0, c.Size)) {
		e.t.Fatalf("held file of %q differs from the source (%d bytes read, %d expected)", c.Key, len(got), c.Size)
	}
}

func TestHoldWholeNeedsEveryBlock(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("a", 5*testBS+100)
	if _, err := e.s.HoldWhole(c); !errors.Is(err, ErrNotWhole) {
		t.Fatalf("HoldWhole of an uncached content: %v, want ErrNotWhole", err)
	}
	e.readOnce(c, 0, 4*testBS) // the last two blocks are missing
	e.waitIdle()
	if _, err := e.s.HoldWhole(c); !errors.Is(err, ErrNotWhole) {
		t.Fatalf("HoldWhole of a partly cached content: %v, want ErrNotWhole", err)
	}
	e.cacheWhole(c)
	w := e.mustHoldWhole(c)
	if st := e.s.Stats(); st.WholeHolds != 1 {
		t.Errorf("WholeHolds = %d, want 1", st.WholeHolds)
	}
	w.Release()
	w.Release() // a second Release does nothing
	if _, err := e.s.HoldWhole(Content{Key: "empty", ETag: "e", Size: 0}); !errors.Is(err, ErrNotWhole) {
		t.Errorf("HoldWhole of an empty content: %v, want ErrNotWhole", err)
	}
}

// A block that holds only the pages a seeking reader asked for is not
// whole: the file has holes there.
func TestHoldWholeRefusesPartialBlocks(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.BlockSize = 0 })
	c := e.fake.put("db", 4*mib)
	h := seekingHandle(e, c) // block 0 whole
	e.read(h, c, 3*mib+5*page, page)
	e.readOnce(c, mib, 2*mib) // blocks 1 and 2 whole, block 3 partial
	e.waitIdle()
	if _, err := e.s.HoldWhole(c); !errors.Is(err, ErrNotWhole) {
		t.Fatalf("HoldWhole with a partial block: %v, want ErrNotWhole", err)
	}
	e.readOnce(c, 3*mib, mib) // completes block 3
	e.waitIdle()
	e.mustHoldWhole(c)
}

// Eviction never takes a held content's blocks, however much is read
// meanwhile; once released they are evictable again and the budget holds.
func TestHoldWholeSurvivesEviction(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 8 * testBS })
	a := e.fake.put("a", 3*testBS+7)
	e.cacheWhole(a)
	w := e.mustHoldWhole(a)
	for i := range 6 {
		e.cacheWhole(e.fake.put(string(rune('b'+i)), 4*testBS))
	}
	e.checkHeldFile(w, a)
	if got := e.s.CachedBytes(a); got != a.Size {
		t.Errorf("held content has %d of %d bytes cached after eviction", got, a.Size)
	}
	w.Release()
	e.cacheWhole(e.fake.put("z", 8*testBS))
	if got := e.s.CachedBytes(a); got != 0 {
		t.Errorf("released content keeps %d bytes when the cache needs room", got)
	}
	if st := e.s.Stats(); st.Used > e.cfg.Capacity {
		t.Errorf("used %d > capacity %d after release", st.Used, e.cfg.Capacity)
	}
}

// Free and Forget while a content is held: its file keeps its bytes for
// the reader; Free's blocks go at release, and Forget's content is gone.
func TestHoldWholeSurvivesFreeAndForget(t *testing.T) {
	e := newBlockEnv(t, nil)
	a := e.fake.put("a", 4*testBS+3)
	e.mustPin(a)
	w := e.mustHoldWhole(a)
	if got := e.s.Free(a.Key); got != 0 {
		t.Errorf("Free of a held content dropped %d bytes now", got)
	}
	e.checkHeldFile(w, a)
	w.Release()
	if got := e.s.CachedBytes(a); got != 0 {
		t.Errorf("%d bytes of a freed content left after release", got)
	}
	if du := diskUsage(t, e.cfg.Dir); du != 0 {
		t.Errorf("%d bytes on disk after the freed content was released", du)
	}

	b := e.fake.put("b", 4*testBS+3)
	e.cacheWhole(b)
	wb := e.mustHoldWhole(b)
	e.s.Forget(b.Key, "")
	e.checkHeldFile(wb, b) // unlinked, never punched
	if _, err := e.s.HoldWhole(b); !errors.Is(err, ErrNotWhole) {
		t.Errorf("HoldWhole of a forgotten content: %v, want ErrNotWhole", err)
	}
	wb.Release()
	if du := diskUsage(t, e.cfg.Dir); du != 0 {
		t.Errorf("%d bytes on disk after the forgotten content was released", du)
	}
}

// Unpinned contents held whole take at most half of the cache; pinned
// ones are outside the budget.
func TestHoldWholeBudget(t *testing.T) {
	e := newBlockEnv(t, func(cfg *BlockStoreConfig) { cfg.Capacity = 16 * testBS })
	a, b := e.fake.put("a", 5*testBS), e.fake.put("b", 5*testBS)
	e.cacheWhole(a)
	e.cacheWhole(b)
	wa := e.mustHoldWhole(a)
	if _, err := e.s.HoldWhole(b); !errors.Is(err, ErrNotWhole) {
		t.Fatalf("second hold over half the cache: %v, want ErrNotWhole", err)
	}
	p := e.fake.put("p", 20*testBS)
	e.mustPin(p)
	e.mustHoldWhole(p)
	wa.Release()
	e.mustHoldWhole(b)
}
