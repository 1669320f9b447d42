package vfs

import (
	"errors"
	"io"
	"os"

	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// uploadAdopter is what keeping uploaded content needs from the block
// cache (cache.BlockStore.StartAdopt).
type uploadAdopter interface {
	StartAdopt(c cache.Content, src io.ReaderAt) (done <-chan error, err error)
}

// stagedLinker is the cheaper hand-over (cache.BlockStore.LinkAdopt): the
// staged file itself becomes the cached content, by a hard link.
type stagedLinker interface {
	LinkAdopt(c cache.Content, path string) (bool, error)
}

// adoptUploaded hands the staged content of an upload that landed to the
// block cache as the blocks of the version it became, so that reading back
// a file written here costs no GET, now or after a remount. Called from
// Applied, while the staged file still exists. Partial content lacks bytes
// and a conflicted copy's name is not the file's: both are left out.
//
// Only the claim of the blocks is done here; the bytes are copied in the
// background, from the staged file held open (the journal removes it once
// Applied returns). Copying a large file took longer than its last parts
// and the completion together, and the upload was not reported done, nor
// `nimbus sync` answered, until it ended. A read meanwhile waits for the
// blocks it needs, as for a GET.
func (f *FS) adoptUploaded(r journal.Result) {
	a, ok := f.cfg.Blocks.(uploadAdopter)
	if !ok || r.Op.Kind != journal.PutFile || r.Conflict != nil || r.Dropped ||
		r.Op.Partial != nil || r.Op.Staged == "" || r.Info.ETag == "" || r.Info.Size == 0 {
		return
	}
	src, err := os.Open(r.Op.Staged)
	if err != nil {
		f.log.Warn("keep uploaded content in the cache", "key", r.Op.Key, "err", err)
		return
	}
	if fi, err := src.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() != r.Info.Size {
		// Not the bytes of that version: the cache must never claim them.
		f.log.Warn("keep uploaded content in the cache: staged size differs", "key", r.Op.Key, "size", r.Info.Size, "err", err)
		closeQuietly(src)
		return
	}
	c := cache.Content{Key: r.Op.Key, ETag: r.Info.ETag, Size: r.Info.Size}
	if l, ok := f.cfg.Blocks.(stagedLinker); ok {
		// Nothing writes a staged file once committed (a later write
		// copies it first), so it can be the cache's file as it is.
		linked, err := l.LinkAdopt(c, r.Op.Staged)
		if err != nil {
			f.log.Warn("keep uploaded content in the cache", "key", r.Op.Key, "err", err)
		}
		if linked {
			closeQuietly(src)
			return
		}
	}
	done, err := a.StartAdopt(c, src)
	if err != nil {
		f.log.Warn("keep uploaded content in the cache", "key", r.Op.Key, "err", err)
		closeQuietly(src)
		return
	}
	go func() {
		// Not FS.background: the block store's Close waits for the copy.
		switch err := <-done; {
		case errors.Is(err, cache.ErrBlockStoreClosed):
			f.log.Debug("unmounted before the uploaded content was all cached", "key", r.Op.Key)
		case err != nil:
			f.log.Warn("keep uploaded content in the cache", "key", r.Op.Key, "err", err)
		}
		closeQuietly(src)
	}()
}
