package vfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// renameDir moves a folder: every key under it, found with a flat listing,
// is copied server-side and deleted, and pending local changes under it are
// moved with it. Offline, the keys cannot be found: EXDEV makes mv fall
// back to copying file by file.
func (f *FS) renameDir(ctx context.Context, srcDir, name, dstDir, newName string, dstExists bool) error {
	srcPrefix := f.dirKeyPrefix(cache.JoinPath(srcDir, name))
	dstPrefix := f.dirKeyPrefix(cache.JoinPath(dstDir, newName))
	if !f.online() {
		return fmt.Errorf("rename of folder %q while offline: %w", srcPrefix, syscall.EXDEV)
	}
	pending := make(map[string]journal.PendingOp)
	for _, p := range f.cfg.Journal.PendingUnder(srcPrefix) {
		pending[p.Key] = p // newest last
	}
	// Each key moves as its own group (copy, then delete the old key), so
	// keys move in parallel; the journal orders each pair.
	var ops []journal.Op
	var staged []string
	var shown []cache.Entry // entries to show under the new folder, Name = path below it
	var settle []int        // deletes of keys that had pending ops: indexes in ops
	moveKey := func(key, etag string, size int64) error {
		rest := key[len(srcPrefix):]
		newKey := dstPrefix + rest
		if err := checkKey(newKey); err != nil {
			return fmt.Errorf("new name of %q: %w", key, err)
		}
		del := journal.Op{Kind: journal.Delete, Key: key, Base: journal.Base{Exists: etag != "", ETag: etag}}
		var move journal.Op
		p, hadPending := pending[key]
		if hadPending {
			delete(pending, key)
			switch p.Kind {
			case journal.Delete:
				return nil // already going away
			case journal.PutMarker:
				move = journal.Op{Kind: journal.PutMarker, Key: newKey}
			case journal.PutFile:
				w, err := f.copyStaged(ctx, p)
				switch {
				case errors.Is(err, os.ErrNotExist):
					// Uploaded meanwhile: copy it like the pending
					// copy below.
					move = journal.Op{Kind: journal.Copy, Key: newKey, Src: key}
				case err != nil:
					return err
				default:
					staged = append(staged, w.f.Name())
					size = p.Size
					move = journal.Op{Kind: journal.PutFile, Key: newKey, Staged: w.f.Name(), Meta: p.Meta, Partial: w.partial.describe()}
				}
			case journal.Copy:
				// Copied from the pending copy's result, which the
				// journal chains onto: its own source goes away with
				// the rename that made it.
				move = journal.Op{Kind: journal.Copy, Key: newKey, Src: key}
			}
		} else if strings.HasSuffix(key, "/") {
			move = journal.Op{Kind: journal.PutMarker, Key: newKey}
		} else {
			move = journal.Op{Kind: journal.Copy, Key: newKey, Src: key, SrcETag: etag}
		}
		if strings.HasSuffix(key, "/") {
			del.Base = journal.Base{Exists: true} // markers go whatever their ETag
		}
		group := len(ops) / 2
		move.Group, del.Group = group, group
		if hadPending {
			settle = append(settle, len(ops)+1) // its base is set under the commit's lock
		}
		ops = append(ops, move, del)
		if rest = strings.TrimSuffix(rest, "/"); rest != "" {
			shown = append(shown, cache.Entry{Name: rest, Dir: strings.HasSuffix(newKey, "/"), Size: size, Local: true})
		}
		return nil
	}
	err := f.cfg.Store.ListFlat(ctx, srcPrefix, func(p backend.Page) error {
		for _, o := range p.Objects {
			if isAttrIndexKey(o.Key) {
				continue // rewritten by the attribute index, not moved (attrindex.go)
			}
			if err := moveKey(o.Key, o.ETag, o.Size); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		for key := range pending { // local-only keys the store does not have yet
			if err = moveKey(key, "", 0); err != nil {
				break
			}
		}
	}
	if err == nil && !hasKey(ops, dstPrefix) {
		// Keep the folder even if empty.
		ops = append(ops, journal.Op{Kind: journal.PutMarker, Key: dstPrefix, Group: len(ops) / 2})
	}
	f.localMu.Lock()
	defer f.localMu.Unlock()
	if err == nil {
		f.settleMovedBases(ops, settle)
		err = f.cfg.Journal.Commit(ops...)
	}
	if err != nil {
		for _, s := range staged {
			removeQuietly(s)
		}
		return fmt.Errorf("rename folder %q: %w", srcPrefix, err)
	}
	if err := f.cfg.Tree.MoveDir(srcDir, name, dstDir, newName); err != nil {
		return err
	}

	// Show what moved, also what was never listed under the old name.
	dst := cache.JoinPath(dstDir, newName)
	for _, e := range shown {
		dir, base := splitPath(cache.JoinPath(dst, e.Name))
		e.Name = base
		if err := f.cfg.Tree.PutEntry(dir, e); err != nil {
			return err
		}
		if err := f.ensureParents(dir); err != nil {
			return err
		}
	}
	return nil
}

// settleMovedBases sets the condition of the deletes ops[i], i in idx, of
// keys that had local ops pending when a folder rename was prepared. Called
// with f.localMu held, so that FS.applied cannot run until the commit. The
// newest version of such a key is this machine's: an op still pending has
// a Local tree entry and cannot finish before the commit (its Applied waits
// for the lock), and the journal chains the delete onto it; one that
// finished meanwhile left its ETag in the tree.
func (f *FS) settleMovedBases(ops []journal.Op, idx []int) {
	for _, i := range idx {
		del := &ops[i]
		del.Base = journal.Base{}
		if strings.HasSuffix(del.Key, "/") {
			del.Base = journal.Base{Exists: true} // markers go whatever their ETag
			continue
		}
		rel, ok := f.relPath(del.Key)
		if !ok {
			continue
		}
		dir, name := splitPath(rel)
		if e, ok, err := f.cfg.Tree.Get(dir, name); err == nil && ok && !e.Local {
			del.Base = remoteBase(e)
		}
	}
}

// copyStaged copies the content of pending PutFile p into a new staging
// file, closed and ready to commit. os.ErrNotExist: p was uploaded and its
// content removed.
func (f *FS) copyStaged(ctx context.Context, p journal.PendingOp) (*workFile, error) {
	content, err := os.Open(p.Staged)
	if err != nil {
		return nil, err
	}
	defer content.Close()
	w, err := f.newWorkFile(ctx, content, p.Size, journal.Base{}, f.fromJournal(p.Partial))
	if err != nil {
		return nil, err
	}
	w.close()
	return w, nil
}

// resetMoved forgets the remote versions live nodes below ino knew under
// their old keys.
func resetMoved(ino *fs.Inode) {
	for _, ch := range ino.Children() {
		if fn, ok := ch.Operations().(*fileNode); ok {
			fn.mu.Lock()
			fn.entry.ETag, fn.entry.Local = "", true
			fn.ownETag = ""
			if fn.work != nil {
				fn.work.base = journal.Base{}
				fn.work.changes.forget()
			}
			fn.mu.Unlock()
		} else {
			resetMoved(ch)
		}
	}
}

func hasKey(ops []journal.Op, key string) bool {
	for _, op := range ops {
		if op.Key == key && op.Kind != journal.Delete {
			return true
		}
	}
	return false
}
