package cache

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// flushDuringFetch caches blocks 0 and 1 of an 8-block content, then
// flushes while a GET of its block 6 is held at the gate, with the store's
// maxSyncDelay set to delay. It returns once that GET is done.
func flushDuringFetch(t *testing.T, delay time.Duration) (*blockEnv, Content) {
	t.Helper()
	e := newBlockEnv(t, nil)
	e.s.mu.Lock()
	e.s.maxSyncDelay = delay
	e.s.mu.Unlock()
	c := e.fake.put("big.bin", 8*testBS)
	e.readOnce(c, 0, 2*testBS)
	e.waitIdle()

	e.fake.hold()
	h := e.s.Open(c)
	defer h.Close()
	p := make([]byte, 10)
	read := make(chan error, 1)
	go func() {
		_, err := h.ReadAt(context.Background(), p, 6*testBS)
		read <- err
	}()
	e.fake.waitBlocked(t, 1)
	err := e.s.flush(false)
	e.fake.release()
	if rerr := <-read; rerr != nil || !bytes.Equal(p, want(c, 6*testBS, 10)) {
		t.Fatalf("read of block 6: %v (or wrong bytes)", rerr)
	}
	if err != nil {
		t.Fatalf("flush: %v", err)
	}
	e.waitIdle()
	return e, c
}

// TestFlushWaitsForAFilesGETs: a flush leaves a content file that a GET is
// writing into unsynced, and its new blocks unrecorded, so a crash then
// forgets them; a later flush records them all; and after maxSyncDelay a
// flush syncs and records what is written despite the GET.
func TestFlushWaitsForAFilesGETs(t *testing.T) {
	t.Run("deferred", func(t *testing.T) {
		e, c := flushDuringFetch(t, maxSyncDelay)
		e.crash()
		e.open()
		if got := e.s.CachedBytes(c); got != 0 {
			t.Errorf("after a crash %d bytes count as cached, want 0: the flush synced and recorded a file being fetched into", got)
		}
	})
	t.Run("caught up", func(t *testing.T) {
		e, c := flushDuringFetch(t, maxSyncDelay)
		cached := e.s.CachedBytes(c)
		if cached < 3*testBS {
			t.Fatalf("%d bytes cached before the second flush, want blocks 0, 1 and 6 at least", cached)
		}
		if err := e.s.flush(false); err != nil {
			t.Fatal(err)
		}
		e.crash()
		e.open()
		if got := e.s.CachedBytes(c); got != cached {
			t.Errorf("after the second flush and a crash %d bytes count as cached, want %d", got, cached)
		}
	})
	t.Run("bounded", func(t *testing.T) {
		e, c := flushDuringFetch(t, 0)
		e.crash()
		e.open()
		if got := e.s.CachedBytes(c); got != 2*testBS {
			t.Errorf("after a crash %d bytes count as cached, want the %d flushed past maxSyncDelay", got, 2*testBS)
		}
	})
}
