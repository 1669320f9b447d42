package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

// A Put that reached the store while its record was not cleared (a crash
// right after the upload) is recognised by its hash on replay: one object,
// no conflicted copy.
func TestReplayOfUploadThatReachedStore(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("edited.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.put("created.txt", "new file", Base{})
	m.put("edited.txt", "v1", Base{Exists: true, ETag: e0.ETag})
	// The uploads happen, then the process dies before clearing the records.
	r.put("created.txt", "new file", backend.Cond{IfNoneMatch: true}, map[string]string{shaMeta: shaOf("new file")})
	r.put("edited.txt", "v1", backend.Cond{IfMatch: e0.ETag}, map[string]string{shaMeta: shaOf("v1")})
	m.kill()

	m.open()
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"created.txt": "new file", "edited.txt": "v1"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
	for _, res := range m.resultList() {
		if res.Info.ETag != r.stat(res.Op.Key).ETag {
			t.Errorf("result %+v does not report the object's ETag", res)
		}
	}
	m.assertNoStagedLeft()
}

// The same for a rename (Copy + Delete) and a delete.
func TestReplayOfCopyAndDeleteThatReachedStore(t *testing.T) {
	r := newRemote(t)
	src := r.put("a.txt", "payload", backend.Cond{}, nil)
	gone := r.put("gone.txt", "to delete", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(
		Op{Kind: Copy, Key: "b.txt", Src: "a.txt", SrcETag: src.ETag, Base: Base{}},
		Op{Kind: Delete, Key: "a.txt", Base: Base{Exists: true, ETag: src.ETag}},
	)
	m.commit(Op{Kind: Delete, Key: "gone.txt", Base: Base{Exists: true, ETag: gone.ETag}})
	ctx := context.Background()
	if _, err := r.store.Copy(ctx, "a.txt", src.ETag, "b.txt", backend.Cond{IfNoneMatch: true}); err != nil {
		t.Fatal(err)
	}
	r.del("gone.txt")
	m.kill()

	m.open()
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"b.txt": "payload"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
}

// Kill while uploads are in flight, some having reached the store and some
// not; reopen on the same DB and folder. Every committed op applies exactly
// once in effect, no spurious conflicted copy, no staged file left.
func TestKillWhileUploadingReplaysExactlyOnce(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("edited.txt", "v0", backend.Cond{}, nil)
	old := r.put("old.txt", "renamed payload", backend.Cond{}, nil)
	doomed := r.put("doomed.txt", "bye", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.Concurrency = 8 })

	reached, notReached := newGate(), newGate()
	m.hooks.setHooks(
		func(ctx context.Context, c call) error {
			if c.Key == "never-reached.txt" || c.Op == faulty.OpCopy {
				return notReached.hold(ctx, c)
			}
			return nil
		},
		func(ctx context.Context, c call, err error) error {
			// These reach the store; the answer is lost in the crash.
			if err == nil && (c.Key == "reached.txt" || c.Key == "edited.txt" || c.Key == "doomed.txt") {
				if herr := reached.hold(ctx, c); herr != nil {
					return herr
				}
			}
			return err
		})
	m.put("reached.txt", "made it", Base{})
	m.put("never-reached.txt", "did not", Base{})
	m.put("edited.txt", "v1", Base{Exists: true, ETag: e0.ETag})
	m.commit(
		Op{Kind: Copy, Key: "new.txt", Src: "old.txt", SrcETag: old.ETag, Base: Base{}},
		Op{Kind: Delete, Key: "old.txt", Base: Base{Exists: true, ETag: old.ETag}},
	)
	m.commit(Op{Kind: Delete, Key: "doomed.txt", Base: Base{Exists: true, ETag: doomed.ETag}})
	m.run()
	for range 3 {
		reached.wait(t)
	}
	for range 2 {
		notReached.wait(t)
	}
	m.put("edited.txt", "v2", Base{Exists: true, ETag: e0.ETag}) // chained to the one in flight
	m.kill()
	if s := m.stagedFiles(); len(s) != 4 {
		t.Fatalf("staged files after the kill: %v", s)
	}

	m.hooks.setHooks(nil, nil)
	m.open()
	if s := m.j.Stats(); s.Pending != 7 {
		t.Fatalf("pending after reopen = %d, want 7", s.Pending)
	}
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{
		"reached.txt":       "made it",
		"never-reached.txt": "did not",
		"edited.txt":        "v2",
		"new.txt":           "renamed payload",
	})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
	m.assertNoStagedLeft()
	// Each replayed Put found its own upload: no second write of the
	// content that had reached the store.
	var puts []string
	for _, l := range m.hooks.log() {
		if strings.HasPrefix(l, "Put reached.txt") {
			puts = append(puts, l)
		}
	}
	if len(puts) != 2 { // before the kill, and the replay that finds it
		t.Errorf("Puts of reached.txt = %q", puts)
	}
}

