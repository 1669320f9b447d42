package vfs

import (
	"context"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/backend"
)

// TestTrashReserved: the trash folder of an unversioned bucket is hidden
// from listings, not reported as skipped, and cannot be looked up (so no
// file or folder takes its name).
func TestTrashReserved(t *testing.T) {
	pages := []backend.Page{{
		Objects:  []backend.ObjectInfo{{Key: "p/ok", ETag: "o"}},
		Prefixes: []string{"p/.nimbus-trash/"},
	}}
	entries, skipped := listingToEntries("p/", pages)
	if len(entries) != 1 || entries[0].Name != "ok" || len(skipped) != 0 {
		t.Errorf("listing = %+v, skipped %+v; want only ok", entries, skipped)
	}
	store := newMemStore()
	store.PutString(".nimbus-trash/2026-12-02/gone.txt", "deleted")
	store.PutString("ok.txt", "ok")
	f, _ := newIndexedFS(t, store)
	root := f.Root()
	fs.NewNodeFS(root, f.Options("test", false))
	var out fuse.EntryOut
	if _, errno := root.(*dirNode).Lookup(context.Background(), ".nimbus-trash", &out); errno != syscall.EINVAL {
		t.Errorf("lookup .nimbus-trash = %v, want EINVAL", errno)
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
