package cache

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// withBoot makes bootID return id for the rest of the test.
func withBoot(t *testing.T, id string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "boot_id")
	if err := os.WriteFile(p, []byte(id+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := bootIDPath
	bootIDPath = p
	t.Cleanup(func() { bootIDPath = old })
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// putOne opens the tree database at path, records one entry and leaves the
// database as a killed process would (closed without the clean mark), or
// closes it cleanly.
func putOne(t *testing.T, path string, clean bool) {
	t.Helper()
	db, err := OpenTreeDB(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	tree, err := OpenTree(db.DB)
	if err != nil {
		t.Fatal(err)
	}
	if err := tree.PutEntry("d", Entry{Name: "f", Size: 7, ETag: "e", MTime: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	if clean {
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := db.DB.Close(); err != nil { // no clean close: a SIGKILL
		t.Fatal(err)
	}
}

func hasEntry(t *testing.T, path string) bool {
	t.Helper()
	db, err := OpenTreeDB(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tree, err := OpenTree(db.DB)
	if err != nil {
		t.Fatal(err)
	}
	_, ok, err := tree.Lookup("d", "f")
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestTreeDBKeepsItsContentAfterAKill(t *testing.T) {
	withBoot(t, "boot-1")
	path := filepath.Join(t.TempDir(), "tree.db")
	putOne(t, path, false)
	if !hasEntry(t, path) {
		t.Fatal("the entry written before a kill in the same boot is gone")
	}
	if !NoSyncAfterOpen(t, path) {
		t.Error("the tree database syncs every transaction")
	}
}

// NoSyncAfterOpen reports whether an opened tree database skips syncs.
func NoSyncAfterOpen(t *testing.T, path string) bool {
	t.Helper()
	db, err := OpenTreeDB(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	return db.NoSync
}

func TestTreeDBStartsAfreshAfterASystemCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tree.db")
	withBoot(t, "boot-1")
	putOne(t, path, false)

	// Torn by a crash of the system: every page after the meta pages
	// overwritten with garbage.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	garbage := make([]byte, st.Size()-2*int64(os.Getpagesize()))
	for i := range garbage {
		garbage[i] = byte(i*7 + 3)
	}
	if _, err := f.WriteAt(garbage, 2*int64(os.Getpagesize())); err != nil {
		t.Fatal(err)
	}
	f.Close()
	withBoot(t, "boot-2")
	if hasEntry(t, path) {
		t.Fatal("the entry survived a torn file")
	}
	// Started afresh, it works.
	putOne(t, path, true)
	if !hasEntry(t, path) {
		t.Fatal("the rebuilt database does not keep entries")
	}
}

func TestTreeDBCleanCloseIsTrustedAfterARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tree.db")
	withBoot(t, "boot-1")
	putOne(t, path, true)
	withBoot(t, "boot-2")
	if !hasEntry(t, path) {
		t.Error("a cleanly closed database was dropped after a restart")
	}
}
