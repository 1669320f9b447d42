// Package attrindex keeps the attribute index of a bucket: one sidecar
// object per folder, <folder>/.nimbus-attrs, that holds the POSIX
// attributes (type, mode, owner, times, device number, a short symlink
// target) of the files and folders in it. It is a backend decorator: the
// listings of an Index carry those attributes (backend.ObjectInfo.Attrs,
// backend.Page.PrefixAttrs) and never show a sidecar, so the vfs sees
// complete entries and never parses one.
//
// # Why a sidecar
//
// The attributes set on a mount travel as object metadata, which S3
// listings do not carry, and a HEAD per listed file would break the promise
// that a listing costs ceil(n/1000) requests. So every folder a mount
// uploads into also gets a sidecar:
//
//	{"version":1,"files":{"a.sh":{"etag":"…","mtime":<Unix ns>,"mode":488}}}
//
// Each entry describes the version of the file whose ETag it names; a
// folder's entry has no ETag (a listing does not show a marker's). A
// listing that holds the sidecar GETs it (only when its ETag changed since
// this mount last read or wrote it), once per listing, and gives each listed file whose ETag
// matches its entry those attributes; an entry for another version is
// ignored, so a stale sidecar is harmless. Object metadata stays the source
// of truth: open still HEADs the file and applies what it finds.
//
// A listing's pages are passed on as they arrive, not once all are read:
// only those before the place where the sidecar's key sorts wait, for the
// sidecar (List), so a reader of a large folder sees its first entries
// after one request.
//
// # Recording: told by the vfs
//
// The decorator does not watch writes go by: the journal uploads through
// the undecorated store, a sidecar entry needs the attributes the upload
// carried as the mount's tree holds them (an upload's metadata alone does
// not say them for a copy or a folder), and only the vfs knows which keys
// it shows. So the vfs reports each completed upload, copy, delete and
// folder removal (SetFile, SetFolder, Forget, FolderRemoved) through an
// interface it declares itself, and a nil one there turns recording off
// (a read-only mount), while listings still read the sidecars.
//
// # Writing
//
// Writes are batched per folder: the changes of a folder are written
// together once none came for the debounce (200 ms), or maxGather (5 s)
// after the first of them when they keep coming, by a few writers. So a
// stream of uploads into a folder (an untar, a copy of a tree) rewrites
// its sidecar every few seconds, not at every fifth of one. A write reads the
// sidecar, merges, and writes it back with If-Match (If-None-Match when
// there was none), again after a 412, so mounts writing into one folder at
// once all end up in it. The sidecar of a folder this mount has not seen
// (one made here) is first taken to be absent, which saves a HEAD per new
// folder. When the store cannot be reached the changes wait
// and are retried on backend.NewBackoff's schedule; changes the store
// refuses are dropped (the metadata has them). A sidecar left with no
// entry, or in a folder removed through the mount, is deleted: a key under
// a prefix keeps the folder alive in S3. Meanwhile the listings hide such
// a folder, which its sidecar alone would list again. A sidecar whose key
// a pending journal op moves (a folder rename) waits for it.
//
// Close writes what is pending for a few seconds while the store is
// reachable, then ends the writers; Flush (nimbus sync) waits for all of
// it, and its error says which folders wait and why.
//
// # Locking
//
// Index.mu guards the folders' write state and the seen cache has its own
// lock; both are leaves. The vfs records changes with its own locks held
// (FS.localMu), so no request is made and no Config func (which asks the
// vfs or the journal) is called while either is held.
package attrindex

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/nimbus-fs/nimbus/backend"
)

// Name is the sidecar's name in each folder. The vfs reserves it: no file
// or folder may take it.
const Name = ".nimbus-attrs"

// MaxTarget bounds the symlink targets kept in the index; a longer one is
// read from the link's body.
const MaxTarget = 1024

