package vfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	bolt "go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// posixMount is an in-process FUSE mount of a vfs over the in-memory
// store, with a real journal and block cache, for tests of what syscalls
// see. (The dir backend refuses the attribute index's key.)
type posixMount struct {
	dir     string
	fsys    *FS
	journal *journal.Journal
}

// mountPOSIX mounts remote with a fresh cache, as another machine would.
// FUSE is needed: under CI its absence fails the test, elsewhere skips it.
func mountPOSIX(t *testing.T, store *memStore) *posixMount {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatalf("in-process mounts need /dev/fuse and root: %v", err)
		}
		t.Skip("no FUSE here, or not root")
	}
	cacheDir := t.TempDir()
	db, err := bolt.Open(filepath.Join(cacheDir, "db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tree, err := cache.OpenTree(db)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := cache.OpenBlockStore(cache.BlockStoreConfig{Dir: filepath.Join(cacheDir, "blocks"), DB: db, Fetcher: store, Capacity: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	var fsys *FS
	j, err := journal.Open(journal.Config{DB: db, Dir: filepath.Join(cacheDir, "staging"), Store: store,
		MinBackoff: 10 * time.Millisecond, Applied: func(r journal.Result) { fsys.Applied(r) }})
	if err != nil {
		t.Fatal(err)
	}
	index, snaps := bucketObjects(t, store, j, &fsys, "test")
	fsys = mustNew(t, Config{Store: index, Tree: tree, Blocks: blocks, Journal: j, DirTTL: time.Hour, Attrs: index, Snapshots: snaps})
	ctx, cancel := context.WithCancel(context.Background())
	uploads := make(chan struct{})
	go func() { defer close(uploads); j.Run(ctx) }()
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := fsys.Options("test", true)
	opts.EntryTimeout, opts.AttrTimeout = new(time.Duration), new(time.Duration) // every stat reaches the vfs
	server, err := fs.Mount(mp, fsys.Root(), opts)
	if err != nil {
		t.Fatal(err)
	}
	guardMount(t, mp)
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			_ = syscall.Unmount(mp, syscall.MNT_DETACH) // best effort; the test failed already
		}
		fsys.Stop()
		index.Close()
		cancel()
		<-uploads
		j.Close()
		blocks.Close()
		db.Close()
	})
	return &posixMount{dir: mp, fsys: fsys, journal: j}
}

func (m *posixMount) path(rel string) string { return filepath.Join(m.dir, rel) }

// sync waits until every change and the attribute index are uploaded.
func (m *posixMount) sync(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.journal.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.fsys.FlushAttrs(ctx); err != nil {
		t.Fatal(err)
	}
}

func lstat(t *testing.T, p string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return st
}