// A kill while the conflicted copy is being uploaded: the replay, at a later
// time, reuses the recorded name and finds its copy: one copy, one conflict.
func TestKillDuringConflictCopyMakesOneCopy(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.put("a.txt", "ours", Base{Exists: true, ETag: e0.ETag})
	r.put("a.txt", "theirs", backend.Cond{}, nil)
	g := newGate()
	m.hooks.setHooks(nil, func(ctx context.Context, c call, err error) error {
		if err == nil && strings.Contains(c.Key, "conflicted copy") {
			if herr := g.hold(ctx, c); herr != nil {
				return herr
			}
		}
		return err
	})
	m.run()
	g.wait(t)
	m.kill()

	m.hooks.setHooks(nil, nil)
	m.open(func(c *Config) { c.Now = func() time.Time { return t0.Add(time.Hour) } })
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{
		"a.txt": "theirs",
		"a (conflicted copy 2026-11-21 153000 laptop).txt": "ours",
	})
	c := m.j.Conflicts()
	if len(c) != 1 || !c[0].Time.Equal(t0) {
		t.Errorf("conflicts = %+v", c)
	}
}

// An upload whose answer was lost (it did reach the store) and which was
// then superseded by a newer edit: the newer upload must recognise the
// remote object as this chain's own earlier version, not as a conflict.
func TestSupersededAttemptThatReachedStoreIsNotAConflict(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop", func(c *Config) {
		c.MinBackoff = 300 * time.Millisecond
		c.MaxBackoff = time.Second
	})
	var lost atomic.Bool
	lost.Store(true)
	m.hooks.setHooks(nil, func(ctx context.Context, c call, err error) error {
		if err == nil && c.Op == faulty.OpPut && lost.CompareAndSwap(true, false) {
			return fmt.Errorf("put %q: connection reset: %w", c.Key, backend.ErrOffline)
		}
		return err
	})
	m.put("a.txt", "v1", Base{Exists: true, ETag: e0.ETag})
	m.run()
	wait.Until(t, 10*time.Second, "the lost answer", func() bool {
		s := m.j.Stats()
		return s.Offline && s.Uploading == 0
	})
	m.put("a.txt", "v2", Base{Exists: true, ETag: e0.ETag})
	if s := m.j.Stats(); s.Pending != 1 {
		t.Fatalf("pending = %d, want the edits coalesced", s.Pending)
	}
	m.waitIdle()
	r.assertFiles(map[string]string{"a.txt": "v2"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
	log := m.hooks.log()
	if !slices.Contains(log, "Put a.txt if-match "+e0.ETag) {
		t.Errorf("calls = %q", log)
	}
}

// A Delete that supersedes an upload whose answer was lost must delete that
// upload, not leave it behind.
func TestDeleteAfterLostUploadRemovesIt(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop", func(c *Config) {
		c.MinBackoff = 300 * time.Millisecond
		c.MaxBackoff = time.Second
	})
	var lost atomic.Bool
	lost.Store(true)
	m.hooks.setHooks(nil, func(ctx context.Context, c call, err error) error {
		if err == nil && c.Op == faulty.OpPut && lost.CompareAndSwap(true, false) {
			return fmt.Errorf("put %q: %w", c.Key, backend.ErrOffline)
		}
		return err
	})
	m.put("tmp.txt", "short-lived", Base{})
	m.run()
	wait.Until(t, 10*time.Second, "the lost answer", func() bool {
		s := m.j.Stats()
		return s.Offline && s.Uploading == 0
	})
	m.commit(Op{Kind: Delete, Key: "tmp.txt", Base: Base{}})
	m.waitIdle()
	r.assertFiles(map[string]string{})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
}

// Staged content that vanished (disk trouble) parks the op instead of
// uploading something else or dropping it silently.
func TestMissingStagedContentParks(t *testing.T) {
	r := newRemote(t)
	// Inline content would be restored (TestInlineContentSurvivesLostStagedFile).
	m := newMachine(t, r.root, "laptop", func(c *Config) { c.InlineLimit = -1 })
	m.put("a.txt", "data", Base{})
	p, _ := m.j.Pending("a.txt")
	m.kill()
	if err := os.Remove(p.Staged); err != nil {
		t.Fatal(err)
	}
	m.open()
	s := m.j.Stats()
	if len(s.Parked) != 1 || !strings.Contains(s.Parked[0].Err, "staged content") {
		t.Fatalf("stats = %+v", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := m.j.WaitIdle(ctx); !errors.Is(err, ErrParked) {
		t.Errorf("WaitIdle = %v", err)
	}
}
