package journal

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
)

// The remote version the delta tests edit, and an edit of one byte of it.
const (
	deltaV0 = "0123456789abcdefghij"
	deltaV1 = "01234X6789abcdefghij"
)

// oneByteDelta is the delta of deltaV1 against version etag of deltaV0.
func oneByteDelta(etag string) *Delta {
	return &Delta{SrcETag: etag, Same: []Range{{Off: 0, Len: 5}, {Off: 6, Len: 14}}}
}

// putDelta commits a PutFile of content on base with delta d.
func (m *machine) putDelta(key, content string, b Base, d *Delta) {
	m.t.Helper()
	m.commit(Op{Kind: PutFile, Key: key, Staged: m.file(content), Base: b, Delta: d})
}

func wantCalls(t *testing.T, m *machine, want ...string) {
	t.Helper()
	if got := m.hooks.log(); !slices.Equal(got, want) {
		t.Fatalf("calls = %q\nwant    %q", got, want)
	}
}

// A PutFile with a delta against the version it replaces goes through the
// store's PutDelta, with the ranges and the hash of the whole content.
func TestDeltaUploadUsesPutDelta(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	d := oneByteDelta(e0.ETag)
	m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, d)
	m.run()
	m.waitIdle()

	wantCalls(t, m, "PutDelta big if-match "+e0.ETag+" same 0+5 6+14")
	r.assertFiles(map[string]string{"big": deltaV1})
	st := r.stat("big")
	if st.Meta[shaMeta] != shaOf(deltaV1) {
		t.Errorf("%s = %q; want the hash of the whole content %q", shaMeta, st.Meta[shaMeta], shaOf(deltaV1))
	}
	res := m.resultList()
	if len(res) != 1 || res[0].Info.ETag != st.ETag || !reflect.DeepEqual(res[0].Op.Delta, d) {
		t.Errorf("results = %+v; want one with ETag %s and the delta %+v", res, st.ETag, d)
	}
	m.assertNoStagedLeft()
}

// A remote edit since the delta's version: the PutDelta fails its
// condition, and the conflict is handled as for a Put, the conflicted copy
// being sent whole.
func TestDeltaRemoteEditConflicts(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, oneByteDelta(e0.ETag))
	r.put("big", "edited on the desktop", backend.Cond{}, nil)
	m.run()
	m.waitIdle()

	copyKey := conflictName("big", "laptop", t0)
	wantCalls(t, m,
		"PutDelta big if-match "+e0.ETag+" same 0+5 6+14",
		"Stat big",
		"Put "+copyKey+" if-none-match")
	r.assertFiles(map[string]string{"big": "edited on the desktop", copyKey: deltaV1})
	if c := m.j.Conflicts(); len(c) != 1 || c[0].Reason != ReasonEdited {
		t.Errorf("conflicts = %+v; want one, edited on both sides", c)
	}
}

// A remote delete since the delta's version: the file is re-created, whole.
func TestDeltaRemoteDeleteRecreatesWhole(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, oneByteDelta(e0.ETag))
	r.del("big")
	m.run()
	m.waitIdle()

	wantCalls(t, m,
		"PutDelta big if-match "+e0.ETag+" same 0+5 6+14",
		"Stat big",
		"Put big if-none-match")
	r.assertFiles(map[string]string{"big": deltaV1})
}

