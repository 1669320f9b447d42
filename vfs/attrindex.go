package vfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// The attribute index.
//
// The mode and mtime set on a mount travel as object metadata (attrMeta),
// which S3 listings do not carry, and a HEAD per listed file would break
// the promise that a listing costs ceil(n/1000) requests. So every folder a
// mount uploads into also gets a sidecar object, <folder>/.nimbus-attrs:
//
//	{"version":1,"files":{"a.sh":{"etag":"…","mtime":<Unix ns>,"mode":488}}}
//
// Each entry describes the version of the file whose ETag it names. A
// listing that holds the sidecar GETs it (only when its ETag changed since
// this mount last read or wrote it) and gives each listed file whose ETag
// matches its entry those attributes; an entry for another version is
// ignored, so a stale sidecar is harmless. Object metadata stays the source
// of truth: open still HEADs the file and applies what it finds.
//
// Writes are batched per folder: FS.Applied records each upload, copy and
// delete, and the folder's changes are written together attrDebounce after
// the first, by attrWriters workers. A write reads the sidecar, merges, and
// writes it back with If-Match (If-None-Match when there was none), again
// after a 412, so mounts writing into one folder at once all end up in it.
// When the store cannot be reached the changes wait and are retried with
// backoff; changes the store refuses are dropped (the metadata has them).
// A sidecar left with no entry, or in a folder removed through the mount,
// is deleted: a key under a prefix keeps the folder alive in S3.

// attrIndexName is the sidecar's name in each folder. reservedName keeps it
// (and the snapshots folder) out of listings and refuses it as a name.
const attrIndexName = ".nimbus-attrs"

const (
	attrIndexVersion = 1
	// maxAttrIndexSize bounds a sidecar read or written (about 150,000
	// files in one folder); a larger one is ignored.
	maxAttrIndexSize = 16 << 20
	// attrDebounce is how long a folder's changes gather before they are
	// written: a thousand creates in a folder cost a few writes, not 1,000.
	attrDebounce = 200 * time.Millisecond
	// attrWriters bounds the folders written at once.
	attrWriters = 4
	// maxAttrIndexWrites bounds the read-merge-write rounds of one flush
	// that lose to other writers (412); then it is retried later.
	maxAttrIndexWrites = 5
	attrBackoffMin     = time.Second
	attrBackoffMax     = time.Minute
	// attrFinalFlush bounds the writing of pending changes at unmount.
	attrFinalFlush = 3 * time.Second
	// The sidecars remembered (read or written), by folders and by entries
	// in all, bound the memory they hold.
	maxSeenFolders = 4096
	maxSeenEntries = 100_000
)

// attrStore is what the attribute index needs from the object store,
// besides listing.
type attrStore interface {
	Stat(ctx context.Context, key string) (backend.ObjectInfo, error)
	Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error)
	Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error)
	Delete(ctx context.Context, key string, ifMatch string) error
}

// attrDoc is a sidecar's content.
type attrDoc struct {
	Version int                   `json:"version"`
	Files   map[string]attrRecord `json:"files"`
}