const (
	indexVersion = 1
	// maxIndexSize bounds a sidecar read or written (about 150,000 files
	// in one folder); a larger one is ignored.
	maxIndexSize = 16 << 20
	// defaultDebounce is how long a folder's changes gather before they
	// are written: a thousand creates in a folder cost a few writes, not
	// 1,000.
	defaultDebounce = 200 * time.Millisecond
	// maxGather bounds how long changes that keep coming wait: other
	// mounts see a folder's attributes at most this late (plus the write).
	maxGather = 5 * time.Second
	// writers bounds the folders written at once.
	writers = 4
	// maxWrites bounds the read-merge-write rounds of one flush that lose
	// to other writers (412); then it is retried later.
	maxWrites  = 5
	backoffMin = time.Second
	backoffMax = time.Minute
	// finalFlush bounds the writing of pending changes at Close.
	finalFlush = 3 * time.Second
	// The sidecars remembered (read or written), by folders and by
	// entries in all, bound the memory they hold.
	maxSeenFolders = 4096
	maxSeenEntries = 100_000
	// maxKeyLen is S3's key limit: a folder deeper than that has no
	// sidecar.
	maxKeyLen = 1024
	// maxListed bounds the folders an error message names.
	maxListed = 10
)

// Config tells an Index about the mount it serves. Every func may be nil.
type Config struct {
	Logger *slog.Logger
	// Root is the key prefix of the mount's root ("" or ending in "/"):
	// messages name folders below it.
	Root string
	// Online reports whether the store is believed reachable; Close
	// writes what is pending only then. nil: always.
	Online func() bool
	// Pending reports whether a journal op on key waits to be uploaded,
	// PendingUnder one on a key under prefix. nil: never.
	Pending      func(key string) bool
	PendingUnder func(prefix string) bool
	// Shown reports whether the mount shows the folder whose prefix is
	// given ("a/b/"), ShownEmpty whether it shows nothing in it. nil:
	// not shown, and shown empty.
	Shown      func(prefix string) bool
	ShownEmpty func(prefix string) bool
}

// Index is a backend decorator whose listings carry the attributes of the
// sidecars, and the writer of those sidecars. Methods other than List and
// ListFlat go to the decorated store unchanged.
type Index struct {
	backend.Backend
	cfg        Config
	log        *slog.Logger
	debounce   time.Duration
	backoffMin time.Duration

	seen seenCache

	ctx    context.Context // ends the writers
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	folders map[string]*folder // GUARDED_BY(mu): by prefix, folders with changes to write or being written
	wake    chan struct{}      // GUARDED_BY(mu): closed when changes arrive
	settled chan struct{}      // GUARDED_BY(mu): closed when a write ends
	started bool               // GUARDED_BY(mu): the writers run
	off     bool               // GUARDED_BY(mu): the store refuses sidecar keys
}

var _ backend.Backend = (*Index)(nil)

// New returns the index of the mount that cfg describes, over store.
func New(store backend.Backend, cfg Config) *Index {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := &Index{
		Backend:    store,
		cfg:        cfg,
		log:        log,
		debounce:   defaultDebounce,
		backoffMin: backoffMin,
		ctx:        ctx,
		cancel:     cancel,
		folders:    make(map[string]*folder),
		wake:       make(chan struct{}),
		settled:    make(chan struct{}),
	}
	x.seen.init()
	return x
}

// record is the attributes of one version of a file, or of a folder (no
// ETag). Fields other than those three are absent from older indexes,
// which this reads as before; older versions ignore them, and a mode with
// type bits (> 0o7777).
type record struct {
	ETag  string `json:"etag"`
	MTime int64  `json:"mtime"` // Unix ns; 0: unknown
	// Mode is st_mode (permission bits alone: a regular file, as older
	// versions wrote); 0: unknown.
	Mode  uint32  `json:"mode"`
	UID   *uint32 `json:"uid,omitempty"` // nil: the mounting user's
	GID   *uint32 `json:"gid,omitempty"`
	ATime int64   `json:"atime,omitempty"`
	CTime int64   `json:"ctime,omitempty"`
	Link  string  `json:"link,omitempty"` // a symlink's target, when short
	Rdev  uint32  `json:"rdev,omitempty"`
}

// doc is a sidecar's content.
type doc struct {
	Version int               `json:"version"`
	Files   map[string]record `json:"files"`
}

// recordOf is the record of attributes a, of version etag ("" for a
// folder).
func recordOf(a backend.Attrs, etag string) *record {
	rec := &record{ETag: etag, Mode: a.Mode, MTime: unixNanoOf(a.MTime), ATime: unixNanoOf(a.ATime), CTime: unixNanoOf(a.CTime), Rdev: a.Rdev}
	if a.Mode&syscall.S_IFMT == syscall.S_IFREG && a.Mode&0o7777 != 0 {
		rec.Mode = a.Mode & 0o7777 // as older versions wrote and read it
	}
	if a.Owner {
		uid, gid := a.UID, a.GID
		rec.UID, rec.GID = &uid, &gid
	}
	if len(a.Target) <= MaxTarget {
		rec.Link = a.Target
	}
	return rec
}

