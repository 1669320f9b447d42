package vfs

import (
	"io"
	"os"

	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

// uploadAdopter is what keeping uploaded content needs from the block
// cache (cache.BlockStore.Adopt).
type uploadAdopter interface {
	Adopt(c cache.Content, src io.ReaderAt) (int64, error)
}

// adoptUploaded hands the staged content of an upload that landed to the
// block cache as the blocks of the version it became, so that reading back
// a file written here costs no GET, now or after a remount. Called from
// Applied, while the staged file still exists. Partial content lacks bytes
// and a conflicted copy's name is not the file's: both are left out.
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
	defer src.Close()
	if fi, err := src.Stat(); err != nil || fi.Size() != r.Info.Size {
		// Not the bytes of that version: the cache must never claim them.
		f.log.Warn("keep uploaded content in the cache: staged size differs", "key", r.Op.Key, "size", r.Info.Size, "err", err)
		return
	}
	c := cache.Content{Key: r.Op.Key, ETag: r.Info.ETag, Size: r.Info.Size}
	if _, err := a.Adopt(c, src); err != nil {
		f.log.Warn("keep uploaded content in the cache", "key", r.Op.Key, "err", err)
	}
}
