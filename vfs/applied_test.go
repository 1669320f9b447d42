package vfs

import (
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// fakeJournal answers the pending-op queries from a fixed list (seq order).
type fakeJournal struct{ ops []journal.PendingOp }

func (j *fakeJournal) StagingFile() (*os.File, error) { return nil, os.ErrInvalid }
func (j *fakeJournal) Commit(ops ...journal.Op) error { return os.ErrInvalid }
func (j *fakeJournal) IsConflictCopy(string) bool     { return false }
func (j *fakeJournal) StreamPartSize() int64          { return 0 }
func (j *fakeJournal) StartStream(string, string, map[string]string) *journal.Stream {
	return nil
}

func (j *fakeJournal) Pending(key string) (journal.PendingOp, bool) {
	return j.PendingBefore(key, math.MaxUint64)
}

func (j *fakeJournal) PendingBefore(key string, seq uint64) (journal.PendingOp, bool) {
	var newest journal.PendingOp
	found := false
	for _, p := range j.ops {
		if p.Key == key && p.Seq < seq {
			newest, found = p, true
		}
	}
	return newest, found
}

func (j *fakeJournal) PendingUnder(prefix string) []journal.PendingOp {
	var out []journal.PendingOp
	for _, p := range j.ops {
		if strings.HasPrefix(p.Key, prefix) {
			out = append(out, p)
		}
	}
	return out
}

// TestReconcileShowsTheJournal: after a crash the tree must show what the
// journal holds: the size of the newest committed version (the kill may
// have come between a commit and its tree update), no file whose create
// was never committed, and tombstones for pending deletes.
func TestReconcileShowsTheJournal(t *testing.T) {
	tree := newTestTree(t)
	mtime := time.Unix(1700000000, 0)
	for _, e := range []cache.Entry{
		{Name: "edited.bin", Size: 31309, MTime: mtime, Local: true}, // shown after an fsync
		{Name: "ghost.bin", Local: true},                             // created, never closed
		{Name: "deleted.txt", Size: 5, ETag: "e1"},
	} {
		if err := tree.PutEntry("d", e); err != nil {
			t.Fatal(err)
		}
	}
	j := &fakeJournal{ops: []journal.PendingOp{
		{Seq: 1, Kind: journal.PutFile, Key: "d/edited.bin", Size: 31309},
		{Seq: 2, Kind: journal.PutFile, Key: "d/edited.bin", Size: 62619}, // the close's commit
		{Seq: 3, Kind: journal.Delete, Key: "d/deleted.txt"},
		{Seq: 4, Kind: journal.PutFile, Key: "new/deep/file.txt", Size: 7},
	}}
	f := mustNew(t, Config{Tree: tree, Journal: j})
	if err := f.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if e, ok, _ := tree.Lookup("d", "edited.bin"); !ok || e.Size != 62619 || !e.MTime.Equal(mtime) {
		t.Errorf("edited.bin = %+v %v; want the newest committed size 62619, mtime kept", e, ok)
	}
	if _, ok, _ := tree.Lookup("d", "ghost.bin"); ok {
		t.Error("a file whose create was never committed is still shown")
	}
	if _, ok, _ := tree.Lookup("d", "deleted.txt"); ok {
		t.Error("a file with a pending delete is shown")
	}
	if e, ok, _ := tree.Lookup("new/deep", "file.txt"); !ok || e.Size != 7 {
		t.Errorf("new/deep/file.txt = %+v %v", e, ok)
	}
	if e, ok, _ := tree.Lookup("new", "deep"); !ok || !e.Dir {
		t.Errorf("parent folder new/deep not shown: %+v %v", e, ok)
	}
}

// TestReconcileShowsAPendingCopyAtItsSize: a renamed file whose server-side
// copy was pending at a crash shows the size the rename committed, whether
// the tree lost the rename's entry or holds the copy's result, recorded by
// Applied just before the kill (the journal had not removed the op yet).
// It was shown as an empty file until the copy completed.
func TestReconcileShowsAPendingCopyAtItsSize(t *testing.T) {
	tree := newTestTree(t)
	mtime := time.Unix(1700000000, 0)
	// The copy's result, as Applied records it: not Local, with its ETag.
	if err := tree.PutEntry("", cache.Entry{Name: "landed.bin", Size: 9645, ETag: "e1", MTime: mtime}); err != nil {
		t.Fatal(err)
	}
	j := &fakeJournal{ops: []journal.PendingOp{
		{Seq: 1, Kind: journal.Copy, Key: "landed.bin", Src: "a.bin", SrcETag: "e1", Size: 9645},
		{Seq: 2, Kind: journal.Delete, Key: "a.bin"},
		{Seq: 3, Kind: journal.Copy, Key: "lost.bin", Src: "b.bin", SrcETag: "e2", Size: 1323609},
		{Seq: 4, Kind: journal.Delete, Key: "b.bin"},
	}}
	f := mustNew(t, Config{Tree: tree, Journal: j})
	if err := f.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if e, ok, _ := tree.Lookup("", "landed.bin"); !ok || e.Size != 9645 || !e.Local || !e.MTime.Equal(mtime) {
		t.Errorf("landed.bin = %+v %v; want Local, 9645 bytes, its mtime kept", e, ok)
	}
	if e, ok, _ := tree.Lookup("", "lost.bin"); !ok || e.Size != 1323609 || !e.Local {
		t.Errorf("lost.bin = %+v %v; want Local, 1323609 bytes", e, ok)
	}
}