// attrs is what rec says, in a listing's form.
func (rec record) attrs() backend.Attrs {
	a := backend.Attrs{Mode: rec.Mode, Rdev: rec.Rdev, Target: rec.Link}
	if a.Mode != 0 && a.Mode&syscall.S_IFMT == 0 {
		a.Mode |= syscall.S_IFREG // permission bits alone: a regular file
	}
	if rec.MTime != 0 {
		a.MTime = time.Unix(0, rec.MTime)
	}
	if rec.ATime != 0 {
		a.ATime = time.Unix(0, rec.ATime)
	}
	if rec.CTime != 0 {
		a.CTime = time.Unix(0, rec.CTime)
	}
	if rec.UID != nil && rec.GID != nil {
		a.Owner, a.UID, a.GID = true, *rec.UID, *rec.GID
	}
	return a
}

func unixNanoOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// same reports whether two records say the same.
func (rec record) same(o record) bool {
	eq := func(a, b *uint32) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	return rec.ETag == o.ETag && rec.MTime == o.MTime && rec.Mode == o.Mode && eq(rec.UID, o.UID) && eq(rec.GID, o.GID) &&
		rec.ATime == o.ATime && rec.CTime == o.CTime && rec.Link == o.Link && rec.Rdev == o.Rdev
}

// sidecar is one version of a folder's index: etag "" when there was none.
// files is nil when it is absent or malformed (a write replaces it).
// unusable marks one this version must leave alone (too large, newer).
type sidecar struct {
	etag     string
	files    map[string]record
	unusable bool
}

var (
	// errBusy: a journal op on the sidecar's key is pending (a folder
	// rename moving it), or, for a removed folder, one under it; the
	// write waits for them.
	errBusy = errors.New("waiting for pending uploads")
	// errUnusable: a sidecar this version cannot merge into (too large,
	// or a newer format); it is left alone.
	errUnusable = errors.New("attribute index unusable")
)

// folder is the state of one folder's sidecar writes.
type folder struct {
	changes map[string]*record // by name; nil: remove the name
	// written: the changes of the write running, which the sidecar in
	// the store does not have yet either.
	written map[string]*record
	// gone: the folder was removed through the mount; its sidecar goes
	// unless something shows in it again.
	gone     bool
	due      time.Time
	since    time.Time // when the oldest change waiting came
	writing  bool
	clearing bool             // the write running deletes a gone folder's sidecar
	attempts int              // failed writes in a row
	retry    *backend.Backoff // the delays between them; nil until one fails
	lastErr  error            // the last failure, for Flush
}

func (st *folder) idle() bool { return len(st.changes) == 0 && !st.gone }

// job is the changes one write takes.
type job struct {
	dir     string // the folder's prefix
	changes map[string]*record
	gone    bool
	retry   bool // an earlier write of the folder failed
}

// IsKey reports whether key is a folder's sidecar.
func IsKey(key string) bool {
	return key == Name || strings.HasSuffix(key, "/"+Name)
}

// split returns the prefix of the folder that holds key (a file, or a
// folder "a/b/") and its name there.
func split(key string) (dir, name string) {
	key = strings.TrimSuffix(key, "/")
	i := strings.LastIndexByte(key, '/')
	return key[:i+1], key[i+1:]
}

func keyOf(dir string) string { return dir + Name }

// shown says what the mount shows of a folder; see Config.
func (x *Index) shown(dir string) bool {
	return x.cfg.Shown != nil && x.cfg.Shown(dir)
}

func (x *Index) shownEmpty(dir string) bool {
	return x.cfg.ShownEmpty == nil || x.cfg.ShownEmpty(dir)
}

func (x *Index) pending(key string) bool {
	return x.cfg.Pending != nil && x.cfg.Pending(key)
}

func (x *Index) pendingUnder(prefix string) bool {
	return x.cfg.PendingUnder != nil && x.cfg.PendingUnder(prefix)
}

