package vfs

import (
	"context"
	"errors"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
)

// Streaming readdir.
//
// A folder of n keys takes ceil(n/1000) listing requests, one after the
// other; a reader that waited for all of them would see nothing of a
// 100,000-entry folder for seconds. So every listing in flight carries a
// listStream: the entries of the pages read so far, released in listing
// order while the rest arrives, to the readers of the folder (streamedDir)
// and to lookups of the names already released (the kernel looks up each
// entry of a READDIRPLUS). The tree is still replaced once, with the whole
// listing, as before; the stream changes only when a reader sees entries.
// The stream's entries are that whole listing: the pages are not kept, so
// that a folder being read while it is listed does not hold both.
//
// The pages come through the attribute index's decorator
// (backend/attrindex), which passes each on with its entries' attributes
// once it knows the folder's sidecar, and hides the sidecar and the
// folders removed here; so a page's entries are complete as they come.
// An entry is released once nothing later in the listing can change it:
// S3 lists keys in UTF-8 binary order, with the common prefixes in place,
// and a file x is shadowed by a folder x/ (the folder wins), which sorts
// after it, perhaps on the next page. So x is released once the listing
// has passed x/.
//
// A reader shows the folder's local changes first, as the tree has them
// (files created or edited and not yet uploaded), then the released entries
// whose names have no local change; tombstones hide theirs. A page that
// arrives while a reader is between pages only adds to the end of what it
// reads, so nothing is shown twice or skipped. When a re-listing fails
// part way (the store went offline), the reader ends with the entries of
// the last listing it has not shown yet, as a folder whose re-listing fails
// is served from its last listing.

// listStream is the released part of one listing in flight.
type listStream struct {
	mu      sync.Mutex
	entries []cache.Entry  // GUARDED_BY(mu): released, in listing order; only appended to
	byName  map[string]int // GUARDED_BY(mu): index in entries
	grown   chan struct{}  // GUARDED_BY(mu): closed (and replaced) when entries grows or the stream ends
	ended   bool           // GUARDED_BY(mu)
	err     error          // GUARDED_BY(mu): why the listing failed; nil once it completed

	// The rest belongs to the goroutine that lists.
	prefix  string          // the folder's key prefix
	last    string          // the greatest key or prefix listed so far
	held    []cache.Entry   // listed, not yet released
	dirs    map[string]bool // the folders listed so far
	skipped []cache.Skipped // keys that cannot be shown
}

func newListStream(prefix string) *listStream {
	return &listStream{prefix: prefix, byName: make(map[string]int), grown: make(chan struct{}), dirs: make(map[string]bool)}
}

// add takes the next page of the listing and releases what it can.
func (s *listStream) add(p backend.Page) {
	for _, o := range p.Objects {
		s.last = max(s.last, o.Key)
	}
	for _, pfx := range p.Prefixes {
		s.last = max(s.last, pfx)
	}
	entries, skipped := listingToEntries(s.prefix, []backend.Page{p})
	s.skipped = append(s.skipped, skipped...)
	for _, e := range entries {
		if e.Dir {
			if s.dirs[e.Name] {
				continue
			}
			s.dirs[e.Name] = true
		}
		s.held = append(s.held, e)
	}
	s.release(false)
}

// end closes the stream once the listing is over: err nil means it
// completed, and the entries still held are released.
func (s *listStream) end(err error) {
	if err == nil {
		s.release(true)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended, s.err = true, err
	close(s.grown)
}

// release hands the held entries that nothing later can change to the
// readers; complete says that the listing is over.
func (s *listStream) release(complete bool) {
	var out, keep []cache.Entry
	for _, e := range s.held {
		switch {
		case e.Dir:
			out = append(out, e)
		case s.dirs[e.Name]:
			// Shadowed by a folder listed after it, on a later page.
			key := s.prefix + e.Name
			s.skipped = append(s.skipped, cache.Skipped{Key: key, Reason: "shadowed by the directory " + key + "/"})
		case complete || s.prefix+e.Name+"/" <= s.last:
			out = append(out, e)
		default:
			keep = append(keep, e)
		}
	}
	s.held = keep
	if len(out) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range out {
		s.byName[e.Name] = len(s.entries)
		s.entries = append(s.entries, e)
	}
	close(s.grown)
	s.grown = make(chan struct{})
}

// listing returns the whole listing of a stream that ended complete (end
// with nil): its entries, which readers share and nobody may change, and
// the keys that cannot be shown. It is what listingToEntries makes of all
// the pages.
func (s *listStream) listing() ([]cache.Entry, []cache.Skipped) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.entries, s.skipped
}

