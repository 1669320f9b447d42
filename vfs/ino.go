package vfs

import (
	"context"
	"hash/fnv"
	"sync"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Inode numbers.
//
// A file's inode number must not change while it exists: tar compares a
// folder's number before it sets the folder's times at the end of an
// extraction, and pjdfstest checks that rename keeps it. The kernel
// forgets unused inodes (memory pressure, drop_caches, our invalidations)
// and looks them up again; go-fuse's automatic numbers would then give the
// same file a new one. So a node's number is its path's hash (nameIno),
// which a lookup after a forget computes again, and which readdir reports.
//
// Two live nodes must not share a number: a node keeps its number when it
// is renamed, so a new file at its old path would get the same hash, and
// tools that compare (st_dev, st_ino), such as diff and cp, would take the
// two for one file. inoTable remembers which node holds each number; a
// number held by a node that is in the tree under another name is skipped
// for the next of a fixed sequence (rehash).

// inoTable maps the inode numbers of live nodes to their inodes.
type inoTable struct {
	mu   sync.Mutex
	live map[uint64]*fs.Inode // GUARDED_BY(mu)
}

// nameIno is the first inode number tried for the node at dir/name.
func nameIno(dir, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(dir))
	h.Write([]byte{0})
	h.Write([]byte(name))
	return h.Sum64() | 1
}

// rehash is the number tried after ino: an odd step through all 2^64.
func rehash(ino uint64) uint64 { return ino*0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019 }

// maxProbes bounds the numbers tried; past it, go-fuse picks one (which
// only costs stability across a forget). With 64-bit hashes a second
// probe is already rare.
const maxProbes = 8

// pick returns the number of the node named name under parent (at path
// dir): the first in its sequence that no live node elsewhere in the tree
// holds; 0 (go-fuse's choice) if all tried are. The holder is read under
// mu and asked for its place outside it: go-fuse may hold an inode's lock
// when it calls OnForget, which takes mu.
func (t *inoTable) pick(parent *fs.Inode, dir, name string) uint64 {
	ino := nameIno(dir, name)
	for range maxProbes {
		t.mu.Lock()
		h := t.live[ino]
		t.mu.Unlock()
		if ino > fuse.FUSE_ROOT_ID && (h == nil || !holdsElsewhere(h, parent, name)) {
			return ino
		}
		ino = rehash(ino)
	}
	return 0
}

// holdsElsewhere reports whether h is in the tree under another parent or
// name than name under parent. A node out of the tree (unlinked, still
// open; or one that lost a racing lookup and was never used) no longer
// shows its number beside a path.
func holdsElsewhere(h, parent *fs.Inode, name string) bool {
	hname, hparent := h.Parent()
	return hparent != nil && (hparent != parent || hname != name)
}

// newChild makes the inode of a new node (ops, of type mode) named name
// under parent, at path dir, with the number pick gives.
func (f *FS) newChild(ctx context.Context, parent *fs.Inode, dir, name string, ops fs.InodeEmbedder, mode uint32) *fs.Inode {
	ch := parent.NewInode(ctx, ops, fs.StableAttr{Mode: mode, Ino: f.inos.pick(parent, dir, name)})
	f.inos.mu.Lock()
	if f.inos.live == nil {
		f.inos.live = make(map[uint64]*fs.Inode)
	}
	f.inos.live[ch.StableAttr().Ino] = ch
	f.inos.mu.Unlock()
	return ch
}

// forgotten drops n's number from the table once the kernel forgot n.
func (t *inoTable) forgotten(n *fs.Inode) {
	ino := n.StableAttr().Ino
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.live[ino] == n {
		delete(t.live, ino)
	}
}

// readdirIno is the number readdir reports for name under parent: the
// live child's, else the one a lookup would give it.
func (t *inoTable) readdirIno(parent *fs.Inode, dir, name string) uint64 {
	if ch := parent.GetChild(name); ch != nil {
		return ch.StableAttr().Ino
	}
	if ino := t.pick(parent, dir, name); ino != 0 {
		return ino
	}
	return nameIno(dir, name)
}
