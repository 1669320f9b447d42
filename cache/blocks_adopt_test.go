package cache

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
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

// gatedReader serves data once its gate is closed; reads tells how many
// reads began.
type gatedReader struct {
	data  []byte
	gate  chan struct{}
	reads chan struct{}
}

func newGatedReader(data []byte) *gatedReader {
	return &gatedReader{data: data, gate: make(chan struct{}), reads: make(chan struct{}, 1024)}
}

func (g *gatedReader) ReadAt(p []byte, off int64) (int, error) {
	g.reads <- struct{}{}
	<-g.gate
	return bytes.NewReader(g.data).ReadAt(p, off)
}

// StartAdopt returns before it copies anything; a reader meanwhile waits
// for the blocks it needs instead of fetching them, and gets the adopted
// bytes once the copy is done.
func TestStartAdoptCopiesInTheBackground(t *testing.T) {
	e := newBlockEnv(t, func(c *BlockStoreConfig) { c.Capacity = 20 * testBS; c.ReadAhead = -1 })
	c := e.fake.put("up.bin", 10*testBS+123)
	src := newGatedReader(want(c, 0, c.Size))
	started := make(chan (<-chan error), 1)
	go func() {
		done, err := e.s.StartAdopt(c, src)
		if err != nil {
			t.Errorf("StartAdopt: %v", err)
		}
		started <- done
	}()
	var done <-chan error
	select {
	case done = <-started:
	case <-time.After(10 * time.Second):
		close(src.gate)
		t.Fatal("StartAdopt waited for the copy")
	}
	read := make(chan error, 1)
	go func() {
		h := e.s.Open(c)
		defer h.Close()
		p := make([]byte, c.Size)
		_, err := h.ReadAt(context.Background(), p, 0)
		if err == nil && !bytes.Equal(p, want(c, 0, c.Size)) {
			err = errors.New("wrong bytes")
		}
		read <- err
	}()
	select {
	case err := <-read:
		t.Fatalf("read during the copy returned (%v) before the copy could run", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(src.gate)
	select {
	case err := <-read:
		if err != nil {
			t.Fatalf("read during the copy: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read during the copy never returned")
	}
	if err := <-done; err != nil {
		t.Fatalf("copy: %v", err)
	}
	if gets, _ := e.fake.counts(); gets != 0 {
		t.Fatalf("%d GETs reading a version being adopted, want 0", gets)
	}
	if got := e.s.CachedBytes(c); got != c.Size {
		t.Fatalf("cached %d bytes, want %d", got, c.Size)
	}
}

// Close waits for a background adoption, which stops after the run it is
// copying; the blocks it did not copy are not cached.
func TestCloseStopsStartAdopt(t *testing.T) {
	e := newBlockEnv(t, func(c *BlockStoreConfig) { c.Capacity = 20 * testBS; c.ReadAhead = -1 })
	c := e.fake.put("up.bin", 10*testBS)
	src := newGatedReader(want(c, 0, c.Size))
	done, err := e.s.StartAdopt(c, src)
	if err != nil {
		t.Fatal(err)
	}
	<-src.reads // copying the first run
	closed := make(chan error, 1)
	go func() { closed <- e.s.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while the adoption was copying", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(src.gate)
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close never returned")
	}
	if err := <-done; e.s.runBlocks < 10 && !errors.Is(err, ErrBlockStoreClosed) {
		t.Fatalf("an adoption stopped by Close reported %v; want ErrBlockStoreClosed", err)
	}
}
