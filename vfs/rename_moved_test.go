package vfs

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestFolderRenameCopyDoneBeforeRenameReturns renames a folder holding a
// file open for writing, and completes the rename's copies before Rename
// returns (a `nimbus sync` at that moment does it), either before
// resetMoved or after it: the copy's completion finds no node at the new
// path, since the kernel moves the node only after Rename. The node must
// still learn the copied version, or its next edit is based on "absent"
// and becomes a conflicted copy next to the file.
func TestFolderRenameCopyDoneBeforeRenameReturns(t *testing.T) {
	for _, stage := range []string{"committed", "reset"} {
		t.Run(stage, func(t *testing.T) {
			m := newTier(t, tierOpt{remote: seededRemote(t, map[string][]byte{"d/f": []byte("before")})})
			f, err := os.OpenFile(m.path("d/f"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()

			hook := func(at string) {
				if at == stage {
					m.sync(tierSync)
				}
			}
			renameDirHook.Store(&hook)
			t.Cleanup(func() { renameDirHook.Store(nil) })
			if err := os.Rename(m.path("d"), m.path("e")); err != nil {
				t.Fatal(err)
			}
			renameDirHook.Store(nil)
			if keys := m.remoteKeys(); !slices.Contains(keys, "e/f") || slices.Contains(keys, "d/f") {
				t.Fatalf("after the rename's copies: store keys %q, want e/f and no d/f", keys)
			}

			if _, err := f.WriteAt([]byte("edited"), 0); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			m.sync(tierSync)
			for _, k := range m.remoteKeys() {
				if strings.Contains(k, "conflicted copy") {
					t.Fatalf("the edit became a conflicted copy %q: the moved file's base was lost", k)
				}
			}
			m.wantRemote("e/f", []byte("edited"))
		})
	}
}

// TestFolderRenameThenDeleteForgetsTheMove renames a folder holding an
// open file and deletes the moved file before the rename's copy is
// uploaded: once the delete lands, nothing waits for the copy any more,
// and the FS must not keep the node as being moved (a leak that would
// hand a later upload of that name to the deleted node).
func TestFolderRenameThenDeleteForgetsTheMove(t *testing.T) {
	m := newTier(t, tierOpt{remote: seededRemote(t, map[string][]byte{"d/f": []byte("before")}), holdUploads: true})
	f, err := os.OpenFile(m.path("d/f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Rename(m.path("d"), m.path("e")); err != nil {
		t.Fatal(err)
	}
	moving := func() int {
		m.fsys.localMu.Lock()
		defer m.fsys.localMu.Unlock()
		return len(m.fsys.moving)
	}
	if moving() != 1 {
		t.Fatalf("%d files being moved after the rename, want 1: the test proves nothing", moving())
	}
	if err := os.Remove(m.path("e/f")); err != nil {
		t.Fatal(err)
	}
	m.startUploads()
	m.sync(tierSync)
	if keys := m.remoteKeys(); slices.Contains(keys, "e/f") || slices.Contains(keys, "d/f") {
		t.Fatalf("store keys %q after the rename and the delete, want neither d/f nor e/f", keys)
	}
	if n := moving(); n != 0 {
		t.Fatalf("%d files still recorded as being moved once everything landed, want 0", n)
	}
}
