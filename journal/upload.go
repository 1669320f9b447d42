package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
)

// maxRounds bounds how often one attempt re-reads the remote state of a key
// that keeps changing under it; then the attempt fails and is retried with
// backoff.
const maxRounds = 5

// maxConflictNames bounds the " 2", " 3"… suffixes tried for a conflicted
// copy before the op is parked.
const maxConflictNames = 100

// errChurn: the remote object changed again at every look.
var errChurn = errors.New("the remote object kept changing; will try again")

// errLocal marks a failure of the local staged content, which retrying
// will not fix.
var errLocal = errors.New("local journal data unusable")

// outcome is what a completed op did.
type outcome struct {
	info     backend.ObjectInfo // the object written; zero for Delete and dropped ops
	conflict *Conflict
	dropped  bool
	// next is the remote state the local edit chain of the key continues
	// from: the base of the next op on the key, if it was chained to this
	// one.
	next base
}

// upload runs one attempt of e (whose record snapshot is rec) and records
// its outcome.
func (j *Journal) upload(ctx context.Context, e *entry, rec record) {
	var (
		out outcome
		err error
	)
	if rec.Base.After != 0 || rec.SrcAfter != 0 {
		// Ordering makes this impossible: an op starts only after the op
		// it is chained to completed and resolved it. Writing with a
		// guessed condition could overwrite a remote edit; park instead.
		j.failed(e, fmt.Errorf("%w: op %d on %q is still chained to op %d/%d", errLocal, rec.Seq, rec.Key, rec.Base.After, rec.SrcAfter), failPark)
		return
	}
	switch rec.Kind {
	case PutFile:
		out, err = j.putFile(ctx, e, &rec)
		if err == nil {
			// Uploaded otherwise than by its early upload (a conflicted
			// copy, a Put after a fallback): that one goes.
			j.releaseStreams(e)
		}
	case PutMarker:
		out, err = j.putMarker(ctx, &rec)
	case Copy:
		out, err = j.copyObject(ctx, e, &rec)
	case Delete:
		out, err = j.deleteObject(ctx, &rec)
	case MoveTree:
		out, err = j.moveTree(ctx, &rec) // rename_dir.go
	case Restore:
		out, err = j.restoreVersion(ctx, &rec)
	default:
		err = fmt.Errorf("%w: unknown op kind %d", errLocal, int(rec.Kind))
	}
	if err != nil {
		j.failed(e, err, j.classify(ctx, err))
		return
	}
	j.complete(e, rec, out)
}

// classify decides what a failed attempt leads to.
func (j *Journal) classify(ctx context.Context, err error) failure {
	switch {
	case ctx.Err() != nil:
		return failAbandoned
	case errors.Is(err, backend.ErrAccess), errors.Is(err, backend.ErrInvalidKey), errors.Is(err, errLocal):
		return failPark
	case errors.Is(err, backend.ErrOffline), errors.Is(err, backend.ErrNoBucket):
		return failOffline
	default:
		// ErrConflict (409), 5xx, anything unknown: transient until
		// proven otherwise, and never dropped.
		return failRetry
	}
}

// completionLinger is how long the first of a group of completions waits
// for more while other uploads are in flight, before it records them all
// in one transaction. Each transaction costs two fdatasyncs; an untar's
// thousands of small uploads finish a few a millisecond, and recorded as
// they came they took one transaction for every 1.6 of them. The slot of
// a finished op is free meanwhile (complete), so the wait holds back no
// upload, only the removal of the ops from the journal (and so nimbus sync
// by as much, and the ops chained to them).
const completionLinger = 3 * time.Millisecond

