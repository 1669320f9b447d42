package journal

import (
	"context"
	"sync"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
)

// loser returns which of two machines recorded a conflict (exactly one
// must have), and the other.
func loser(t *testing.T, a, b *machine) (lost, won *machine) {
	t.Helper()
	ca, cb := a.j.Conflicts(), b.j.Conflicts()
	switch {
	case len(ca) == 1 && len(cb) == 0:
		return a, b
	case len(cb) == 1 && len(ca) == 0:
		return b, a
	}
	t.Fatalf("conflicts: %s %+v, %s %+v; want exactly one in all", a.host, ca, b.host, cb)
	return nil, nil
}

// runBoth uploads on both machines at the same time and waits for both.
func runBoth(a, b *machine) {
	a.run()
	b.run()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.waitIdle() }()
	go func() { defer wg.Done(); b.waitIdle() }()
	wg.Wait()
}

// Two machines edit the same file from the same version: one wins the
// name, the other's version becomes one conflicted copy.
func TestTwoMachinesEditSameFile(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("notes/todo.txt", "original", backend.Cond{}, nil)
	laptop := newMachine(t, r.root, "laptop")
	desktop := newMachine(t, r.root, "desktop")
	content := map[*machine]string{laptop: "laptop's version", desktop: "desktop's version, longer"}
	for m, c := range content {
		m.put("notes/todo.txt", c, Base{Exists: true, ETag: e0.ETag})
	}
	runBoth(laptop, desktop)

	lost, won := loser(t, laptop, desktop)
	copyKey := conflictName("notes/todo.txt", lost.host, t0)
	r.assertFiles(map[string]string{
		"notes/todo.txt": content[won],
		copyKey:          content[lost],
	})
	c := lost.j.Conflicts()[0]
	if c.Key != "notes/todo.txt" || c.ConflictKey != copyKey || c.Reason != ReasonEdited || !c.Time.Equal(t0) {
		t.Errorf("conflict = %+v", c)
	}
	if s := lost.j.Stats(); s.Conflicts != 1 {
		t.Errorf("Stats.Conflicts = %d", s.Conflicts)
	}
	res := lost.resultList()
	if len(res) != 1 || res[0].Conflict == nil || res[0].Info.Key != copyKey || res[0].Dropped {
		t.Errorf("loser's result = %+v", res)
	}
	laptop.assertNoStagedLeft()
	desktop.assertNoStagedLeft()
}

func TestTwoMachinesCreateSameName(t *testing.T) {
	r := newRemote(t)
	laptop := newMachine(t, r.root, "laptop")
	desktop := newMachine(t, r.root, "desktop")
	content := map[*machine]string{laptop: "made on the laptop", desktop: "made on the desktop"}
	for m, c := range content {
		m.put("new.md", c, Base{})
	}
	runBoth(laptop, desktop)

	lost, won := loser(t, laptop, desktop)
	r.assertFiles(map[string]string{
		"new.md":                              content[won],
		conflictName("new.md", lost.host, t0): content[lost],
	})
	if c := lost.j.Conflicts()[0]; c.Reason != ReasonCreated {
		t.Errorf("reason = %q", c.Reason)
	}
}

func TestRemoteEditWhileLocalEditPending(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.put("a.txt", "local edit", Base{Exists: true, ETag: e0.ETag})
	r.put("a.txt", "remote edit", backend.Cond{IfMatch: e0.ETag}, nil)
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{
		"a.txt": "remote edit",
		"a (conflicted copy 2026-11-21 153000 laptop).txt": "local edit",
	})
	if c := m.j.Conflicts(); len(c) != 1 || c[0].Reason != ReasonEdited {
		t.Errorf("conflicts = %+v", c)
	}
}

// The second conflicted copy of the same second gets " 2".
func TestConflictNameTakenGetsNumber(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("a.txt", "v0", backend.Cond{}, nil)
	taken := conflictName("a.txt", "laptop", t0)
	r.put(taken, "someone else's file with that name", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.put("a.txt", "local edit", Base{Exists: true, ETag: e0.ETag})
	r.put("a.txt", "remote edit", backend.Cond{}, nil)
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{
		"a.txt": "remote edit",
		taken:   "someone else's file with that name",
		"a (conflicted copy 2026-11-21 153000 laptop 2).txt": "local edit",
	})
}

// A local edit of a file deleted remotely re-creates it; no conflict.
func TestRemoteDeleteWhileLocalEditPending(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.put("a.txt", "local edit", Base{Exists: true, ETag: e0.ETag})
	r.del("a.txt")
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"a.txt": "local edit"})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
}

// A local delete of a file edited remotely leaves the remote version.
func TestLocalDeleteOfRemotelyEditedFileKeepsRemote(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(Op{Kind: Delete, Key: "a.txt", Base: Base{Exists: true, ETag: e0.ETag}})
	r.put("a.txt", "remote edit", backend.Cond{}, nil)
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"a.txt": "remote edit"})
	c := m.j.Conflicts()
	if len(c) != 1 || c[0].Reason != ReasonDeleteKept || c[0].ConflictKey != "" {
		t.Errorf("conflicts = %+v", c)
	}
	if res := m.resultList(); len(res) != 1 || !res[0].Dropped || res[0].Conflict == nil {
		t.Errorf("result = %+v, want dropped with a conflict", res)
	}
}

