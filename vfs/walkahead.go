package vfs

import (
	"sync"
	"time"

	"github.com/nimbus-fs/nimbus/cache"
)

// Walk read-ahead. A program that walks a tree (find, ls -R, du, rsync,
// a backup) reads one folder after another, and each unlisted folder costs
// a LIST round trip while the walker waits. Once two sibling folders are
// read one after the other, the walk is taken as going on: the next
// walkAheadDirs siblings (in name order, the order nimbus shows entries
// in) that have no fresh listing are listed in the background, through
// the shared listings (joinListing), so that the walker finds them listed
// or joins them in flight. A program that reads one folder lists nothing
// more; a walk that stops costs at most walkAheadDirs listings.

const (
	// walkAheadDirs is how many folders a walk is listed ahead.
	walkAheadDirs = 4
	// walkGap is how soon after the last one a sibling's read continues
	// a walk (the walker may have gone through a subtree meanwhile).
	walkGap = 5 * time.Second
	// walkScan bounds the entries read to find the next folders, in a
	// parent that holds many files among them.
	walkScan = 1000
)

// walkState is, per parent, the folder read last in it: a walk of a tree
// reads a folder's subfolders between two of its siblings.
type walkState struct {
	mu   sync.Mutex
	last map[string]walkMark // GUARDED_BY(mu)
}

type walkMark struct {
	name string
	at   time.Time
}

// walkParents bounds walkState.last; older marks go first.
const walkParents = 64

// walked records a read of folder dir and lists ahead when it continues
// a walk of its parent.
func (f *FS) walked(dir string) {
	if dir == "" {
		return
	}
	parent, name := splitPath(dir)
	now := time.Now()
	w := &f.walk
	w.mu.Lock()
	if w.last == nil {
		w.last = make(map[string]walkMark)
	}
	m, ok := w.last[parent]
	walking := ok && m.name != name && now.Sub(m.at) < walkGap
	w.last[parent] = walkMark{name: name, at: now}
	if len(w.last) > walkParents {
		for p, m := range w.last {
			if now.Sub(m.at) >= walkGap {
				delete(w.last, p)
			}
		}
		if len(w.last) > walkParents {
			clear(w.last) // many folders at once: no walk of one parent to follow
		}
	}
	w.mu.Unlock()
	if walking && f.online() {
		f.background(func() { f.listAhead(parent, name) })
	}
}

// listAhead starts the listings of the next walkAheadDirs folders of
// parent after name that have no fresh listing.
func (f *FS) listAhead(parent, name string) {
	var next []string
	scanned := 0
	err := f.cfg.Tree.ChildrenAfter(parent, name, func(e cache.Entry) bool {
		scanned++
		if e.Dir {
			next = append(next, cache.JoinPath(parent, e.Name))
		}
		return len(next) < walkAheadDirs && scanned < walkScan
	})
	if err != nil {
		f.log.Debug("list ahead", "dir", parent, "err", err)
		return
	}
	for _, dir := range next {
		st, known, err := f.cfg.Tree.Dir(dir)
		if err != nil || (known && f.fresh(st)) {
			continue
		}
		f.joinListing(dir) // runs in the background; a walker joins it
	}
}