// The delta is used only where it applies: with the If-Match of its own
// version, through a store that can copy.
func TestDeltaOnlyWhereItApplies(t *testing.T) {
	t.Run("OtherVersion", func(t *testing.T) {
		r := newRemote(t)
		e0 := r.put("big", deltaV0, backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, oneByteDelta("some-other-version"))
		m.run()
		m.waitIdle()
		wantCalls(t, m, "Put big if-match "+e0.ETag)
		r.assertFiles(map[string]string{"big": deltaV1})
	})
	t.Run("NewFile", func(t *testing.T) {
		r := newRemote(t)
		m := newMachine(t, r.root, "laptop")
		m.putDelta("big", deltaV1, Base{}, oneByteDelta("some-version"))
		m.run()
		m.waitIdle()
		wantCalls(t, m, "Put big if-none-match")
	})
	t.Run("StoreCannotCopy", func(t *testing.T) {
		r := newRemote(t)
		e0 := r.put("big", deltaV0, backend.Cond{}, nil)
		// Embedding the interface hides the PutDelta method.
		m := newMachine(t, r.root, "laptop", func(c *Config) { c.Store = struct{ Store }{c.Store} })
		m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, oneByteDelta(e0.ETag))
		m.run()
		m.waitIdle()
		wantCalls(t, m, "Put big if-match "+e0.ETag)
		r.assertFiles(map[string]string{"big": deltaV1})
	})
	t.Run("ChainedBase", func(t *testing.T) {
		// The second edit is chained to the first, in flight: its base
		// becomes the first upload's ETag, not the delta's version.
		r := newRemote(t)
		e0 := r.put("big", deltaV0, backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		g := newGate()
		m.hooks.setHooks(func(ctx context.Context, c call) error {
			if c.Cond.IfMatch == e0.ETag {
				return g.hold(ctx, c)
			}
			return nil
		}, nil)
		m.put("big", "0123456789abcdefghiJ", Base{Exists: true, ETag: e0.ETag})
		m.run()
		g.wait(t)
		d := &Delta{SrcETag: e0.ETag, Same: []Range{{Off: 0, Len: 5}, {Off: 6, Len: 13}}}
		m.putDelta("big", "01234X6789abcdefghiJ", Base{Exists: true, ETag: e0.ETag}, d)
		if p, _ := m.j.Pending("big"); !p.Chained || !reflect.DeepEqual(p.Delta, d) {
			t.Fatalf("pending = %+v; want the second edit chained, with its delta", p)
		}
		g.release()
		m.waitIdle()
		res := m.resultList()
		if len(res) != 2 {
			t.Fatalf("results = %+v", res)
		}
		wantCalls(t, m, "Put big if-match "+e0.ETag, "Put big if-match "+res[0].Info.ETag)
		r.assertFiles(map[string]string{"big": "01234X6789abcdefghiJ"})
	})
}

// A newer edit that supersedes a waiting one keeps its own delta (computed
// against the chain's base, which it inherits), or has none.
func TestDeltaCoalescing(t *testing.T) {
	t.Run("NewerDelta", func(t *testing.T) {
		r := newRemote(t)
		e0 := r.put("big", deltaV0, backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, oneByteDelta(e0.ETag))
		newer := &Delta{SrcETag: e0.ETag, Same: []Range{{Off: 0, Len: 5}, {Off: 7, Len: 13}}}
		m.putDelta("big", "01234XY789abcdefghij", Base{}, newer)
		p, _ := m.j.Pending("big")
		if m.j.Stats().Pending != 1 || p.Base != (Base{Exists: true, ETag: e0.ETag}) || !reflect.DeepEqual(p.Delta, newer) {
			t.Fatalf("pending = %+v; want one op on base %s with the newer delta %+v", p, e0.ETag, newer)
		}
		m.run()
		m.waitIdle()
		wantCalls(t, m, "PutDelta big if-match "+e0.ETag+" same 0+5 7+13")
		r.assertFiles(map[string]string{"big": "01234XY789abcdefghij"})
	})
	t.Run("NewerWithout", func(t *testing.T) {
		r := newRemote(t)
		e0 := r.put("big", deltaV0, backend.Cond{}, nil)
		m := newMachine(t, r.root, "laptop")
		m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, oneByteDelta(e0.ETag))
		m.put("big", "rewritten", Base{})
		if p, _ := m.j.Pending("big"); p.Delta != nil {
			t.Fatalf("pending delta = %+v; want none: the newer edit has none", p.Delta)
		}
		m.run()
		m.waitIdle()
		wantCalls(t, m, "Put big if-match "+e0.ETag)
		r.assertFiles(map[string]string{"big": "rewritten"})
	})
}

// The delta is in the record: it survives a crash and is used by the
// replay.
func TestDeltaSurvivesReopen(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	d := oneByteDelta(e0.ETag)
	m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, d)
	m.kill()
	m.open()
	if p, ok := m.j.Pending("big"); !ok || !reflect.DeepEqual(p.Delta, d) {
		t.Fatalf("pending after reopen = %+v; want the delta %+v", p, d)
	}
	m.run()
	m.waitIdle()
	wantCalls(t, m, "PutDelta big if-match "+e0.ETag+" same 0+5 6+14")
	r.assertFiles(map[string]string{"big": deltaV1})
	m.assertNoStagedLeft()
}

