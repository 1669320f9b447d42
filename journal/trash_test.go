package journal

import (
	"context"
	"slices"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
)

const trashKey = ".nimbus-trash/2026-11-21/docs/a.txt"

// A Delete with a trash key copies the version being deleted there
// server-side (If-Match on the source), then deletes it.
func TestTrashDeleteCopiesThenDeletes(t *testing.T) {
	r := newRemote(t)
	a := r.put("docs/a.txt", "precious", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.run()
	m.commit(Op{Kind: Delete, Key: "docs/a.txt", Base: Base{Exists: true, ETag: a.ETag}, Trash: trashKey})
	m.waitIdle()
	r.assertFiles(map[string]string{trashKey: "precious"})
	want := []string{"Copy " + trashKey + " from docs/a.txt@" + a.ETag, "Delete docs/a.txt if-match " + a.ETag}
	if got := m.hooks.log(); !slices.Equal(got, want) {
		t.Errorf("calls = %q, want %q", got, want)
	}
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
}

// A crash after the trash copy reached the store, before the delete: the
// replay finds the copy made (same key, same version: nothing duplicated)
// and completes the delete. A crash after both: the replay finds the file
// gone and is done. Either way, one trash copy and no conflict.
func TestTrashDeleteReplayAfterCrash(t *testing.T) {
	for _, tc := range []struct {
		name    string
		deleted bool // the delete reached the store too
	}{{"after copy", false}, {"after copy and delete", true}} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRemote(t)
			a := r.put("docs/a.txt", "precious", backend.Cond{}, nil)
			m := newMachine(t, r.root, "laptop")
			m.commit(Op{Kind: Delete, Key: "docs/a.txt", Base: Base{Exists: true, ETag: a.ETag}, Trash: trashKey})
			if _, err := r.store.Copy(context.Background(), "docs/a.txt", a.ETag, trashKey, backend.Cond{}); err != nil {
				t.Fatal(err)
			}
			if tc.deleted {
				r.del("docs/a.txt")
			}
			m.kill()

			m.open()
			m.run()
			m.waitIdle()
			r.assertFiles(map[string]string{trashKey: "precious"})
			if c := m.j.Conflicts(); len(c) != 0 {
				t.Errorf("conflicts = %+v", c)
			}
			if res := m.resultList(); len(res) != 1 || res[0].Dropped || res[0].Op.Trash != trashKey {
				t.Errorf("results = %+v, want one delete to the trash", res)
			}
		})
	}
}

// A file changed remotely since the user saw it keeps its remote version,
// and no trash copy is made: the copy is conditioned on the version seen.
func TestTrashDeleteOfRemotelyChangedFile(t *testing.T) {
	r := newRemote(t)
	a := r.put("docs/a.txt", "seen", backend.Cond{}, nil)
	r.put("docs/a.txt", "edited elsewhere", backend.Cond{IfMatch: a.ETag}, nil)
	m := newMachine(t, r.root, "laptop")
	m.run()
	m.commit(Op{Kind: Delete, Key: "docs/a.txt", Base: Base{Exists: true, ETag: a.ETag}, Trash: trashKey})
	m.waitIdle()
	r.assertFiles(map[string]string{"docs/a.txt": "edited elsewhere"})
	if c := m.j.Conflicts(); len(c) != 1 || c[0].Reason != ReasonDeleteKept {
		t.Errorf("conflicts = %+v, want one %q", c, ReasonDeleteKept)
	}
	if n := m.hooks.count(faulty.OpDelete); n != 0 {
		t.Errorf("%d deletes sent, want none", n)
	}
}

// A record without a trash key (a rename's delete, or one written before
// the trash existed) deletes for good, as before.
func TestDeleteWithoutTrashKey(t *testing.T) {
	r := newRemote(t)
	a := r.put("a.txt", "payload", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.run()
	m.commit(
		Op{Kind: Copy, Key: "b.txt", Src: "a.txt", SrcETag: a.ETag},
		Op{Kind: Delete, Key: "a.txt", Base: Base{Exists: true, ETag: a.ETag}},
	)
	m.waitIdle()
	r.assertFiles(map[string]string{"b.txt": "payload"})
}

// The trash key is refused where it makes no sense.
func TestTrashKeyValidation(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	for _, op := range []Op{
		{Kind: Delete, Key: "d/", Base: Base{Exists: true}, Trash: ".nimbus-trash/x/d/"},
		{Kind: Delete, Key: "a", Base: Base{Exists: true, ETag: "e"}, Trash: "a"},
		{Kind: Copy, Key: "b", Src: "a", Trash: "t"},
		{Kind: Restore, Key: "a", Src: "t"},                                                    // no ETag
		{Kind: Restore, Key: "a", Src: "t", SrcETag: "e", Version: "v1"},                       // both
		{Kind: Restore, Key: "a", Src: "t", SrcETag: "e", Base: Base{Exists: true, ETag: "x"}}, // over a file
	} {
		if err := m.j.Commit(op); err == nil {
			t.Errorf("Commit(%+v) succeeded", op)
		}
	}
}

// A Restore from the trash copies the trash copy back If-None-Match and
// empties it; a replay after the copy recognises it; a file that exists
// again is never overwritten, and its trash copy stays.
func TestRestoreFromTrash(t *testing.T) {
	t.Run("restores", func(t *testing.T) {
		r := newRemote(t)
		tr := r.put(trashKey, "precious", backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		m.run()
		m.commit(Op{Kind: Restore, Key: "docs/a.txt", Src: trashKey, SrcETag: tr.ETag})
		m.waitIdle()
		r.assertFiles(map[string]string{"docs/a.txt": "precious"})
		if c := m.j.Conflicts(); len(c) != 0 {
			t.Errorf("conflicts = %+v", c)
		}
	})
	t.Run("replay after the copy", func(t *testing.T) {
		r := newRemote(t)
		tr := r.put(trashKey, "precious", backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		m.commit(Op{Kind: Restore, Key: "docs/a.txt", Src: trashKey, SrcETag: tr.ETag})
		if _, err := r.store.Copy(context.Background(), trashKey, tr.ETag, "docs/a.txt", backend.Cond{IfNoneMatch: true}); err != nil {
			t.Fatal(err)
		}
		m.kill()
		m.open()
		m.run()
		m.waitIdle()
		r.assertFiles(map[string]string{"docs/a.txt": "precious"})
		if c := m.j.Conflicts(); len(c) != 0 {
			t.Errorf("conflicts = %+v", c)
		}
	})
	t.Run("exists again", func(t *testing.T) {
		r := newRemote(t)
		tr := r.put(trashKey, "precious", backend.Cond{}, nil)
		r.put("docs/a.txt", "new file", backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		m.run()
		m.commit(Op{Kind: Restore, Key: "docs/a.txt", Src: trashKey, SrcETag: tr.ETag})
		m.waitIdle()
		r.assertFiles(map[string]string{"docs/a.txt": "new file", trashKey: "precious"})
		if c := m.j.Conflicts(); len(c) != 1 || c[0].Reason != ReasonRestoreExists {
			t.Errorf("conflicts = %+v, want one %q", c, ReasonRestoreExists)
		}
	})
}