// unwritten returns the changes of folder dir that its sidecar in the
// store may not have yet (waiting, or being written), newest last: a
// listing shows them over the sidecar's entries. A chmod or touch keeps
// the file's ETag, so without them a listing in between would show the
// attributes from before it.
func (x *Index) unwritten(dir string) map[string]*record {
	x.mu.Lock()
	defer x.mu.Unlock()
	st := x.folders[dir]
	if st == nil || len(st.written)+len(st.changes) == 0 {
		return nil
	}
	out := make(map[string]*record, len(st.written)+len(st.changes))
	maps.Copy(out, st.written)
	maps.Copy(out, st.changes)
	return out
}

// --- reading: the decorated listings ---

// List lists prefix as the store does, without the folder's sidecar, and
// gives each listed file whose version the sidecar describes, and each
// folder it describes, those attributes. A folder removed through this
// mount whose sidecar is being deleted is left out (the sidecar alone
// would list it). A sidecar that cannot be read is logged and ignored.
//
// The pages stream: the sidecar's key has one place in the listing's
// order, so once a page reaches that place whether the folder has one is
// known, it is read (once), and that page, the ones held before it and
// every later one are passed on with its attributes. Only the pages before
// that place are held, and there are rarely any: the key sorts before
// every name that does not begin with one of ` !"#$%&'()*+,-`.
func (x *Index) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	l := &listing{x: x, prefix: prefix, key: keyOf(prefix), fn: fn}
	if err := x.Backend.List(ctx, prefix, func(p backend.Page) error { return l.page(ctx, p) }); err != nil {
		return err
	}
	if l.resolved {
		return nil
	}
	return l.resolve(ctx) // the listing ended before the sidecar's place
}

// listing is the state of one decorated List.
type listing struct {
	x           *Index
	prefix, key string // the folder's prefix and its sidecar's key
	fn          func(backend.Page) error
	sidecar     *backend.ObjectInfo // once listed
	held        []backend.Page      // read before the sidecar's place
	resolved    bool                // the sidecar's place is passed: files is its entries
	files       map[string]record
	unwritten   map[string]*record // this mount's changes not in files (see unwritten)
}

// page takes the next page of the store's listing.
func (l *listing) page(ctx context.Context, p backend.Page) error {
	if l.resolved {
		return l.pass(p)
	}
	passed := false
	for i := range p.Objects {
		if p.Objects[i].Key == l.key {
			o := p.Objects[i]
			l.sidecar = &o
		}
		passed = passed || p.Objects[i].Key >= l.key
	}
	for _, d := range p.Prefixes {
		// A folder "a/" sorts where its first key does: after the key
		// when it does (no key under it begins with the sidecar's name).
		passed = passed || d >= l.key
	}
	l.held = append(l.held, p)
	if !passed {
		return nil
	}
	return l.resolve(ctx)
}

// resolve reads the sidecar (if any) and passes on the held pages.
func (l *listing) resolve(ctx context.Context) error {
	// Before the sidecar is read: a change written meanwhile is then in
	// one or the other.
	l.unwritten = l.x.unwritten(l.prefix)
	l.files = l.x.forListing(ctx, l.prefix, l.key, l.sidecar)
	l.resolved = true
	held := l.held
	l.held = nil
	for _, p := range held {
		if err := l.pass(p); err != nil {
			return err
		}
	}
	return nil
}

// pass hands a page to fn, with the sidecar's attributes and without the
// keys to hide.
func (l *listing) pass(p backend.Page) error {
	x, prefix := l.x, l.prefix
	if l.sidecar == nil && !x.anyGone() && len(l.unwritten) == 0 {
		return l.fn(p) // nothing to add or hide: the page as the store gave it
	}
	out := backend.Page{Objects: make([]backend.ObjectInfo, 0, len(p.Objects)), Prefixes: make([]string, 0, len(p.Prefixes))}
	for _, o := range p.Objects {
		if o.Key == l.key {
			continue
		}
		if rec, ok := l.entry(strings.TrimPrefix(o.Key, prefix)); ok && rec.ETag != "" && rec.ETag == o.ETag {
			a := rec.attrs()
			o.Attrs = &a
		}
		out.Objects = append(out.Objects, o)
	}
	for _, d := range p.Prefixes {
		if x.clearing(d) && !x.shown(d) {
			continue
		}
		if rec, ok := l.entry(strings.TrimSuffix(strings.TrimPrefix(d, prefix), "/")); ok && rec.ETag == "" {
			if out.PrefixAttrs == nil {
				out.PrefixAttrs = make(map[string]backend.Attrs)
			}
			out.PrefixAttrs[d] = rec.attrs()
		}
		out.Prefixes = append(out.Prefixes, d)
	}
	return l.fn(out)
}

