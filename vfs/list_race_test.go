package vfs

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// slowList delivers its first listing, made at once, only once release is
// closed (after telling started).
type slowList struct {
	backend.Backend
	started, release chan struct{}
	calls            int
}

func (s *slowList) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	s.calls++
	if s.calls > 1 {
		return s.Backend.List(ctx, prefix, fn)
	}
	// The store answers now; the answer arrives late.
	var pages []backend.Page
	if err := s.Backend.List(ctx, prefix, func(p backend.Page) error {
		pages = append(pages, p)
		return nil
	}); err != nil {
		return err
	}
	close(s.started)
	<-s.release
	for _, p := range pages {
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

// TestListingDoesNotUndoAnUpload: an upload that completes while a listing
// of its folder runs (the listing began before the object existed) must
// still show once the listing is recorded.
func TestListingDoesNotUndoAnUpload(t *testing.T) {
	root := t.TempDir()
	store, err := dir.New(root)
	if err != nil {
		t.Fatal(err)
	}
	tree := newTestTree(t)
	slow := &slowList{Backend: store, started: make(chan struct{}), release: make(chan struct{})}
	f := mustNew(t, Config{Store: slow, Tree: tree, Journal: &fakeJournal{}, DirTTL: time.Hour})

	listed := make(chan error, 1)
	go func() { listed <- f.ensureListed(context.Background(), "") }()
	<-slow.started
	// The store has answered the listing; now the upload lands and is
	// reported, before the listing's answer arrives.
	info, err := store.Put(context.Background(), "new.txt", nil, 0, nil, backend.Cond{IfNoneMatch: true})
	if err != nil {
		t.Fatal(err)
	}
	f.Applied(journal.Result{Seq: 1, Op: journal.Op{Kind: journal.PutFile, Key: "new.txt"}, Info: info})
	close(slow.release)
	if err := <-listed; err != nil {
		t.Fatal(err)
	}
	if _, ok, err := tree.Lookup("", "new.txt"); err != nil || !ok {
		t.Fatalf("new.txt after the listing: found %v, %v; want shown", ok, err)
	}
}

// newTestTree opens a tree in a new bbolt file of t's, closed at cleanup.
func newTestTree(t *testing.T) *cache.Tree {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "tree.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	tree, err := cache.OpenTree(db)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}
