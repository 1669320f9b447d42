package vfs

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	bolt "go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// newIndexedFS is a mount over store with a tree of its own (another
// machine, for a second call), which lists again at every use.
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
	f := New(Config{Store: store, Tree: tree, Journal: &fakeJournal{}})
	t.Cleanup(f.Stop)
	return f, tree
}

// uploaded reports to f, as the journal does, that key was uploaded with
// mode and mtime as its metadata.
func uploaded(f *FS, store *memStore, key string, mode uint32, mtime time.Time) backend.ObjectInfo {
	info := store.put(key, "content of "+key)
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

// readIndex returns the entries of the sidecar under key (nil: none).
func readIndex(t *testing.T, store *memStore, key string) map[string]attrRecord {
	t.Helper()
	data, ok := store.content(key)
	if !ok {
		return nil
	}
	var doc attrDoc
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

// TestAttrIndexBatchesAndListsWithoutHEAD: 1,000 uploads into one folder
// cost a few sidecar writes, not 1,000, and another mount's first listing
// of the folder shows every file's mode and mtime with one GET of the
// sidecar and no HEAD; listing again does not read the sidecar again.
func TestAttrIndexBatchesAndListsWithoutHEAD(t *testing.T) {
	store := newMemStore()
	a, treeA := newIndexedFS(t, store)
	mtime := time.Date(2001, 9, 9, 1, 46, 40, 123, time.UTC)
	const n = 1000
	etags := make(map[string]string)
	for i := range n {
		name := fmt.Sprintf("f%04d", i)
		etags[name] = uploaded(a, store, "d/"+name, 0o640, mtime.Add(time.Duration(i)*time.Second)).ETag
	}
	flushAttrs(t, a)
	puts := store.count("Put", "d/"+attrIndexName)
	t.Logf("%d uploads into one folder: %d sidecar PUTs", n, puts)
	if puts == 0 || puts > 50 {
		t.Errorf("%d sidecar PUTs for %d uploads, want a few (batched)", puts, n)
	}
	files := readIndex(t, store, "d/"+attrIndexName)
	if len(files) != n {
		t.Fatalf("sidecar has %d entries, want %d", len(files), n)
	}
	if got, want := files["f0007"], (attrRecord{ETag: etags["f0007"], MTime: mtime.Add(7 * time.Second).UnixNano(), Mode: 0o640}); got != want {
		t.Errorf("sidecar entry f0007 = %+v, want %+v", got, want)
	}

	b, treeB := newIndexedFS(t, store)
	stats, gets := store.countOp("Stat"), store.count("Get", "d/"+attrIndexName)
	ents := listed(t, b, treeB, "d")
	for i := range n {
		name := fmt.Sprintf("f%04d", i)
		e := ents[name]
		if !e.Attrs || e.Mode != syscall.S_IFREG|0o640 || !e.MTime.Equal(mtime.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("other mount lists %s as %+v, want mode 0640 and its mtime", name, e)
		}
	}
	if _, ok := ents[attrIndexName]; ok {
		t.Error("the sidecar is listed as a file")
	}
	if d := store.countOp("Stat") - stats; d != 0 {
		t.Errorf("listing made %d HEADs, want 0", d)
	}
	if d := store.count("Get", "d/"+attrIndexName) - gets; d != 1 {
		t.Errorf("listing read the sidecar %d times, want 1", d)
	}
	ents = listed(t, b, treeB, "d")
	if d := store.count("Get", "d/"+attrIndexName) - gets; d != 1 {
		t.Errorf("listing again read the unchanged sidecar: %d reads in all, want 1", d)
	}
	if e := ents["f0001"]; e.Mode != syscall.S_IFREG|0o640 {
		t.Errorf("after listing again, f0001 = %+v, want mode 0640 kept", e)
	}
	// The writer's own listing needs no read either: it wrote that version.
	gets = store.count("Get", "d/"+attrIndexName)
	if e := listed(t, a, treeA, "d")["f0002"]; e.Mode != syscall.S_IFREG|0o640 {
		t.Errorf("writer lists f0002 as %+v", e)
	}
	if d := store.count("Get", "d/"+attrIndexName) - gets; d != 0 {
		t.Errorf("the writer read its own sidecar back %d times, want 0", d)
	}
}

// TestAttrIndexMergesConcurrentWriters: two mounts writing into one
// folder's sidecar, each from a stale view, both end up in it (the loser
// of the conditional write reads, merges and writes again).
func TestAttrIndexMergesConcurrentWriters(t *testing.T) {
	store := newMemStore()
	store.put("d/seed.txt", "x")
	a, treeA := newIndexedFS(t, store)
	b, treeB := newIndexedFS(t, store)
	listed(t, a, treeA, "d") // both remember "no sidecar"
	listed(t, b, treeB, "d")
	mtime := time.Unix(1000000000, 0)
	for i := range 50 {
		uploaded(a, store, fmt.Sprintf("d/a%02d", i), 0o600, mtime)
		uploaded(b, store, fmt.Sprintf("d/b%02d", i), 0o755, mtime)
	}
	var wg sync.WaitGroup
	wg.Go(func() { flushAttrs(t, a) })
	wg.Go(func() { flushAttrs(t, b) })
	wg.Wait()
	files := readIndex(t, store, "d/"+attrIndexName)
	for i := range 50 {
		if files[fmt.Sprintf("a%02d", i)].Mode != 0o600 || files[fmt.Sprintf("b%02d", i)].Mode != 0o755 {
			t.Fatalf("sidecar lacks a%02d or b%02d: %v", i, i, files)
		}
	}
	if len(files) != 100 {
		t.Errorf("sidecar has %d entries, want 100", len(files))
	}
	if store.failedConds() == 0 {
		t.Error("no conditional write failed: the test did not make the writers race")
	}
}

// TestAttrIndexOfflineKeepsPending: while the store is unreachable the
// changes wait (FlushAttrs says which folder and why), and are written
// once it is back.
func TestAttrIndexOfflineKeepsPending(t *testing.T) {
	store := newMemStore()
	a, _ := newIndexedFS(t, store)
	a.attrs.backoffMin = 10 * time.Millisecond
	mtime := time.Unix(1200000000, 0)
	for _, name := range []string{"one", "two", "three"} {
		uploaded(a, store, "photos/"+name, 0o600, mtime)
	}
	store.setOffline(true)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err := a.FlushAttrs(ctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), `"/photos"`) || !strings.Contains(err.Error(), backend.ErrOffline.Error()) {
		t.Fatalf("FlushAttrs while offline = %v, want an error naming /photos and why", err)
	}
	if store.count("Put", "photos/"+attrIndexName) == 0 && store.count("Stat", "photos/"+attrIndexName) == 0 && store.count("Get", "photos/"+attrIndexName) == 0 {
		t.Error("no write was tried while offline")
	}
	store.setOffline(false)
	flushAttrs(t, a)
	if files := readIndex(t, store, "photos/"+attrIndexName); len(files) != 3 || files["two"].Mode != 0o600 {
		t.Errorf("sidecar after coming back online = %v, want the 3 files", files)
	}
}

// TestAttrIndexIgnoresBadSidecars: a malformed or oversized sidecar never
// fails a listing, is read at most once per version, and a malformed one
// is replaced by the next write.
func TestAttrIndexIgnoresBadSidecars(t *testing.T) {
	store := newMemStore()
	store.put("d/a.txt", "a")
	store.put("d/"+attrIndexName, `{"version":1,"files":{"a.txt":`)
	store.put("big/b.txt", "b")
	store.put("big/"+attrIndexName, strings.Repeat(" ", maxAttrIndexSize+1))
	a, tree := newIndexedFS(t, store)
	for range 2 {
		if e := listed(t, a, tree, "d")["a.txt"]; e.Attrs || e.Mode != 0 || e.Size != 1 {
			t.Errorf("a.txt under a malformed sidecar = %+v, want the listing's attributes", e)
		}
		if e := listed(t, a, tree, "big")["b.txt"]; e.Attrs || e.Size != 1 {
			t.Errorf("b.txt under an oversized sidecar = %+v", e)
		}
	}
	if n := store.count("Get", "d/"+attrIndexName); n != 1 {
		t.Errorf("the malformed sidecar was read %d times, want once", n)
	}
	if n := store.count("Get", "big/"+attrIndexName); n != 0 {
		t.Errorf("the oversized sidecar was read %d times, want never", n)
	}
	uploaded(a, store, "d/c.txt", 0o700, time.Unix(1300000000, 0))
	flushAttrs(t, a)
	if files := readIndex(t, store, "d/"+attrIndexName); files["c.txt"].Mode != 0o700 {
		t.Errorf("sidecar after a write = %v, want the malformed one replaced", files)
	}
}

// TestListingAppliesAttrsOnlyForMatchingETag: an entry applies to the
// version of the file it names; a file replaced by another S3 client (new
// ETag, sidecar untouched) shows the listing's mtime and the default mode.
func TestListingAppliesAttrsOnlyForMatchingETag(t *testing.T) {
	store := newMemStore()
	a := store.put("d/a", "a")
	store.put("d/b", "b")
	mtime := time.Date(1999, 12, 31, 23, 59, 58, 0, time.UTC)
	doc, err := json.Marshal(attrDoc{Version: 1, Files: map[string]attrRecord{
		"a":    {ETag: a.ETag, MTime: mtime.UnixNano(), Mode: 0o640},
		"b":    {ETag: "an-older-version", MTime: mtime.UnixNano(), Mode: 0o700},
		"gone": {ETag: "x", MTime: 1, Mode: 0o600},
	}})
	if err != nil {
		t.Fatal(err)
	}
	store.put("d/"+attrIndexName, string(doc))
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

	replaced := store.put("d/a", "a, replaced by another client")
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
	if _, ok := store.content("d/" + attrIndexName); ok {
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
	if _, ok := store.content("e/" + attrIndexName); ok {
		t.Error("the sidecar of a removed folder is still there")
	}
}

// TestAttrIndexWrittenAtStop: changes still waiting for the debounce are
// written when the mount stops.
func TestAttrIndexWrittenAtStop(t *testing.T) {
	store := newMemStore()
	f, _ := newIndexedFS(t, store)
	f.attrs.debounce = time.Hour
	uploaded(f, store, "late.txt", 0o751, time.Unix(1500000000, 0))
	f.Stop()
	if files := readIndex(t, store, attrIndexName); files["late.txt"].Mode != 0o751 {
		t.Errorf("root sidecar after Stop = %v, want late.txt", files)
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
	store.put("ok.txt", "ok")
	store.put(attrIndexName, `{"version":1,"files":{}}`)
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