// entry is what the listing shows of name: this mount's change not written
// yet, else the sidecar's entry.
func (l *listing) entry(name string) (record, bool) {
	if rec, ok := l.unwritten[name]; ok {
		if rec == nil {
			return record{}, false // forgotten here
		}
		return *rec, true
	}
	rec, ok := l.files[name]
	return rec, ok
}

// ListFlat lists every key under prefix as the store does, sidecars left
// out: they are rewritten by the index, never moved or pinned.
func (x *Index) ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	return x.Backend.ListFlat(ctx, prefix, func(p backend.Page) error {
		objs := make([]backend.ObjectInfo, 0, len(p.Objects))
		for _, o := range p.Objects {
			if !IsKey(o.Key) {
				objs = append(objs, o)
			}
		}
		p.Objects = objs
		return fn(p)
	})
}

// forListing returns the entries of the sidecar of folder dir as a listing
// found it (info nil: none), reading it only when its ETag is not the one
// last seen.
func (x *Index) forListing(ctx context.Context, dir, key string, info *backend.ObjectInfo) map[string]record {
	if info == nil {
		x.seen.put(dir, sidecar{})
		return nil
	}
	if s, ok := x.seen.get(dir); ok && s.etag == info.ETag {
		return s.files
	}
	if info.Size > maxIndexSize {
		x.log.Warn("attribute index too large, ignored", "key", key, "size", info.Size, "max", maxIndexSize)
		x.seen.put(dir, sidecar{etag: info.ETag, unusable: true})
		return nil
	}
	s, err := x.read(ctx, key, info.ETag)
	switch {
	case errors.Is(err, backend.ErrPrecondition):
		// Rewritten since the listing: the next listing has the new one.
		x.log.Debug("attribute index changed while listing", "key", key)
		return nil
	case errors.Is(err, errUnusable):
		x.log.Warn("attribute index ignored", "key", key, "err", err)
		x.seen.put(dir, sidecar{etag: info.ETag, unusable: true}) // not read again until it changes
		return nil
	case err != nil:
		x.log.Info("attribute index not read; mode and mtime show after open", "key", key, "err", err)
		return nil
	}
	x.seen.put(dir, s)
	return s.files
}

// read returns the sidecar under key: ifMatch "" finds its ETag first
// (one HEAD), else the read fails with ErrPrecondition if its ETag is not
// ifMatch. An absent sidecar is sidecar{}. A malformed one has its etag and
// no files, so that a write replaces it; one that is too large or of a
// newer version fails with errUnusable.
func (x *Index) read(ctx context.Context, key, ifMatch string) (sidecar, error) {
	if ifMatch == "" {
		info, err := x.Backend.Stat(ctx, key)
		if errors.Is(err, backend.ErrNotFound) {
			return sidecar{}, nil
		}
		if err != nil {
			return sidecar{}, fmt.Errorf("read %q: %w", key, err)
		}
		ifMatch = info.ETag
	}
	r, err := x.Backend.Get(ctx, key, 0, -1, ifMatch)
	if errors.Is(err, backend.ErrNotFound) {
		// Deleted since its ETag was found: the writer reads again.
		return sidecar{}, fmt.Errorf("read %q: %w", key, backend.ErrPrecondition)
	}
	if err != nil {
		return sidecar{}, fmt.Errorf("read %q: %w", key, err)
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, maxIndexSize+1))
	if err != nil {
		return sidecar{}, fmt.Errorf("read %q: %w", key, err)
	}
	if len(data) > maxIndexSize {
		return sidecar{}, fmt.Errorf("%q is over %d bytes: %w", key, maxIndexSize, errUnusable)
	}
	var d doc
	if err := json.Unmarshal(data, &d); err != nil || d.Version < indexVersion {
		x.log.Warn("malformed attribute index, ignored", "key", key, "err", err)
		return sidecar{etag: ifMatch}, nil
	}
	if d.Version > indexVersion {
		return sidecar{}, fmt.Errorf("%q has version %d, newer than %d: %w", key, d.Version, indexVersion, errUnusable)
	}
	return sidecar{etag: ifMatch, files: d.Files}, nil
}