// A delta upload whose answer was lost is recognised by its hash when it is
// tried again: no conflict.
func TestDeltaReplayOfLostAnswer(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	lost := false
	m.hooks.setHooks(nil, func(_ context.Context, c call, err error) error {
		if c.Op == faulty.OpPutDelta && err == nil && !lost {
			lost = true // only the uploader's goroutine calls PutDelta
			return backend.ErrOffline
		}
		return err
	})
	m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, oneByteDelta(e0.ETag))
	m.run()
	m.waitIdle()
	delta := "PutDelta big if-match " + e0.ETag + " same 0+5 6+14"
	wantCalls(t, m, delta, delta, "Stat big")
	r.assertFiles(map[string]string{"big": deltaV1})
	if c := m.j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts = %+v", c)
	}
}

// A record written before deltas existed reads as having none.
func TestRecordWithoutDelta(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("k", "v0", backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	m.kill()
	if err := os.WriteFile(filepath.Join(m.stage, "staged-old"), []byte("v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := map[string]any{
		"v": 1, "seq": 1, "groups": []uint64{1}, "kind": "put", "key": "k",
		"staged": "staged-old", "size": 2, "sha256": shaOf("v1"),
		"base": map[string]any{"exists": true, "etag": e0.ETag}, "committed": t0,
	}
	v, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	err = m.db.Update(func(tx *bbolt.Tx) error {
		if err := tx.Bucket(opsBucket).Put(seqKey(1), v); err != nil {
			return err
		}
		return setLastSeq(tx, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	m.open()
	if p, ok := m.j.Pending("k"); !ok || p.Delta != nil {
		t.Fatalf("pending = %+v, %v; want the old op, without a delta", p, ok)
	}
	m.run()
	m.waitIdle()
	wantCalls(t, m, "Put k if-match "+e0.ETag)
	r.assertFiles(map[string]string{"k": "v1"})
}

func TestCommitRejectsBadDelta(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("k", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	b := Base{Exists: true, ETag: e0.ETag}
	for _, c := range []struct {
		name string
		op   func() Op
	}{
		{"on a delete", func() Op { return Op{Kind: Delete, Key: "k", Base: b, Delta: oneByteDelta(e0.ETag)} }},
		{"without its version", func() Op {
			return Op{Kind: PutFile, Key: "k", Staged: m.file(deltaV1), Base: b, Delta: oneByteDelta("")}
		}},
		{"unsorted", func() Op {
			return Op{Kind: PutFile, Key: "k", Staged: m.file(deltaV1), Base: b, Delta: &Delta{SrcETag: e0.ETag, Same: []Range{{Off: 6, Len: 2}, {Off: 0, Len: 5}}}}
		}},
		{"overlapping", func() Op {
			return Op{Kind: PutFile, Key: "k", Staged: m.file(deltaV1), Base: b, Delta: &Delta{SrcETag: e0.ETag, Same: []Range{{Off: 0, Len: 5}, {Off: 4, Len: 5}}}}
		}},
		{"empty range", func() Op {
			return Op{Kind: PutFile, Key: "k", Staged: m.file(deltaV1), Base: b, Delta: &Delta{SrcETag: e0.ETag, Same: []Range{{Off: 3, Len: 0}}}}
		}},
		{"past the staged content", func() Op {
			return Op{Kind: PutFile, Key: "k", Staged: m.file(deltaV1), Base: b, Delta: &Delta{SrcETag: e0.ETag, Same: []Range{{Off: 6, Len: 15}}}}
		}},
	} {
		if err := m.j.Commit(c.op()); err == nil {
			t.Errorf("Commit of a delta %s succeeded; want an error", c.name)
		}
	}
	if s := m.j.Stats(); s.Pending != 0 {
		t.Errorf("%d ops pending after refused commits", s.Pending)
	}
	// A delta covering everything (nothing changed) is fine.
	m.putDelta("k", deltaV0, b, &Delta{SrcETag: e0.ETag, Same: []Range{{Off: 0, Len: int64(len(deltaV0))}}})
	m.run()
	m.waitIdle()
	if len(m.resultList()) != 1 {
		t.Errorf("results = %+v; want the op done", m.resultList())
	}
}
