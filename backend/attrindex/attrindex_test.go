package attrindex

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/mem"
)

// newIndex is the index of a mount over store (another machine, for a
// second call), closed at the end of the test.
func newIndex(t *testing.T, store *mem.Store, cfg Config) *Index {
	t.Helper()
	x := New(store, cfg)
	t.Cleanup(x.Close)
	return x
}

// uploaded stores key, as another client or the journal would, and tells
// x that it was uploaded with mode (permission bits of a regular file) and
// mtime.
func uploaded(x *Index, store *mem.Store, key string, mode uint32, mtime time.Time) backend.ObjectInfo {
	info := store.PutString(key, "content of "+key)
	x.SetFile(key, info.ETag, backend.Attrs{Mode: syscall.S_IFREG | mode, MTime: mtime})
	return info
}

func flush(t *testing.T, x *Index) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// readIndex returns the entries of the sidecar under key (nil: none).
func readIndex(t *testing.T, store *mem.Store, key string) map[string]record {
	t.Helper()
	data, ok := store.Content(key)
	if !ok {
		return nil
	}
	var d doc
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("sidecar %s: %v: %s", key, err, data)
	}
	if d.Version != 1 {
		t.Errorf("sidecar %s has version %d, want 1", key, d.Version)
	}
	return d.Files
}

