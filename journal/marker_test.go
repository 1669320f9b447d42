package journal

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

// A folder made and then given its mode and times (mkdir, then tar's chmod
// and utime as it leaves the folder) is one marker upload, If-None-Match,
// carrying the last attributes: no 412, no HEAD, no second PUT.
func TestMarkerUpdatesCoalesce(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", withUploadDelay(time.Hour))
	m.run()
	m.commit(Op{Kind: PutMarker, Key: "d/", Meta: map[string]string{"nimbus-mode": "40700", "nimbus-mtime": "1"}})
	m.commit(Op{Kind: PutMarker, Key: "d/", Meta: map[string]string{"nimbus-mode": "40700", "nimbus-mtime": "2"}})
	m.commit(Op{Kind: PutMarker, Key: "d/", Meta: map[string]string{"nimbus-mode": "40755", "nimbus-mtime": "2"}})
	if s := m.j.Stats(); s.Pending != 1 {
		t.Fatalf("pending = %d after three marker commits, want 1", s.Pending)
	}
	m.waitIdle()
	wantCalls(t, m, "Put d/ if-none-match")
	info := r.stat("d/")
	if info.Meta["nimbus-mode"] != "40755" || info.Meta["nimbus-mtime"] != "2" {
		t.Errorf("marker metadata = %v, want the last attributes", info.Meta)
	}
	if res := m.resultList(); len(res) != 1 || res[0].Op.Meta["nimbus-mode"] != "40755" {
		t.Errorf("results = %+v, want one, with the last attributes", res)
	}
}

// A marker waits for the upload delay as a file does (so that the
// folder's next changes join it), and starts by itself once it is over.
func TestMarkerWaitsForUploadDelay(t *testing.T) {
	r := newRemote(t)
	const delay = 200 * time.Millisecond
	m := newMachine(t, r.root, "laptop", withUploadDelay(delay))
	m.run()
	start := time.Now()
	m.commit(Op{Kind: PutMarker, Key: "d/"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for m.j.Stats().Pending > 0 {
		if ctx.Err() != nil {
			t.Fatal("the marker was never uploaded")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if d := time.Since(start); d < delay {
		t.Errorf("the marker was uploaded %v after its commit, before the delay of %v", d, delay)
	}
	r.stat("d/")
}

// A marker whose earlier attempt may have reached the store keeps that
// knowledge when a newer marker of the folder supersedes it: a later
// rmdir deletes the marker instead of cancelling the pending one, so that
// no stale marker stays behind.
func TestMergedMarkerRemembersAnAttempt(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Hour, time.Hour })
	lost := make(chan struct{})
	m.hooks.setHooks(nil, func(ctx context.Context, c call, err error) error {
		if c.Op == faulty.OpPut && c.Key == "d/" && err == nil {
			select {
			case <-lost:
			default:
				close(lost)
				return errors.New("connection reset") // it landed; the answer was lost
			}
		}
		return err
	})
	m.commit(Op{Kind: PutMarker, Key: "d/"})
	m.run()
	<-lost
	wait.Until(t, 10*time.Second, "the failed attempt queued for a retry", func() bool {
		s := m.j.Stats()
		return s.Pending == 1 && s.Uploading == 0
	})
	r.stat("d/") // the attempt made it
	m.commit(Op{Kind: PutMarker, Key: "d/", Meta: map[string]string{"nimbus-mode": "40755"}})
	m.commit(Op{Kind: Delete, Key: "d/", Base: Base{Exists: true}})
	if s := m.j.Stats(); s.Pending == 0 {
		t.Fatal("rmdir cancelled a marker that may be on the store")
	}
	m.j.mu.Lock()
	for _, e := range m.j.entries {
		e.notBefore = time.Time{} // retry now, not in an hour
		m.j.refreshLocked(e)
	}
	m.j.notifyLocked()
	m.j.mu.Unlock()
	m.waitIdle()
	if _, err := r.store.Stat(context.Background(), "d/"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("marker after mkdir, chmod, rmdir: %v, want not found", err)
	}
}

// A marker waiting for its delay survives a crash: the next start uploads
// the folder's last attributes, once.
func TestDelayedMarkerSurvivesCrash(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", withUploadDelay(time.Hour))
	m.run()
	m.commit(Op{Kind: PutMarker, Key: "d/", Meta: map[string]string{"nimbus-mode": "40700"}})
	m.commit(Op{Kind: PutMarker, Key: "d/", Meta: map[string]string{"nimbus-mode": "40755"}})
	m.kill()
	if n := m.hooks.count(""); n != 0 {
		t.Fatalf("%d calls before the crash, want none (the delay was an hour)", n)
	}
	m.open()
	m.run()
	m.waitIdle()
	wantCalls(t, m, "Put d/ if-none-match")
	if info := r.stat("d/"); info.Meta["nimbus-mode"] != "40755" {
		t.Errorf("marker metadata after the restart = %v, want mode 40755", info.Meta)
	}
}

// A Copy (a rename) waits for the upload delay too, and starts by itself
// once it is over.
func TestCopyWaitsForUploadDelay(t *testing.T) {
	r := newRemote(t)
	src := r.put("a", "content", backend.Cond{}, nil)
	const delay = 200 * time.Millisecond
	m := newMachine(t, r.root, "laptop", withUploadDelay(delay))
	m.run()
	start := time.Now()
	m.commit(Op{Kind: Copy, Key: "b", Src: "a", SrcETag: src.ETag})
	wait.Until(t, 10*time.Second, "the copy done", func() bool { return m.j.Stats().Pending == 0 })
	if d := time.Since(start); d < delay {
		t.Errorf("the copy ran %v after its commit, before the delay of %v", d, delay)
	}
	r.assertFiles(map[string]string{"a": "content", "b": "content"})
}
