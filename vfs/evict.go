package vfs

import (
	"container/list"
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
)

// The kernel keeps every inode it looked up until memory pressure makes it
// forget some, and go-fuse keeps an Inode (and our node) for each until the
// kernel forgets it. READDIRPLUS looks up every entry it lists, so walking
// a million keys would keep a million nodes in this process. inodeBudget
// bounds them: past maxLiveFiles live file nodes, the directories
// used least recently are invalidated (NotifyEntry), which drops the
// kernel's unused dentries and inodes below them, and its FORGETs free
// ours. An invalidated entry that is still wanted is looked up again from
// the tree; one in use (open, a working directory) stays alive. Only files
// are counted: there are few directories next to them.
//
// The kernel detaches any mount made below a directory it invalidates, so
// a mount inside a Nimbus mount does not survive the eviction of its
// directory.

// maxLiveFiles bounds the live file nodes. One costs about 0.5 KiB of heap
// (go-fuse's Inode, our fileNode, the maps that index them): 25 MiB here.
const maxLiveFiles = 50_000

// evictPause spaces eviction rounds: the kernel's FORGETs arrive after the
// invalidations, and the count must catch up before the next round.
const evictPause = 100 * time.Millisecond

// inodeBudget counts live file nodes and evicts the coldest directories
// when there are too many. The zero value is ready, bounded by maxLiveFiles.
type inodeBudget struct {
	live atomic.Int64 // file nodes go-fuse holds (OnAdd minus OnForget)

	start sync.Once     // starts the evictor
	kick  chan struct{} // set by start: an eviction round is due

	mu   sync.Mutex
	dirs map[*dirNode]*list.Element // GUARDED_BY(mu): each dir's place in lru
	lru  list.List                  // GUARDED_BY(mu): *dirNode, most recent first
}

// touch records that the kernel is looking up children of d.
func (b *inodeBudget) touch(d *dirNode) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if el, ok := b.dirs[d]; ok {
		b.lru.MoveToFront(el)
		return
	}
	if b.dirs == nil {
		b.dirs = make(map[*dirNode]*list.Element)
	}
	b.dirs[d] = b.lru.PushFront(d)
}

// drop forgets d (the kernel forgot it).
func (b *inodeBudget) drop(d *dirNode) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if el, ok := b.dirs[d]; ok {
		b.lru.Remove(el)
		delete(b.dirs, d)
	}
}

// coldest removes and returns the directory used least recently, or nil.
func (b *inodeBudget) coldest() *dirNode {
	b.mu.Lock()
	defer b.mu.Unlock()
	el := b.lru.Back()
	if el == nil {
		return nil
	}
	d := b.lru.Remove(el).(*dirNode)
	delete(b.dirs, d)
	return d
}

// added counts a new file node and starts an eviction round when there
// are too many. It never blocks: it runs inside FUSE operations.
func (b *inodeBudget) added(f *FS) {
	if b.live.Add(1) <= maxLiveFiles {
		return
	}
	b.start.Do(func() {
		b.kick = make(chan struct{}, 1)
		go b.evictor(f.bgCtx, f)
	})
	select {
	case b.kick <- struct{}{}:
	default: // a round is already due
	}
}

// evictor runs eviction rounds until ctx ends. It holds no lock while it
// notifies the kernel, and runs outside any FUSE operation, as Notify*
// requires.
func (b *inodeBudget) evictor(ctx context.Context, f *FS) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.kick:
		}
		b.evictRound(f)
		select {
		case <-ctx.Done():
			return
		case <-time.After(evictPause):
		}
	}
}

// evictRound evicts the coldest directories until enough file nodes are
// on their way out to bring the count to three quarters of the bound.
func (b *inodeBudget) evictRound(f *FS) {
	target := b.live.Load() - maxLiveFiles*3/4
	var sent int64
	for sent < target {
		d := b.coldest()
		if d == nil {
			return
		}
		n := d.evict()
		sent += int64(n)
		f.log.Debug("evicted a cold directory's entries", "dir", d.path(), "files", n, "live", b.live.Load())
	}
}

// evict asks the kernel to forget d's unused file children, and returns
// how many file children d had. A directory without live subdirectories
// is invalidated as a whole in its parent: the kernel then drops it with
// its children, and go-fuse frees the directory's child index too (its
// maps never shrink). One with live subdirectories (a path to where the
// user works, say) keeps them, and only its files are invalidated.
func (d *dirNode) evict() int {
	var files []string
	hasDirs := false
	for name, ch := range d.Children() {
		if ch.IsDir() {
			hasDirs = true
		} else {
			files = append(files, name)
		}
	}
	if name, parent := d.Parent(); parent != nil && !hasDirs {
		notifyGone(d.fsys, parent, name)
		return len(files)
	}
	for _, name := range files {
		notifyGone(d.fsys, &d.Inode, name)
	}
	return len(files)
}

// notifyGone invalidates parent's entry name in the kernel.
func notifyGone(f *FS, parent *fs.Inode, name string) {
	// ENOENT: the kernel had already dropped it.
	if errno := parent.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
		f.log.Debug("evict entry", "name", name, "errno", errno)
	}
}

var _ = (fs.NodeOnAdder)((*fileNode)(nil))

// OnAdd counts the node against the budget of live file nodes.
func (n *fileNode) OnAdd(ctx context.Context) { n.fsys.inodes.added(n.fsys) }

var _ = (fs.NodeOnForgetter)((*fileNode)(nil))

// OnForget releases the node's place in the budget and its inode number.
func (n *fileNode) OnForget() {
	n.fsys.inodes.live.Add(-1)
	n.fsys.inos.forgotten(n.EmbeddedInode())
}

var _ = (fs.NodeOnForgetter)((*dirNode)(nil))

// OnForget stops tracking a directory the kernel forgot and frees its
// inode number.
func (n *dirNode) OnForget() {
	n.fsys.inodes.drop(n)
	n.fsys.inos.forgotten(n.EmbeddedInode())
}

var _ = (fs.NodeOnForgetter)((*metaNode)(nil))

// OnForget frees the node's inode number.
func (n *metaNode) OnForget() { n.fsys.inos.forgotten(n.EmbeddedInode()) }
