package journal

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
	"github.com/nimbus-fs/nimbus/integration/wait"
)

// folderRename builds the commit of a folder rename as vfs makes it (online
// from a flat listing, offline from the persisted tree): per key, a Copy to
// the new name and a Delete of the old one conditioned on the version seen,
// in a group of their own; a file with local content only goes up under the
// new name and its pending upload under the old one is deleted.
func folderRename(m *machine, seen map[string]backend.ObjectInfo, local map[string]string) []Op {
	var ops []Op
	pair := func(move, del Op) {
		g := len(ops) / 2
		move.Group, del.Group = g, g
		ops = append(ops, move, del)
	}
	for key, info := range seen {
		newKey := "newdir/" + strings.TrimPrefix(key, "dir/")
		pair(Op{Kind: Copy, Key: newKey, Src: key, SrcETag: info.ETag},
			Op{Kind: Delete, Key: key, Base: Base{Exists: true, ETag: info.ETag}})
	}
	for key, content := range local {
		newKey := "newdir/" + strings.TrimPrefix(key, "dir/")
		pair(Op{Kind: PutFile, Key: newKey, Staged: m.file(content)},
			Op{Kind: Delete, Key: key})
	}
	return ops
}

// A folder rename killed half-way (one copy reached the store but its answer
// was lost, one delete likewise, one key not started) and replayed after a
// remote edit of a key not moved yet: every key ends under the new name
// exactly once, with no conflicted copy; the file edited remotely is kept
// under its old name, as the remote version (and copied as it is now to the
// new name); the file that only existed locally never goes up under its old
// name. A second replay finds nothing to do.
func TestFolderRenameReplayAfterCrashKeepsRemoteEdit(t *testing.T) {
	r := newRemote(t)
	seen := map[string]backend.ObjectInfo{
		"dir/a.txt":       r.put("dir/a.txt", "A", backend.Cond{}, nil),
		"dir/b.txt":       r.put("dir/b.txt", "B", backend.Cond{}, nil),
		"dir/sub/c.txt":   r.put("dir/sub/c.txt", "C", backend.Cond{}, nil),
		"dir/changed.txt": r.put("dir/changed.txt", "before", backend.Cond{}, nil),
	}
	m := newMachine(t, r.root, "laptop")
	m.put("dir/new.txt", "made here", Base{}) // not uploaded yet
	m.commit(folderRename(m, seen, map[string]string{"dir/new.txt": "made here"})...)

	// Everything touching changed.txt waits; the copy of a.txt and the
	// delete of sub/c.txt reach the store, then the process dies before
	// their answers come back.
	untouched, lost := newGate(), newGate()
	m.hooks.setHooks(
		func(ctx context.Context, c call) error {
			if strings.Contains(c.Key, "changed") || strings.Contains(c.Src, "changed") {
				return untouched.hold(ctx, c)
			}
			return nil
		},
		func(ctx context.Context, c call, err error) error {
			if err == nil && ((c.Op == faulty.OpCopy && c.Key == "newdir/a.txt") || (c.Op == faulty.OpDelete && c.Key == "dir/sub/c.txt")) {
				return lost.hold(ctx, c)
			}
			return err
		})
	m.run()
	untouched.wait(t)
	lost.wait(t)
	lost.wait(t)
	wait.Until(t, 10*time.Second, "the move of b.txt", func() bool {
		for _, res := range m.resultList() {
			if res.Op.Kind == Delete && res.Op.Key == "dir/b.txt" {
				return true
			}
		}
		return false
	})
	m.kill()
	r.put("dir/changed.txt", "edited remotely", backend.Cond{}, nil)

	m.hooks.setHooks(nil, nil)
	m.open()
	m.run()
	m.waitIdle()
	want := map[string]string{
		"newdir/a.txt":       "A",
		"newdir/b.txt":       "B",
		"newdir/sub/c.txt":   "C",
		"newdir/new.txt":     "made here",
		"newdir/changed.txt": "edited remotely",
		"dir/changed.txt":    "edited remotely",
	}
	r.assertFiles(want)
	cs := m.j.Conflicts()
	if len(cs) != 1 || cs[0].Key != "dir/changed.txt" || cs[0].Reason != ReasonDeleteKept || cs[0].ConflictKey != "" {
		t.Errorf("conflicts = %+v, want only dir/changed.txt kept against the local delete", cs)
	}
	for _, l := range m.hooks.log() {
		if strings.HasPrefix(l, faulty.OpPut+" dir/") {
			t.Errorf("%s: the local-only file went up under its old name", l)
		}
	}
	m.assertNoStagedLeft()

	// Replaying again (a crash after the last completion) changes nothing.
	calls := m.hooks.count("")
	m.kill()
	m.open()
	if s := m.j.Stats(); s.Pending != 0 {
		t.Fatalf("%d ops pending after the folder rename drained", s.Pending)
	}
	m.run()
	m.waitIdle()
	r.assertFiles(want)
	if n := m.hooks.count(""); n != calls {
		t.Errorf("a replay of the drained journal made %d store calls", n-calls)
	}
}