// A local delete of a file also deleted remotely is simply done.
func TestLocalDeleteOfRemotelyDeletedFile(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(Op{Kind: Delete, Key: "a.txt", Base: Base{Exists: true, ETag: e0.ETag}})
	r.del("a.txt")
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
}

// A rename onto a name another machine created meanwhile: that file keeps
// the name, ours goes to a conflicted copy of it, the old name goes.
func TestRenameOntoExistingRemoteFile(t *testing.T) {
	r := newRemote(t)
	src := r.put("a.txt", "our file", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(
		Op{Kind: Copy, Key: "b.txt", Src: "a.txt", SrcETag: src.ETag, Base: Base{}},
		Op{Kind: Delete, Key: "a.txt", Base: Base{Exists: true, ETag: src.ETag}},
	)
	r.put("b.txt", "their file", backend.Cond{}, nil)
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{
		"b.txt": "their file",
		"b (conflicted copy 2026-11-21 153000 laptop).txt": "our file",
	})
	c := m.j.Conflicts()
	if len(c) != 1 || c[0].Reason != ReasonRenamedOnto || c[0].Key != "b.txt" {
		t.Errorf("conflicts = %+v", c)
	}
}

// A rename of a file edited remotely meanwhile: the current version is
// copied, and the source is kept because its Delete expects the old ETag.
func TestRenameOfRemotelyChangedFileKeepsSource(t *testing.T) {
	r := newRemote(t)
	src := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(
		Op{Kind: Copy, Key: "b.txt", Src: "a.txt", SrcETag: src.ETag, Base: Base{}},
		Op{Kind: Delete, Key: "a.txt", Base: Base{Exists: true, ETag: src.ETag}},
	)
	r.put("a.txt", "remote edit", backend.Cond{}, nil)
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{"a.txt": "remote edit", "b.txt": "remote edit"})
	c := m.j.Conflicts()
	if len(c) != 1 || c[0].Key != "a.txt" || c[0].Reason != ReasonDeleteKept {
		t.Errorf("conflicts = %+v", c)
	}
}

// A rename of a file deleted remotely: nothing to copy; recorded, dropped.
func TestRenameOfRemotelyDeletedFile(t *testing.T) {
	r := newRemote(t)
	src := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(
		Op{Kind: Copy, Key: "b.txt", Src: "a.txt", SrcETag: src.ETag, Base: Base{}},
		Op{Kind: Delete, Key: "a.txt", Base: Base{Exists: true, ETag: src.ETag}},
	)
	r.del("a.txt")
	m.run()
	m.waitIdle()
	r.assertFiles(map[string]string{})
	c := m.j.Conflicts()
	if len(c) != 1 || c[0].Key != "b.txt" || c[0].Reason != ReasonRenameSrcGone {
		t.Errorf("conflicts = %+v", c)
	}
	if res := m.resultList(); len(res) != 2 || !res[0].Dropped {
		t.Errorf("results = %+v", res)
	}
}

// After a conflict, a later local edit of the same file that was chained to
// the conflicting upload must not overwrite the remote edit either.
func TestEditChainedAfterConflictAlsoKeepsRemote(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("a.txt", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	g := newGate()
	m.hooks.setHooks(func(ctx0 context.Context, c call) error {
		if c.Key == "a (conflicted copy 2026-11-21 153000 laptop).txt" {
			return g.hold(ctx0, c)
		}
		return nil
	}, nil)
	m.put("a.txt", "local 1", Base{Exists: true, ETag: e0.ETag})
	r.put("a.txt", "remote edit", backend.Cond{}, nil)
	m.run()
	g.wait(t) // the first edit is being uploaded as a conflicted copy
	m.put("a.txt", "local 2", Base{Exists: true, ETag: e0.ETag})
	g.release()
	m.waitIdle()
	r.assertFiles(map[string]string{
		"a.txt": "remote edit",
		"a (conflicted copy 2026-11-21 153000 laptop).txt":   "local 1",
		"a (conflicted copy 2026-11-21 153000 laptop 2).txt": "local 2",
	})
	if c := m.j.Conflicts(); len(c) != 2 {
		t.Errorf("conflicts = %+v", c)
	}
}

// TestIsConflictCopyFromMemory: the conflicted copy a conflict made is
// known at once and after a reopen; other keys are not.
func TestIsConflictCopyFromMemory(t *testing.T) {
	r := newRemote(t)
	orig := r.put("doc.txt", "v0", backend.Cond{}, nil)
	r.put("doc.txt", "remote edit", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.put("doc.txt", "local edit", Base{Exists: true, ETag: orig.ETag})
	m.run()
	m.waitIdle()
	cs := m.j.Conflicts()
	if len(cs) != 1 || cs[0].ConflictKey == "" {
		t.Fatalf("conflicts = %+v, want one with a copy", cs)
	}
	if !m.j.IsConflictCopy(cs[0].ConflictKey) || m.j.IsConflictCopy("doc.txt") {
		t.Errorf("IsConflictCopy: copy %v, original %v; want true, false",
			m.j.IsConflictCopy(cs[0].ConflictKey), m.j.IsConflictCopy("doc.txt"))
	}
	m.kill()
	m.open()
	if !m.j.IsConflictCopy(cs[0].ConflictKey) {
		t.Error("the conflicted copy is forgotten after a reopen")
	}
}