// Recorded returns the attributes that the sidecar of key's folder, as
// this mount last saw it, holds for key in one of the versions etags. A
// server-side copy looks its source up there: a folder rename shows the
// moved files without their attributes.
func (x *Index) Recorded(key string, etags ...string) (backend.Attrs, bool) {
	dir, name := split(key)
	s, _ := x.seen.get(dir)
	rec, ok := s.files[name]
	if !ok {
		return backend.Attrs{}, false
	}
	for _, etag := range etags {
		if rec.ETag == etag {
			return rec.attrs(), true
		}
	}
	return backend.Attrs{}, false
}

// --- recording, told by the vfs ---

// SetFile records that version etag of the file at key has attributes a,
// to be written into its folder's sidecar after the debounce.
func (x *Index) SetFile(key, etag string, a backend.Attrs) {
	dir, name := split(key)
	x.change(dir, name, recordOf(a, etag))
}

// SetFolder records the attributes of the folder whose marker is key
// ("a/b/") in its parent's sidecar.
func (x *Index) SetFolder(key string, a backend.Attrs) {
	dir, name := split(key)
	x.change(dir, name, recordOf(a, ""))
}

// Forget records that the sidecar of key's folder has nothing to say of
// key (a file, or a folder "a/b/"): it was deleted, or uploaded without
// attributes.
func (x *Index) Forget(key string) {
	dir, name := split(key)
	x.change(dir, name, nil)
}

// FolderRemoved records that the folder with the given prefix ("a/b/")
// was removed through the mount: its sidecar goes once nothing shows in it
// and nothing under it waits to be uploaded.
func (x *Index) FolderRemoved(prefix string) {
	x.update(prefix, func(st *folder) { st.gone = true })
}

// change records that name's entry in the sidecar of folder dir becomes
// rec (nil: goes).
func (x *Index) change(dir, name string, rec *record) {
	x.update(dir, func(st *folder) { st.changes[name] = rec })
}

func (x *Index) update(dir string, apply func(*folder)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.off {
		return
	}
	st := x.folders[dir]
	if st == nil {
		st = &folder{changes: make(map[string]*record)}
		x.folders[dir] = st
	}
	if st.attempts == 0 { // else the retry schedule sets due
		now := time.Now()
		if st.idle() {
			st.since = now
		}
		st.due = now.Add(x.debounce)
		if last := st.since.Add(max(x.debounce, maxGather)); last.Before(st.due) {
			st.due = last
		}
	}
	apply(st)
	if !x.started {
		x.started = true
		for range writers {
			x.wg.Add(1)
			go x.writer()
		}
	}
	close(x.wake)
	x.wake = make(chan struct{})
}

// anyGone reports whether a folder removed here may still have a sidecar.
func (x *Index) anyGone() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, st := range x.folders {
		if st.gone || st.clearing {
			return true
		}
	}
	return false
}

// clearing reports whether the sidecar of folder dir is to be deleted, or
// being deleted, because the folder was removed here.
func (x *Index) clearing(dir string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	st := x.folders[dir]
	return st != nil && (st.gone || st.clearing)
}

// --- writing ---