// listed is one delimited listing of prefix through x: its objects by
// name, and its folders' attributes by name (nil: none).
func listed(t *testing.T, x *Index, prefix string) (map[string]backend.ObjectInfo, map[string]*backend.Attrs) {
	t.Helper()
	objs := make(map[string]backend.ObjectInfo)
	dirs := make(map[string]*backend.Attrs)
	err := x.List(context.Background(), prefix, func(p backend.Page) error {
		for _, o := range p.Objects {
			objs[strings.TrimPrefix(o.Key, prefix)] = o
		}
		for _, d := range p.Prefixes {
			var a *backend.Attrs
			if da, ok := p.PrefixAttrs[d]; ok {
				a = &da
			}
			dirs[strings.TrimSuffix(strings.TrimPrefix(d, prefix), "/")] = a
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return objs, dirs
}

// TestBatchesAndListsWithoutHEAD: 1,000 uploads into one folder cost a few
// sidecar writes, not 1,000, and another mount's first listing of the
// folder carries every file's mode and mtime with one GET of the sidecar
// and no HEAD; listing again does not read the sidecar again.
func TestBatchesAndListsWithoutHEAD(t *testing.T) {
	store := mem.New()
	a := newIndex(t, store, Config{})
	mtime := time.Date(2001, 9, 9, 1, 46, 40, 123, time.UTC)
	const n = 1000
	etags := make(map[string]string)
	for i := range n {
		name := fmt.Sprintf("f%04d", i)
		etags[name] = uploaded(a, store, "d/"+name, 0o640, mtime.Add(time.Duration(i)*time.Second)).ETag
	}
	flush(t, a)
	puts := store.Count("Put", "d/"+Name)
	t.Logf("%d uploads into one folder: %d sidecar PUTs", n, puts)
	if puts == 0 || puts > 50 {
		t.Errorf("%d sidecar PUTs for %d uploads, want a few (batched)", puts, n)
	}
	files := readIndex(t, store, "d/"+Name)
	if len(files) != n {
		t.Fatalf("sidecar has %d entries, want %d", len(files), n)
	}
	if got, want := files["f0007"], (record{ETag: etags["f0007"], MTime: mtime.Add(7 * time.Second).UnixNano(), Mode: 0o640}); !got.same(want) {
		t.Errorf("sidecar entry f0007 = %+v, want %+v", got, want)
	}

	b := newIndex(t, store, Config{})
	stats, gets := store.CountOp("Stat"), store.Count("Get", "d/"+Name)
	objs, _ := listed(t, b, "d/")
	for i := range n {
		name := fmt.Sprintf("f%04d", i)
		o := objs[name]
		if o.Attrs == nil || o.Attrs.Mode != syscall.S_IFREG|0o640 || !o.Attrs.MTime.Equal(mtime.Add(time.Duration(i)*time.Second)) {
			t.Fatalf("other mount lists %s with %+v, want mode 0640 and its mtime", name, o.Attrs)
		}
	}
	if _, ok := objs[Name]; ok {
		t.Error("the sidecar is listed as a file")
	}
	if d := store.CountOp("Stat") - stats; d != 0 {
		t.Errorf("listing made %d HEADs, want 0", d)
	}
	if d := store.Count("Get", "d/"+Name) - gets; d != 1 {
		t.Errorf("listing read the sidecar %d times, want 1", d)
	}
	objs, _ = listed(t, b, "d/")
	if d := store.Count("Get", "d/"+Name) - gets; d != 1 {
		t.Errorf("listing again read the unchanged sidecar: %d reads in all, want 1", d)
	}
	if o := objs["f0001"]; o.Attrs == nil || o.Attrs.Mode != syscall.S_IFREG|0o640 {
		t.Errorf("after listing again, f0001 has %+v, want mode 0640 kept", o.Attrs)
	}
	// The writer's own listing needs no read either: it wrote that version.
	gets = store.Count("Get", "d/"+Name)
	if objs, _ := listed(t, a, "d/"); objs["f0002"].Attrs == nil || objs["f0002"].Attrs.Mode != syscall.S_IFREG|0o640 {
		t.Errorf("writer lists f0002 with %+v", objs["f0002"].Attrs)
	}
	if d := store.Count("Get", "d/"+Name) - gets; d != 0 {
		t.Errorf("the writer read its own sidecar back %d times, want 0", d)
	}
}

// TestMergesConcurrentWriters: two mounts writing into one folder's
// sidecar, each from a stale view, both end up in it (the loser of the
// conditional write reads, merges and writes again).
func TestMergesConcurrentWriters(t *testing.T) {
	store := mem.New()
	store.PutString("d/seed.txt", "x")
	a := newIndex(t, store, Config{})
	b := newIndex(t, store, Config{})
	listed(t, a, "d/") // both remember "no sidecar"
	listed(t, b, "d/")
	mtime := time.Unix(1000000000, 0)
	for i := range 50 {
		uploaded(a, store, fmt.Sprintf("d/a%02d", i), 0o600, mtime)
		uploaded(b, store, fmt.Sprintf("d/b%02d", i), 0o755, mtime)
	}
	var wg sync.WaitGroup
	wg.Go(func() { flush(t, a) })
	wg.Go(func() { flush(t, b) })
	wg.Wait()
	files := readIndex(t, store, "d/"+Name)
	for i := range 50 {
		if files[fmt.Sprintf("a%02d", i)].Mode != 0o600 || files[fmt.Sprintf("b%02d", i)].Mode != 0o755 {
			t.Fatalf("sidecar lacks a%02d or b%02d: %v", i, i, files)
		}
	}
	if len(files) != 100 {
		t.Errorf("sidecar has %d entries, want 100", len(files))
	}
	if store.FailedConds() == 0 {
		t.Error("no conditional write failed: the test did not make the writers race")
	}
}

// TestOfflineKeepsPending: while the store is unreachable the changes wait
// (Flush says which folder, below the mount's root, and why), and are
// written once it is back.
func TestOfflineKeepsPending(t *testing.T) {
	store := mem.New()
	a := newIndex(t, store, Config{Root: "root/"})
	a.backoffMin = 10 * time.Millisecond
	mtime := time.Unix(1200000000, 0)
	for _, name := range []string{"one", "two", "three"} {
		uploaded(a, store, "root/photos/"+name, 0o600, mtime)
	}
	store.SetOffline(true)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	err := a.Flush(ctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), `"/photos"`) || !strings.Contains(err.Error(), backend.ErrOffline.Error()) {
		t.Fatalf("Flush while offline = %v, want an error naming /photos and why", err)
	}
	key := "root/photos/" + Name
	if store.Count("Put", key) == 0 && store.Count("Stat", key) == 0 && store.Count("Get", key) == 0 {
		t.Error("no write was tried while offline")
	}
	if tries := store.Count("Stat", key); tries < 2 {
		t.Errorf("%d writes tried in 500 ms with a 10 ms backoff, want retries", tries)
	}
	store.SetOffline(false)
	flush(t, a)
	if files := readIndex(t, store, key); len(files) != 3 || files["two"].Mode != 0o600 {
		t.Errorf("sidecar after coming back online = %v, want the 3 files", files)
	}
}

// TestIgnoresBadSidecars: a malformed or oversized sidecar never fails a
// listing, is read at most once per version, and a malformed one is
// replaced by the next write.
func TestIgnoresBadSidecars(t *testing.T) {
	store := mem.New()
	store.PutString("d/a.txt", "a")
	store.PutString("d/"+Name, `{"version":1,"files":{"a.txt":`)
	store.PutString("big/b.txt", "b")
	store.PutString("big/"+Name, strings.Repeat(" ", maxIndexSize+1))
	a := newIndex(t, store, Config{})
	for range 2 {
		if objs, _ := listed(t, a, "d/"); objs["a.txt"].Attrs != nil || objs["a.txt"].Size != 1 || len(objs) != 1 {
			t.Errorf("listing under a malformed sidecar = %+v, want a.txt with the listing's attributes", objs)
		}
		if objs, _ := listed(t, a, "big/"); objs["b.txt"].Attrs != nil || objs["b.txt"].Size != 1 || len(objs) != 1 {
			t.Errorf("listing under an oversized sidecar = %+v", objs)
		}
	}
	if n := store.Count("Get", "d/"+Name); n != 1 {
		t.Errorf("the malformed sidecar was read %d times, want once", n)
	}
	if n := store.Count("Get", "big/"+Name); n != 0 {
		t.Errorf("the oversized sidecar was read %d times, want never", n)
	}
	uploaded(a, store, "d/c.txt", 0o700, time.Unix(1300000000, 0))
	flush(t, a)
	if files := readIndex(t, store, "d/"+Name); files["c.txt"].Mode != 0o700 {
		t.Errorf("sidecar after a write = %v, want the malformed one replaced", files)
	}
}

// TestAttrsOnlyForMatchingETag: an entry applies to the version of the
// file it names; a file replaced by another S3 client (new ETag, sidecar
// untouched) is listed without attributes.
func TestAttrsOnlyForMatchingETag(t *testing.T) {
	store := mem.New()
	a := store.PutString("d/a", "a")
	store.PutString("d/b", "b")
	mtime := time.Date(1999, 12, 31, 23, 59, 58, 0, time.UTC)
	body, err := json.Marshal(doc{Version: 1, Files: map[string]record{
		"a":    {ETag: a.ETag, MTime: mtime.UnixNano(), Mode: 0o640},
		"b":    {ETag: "an-older-version", MTime: mtime.UnixNano(), Mode: 0o700},
		"gone": {ETag: "x", MTime: 1, Mode: 0o600},
	}})
	if err != nil {
		t.Fatal(err)
	}
	store.PutString("d/"+Name, string(body))
	x := newIndex(t, store, Config{})
	objs, _ := listed(t, x, "d/")
	if o := objs["a"]; o.Attrs == nil || o.Attrs.Mode != syscall.S_IFREG|0o640 || !o.Attrs.MTime.Equal(mtime) {
		t.Errorf("a has %+v, want mode 0640 and mtime %v from the sidecar", o.Attrs, mtime)
	}
	if o := objs["b"]; o.Attrs != nil {
		t.Errorf("b has %+v, want none (the entry names another version)", o.Attrs)
	}
	if _, ok := objs["gone"]; ok || len(objs) != 2 {
		t.Errorf("listed %v, want a and b only", objs)
	}

	store.PutString("d/a", "a, replaced by another client")
	objs, _ = listed(t, x, "d/")
	if o := objs["a"]; o.Attrs != nil {
		t.Errorf("a after a replace has %+v, want none", o.Attrs)
	}
}

// TestEveryAttributeRoundTrips: a folder's and a symlink's attributes
// (owner, times, device number, target) come back from another mount's
// listing as they were recorded; a target over MaxTarget is left out, and
// a server-side copy finds its source's attributes with Recorded.
func TestEveryAttributeRoundTrips(t *testing.T) {
	store := mem.New()
	a := newIndex(t, store, Config{})
	at := func(s int64) time.Time { return time.Unix(s, 7) }
	link := store.PutString("d/link", "target")
	long := store.PutString("d/long", strings.Repeat("t", MaxTarget+1))
	dev := store.PutString("d/dev", "")
	store.PutString("d/sub/", "")
	linkAttrs := backend.Attrs{Mode: syscall.S_IFLNK | 0o777, MTime: at(1), ATime: at(2), CTime: at(3), Owner: true, UID: 1000, GID: 100, Target: "target"}
	a.SetFile(link.Key, link.ETag, linkAttrs)
	a.SetFile(long.Key, long.ETag, backend.Attrs{Mode: syscall.S_IFLNK | 0o777, MTime: at(1), Target: strings.Repeat("t", MaxTarget+1)})
	devAttrs := backend.Attrs{Mode: syscall.S_IFCHR | 0o600, MTime: at(4), Rdev: 0x0103}
	a.SetFile(dev.Key, dev.ETag, devAttrs)
	subAttrs := backend.Attrs{Mode: syscall.S_IFDIR | 0o1777, MTime: at(5), Owner: true, UID: 0, GID: 0}
	a.SetFolder("d/sub/", subAttrs)
	flush(t, a)

	b := newIndex(t, store, Config{})
	objs, dirs := listed(t, b, "d/")
	if o := objs["link"]; o.Attrs == nil || *o.Attrs != linkAttrs {
		t.Errorf("link has %+v, want %+v", o.Attrs, linkAttrs)
	}
	if o := objs["long"]; o.Attrs == nil || o.Attrs.Target != "" || o.Attrs.Mode != syscall.S_IFLNK|0o777 {
		t.Errorf("long has %+v, want its mode and no target", o.Attrs)
	}
	if o := objs["dev"]; o.Attrs == nil || *o.Attrs != devAttrs {
		t.Errorf("dev has %+v, want %+v", o.Attrs, devAttrs)
	}
	if a := dirs["sub"]; a == nil || *a != subAttrs {
		t.Errorf("folder sub has %+v, want %+v", a, subAttrs)
	}
	if got, ok := b.Recorded("d/dev", "another", dev.ETag); !ok || got != devAttrs {
		t.Errorf("Recorded(d/dev) = %+v, %v; want %+v", got, ok, devAttrs)
	}
	if _, ok := b.Recorded("d/dev", "another"); ok {
		t.Error("Recorded found attributes for a version the sidecar does not name")
	}
}

// TestDeletes: Forget removes a file's entry; the sidecar goes with its
// last entry, and with a folder removed through the mount even if it
// holds entries of files deleted elsewhere. Meanwhile listings hide that
// folder, which its sidecar alone would show, unless the mount shows it.
func TestDeletes(t *testing.T) {
	store := mem.New()
	var shown bool
	x := newIndex(t, store, Config{Shown: func(string) bool { return shown }})
	mtime := time.Unix(1400000000, 0)
	uploaded(x, store, "d/a", 0o600, mtime)
	uploaded(x, store, "d/b", 0o600, mtime)
	flush(t, x)
	x.Forget("d/a")
	flush(t, x)
	if files := readIndex(t, store, "d/"+Name); len(files) != 1 || files["b"].ETag == "" {
		t.Errorf("after forgetting a: %v, want b only", files)
	}
	x.Forget("d/b")
	flush(t, x)
	if _, ok := store.Content("d/" + Name); ok {
		t.Error("the sidecar outlived its last entry: the folder would live on")
	}

	// A folder whose sidecar names a file another client deleted.
	uploaded(x, store, "e/x", 0o600, mtime)
	flush(t, x)
	if err := store.Delete(context.Background(), "e/x", ""); err != nil {
		t.Fatal(err)
	}
	if _, dirs := listed(t, x, ""); !hasKey(dirs, "e") {
		t.Fatalf("before the removal the root lists %v, want e (its sidecar keeps it)", dirs)
	}
	x.debounce = time.Hour
	x.FolderRemoved("e/")
	if _, dirs := listed(t, x, ""); hasKey(dirs, "e") {
		t.Errorf("a folder removed here shows again while its sidecar waits to be deleted: %v", dirs)
	}
	shown = true // made again here meanwhile
	if _, dirs := listed(t, x, ""); !hasKey(dirs, "e") {
		t.Errorf("a folder the mount shows again is hidden: %v", dirs)
	}
	flush(t, x)
	if _, ok := store.Content("e/" + Name); ok {
		t.Error("the sidecar of a removed folder is still there")
	}
}

// TestRemovedFolderWaitsForPendingMoves: the sidecar of a folder removed
// by a rename stays while its moved files' copies are pending (they look
// their attributes up in it), and goes once they are done.
func TestRemovedFolderWaitsForPendingMoves(t *testing.T) {
	store := mem.New()
	var pending sync.Map
	x := newIndex(t, store, Config{PendingUnder: func(prefix string) bool {
		_, ok := pending.Load(prefix)
		return ok
	}})
	x.debounce = 10 * time.Millisecond
	uploaded(x, store, "old/f", 0o600, time.Unix(1, 0))
	flush(t, x)
	pending.Store("old/", true)
	x.FolderRemoved("old/")
	time.Sleep(100 * time.Millisecond) // several debounces: the write waits
	if _, ok := store.Content("old/" + Name); !ok {
		t.Fatal("the sidecar went while moves out of its folder were pending")
	}
	pending.Delete("old/")
	flush(t, x)
	if _, ok := store.Content("old/" + Name); ok {
		t.Error("the sidecar of the renamed folder stayed after the moves were done")
	}
}

// TestListFlatHidesSidecars: a flat listing (a pin job, a folder rename)
// never sees a sidecar: they are rewritten by the index, not moved.
func TestListFlatHidesSidecars(t *testing.T) {
	store := mem.New()
	x := newIndex(t, store, Config{})
	uploaded(x, store, "d/a", 0o600, time.Unix(1, 0))
	uploaded(x, store, "d/e/b", 0o600, time.Unix(1, 0))
	uploaded(x, store, "c", 0o600, time.Unix(1, 0))
	flush(t, x)
	var keys []string
	if err := x.ListFlat(context.Background(), "", func(p backend.Page) error {
		for _, o := range p.Objects {
			keys = append(keys, o.Key)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, " ") != "c d/a d/e/b" {
		t.Errorf("flat listing = %v, want c d/a d/e/b", keys)
	}
	if _, ok := store.Content("d/e/" + Name); !ok {
		t.Fatal("the test wrote no sidecar to hide")
	}
}

// TestWrittenAtClose: changes still waiting for the debounce are written
// when the index closes, while the store is reachable; offline, Close
// does not wait for them.
func TestWrittenAtClose(t *testing.T) {
	store := mem.New()
	x := New(store, Config{})
	x.debounce = time.Hour
	uploaded(x, store, "late.txt", 0o751, time.Unix(1500000000, 0))
	x.Close()
	if files := readIndex(t, store, Name); files["late.txt"].Mode != 0o751 {
		t.Errorf("root sidecar after Close = %v, want late.txt", files)
	}

	y := New(store, Config{Online: func() bool { return false }})
	y.debounce = time.Hour
	uploaded(y, store, "offline.txt", 0o700, time.Unix(1500000000, 0))
	start := time.Now()
	y.Close()
	if files := readIndex(t, store, Name); len(files) != 1 {
		t.Errorf("root sidecar after an offline Close = %v, want late.txt only", files)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("an offline Close took %v", d)
	}
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

// TestStreamOfChangesGathers: uploads that keep arriving in one folder (an
// untar) rewrite its sidecar when they pause, or every maxGather while they
// go on, not a debounce after each first change; every entry still lands.
func TestStreamOfChangesGathers(t *testing.T) {
	for _, c := range []struct {
		name             string
		for_             time.Duration
		minPuts, maxPuts int
	}{
		{"shorter than maxGather", 2 * time.Second, 1, 1},
		{"longer than maxGather", 3*maxGather + time.Second, 3, 4},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				store := mem.New()
				x := newIndex(t, store, Config{})
				n := 0
				for start := time.Now(); time.Since(start) < c.for_; n++ {
					uploaded(x, store, fmt.Sprintf("d/f%04d", n), 0o640, time.Unix(int64(n), 0))
					time.Sleep(50 * time.Millisecond)
				}
				time.Sleep(time.Second) // the last debounce ends; the write is done
				synctest.Wait()
				puts := store.Count("Put", "d/"+Name)
				if puts < c.minPuts || puts > c.maxPuts {
					t.Errorf("%d uploads over %v: %d sidecar PUTs, want %d to %d", n, c.for_, puts, c.minPuts, c.maxPuts)
				}
				if files := readIndex(t, store, "d/"+Name); len(files) != n {
					t.Errorf("sidecar has %d entries, want %d", len(files), n)
				}
			})
		})
	}
}

// TestNewFolderWrittenWithoutHEAD: the first sidecar of a folder this
// mount never listed (one it made) is one PUT, with no HEAD first; one that
// another mount wrote meanwhile is still merged, not overwritten.
func TestNewFolderWrittenWithoutHEAD(t *testing.T) {
	store := mem.New()
	a := newIndex(t, store, Config{})
	mtime := time.Unix(1300000000, 0)
	uploaded(a, store, "new/f", 0o600, mtime)
	flush(t, a)
	key := "new/" + Name
	if stats, puts := store.Count("Stat", key), store.Count("Put", key); stats != 0 || puts != 1 {
		t.Errorf("first sidecar of a new folder: %d HEADs and %d PUTs, want 0 and 1", stats, puts)
	}
	if files := readIndex(t, store, key); len(files) != 1 || files["f"].Mode != 0o600 {
		t.Errorf("sidecar = %v, want f", files)
	}

	b := newIndex(t, store, Config{}) // never listed new/
	uploaded(b, store, "new/g", 0o700, mtime)
	flush(t, b)
	if files := readIndex(t, store, key); len(files) != 2 || files["f"].Mode != 0o600 || files["g"].Mode != 0o700 {
		t.Errorf("sidecar after a second mount's write = %v, want f and g", files)
	}
}