// complete reports a finished op, then removes its record, resolves the
// ops chained to it, and stores a conflict, all in one transaction, which
// completions that arrive meanwhile share (group commit, as for Commit).
// The first completion of a group leads it: it lingers while other uploads
// are in flight, then records and reports the whole group; the others
// return at once. The op's upload slot is given back before that, so the
// next op starts while this one is recorded; the op stays pending (for
// WaitIdle, and for the ops chained to it) until it is recorded.
func (j *Journal) complete(e *entry, rec record, out outcome) {
	res := Result{Seq: rec.Seq, Op: j.opOf(&rec), Info: out.info, Conflict: out.conflict, Dropped: out.dropped}
	if j.applied != nil {
		j.applied(res)
	}

	j.mu.Lock()
	j.uploading--
	others := j.uploading > 0
	j.mu.Unlock()
	// The dispatcher may start the next op. Only it: nothing a waiter
	// (WaitIdle) looks at changes until the op is recorded.
	j.nudge()

	c := &completion{e: e, rec: rec, out: out}
	j.queueMu.Lock()
	lead := len(j.completeQ) == 0
	j.completeQ = append(j.completeQ, c)
	j.queueMu.Unlock()
	if !lead {
		return
	}
	if others {
		j.linger()
	}
	j.writeMu.Lock()
	batch, err := j.completeQueuedLocked()
	j.writeMu.Unlock()
	for _, c := range batch {
		j.reportCompletion(c, err)
	}
}

// reportCompletion logs a recorded completion, or puts its op back when
// recording failed.
func (j *Journal) reportCompletion(c *completion, err error) {
	rec, out := c.rec, c.out
	switch {
	case err != nil:
		// The op will run again and find its own result (idempotent).
		j.mu.Lock()
		j.uploading++ // failed gives back the slot complete gave back already
		j.mu.Unlock()
		j.failed(c.e, fmt.Errorf("record completion: %w", err), failRetry)
	case out.conflict != nil:
		j.log.Warn("conflict", "op", rec.Kind, "key", rec.Key, "seq", rec.Seq,
			"conflict_key", out.conflict.ConflictKey, "reason", out.conflict.Reason, "dropped", out.dropped)
	default:
		j.log.Info("op done", "op", rec.Kind, "key", rec.Key, "seq", rec.Seq, "etag", out.info.ETag, "size", out.info.Size)
	}
}

// completion is a finished op waiting in Journal.completeQ.
type completion struct {
	e   *entry
	rec record
	out outcome
}