// writer writes the folders whose changes are due, until the index stops.
func (x *Index) writer() {
	defer x.wg.Done()
	for x.ctx.Err() == nil {
		j, wake, wait := x.next(time.Now())
		if j != nil {
			x.finish(j, x.write(x.ctx, j))
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-x.ctx.Done():
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// next takes the changes of a folder that is due, or says what to wait for.
func (x *Index) next(now time.Time) (j *job, wake <-chan struct{}, wait time.Duration) {
	x.mu.Lock()
	defer x.mu.Unlock()
	wait = time.Hour
	for dir, st := range x.folders {
		if st.writing || st.idle() {
			continue
		}
		if d := st.due.Sub(now); d > 0 {
			wait = min(wait, d)
			continue
		}
		j = &job{dir: dir, changes: st.changes, gone: st.gone, retry: st.attempts > 0}
		st.written = j.changes
		st.changes, st.gone = make(map[string]*record), false
		st.writing, st.clearing = true, j.gone
		return j, nil, 0
	}
	return nil, x.wake, wait
}

// finish records the outcome of a write: failed changes go back to wait
// (under newer ones) when the store may take them later.
func (x *Index) finish(j *job, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	st := x.folders[j.dir]
	st.writing, st.clearing = false, false
	st.written = nil // in the sidecar now, or back in changes (requeue)
	now := time.Now()
	switch {
	case err == nil:
		st.succeeded()
	case errors.Is(err, errBusy):
		st.requeue(j)
		st.due = now.Add(x.debounce)
	case errors.Is(err, backend.ErrInvalidKey) && !x.off:
		// The key is within S3's limits (write checks), so the store
		// refuses the name itself: no folder can have a sidecar.
		x.log.Info("the store refuses the attribute index; mode and mtime show on other mounts after open only", "key", keyOf(j.dir), "err", err)
		x.off = true
	case errors.Is(err, backend.ErrAccess), errors.Is(err, backend.ErrNoBucket), errors.Is(err, errUnusable):
		x.log.Warn("attribute index not written; the attributes stay in object metadata", "key", keyOf(j.dir), "err", err)
		st.succeeded()
	default: // offline, lost races, anything that may pass later
		st.requeue(j)
		if st.retry == nil {
			st.retry = backend.NewBackoff(x.backoffMin, backoffMax)
		}
		st.attempts++
		st.lastErr = err
		st.due = now.Add(st.retry.Next())
		x.log.Debug("attribute index write failed, retrying", "key", keyOf(j.dir), "attempt", st.attempts, "err", err)
	}
	if x.off {
		for dir, other := range x.folders {
			if !other.writing {
				delete(x.folders, dir)
			}
		}
	} else if st.idle() {
		delete(x.folders, j.dir)
	}
	close(x.settled)
	x.settled = make(chan struct{})
}

// succeeded ends a run of failed writes.
func (st *folder) succeeded() {
	st.attempts, st.lastErr = 0, nil
	if st.retry != nil {
		st.retry.Reset()
	}
}

// requeue puts back the changes of a failed write, under newer ones.
func (st *folder) requeue(j *job) {
	for name, rec := range j.changes {
		if _, newer := st.changes[name]; !newer {
			st.changes[name] = rec
		}
	}
	st.gone = st.gone || j.gone
}

// write merges a job's changes into the folder's sidecar.
func (x *Index) write(ctx context.Context, j *job) error {
	key := keyOf(j.dir)
	if len(key) > maxKeyLen || !utf8.ValidString(key) {
		return nil // too deep for a sidecar: open still reads the metadata
	}
	if x.pending(key) {
		return errBusy
	}
	if j.gone && x.shownEmpty(j.dir) {
		// A folder renamed away moves its files one by one: their copies
		// look up their attributes in its sidecar until the last is done.
		if x.pendingUnder(j.dir) {
			return errBusy
		}
		return x.clear(ctx, j.dir, key)
	}
	// The version remembered saves a read; if it is stale, the write's
	// condition fails and the sidecar is read.
	cur, remembered := x.seen.get(j.dir)
	if !remembered && !j.retry {
		// A folder is listed (and so remembered) before anything is
		// made in it, except one made here: guess that it has no
		// sidecar yet. The write is then one PUT If-None-Match instead
		// of a HEAD first; a 412 says there is one, read it then.
		cur, remembered = sidecar{}, true
	}
	for attempt := 1; ; attempt++ {
		if remembered && cur.unusable {
			return fmt.Errorf("%q: %w", key, errUnusable)
		}
		if !remembered {
			var err error
			if cur, err = x.read(ctx, key, ""); err != nil {
				return err
			}
		}
		files, changed := merge(cur.files, j.changes)
		if !changed {
			if !remembered {
				return nil
			}
			// Nothing to do to the version remembered, which may be
			// stale (an entry to remove that it lacks): make sure.
			remembered = false
			continue
		}
		err := x.save(ctx, j.dir, key, cur, files)
		if !errors.Is(err, backend.ErrPrecondition) || attempt >= maxWrites {
			return err
		}
		remembered = false // another mount wrote it meanwhile: read it again
	}
}

// save writes files as the sidecar of folder dir in place of version cur;
// a sidecar with no entry is deleted.
func (x *Index) save(ctx context.Context, dir, key string, cur sidecar, files map[string]record) error {
	if len(files) == 0 {
		if cur.etag != "" {
			if err := x.Backend.Delete(ctx, key, cur.etag); err != nil {
				return fmt.Errorf("delete %q: %w", key, err)
			}
		}
		x.seen.put(dir, sidecar{})
		return nil
	}
	body, err := json.Marshal(doc{Version: indexVersion, Files: files})
	if err != nil {
		return fmt.Errorf("encode %q: %w", key, err)
	}
	if len(body) > maxIndexSize {
		return fmt.Errorf("%q would be %d bytes, over %d: %w", key, len(body), maxIndexSize, errUnusable)
	}
	cond := backend.Cond{IfMatch: cur.etag, IfNoneMatch: cur.etag == ""}
	info, err := x.Backend.Put(ctx, key, bytes.NewReader(body), int64(len(body)), nil, cond)
	if err != nil {
		return fmt.Errorf("write %q: %w", key, err)
	}
	// Our next listing finds this version and need not read it.
	x.seen.put(dir, sidecar{etag: info.ETag, files: files})
	return nil
}

// clear deletes the sidecar of a folder removed through the mount. Another
// mount adding to the folder meanwhile loses only its sidecar entries.
func (x *Index) clear(ctx context.Context, dir, key string) error {
	if s, ok := x.seen.get(dir); ok && s.etag == "" {
		return nil // the folder's last listing or write had none
	}
	if err := x.Backend.Delete(ctx, key, ""); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	x.seen.put(dir, sidecar{})
	return nil
}

// merge applies changes to a copy of files, and reports whether that
// changed anything.
func merge(files map[string]record, changes map[string]*record) (map[string]record, bool) {
	out := make(map[string]record, len(files)+len(changes))
	for name, rec := range files {
		out[name] = rec
	}
	changed := false
	for name, rec := range changes {
		old, had := out[name]
		switch {
		case rec == nil && had:
			delete(out, name)
			changed = true
		case rec != nil && (!had || !old.same(*rec)):
			out[name] = *rec
			changed = true
		}
	}
	return out, changed
}

// Flush makes every pending change due now and waits until all are
// written (nimbus sync). When ctx ends first, the error names the folders
// whose sidecars wait and why (offline, say).
func (x *Index) Flush(ctx context.Context) error {
	x.mu.Lock()
	now := time.Now()
	for _, st := range x.folders {
		if !st.writing {
			st.due = now
		}
	}
	close(x.wake)
	x.wake = make(chan struct{})
	x.mu.Unlock()
	for {
		x.mu.Lock()
		if len(x.folders) == 0 {
			x.mu.Unlock()
			return nil
		}
		settled := x.settled
		x.mu.Unlock()
		select {
		case <-settled:
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", x.Describe(), ctx.Err())
		}
	}
}

// Describe says which folders' sidecars are not written, and why.
func (x *Index) Describe() string {
	x.mu.Lock()
	defer x.mu.Unlock()
	dirs := make([]string, 0, len(x.folders))
	for dir := range x.folders {
		dirs = append(dirs, dir)
	}
	sort.Strings(dirs)
	var b strings.Builder
	fmt.Fprintf(&b, "attribute index of %d folder(s) not written:", len(dirs))
	for i, dir := range dirs {
		if i == maxListed {
			fmt.Fprintf(&b, " and %d more", len(dirs)-maxListed)
			break
		}
		st := x.folders[dir]
		why := "waiting for its turn"
		switch {
		case st.lastErr != nil:
			why = fmt.Sprintf("%d failed attempt(s), last: %v", st.attempts, st.lastErr)
		case st.writing:
			why = "being written"
		}
		fmt.Fprintf(&b, " %q (%s);", "/"+strings.TrimSuffix(strings.TrimPrefix(dir, x.cfg.Root), "/"), why)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// Close writes what is pending, for at most a few seconds while the store
// is reachable, then ends the writers. The mount is being torn down: what
// is not written stays in the objects' metadata.
func (x *Index) Close() {
	if x.cfg.Online == nil || x.cfg.Online() {
		ctx, cancel := context.WithTimeout(context.Background(), finalFlush)
		if err := x.Flush(ctx); err != nil {
			x.log.Info("unmounting before the attribute index was written; the attributes stay in object metadata", "err", err)
		}
		cancel()
	}
	x.cancel()
	x.wg.Wait()
}
