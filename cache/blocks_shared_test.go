package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/wait"
)

// sharedRead is what one ReadShared returned.
type sharedRead struct {
	off     int64
	data    []byte
	release func()
}

// TestReadSharedAnswersWaitingReadersFromTheGet checks that reads waiting
// for a block's GET are answered with the bytes the GET delivered, held in
// memory until each reader releases them, and that other GETs meanwhile do
// not reuse that memory.
func TestReadSharedAnswersWaitingReadersFromTheGet(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("shared.bin", 8*testBS)
	e.fake.hold()

	const readers = 4
	results := make([]sharedRead, readers)
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	for r := range readers {
		wg.Go(func() {
			h := e.s.Open(c)
			defer h.Close()
			off := int64(2*testBS + r*1000)
			data, release, err := h.ReadShared(context.Background(), make([]byte, testBS/2), off)
			if err != nil {
				errs <- err
				return
			}
			results[r] = sharedRead{off, data, release}
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
		t.Fatal(err)
	}
	for r, res := range results {
		if res.release == nil {
			t.Fatalf("reader %d waited for the GET but was answered from the cache file, not from its bytes", r)
		}
		if !bytes.Equal(res.data, want(c, res.off, testBS/2)) {
			t.Fatalf("reader %d: wrong bytes", r)
		}
	}

	// One reader is done; more GETs while the others hold the bytes: none
	// may land in them.
	results[0].release()
	other := e.fake.put("other.bin", 32*testBS)
	h := e.s.Open(other)
	defer h.Close()
	for i := range int64(32) {
		data, release, err := h.ReadShared(context.Background(), make([]byte, testBS), i*testBS)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, want(other, i*testBS, testBS)) {
			t.Fatalf("other.bin block %d: wrong bytes", i)
		}
		if release != nil {
			release()
		}
	}
	for r, res := range results[1:] {
		if !bytes.Equal(res.data, want(c, res.off, testBS/2)) {
			t.Fatalf("reader %d: its bytes changed before it released them", r+1)
		}
		res.release()
	}
}

// TestReadSharedFromTheCacheFile checks which reads ReadShared answers
// from the cache file, into the caller's buffer (a block cached already, a
// read over two blocks), and that a read past the end gets io.EOF either
// way.
func TestReadSharedFromTheCacheFile(t *testing.T) {
	e := newBlockEnv(t, nil)
	c := e.fake.put("file.bin", 8*testBS)
	e.readOnce(c, 0, 4*testBS) // blocks 0-3 cached
	for _, tc := range []struct {
		name   string
		off, n int64
		shared bool
	}{
		{"cached block", testBS + 10, 100, false},
		{"two blocks", 5*testBS - 50, 100, false},
		{"past the end", 8*testBS - 10, 100, true}, // block 7, fetched for it
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := e.s.Open(c)
			defer h.Close()
			p := make([]byte, tc.n)
			data, release, err := h.ReadShared(context.Background(), p, tc.off)
			exp := want(c, tc.off, tc.n)
			switch {
			case len(exp) < int(tc.n) && !errors.Is(err, io.EOF):
				t.Fatalf("read past the end: err %v, want io.EOF", err)
			case len(exp) == int(tc.n) && err != nil:
				t.Fatal(err)
			case !bytes.Equal(data, exp):
				t.Fatalf("wrong bytes: %d, want %d", len(data), len(exp))
			case (release != nil) != tc.shared:
				t.Fatalf("answered from memory: %v, want %v", release != nil, tc.shared)
			case release == nil && &data[0] != &p[0]:
				t.Fatalf("answered from the cache file but not in the caller's buffer")
			}
			if release != nil {
				release()
			}
		})
	}
}
