package snapshots

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
)

func newDirStore(t *testing.T) *dir.Store {
	t.Helper()
	store, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return store
}

func put(t *testing.T, store backend.Backend, key string) backend.ObjectInfo {
	t.Helper()
	info, err := store.Put(context.Background(), key, strings.NewReader("x"), 1, nil, backend.Cond{})
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// left returns the snapshot keys in store, below the snapshots folder.
func left(t *testing.T, store backend.Backend) []string {
	t.Helper()
	var keys []string
	if err := store.ListFlat(context.Background(), Dir+"/", func(p backend.Page) error {
		for _, o := range p.Objects {
			if !strings.HasSuffix(o.Key, "/") {
				keys = append(keys, strings.TrimPrefix(o.Key, Dir+"/"))
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return keys
}

// Sweeps delete this mount's snapshots that nothing refers to, after two
// sweeps agree; a snapshot a pending op or a working copy refers to stays,
// and so do other mounts'.
func TestSweepSnapshots(t *testing.T) {
	store := newDirStore(t)
	ctx := context.Background()
	mine := Dir + "/m1/"
	for _, k := range []string{"orphan", "pending", "open"} {
		put(t, store, mine+k)
	}
	put(t, store, Dir+"/m2/theirs")
	s, err := New(store, Config{MountID: "m1", Referenced: func() []string { return []string{mine + "pending"} }})
	if err != nil {
		t.Fatal(err)
	}
	release := s.Hold(mine + "open")
	defer release()

	all := []string{"m1/open", "m1/orphan", "m1/pending", "m2/theirs"}
	if err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got := left(t, store); !slices.Equal(got, all) {
		t.Errorf("after one sweep: %v; want all kept %v", got, all)
	}
	if err := s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := left(t, store), []string{"m1/open", "m1/pending", "m2/theirs"}; !slices.Equal(got, want) {
		t.Errorf("after two sweeps: %v; want %v", got, want)
	}
	// At the end of the mount working copies no longer count.
	if err := s.SweepFinal(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := left(t, store), []string{"m1/pending", "m2/theirs"}; !slices.Equal(got, want) {
		t.Errorf("after the final sweep: %v; want %v", got, want)
	}
}

// Make copies the version server-side under this mount's prefix under a
// root prefix, and holds the copy: sweeps keep it until it is released.
// A version replaced meanwhile fails with ErrPrecondition and leaves
// nothing behind.
func TestMakeHoldsUntilReleased(t *testing.T) {
	store := newDirStore(t)
	ctx := context.Background()
	src := put(t, store, "root/big.iso")
	s, err := New(store, Config{Root: "root/", MountID: "m1"})
	if err != nil {
		t.Fatal(err)
	}
	snap, release, err := s.Make(ctx, src.Key, src.ETag)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(snap.Key, "root/"+Dir+"/m1/") || snap.ETag == "" || snap.Size != 1 {
		t.Errorf("snapshot = %+v, want a copy under root/%s/m1/", snap, Dir)
	}
	for range 2 {
		if err := s.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := store.Stat(ctx, snap.Key); err != nil {
		t.Fatalf("a held snapshot was swept: %v", err)
	}
	release()
	for range 2 {
		if err := s.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := store.Stat(ctx, snap.Key); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("a released snapshot survived two sweeps: %v", err)
	}

	if _, _, err := s.Make(ctx, src.Key, "another-version"); !errors.Is(err, backend.ErrPrecondition) {
		t.Errorf("Make of a replaced version = %v, want ErrPrecondition", err)
	}
	if err := s.SweepFinal(ctx); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	held := len(s.held)
	s.mu.Unlock()
	if held != 0 {
		t.Errorf("a failed Make left %d holds", held)
	}
}

// A mount id is required: without one, mounts would sweep each other's.
func TestNewNeedsMountID(t *testing.T) {
	for _, id := range []string{"", "a/b"} {
		if _, err := New(newDirStore(t), Config{MountID: id}); err == nil {
			t.Errorf("New with mount id %q succeeded", id)
		}
	}
}