// wait returns released entry i, waiting for it until ctx ends. ok is
// false when the stream ended before it: err says why, nil when the
// listing is complete.
func (s *listStream) wait(ctx context.Context, i int) (e cache.Entry, ok bool, err error) {
	for {
		s.mu.Lock()
		if i < len(s.entries) {
			e = s.entries[i]
			s.mu.Unlock()
			return e, true, nil
		}
		if s.ended {
			err = s.err
			s.mu.Unlock()
			return e, false, err
		}
		grown := s.grown
		s.mu.Unlock()
		select {
		case <-grown:
		case <-ctx.Done():
			return e, false, ctx.Err()
		}
	}
}

// lookup returns the released entry called name.
func (s *listStream) lookup(name string) (cache.Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.byName[name]
	if !ok {
		return cache.Entry{}, false
	}
	return s.entries[i], true
}

// listingStream returns the stream of dir's listing when a readdir of dir
// must wait for one (ensureListed's rule), starting it if needed; nil when
// the tree can answer now. known says whether dir was listed before.
func (f *FS) listingStream(dir string) (s *listStream, known bool, err error) {
	f.watched.touch(dir)
	st, known, err := f.cfg.Tree.Dir(dir)
	if err != nil || (known && (f.fresh(st) || !f.online())) {
		return nil, known, err
	}
	return f.joinListing(dir).stream, known, nil
}

// streamedEntry answers a lookup in dir while its listing is in flight,
// from what the listing released so far and the local changes. handled is
// false when the answer must wait for the whole listing.
func (f *FS) streamedEntry(dir, name string) (e cache.Entry, ok, handled bool) {
	f.listMu.Lock()
	fl := f.listing[dir]
	f.listMu.Unlock()
	if fl == nil || fl.stream == nil {
		return e, false, false
	}
	local, found, err := f.cfg.Tree.Get(dir, name) // local or not
	if err != nil {
		return e, false, false // the slow path reports it
	}
	if found && local.Local {
		// A listing never overrides a local change (Tree.ReplaceDir).
		return local, !local.Gone, true
	}
	e, ok = fl.stream.lookup(name)
	if ok && found {
		e.KeepKnownAttrs(local) // as Tree.ReplaceDir will record it
	}
	return e, ok, ok
}

// streamDir is the readdir stream of dir (node parent) while its listing s
// arrives. It
// waits, until ctx ends, for the first released entry, so that a listing
// that fails at once fails the readdir.
func (f *FS) streamDir(ctx context.Context, parent *fs.Inode, dir string, s *listStream, known bool) (fs.DirStream, syscall.Errno) {
	d := &streamedDir{fsys: f, parent: parent, dir: dir, s: s, known: known, hidden: make(map[string]bool)}
	err := f.cfg.Tree.LocalChildren(dir, func(e cache.Entry) bool {
		d.hidden[e.Name] = true
		if !e.Gone {
			d.local = append(d.local, e)
		}
		return true
	})
	if err != nil {
		return nil, toErrno(f.log, "readdir", err)
	}
	if _, _, err := s.wait(ctx, 0); err != nil && !d.staleServed(err) {
		return nil, toErrno(f.log, "readdir", err) // as ensureListed fails
	}
	if known {
		d.shown = make(map[string]bool)
	}
	return d, 0
}

