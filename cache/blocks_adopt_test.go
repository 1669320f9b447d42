package cache

import (
	"bytes"
	"context"
	"testing"
)

// A version whose bytes are on local disk (an upload's staged file) is
// cached without a GET, survives a reopen, and takes only what fits.
func TestAdopt(t *testing.T) {
	e := newBlockEnv(t, func(c *BlockStoreConfig) { c.Capacity = 20 * testBS; c.ReadAhead = -1 })
	c := e.fake.put("up.bin", 10*testBS+123)
	local := bytes.NewReader(want(c, 0, c.Size))
	n, err := e.s.Adopt(c, local)
	if err != nil || n != c.Size {
		t.Fatalf("Adopt = %d, %v; want all %d bytes", n, err, c.Size)
	}
	if got := e.s.CachedBytes(c); got != c.Size {
		t.Fatalf("cached %d bytes, want %d", got, c.Size)
	}
	h := e.s.Open(c)
	e.read(h, c, 0, c.Size)
	h.Close()
	if gets, _ := e.fake.counts(); gets != 0 {
		t.Fatalf("%d GETs reading an adopted version, want 0", gets)
	}
	if st := e.s.Stats(); st.Used != c.Size || st.FetchedBytes != 0 {
		t.Fatalf("stats %+v: want %d bytes used, none fetched", st, c.Size)
	}

	e.reopen(nil)
	h = e.s.Open(c)
	e.read(h, c, 0, c.Size)
	h.Close()
	if gets, _ := e.fake.counts(); gets != 0 {
		t.Fatalf("%d GETs after a reopen, want 0", gets)
	}

	// Larger than the cache: the first blocks are kept, up to the cap.
	big := e.fake.put("big.bin", 30*testBS)
	n, err = e.s.Adopt(big, bytes.NewReader(want(big, 0, big.Size)))
	if err != nil || n != 20*testBS {
		t.Fatalf("Adopt of %d bytes into a %d-byte cache = %d, %v; want %d", big.Size, 20*testBS, n, err, 20*testBS)
	}
	if st := e.s.Stats(); st.Used > e.cfg.Capacity {
		t.Fatalf("used %d bytes, over the %d-byte cap", st.Used, e.cfg.Capacity)
	}
	h = e.s.Open(big)
	defer h.Close()
	p := make([]byte, testBS)
	if _, err := h.ReadAt(context.Background(), p, 0); err != nil || !bytes.Equal(p, want(big, 0, testBS)) {
		t.Fatalf("read of an adopted block: %v (or wrong bytes)", err)
	}
	if gets, _ := e.fake.counts(); gets != 0 {
		t.Fatalf("%d GETs reading an adopted block, want 0", gets)
	}
}
