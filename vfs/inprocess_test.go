package vfs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	bolt "go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// The in-process tier: the vfs node tree mounted with go-fuse inside the
// test binary, over the dir: store, with a real journal, tree and block
// cache in temporary folders, wired the way cmd/nimbus's serve does it.
// Tests act on the mount with ordinary syscalls, so that every FUSE
// operation runs through the kernel without building or starting the
// binary (that is integration/'s tier).

// tier is one in-process mount.
type tier struct {
	t      *testing.T
	mnt    string     // the mountpoint
	remote string     // the dir: store's folder
	store  *dir.Store // the store, to inspect what was uploaded
	fsys   *FS
	jour   *journal.Journal
	logs   *tierLog
	// startUploads starts the uploader of a tier made with holdUploads
	// (once; later calls do nothing).
	startUploads func()
	// parts is the journal's store when tierOpt.partSize is set.
	parts *partsDir
	// blocks is the block cache; staging the journal's staging folder.
	blocks  *cache.BlockStore
	staging string
}

// tierOpt adjusts a tier before it mounts.
type tierOpt struct {
	cacheSize int64         // default 64 MiB
	dirTTL    time.Duration // default 30 s, as nimbus mount's
	remote    string        // the store's folder; default a new, empty one
	// holdUploads keeps the uploader stopped until tier.startUploads, so
	// that a test can act while its changes are all pending.
	holdUploads bool
	// afterListFlat, if set, runs when a flat listing the vfs asked for
	// has been read from the store and before the vfs sees it.
	afterListFlat func(prefix string)
	// beforeListPage, if set, runs before each page of a delimited
	// listing the vfs asked for is handed over (page counts from 0).
	beforeListPage func(prefix string, page int)
	// partSize, if set, makes the journal's store take multipart parts of
	// that size (stream_test.go's partsDir), for uploads while writing.
	partSize int64
	// passthrough mounts through NodeFS with Config.Passthrough, as nimbus
	// mount does.
	passthrough bool
}

// requireFUSE fails the test without /dev/fuse in CI, and skips it elsewhere.
func requireFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("/dev/fuse is missing: the in-process tier needs FUSE (%v)", err)
		}
		t.Skipf("no FUSE here: %v", err)
	}
}

