package vfs

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
)

// stuckList never answers a listing until its context ends.
type stuckList struct {
	backend.Backend
	started chan struct{}
	ended   atomic.Bool
}

func (s *stuckList) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	close(s.started)
	<-ctx.Done()
	time.Sleep(50 * time.Millisecond) // still busy a moment after the cancel
	s.ended.Store(true)
	return ctx.Err()
}

// Stop ends the background work and returns only once it is done: a
// listing whose caller gave up runs on the mount's background context,
// not on one that nothing cancels, and Stop waits for it.
func TestStopWaitsForBackgroundWork(t *testing.T) {
	store, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tree := newTestTree(t)
	stuck := &stuckList{Backend: store, started: make(chan struct{})}
	f := mustNew(t, Config{Store: stuck, Tree: tree, Journal: &fakeJournal{}, DirTTL: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	listed := make(chan error, 1)
	go func() { listed <- f.ensureListed(ctx, "") }()
	<-stuck.started
	cancel()
	if err := <-listed; err == nil {
		t.Fatal("a listing whose caller gave up returned no error")
	}
	stopped := make(chan struct{})
	go func() { f.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return: the listing it should cancel runs on")
	}
	if !stuck.ended.Load() {
		t.Fatal("Stop returned while a background listing still ran")
	}
	if f.background(func() { t.Error("background work started after Stop") }) {
		t.Error("background reported starting work after Stop")
	}
}

// mustNew is New for tests: a Config the test got wrong fails it.
func mustNew(t testing.TB, cfg Config) *FS {
	t.Helper()
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestNewRequiresJournalAndTree(t *testing.T) {
	tree := newTestTree(t)
	if _, err := New(Config{Tree: tree}); err == nil || !strings.Contains(err.Error(), "Journal is required") {
		t.Errorf("New without a journal: %v, want an error saying it is required", err)
	}
	if _, err := New(Config{Journal: &fakeJournal{}}); err == nil || !strings.Contains(err.Error(), "Tree is required") {
		t.Errorf("New without a tree: %v, want an error saying it is required", err)
	}
}
