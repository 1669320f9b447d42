// Package vfs is the FUSE node tree of a Nimbus mount, built on go-fuse's fs
// API.
//
// # Metadata
//
// Directories are listed lazily, one at a time, with delimited listings, and
// the result is persisted in the cache's Tree (bbolt). Lookup, Getattr and
// Readdir are answered from the Tree; a directory is re-listed only when its
// listing is older than DirTTL. No HEAD is made per entry: listings carry
// size, ETag and mtime, and, listed through the attribute index's
// decorator (backend/attrindex), each entry's mode, owner and times. The
// vfs reports what it uploads to that index (Config.Attrs) and has partial
// edits' snapshots made by backend/snapshots (Config.Snapshots): nimbus's
// own objects in the bucket live outside the vfs, and a nil capability is
// off. When the store cannot be reached, the stale listing
// is served, so a mount keeps browsing offline. A readdir that would wait
// for a listing is served from its pages as they arrive, and so is a
// lookup of a name they hold (dirstream.go).
//
// # Contents
//
// Open revalidates the file with one HEAD (close-to-open consistency) unless
// the store is known to be offline, then reads go through the block cache,
// pinned to the ETag seen at open: a reader never sees a mix of two
// versions. When the ETag changed, the kernel's page cache for the file is
// not kept (no FOPEN_KEEP_CACHE) and the old blocks are dropped.
//
// # Errors
//
// Errors travel wrapped (fmt.Errorf with %w) and become an errno in exactly
// one place, toErrno, which also logs them.
//
// Files entirely in the cache are opened in FUSE passthrough: the kernel
// reads their cache files itself (passthrough.go).
//
// # Writes
//
// A file being edited has a working copy in the journal's staging folder;
// close and fsync commit it to the journal before they return, and the
// journal uploads it with a condition on the version the edit began from.
// Local changes show in the tree at once (Local entries, tombstones for
// deletes) and listings do not override them until the journal reports
// the upload done (FS.Applied). write.go explains the working copy,
// namespace.go the namespace operations (rename_dir.go folder renames),
// applied.go the completions; pin.go and poll.go cover pinning and
// background re-listing.
//
// # Locking
//
// LOCK ORDER: FS.localMu, then fileNode.mu. localMu orders local changes
// (a journal Commit and the tree update that shows it) against the
// journal's completion reports; fileNode.mu guards a node's entry and
// working copy. Neither is held across a call to the store, with one
// exception: a partial working copy's missing ranges are fetched under
// fileNode.mu, so that no write changes them meanwhile. They are held
// across local disk work (an fsync at commit). The listing singleflight
// (FS.listMu), a streamed listing's listStream.mu and the pin jobs' map are
// leaf locks. Entry notifications are sent from goroutines, never while a
// lock is held or from inside the operation they concern (the kernel holds
// the folder's lock there). The one exception is Open's invalidation of
// the file's own attributes (NotifyContent with offset -1), which takes no
// lock an open holds.
//
// Across packages the order is:
//
//	vfs FS.localMu → vfs fileNode.mu → journal writeMu → journal mu
//	                                 → cache BlockStore flushMu → mu
//	vfs FS.localMu → attrindex Index.mu
//
// The journal calls FS.Applied with none of its locks held, the cache
// calls back into nothing, and the attribute index asks the vfs what it
// shows (FS.Shows) with none of its locks held, so no lock is ever taken
// against this order.
package vfs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
)

// lister is what the vfs needs from the object store.
type lister interface {
	List(ctx context.Context, prefix string, fn func(backend.Page) error) error
	ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error
	Stat(ctx context.Context, key string) (backend.ObjectInfo, error)
}

// onlineReporter says whether the store is believed reachable, so that the
// vfs can skip revalidation that would only fail.
type onlineReporter interface {
	Online() bool
}

// treeStore is what the vfs needs from the persisted tree.
type treeStore interface {
	Lookup(dir, name string) (cache.Entry, bool, error)
	Children(dir string, fn func(cache.Entry) bool) error
	ChildrenAfter(dir, after string, fn func(cache.Entry) bool) error
	LocalChildren(dir string, fn func(cache.Entry) bool) error
	Subdirs(dir string) (int, error)
	Dir(dir string) (cache.DirState, bool, error)
	ReplaceDir(dir string, entries []cache.Entry, skippedPrefix string, skipped []cache.Skipped, listedAt time.Time) error
	PutEntry(dir string, e cache.Entry) error
	RemoveEntry(dir, name string) error
	MarkStale(dir string) error
	MoveDir(srcDir, srcName, dstDir, dstName string) error
	LocalEntries(fn func(dir string, e cache.Entry) error) error
	Get(dir, name string) (cache.Entry, bool, error)
}