// newTier mounts a dir: store (a new, empty one unless opt.remote names
// one) with a fresh cache in t.TempDir(). Everything it starts
// is torn down by t.Cleanup, even when the test fails: unmount, wait for
// the server, then stop the uploader and close the databases.
func newTier(t *testing.T, opt tierOpt) *tier {
	t.Helper()
	requireFUSE(t)
	if opt.cacheSize == 0 {
		opt.cacheSize = 64 << 20
	}
	if opt.dirTTL == 0 {
		opt.dirTTL = 30 * time.Second
	}
	base := t.TempDir()
	m := &tier{t: t, mnt: filepath.Join(base, "mnt"), remote: filepath.Join(base, "remote"), logs: &tierLog{}}
	cacheDir := filepath.Join(base, "cache")
	mk := []string{m.mnt, cacheDir}
	if opt.remote != "" {
		m.remote = opt.remote
	} else {
		mk = append(mk, m.remote)
	}
	for _, d := range mk {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Logs go to a buffer shown when the test fails: background goroutines
	// may still log after the test returned, which t.Log forbids.
	log := slog.New(slog.NewTextHandler(m.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mount log (last lines):\n%s", m.logs.tail(tierLogLines()))
		}
	})

	var err error
	if m.store, err = dir.New(m.remote); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(cacheDir, "meta.db"), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeOrLog(t, "meta.db", db.Close) })
	treeDB, err := cache.OpenTreeDB(filepath.Join(cacheDir, "tree.db"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeOrLog(t, "tree.db", treeDB.Close) })
	tree, err := cache.OpenTree(treeDB.DB)
	if err != nil {
		t.Fatal(err)
	}
	pins, err := cache.OpenPins(db)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := cache.OpenBlockStore(cache.BlockStoreConfig{
		Dir: filepath.Join(cacheDir, "blocks"), DB: db, Fetcher: m.store, Capacity: opt.cacheSize, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeOrLog(t, "block cache", blocks.Close) })
	m.blocks, m.staging = blocks, filepath.Join(cacheDir, "staging")

	var fsys *FS // set below; the journal reports to it once running
	var jstore journal.Store = m.store
	if opt.partSize > 0 {
		m.parts = newPartsDir(m.store, opt.partSize)
		jstore = m.parts
	}
	m.jour, err = journal.Open(journal.Config{
		DB: db, Dir: m.staging, Store: jstore, Logger: log, Host: "tier",
		Applied: func(r journal.Result) { fsys.Applied(r) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeOrLog(t, "journal", m.jour.Close) })

	index, snaps := bucketObjects(t, m.store, m.jour, &fsys, "tier")
	var vfsStore lister = index
	if opt.afterListFlat != nil || opt.beforeListPage != nil {
		vfsStore = hookedStore{Backend: index, afterListFlat: opt.afterListFlat, beforeListPage: opt.beforeListPage}
	}
	fsys = mustNew(t, Config{
		Store: vfsStore, Tree: tree, Blocks: blocks, Journal: m.jour, Pins: pins,
		DirTTL: opt.dirTTL, Logger: log, Attrs: index, Snapshots: snaps, PartialMin: 32 << 20,
		Passthrough: opt.passthrough,
	})
	m.fsys = fsys
	t.Cleanup(index.Close) // after the FS stops
	t.Cleanup(fsys.Stop)
	if err := fsys.Reconcile(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	uploads := make(chan struct{})
	m.startUploads = sync.OnceFunc(func() {
		go func() {
			defer close(uploads)
			m.jour.Run(ctx)
		}()
	})
	if !opt.holdUploads {
		m.startUploads()
	}
	// Cleanups run last-in first-out: the uploader stops before the
	// journal closes, and after the server is gone (registered below).
	t.Cleanup(func() {
		cancel()
		m.startUploads() // a held uploader starts and stops at once
		<-uploads
	})

	var server *fuse.Server
	if opt.passthrough {
		opts := fsys.Options("tier:"+m.remote, false)
		if server, err = fuse.NewServer(fsys.NodeFS(opts), m.mnt, &opts.MountOptions); err == nil {
			go server.Serve()
			err = server.WaitMount()
		}
		if err == nil {
			fsys.StartPassthrough(server, cacheDir)
		}
	} else {
		server, err = fs.Mount(m.mnt, fsys.Root(), fsys.Options("tier:"+m.remote, false))
	}
	if err != nil {
		t.Fatalf("mount on %s: %v", m.mnt, err)
	}
	guardMount(t, m.mnt)
	t.Cleanup(func() {
		if err := server.Unmount(); err != nil {
			// A handle a failed test left open keeps the mount busy:
			// detach it so that Wait returns.
			t.Logf("unmount %s: %v; detaching lazily", m.mnt, err)
			if err := syscall.Unmount(m.mnt, syscall.MNT_DETACH); err != nil {
				t.Errorf("lazy unmount %s: %v", m.mnt, err)
				return // Wait would hang
			}
		}
		server.Wait()
	})
	return m
}

// hookedStore is the store with a hook between reading a flat listing
// and handing it over, and one before each page of a delimited listing is
// handed over (its other methods, the optional ones included, are the
// store's).
type hookedStore struct {
	backend.Backend
	afterListFlat  func(prefix string)           // nil: none
	beforeListPage func(prefix string, page int) // nil: none
}

func (s hookedStore) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	if s.beforeListPage == nil {
		return s.Backend.List(ctx, prefix, fn)
	}
	page := 0
	return s.Backend.List(ctx, prefix, func(p backend.Page) error {
		s.beforeListPage(prefix, page)
		page++
		return fn(p)
	})
}

func (s hookedStore) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	if s.afterListFlat == nil {
		return s.Backend.ListFlat(ctx, prefix, fn)
	}
	var pages []backend.Page
	if err := s.Backend.ListFlat(ctx, prefix, func(p backend.Page) error {
		pages = append(pages, p)
		return nil
	}); err != nil {
		return err
	}
	s.afterListFlat(prefix)
	for _, p := range pages {
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

func closeOrLog(t *testing.T, what string, close func() error) {
	if err := close(); err != nil {
		t.Errorf("close %s: %v", what, err)
	}
}

// path is rel's path on the mount.
func (m *tier) path(rel string) string { return filepath.Join(m.mnt, filepath.FromSlash(rel)) }

// sync waits, as nimbus sync does, until the journal has drained and the
// attribute index is written.
func (m *tier) sync(timeout time.Duration) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := m.jour.WaitIdle(ctx); err != nil {
		m.t.Fatalf("journal did not drain within %v: %v", timeout, err)
	}
	if err := m.fsys.FlushAttrs(ctx); err != nil {
		m.t.Fatalf("attribute index not written within %v: %v", timeout, err)
	}
}

