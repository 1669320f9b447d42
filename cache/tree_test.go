package cache

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openTestTree(t *testing.T, path string) (*Tree, *bolt.DB) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := OpenTree(db)
	if err != nil {
		t.Fatal(err)
	}
	return tree, db
}

func childNames(t *testing.T, tree *Tree, dir string) []string {
	t.Helper()
	var names []string
	if err := tree.Children(dir, func(e Entry) bool { names = append(names, e.Name); return true }); err != nil {
		t.Fatal(err)
	}
	return names
}

func TestTreeReplaceDirAndPersistence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	tree, db := openTestTree(t, path)
	mtime := time.Unix(1700000000, 123)
	listed := time.Unix(1700000100, 0)
	entries := []Entry{
		{Name: "b.txt", Size: 42, ETag: "abc", MTime: mtime},
		{Name: "a", Dir: true},
		{Name: "c", Dir: true},
	}
	if err := tree.ReplaceDir("", entries, "", []Skipped{{Key: "../", Reason: "dot segment"}}, listed); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("a", []Entry{{Name: "deep", Dir: true}, {Name: "f", Size: 1}}, "a/", nil, listed); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("a/deep", []Entry{{Name: "g", Size: 2}}, "a/deep/", nil, listed); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	tree, db = openTestTree(t, path)
	defer db.Close()
	if got, want := childNames(t, tree, ""), []string{"a", "b.txt", "c"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("root children after reopen = %v, want %v", got, want)
	}
	e, ok, err := tree.Lookup("", "b.txt")
	if err != nil || !ok {
		t.Fatalf("lookup b.txt: %v %v", ok, err)
	}
	if e.Size != 42 || e.ETag != "abc" || !e.MTime.Equal(mtime) || e.Dir {
		t.Fatalf("b.txt decoded as %+v", e)
	}
	st, ok, err := tree.Dir("")
	if err != nil || !ok || !st.ListedAt.Equal(listed) {
		t.Fatalf("root dir state %+v %v %v", st, ok, err)
	}
	if _, ok, _ := tree.Dir("zzz"); ok {
		t.Fatal("never-listed dir reported as listed")
	}

	// "a" disappears remotely: its subtree and dir records go with it, and a
	// sibling with a common name prefix ("ab") is untouched.
	if err := tree.ReplaceDir("", []Entry{{Name: "ab", Dir: true}, {Name: "b.txt", Size: 43, ETag: "def"}}, "", nil, listed); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("ab", []Entry{{Name: "keep"}}, "ab/", nil, listed); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("", []Entry{{Name: "ab", Dir: true}, {Name: "b.txt", Size: 43, ETag: "def"}}, "", nil, listed); err != nil {
		t.Fatal(err)
	}
	if names := childNames(t, tree, "a"); len(names) != 0 {
		t.Fatalf("children of removed dir a survive: %v", names)
	}
	if names := childNames(t, tree, "a/deep"); len(names) != 0 {
		t.Fatalf("grandchildren of removed dir survive: %v", names)
	}
	if _, ok, _ := tree.Dir("a/deep"); ok {
		t.Fatal("dir state of removed a/deep survives")
	}
	if got := childNames(t, tree, "ab"); !reflect.DeepEqual(got, []string{"keep"}) {
		t.Fatalf("sibling ab lost its children: %v", got)
	}
	if e, _, _ := tree.Lookup("", "b.txt"); e.Size != 43 || e.ETag != "def" {
		t.Fatalf("b.txt not updated: %+v", e)
	}
	sk, err := tree.Skipped()
	if err != nil {
		t.Fatal(err)
	}
	if len(sk) != 0 {
		t.Fatalf("skipped keys of root not replaced: %v", sk)
	}
}

func TestTreeDirBecomesFile(t *testing.T) {
	tree, db := openTestTree(t, filepath.Join(t.TempDir(), "meta.db"))
	defer db.Close()
	now := time.Now()
	if err := tree.ReplaceDir("", []Entry{{Name: "x", Dir: true}}, "", nil, now); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("x", []Entry{{Name: "child"}}, "x/", nil, now); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("", []Entry{{Name: "x", Size: 5}}, "", nil, now); err != nil {
		t.Fatal(err)
	}
	if e, _, _ := tree.Lookup("", "x"); e.Dir || e.Size != 5 {
		t.Fatalf("x should now be a file: %+v", e)
	}
	if names := childNames(t, tree, "x"); len(names) != 0 {
		t.Fatalf("old children of x survive: %v", names)
	}
}

