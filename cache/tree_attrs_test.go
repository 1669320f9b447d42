package cache

import (
	"path/filepath"
	"testing"
	"time"
)

// TestTreeAttrsSurviveListings: mode and mtime learned from an object's
// metadata stay through a listing of the same version, persist across a
// reopen, and go when the version changes.
func TestTreeAttrsSurviveListings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	tree, db := openTestTree(t, path)
	meta := time.Unix(1000000000, 0)
	listed := time.Unix(1700000000, 0)
	if err := tree.PutEntry("d", Entry{Name: "f", Size: 3, ETag: "e1", MTime: meta, Mode: 0o600, Attrs: true}); err != nil {
		t.Fatal(err)
	}
	list := func(etag string) {
		t.Helper()
		if err := tree.ReplaceDir("d", []Entry{{Name: "f", Size: 3, ETag: etag, MTime: listed}}, "d/", nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	list("e1")
	db.Close()
	tree, db = openTestTree(t, path)
	defer db.Close()
	e, ok, err := tree.Lookup("d", "f")
	if err != nil || !ok || !e.Attrs || e.Mode != 0o600 || !e.MTime.Equal(meta) {
		t.Fatalf("after a listing of the same version and a reopen: %+v %v %v; want mode 600, mtime %v", e, ok, err, meta)
	}
	list("e2")
	e, _, _ = tree.Lookup("d", "f")
	if e.Attrs || e.Mode != 0 || !e.MTime.Equal(listed) {
		t.Fatalf("after a listing of a new version: %+v; want the listing's mtime and no mode", e)
	}
}

func TestEntryCodecMode(t *testing.T) {
	for _, e := range []Entry{
		{Name: "a", Size: 1, ETag: "x", Mode: 0o4755, Attrs: true, MTime: time.Unix(5, 6)},
		{Name: "b", ETag: "", Mode: 0o600},
		{Name: "c", ETag: "y"},
	} {
		got, err := decodeEntry(e.Name, encodeEntry(e))
		if err != nil || got != e {
			t.Errorf("round trip of %+v = %+v, %v", e, got, err)
		}
	}
}
