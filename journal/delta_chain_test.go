package journal

import (
	"context"
	"slices"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/faulty"
)

// An edit committed while the previous one uploads carries a delta against
// the version both started from; once the previous one lands, the delta is
// rebased onto the new version (the ranges neither edit touched), so the
// follower still goes through PutDelta instead of sending everything.
func TestDeltaRebasedOntoChainedUpload(t *testing.T) {
	r := newRemote(t)
	e0 := r.put("big", deltaV0, backend.Cond{}, nil)
	m := newMachine(t, r.root, "laptop")
	g := newGate()
	m.hooks.setHooks(func(ctx context.Context, c call) error {
		if c.Op == faulty.OpPutDelta && c.Cond.IfMatch == e0.ETag {
			return g.hold(ctx, c)
		}
		return nil
	}, nil)
	m.putDelta("big", deltaV1, Base{Exists: true, ETag: e0.ETag}, oneByteDelta(e0.ETag))
	m.run()
	g.wait(t)
	const v2 = "01234X6789aYcdefghij" // deltaV1 with byte 11 changed too
	m.putDelta("big", v2, Base{Exists: true, ETag: e0.ETag},
		&Delta{SrcETag: e0.ETag, Same: []Range{{Off: 0, Len: 5}, {Off: 6, Len: 5}, {Off: 12, Len: 8}}})
	if p, _ := m.j.Pending("big"); !p.Chained {
		t.Fatalf("second edit = %+v; want it chained to the uploading one", p)
	}
	g.release()
	m.waitIdle()
	var e1 string
	for _, res := range m.resultList() {
		if res.Op.Base.ETag == e0.ETag {
			e1 = res.Info.ETag
		}
	}
	wantCalls(t, m, "PutDelta big if-match "+e0.ETag+" same 0+5 6+14", "PutDelta big if-match "+e1+" same 0+5 6+5 12+8")
	r.assertFiles(map[string]string{"big": v2})
}

func TestIntersectRanges(t *testing.T) {
	for _, c := range []struct{ a, b, want []Range }{
		{nil, []Range{{Off: 0, Len: 10}}, nil},
		{[]Range{{Off: 0, Len: 10}}, []Range{{Off: 0, Len: 10}}, []Range{{Off: 0, Len: 10}}},
		{[]Range{{Off: 0, Len: 5}, {Off: 6, Len: 14}}, []Range{{Off: 0, Len: 11}, {Off: 12, Len: 8}},
			[]Range{{Off: 0, Len: 5}, {Off: 6, Len: 5}, {Off: 12, Len: 8}}},
		{[]Range{{Off: 0, Len: 3}}, []Range{{Off: 3, Len: 3}}, nil},
		{[]Range{{Off: 2, Len: 20}}, []Range{{Off: 0, Len: 4}, {Off: 10, Len: 2}, {Off: 20, Len: 9}},
			[]Range{{Off: 2, Len: 2}, {Off: 10, Len: 2}, {Off: 20, Len: 2}}},
	} {
		if got := IntersectRanges(c.a, c.b); !slices.Equal(got, c.want) {
			t.Errorf("IntersectRanges(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}
