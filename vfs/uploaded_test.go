package vfs

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// slowAdopter is a block cache whose adoptions copy only when told to.
type slowAdopter struct {
	contentCache // unused
	started      chan io.ReaderAt
	done         chan error
}

func (a *slowAdopter) StartAdopt(c cache.Content, src io.ReaderAt) (<-chan error, error) {
	a.started <- src
	return a.done, nil
}

// The content of a finished upload is claimed by the cache at once but
// copied afterwards: Applied (and so the upload's completion and `nimbus
// sync`) does not wait for the copy, which reads the staged file even once
// the journal has removed it, and lets it go when done.
func TestUploadedContentIsCopiedAfterApplied(t *testing.T) {
	staged := filepath.Join(t.TempDir(), "staged")
	data := []byte("the bytes of the version the upload became")
	if err := os.WriteFile(staged, data, 0o600); err != nil {
		t.Fatal(err)
	}
	a := &slowAdopter{started: make(chan io.ReaderAt, 1), done: make(chan error)}
	f := &FS{cfg: Config{Blocks: a}, log: slog.New(slog.DiscardHandler)}
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		f.adoptUploaded(journal.Result{
			Op:   journal.Op{Kind: journal.PutFile, Key: "big.bin", Staged: staged},
			Info: backend.ObjectInfo{Key: "big.bin", ETag: "e1", Size: int64(len(data))},
		})
	}()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		close(a.done)
		t.Fatal("adoptUploaded waited for the copy")
	}
	src := <-a.started
	if err := os.Remove(staged); err != nil { // as the journal does next
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := src.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the copy read %q, %v from the removed staged file; want its bytes", got, err)
	}
	a.done <- nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := src.ReadAt(got, 0)
		if errors.Is(err, os.ErrClosed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the staged file is still open after the copy (read: %v)", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// linkingAdopter is a block cache that takes staged files by a link when
// it can: linked says what its LinkAdopt answers.
type linkingAdopter struct {
	slowAdopter
	linked bool
	links  []string
}

func (a *linkingAdopter) LinkAdopt(c cache.Content, path string) (bool, error) {
	a.links = append(a.links, path)
	return a.linked, nil
}

// The staged file of an upload that landed is handed to the cache as it
// is (LinkAdopt) when the cache can take it; otherwise it is copied. A
// staged file whose size is not the version's is handed over neither way.
func TestUploadedContentIsLinkedWhenItCanBe(t *testing.T) {
	staged := filepath.Join(t.TempDir(), "staged")
	data := []byte("the bytes of the version the upload became")
	if err := os.WriteFile(staged, data, 0o600); err != nil {
		t.Fatal(err)
	}
	result := func(size int64) journal.Result {
		return journal.Result{
			Op:   journal.Op{Kind: journal.PutFile, Key: "f.txt", Staged: staged},
			Info: backend.ObjectInfo{Key: "f.txt", ETag: "e1", Size: size},
		}
	}
	for _, linked := range []bool{true, false} {
		a := &linkingAdopter{slowAdopter: slowAdopter{started: make(chan io.ReaderAt, 1), done: make(chan error)}, linked: linked}
		close(a.done)
		f := &FS{cfg: Config{Blocks: a}, log: slog.New(slog.DiscardHandler)}
		f.adoptUploaded(result(int64(len(data))))
		if len(a.links) != 1 || a.links[0] != staged {
			t.Fatalf("LinkAdopt calls %q; want one, of the staged file", a.links)
		}
		copied := len(a.started) == 1
		if copied == linked {
			t.Fatalf("LinkAdopt answered %v and the content was copied: %v", linked, copied)
		}

		a.links = nil
		f.adoptUploaded(result(int64(len(data)) + 1))
		if len(a.links) != 0 {
			t.Fatalf("a staged file of the wrong size was handed to LinkAdopt")
		}
	}
}

// stagingOnly is a journal that only hands out staging files.
type stagingOnly struct {
	journalLog
	dir string
}

func (j stagingOnly) StagingFile() (*os.File, error) { return os.CreateTemp(j.dir, "staged-") }

// A linked working copy whose commit failed is still a second name of the
// journal's file: a write copies it first, even though it is not committed.
func TestLinkedWorkingCopyIsCopiedBeforeAWrite(t *testing.T) {
	dir := t.TempDir()
	data := []byte("the journal's bytes of an earlier change")
	shared := filepath.Join(dir, "committed")
	if err := os.WriteFile(shared, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(shared, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := &workFile{f: f, size: int64(len(data)), linked: true}
	n := &fileNode{fsys: &FS{cfg: Config{Journal: stagingOnly{dir: dir}}, log: slog.New(slog.DiscardHandler)}, work: w}
	n.mu.Lock()
	nw, err := n.forWritingLocked()
	n.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	defer nw.f.Close()
	if nw == w || nw.f.Name() == shared || nw.linked {
		t.Fatalf("forWritingLocked kept the linked copy (%s) for writing", nw.f.Name())
	}
	if _, err := nw.f.WriteAt([]byte("CHANGED"), 0); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(shared); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the shared file reads %q, %v after a write; want it unchanged", got, err)
	}
}
