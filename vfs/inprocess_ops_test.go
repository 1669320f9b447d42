package vfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
	"github.com/nimbus-fs/nimbus/integration/wait"
	"github.com/nimbus-fs/nimbus/journal"
)

// Each write syscall through the in-process tier: what the mount shows at
// once, and what the store holds once the journal drained.

const tierSync = 2 * time.Minute

func TestTierCreateWriteRead(t *testing.T) {
	m := newTier(t, tierOpt{})
	f, err := os.OpenFile(m.path("a.txt"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("hello world")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("HELLO"), 0); err != nil {
		t.Fatal(err)
	}
	// Read after write, through the same handle and through another.
	buf := make([]byte, 64)
	n, err := f.ReadAt(buf, 0)
	if got := string(buf[:n]); got != "HELLO world" {
		t.Fatalf("read through the writing handle: %q (%v), want %q", got, err, "HELLO world")
	}
	if got := string(m.mustRead("a.txt")); got != "HELLO world" {
		t.Fatalf("read through a second handle: %q", got)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.OpenFile(m.path("a.txt"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644); !os.IsExist(err) {
		t.Fatalf("O_EXCL over an existing file: %v, want EEXIST", err)
	}
	st, err := os.Stat(m.path("a.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 11 || !st.Mode().IsRegular() {
		t.Fatalf("stat: size %d mode %v, want an 11-byte file", st.Size(), st.Mode())
	}
	m.sync(tierSync)
	m.wantRemote("a.txt", []byte("HELLO world"))
	if got := m.remoteKeys(); !slices.Equal(got, []string{"a.txt"}) {
		t.Fatalf("store keys %q, want only a.txt", got)
	}
}

func TestTierRename(t *testing.T) {
	m := newTier(t, tierOpt{})
	m.mustWrite("src", []byte("source"))
	m.mustWrite("victim", []byte("overwritten"))
	m.sync(tierSync)
	if err := os.Rename(m.path("src"), m.path("dst")); err != nil {
		t.Fatal(err)
	}
	if got := string(m.mustRead("dst")); got != "source" {
		t.Fatalf("dst after rename: %q", got)
	}
	if _, err := os.Stat(m.path("src")); !os.IsNotExist(err) {
		t.Fatalf("src after rename: %v, want ENOENT", err)
	}
	// Over an existing file: it is replaced.
	if err := os.Rename(m.path("dst"), m.path("victim")); err != nil {
		t.Fatal(err)
	}
	if got := string(m.mustRead("victim")); got != "source" {
		t.Fatalf("victim after rename over it: %q, want %q", got, "source")
	}
	if got := m.names(""); !slices.Equal(got, []string{"victim"}) {
		t.Fatalf("listing %q, want [victim]", got)
	}
	m.sync(tierSync)
	m.wantRemote("victim", []byte("source"))
	if got := m.remoteKeys(); !slices.Equal(got, []string{"victim"}) {
		t.Fatalf("store keys %q, want only victim", got)
	}
}

func TestTierOpenUnlinked(t *testing.T) {
	m := newTier(t, tierOpt{})
	// A file with local content not uploaded yet: the open handle keeps
	// it, takes writes, and nothing is uploaded.
	m.mustWrite("gone", []byte("still readable"))
	f, err := os.OpenFile(m.path("gone"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Unlink(m.path("gone")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.path("gone")); !os.IsNotExist(err) {
		t.Fatalf("stat after unlink: %v, want ENOENT", err)
	}
	buf := make([]byte, 64)
	n, err := f.ReadAt(buf, 0)
	if got := string(buf[:n]); got != "still readable" {
		t.Fatalf("read through the unlinked handle: %q (%v)", got, err)
	}
	if _, err := f.WriteAt([]byte("STILL"), 0); err != nil {
		t.Fatalf("write through the unlinked handle: %v", err)
	}
	n, err = f.ReadAt(buf, 0)
	if got := string(buf[:n]); got != "STILL readable" {
		t.Fatalf("read back through the unlinked handle: %q (%v)", got, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := m.names(""); len(got) != 0 {
		t.Fatalf("listing after unlink: %q, want empty", got)
	}
	m.sync(tierSync)
	m.wantNoRemote("gone")
	if got := m.remoteKeys(); len(got) != 0 {
		t.Fatalf("store keys %q, want none", got)
	}
}

// TestTierOpenUnlinkedUploaded is the same for a file that is uploaded and
// not cached: POSIX wants its content readable through a handle opened
// before the unlink, also once the delete reached the store. A writable
// handle has its working copy (made at open); for a read-only one the
// unlink keeps the opened version first: a local copy of a small file, a
// server-side snapshot of one of PartialMin or more (nothing downloaded).
// The kept copy goes with the last handle.
func TestTierOpenUnlinkedUploaded(t *testing.T) {
	large := bytes.Repeat([]byte("0123456789abcdef"), (40<<20)/16) // over the tier's PartialMin (32 MiB)
	for _, tc := range []struct {
		name    string
		flags   int
		content []byte
	}{
		{"rdonly", os.O_RDONLY, []byte("still readable")},
		{"rdwr", os.O_RDWR, []byte("still readable")},
		{"rdonly_large", os.O_RDONLY, large},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTier(t, tierOpt{remote: seededRemote(t, map[string][]byte{"gone": tc.content})})
			f := openAndReadHead(t, m.path("gone"), tc.flags)
			if err := syscall.Unlink(m.path("gone")); err != nil {
				t.Fatal(err)
			}
			m.sync(tierSync) // the delete reached the store
			m.wantNoRemote("gone")
			if fetched := m.blocks.Stats().FetchedBytes; len(tc.content) >= 32<<20 && fetched >= int64(len(tc.content))/2 {
				// Kept by a server-side snapshot: only the kernel's
				// read-ahead of the first read was downloaded.
				t.Errorf("%d bytes fetched for a %d-byte file unlinked after reading 4: want a snapshot, not a download", fetched, len(tc.content))
			}
			got := make([]byte, len(tc.content)+1)
			n, err := f.ReadAt(got, 0)
			if !bytes.Equal(got[:n], tc.content) {
				t.Fatalf("read through a handle opened before the unlink: %d bytes (%v), want the %d it opened", n, err, len(tc.content))
			}
			closeKeptCopy(t, m, f)
		})
	}
}

// TestTierOpenReplacedByRename is TestTierOpenUnlinkedUploaded for a file
// that a rename replaces (an editor's save, a package manager's update):
// a handle opened before reads the version it opened, also once the
// store holds the new one.
func TestTierOpenReplacedByRename(t *testing.T) {
	// Larger than what the first read caches, so that the rest would come
	// from the store.
	old := bytes.Repeat([]byte("the old version "), (4<<20)/16)
	m := newTier(t, tierOpt{remote: seededRemote(t, map[string][]byte{"f": old, "new": []byte("the new one")})})
	f := openAndReadHead(t, m.path("f"), os.O_RDONLY)
	if err := os.Rename(m.path("new"), m.path("f")); err != nil {
		t.Fatal(err)
	}
	m.sync(tierSync) // the store holds the new version under f
	m.wantRemote("f", []byte("the new one"))
	got := make([]byte, len(old)+1)
	n, err := f.ReadAt(got, 0)
	if !bytes.Equal(got[:n], old) {
		t.Fatalf("read through a handle opened before the rename: %d bytes (%v), want the %d of the old version", n, err, len(old))
	}
	if got := string(m.mustRead("f")); got != "the new one" {
		t.Fatalf("a new open reads %q, want the new version", got)
	}
	closeKeptCopy(t, m, f)
}

// openAndReadHead opens path with flags, closed at the end of the test,
// and reads its first 4 bytes: those are cached, the rest is not.
func openAndReadHead(t *testing.T, path string, flags int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.ReadAt(make([]byte, 4), 0); err != nil {
		t.Fatal(err)
	}
	return f
}

// closeKeptCopy closes f, the last handle of a file whose version a
// working copy keeps, and checks that the copy goes with it: the staging
// folder holds the journal's spare files and the copy, then the spares
// alone. (The kernel releases a handle after close returns.)
func closeKeptCopy(t *testing.T, m *tier, f *os.File) {
	t.Helper()
	staged := func(n int) func() bool {
		return func() bool { return len(stagedFiles(t, m)) == n }
	}
	wait.Until(t, 10*time.Second, "the spare files and the kept copy", staged(journal.DefaultSpareFiles+1))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wait.Until(t, 10*time.Second, "the kept copy to go with the last handle", staged(journal.DefaultSpareFiles))
}

// stagedFiles lists the files in the tier's staging folder.
func stagedFiles(t *testing.T, m *tier) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(m.staging, "*"))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestTierSetattr(t *testing.T) {
	m := newTier(t, tierOpt{})
	m.mustWrite("f", []byte("0123456789"))
	if err := os.Chmod(m.path("f"), 0o751); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if err := os.Chtimes(m.path("f"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(m.path("f"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o751 || !st.ModTime().Equal(mtime) {
		t.Fatalf("after chmod and utimes: mode %v mtime %v, want 0751 and %v", st.Mode(), st.ModTime(), mtime)
	}
	if err := os.Truncate(m.path("f"), 4); err != nil {
		t.Fatal(err)
	}
	if got := string(m.mustRead("f")); got != "0123" {
		t.Fatalf("after truncate to 4: %q", got)
	}
	if err := os.Truncate(m.path("f"), 6); err != nil {
		t.Fatal(err)
	}
	want := []byte("0123\x00\x00")
	if got := m.mustRead("f"); !bytes.Equal(got, want) {
		t.Fatalf("after truncate up to 6: %q, want %q", got, want)
	}
	if st, err := os.Stat(m.path("f")); err != nil || st.Size() != 6 || st.Mode().Perm() != 0o751 {
		t.Fatalf("stat after truncates: %v %v, want 6 bytes, mode 0751", st, err)
	}
	// utimes last, so that the truncates' own mtime is replaced.
	if err := os.Chtimes(m.path("f"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	m.sync(tierSync)
	info := m.wantRemote("f", want)
	if got := info.Meta[metaMode]; got != strconv.FormatUint(0o751, 8) {
		t.Errorf("store: mode metadata %q, want 751", got)
	}
	if got := info.Meta[metaMTime]; got != strconv.FormatInt(mtime.UnixNano(), 10) {
		t.Errorf("store: mtime metadata %q, want %d", got, mtime.UnixNano())
	}
}

func TestTierMkdirRmdirReaddir(t *testing.T) {
	m := newTier(t, tierOpt{})
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(m.path("d"), 0o755); !os.IsExist(err) {
		t.Fatalf("mkdir over a folder: %v, want EEXIST", err)
	}
	if err := os.Mkdir(m.path("d/e"), 0o755); err != nil {
		t.Fatal(err)
	}
	m.mustWrite("d/one", []byte("1"))
	m.mustWrite("d/two", []byte("22"))
	if got, want := m.names("d"), []string{"e/", "one", "two"}; !slices.Equal(got, want) {
		t.Fatalf("readdir d: %q, want %q", got, want)
	}
	wantErrno(t, "rmdir of a non-empty folder", syscall.Rmdir(m.path("d")), syscall.ENOTEMPTY)
	wantErrno(t, "rmdir of a file", syscall.Rmdir(m.path("d/one")), syscall.ENOTDIR)
	wantErrno(t, "unlink of a folder", syscall.Unlink(m.path("d/e")), syscall.EISDIR)
	m.sync(tierSync)
	if got, want := m.remoteKeys(), []string{"d/", "d/e/", "d/one", "d/two"}; !slices.Equal(got, want) {
		t.Fatalf("store keys %q, want %q", got, want)
	}
	for _, p := range []string{"d/one", "d/two"} {
		if err := syscall.Unlink(m.path(p)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Rmdir(m.path("d/e")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Rmdir(m.path("d")); err != nil {
		t.Fatal(err)
	}
	if got := m.names(""); len(got) != 0 {
		t.Fatalf("root after rmdir: %q, want empty", got)
	}
	m.sync(tierSync)
	if got := m.remoteKeys(); len(got) != 0 {
		t.Fatalf("store keys %q, want none", got)
	}
}

func TestTierFolderRename(t *testing.T) {
	m := newTier(t, tierOpt{})
	for _, p := range []string{"old", "old/sub", "other"} {
		if err := os.Mkdir(m.path(p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	m.mustWrite("old/a", []byte("a"))
	m.mustWrite("old/sub/b", []byte("bb"))
	m.sync(tierSync)
	// A local change not yet uploaded moves with the folder.
	m.mustWrite("old/sub/c", []byte("ccc"))
	wantErrno(t, "rename of a folder into itself", os.Rename(m.path("old"), m.path("old/sub/x")), syscall.EINVAL)
	if err := os.Rename(m.path("old"), m.path("other/new")); err != nil {
		t.Fatal(err)
	}
	if got := m.names(""); !slices.Equal(got, []string{"other/"}) {
		t.Fatalf("root after folder rename: %q", got)
	}
	if got, want := m.names("other/new/sub"), []string{"b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("renamed folder's subfolder: %q, want %q", got, want)
	}
	if got := string(m.mustRead("other/new/sub/c")); got != "ccc" {
		t.Fatalf("moved local change: %q", got)
	}
	m.sync(tierSync)
	want := []string{"other/", "other/new/", "other/new/a", "other/new/sub/", "other/new/sub/b", "other/new/sub/c"}
	if got := m.remoteKeys(); !slices.Equal(got, want) {
		t.Fatalf("store keys %q, want %q", got, want)
	}
	m.wantRemote("other/new/sub/c", []byte("ccc"))
}

// TestTierAppendAfterRemoteChange appends through a handle opened just
// after another writer replaced the file, while the kernel still holds the
// size it cached before: the append lands after the other writer's
// content, not over it at the kernel's stale end of file.
func TestTierAppendAfterRemoteChange(t *testing.T) {
	m := newTier(t, tierOpt{})
	m.mustWrite("log.txt", nil)
	m.sync(tierSync)
	before := m.wantRemote("log.txt", nil)
	if st, err := os.Stat(m.path("log.txt")); err != nil || st.Size() != 0 {
		t.Fatalf("stat: %v, %v; want an empty file", st, err)
	}
	// The kernel now caches size 0 (for the attribute timeout, 1 s).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	remote := []byte("other writer\n")
	if _, err := m.store.Put(ctx, "log.txt", bytes.NewReader(remote), int64(len(remote)), nil, backend.Cond{IfMatch: before.ETag}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(m.path("log.txt"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("appended\n")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	m.sync(tierSync)
	m.wantRemote("log.txt", []byte("other writer\nappended\n"))
}

// TestTierFolderRenameOverPendingCopies renames a folder while a file was
// renamed into it over a name whose old object the store still lists (its
// move away is pending too): the moved file shows the size and the bytes
// of what was renamed in, not of the object it replaced. The differential
// model test found this under load, when the uploads happened to lag.
func TestTierFolderRenameOverPendingCopies(t *testing.T) {
	old, renamedIn := []byte("old content"), []byte("the content renamed in, longer than the old one")
	remote := seededRemote(t, map[string][]byte{"sub/x y": old, "a": renamedIn})
	m := newTier(t, tierOpt{remote: remote, holdUploads: true})
	m.names("sub")
	for _, r := range [][2]string{{"sub/x y", "other"}, {"a", "sub/x y"}, {"sub", "sub2"}} {
		if err := os.Rename(m.path(r[0]), m.path(r[1])); err != nil {
			t.Fatal(err)
		}
	}
	// The kernel forgets its inodes (as under memory pressure): the
	// moved file is looked up afresh, from what the tree shows.
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2\n"), 0); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("drop the kernel's inodes (needs root): %v", err)
		}
		t.Skipf("drop the kernel's inodes (needs root): %v", err)
	}
	if st, err := os.Stat(m.path("sub2/x y")); err != nil || st.Size() != int64(len(renamedIn)) {
		t.Fatalf("sub2/x y while the moves are pending: %v, %v; want %d bytes", st, err, len(renamedIn))
	}
	if got := m.mustRead("sub2/x y"); !bytes.Equal(got, renamedIn) {
		t.Fatalf("sub2/x y reads %q, want %q", got, renamedIn)
	}
	m.startUploads()
	m.sync(tierSync)
	m.wantRemote("sub2/x y", renamedIn)
	m.wantRemote("other", old)
	if got := m.remoteKeys(); !slices.Equal(got, []string{"other", "sub2/", "sub2/x y"}) && !slices.Equal(got, []string{"other", "sub2/x y"}) {
		t.Fatalf("store keys %q, want other and sub2/x y", got)
	}
}

// TestTierFolderRenameRacingADelete renames a folder while the delete of a
// file in it completes between the folder's listing and the commit: the
// listing still has the file, the journal no longer has its delete. The
// file must not come back under the new name.
func TestTierFolderRenameRacingADelete(t *testing.T) {
	remote := seededRemote(t, map[string][]byte{"sub/keep": []byte("kept"), "sub/gone": []byte("deleted")})
	// The hook runs in the mount's goroutines: the race detector does not
	// see the kernel order them after the test's own steps.
	var mounted atomic.Pointer[tier]
	var raced atomic.Bool
	m := newTier(t, tierOpt{remote: remote, holdUploads: true, afterListFlat: func(prefix string) {
		if m := mounted.Load(); m != nil && prefix == "sub/" && raced.CompareAndSwap(false, true) {
			m.startUploads() // the held delete of sub/gone completes now
			m.sync(tierSync)
		}
	}})
	mounted.Store(m)
	m.names("sub")
	if err := os.Remove(m.path("sub/gone")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(m.path("sub"), m.path("sub2")); err != nil {
		t.Fatal(err)
	}
	if !raced.Load() {
		t.Fatal("the folder rename listed no keys under sub/")
	}
	if got := m.names("sub2"); !slices.Equal(got, []string{"keep"}) {
		t.Fatalf("sub2 shows %q, want only keep", got)
	}
	m.sync(tierSync)
	if got := m.remoteKeys(); !slices.Contains(got, "sub2/keep") || slices.Contains(got, "sub2/gone") || slices.Contains(got, "sub/gone") {
		t.Fatalf("store keys %q: want sub2/keep, and gone nowhere", got)
	}
}

// seededRemote returns a new dir: store's folder holding objects, for a
// tier to mount with opt.remote.
func seededRemote(t *testing.T, objects map[string][]byte) string {
	t.Helper()
	remote := t.TempDir()
	st, err := dir.New(remote)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for key, data := range objects {
		if _, err := st.Put(ctx, key, bytes.NewReader(data), int64(len(data)), nil, backend.Cond{IfNoneMatch: true}); err != nil {
			t.Fatal(err)
		}
	}
	return remote
}

// TestTierFolderRenameKeepsModes renames a folder whose file has a mode of
// its own, and edits the file once the kernel forgot its inode: the mount
// shows the mode under the new name, and the edit stores it. The moved
// entry used to show the default mode (a listing carries none), and the
// edit then stored 0644 over the user's mode.
func TestTierFolderRenameKeepsModes(t *testing.T) {
	m := newTier(t, tierOpt{})
	if err := os.Mkdir(m.path("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	m.mustWrite("d/f", []byte("private"))
	if err := os.Chmod(m.path("d/f"), 0o700); err != nil {
		t.Fatal(err)
	}
	m.sync(tierSync)
	if err := os.Rename(m.path("d"), m.path("e")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2\n"), 0); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("drop the kernel's inodes (needs root): %v", err)
		}
		t.Skipf("drop the kernel's inodes (needs root): %v", err)
	}
	if st, err := os.Stat(m.path("e/f")); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("e/f after the folder rename: %v, %v; want mode 0700", st, err)
	}
	f, err := os.OpenFile(m.path("e/f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(" edit")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	m.sync(tierSync)
	info := m.wantRemote("e/f", []byte("private edit"))
	if got := info.Meta["nimbus-mode"]; got != "700" && got != "0700" {
		t.Fatalf("store: e/f has nimbus-mode %q, want 700", got)
	}
}

// TestTierOpenUnlinkedCached: a read-only handle opened before an unlink
// reads the file's bytes after it, when they are cached (here: written
// through the mount, so the upload left them in the cache), even once the
// delete reached the store.
func TestTierOpenUnlinkedCached(t *testing.T) {
	m := newTier(t, tierOpt{})
	m.mustWrite("gone", []byte("still readable"))
	m.sync(tierSync)
	f, err := os.Open(m.path("gone"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Unlink(m.path("gone")); err != nil {
		t.Fatal(err)
	}
	m.sync(tierSync) // the delete reached the store
	m.wantNoRemote("gone")
	buf := make([]byte, 64)
	n, err := f.ReadAt(buf, 0)
	if got := string(buf[:n]); got != "still readable" {
		t.Errorf("read through a handle opened before the unlink: %q (%v)", got, err)
	}
}

// A change of attributes after close() (chmod, touch, rsync's utimes) shares
// the committed copy's file by a hard link instead of copying its bytes; a
// later write copies it first, so the bytes the journal holds for the
// earlier change never change.
func TestTierAttrChangeAfterCloseLinksTheContent(t *testing.T) {
	m := newTier(t, tierOpt{holdUploads: true})
	v1 := bytes.Repeat([]byte("first version "), 5000) // 70 KB: not inlined, so hashed and synced
	m.mustWrite("f", v1)
	staged := func() (string, syscall.Stat_t) {
		t.Helper()
		p, ok := m.jour.Pending("f")
		if !ok || p.Kind != journal.PutFile {
			t.Fatalf("no pending upload of f: %+v", p)
		}
		path := p.Staged
		if !filepath.IsAbs(path) {
			path = filepath.Join(m.staging, path)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return path, st
	}
	path1, st1 := staged()
	held, err := os.Open(path1) // reads the first change's file from now on
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	mtime := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	if err := os.Chtimes(m.path("f"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m.path("f"), 0o640); err != nil {
		t.Fatal(err)
	}
	path2, st2 := staged()
	if path2 == path1 || st2.Ino != st1.Ino {
		t.Fatalf("after utimes and chmod the pending upload's content is %s (inode %d); want a new name of inode %d (%s)",
			path2, st2.Ino, st1.Ino, path1)
	}
	sum := sha256.Sum256(v1)
	if p, _ := m.jour.Pending("f"); p.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the linked change's content hash is %s, want %x", p.SHA256, sum)
	}

	// A write now must not write into the shared file.
	m.mustWriteAt("f", []byte("SECOND"), 0)
	got, err := io.ReadAll(io.NewSectionReader(held, 0, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, v1) {
		t.Fatalf("the linked file changed under a write through the mount: it starts %q", got[:20])
	}
	if _, st3 := staged(); st3.Ino == st1.Ino {
		t.Fatal("the write's change was committed in the shared file")
	}

	m.startUploads()
	m.sync(tierSync)
	want := append([]byte("SECOND"), v1[6:]...)
	info := m.wantRemote("f", want)
	if got := info.Meta[metaMode]; got != strconv.FormatUint(0o640, 8) {
		t.Errorf("store: mode metadata %q, want 640", got)
	}
}

// A rename of a file whose content is only local (committed, not uploaded
// yet) links that content under the new name instead of copying it, from
// the live node's copy or from the journal's staged file.
func TestTierRenameLinksCommittedContent(t *testing.T) {
	m := newTier(t, tierOpt{holdUploads: true})
	v1 := bytes.Repeat([]byte("renamed before upload "), 4000)
	m.mustWrite("a", v1)
	pendingInode := func(key string) uint64 {
		t.Helper()
		p, ok := m.jour.Pending(key)
		if !ok || p.Kind != journal.PutFile {
			t.Fatalf("no pending upload of %s: %+v", key, p)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(m.staging, filepath.Base(p.Staged)), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	ino := pendingInode("a")

	// Without the node: from the journal's staged file.
	w, err := m.fsys.copyLocalContent("a", nil)
	if err != nil || w == nil {
		t.Fatalf("copyLocalContent of a pending file = %v, %v", w, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(w.f.Name(), &st); err != nil {
		t.Fatal(err)
	}
	removeQuietly(w.f.Name())
	if st.Ino != ino || !w.linked {
		t.Fatalf("the pending content was copied (inode %d, linked %v), want a link of inode %d", st.Ino, w.linked, ino)
	}

	// Through the mount, with the node live.
	if err := os.Rename(m.path("a"), m.path("b")); err != nil {
		t.Fatal(err)
	}
	if got := pendingInode("b"); got != ino {
		t.Fatalf("after the rename the upload of b has inode %d, want a link of a's content (inode %d)", got, ino)
	}
	m.mustWriteAt("b", []byte("CHANGED"), 0)
	if got := pendingInode("b"); got == ino {
		t.Fatal("the write after the rename was committed in the linked file")
	}
	m.startUploads()
	m.sync(tierSync)
	m.wantRemote("b", append([]byte("CHANGED"), v1[7:]...))
	m.wantNoRemote("a")
}