func TestTreeSkippedScopedToDirectory(t *testing.T) {
	tree, db := openTestTree(t, filepath.Join(t.TempDir(), "meta.db"))
	defer db.Close()
	now := time.Now()
	if err := tree.ReplaceDir("", nil, "", []Skipped{{Key: "..", Reason: "dot segment"}}, now); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("d", nil, "d/", []Skipped{{Key: "d/.", Reason: "dot segment"}}, now); err != nil {
		t.Fatal(err)
	}
	// Re-listing the root must not drop d's skipped key.
	if err := tree.ReplaceDir("", nil, "", nil, now); err != nil {
		t.Fatal(err)
	}
	sk, err := tree.Skipped()
	if err != nil {
		t.Fatal(err)
	}
	if len(sk) != 1 || sk[0].Key != "d/." {
		t.Fatalf("skipped = %v, want only d/.", sk)
	}
}

func TestEntryCodecRoundTrip(t *testing.T) {
	for _, e := range []Entry{
		{Name: "n"},
		{Name: "n", Dir: true, MTime: time.Unix(0, 1)},
		{Name: "n", Size: 1 << 40, ETag: "\"weird\"-3", MTime: time.Unix(1<<33, 999)},
	} {
		got, err := decodeEntry(e.Name, encodeEntry(e))
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != e.Name || got.Dir != e.Dir || got.Size != e.Size || got.ETag != e.ETag || !got.MTime.Equal(e.MTime) {
			t.Fatalf("round trip %+v -> %+v", e, got)
		}
	}
	if _, err := decodeEntry("n", []byte{0, 0x80}); err == nil {
		t.Fatal("truncated entry decoded without error")
	}
}

