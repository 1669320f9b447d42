package journal

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
)

// flatLister is what MoveTree needs beyond Store: every key under a prefix.
// backend.Backend has it.
type flatLister interface {
	ListFlat(ctx context.Context, prefix string, fn func(backend.Page) error) error
}

var _ flatLister = (backend.Backend)(nil)

// moveTree moves every key under rec.Src to rec.Key + the rest of the key
// (see MoveTree). Each key is copied If-None-Match from the version the
// listing found, then deleted If-Match that version. An attempt cut short
// is simply run again: what moved is no longer under Src, and a copy that
// landed without its delete is recognised at the destination.
func (j *Journal) moveTree(ctx context.Context, rec *record) (outcome, error) {
	lister, ok := j.store.(flatLister)
	if !ok {
		return outcome{}, fmt.Errorf("%w: the store cannot list %q to move it", errLocal, rec.Src)
	}
	if !strings.HasSuffix(rec.Src, "/") || !strings.HasSuffix(rec.Key, "/") {
		return outcome{}, fmt.Errorf("%w: move of %q to %q: both must be folder prefixes", errLocal, rec.Src, rec.Key)
	}
	var objs []backend.ObjectInfo
	err := lister.ListFlat(ctx, rec.Src, func(p backend.Page) error {
		objs = append(objs, p.Objects...)
		return nil
	})
	if err != nil {
		return outcome{}, fmt.Errorf("list %q to move it: %w", rec.Src, err)
	}
	moved := 0
	for _, o := range objs {
		if err := ctx.Err(); err != nil {
			return outcome{}, err
		}
		dst := rec.Key + strings.TrimPrefix(o.Key, rec.Src)
		ok, err := j.moveKey(ctx, rec, o, dst)
		if err != nil {
			return outcome{}, err
		}
		if ok {
			moved++
		}
	}
	j.log.Info("folder moved", "src", rec.Src, "key", rec.Key, "seq", rec.Seq, "keys", moved, "listed", len(objs))
	// A marker, if any, moved with the rest: the chain continues from a
	// folder that exists.
	return outcome{info: backend.ObjectInfo{Key: rec.Key}, next: base{Exists: true}}, nil
}

// moveKey moves one listed object o to dst, and reports whether it moved. An
// object changed remotely since it was copied is kept where it is (the
// delete fails its If-Match): both versions stay. A destination that holds
// something else keeps it, and the source stays under its name too; that is
// recorded as a conflict.
func (j *Journal) moveKey(ctx context.Context, rec *record, o backend.ObjectInfo, dst string) (bool, error) {
	etag := o.ETag
	copied := false
	for range maxRounds {
		_, err := j.store.Copy(ctx, o.Key, etag, dst, backend.Cond{IfNoneMatch: true})
		if err == nil {
			copied = true
			break
		}
		if !errors.Is(err, backend.ErrPrecondition) && !errors.Is(err, backend.ErrNotFound) {
			return false, err
		}
		src, srcErr := j.store.Stat(ctx, o.Key)
		if srcErr != nil && !errors.Is(srcErr, backend.ErrNotFound) {
			return false, srcErr
		}
		cur, dstErr := j.store.Stat(ctx, dst)
		if dstErr != nil && !errors.Is(dstErr, backend.ErrNotFound) {
			return false, dstErr
		}
		srcExists, dstExists := srcErr == nil, dstErr == nil
		switch {
		case dstExists && sameObject(cur, etag, src, srcExists):
			copied = true // copied before (a replay), or the same content anyway
		case !srcExists:
			return false, nil // gone since the listing: nothing to move
		case src.ETag != etag:
			etag = src.ETag // changed since the listing: move it as it is now
			continue
		case !dstExists:
			continue // the destination went meanwhile: copy again
		default:
			j.log.Warn("folder move: destination taken; the file stays under its old name", "src", o.Key, "key", dst)
			return false, j.noteConflict(Conflict{Key: o.Key, Time: j.now(), Reason: ReasonRenamedOnto})
		}
		break
	}
	if !copied {
		return false, errChurn
	}
	err := j.store.Delete(ctx, o.Key, etag)
	switch {
	case err == nil, errors.Is(err, backend.ErrNotFound):
		return true, nil
	case errors.Is(err, backend.ErrPrecondition):
		// Edited remotely after the copy: the edit keeps its name.
		j.log.Warn("folder move: file changed remotely while moved; both versions kept", "src", o.Key, "key", dst)
		return true, j.noteConflict(Conflict{Key: o.Key, Time: j.now(), Reason: ReasonDeleteKept})
	default:
		return false, err
	}
}

// sameObject reports whether dst holds the version etag of the source (or
// the source's current one, src): same ETag, or the same nimbus content hash.
func sameObject(dst backend.ObjectInfo, etag string, src backend.ObjectInfo, srcExists bool) bool {
	if dst.ETag == etag || (srcExists && dst.ETag == src.ETag) {
		return true
	}
	h := dst.Meta[shaMeta]
	return h != "" && srcExists && src.Meta[shaMeta] == h
}

// noteConflict records a conflict found inside an op that itself completes
// (a key of a folder move left in place), once: a replay of the move finds
// the same key left in place again.
func (j *Journal) noteConflict(c Conflict) error {
	j.writeMu.Lock()
	defer j.writeMu.Unlock()
	recorded, err := readConflicts(j.db)
	if err != nil {
		return fmt.Errorf("record conflict on %q: %w", c.Key, err)
	}
	for _, r := range recorded {
		if r.Key == c.Key && r.ConflictKey == "" {
			return nil
		}
	}
	if err := j.db.Update(func(tx *bbolt.Tx) error { return putConflict(tx, &c) }); err != nil {
		return fmt.Errorf("record conflict on %q: %w", c.Key, err)
	}
	j.mu.Lock()
	j.conflicts++
	j.notifyLocked()
	j.mu.Unlock()
	return nil
}
