package vfs

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	bolt "go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/attrindex"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// The attribute index itself is tested in backend/attrindex; these tests
// show that the vfs records what it uploads there and shows what the
// listings carry.

// attrIndexName is the sidecar's name.
const attrIndexName = attrindex.Name

// newIndexedFS is a mount over store, with an attribute index, a tree of
// its own (another machine, for a second call), which lists again at every
// use.
func newIndexedFS(t *testing.T, store *memStore) (*FS, *cache.Tree) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "tree.db"), 0o600, &bolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	tree, err := cache.OpenTree(db)
	if err != nil {
		t.Fatal(err)
	}
	j := &fakeJournal{}
	var f *FS
	index, _ := bucketObjects(t, store, j, &f, "test")
	f = mustNew(t, Config{Store: index, Tree: tree, Journal: j, Attrs: index})
	t.Cleanup(index.Close) // after the FS stops
	t.Cleanup(f.Stop)
	return f, tree
}

// uploaded reports to f, as the journal does, that key was uploaded with
// mode and mtime as its metadata.
func uploaded(f *FS, store *memStore, key string, mode uint32, mtime time.Time) backend.ObjectInfo {
	info := store.PutString(key, "content of "+key)
	f.Applied(journal.Result{Op: journal.Op{Kind: journal.PutFile, Key: key, Meta: attrMeta(cache.Entry{Mode: mode, MTime: mtime})}, Info: info})
	return info
}

func flushAttrs(t *testing.T, f *FS) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.FlushAttrs(ctx); err != nil {
		t.Fatal(err)
	}
}

// indexRecord is what these tests read of a sidecar's entry.
type indexRecord struct {
	ETag  string `json:"etag"`
	MTime int64  `json:"mtime"`
	Mode  uint32 `json:"mode"`
}

