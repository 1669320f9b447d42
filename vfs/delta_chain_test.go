package vfs

import (
	"reflect"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/journal"
)

// A copy of content still waiting to upload keeps the delta that content
// has against the base, minus what is written to the copy since.
func TestChangesOfPendingContent(t *testing.T) {
	base := journal.Base{Exists: true, ETag: "x"}
	pending := &journal.Delta{SrcETag: "x", Same: []journal.Range{rg(0, 40), rg(41, 59)}}
	c := copiedFromPending(pending, base, 100)
	c.write(70, 10)
	want := &journal.Delta{SrcETag: "x", Same: []journal.Range{rg(0, 40), rg(41, 29), rg(80, 20)}}
	if got := c.delta(base, 100); !reflect.DeepEqual(got, want) {
		t.Errorf("delta = %+v, want %+v", got, want)
	}
	// A delta against another version, or none, tells nothing.
	if c := copiedFromPending(pending, journal.Base{Exists: true, ETag: "y"}, 100); c.known {
		t.Errorf("changes from a delta on another version: %+v, want unknown", c)
	}
	if c := copiedFromPending(nil, base, 100); c.known {
		t.Errorf("changes from no delta: %+v, want unknown", c)
	}
}

// When an earlier version of a working copy lands, the copy's changes are
// relative to the new version: where neither that upload nor the copy
// changed the old one's bytes.
func TestChangesLanded(t *testing.T) {
	old := journal.Base{Exists: true, ETag: "x"}
	c := copiedFrom(100)
	c.write(40, 1) // committed and uploaded as version y …
	c.write(90, 5) // … then written again before y landed
	r := journal.Result{
		Op:   journal.Op{Kind: journal.PutFile, Delta: &journal.Delta{SrcETag: "x", Same: []journal.Range{rg(0, 40), rg(41, 59)}}},
		Info: backend.ObjectInfo{ETag: "y", Size: 100},
	}
	n := c.landed(old, r, 100)
	want := &journal.Delta{SrcETag: "y", Same: []journal.Range{rg(0, 40), rg(41, 49), rg(95, 5)}}
	if got := n.delta(journal.Base{Exists: true, ETag: "y"}, 100); !reflect.DeepEqual(got, want) {
		t.Errorf("delta after landing = %+v, want %+v", got, want)
	}
	// An upload sent whole, or based on another version, tells nothing.
	r.Op.Delta = nil
	if n := c.landed(old, r, 100); n.known {
		t.Errorf("changes after a whole upload: %+v, want unknown", n)
	}
}