// contentCache is what the vfs needs from the block cache.
type contentCache interface {
	Open(c cache.Content) *cache.Handle
	HoldWhole(c cache.Content) (*cache.WholeHold, error)
	CachedBytes(c cache.Content) int64
	Forget(key, keepETag string)
	Pin(ctx context.Context, c cache.Content, progress func(n int64)) error
	Unpin(key string)
	Free(key string) int64
	Keys(prefix string) []string
}

// Config assembles a file system.
type Config struct {
	Store  lister
	Health onlineReporter // optional; nil means always online
	Tree   treeStore
	Blocks contentCache
	// Prefix is the key prefix of the mount's root: "" or ending in "/".
	Prefix string
	// DirTTL is how long a listing is trusted before it is re-listed.
	DirTTL time.Duration
	// Journal records local changes. It is required, so that no path
	// meets a nil journal: a read-only mount passes one too and sets
	// ReadOnly, which refuses every change before it reaches the journal
	// (the journal still uploads what an earlier mount left pending).
	Journal  journalLog
	ReadOnly bool
	// Pins is the persisted set of pinned paths.
	Pins pinSet
	// ControlSocket is reported by the user.nimbus.control xattr so that the
	// CLI finds the mount's daemon from any path inside it.
	ControlSocket string
	Logger        *slog.Logger
	// Attrs records the attributes of what the mount uploads in the
	// attribute index (backend/attrindex), whose decorator Store then
	// is; nil: nothing is recorded (a read-only mount).
	Attrs attrRecorder
	// Snapshots makes the snapshots of partial edits (backend/snapshots);
	// nil: every edit starts from a full copy (a read-only mount).
	Snapshots snapshotter
	// PartialMin is the size from which a file not all cached is edited
	// without downloading it first (partial.go); 0 turns that off.
	PartialMin int64
	// Trash: a file deleted here is first copied server-side to the trash
	// (package trash), for a store that keeps no versions. Renames never
	// go there.
	Trash bool
	// Passthrough lets the kernel read files entirely in the cache
	// straight from their cache files (passthrough.go), once mounted
	// with NodeFS and started with StartPassthrough.
	Passthrough bool
}

// FS is a mounted Nimbus tree.
type FS struct {
	cfg   Config
	log   *slog.Logger
	uid   uint32
	gid   uint32
	start time.Time

	listMu  sync.Mutex
	listing map[string]*listFlight // GUARDED_BY(listMu): listings in progress, by dir

	// localMu orders local changes (a journal Commit and the tree update
	// that shows it) against the journal's completion reports (applied),
	// so that a report never lands between the two. It is held for local
	// disk work only. LOCK ORDER: localMu before fileNode.mu.
	localMu sync.Mutex
	// applied counts, per directory, the completed uploads recorded in the
	// tree (FS.Applied), so that a listing that started before one of them
	// does not undo it. GUARDED_BY(localMu)
	applied map[string]uint64
	// moving holds, by new key, the live files a folder rename is copying
	// there, until the copy completes: the kernel moves a node only once
	// Rename returns, so a completion may come while the node is not at
	// its new path yet (resetMoved, settle). GUARDED_BY(localMu)
	moving map[string]*fileNode

	root *dirNode // set by Root

	rootMu    sync.Mutex
	rootAttrs cache.Entry // GUARDED_BY(rootMu): the root's mode, owner and times (not stored)

	watched watchSet    // directories to poll
	walk    walkState   // the folder read last, for walk read-ahead (walkahead.go)
	pinJobs pinJobs     // the latest pin job of each pinned path
	inodes  inodeBudget // bounds the file nodes the kernel keeps (evict.go)
	inos    inoTable    // the inode numbers of live nodes (ino.go)
	pt      passthroughState

	// bgCtx is the context of background work (listings, pin jobs,
	// kernel notifications), all started by background;
	// Stop ends it and waits for them.
	bgCtx  context.Context
	bgStop context.CancelFunc
	bgMu   sync.Mutex     // orders background's Add against Stop's Wait
	bgWG   sync.WaitGroup // the goroutines background started
}

