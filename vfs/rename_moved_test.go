package vfs

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/nimbus-fs/nimbus/journal"
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

// An empty file renamed over a file of a folder, its server-side copy still
// pending, keeps its size of 0 when the folder is renamed: the folder
// rename used to take the size the listing showed under that name (the
// file the copy replaces) for a pending copy of size 0, and reading the
// file then failed with EIO (the copy's source is shorter than the size).
func TestFolderRenameKeepsAPendingEmptyCopyEmpty(t *testing.T) {
	old := bytes.Repeat([]byte("replaced "), 1000)
	m := newTier(t, tierOpt{holdUploads: true, remote: seededRemote(t, map[string][]byte{"empty": nil, "d/f": old})})
	if err := os.Rename(m.path("empty"), m.path("d/f")); err != nil { // a pending server-side copy
		t.Fatal(err)
	}
	if p, ok := m.jour.Pending("d/f"); !ok || p.Kind != journal.Copy {
		t.Fatalf("the rename left %+v pending on d/f, want a copy: the test proves nothing", p)
	}
	if err := os.Rename(m.path("d"), m.path("e")); err != nil {
		t.Fatal(err)
	}
	// What a lookup after the kernel forgot the file shows.
	if e, ok, err := m.fsys.cfg.Tree.Get("e", "f"); err != nil || !ok || e.Size != 0 {
		t.Fatalf("the tree shows e/f as %+v (found %v, %v), want 0 bytes", e, ok, err)
	}
	for _, stage := range []string{"pending", "uploaded"} {
		if stage == "uploaded" {
			m.startUploads()
			m.sync(tierSync)
		}
		st, err := os.Stat(m.path("e/f"))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != 0 {
			t.Fatalf("%s: e/f is %d bytes, want 0", stage, st.Size())
		}
		if got, err := os.ReadFile(m.path("e/f")); err != nil || len(got) != 0 {
			t.Fatalf("%s: reading e/f: %d bytes, %v; want 0 bytes", stage, len(got), err)
		}
	}
	m.wantRemote("e/f", nil)
	m.wantNoRemote("d/f")
}
