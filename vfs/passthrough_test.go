package vfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

// passthroughTier mounts a tier with passthrough, skipping where the
// kernel or the privileges keep it off (failing under CI).
func passthroughTier(t *testing.T) *tier {
	t.Helper()
	m := newTier(t, tierOpt{passthrough: true})
	if st := m.fsys.PassthroughStatus(); !st.On {
		if os.Getenv("CI") == "true" {
			t.Fatalf("passthrough is off: %s", st.Reason)
		}
		t.Skipf("passthrough is off here: %s", st.Reason)
	}
	return m
}

// putCached stores data at key in the store, behind the mount's back,
// and reads it once through the mount, which caches it whole.
func (m *tier) putCached(key string, data []byte) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := m.store.Put(ctx, key, bytes.NewReader(data), int64(len(data)), nil, backend.Cond{}); err != nil {
		m.t.Fatal(err)
	}
	if got := m.mustRead(key); !bytes.Equal(got, data) {
		m.t.Fatalf("first read of %s: %d bytes, want %d", key, len(got), len(data))
	}
	if st := m.fsys.PassthroughStatus(); st.Opens != 0 {
		m.t.Fatalf("a file not cached went to passthrough: %+v", st)
	}
	// The kernel releases that read's handle asynchronously; an open
	// before then would meet an open handle and read through nimbus.
	wait.Until(m.t, 10*time.Second, "the first read's handle to be released", func() bool {
		in := m.fsys.root.EmbeddedInode()
		for _, name := range strings.Split(key, "/") {
			if in = in.GetChild(name); in == nil {
				return true // the kernel forgot the node: no handle is left
			}
		}
		fn, ok := in.Operations().(*fileNode)
		if !ok {
			return false
		}
		fn.mu.Lock()
		defer fn.mu.Unlock()
		return fn.readers == 0
	})
}

// waitReleased waits for the kernel's asynchronous RELEASEs of the
// passthrough handles.
func waitReleased(t *testing.T, m *tier) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for m.fsys.PassthroughStatus().Open != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("passthrough handles still open: %+v", m.fsys.PassthroughStatus())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A file cached whole: read-only opens of it go to passthrough and share
// it; a writer waits for them, gets ETXTBSY while
// they stay open, and goes ahead once they are closed; its change is read
// back (through nimbus while it is local).
func TestPassthroughOpensShareAndBlockWriters(t *testing.T) {
	m := passthroughTier(t)
	data := make([]byte, 3<<20+5)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	m.putCached("f.bin", data)

	var readers []*os.File
	for range 3 {
		f, err := os.Open(m.path("f.bin"))
		if err != nil {
			t.Fatal(err)
		}
		readers = append(readers, f)
		got, err := io.ReadAll(f)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("passthrough read: %d bytes, err %v", len(got), err)
		}
	}
	if st := m.fsys.PassthroughStatus(); st.Opens != 3 || st.Open != 3 {
		t.Fatalf("status with three readers: %+v, want 3 opens, 3 open", st)
	}

	if _, err := os.OpenFile(m.path("f.bin"), os.O_WRONLY, 0); !errors.Is(err, syscall.ETXTBSY) {
		t.Fatalf("open for writing with readers in passthrough: %v, want ETXTBSY", err)
	}
	if err := os.Truncate(m.path("f.bin"), 1); !errors.Is(err, syscall.ETXTBSY) {
		t.Fatalf("truncate with readers in passthrough: %v, want ETXTBSY", err)
	}
	if st := m.fsys.PassthroughStatus(); st.Busy != 2 {
		t.Errorf("busy = %d, want 2", st.Busy)
	}

	// A writer that comes while the readers are closing waits for them.
	go func() {
		time.Sleep(200 * time.Millisecond)
		for _, f := range readers {
			f.Close()
		}
	}()
	w, err := os.OpenFile(m.path("f.bin"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatalf("open for writing once the readers close: %v", err)
	}
	if _, err := w.Write([]byte("tail")); err != nil {
		t.Fatal(err)
	}
	// A reader while the file is open for writing reads through nimbus.
	opens := m.fsys.PassthroughStatus().Opens
	if got := m.mustRead("f.bin"); !bytes.Equal(got, append(append([]byte{}, data...), "tail"...)) {
		t.Fatalf("read while written: %d bytes", len(got))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if st := m.fsys.PassthroughStatus(); st.Opens != opens {
		t.Errorf("a reader of a file open for writing went to passthrough: %+v", st)
	}
	waitReleased(t, m)
}

// Many readers opening and closing a cached file at once, with chmods in
// between: every read is exact, and the file ends out of passthrough.
func TestPassthroughConcurrentOpens(t *testing.T) {
	m := passthroughTier(t)
	data := bytes.Repeat([]byte("passthrough "), 100_000)
	m.putCached("c.bin", data)
	if got := m.mustRead("c.bin"); !bytes.Equal(got, data) {
		t.Fatalf("read: %d bytes", len(got))
	}
	if st := m.fsys.PassthroughStatus(); st.Opens != 1 {
		t.Fatalf("an uploaded file's open did not go to passthrough: %+v", st)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 6 {
		wg.Go(func() {
			for range 30 {
				got, err := os.ReadFile(m.path("c.bin"))
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, data) {
					errs <- errors.New("wrong bytes")
					return
				}
			}
		})
		if g == 0 {
			wg.Go(func() {
				for i := range 10 {
					err := os.Chmod(m.path("c.bin"), 0o600|os.FileMode(i%2)<<2)
					if err != nil && !errors.Is(err, syscall.ETXTBSY) {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The chmods may come first and make every later read local; what
	// matters is that nothing read wrong bytes and nothing stays held.
	waitReleased(t, m)
}