// TestTreeLocalEntriesWinOverListings: a local change (new file, edit,
// delete tombstone) survives re-listings until it is confirmed.
func TestTreeLocalEntriesWinOverListings(t *testing.T) {
	tree, db := openTestTree(t, filepath.Join(t.TempDir(), "meta.db"))
	defer db.Close()
	now := time.Now()
	if err := tree.ReplaceDir("", []Entry{{Name: "edited", Size: 1, ETag: "r1"}, {Name: "deleted", Size: 2, ETag: "r2"}}, "", nil, now); err != nil {
		t.Fatal(err)
	}
	for _, e := range []Entry{
		{Name: "new", Size: 10, Local: true},
		{Name: "edited", Size: 11, Local: true},
		{Name: "deleted", Local: true, Gone: true},
	} {
		if err := tree.PutEntry("", e); err != nil {
			t.Fatal(err)
		}
	}
	// The store does not have "new" yet, still has the old "edited" and
	// still has "deleted".
	if err := tree.ReplaceDir("", []Entry{{Name: "edited", Size: 1, ETag: "r1"}, {Name: "deleted", Size: 2, ETag: "r2"}}, "", nil, now); err != nil {
		t.Fatal(err)
	}
	if got := childNames(t, tree, ""); !reflect.DeepEqual(got, []string{"edited", "new"}) {
		t.Fatalf("children = %v, want [edited new] (tombstone hidden, local file kept)", got)
	}
	if e, _, _ := tree.Lookup("", "edited"); e.Size != 11 || !e.Local {
		t.Fatalf("a listing overrode a local edit: %+v", e)
	}
	if _, ok, _ := tree.Lookup("", "deleted"); ok {
		t.Fatal("a listing resurrected a locally deleted file")
	}
	var local []string
	if err := tree.LocalChildren("", func(e Entry) bool {
		local = append(local, fmt.Sprintf("%s gone=%v", e.Name, e.Gone))
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"deleted gone=true", "edited gone=false", "new gone=false"}; !reflect.DeepEqual(local, want) {
		t.Fatalf("local children = %q, want %q (tombstones included, listed entries not)", local, want)
	}
	// Confirmed: the entry becomes remote again and listings take over.
	if err := tree.PutEntry("", Entry{Name: "edited", Size: 11, ETag: "r3"}); err != nil {
		t.Fatal(err)
	}
	if err := tree.RemoveEntry("", "deleted"); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("", []Entry{{Name: "edited", Size: 12, ETag: "r4"}}, "", nil, now); err != nil {
		t.Fatal(err)
	}
	if e, _, _ := tree.Lookup("", "edited"); e.Size != 12 || e.Local {
		t.Fatalf("confirmed entry not updated by the listing: %+v", e)
	}
}

func TestTreeMoveDir(t *testing.T) {
	tree, db := openTestTree(t, filepath.Join(t.TempDir(), "meta.db"))
	defer db.Close()
	now := time.Now()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(tree.ReplaceDir("", []Entry{{Name: "src", Dir: true}, {Name: "srcx", Dir: true}}, "", nil, now))
	must(tree.ReplaceDir("src", []Entry{{Name: "f", Size: 3, ETag: "e"}, {Name: "sub", Dir: true}}, "src/", nil, now))
	must(tree.ReplaceDir("src/sub", []Entry{{Name: "g", Size: 4, ETag: "e2"}}, "src/sub/", nil, now))
	must(tree.ReplaceDir("srcx", []Entry{{Name: "keep"}}, "srcx/", nil, now))
	must(tree.MoveDir("", "src", "", "dst"))

	if got := childNames(t, tree, ""); !reflect.DeepEqual(got, []string{"dst", "srcx"}) {
		t.Fatalf("root = %v, want [dst srcx]", got)
	}
	if got := childNames(t, tree, "dst"); !reflect.DeepEqual(got, []string{"f", "sub"}) {
		t.Fatalf("dst = %v", got)
	}
	if e, ok, _ := tree.Lookup("dst/sub", "g"); !ok || e.Size != 4 || !e.Local {
		t.Fatalf("dst/sub/g = %+v %v: moved entries must be Local", e, ok)
	}
	// The subfolder's listing moved with it: it is known offline too.
	if st, ok, _ := tree.Dir("dst/sub"); !ok || !st.ListedAt.Equal(time.Unix(0, now.UnixNano())) {
		t.Fatalf("dst/sub listing state = %v %v, want the one src/sub had (%v)", st, ok, now)
	}
	if _, ok, _ := tree.Dir("src/sub"); ok {
		t.Fatal("src/sub still has a listing state")
	}
	if names := childNames(t, tree, "src"); len(names) != 0 {
		t.Fatalf("src still has children %v", names)
	}
	if got := childNames(t, tree, "srcx"); !reflect.DeepEqual(got, []string{"keep"}) {
		t.Fatalf("sibling srcx touched: %v", got)
	}
	// A listing of the root that still has src does not bring it back.
	must(tree.ReplaceDir("", []Entry{{Name: "src", Dir: true}, {Name: "srcx", Dir: true}}, "", nil, now))
	if _, ok, _ := tree.Lookup("", "src"); ok {
		t.Fatal("renamed-away dir resurrected by a listing")
	}
	must(tree.MarkStale("dst"))
	if st, _, _ := tree.Dir("dst"); !st.ListedAt.Before(time.Unix(1, 0)) {
		t.Fatalf("MarkStale left ListedAt %v", st.ListedAt)
	}
}

func TestEntryCodecPOSIXAttrs(t *testing.T) {
	full := Entry{Name: "l", Size: 6, ETag: "e", MTime: time.Unix(5, 6), Attrs: true, Mode: 0o120777,
		Owner: true, UID: 1000, GID: 0, ATime: time.Unix(7, 8), CTime: time.Unix(9, 10), Target: "../x/y", Rdev: 0x0103}
	got, err := decodeEntry("l", encodeEntry(full))
	if err != nil || !reflect.DeepEqual(got, full) {
		t.Errorf("round trip: %+v, %v\nwant %+v", got, err, full)
	}
	// A record written before owners, times and targets were kept: flags,
	// size, mtime, etag, mode.
	old := []byte{entryAttrs}
	old = binary.AppendVarint(old, 3)
	old = binary.AppendVarint(old, time.Unix(1, 0).UnixNano())
	old = binary.AppendUvarint(old, 2)
	old = append(old, "ab"...)
	old = binary.AppendUvarint(old, 0o640)
	e, err := decodeEntry("f", old)
	want := Entry{Name: "f", Size: 3, ETag: "ab", MTime: time.Unix(1, 0), Attrs: true, Mode: 0o640}
	if err != nil || !reflect.DeepEqual(e, want) || e.Type() != sIFREG {
		t.Errorf("old record: %+v, %v; want %+v, a regular file", e, err, want)
	}
	if _, err := decodeEntry("f", encodeEntry(full)[:len(encodeEntry(full))-3]); err == nil {
		t.Error("a truncated record decodes")
	}
}

func TestTreeKeepsFolderAttrsAndCountsSubdirs(t *testing.T) {
	tree, db := openTestTree(t, filepath.Join(t.TempDir(), "meta.db"))
	defer db.Close()
	dir := Entry{Name: "d", Dir: true, Attrs: true, Mode: 0o40700, Owner: true, UID: 7, GID: 8, MTime: time.Unix(100, 0)}
	if err := tree.PutEntry("", dir); err != nil {
		t.Fatal(err)
	}
	// A listing carries nothing of a folder: what was known holds.
	if err := tree.ReplaceDir("", []Entry{{Name: "d", Dir: true}, {Name: "e", Dir: true}, {Name: "f"}}, "", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, _, _ := tree.Lookup("", "d")
	if want := dir; !reflect.DeepEqual(got, want) {
		t.Errorf("after a listing: %+v, want %+v", got, want)
	}
	if n, err := tree.Subdirs(""); n != 2 || err != nil {
		t.Errorf("Subdirs = %d, %v; want 2", n, err)
	}
	if err := tree.MoveDir("", "d", "", "moved"); err != nil {
		t.Fatal(err)
	}
	got, _, _ = tree.Lookup("", "moved")
	if got.Mode != dir.Mode || got.UID != 7 || !got.MTime.Equal(dir.MTime) || !got.Local {
		t.Errorf("moved folder: %+v", got)
	}
	if n, _ := tree.Subdirs(""); n != 2 {
		t.Errorf("Subdirs after the move (a tombstone and a folder) = %d, want 2", n)
	}
}

// TestTreeChildrenAfter reads a folder from a name on: the names after it
// only, the folder's own children only (not a sibling folder's with a
// longer name), and nothing after the last.
func TestTreeChildrenAfter(t *testing.T) {
	tree, db := openTestTree(t, filepath.Join(t.TempDir(), "meta.db"))
	defer db.Close()
	now := time.Unix(1700000000, 0)
	var entries []Entry
	for _, name := range []string{"a", "b", "b0", "c"} {
		entries = append(entries, Entry{Name: name, Size: 1, ETag: "e"})
	}
	if err := tree.ReplaceDir("d", entries, "", nil, now); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("d0", []Entry{{Name: "other", Size: 1, ETag: "e"}}, "", nil, now); err != nil {
		t.Fatal(err)
	}
	after := func(name string) []string {
		var names []string
		if err := tree.ChildrenAfter("d", name, func(e Entry) bool { names = append(names, e.Name); return true }); err != nil {
			t.Fatal(err)
		}
		return names
	}
	for _, tc := range []struct {
		after string
		want  []string
	}{
		{"", []string{"a", "b", "b0", "c"}},
		{"a", []string{"b", "b0", "c"}},
		{"b", []string{"b0", "c"}},
		{"ba", []string{"c"}}, // not a child: from the next name on
		{"c", nil},
		{"zz", nil}, // after the last: the next key is another folder's
	} {
		if got := after(tc.after); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ChildrenAfter(d, %q) = %q, want %q", tc.after, got, tc.want)
		}
	}

	// The key after the last child is shorter than the folder's prefix (the
	// walk read-ahead of vfs once crashed the mount on this).
	if err := tree.ReplaceDir("x/long-folder-name", []Entry{{Name: "m", Size: 1, ETag: "e"}}, "", nil, now); err != nil {
		t.Fatal(err)
	}
	if err := tree.ReplaceDir("y", []Entry{{Name: "n", Size: 1, ETag: "e"}}, "", nil, now); err != nil {
		t.Fatal(err)
	}
	var names []string
	if err := tree.ChildrenAfter("x/long-folder-name", "zzz", func(e Entry) bool { names = append(names, e.Name); return true }); err != nil || names != nil {
		t.Errorf("ChildrenAfter past the last child of a folder = %q, %v; want nothing", names, err)
	}
}