// object returns what the store holds at key: content and metadata.
func (m *tier) object(key string) ([]byte, backend.ObjectInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := m.store.Stat(ctx, key)
	if err != nil {
		return nil, info, err
	}
	rc, err := m.store.Get(ctx, key, 0, -1, info.ETag)
	if err != nil {
		return nil, info, err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	return data, info, err
}

// remoteKeys lists every key of the store, nimbus's own hidden ones
// (".nimbus-attrs", ".nimbus-snapshots/…") left out.
func (m *tier) remoteKeys() []string {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var keys []string
	err := m.store.ListFlat(ctx, "", func(p backend.Page) error {
		for _, o := range p.Objects {
			if !ownKey(o.Key) {
				keys = append(keys, o.Key)
			}
		}
		return nil
	})
	if err != nil {
		m.t.Fatalf("list the store: %v", err)
	}
	sort.Strings(keys)
	return keys
}

// ownKey reports whether key is one of nimbus's own objects.
func ownKey(key string) bool {
	for _, seg := range strings.Split(key, "/") {
		if seg == ".nimbus-attrs" || seg == ".nimbus-snapshots" {
			return true
		}
	}
	return false
}

// tierLogLines is how many of its last log lines a failed test shows: 200,
// or NIMBUS_TIER_LOG_LINES (for a failure whose cause is further back).
func tierLogLines() int {
	if n, err := strconv.Atoi(os.Getenv("NIMBUS_TIER_LOG_LINES")); err == nil && n > 0 {
		return n
	}
	return 200
}

// tierLog collects a mount's log lines for a failed test's report.
type tierLog struct {
	mu  sync.Mutex
	buf bytes.Buffer // GUARDED_BY(mu)
}

func (l *tierLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 4<<20 { // keep the newest half
		tail := append([]byte(nil), l.buf.Bytes()[l.buf.Len()/2:]...)
		l.buf.Reset()
		l.buf.Write(tail)
	}
	return l.buf.Write(p)
}

func (l *tierLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(strings.TrimRight(l.buf.String(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// mustWriteAt writes data at off into the existing file rel on the mount.
func (m *tier) mustWriteAt(rel string, data []byte, off int64) {
	m.t.Helper()
	f, err := os.OpenFile(m.path(rel), os.O_WRONLY, 0)
	if err != nil {
		m.t.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		m.t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		m.t.Fatal(err)
	}
}

// mustWrite writes data to rel on the mount, creating or truncating it.
func (m *tier) mustWrite(rel string, data []byte) {
	m.t.Helper()
	if err := os.WriteFile(m.path(rel), data, 0o644); err != nil {
		m.t.Fatal(err)
	}
}

// mustRead returns rel's content on the mount.
func (m *tier) mustRead(rel string) []byte {
	m.t.Helper()
	data, err := os.ReadFile(m.path(rel))
	if err != nil {
		m.t.Fatal(err)
	}
	return data
}

// wantRemote requires the store to hold data at key once synced.
func (m *tier) wantRemote(key string, data []byte) backend.ObjectInfo {
	m.t.Helper()
	got, info, err := m.object(key)
	if err != nil {
		m.t.Fatalf("store: %q: %v", key, err)
	}
	if !bytes.Equal(got, data) {
		m.t.Fatalf("store: %q holds %d bytes %.40q, want %d bytes %.40q", key, len(got), got, len(data), data)
	}
	return info
}

// wantNoRemote requires key to be absent from the store.
func (m *tier) wantNoRemote(key string) {
	m.t.Helper()
	if _, _, err := m.object(key); !errors.Is(err, backend.ErrNotFound) {
		m.t.Fatalf("store: %q should be gone, got err %v", key, err)
	}
}

// names lists rel's folder on the mount, sorted.
func (m *tier) names(rel string) []string {
	m.t.Helper()
	ents, err := os.ReadDir(m.path(rel))
	if err != nil {
		m.t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() {
			n += "/"
		}
		out = append(out, n)
	}
	return out
}

// wantErrno requires err to carry errno want.
func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}
