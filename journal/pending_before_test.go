package journal

import "testing"

// TestPendingBefore: a file written, then renamed before its upload: the
// copy's source content is the write before it, not the rename's delete,
// which is the newest op on the source key.
func TestPendingBefore(t *testing.T) {
	r := newRemote(t)
	m := newMachine(t, r.root, "laptop") // not run: everything stays pending
	m.put("a", "v1", Base{})
	m.commit(Op{Kind: Copy, Key: "b", Src: "a", Group: 0}, Op{Kind: Delete, Key: "a", Group: 0})
	cp, ok := m.j.Pending("b")
	if !ok || cp.Kind != Copy || !cp.SrcChained {
		t.Fatalf("Pending(b) = %+v %v, want a copy chained to the write of a", cp, ok)
	}
	if p, _ := m.j.Pending("a"); p.Kind != Delete {
		t.Fatalf("Pending(a) = %+v, want the rename's delete", p)
	}
	p, ok := m.j.PendingBefore("a", cp.Seq)
	if !ok || p.Kind != PutFile || p.Size != 2 {
		t.Fatalf("PendingBefore(a, %d) = %+v %v, want the write of a", cp.Seq, p, ok)
	}
	if _, ok := m.j.PendingBefore("a", p.Seq); ok {
		t.Errorf("PendingBefore(a, %d) found an op before the first", p.Seq)
	}
}