type listFlight struct {
	done   chan struct{}
	err    error       // set before done is closed
	stream *listStream // its entries as they arrive, for readdir (dirstream.go)
}

// New returns the file system; Root gives the node to mount. The
// Journal and Tree of cfg are required.
func New(cfg Config) (*FS, error) {
	switch {
	case cfg.Journal == nil:
		return nil, errors.New("vfs: Config.Journal is required (a read-only mount passes one and sets ReadOnly)")
	case cfg.Tree == nil:
		return nil, errors.New("vfs: Config.Tree is required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	bgCtx, bgStop := context.WithCancel(context.Background())
	f := &FS{
		bgCtx:   bgCtx,
		bgStop:  bgStop,
		cfg:     cfg,
		log:     log,
		uid:     uint32(os.Getuid()),
		gid:     uint32(os.Getgid()),
		start:   time.Now(),
		listing: make(map[string]*listFlight),
		applied: make(map[string]uint64),
		moving:  make(map[string]*fileNode),
	}
	f.rootAttrs = cache.Entry{Dir: true, MTime: f.start}
	return f, nil
}

// background runs fn in a goroutine that Stop waits for, and reports
// whether it did: once Stop has begun, it starts nothing.
func (f *FS) background(fn func()) bool {
	f.bgMu.Lock()
	defer f.bgMu.Unlock()
	if f.bgCtx.Err() != nil {
		return false
	}
	f.bgWG.Add(1)
	go func() {
		defer f.bgWG.Done()
		fn()
	}()
	return true
}

// Stop ends background work (pin jobs, listings, kernel notifications)
// and returns once it is done; the mount is being torn down. The attribute
// index and the snapshots belong to whoever made them (cmd/nimbus).
func (f *FS) Stop() {
	f.bgMu.Lock()
	f.bgStop()
	f.bgMu.Unlock()
	f.bgWG.Wait()
}

// Root returns the root directory node.
func (f *FS) Root() fs.InodeEmbedder {
	f.root = &dirNode{fsys: f}
	return f.root
}

// Options returns the go-fuse options the file system is designed for.
func (f *FS) Options(name string, allowOther bool) *fs.Options {
	attr := time.Second
	var opts []string
	if allowOther {
		// Other users see the mount: the kernel enforces the stored modes
		// and owners for them (nimbus itself checks none).
		opts = append(opts, "default_permissions")
	}
	var disabled uint64
	if !f.cfg.Passthrough {
		disabled = fuse.CAP_PASSTHROUGH
	}
	return &fs.Options{
		EntryTimeout: &attr,
		AttrTimeout:  &attr,
		UID:          f.uid,
		GID:          f.gid,
		// Mode 0 is a real mode (a locked file), not "unset".
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			FsName:       name,
			Name:         "nimbus",
			DirectMount:  true,
			AllowOther:   allowOther,
			MaxWrite:     1 << 20,
			MaxReadAhead: 1 << 20,
			// Reads answer with bytes in memory, never a file
			// descriptor, so splicing gains nothing; and a 1 MiB read
			// does not fit the default pipe (1 MiB with the header), so
			// go-fuse tried, failed and logged "trySplice: … max pipe
			// size" for every such read.
			DisableSplice: true,
			// Parallel lookups and reads: the store is remote.
			MaxBackground:        64,
			Options:              opts,
			DisabledCapabilities: disabled,
		},
	}
}

func (f *FS) online() bool { return f.cfg.Health == nil || f.cfg.Health.Online() }

// dirKeyPrefix is the key prefix of the objects directly under dir.
func (f *FS) dirKeyPrefix(dir string) string {
	if dir == "" {
		return f.cfg.Prefix
	}
	return f.cfg.Prefix + dir + "/"
}

// fileKey is the object key of the file at path.
func (f *FS) fileKey(path string) string { return f.cfg.Prefix + path }

// ensureListed makes sure dir's children in the tree are no older than
// DirTTL, listing it if needed. Concurrent callers share one listing. When
// the listing fails but an older one exists, the older one is served (the
// store may be offline) and only the log says so.
func (f *FS) ensureListed(ctx context.Context, dir string) error {
	f.watched.touch(dir)
	st, known, err := f.cfg.Tree.Dir(dir)
	if err != nil {
		return err
	}
	if known && f.fresh(st) {
		return nil
	}
	if known && !f.online() {
		return nil
	}
	err = f.listShared(ctx, dir)
	if err != nil && known && !errors.Is(err, context.Canceled) {
		f.log.Info("serving stale listing", "dir", dir, "listed_at", st.ListedAt, "err", err)
		return nil
	}
	return err
}

// fresh reports whether a listing is young enough to be served as is.
func (f *FS) fresh(st cache.DirState) bool { return time.Since(st.ListedAt) < f.cfg.DirTTL }

// listShared lists dir once for all concurrent callers. The listing itself
// runs on the background context so that one caller's interrupt does not
// fail the others; each caller stops waiting when its own ctx ends.
func (f *FS) listShared(ctx context.Context, dir string) error {
	fl := f.joinListing(dir)
	select {
	case <-fl.done:
		return fl.err
	case <-ctx.Done():
		return fmt.Errorf("list %q: %w", dir, ctx.Err())
	}
}

// joinListing returns the listing of dir in flight, starting one if there
// is none.
func (f *FS) joinListing(dir string) *listFlight {
	f.listMu.Lock()
	fl, ok := f.listing[dir]
	if !ok {
		fl = &listFlight{done: make(chan struct{}), stream: newListStream(f.dirKeyPrefix(dir))}
		f.listing[dir] = fl
	}
	f.listMu.Unlock()
	if ok {
		return fl
	}
	run := func() {
		fl.err = f.listDirStreamed(f.bgCtx, dir, fl.stream)
		f.listMu.Lock()
		delete(f.listing, dir)
		f.listMu.Unlock()
		close(fl.done)
	}
	if !f.background(run) {
		run() // stopping: bgCtx is done, so it fails at once
	}
	return fl
}

// listDir lists dir from the store and records the result.
func (f *FS) listDir(ctx context.Context, dir string) error { return f.listDirStreamed(ctx, dir, nil) }

// listDirStreamed is listDir that also hands the first attempt's pages to
// stream (dirstream.go) as they arrive, and ends it; stream may be nil.
func (f *FS) listDirStreamed(ctx context.Context, dir string, stream *listStream) error {
	// A listing may miss an upload that completed while it ran, whose
	// Applied already showed it; recording such a listing would hide the
	// file until the next one. Then the directory is listed again.
	for attempt := 1; ; attempt++ {
		f.localMu.Lock()
		gen := f.applied[dir]
		f.localMu.Unlock()
		prefix := f.dirKeyPrefix(dir)
		started := time.Now()
		var pages []backend.Page
		npages := 0
		feed := stream
		if attempt > 1 {
			feed = nil // its readers have the first attempt's entries
		}
		err := f.cfg.Store.List(ctx, prefix, func(p backend.Page) error {
			npages++
			if feed != nil {
				// The stream keeps the entries, not the pages: the
				// kernel's lookups of a streamed folder take memory
				// while it is listed.
				feed.add(p)
				return nil
			}
			pages = append(pages, p)
			return nil
		})
		if feed != nil {
			feed.end(err)
		}
		if err != nil {
			return fmt.Errorf("list %q: %w", prefix, err)
		}
		// The entries have the attribute index's attributes: the store
		// is its decorator.
		var entries []cache.Entry
		var skipped []cache.Skipped
		if feed != nil {
			entries, skipped = feed.listing()
		} else {
			entries, skipped = listingToEntries(prefix, pages)
		}
		f.localMu.Lock()
		overtaken := f.applied[dir] != gen
		if !overtaken || attempt == maxRelist {
			// The listing time is when it started: changes made during
			// it may be missing, so its freshness must not be overstated.
			err = f.cfg.Tree.ReplaceDir(dir, entries, prefix, skipped, started)
		}
		f.localMu.Unlock()
		if overtaken && attempt < maxRelist {
			continue
		}
		if err != nil {
			return err
		}
		for _, s := range skipped {
			f.log.Warn("key cannot be shown, skipped", "key", s.Key, "reason", s.Reason)
		}
		f.log.Debug("listed", "dir", dir, "entries", len(entries), "pages", npages, "took", time.Since(started), "attempts", attempt)
		return nil
	}
}

// maxRelist bounds the listings of a directory that uploads keep
// overtaking; the last one is recorded anyway.
const maxRelist = 4

// rootEntry is the mount root's entry: its attributes live in memory.
func (f *FS) rootEntry() cache.Entry {
	f.rootMu.Lock()
	defer f.rootMu.Unlock()
	return f.rootAttrs
}