// ListFlat lets MoveTree list through the hooks' store.
func (s *hookStore) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return s.do(ctx, call{Op: faulty.OpListFlat, Key: prefix}, func() error {
		return s.inner.ListFlat(ctx, prefix, fn)
	})
}

// A MoveTree (a folder renamed offline that was never listed) moves every
// key under the old prefix, markers and deeper folders included, server-side.
// A delete whose answer is lost and a kill after a copy reached the store
// are replayed without duplicates; a key edited remotely between its copy
// and its delete is kept under its old name, a destination taken remotely
// keeps its content and the source stays; each of those is one conflict.
func TestMoveTreeReplayAndRemoteChanges(t *testing.T) {
	r := newRemote(t)
	r.put("dir/sub/", "", backend.Cond{}, nil)
	r.put("dir/sub/deep/y.txt", "Y", backend.Cond{}, nil)
	r.put("dir/sub/edited.txt", "first", backend.Cond{}, nil)
	r.put("dir/sub/taken.txt", "ours", backend.Cond{}, nil)
	r.put("dir/sub/x.txt", "X", backend.Cond{}, nil)
	r.put("newdir/sub/taken.txt", "theirs", backend.Cond{}, nil)
	r.put("dir/subway.txt", "not under the prefix", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.commit(Op{Kind: MoveTree, Key: "newdir/sub/", Src: "dir/sub/"})

	lost := newGate()
	var edited, lostDelete bool
	m.hooks.setHooks(nil, func(ctx context.Context, c call, err error) error {
		switch {
		case err != nil:
		case c.Op == faulty.OpCopy && c.Key == "newdir/sub/edited.txt" && !edited:
			edited = true // another machine edits it between the copy and the delete
			r.put("dir/sub/edited.txt", "edited remotely", backend.Cond{}, nil)
		case c.Op == faulty.OpDelete && c.Key == "dir/sub/deep/y.txt" && !lostDelete:
			lostDelete = true
			return backend.ErrOffline // it happened, the answer was lost
		case c.Op == faulty.OpCopy && c.Key == "newdir/sub/x.txt":
			return lost.hold(ctx, c) // the process dies before the answer
		}
		return err
	})
	m.run()
	lost.wait(t)
	m.kill()
	m.hooks.setHooks(nil, nil)
	m.open()
	m.run()
	m.waitIdle()

	r.assertFiles(map[string]string{
		"newdir/sub/deep/y.txt": "Y",
		"newdir/sub/edited.txt": "first",
		"dir/sub/edited.txt":    "edited remotely",
		"newdir/sub/taken.txt":  "theirs",
		"dir/sub/taken.txt":     "ours",
		"newdir/sub/x.txt":      "X",
		"dir/subway.txt":        "not under the prefix",
	})
	if _, err := r.store.Stat(context.Background(), "newdir/sub/"); err != nil {
		t.Errorf("the folder marker did not move: %v", err)
	}
	// (The dir store keeps a folder's directory while files are in it, so
	// the old marker's removal shows as the call.)
	if !slices.ContainsFunc(m.hooks.log(), func(l string) bool { return strings.HasPrefix(l, faulty.OpDelete+" dir/sub/ if-match") }) {
		t.Errorf("the old folder marker was not deleted: %v", m.hooks.log())
	}
	got := map[string]string{}
	for _, c := range m.j.Conflicts() {
		if _, dup := got[c.Key]; dup {
			t.Errorf("conflict on %q recorded twice", c.Key)
		}
		got[c.Key] = c.Reason
	}
	want := map[string]string{"dir/sub/edited.txt": ReasonDeleteKept, "dir/sub/taken.txt": ReasonRenamedOnto}
	if len(got) != len(want) || got["dir/sub/edited.txt"] != want["dir/sub/edited.txt"] || got["dir/sub/taken.txt"] != want["dir/sub/taken.txt"] {
		t.Errorf("conflicts = %v, want %v", got, want)
	}
	if n := m.j.Stats().Conflicts; n != 2 {
		t.Errorf("Stats().Conflicts = %d, want 2", n)
	}
	var res []Result
	for _, x := range m.resultList() {
		if x.Op.Kind == MoveTree {
			res = append(res, x)
		}
	}
	if len(res) != 1 || res[0].Conflict != nil || res[0].Dropped {
		t.Errorf("MoveTree results = %+v, want one, applied", res)
	}
}