// readIndex returns the entries of the sidecar under key (nil: none).
func readIndex(t *testing.T, store *memStore, key string) map[string]indexRecord {
	t.Helper()
	data, ok := store.Content(key)
	if !ok {
		return nil
	}
	var doc struct {
		Version int                    `json:"version"`
		Files   map[string]indexRecord `json:"files"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("sidecar %s: %v: %s", key, err, data)
	}
	if doc.Version != 1 {
		t.Errorf("sidecar %s has version %d, want 1", key, doc.Version)
	}
	return doc.Files
}

func listed(t *testing.T, f *FS, tree *cache.Tree, dir string) map[string]cache.Entry {
	t.Helper()
	if err := f.listDir(context.Background(), dir); err != nil {
		t.Fatal(err)
	}
	out := make(map[string]cache.Entry)
	if err := tree.Children(dir, func(e cache.Entry) bool { out[e.Name] = e; return true }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAttrIndexThroughTheMount: what a mount uploads (files, a folder's
// marker, a server-side copy) is recorded in the attribute index, and
// another mount's listing shows every entry's attributes with no HEAD and
// without the sidecar. (The index's batching, reads and merges are tested
// in backend/attrindex.)
func TestAttrIndexThroughTheMount(t *testing.T) {
	store := newMemStore()
	a, _ := newIndexedFS(t, store)
	mtime := time.Date(2001, 9, 9, 1, 46, 40, 123, time.UTC)
	const n = 20
	for i := range n {
		uploaded(a, store, fmt.Sprintf("d/f%02d", i), 0o640, mtime.Add(time.Duration(i)*time.Second))
	}
	marker := store.PutString("d/sub/", "")
	a.Applied(journal.Result{Op: journal.Op{Kind: journal.PutMarker, Key: "d/sub/",
		Meta: attrMeta(cache.Entry{Dir: true, Mode: syscall.S_IFDIR | 0o700, MTime: mtime})}, Info: marker})
	flushAttrs(t, a)
	// A copy's source attributes come from the sidecar as last seen.
	src, _ := store.Stat(context.Background(), "d/f03")
	copied, err := store.Copy(context.Background(), "d/f03", src.ETag, "d/copy", backend.Cond{})
	if err != nil {
		t.Fatal(err)
	}
	a.Applied(journal.Result{Op: journal.Op{Kind: journal.Copy, Key: "d/copy", Src: "d/f03", SrcETag: src.ETag}, Info: copied})
	flushAttrs(t, a)
	if files := readIndex(t, store, "d/"+attrIndexName); len(files) != n+2 {
		t.Errorf("sidecar has %d entries, want %d: %v", len(files), n+2, files)
	}

	b, treeB := newIndexedFS(t, store)
	stats := store.CountOp("Stat")
	ents := listed(t, b, treeB, "d")
	for i := range n {
		name := fmt.Sprintf("f%02d", i)
		e := ents[name]
		if !e.Attrs || e.Mode != syscall.S_IFREG|0o640 || !e.MTime.Equal(mtime.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("other mount lists %s as %+v, want mode 0640 and its mtime", name, e)
		}
	}
	if e := ents["sub"]; !e.Dir || e.Mode != syscall.S_IFDIR|0o700 || !e.MTime.Equal(mtime) {
		t.Errorf("other mount lists folder sub as %+v, want mode 0700 and its mtime", e)
	}
	if e := ents["copy"]; e.Mode != syscall.S_IFREG|0o640 || !e.MTime.Equal(mtime.Add(3*time.Second)) {
		t.Errorf("other mount lists the copy as %+v, want f03's mode and mtime", e)
	}
	if _, ok := ents[attrIndexName]; ok {
		t.Error("the sidecar is listed as a file")
	}
	if d := store.CountOp("Stat") - stats; d != 0 {
		t.Errorf("listing made %d HEADs, want 0", d)
	}
}

// TestListingAppliesAttrsOnlyForMatchingETag: an entry applies to the
// version of the file it names; a file replaced by another S3 client (new
// ETag, sidecar untouched) shows the listing's mtime and the default mode.
func TestListingAppliesAttrsOnlyForMatchingETag(t *testing.T) {
	store := newMemStore()
	a := store.PutString("d/a", "a")
	store.PutString("d/b", "b")
	mtime := time.Date(1999, 12, 31, 23, 59, 58, 0, time.UTC)
	doc, err := json.Marshal(map[string]any{"version": 1, "files": map[string]indexRecord{
		"a":    {ETag: a.ETag, MTime: mtime.UnixNano(), Mode: 0o640},
		"b":    {ETag: "an-older-version", MTime: mtime.UnixNano(), Mode: 0o700},
		"gone": {ETag: "x", MTime: 1, Mode: 0o600},
	}})
	if err != nil {
		t.Fatal(err)
	}
	store.PutString("d/"+attrIndexName, string(doc))
	f, tree := newIndexedFS(t, store)
	ents := listed(t, f, tree, "d")
	if e := ents["a"]; !e.Attrs || e.Mode != syscall.S_IFREG|0o640 || !e.MTime.Equal(mtime) {
		t.Errorf("a = %+v, want mode 0640 and mtime %v from the sidecar", e, mtime)
	}
	if e := ents["b"]; e.Attrs || e.Mode != 0 || e.MTime.Equal(mtime) {
		t.Errorf("b = %+v, want the listing's attributes (the entry names another version)", e)
	}
	if _, ok := ents["gone"]; ok || len(ents) != 2 {
		t.Errorf("listed %v, want a and b only", ents)
	}

	replaced := store.PutString("d/a", "a, replaced by another client")
	ents = listed(t, f, tree, "d")
	if e := ents["a"]; e.Attrs || e.Mode != 0 || !e.MTime.Equal(replaced.ModTime) {
		t.Errorf("a after a replace = %+v, want mode 0 and the listing's mtime %v", e, replaced.ModTime)
	}
}

// TestAttrIndexDeletes: a delete through the mount removes the file's
// entry; the sidecar goes with its last entry, and with a folder removed
// through the mount even if it holds entries of files deleted elsewhere.
func TestAttrIndexDeletes(t *testing.T) {
	store := newMemStore()
	f, tree := newIndexedFS(t, store)
	mtime := time.Unix(1400000000, 0)
	uploaded(f, store, "d/a", 0o600, mtime)
	uploaded(f, store, "d/b", 0o600, mtime)
	flushAttrs(t, f)
	deleted := func(key string) {
		f.Applied(journal.Result{Op: journal.Op{Kind: journal.Delete, Key: key}})
		flushAttrs(t, f)
	}
	deleted("d/a")
	if files := readIndex(t, store, "d/"+attrIndexName); len(files) != 1 || files["b"].ETag == "" {
		t.Errorf("after deleting a: %v, want b only", files)
	}
	deleted("d/b")
	if _, ok := store.Content("d/" + attrIndexName); ok {
		t.Error("the sidecar outlived its last entry: the folder would live on")
	}

	// A folder whose sidecar names a file another client deleted.
	uploaded(f, store, "e/x", 0o600, mtime)
	flushAttrs(t, f)
	if err := store.Delete(context.Background(), "e/x", ""); err != nil {
		t.Fatal(err)
	}
	listed(t, f, tree, "e")
	// e shows, implied by its sidecar; then it is removed here (rmdir).
	listed(t, f, tree, "")
	if err := tree.RemoveEntry("", "e"); err != nil {
		t.Fatal(err)
	}
	f.Applied(journal.Result{Op: journal.Op{Kind: journal.Delete, Key: "e/"}})
	if ents := listed(t, f, tree, ""); ents["e"].Dir {
		t.Error("a folder removed here shows again while its sidecar is deleted")
	}
	flushAttrs(t, f)
	if _, ok := store.Content("e/" + attrIndexName); ok {
		t.Error("the sidecar of a removed folder is still there")
	}
}

// TestReservedNames: the sidecar and the snapshots folder are never
// listed, not reported as skipped, and looking them up (which the kernel
// does before a create, mkdir, rename or link) fails with EINVAL.
func TestReservedNames(t *testing.T) {
	pages := []backend.Page{{
		Objects:  []backend.ObjectInfo{{Key: "p/" + attrIndexName, ETag: "s"}, {Key: "p/ok", ETag: "o"}},
		Prefixes: []string{"p/.nimbus-snapshots/", "p/sub/"},
	}}
	entries, skipped := listingToEntries("p/", pages)
	if len(entries) != 2 || entries[0].Name != "sub" || entries[1].Name != "ok" || len(skipped) != 0 {
		t.Errorf("listing = %+v, skipped %+v; want sub and ok, nothing skipped", entries, skipped)
	}

	store := newMemStore()
	store.PutString("ok.txt", "ok")
	store.PutString(attrIndexName, `{"version":1,"files":{}}`)
	f, _ := newIndexedFS(t, store)
	root := f.Root()
	fs.NewNodeFS(root, f.Options("test", false)) // makes root an inode
	for _, name := range []string{attrIndexName, ".nimbus-snapshots"} {
		var out fuse.EntryOut
		if _, errno := root.(*dirNode).Lookup(context.Background(), name, &out); errno != syscall.EINVAL {
			t.Errorf("lookup %s = %v, want EINVAL", name, errno)
		}
	}
	var out fuse.EntryOut
	if _, errno := root.(*dirNode).Lookup(context.Background(), "ok.txt", &out); errno != 0 {
		t.Errorf("lookup ok.txt = %v", errno)
	}
	stream, errno := root.(*dirNode).Readdir(context.Background())
	if errno != 0 {
		t.Fatal(errno)
	}
	for stream.HasNext() {
		if e, _ := stream.Next(); e.Name != "ok.txt" {
			t.Errorf("readdir shows %q", e.Name)
		}
	}
}