// completeQueuedLocked records every queued completion in one transaction
// and then removes their ops. It returns them, and the error that failed
// the transaction. Callers hold writeMu.
func (j *Journal) completeQueuedLocked() ([]*completion, error) {
	j.queueMu.Lock()
	batch := j.completeQ
	j.completeQ = nil // a completion from now on leads a new group
	j.queueMu.Unlock()

	// Ops that completed together were uploading at once, so none waits
	// for another; but one follower may wait for two of them (a Copy's
	// key and source): its record is resolved by each in turn.
	j.mu.Lock()
	resolved := map[*entry]*record{}
	var order []*entry
	for _, c := range batch {
		for _, f := range j.resolveFollowersLocked(&c.rec, c.out, resolved) {
			if resolved[f.e] == nil {
				order = append(order, f.e)
			}
			r := f.rec
			resolved[f.e] = &r
		}
	}
	j.mu.Unlock()
	j.completeTxs.Add(1)
	err := j.recordCompletions(func(tx *bbolt.Tx) error {
		for _, c := range batch {
			if err := deleteRecord(tx, c.rec.Seq); err != nil {
				return err
			}
		}
		for _, f := range order {
			if err := putRecord(tx, resolved[f]); err != nil {
				return err
			}
		}
		for _, c := range batch {
			if c.out.conflict != nil {
				if err := putConflict(tx, c.out.conflict); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return batch, err
	}
	// Remove the content before the op leaves the in-memory state, so that
	// once WaitIdle says idle nothing is left behind. An unlink is cheap
	// enough to do under writeMu.
	for _, c := range batch {
		if c.rec.Staged != "" {
			if err := os.Remove(j.stagedPath(c.rec.Staged)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				// Unreferenced now; Open removes it.
				j.log.Warn("remove uploaded staged file", "file", c.rec.Staged, "err", err)
			}
		}
	}
	j.mu.Lock()
	for _, f := range order {
		f.rec = *resolved[f]
	}
	for _, c := range batch {
		j.removeLocked(c.e)
		if c.out.conflict != nil {
			j.conflicts++
			if c.out.conflict.ConflictKey != "" {
				j.copies[c.out.conflict.ConflictKey] = true
			}
		}
	}
	j.storeAnsweredLocked()
	j.notifyLocked()
	j.mu.Unlock()
	if len(batch) > 1 {
		j.log.Debug("completions grouped", "ops", len(batch))
	}
	return batch, nil
}

// resolvedFollower is the new record of an op chained to a completed one.
type resolvedFollower struct {
	e   *entry
	rec record
}

// resolveFollowersLocked computes the records of the ops chained to rec,
// with the chain replaced by what rec produced. They wait on rec's key, so
// they are in its queue and none is uploading.
//
// A follower already resolved by another op of the same group commit
// (resolved) starts from that new record.
func (j *Journal) resolveFollowersLocked(rec *record, out outcome, resolved map[*entry]*record) []resolvedFollower {
	var res []resolvedFollower
	for _, f := range j.keyQ[rec.Key] {
		cur := &f.rec
		if r := resolved[f]; r != nil {
			cur = r
		}
		if cur.Seq == rec.Seq || (cur.Base.After != rec.Seq && cur.SrcAfter != rec.Seq) {
			continue
		}
		r := *cur
		r.Groups = slices.Clone(r.Groups)
		if r.Base.After == rec.Seq {
			r.Base = out.next
			r.Delta = rebasedDelta(r.Delta, rec, out) // delta.go
		}
		if r.SrcAfter == rec.Seq {
			r.SrcAfter = 0
			switch {
			case out.conflict != nil && out.conflict.ConflictKey != "" && !out.dropped:
				// Our version of the source lives in the conflicted
				// copy: copy that, not the remote version.
				r.Src, r.SrcETag = out.info.Key, out.info.ETag
			case out.next.Exists:
				r.SrcETag = out.next.ETag
			}
		}
		res = append(res, resolvedFollower{e: f, rec: r})
	}
	return res
}

// opOf rebuilds the Op of a record, for Result.
func (j *Journal) opOf(r *record) Op {
	op := Op{Kind: r.Kind, Key: r.Key, Src: r.Src, SrcETag: r.SrcETag, Version: r.Version, Trash: r.Trash, Base: r.Base.public(), Meta: cloneMeta(r.Meta), Delta: r.Delta.public(), Partial: r.Partial.public()}
	if r.Staged != "" {
		op.Staged = j.stagedPath(r.Staged)
	}
	return op
}

// cond is the write condition for base b.
func cond(b base) backend.Cond {
	if b.Exists {
		return backend.Cond{IfMatch: b.ETag}
	}
	return backend.Cond{IfNoneMatch: true}
}

// putFile uploads rec's staged content (see PutFile).
func (j *Journal) putFile(ctx context.Context, e *entry, rec *record) (outcome, error) {
	f, err := os.Open(j.stagedPath(rec.Staged))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("%w: %w", errLocal, err)
		}
		return outcome{}, fmt.Errorf("open staged content of %q: %w", rec.Key, err)
	}
	defer closeQuietly(f)
	if fi, err := f.Stat(); err != nil {
		return outcome{}, fmt.Errorf("stat staged content of %q: %w", rec.Key, err)
	} else if fi.Size() != rec.Size {
		return outcome{}, fmt.Errorf("%w: staged content of %q is %d bytes, %d were committed", errLocal, rec.Key, fi.Size(), rec.Size)
	}
	meta := cloneMeta(rec.Meta)
	if meta == nil {
		meta = map[string]string{}
	}
	meta[shaMeta] = rec.SHA256
	if rec.Token != "" {
		meta[tokenMeta] = rec.Token
	}
	// The content: the staged file, completed from the object holding
	// what a partial one lacks, read only where it is sent.
	var body io.ReaderAt = f
	if p := rec.Partial; p != nil {
		body = &filled{ctx: ctx, store: j.store, staged: f, from: p.From, fromETag: p.FromETag, missing: p.ranges()}
	}
	put := func(key string, c backend.Cond) (backend.ObjectInfo, error) {
		if key == rec.Key {
			// The parts sent while the file was written, if any.
			info, err := j.completeStream(ctx, e, rec, f, c) // stream.go
			if !errors.Is(err, errNoStream) {
				return info, err
			}
		}
		if d := rec.Delta; d != nil && key == rec.Key && c.IfMatch != "" && c.IfMatch == d.SrcETag {
			if dp, ok := j.store.(backend.DeltaPutter); ok {
				// The ranges describe the content relative to the
				// very version the write replaces: they may be
				// copied from it.
				res, err := dp.PutDelta(ctx, key, body, rec.Size, meta, d.SrcETag, d.ranges())
				if err == nil {
					j.log.Debug("uploaded as a delta", "key", key, "seq", rec.Seq, "sent", res.Sent, "copied", res.Copied)
				}
				return res.Info, err
			}
		}
		if rec.Partial != nil {
			return j.store.Put(ctx, key, io.NewSectionReader(body, 0, rec.Size), rec.Size, meta, c)
		}
		if _, err := f.Seek(0, 0); err != nil {
			return backend.ObjectInfo{}, fmt.Errorf("rewind staged content of %q: %w", rec.Key, err)
		}
		return j.store.Put(ctx, key, f, rec.Size, meta, c)
	}
	isOurs := rec.isOurs

	if rec.ConflictTime.IsZero() {
		c := cond(rec.Base)
		for range maxRounds {
			info, err := put(rec.Key, c)
			if err == nil {
				return outcome{info: info, next: base{Exists: true, ETag: info.ETag}}, nil
			}
			if !errors.Is(err, backend.ErrPrecondition) {
				return outcome{}, err
			}
			cur, err := j.store.Stat(ctx, rec.Key)
			switch {
			case errors.Is(err, backend.ErrNotFound):
				if rec.Base.Exists {
					j.log.Info("file deleted remotely while edited here; re-creating it", "key", rec.Key)
				}
				c = backend.Cond{IfNoneMatch: true}
				continue
			case err != nil:
				return outcome{}, err
			case isOurs(cur):
				// Our upload got there before (a replay after a crash or
				// a lost answer).
				return outcome{info: cur, next: base{Exists: true, ETag: cur.ETag}}, nil
			case rec.isPrior(cur):
				// An earlier version of this same edit chain, which
				// this op superseded: ours to replace.
				c = backend.Cond{IfMatch: cur.ETag}
				continue
			case rec.sameContent(cur):
				// Another writer stored these very bytes: nothing of
				// ours is lost, so no conflicted copy. The chain goes
				// on from that version, whose content is the one the
				// next local edit was made on: a later write is
				// conditioned on it and cannot overwrite a change
				// made to it meanwhile.
				j.log.Info("the remote object already holds this content", "key", rec.Key, "seq", rec.Seq, "etag", cur.ETag)
				return outcome{info: cur, next: base{Exists: true, ETag: cur.ETag}}, nil
			case rec.Size == 0:
				// An empty version (a new file, a truncate), and the
				// remote object changed meanwhile: the remote version
				// keeps the name, and a conflicted copy would hold
				// nothing. The chain goes on from this op's base, so a
				// later write of the file here conflicts (and is kept as
				// a copy) instead of overwriting the other writer's.
				j.log.Info("an empty version gives way to the remote one", "key", rec.Key, "seq", rec.Seq, "etag", cur.ETag)
				return outcome{dropped: true, next: rec.Base}, nil
			}
			reason := ReasonEdited
			if !rec.Base.Exists {
				reason = ReasonCreated
			}
			if err := j.decideConflict(e, rec, reason); err != nil {
				return outcome{}, err
			}
			break
		}
		if rec.ConflictTime.IsZero() {
			return outcome{}, errChurn
		}
	}

	// Our version goes to a conflicted copy; the remote keeps the name.
	return j.toConflictCopy(rec, func(name string) (outcome, bool, error) {
		for range maxRounds {
			info, err := put(name, backend.Cond{IfNoneMatch: true})
			if err == nil {
				return j.conflictOutcome(rec, info), false, nil
			}
			if !errors.Is(err, backend.ErrPrecondition) {
				return outcome{}, false, err
			}
			cur, err := j.store.Stat(ctx, name)
			switch {
			case errors.Is(err, backend.ErrNotFound):
				continue // deleted meanwhile: try the name again
			case err != nil:
				return outcome{}, false, err
			case isOurs(cur):
				return j.conflictOutcome(rec, cur), false, nil
			}
			break // taken by something else
		}
		return outcome{}, true, nil
	})
}

// toConflictCopy tries rec's conflicted-copy names in turn ("x (conflicted
// copy … host).txt", then " 2", …): try places our version at name, or
// reports the name taken by something else, or fails.
func (j *Journal) toConflictCopy(rec *record, try func(name string) (out outcome, taken bool, err error)) (outcome, error) {
	for n := 1; n <= maxConflictNames; n++ {
		out, taken, err := try(conflictNameN(rec.Key, j.host, rec.ConflictTime, n))
		if err != nil || !taken {
			return out, err
		}
	}
	return outcome{}, fmt.Errorf("%w: no free conflicted-copy name for %q", backend.ErrInvalidKey, rec.Key)
}

// conflictOutcome is the outcome of an op whose version went to the
// conflicted copy info. The chain continues from the op's own base, so that
// a later local edit conflicts too instead of overwriting the remote edit.
func (j *Journal) conflictOutcome(rec *record, info backend.ObjectInfo) outcome {
	return outcome{
		info:     info,
		conflict: &Conflict{Key: rec.Key, ConflictKey: info.Key, Time: rec.ConflictTime, Reason: rec.ConflictReason},
		next:     rec.Base,
	}
}

// decideConflict records, before any conflicted copy is written, that rec
// conflicts, and when: a replay then writes the same name, and recognises
// its copy, instead of making another.
func (j *Journal) decideConflict(e *entry, rec *record, reason string) error {
	rec.ConflictTime = j.now()
	rec.ConflictReason = reason
	j.writeMu.Lock()
	defer j.writeMu.Unlock()
	j.mu.Lock()
	persisted := e.rec
	j.mu.Unlock()
	persisted.ConflictTime, persisted.ConflictReason = rec.ConflictTime, rec.ConflictReason
	if rec.Kind == Copy {
		persisted.Src, persisted.SrcETag = rec.Src, rec.SrcETag
	}
	if err := j.db.Update(func(tx *bbolt.Tx) error { return putRecord(tx, &persisted) }); err != nil {
		rec.ConflictTime, rec.ConflictReason = time.Time{}, ""
		return fmt.Errorf("record conflict on %q: %w", rec.Key, err)
	}
	j.mu.Lock()
	e.rec = persisted
	j.mu.Unlock()
	j.log.Info("conflict detected", "op", rec.Kind, "key", rec.Key, "seq", rec.Seq, "reason", reason)
	return nil
}

// putMarker creates a directory marker (see PutMarker).
func (j *Journal) putMarker(ctx context.Context, rec *record) (outcome, error) {
	for range maxRounds {
		info, err := j.store.Put(ctx, rec.Key, bytes.NewReader(nil), 0, rec.Meta, backend.Cond{IfNoneMatch: true})
		if err == nil {
			return outcome{info: info, next: base{Exists: true, ETag: info.ETag}}, nil
		}
		if !errors.Is(err, backend.ErrPrecondition) {
			return outcome{}, err
		}
		cur, err := j.store.Stat(ctx, rec.Key)
		switch {
		case errors.Is(err, backend.ErrNotFound):
			continue
		case err != nil:
			return outcome{}, err
		}
		if rec.Meta != nil && !sameMeta(cur.Meta, rec.Meta) {
			// New attributes of an existing folder (chmod, chown, touch):
			// a marker holds nothing else to lose.
			info, err := j.store.Put(ctx, rec.Key, bytes.NewReader(nil), 0, rec.Meta, backend.Cond{IfMatch: cur.ETag})
			if errors.Is(err, backend.ErrPrecondition) {
				continue
			}
			if err != nil {
				return outcome{}, err
			}
			cur = info
		}
		return outcome{info: cur, next: base{Exists: true, ETag: cur.ETag}}, nil // it exists: done
	}
	return outcome{}, errChurn
}

// deleteObject removes a key unless it changed remotely (see Delete).
func (j *Journal) deleteObject(ctx context.Context, rec *record) (outcome, error) {
	gone := outcome{next: base{}}
	ifMatch := rec.Base.ETag
	if !rec.Base.Exists {
		if len(rec.Prior) == 0 {
			return gone, nil // it never existed remotely: nothing to remove
		}
		// A superseded upload of this chain may have created it.
		cur, err := j.store.Stat(ctx, rec.Key)
		switch {
		case errors.Is(err, backend.ErrNotFound):
			return gone, nil
		case err != nil:
			return outcome{}, err
		case !rec.isPrior(cur):
			return gone, nil // someone else's object: not ours to delete
		}
		ifMatch = cur.ETag
	}
	for range maxRounds {
		err := j.trashThenDelete(ctx, rec, ifMatch)
		if err == nil || errors.Is(err, backend.ErrNotFound) {
			return gone, nil
		}
		if !errors.Is(err, backend.ErrPrecondition) {
			return outcome{}, err
		}
		cur, err := j.store.Stat(ctx, rec.Key)
		switch {
		case errors.Is(err, backend.ErrNotFound):
			return gone, nil
		case err != nil:
			return outcome{}, err
		case rec.isPrior(cur):
			ifMatch = cur.ETag
			continue
		}
		// The remote version changed since the edit began: it wins.
		return outcome{
			dropped:  true,
			conflict: &Conflict{Key: rec.Key, Time: j.now(), Reason: ReasonDeleteKept},
			next:     base{},
		}, nil
	}
	return outcome{}, errChurn
}

// trashThenDelete deletes rec.Key If-Match ifMatch, after copying that
// version server-side to rec.Trash when the op has a trash key. The copy is
// conditioned on the source (copy-source-if-match), not on the trash key:
// a replay after a crash copies the same version onto the same key again,
// which changes nothing, and once the delete happened the source is gone
// (ErrNotFound, which the caller takes as done). A source changed
// remotely fails the copy with ErrPrecondition before anything is written,
// so the caller keeps the remote version and no trash copy is made.
func (j *Journal) trashThenDelete(ctx context.Context, rec *record, ifMatch string) error {
	if rec.Trash != "" {
		if _, err := j.store.Copy(ctx, rec.Key, ifMatch, rec.Trash, backend.Cond{}); err != nil {
			return fmt.Errorf("move %q to the trash: %w", rec.Key, err)
		}
	}
	return j.store.Delete(ctx, rec.Key, ifMatch)
}

// copyObject copies Src to Key server-side (see Copy).
func (j *Journal) copyObject(ctx context.Context, e *entry, rec *record) (outcome, error) {
	srcETag := rec.SrcETag
	// isCopy reports whether dst already holds the source content: the
	// expected version, or the one there now, by ETag or content hash.
	isCopy := func(dst backend.ObjectInfo, src *backend.ObjectInfo) bool {
		if dst.ETag == rec.SrcETag || dst.ETag == srcETag {
			return true
		}
		if src != nil {
			if dst.ETag == src.ETag {
				return true
			}
			if h := src.Meta[shaMeta]; h != "" && dst.Meta[shaMeta] == h {
				return true
			}
		}
		return false
	}
	// look reads the source and the object at dst after a failed copy.
	look := func(dst string) (src, cur *backend.ObjectInfo, err error) {
		s, err := j.store.Stat(ctx, rec.Src)
		switch {
		case errors.Is(err, backend.ErrNotFound):
		case err != nil:
			return nil, nil, err
		default:
			src = &s
		}
		d, err := j.store.Stat(ctx, dst)
		switch {
		case errors.Is(err, backend.ErrNotFound):
		case err != nil:
			return nil, nil, err
		default:
			cur = &d
		}
		return src, cur, nil
	}
	srcGone := func() (outcome, error) {
		return outcome{
			dropped:  true,
			conflict: &Conflict{Key: rec.Key, Time: j.now(), Reason: ReasonRenameSrcGone},
			next:     rec.Base,
		}, nil
	}

	if rec.ConflictTime.IsZero() {
		c := cond(rec.Base)
		for range maxRounds {
			info, err := j.store.Copy(ctx, rec.Src, srcETag, rec.Key, c)
			if err == nil {
				return outcome{info: info, next: base{Exists: true, ETag: info.ETag}}, nil
			}
			if !errors.Is(err, backend.ErrPrecondition) && !errors.Is(err, backend.ErrNotFound) {
				return outcome{}, err
			}
			src, cur, err := look(rec.Key)
			if err != nil {
				return outcome{}, err
			}
			switch {
			case cur != nil && isCopy(*cur, src):
				// Done before (a replay), or the same content anyway.
				return outcome{info: *cur, next: base{Exists: true, ETag: cur.ETag}}, nil
			case src == nil:
				return srcGone()
			case srcETag != "" && src.ETag != srcETag:
				// Changed remotely since the rename: copy it as it is
				// now. The Delete of the source that follows expects the
				// old ETag, fails, and keeps the source.
				j.log.Info("renamed file changed remotely; copying its current version", "src", rec.Src, "key", rec.Key)
				srcETag = src.ETag
				continue
			case cur == nil:
				c = backend.Cond{IfNoneMatch: true} // dst deleted remotely meanwhile
				continue
			}
			// The destination exists and is not this copy: it keeps
			// its name. Record the source version being copied too.
			rec.SrcETag = srcETag
			if err := j.decideConflict(e, rec, ReasonRenamedOnto); err != nil {
				return outcome{}, err
			}
			break
		}
		if rec.ConflictTime.IsZero() {
			return outcome{}, errChurn
		}
	}

	return j.toConflictCopy(rec, func(name string) (outcome, bool, error) {
		for range maxRounds {
			info, err := j.store.Copy(ctx, rec.Src, srcETag, name, backend.Cond{IfNoneMatch: true})
			if err == nil {
				return j.conflictOutcome(rec, info), false, nil
			}
			if !errors.Is(err, backend.ErrPrecondition) && !errors.Is(err, backend.ErrNotFound) {
				return outcome{}, false, err
			}
			src, cur, err := look(name)
			if err != nil {
				return outcome{}, false, err
			}
			switch {
			case cur != nil && isCopy(*cur, src):
				return j.conflictOutcome(rec, *cur), false, nil
			case src == nil:
				out, err := srcGone()
				return out, false, err
			case srcETag != "" && src.ETag != srcETag:
				srcETag = src.ETag
				continue
			case cur == nil:
				continue
			}
			break // name taken
		}
		return outcome{}, true, nil
	})
}

// sameMeta reports whether a stored object's metadata already holds meta.
func sameMeta(stored, meta map[string]string) bool {
	for k, v := range meta {
		if stored[k] != v {
			return false
		}
	}
	return true
}
