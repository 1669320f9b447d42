package attrindex

import (
	"context"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/mem"
)

// gatedSidecars holds each write of a sidecar until gate is closed.
type gatedSidecars struct {
	*mem.Store
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedSidecars) Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	if IsKey(key) {
		g.entered <- struct{}{}
		<-g.gate
	}
	return g.Store.Put(ctx, key, body, size, meta, cond)
}

// TestListsChangesNotWrittenYet: a chmod or touch keeps the file's ETag,
// so a listing after it must not show the attributes the sidecar in the
// store still holds for that ETag, while the change waits for its write
// or is being written; nor attributes of a file forgotten here.
func TestListsChangesNotWrittenYet(t *testing.T) {
	store := mem.New()
	x := newIndex(t, store, Config{})
	x.debounce = time.Hour
	before, after := time.Unix(1000, 0), time.Unix(2000, 0)
	info := uploaded(x, store, "d/a", 0o600, before)
	flush(t, x)
	mode := func(what string) uint32 {
		t.Helper()
		objs, _ := listed(t, x, "d/")
		o, ok := objs["a"]
		if !ok {
			t.Fatalf("%s: a not listed", what)
		}
		if o.Attrs == nil {
			return 0
		}
		return o.Attrs.Mode &^ syscall.S_IFMT
	}
	if got := mode("written"); got != 0o600 {
		t.Fatalf("listed with mode %o after the write, want 600", got)
	}

	x.SetFile("d/a", info.ETag, backend.Attrs{Mode: syscall.S_IFREG | 0o777, MTime: after}) // chmod: same ETag
	if got := mode("waiting"); got != 0o777 {
		t.Errorf("listed with mode %o while the chmod waits for its write, want 777", got)
	}
	x.Forget("d/a")
	if got := mode("forgotten"); got != 0 {
		t.Errorf("listed with mode %o once forgotten here, want no attributes", got)
	}
}

// TestListsChangesBeingWritten is TestListsChangesNotWrittenYet while the
// sidecar write that holds the change is running.
func TestListsChangesBeingWritten(t *testing.T) {
	mstore := mem.New()
	g := &gatedSidecars{Store: mstore, entered: make(chan struct{}, 8), gate: make(chan struct{})}
	close(g.gate) // the first write goes through
	x := New(g, Config{})
	t.Cleanup(x.Close)
	x.debounce = 10 * time.Millisecond
	info := uploaded(x, mstore, "d/a", 0o600, time.Unix(1000, 0))
	flush(t, x)
	<-g.entered

	g.gate = make(chan struct{})
	x.SetFile("d/a", info.ETag, backend.Attrs{Mode: syscall.S_IFREG | 0o777, MTime: time.Unix(2000, 0)})
	select {
	case <-g.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar write did not start")
	}
	objs, _ := listed(t, x, "d/")
	if o := objs["a"]; o.Attrs == nil || o.Attrs.Mode&^syscall.S_IFMT != 0o777 {
		t.Errorf("listed with %+v while the chmod is being written, want mode 777", o.Attrs)
	}
	close(g.gate)
	flush(t, x)
	objs, _ = listed(t, x, "d/")
	if o := objs["a"]; o.Attrs == nil || o.Attrs.Mode&^syscall.S_IFMT != 0o777 {
		t.Errorf("listed with %+v once written, want mode 777", o.Attrs)
	}
}