// streamedDir reads a folder whose listing is in flight: its local changes,
// then the listing as it is released (see the top of this file).
type streamedDir struct {
	fsys   *FS
	parent *fs.Inode // the folder's node: the entries' inode numbers are its children's
	dir    string
	s      *listStream
	known  bool            // dir has an older listing, served if this one fails
	local  []cache.Entry   // the local changes shown, first
	hidden map[string]bool // names with a local change: their listed versions are not shown
	shown  map[string]bool // listed names shown, when known: the older listing fills in the rest

	off     uint64        // entries returned so far
	nextLoc int           // the next of local
	nextRel int           // the next released entry of s
	stale   []cache.Entry // the older listing's rest, once this one failed
	failed  bool          // stale is set
	next    *fuse.DirEntry
	errno   syscall.Errno // for Next, once: the listing failed
}

var _ = (fs.DirStream)((*streamedDir)(nil))

func (d *streamedDir) HasNext() bool {
	if d.next != nil || d.errno != 0 {
		return true
	}
	if d.nextLoc < len(d.local) {
		d.show(d.local[d.nextLoc])
		d.nextLoc++
		return true
	}
	for !d.failed {
		// go-fuse gives HasNext no context: the wait ends with the
		// listing, which runs on the mount's background context.
		e, ok, err := d.s.wait(context.Background(), d.nextRel)
		if !ok {
			if err == nil {
				return false
			}
			if !d.staleServed(err) {
				d.errno = toErrno(d.fsys.log, "readdir", err)
				d.failed = true
				return true
			}
			if err := d.loadStale(err); err != nil {
				d.errno = toErrno(d.fsys.log, "readdir", err)
				return true
			}
			break
		}
		d.nextRel++
		if d.hidden[e.Name] {
			continue
		}
		if d.shown != nil {
			d.shown[e.Name] = true
		}
		d.show(e)
		return true
	}
	if len(d.stale) == 0 {
		return false
	}
	d.show(d.stale[0])
	d.stale = d.stale[1:]
	return true
}

func (d *streamedDir) show(e cache.Entry) {
	d.off++
	d.next = &fuse.DirEntry{Name: e.Name, Mode: e.Type(), Ino: d.fsys.inos.readdirIno(d.parent, d.dir, e.Name), Off: d.off}
}

func (d *streamedDir) Next() (fuse.DirEntry, syscall.Errno) {
	if d.errno != 0 {
		errno := d.errno
		d.errno = 0
		return fuse.DirEntry{}, errno
	}
	e := d.next
	d.next = nil
	return *e, 0
}

func (d *streamedDir) Close() {}

// staleServed reports whether a failed listing is answered from the older
// one, as ensureListed does: only when there is one, and not because the
// mount is going away.
func (d *streamedDir) staleServed(err error) bool {
	return d.known && !errors.Is(err, context.Canceled)
}

// loadStale takes the entries of the older listing not shown yet.
func (d *streamedDir) loadStale(err error) error {
	d.fsys.log.Info("serving stale listing", "dir", d.dir, "err", err)
	d.failed = true
	return d.fsys.cfg.Tree.Children(d.dir, func(e cache.Entry) bool {
		if !e.Local && !d.hidden[e.Name] && !d.shown[e.Name] {
			d.stale = append(d.stale, e)
		}
		return true
	})
}

var _ = (fs.FileSeekdirer)((*streamedDir)(nil))

// Seekdir goes back to the entry after the off-th (rewinddir: 0), by
// reading again from the start: the stream shows the same entries in the
// same order every time.
func (d *streamedDir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	d.off, d.nextLoc, d.nextRel, d.stale, d.failed, d.next, d.errno = 0, 0, 0, nil, false, nil, 0
	if d.shown != nil {
		d.shown = make(map[string]bool)
	}
	return skipEntries(d, off)
}

// skipEntries reads the first n entries of d, just rewound: Seekdir's way
// to the entry after the n-th.
func skipEntries(d fs.DirStream, n uint64) syscall.Errno {
	for range n {
		if !d.HasNext() {
			return syscall.EINVAL
		}
		if _, errno := d.Next(); errno != 0 {
			return errno
		}
	}
	return 0
}
