package journal

import (
	"strings"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
)

// makeConflict has machine m (running) lose an edit of key to a remote change, and
// returns its conflicted copy's key.
func makeConflict(t *testing.T, r *remote, m *machine, key string) string {
	t.Helper()
	e0 := r.put(key, "original", backend.Cond{}, nil)
	r.put(key, "remote edit", backend.Cond{}, nil)
	m.put(key, "local edit of "+key, Base{Exists: true, ETag: e0.ETag})
	m.waitIdle()
	for _, c := range m.j.Conflicts() {
		if c.Key == key {
			return c.ConflictKey
		}
	}
	t.Fatalf("no conflict recorded for %s: %+v", key, m.j.Conflicts())
	return ""
}

func conflictKeys(j *Journal) []string {
	var out []string
	for _, c := range j.Conflicts() {
		out = append(out, c.Key)
	}
	return out
}

// A conflict leaves the list when its conflicted copy is deleted, renamed
// away or moved with its folder through this mount; the others stay, and
// the count in Stats follows.
func TestConflictLeavesWhenItsCopyGoes(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	m.run()
	deleted := makeConflict(t, r, m, "a.txt")
	renamed := makeConflict(t, r, m, "b.txt")
	makeConflict(t, r, m, "d/c.txt")
	makeConflict(t, r, m, "kept.txt")
	if got := m.j.Stats().Conflicts; got != 4 {
		t.Fatalf("Stats.Conflicts = %d, want 4", got)
	}
	m.commit(Op{Kind: Delete, Key: deleted})
	m.commit(Op{Kind: Copy, Key: "b renamed.txt", Src: renamed}, Op{Kind: Delete, Key: renamed})
	m.commit(Op{Kind: MoveTree, Src: "d/", Key: "e/"})
	m.waitIdle()
	if got := conflictKeys(m.j); len(got) != 1 || got[0] != "kept.txt" {
		t.Fatalf("conflicts left: %q, want only kept.txt", got)
	}
	if got := m.j.Stats().Conflicts; got != 1 {
		t.Errorf("Stats.Conflicts = %d, want 1", got)
	}
	if m.j.IsConflictCopy(deleted) {
		t.Errorf("%s still counts as a conflicted copy after its delete", deleted)
	}
	// The list survives a restart as it is.
	m.kill()
	m.open()
	m.run()
	if got := conflictKeys(m.j); len(got) != 1 || got[0] != "kept.txt" {
		t.Fatalf("conflicts after reopen: %q, want only kept.txt", got)
	}
}

// ClearConflicts removes the named conflicts (by file or by copy), or all.
func TestClearConflicts(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop")
	m.run()
	copyA := makeConflict(t, r, m, "a.txt")
	makeConflict(t, r, m, "b.txt")
	makeConflict(t, r, m, "c.txt")
	cleared, err := m.j.ClearConflicts(copyA, "b.txt", "no-such.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(cleared) != 2 {
		t.Fatalf("cleared %+v, want a.txt and b.txt", cleared)
	}
	if got := conflictKeys(m.j); len(got) != 1 || got[0] != "c.txt" {
		t.Fatalf("conflicts left: %q, want c.txt", got)
	}
	if _, err := m.j.ClearConflicts(); err != nil {
		t.Fatal(err)
	}
	if got := m.j.Conflicts(); len(got) != 0 || m.j.Stats().Conflicts != 0 {
		t.Fatalf("after clearing all: %+v, count %d", got, m.j.Stats().Conflicts)
	}
	copies := 0
	for k := range r.files() {
		if strings.Contains(k, "(conflicted copy ") {
			copies++
		}
	}
	if copies != 3 {
		t.Errorf("%d conflicted copies in the store after clearing, want the 3 untouched", copies)
	}
}