// attrRecord is the attributes of one version of a file, or of a folder
// (no ETag: a listing does not show a marker's). Fields other than those
// three are absent from older indexes, which this reads as before; older
// versions ignore them, and a mode with type bits (> 0o7777).
type attrRecord struct {
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

// recordOf is the index record of e, version etag ("" for a folder).
func recordOf(e cache.Entry, etag string) *attrRecord {
	rec := &attrRecord{ETag: etag, Mode: e.Mode, ATime: unixNanoOf(e.ATime), CTime: unixNanoOf(e.CTime), Rdev: e.Rdev}
	if e.Type() == syscall.S_IFREG && e.Mode&0o7777 != 0 {
		rec.Mode = e.Mode & 0o7777 // as older versions wrote and read it
	}
	rec.MTime = unixNanoOf(e.MTime)
	if e.Owner {
		uid, gid := e.UID, e.GID
		rec.UID, rec.GID = &uid, &gid
	}
	if len(e.Target) <= maxIndexedTarget {
		rec.Link = e.Target
	}
	return rec
}

func unixNanoOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// same reports whether two records say the same.
func (rec attrRecord) same(o attrRecord) bool {
	eq := func(a, b *uint32) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	return rec.ETag == o.ETag && rec.MTime == o.MTime && rec.Mode == o.Mode && eq(rec.UID, o.UID) && eq(rec.GID, o.GID) &&
		rec.ATime == o.ATime && rec.CTime == o.CTime && rec.Link == o.Link && rec.Rdev == o.Rdev
}

// sidecar is one version of a folder's index: etag "" when there was none.
// files is nil when it is absent or malformed (a write replaces it).
// unusable marks one this version must leave alone (too large, newer).
type sidecar struct {
	etag     string
	files    map[string]attrRecord
	unusable bool
}

var (
	// errIndexBusy: a journal op on the sidecar's key is pending (a folder
	// rename moving it), or, for a removed folder, one under it; the write
	// waits for them.
	errIndexBusy = errors.New("waiting for pending uploads")
	// errIndexUnusable: a sidecar this version cannot merge into (too
	// large, or a newer format); it is left alone.
	errIndexUnusable = errors.New("attribute index unusable")
)

// attrIndex reads and writes the sidecars of one mount.
type attrIndex struct {
	store attrStore
	log   *slog.Logger
	// keyOf is the sidecar key of a folder; pending reports a pending
	// journal op on a key, pendingUnder one on a key under a prefix;
	// shownEmpty whether the tree shows nothing in a folder.
	keyOf        func(dir string) string
	pending      func(key string) bool
	pendingUnder func(prefix string) bool
	shownEmpty   func(dir string) bool
	debounce     time.Duration
	backoffMin   time.Duration

	seen seenCache

	ctx    context.Context // ends the writers
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	folders map[string]*attrFolder // GUARDED_BY(mu): folders with changes to write or being written
	wake    chan struct{}          // GUARDED_BY(mu): closed when changes arrive
	settled chan struct{}          // GUARDED_BY(mu): closed when a write ends
	started bool                   // GUARDED_BY(mu): the writers run
	off     bool                   // GUARDED_BY(mu): the store refuses sidecar keys
}

// attrFolder is the state of one folder's sidecar writes.
type attrFolder struct {
	changes map[string]*attrRecord // by name; nil: remove the name
	// gone: the folder was removed through the mount; its sidecar goes
	// unless something shows in it again.
	gone     bool
	due      time.Time
	writing  bool
	clearing bool  // the write running deletes a gone folder's sidecar
	attempts int   // failed writes in a row
	lastErr  error // the last failure, for FlushAttrs
}

func (st *attrFolder) idle() bool { return len(st.changes) == 0 && !st.gone }

// attrJob is the changes one write takes.
type attrJob struct {
	dir     string
	changes map[string]*attrRecord
	gone    bool
}

// newAttrIndex returns the attribute index of f, or nil when the store
// cannot read and write objects (some test fakes).
func (f *FS) newAttrIndex() *attrIndex {
	store, ok := f.cfg.Store.(attrStore)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := &attrIndex{
		store:        store,
		log:          f.log,
		keyOf:        func(dir string) string { return f.dirKeyPrefix(dir) + attrIndexName },
		pending:      func(string) bool { return false },
		pendingUnder: func(string) bool { return false },
		shownEmpty:   f.shownEmpty,
		debounce:     attrDebounce,
		backoffMin:   attrBackoffMin,
		ctx:          ctx,
		cancel:       cancel,
		folders:      make(map[string]*attrFolder),
		wake:         make(chan struct{}),
		settled:      make(chan struct{}),
	}
	if j := f.cfg.Journal; j != nil {
		x.pending = func(key string) bool {
			_, ok := j.Pending(key)
			return ok
		}
		x.pendingUnder = func(prefix string) bool { return len(j.PendingUnder(prefix)) > 0 }
	}
	x.seen.init()
	return x
}

// isAttrIndexKey reports whether key is a folder's sidecar.
func isAttrIndexKey(key string) bool {
	return key == attrIndexName || strings.HasSuffix(key, "/"+attrIndexName)
}

// shownEmpty reports whether the tree shows nothing in dir.
func (f *FS) shownEmpty(dir string) bool {
	empty := true
	if err := f.cfg.Tree.Children(dir, func(cache.Entry) bool { empty = false; return false }); err != nil {
		return false // keep the sidecar: the tree cannot tell
	}
	return empty
}

// --- reading, at listing time ---

// indexListing gives the listed files of dir the attributes its sidecar
// holds for their versions, and hides the folders whose sidecar is being
// deleted after they were removed here (the sidecar alone would list them
// again). A sidecar that cannot be read is logged and ignored.
func (f *FS) indexListing(ctx context.Context, dir, prefix string, pages []backend.Page, entries []cache.Entry) []cache.Entry {
	x := f.attrs
	if x == nil {
		return entries
	}
	var found *backend.ObjectInfo
	for _, p := range pages {
		for i := range p.Objects {
			if p.Objects[i].Key == prefix+attrIndexName {
				found = &p.Objects[i]
			}
		}
	}
	files := x.forListing(ctx, dir, prefix+attrIndexName, found)
	kept := entries[:0]
	for _, e := range entries {
		switch {
		case e.Dir:
			if x.clearing(cache.JoinPath(dir, e.Name)) && !f.shown(dir, e.Name) {
				continue
			}
			if rec, ok := files[e.Name]; ok && rec.ETag == "" {
				rec.apply(&e)
			}
		case e.ETag != "":
			if rec, ok := files[e.Name]; ok && rec.ETag == e.ETag {
				rec.apply(&e)
			}
		}
		kept = append(kept, e)
	}
	return kept
}

// shown reports whether the tree shows dir/name.
func (f *FS) shown(dir, name string) bool {
	_, ok, err := f.cfg.Tree.Lookup(dir, name)
	return ok || err != nil
}

// apply sets e's attributes from the record.
func (rec attrRecord) apply(e *cache.Entry) {
	if rec.MTime != 0 {
		e.MTime, e.Attrs = time.Unix(0, rec.MTime), true
	}
	if rec.Mode != 0 {
		setMode(e, rec.Mode)
	}
	if rec.UID != nil && rec.GID != nil {
		e.Owner, e.UID, e.GID, e.Attrs = true, *rec.UID, *rec.GID, true
	}
	if rec.ATime != 0 {
		e.ATime, e.Attrs = time.Unix(0, rec.ATime), true
	}
	if rec.CTime != 0 {
		e.CTime, e.Attrs = time.Unix(0, rec.CTime), true
	}
	if rec.Link != "" && e.Type() == syscall.S_IFLNK {
		e.Target = rec.Link
	}
	if rec.Rdev != 0 {
		e.Rdev = rec.Rdev
	}
}

// forListing returns the entries of dir's sidecar as a listing found it
// (info nil: none), reading it only when its ETag is not the one last seen.
func (x *attrIndex) forListing(ctx context.Context, dir, key string, info *backend.ObjectInfo) map[string]attrRecord {
	if info == nil {
		x.seen.put(dir, sidecar{})
		return nil
	}
	if s, ok := x.seen.get(dir); ok && s.etag == info.ETag {
		return s.files
	}
	if info.Size > maxAttrIndexSize {
		x.log.Warn("attribute index too large, ignored", "key", key, "size", info.Size, "max", maxAttrIndexSize)
		x.seen.put(dir, sidecar{etag: info.ETag, unusable: true})
		return nil
	}
	s, err := x.read(ctx, key, info.ETag)
	switch {
	case errors.Is(err, backend.ErrPrecondition):
		// Rewritten since the listing: the next listing has the new one.
		x.log.Debug("attribute index changed while listing", "key", key)
		return nil
	case errors.Is(err, errIndexUnusable):
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
// newer version fails with errIndexUnusable.
func (x *attrIndex) read(ctx context.Context, key, ifMatch string) (sidecar, error) {
	if ifMatch == "" {
		info, err := x.store.Stat(ctx, key)
		if errors.Is(err, backend.ErrNotFound) {
			return sidecar{}, nil
		}
		if err != nil {
			return sidecar{}, fmt.Errorf("read %q: %w", key, err)
		}
		ifMatch = info.ETag
	}
	r, err := x.store.Get(ctx, key, 0, -1, ifMatch)
	if errors.Is(err, backend.ErrNotFound) {
		// Deleted since its ETag was found: the writer reads again.
		return sidecar{}, fmt.Errorf("read %q: %w", key, backend.ErrPrecondition)
	}
	if err != nil {
		return sidecar{}, fmt.Errorf("read %q: %w", key, err)
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, maxAttrIndexSize+1))
	if err != nil {
		return sidecar{}, fmt.Errorf("read %q: %w", key, err)
	}
	if len(data) > maxAttrIndexSize {
		return sidecar{}, fmt.Errorf("%q is over %d bytes: %w", key, maxAttrIndexSize, errIndexUnusable)
	}
	var doc attrDoc
	if err := json.Unmarshal(data, &doc); err != nil || doc.Version < attrIndexVersion {
		x.log.Warn("malformed attribute index, ignored", "key", key, "err", err)
		return sidecar{etag: ifMatch}, nil
	}
	if doc.Version > attrIndexVersion {
		return sidecar{}, fmt.Errorf("%q has version %d, newer than %d: %w", key, doc.Version, attrIndexVersion, errIndexUnusable)
	}
	return sidecar{etag: ifMatch, files: doc.Files}, nil
}

// --- recording, at upload time ---

// indexApplied records in the attribute index what a completed journal op
// changed in its folder. stored is the entry Applied recorded for an
// uploaded or copied file, zero when it recorded none.
func (f *FS) indexApplied(r journal.Result, stored cache.Entry) {
	if f.attrs == nil {
		return
	}
	if r.Conflict != nil && r.Conflict.ConflictKey != "" && r.Info.ETag != "" {
		var e cache.Entry
		attrsFromMeta(r.Op.Meta, &e) // the local version went there
		f.indexFile(r.Conflict.ConflictKey, r.Info.ETag, e)
	}
	if r.Conflict != nil || r.Dropped {
		return // the store's version kept the name; its entry, if any, stays
	}
	switch r.Op.Kind {
	case journal.PutFile:
		e := stored
		if e.Name == "" {
			// A newer change is pending; this version was stored anyway.
			attrsFromMeta(r.Op.Meta, &e)
		}
		f.indexFile(r.Op.Key, r.Info.ETag, e)
	case journal.Copy:
		e := stored
		if !e.Attrs {
			e = f.copiedAttrs(r)
		}
		// Unknown attributes leave the sidecar alone: the copy has its
		// source's metadata, which an entry there may well describe.
		if e.Attrs {
			f.indexFile(r.Op.Key, r.Info.ETag, e)
		}
	case journal.PutMarker:
		rel, ok := f.relPath(strings.TrimSuffix(r.Op.Key, "/"))
		if ok && showable(rel) && stored.Name != "" && stored.Attrs {
			dir, _ := splitPath(rel)
			f.indexFolder(dir, stored)
		}
	case journal.Delete:
		rel, ok := f.relPath(strings.TrimSuffix(r.Op.Key, "/"))
		if !ok || !showable(rel) {
			return // not shown, so not in a sidecar (a sidecar itself, say)
		}
		dir, name := splitPath(rel)
		if strings.HasSuffix(r.Op.Key, "/") {
			f.attrs.folderGone(rel)
			if _, shown, err := f.cfg.Tree.Lookup(dir, name); err == nil && !shown {
				f.attrs.change(dir, name, nil) // its record in the parent's
			}
			return
		}
		f.attrs.change(dir, name, nil)
	}
}

// indexFolder records the attributes of folder e, in dir, in dir's index.
func (f *FS) indexFolder(dir string, e cache.Entry) {
	if f.attrs == nil || !showable(cache.JoinPath(dir, e.Name)) {
		return
	}
	f.attrs.change(dir, e.Name, recordOf(e, ""))
}

// indexFile records the attributes e holds for version etag of key, or,
// when it holds none (an upload without them), that the folder's sidecar
// has nothing to say of key.
func (f *FS) indexFile(key, etag string, e cache.Entry) {
	rel, ok := f.relPath(key)
	if !ok || etag == "" || !showable(rel) {
		return
	}
	dir, name := splitPath(rel)
	if !e.Attrs {
		f.attrs.change(dir, name, nil)
		return
	}
	f.attrs.change(dir, name, recordOf(e, etag))
}

// copiedAttrs finds the attributes of a server-side copy's source in the
// sidecar of its folder, as last seen: a folder rename shows the moved
// files without them.
func (f *FS) copiedAttrs(r journal.Result) cache.Entry {
	rel, ok := f.relPath(r.Op.Src)
	if !ok {
		return cache.Entry{}
	}
	dir, name := splitPath(rel)
	s, _ := f.attrs.seen.get(dir)
	rec, ok := s.files[name]
	if !ok || (rec.ETag != r.Op.SrcETag && rec.ETag != r.Info.ETag) {
		return cache.Entry{}
	}
	var e cache.Entry
	rec.apply(&e)
	return e
}

// change records that name's entry in dir's sidecar becomes rec (nil:
// goes), to be written after the debounce.
func (x *attrIndex) change(dir, name string, rec *attrRecord) {
	x.update(dir, func(st *attrFolder) { st.changes[name] = rec })
}

// folderGone records that dir was removed through the mount.
func (x *attrIndex) folderGone(dir string) {
	x.update(dir, func(st *attrFolder) { st.gone = true })
}

func (x *attrIndex) update(dir string, apply func(*attrFolder)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.off {
		return
	}
	st := x.folders[dir]
	if st == nil {
		st = &attrFolder{changes: make(map[string]*attrRecord)}
		x.folders[dir] = st
	}
	if st.idle() && st.attempts == 0 {
		st.due = time.Now().Add(x.debounce)
	}
	apply(st)
	if !x.started {
		x.started = true
		for range attrWriters {
			x.wg.Add(1)
			go x.writer()
		}
	}
	close(x.wake)
	x.wake = make(chan struct{})
}

// clearing reports whether dir's sidecar is to be deleted, or being
// deleted, because the folder was removed here.
func (x *attrIndex) clearing(dir string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	st := x.folders[dir]
	return st != nil && (st.gone || st.clearing)
}

// --- writing ---

// writer writes the folders whose changes are due, until the index stops.
func (x *attrIndex) writer() {
	defer x.wg.Done()
	for x.ctx.Err() == nil {
		job, wake, wait := x.next(time.Now())
		if job != nil {
			x.finish(job, x.write(x.ctx, job))
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
func (x *attrIndex) next(now time.Time) (job *attrJob, wake <-chan struct{}, wait time.Duration) {
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
		job = &attrJob{dir: dir, changes: st.changes, gone: st.gone}
		st.changes, st.gone = make(map[string]*attrRecord), false
		st.writing, st.clearing = true, job.gone
		return job, nil, 0
	}
	return nil, x.wake, wait
}

// finish records the outcome of a write: failed changes go back to wait
// (under newer ones) when the store may take them later.
func (x *attrIndex) finish(job *attrJob, err error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	st := x.folders[job.dir]
	st.writing, st.clearing = false, false
	now := time.Now()
	switch {
	case err == nil:
		st.attempts, st.lastErr = 0, nil
	case errors.Is(err, errIndexBusy):
		st.requeue(job)
		st.due = now.Add(x.debounce)
	case errors.Is(err, backend.ErrInvalidKey) && !x.off:
		// The key is within S3's limits (write checks), so the store
		// refuses the name itself: no folder can have a sidecar.
		x.log.Info("the store refuses the attribute index; mode and mtime show on other mounts after open only", "key", x.keyOf(job.dir), "err", err)
		x.off = true
	case errors.Is(err, backend.ErrAccess), errors.Is(err, backend.ErrNoBucket), errors.Is(err, errIndexUnusable):
		x.log.Warn("attribute index not written; the attributes stay in object metadata", "key", x.keyOf(job.dir), "err", err)
		st.attempts, st.lastErr = 0, nil
	default: // offline, lost races, anything that may pass later
		st.requeue(job)
		st.attempts++
		st.lastErr = err
		st.due = now.Add(backoff(x.backoffMin, st.attempts))
		x.log.Debug("attribute index write failed, retrying", "key", x.keyOf(job.dir), "attempt", st.attempts, "err", err)
	}
	if x.off {
		for dir, other := range x.folders {
			if !other.writing {
				delete(x.folders, dir)
			}
		}
	} else if st.idle() {
		delete(x.folders, job.dir)
	}
	close(x.settled)
	x.settled = make(chan struct{})
}

// requeue puts back the changes of a failed write, under newer ones.
func (st *attrFolder) requeue(job *attrJob) {
	for name, rec := range job.changes {
		if _, newer := st.changes[name]; !newer {
			st.changes[name] = rec
		}
	}
	st.gone = st.gone || job.gone
}

func backoff(base time.Duration, attempts int) time.Duration {
	d := base
	for i := 1; i < attempts && d < attrBackoffMax; i++ {
		d *= 2
	}
	return min(d, attrBackoffMax)
}

// write merges a job's changes into the folder's sidecar.
func (x *attrIndex) write(ctx context.Context, job *attrJob) error {
	key := x.keyOf(job.dir)
	if checkKey(key) != nil {
		return nil // too deep for a sidecar: open still reads the metadata
	}
	if x.pending(key) {
		return errIndexBusy
	}
	if job.gone && x.shownEmpty(job.dir) {
		// A folder renamed away moves its files one by one: their copies
		// look up their attributes in its sidecar until the last is done.
		if x.pendingUnder(strings.TrimSuffix(key, attrIndexName)) {
			return errIndexBusy
		}
		return x.clear(ctx, job.dir, key)
	}
	// The version remembered saves a read; if it is stale, the write's
	// condition fails and the sidecar is read.
	cur, remembered := x.seen.get(job.dir)
	for attempt := 1; ; attempt++ {
		if remembered && cur.unusable {
			return fmt.Errorf("%q: %w", key, errIndexUnusable)
		}
		if !remembered {
			var err error
			if cur, err = x.read(ctx, key, ""); err != nil {
				return err
			}
		}
		files, changed := merge(cur.files, job.changes)
		if !changed {
			if !remembered {
				return nil
			}
			// Nothing to do to the version remembered, which may be
			// stale (an entry to remove that it lacks): make sure.
			remembered = false
			continue
		}
		err := x.save(ctx, job.dir, key, cur, files)
		if !errors.Is(err, backend.ErrPrecondition) || attempt >= maxAttrIndexWrites {
			return err
		}
		remembered = false // another mount wrote it meanwhile: read it again
	}
}

// save writes files as dir's sidecar in place of version cur; a sidecar
// with no entry is deleted.
func (x *attrIndex) save(ctx context.Context, dir, key string, cur sidecar, files map[string]attrRecord) error {
	if len(files) == 0 {
		if cur.etag != "" {
			if err := x.store.Delete(ctx, key, cur.etag); err != nil {
				return fmt.Errorf("delete %q: %w", key, err)
			}
		}
		x.seen.put(dir, sidecar{})
		return nil
	}
	body, err := json.Marshal(attrDoc{Version: attrIndexVersion, Files: files})
	if err != nil {
		return fmt.Errorf("encode %q: %w", key, err)
	}
	if len(body) > maxAttrIndexSize {
		return fmt.Errorf("%q would be %d bytes, over %d: %w", key, len(body), maxAttrIndexSize, errIndexUnusable)
	}
	cond := backend.Cond{IfMatch: cur.etag, IfNoneMatch: cur.etag == ""}
	info, err := x.store.Put(ctx, key, bytes.NewReader(body), int64(len(body)), nil, cond)
	if err != nil {
		return fmt.Errorf("write %q: %w", key, err)
	}
	// Our next listing finds this version and need not read it.
	x.seen.put(dir, sidecar{etag: info.ETag, files: files})
	return nil
}

// clear deletes the sidecar of a folder removed through the mount. Another
// mount adding to the folder meanwhile loses only its sidecar entries.
func (x *attrIndex) clear(ctx context.Context, dir, key string) error {
	if s, ok := x.seen.get(dir); ok && s.etag == "" {
		return nil // the folder's last listing or write had none
	}
	if err := x.store.Delete(ctx, key, ""); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	x.seen.put(dir, sidecar{})
	return nil
}

// merge applies changes to a copy of files, and reports whether that
// changed anything.
func merge(files map[string]attrRecord, changes map[string]*attrRecord) (map[string]attrRecord, bool) {
	out := make(map[string]attrRecord, len(files)+len(changes))
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

// flush makes every pending change due now and waits until all are
// written. When ctx ends first, the error says which folders wait and why.
func (x *attrIndex) flush(ctx context.Context) error {
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
			return fmt.Errorf("%s: %w", x.describe(), ctx.Err())
		}
	}
}

// describe says which folders' sidecars are not written, and why.
func (x *attrIndex) describe() string {
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
		fmt.Fprintf(&b, " %q (%s);", "/"+dir, why)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// maxListed bounds the folders an error message names.
const maxListed = 10

// stop writes what is pending, for at most attrFinalFlush while the store
// is reachable, then ends the writers.
func (x *attrIndex) stop(online bool) {
	if online {
		ctx, cancel := context.WithTimeout(context.Background(), attrFinalFlush)
		if err := x.flush(ctx); err != nil {
			x.log.Info("unmounting before the attribute index was written; the attributes stay in object metadata", "err", err)
		}
		cancel()
	}
	x.cancel()
	x.wg.Wait()
}

// FlushAttrs waits until the attribute index has no change left to write
// (nimbus sync). When ctx ends first, the error names the folders whose
// sidecars wait and why (offline, say).
func (f *FS) FlushAttrs(ctx context.Context) error {
	if f.attrs == nil {
		return nil
	}
	return f.attrs.flush(ctx)
}

// --- the sidecars seen ---

// seenCache remembers, per folder, the sidecar this mount last read or
// wrote, least recently used first out, bounded by folders and entries.
type seenCache struct {
	mu      sync.Mutex
	lru     *simplelru.LRU[string, sidecar] // GUARDED_BY(mu)
	entries int                             // GUARDED_BY(mu): files held in all
}

func (c *seenCache) init() {
	// NewLRU fails only for a size below 1.
	c.lru, _ = simplelru.NewLRU(maxSeenFolders, func(_ string, s sidecar) { c.entries -= len(s.files) })
}

func (c *seenCache) get(dir string) (sidecar, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Get(dir)
}

func (c *seenCache) put(dir string, s sidecar) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(dir) // Add would replace it without the eviction callback
	if len(s.files) > maxSeenEntries {
		return
	}
	c.lru.Add(dir, s)
	c.entries += len(s.files)
	for c.entries > maxSeenEntries {
		c.lru.RemoveOldest()
	}
}