func TestNamesLongerThan255FailAtTheCall(t *testing.T) {
	m := mountPOSIX(t, newMemStore())
	long := strings.Repeat("n", 256)
	ok255 := strings.Repeat("k", 255)
	if err := os.WriteFile(m.path("src"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for what, err := range map[string]error{
		"create":  os.WriteFile(m.path(long), nil, 0o644),
		"mkdir":   os.Mkdir(m.path(long), 0o755),
		"rename":  os.Rename(m.path("src"), m.path(long)),
		"symlink": os.Symlink("src", m.path(long)),
		"mknod":   syscall.Mknod(m.path(long), syscall.S_IFIFO|0o644, 0),
	} {
		if !errors.Is(err, syscall.ENAMETOOLONG) {
			t.Errorf("%s of a 256-byte name: %v, want ENAMETOOLONG", what, err)
		}
	}
	if err := os.WriteFile(m.path(ok255), []byte("x"), 0o644); err != nil {
		t.Errorf("a 255-byte name: %v", err)
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(m.dir, &sfs); err != nil || sfs.Namelen != 255 {
		t.Errorf("statfs namelen = %d (%v), want 255 (pathconf NAME_MAX)", sfs.Namelen, err)
	}
	m.sync(t) // nothing is parked: sync would fail on an upload it cannot do
}

func TestModeZeroAndSpecialBitsTravel(t *testing.T) {
	remote := newMemStore()
	m := mountPOSIX(t, remote)
	if err := os.WriteFile(m.path("locked"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(m.path("locked"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(m.path("sticky"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Chmod(m.path("sticky"), 0o1777|syscall.S_ISGID); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.path("suid"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Chmod(m.path("suid"), 0o4755); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{"locked": syscall.S_IFREG, "sticky": syscall.S_IFDIR | 0o3777, "suid": syscall.S_IFREG | 0o4755}
	for name, mode := range want {
		if st := lstat(t, m.path(name)); st.Mode != mode {
			t.Errorf("%s: mode %o, want %o", name, st.Mode, mode)
		}
	}
	m.sync(t)
	other := mountPOSIX(t, remote)
	for name, mode := range want {
		if st := lstat(t, other.path(name)); st.Mode != mode {
			t.Errorf("on another mount, %s: mode %o, want %o", name, st.Mode, mode)
		}
	}
}

func TestChmodKeepsMtimeAndChangesCtime(t *testing.T) {
	remote := newMemStore()
	m := mountPOSIX(t, remote)
	p := m.path("f")
	if err := os.WriteFile(p, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1000000000, 0)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	// The upload finishing between touch and chmod is what lost the mtime.
	m.sync(t)
	before := lstat(t, p)
	time.Sleep(20 * time.Millisecond)
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	st := lstat(t, p)
	if st.Mtim.Sec != 1000000000 {
		t.Errorf("mtime after chmod = %d, want 1000000000", st.Mtim.Sec)
	}
	if !(st.Ctim.Nano() > before.Ctim.Nano()) {
		t.Errorf("ctime %d not after %d: chmod must change it", st.Ctim.Nano(), before.Ctim.Nano())
	}
	if st.Mode != syscall.S_IFREG|0o640 {
		t.Errorf("mode %o", st.Mode)
	}
	m.sync(t)
	other := mountPOSIX(t, remote)
	st2 := lstat(t, other.path("f"))
	if st2.Mtim.Sec != 1000000000 || st2.Mode != syscall.S_IFREG|0o640 || st2.Ctim.Nano() != st.Ctim.Nano() || st2.Atim.Sec != 1000000000 {
		t.Errorf("on another mount: mode %o mtime %d atime %d ctime %d, want 640, 1000000000, 1000000000, %d", st2.Mode, st2.Mtim.Sec, st2.Atim.Sec, st2.Ctim.Nano(), st.Ctim.Nano())
	}
}

func TestFolderAttributes(t *testing.T) {
	remote := newMemStore()
	m := mountPOSIX(t, remote)
	d := m.path("d")
	if err := os.Mkdir(d, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"s1", "s2"} {
		if err := os.Mkdir(filepath.Join(d, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if st := lstat(t, d); st.Nlink != 4 || st.Mode != syscall.S_IFDIR|0o700 {
		t.Errorf("folder with 2 subfolders: nlink %d mode %o, want 4 and 700", st.Nlink, st.Mode)
	}
	old := time.Unix(1200000000, 0)
	if err := os.Chtimes(d, old, old); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, d); st.Mtim.Sec != 1200000000 {
		t.Errorf("folder mtime after utimes: %d", st.Mtim.Sec)
	}
	if err := os.WriteFile(filepath.Join(d, "new"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, d); st.Mtim.Sec == 1200000000 || st.Ctim.Sec == 1200000000 {
		t.Errorf("folder mtime/ctime did not follow a create inside: %d/%d", st.Mtim.Sec, st.Ctim.Sec)
	}
	if err := os.Chtimes(d, old, old); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	st := lstat(t, d)
	if st.Uid != 1234 || st.Gid != 5678 || st.Mtim.Sec != 1200000000 {
		t.Errorf("after chown: %d:%d mtime %d", st.Uid, st.Gid, st.Mtim.Sec)
	}
	m.sync(t)
	other := mountPOSIX(t, remote)
	st2 := lstat(t, other.path("d"))
	if st2.Uid != 1234 || st2.Gid != 5678 || st2.Mtim.Sec != 1200000000 || st2.Mode != syscall.S_IFDIR|0o700 {
		t.Errorf("on another mount: %d:%d mtime %d mode %o", st2.Uid, st2.Gid, st2.Mtim.Sec, st2.Mode)
	}
}

func TestUnlinkedOpenFileHasNoLinks(t *testing.T) {
	m := mountPOSIX(t, newMemStore())
	if err := os.WriteFile(m.path("uploaded"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.sync(t)
	w, err := os.Create(m.path("gone"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r, err := os.Open(m.path("uploaded"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, f := range []*os.File{w, r} {
		if err := os.Remove(f.Name()); err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		if st.Nlink != 0 {
			t.Errorf("fstat of %s, open and unlinked: nlink %d, want 0", f.Name(), st.Nlink)
		}
	}
}

func TestAtimeAloneIsKept(t *testing.T) {
	remote := newMemStore()
	m := mountPOSIX(t, remote)
	p := m.path("f")
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	m.sync(t)
	mtime := lstat(t, p).Mtim
	// utimensat(atime, UTIME_OMIT)
	ts := []syscall.Timespec{{Sec: 1900000000}, {Nsec: (1 << 30) - 2}}
	if err := syscall.UtimesNano(p, ts); err != nil {
		t.Fatal(err)
	}
	m.sync(t) // an upload finishing must not forget it
	st := lstat(t, p)
	if st.Atim.Sec != 1900000000 || st.Mtim != mtime {
		t.Errorf("atime %d mtime %v, want 1900000000 and %v", st.Atim.Sec, st.Mtim, mtime)
	}
	if st := lstat(t, mountPOSIX(t, remote).path("f")); st.Atim.Sec != 1900000000 {
		t.Errorf("on another mount: atime %d", st.Atim.Sec)
	}
}

func TestSymlinksAndSpecialFiles(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0))
	remote := newMemStore()
	m := mountPOSIX(t, remote)
	links := map[string]string{"rel": "sub/target.txt", "abs": "/etc/hostname", "dangling": "../nowhere/at/all"}
	for name, target := range links {
		if err := os.Symlink(target, m.path(name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(m.path("fifo"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mknod(m.path("sock"), syscall.S_IFSOCK|0o600, 0); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mknod(m.path("null"), syscall.S_IFCHR|0o666, 1<<8|3); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(m.path("rel"), 42, 43); err != nil {
		t.Fatal(err)
	}
	check := func(mnt *posixMount, where string) {
		for name, target := range links {
			got, err := os.Readlink(mnt.path(name))
			if err != nil || got != target {
				t.Errorf("%s: readlink %s = %q, %v; want %q", where, name, got, err, target)
			}
			st := lstat(t, mnt.path(name))
			if st.Mode&syscall.S_IFMT != syscall.S_IFLNK || st.Size != int64(len(target)) {
				t.Errorf("%s: lstat %s: mode %o size %d", where, name, st.Mode, st.Size)
			}
		}
		if st := lstat(t, mnt.path("rel")); st.Uid != 42 || st.Gid != 43 {
			t.Errorf("%s: lchown'd link owned by %d:%d", where, st.Uid, st.Gid)
		}
		if st := lstat(t, mnt.path("fifo")); st.Mode != syscall.S_IFIFO|0o640 {
			t.Errorf("%s: fifo mode %o", where, st.Mode)
		}
		if st := lstat(t, mnt.path("sock")); st.Mode != syscall.S_IFSOCK|0o600 {
			t.Errorf("%s: socket mode %o", where, st.Mode)
		}
		if st := lstat(t, mnt.path("null")); st.Mode != syscall.S_IFCHR|0o666 || st.Rdev != 1<<8|3 {
			t.Errorf("%s: device mode %o rdev %x", where, st.Mode, st.Rdev)
		}
		ents, err := os.ReadDir(mnt.dir)
		if err != nil {
			t.Fatal(err)
		}
		types := map[string]os.FileMode{}
		for _, e := range ents {
			types[e.Name()] = e.Type()
		}
		if types["abs"] != os.ModeSymlink || types["fifo"] != os.ModeNamedPipe || types["sock"] != os.ModeSocket {
			t.Errorf("%s: readdir types %v", where, types)
		}
	}
	check(m, "this mount")
	// A FIFO works: the kernel serves it.
	done := make(chan error, 1)
	go func() { done <- os.WriteFile(m.path("fifo"), []byte("through the pipe"), 0) }()
	if got, err := os.ReadFile(m.path("fifo")); err != nil || string(got) != "through the pipe" {
		t.Errorf("read from the fifo: %q, %v", got, err)
	}
	if err := <-done; err != nil {
		t.Errorf("write to the fifo: %v", err)
	}
	m.sync(t)
	if body, ok := remote.Content("rel"); !ok || string(body) != links["rel"] {
		t.Errorf("the link's object holds %q (%v), want its target", body, ok)
	}
	check(mountPOSIX(t, remote), "another mount")
}
