package journal

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
)

// stagedPattern names staged files in Config.Dir.
const stagedPattern = "staged-*"

// DefaultInlineLimit is Config.InlineLimit when it is zero: a file this
// small is cheaper to write once more into the record than to fsync, with
// its folder, on its own.
const DefaultInlineLimit = 32 << 10

// maxPrior bounds the superseded hashes an op remembers. Beyond it, a
// superseded version that did reach the store would show as a conflict: a
// spurious conflicted copy, never a loss.
const maxPrior = 16

// StagingFile creates a new empty file in Config.Dir for the caller to
// write content into and hand to Commit as Op.Staged. Until it is
// committed, the caller owns it; a crash before the Commit leaves garbage
// that the next Open removes. It is a spare made ahead when one is ready
// (spare.go).
func (j *Journal) StagingFile() (*os.File, error) {
	if j.spareFiles <= 0 {
		return j.newStagingFile()
	}
	defer j.refill()
	if f := j.spares.take(); f != nil {
		return f, nil
	}
	return j.newStagingFile()
}

func (j *Journal) stagedPath(name string) string { return filepath.Join(j.dir, name) }

// preparedOp is an op whose content is in Config.Dir, durable there unless
// inlined.
type preparedOp struct {
	Op
	staged string // base name in Config.Dir
	size   int64
	sha256 string
	// inlined: the staged file was not synced; content goes into the
	// record's transaction instead.
	inlined bool
	content []byte
	stream  *stream // Op.Stream sealed, when usable
}

// Commit durably records ops, to be applied in order, and returns once they
// survive a crash: every staged file is fsynced, then Config.Dir, then all
// records are written in one bbolt transaction. A staged file of at most
// Config.InlineLimit bytes (whole, not Partial) is not fsynced: its content
// is written in that same transaction, and Open restores the file from it.
// Concurrent Commits share that transaction (group commit): calls that
// arrive while one is being recorded are recorded together next, in the
// order they arrived, each returning once the shared transaction is
// durable. Staged files outside Config.Dir are moved in first. Commit takes ownership of the staged files
// even when it fails (then nothing is recorded and the files are removed at
// the next Open).
//
// While an earlier op on the same key is pending, a new op is chained to it
// (see the package doc), and may supersede it: a PutFile replaces a waiting
// PutFile and keeps its base (but its own Delta, or none); a Delete
// replaces a waiting PutFile, or cancels it when the key never existed
// remotely (then neither is recorded). Ops of one call run one after the
// other, in order. A PutFile's Delta must be sorted, disjoint, non-empty
// ranges within its staged content, with a SrcETag, else Commit fails.
func (j *Journal) Commit(ops ...Op) error {
	if len(ops) == 0 {
		return nil
	}
	prepared, err := j.prepare(ops)
	if err != nil {
		abortStreams(ops)
		return err
	}
	req := &commitRequest{ops: prepared}
	j.queueMu.Lock()
	j.commitQ = append(j.commitQ, req)
	j.queueMu.Unlock()

	j.writeMu.Lock()
	var report func()
	if !req.done {
		// No leader took it while this one waited: lead, taking
		// along every request queued meanwhile.
		report = j.commitQueuedLocked()
	}
	err = req.err
	j.writeMu.Unlock()
	if report != nil {
		report()
	}
	if err != nil {
		abortStreams(ops) // nothing recorded: the early uploads serve nothing
	}
	return err
}

// commitRequest is one Commit call waiting in Journal.commitQ.
type commitRequest struct {
	ops  []preparedOp
	done bool  // GUARDED_BY(writeMu): recorded, or failed
	err  error // GUARDED_BY(writeMu)
}

// commitQueuedLocked records every queued Commit in one bbolt transaction
// (group commit: one fsync for them all), as if they had been one Commit
// of all their ops in queue order, each call keeping its own groups. It
// marks each request done, and returns what to log once writeMu is
// released. Callers hold writeMu.
func (j *Journal) commitQueuedLocked() (report func()) {
	j.queueMu.Lock()
	batch := j.commitQ
	j.commitQ = nil
	j.queueMu.Unlock()
	finish := func(reqs []*commitRequest, err error) {
		for _, r := range reqs {
			r.done, r.err = true, err
		}
	}

	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		finish(batch, ErrClosed)
		return nil
	}
	// A request whose staged file another op holds fails alone.
	var merged []preparedOp
	var live []*commitRequest
	claimed := map[string]bool{}
	for _, r := range batch {
		if err := j.checkStagedLocked(r.ops, claimed); err != nil {
			finish([]*commitRequest{r}, err)
			continue
		}
		offset := len(merged)
		for _, op := range r.ops {
			op.Group += offset // groups stay those of its own call
			merged = append(merged, op)
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		j.mu.Unlock()
		return nil
	}
	p, err := j.planLocked(merged)
	copiesGone := j.copiesGoneLocked(merged)
	j.mu.Unlock()
	if err != nil {
		finish(live, err)
		return nil
	}
	var cleared []Conflict
	j.commitTxs.Add(1)
	err = j.db.Update(func(tx *bbolt.Tx) error {
		if len(copiesGone) > 0 {
			var err error
			cleared, err = deleteConflictsTx(tx, func(c Conflict) bool { return copiesGone[c.ConflictKey] })
			if err != nil {
				return err
			}
		}
		for _, e := range p.removed {
			if err := deleteRecord(tx, e.rec.Seq); err != nil {
				return err
			}
		}
		for _, e := range p.added {
			if err := putRecord(tx, &e.rec); err != nil {
				return err
			}
			if e.rec.Inline {
				if err := putInline(tx, e.rec.Seq, p.content[e]); err != nil {
					return err
				}
			}
		}
		return setLastSeq(tx, p.lastSeq)
	})
	j.mu.Lock()
	if err != nil {
		for i, e := range p.removed {
			e.state = p.wasState[i]
			j.refreshLocked(e)
		}
		j.mu.Unlock()
		finish(live, fmt.Errorf("journal: record %d op(s): %w", len(merged), err))
		return nil
	}
	j.lastSeq = p.lastSeq
	j.lastCommit = time.Now()
	j.forgetConflictsLocked(cleared)
	for _, e := range p.removed {
		j.removeLocked(e)
	}
	// What the log says of the new ops is read now: once they are in the
	// queues an uploader may change their records (decideConflict).
	type committed struct {
		kind      Kind
		key       string
		seq, base uint64
	}
	logged := make([]committed, 0, len(p.added))
	for _, e := range p.added {
		j.insertLocked(e)
		logged = append(logged, committed{kind: e.rec.Kind, key: e.rec.Key, seq: e.rec.Seq, base: e.rec.Base.After})
	}
	j.mu.Unlock()
	for _, name := range p.dropFiles {
		// The records no longer reference them; if this fails, Open
		// removes them.
		if err := os.Remove(j.stagedPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			j.log.Warn("remove superseded staged file", "file", name, "err", err)
		}
	}
	j.mu.Lock()
	j.notifyLocked()
	j.mu.Unlock()
	finish(live, nil)

	return func() {
		j.releaseStreams(p.removed...) // the early uploads of superseded ops go
		if len(live) > 1 {
			j.log.Debug("commits grouped", "calls", len(live), "ops", len(merged))
		}
		for _, c := range logged {
			j.log.Debug("op committed", "op", c.kind, "key", c.key, "seq", c.seq, "chained_to", c.base)
		}
		for _, c := range p.coalesced {
			j.log.Info("pending op superseded", "op", c.kind, "key", c.key, "seq", c.seq, "by", c.by)
		}
		for _, c := range cleared {
			j.log.Info("conflict cleared: its conflicted copy was deleted or moved", "key", c.Key, "copy", c.ConflictKey)
		}
	}
}

// checkStagedLocked fails when a staged file of ops belongs to a pending op
// or to an earlier request of the same group commit (claimed, which it
// extends). Callers hold mu.
func (j *Journal) checkStagedLocked(ops []preparedOp, claimed map[string]bool) error {
	for _, op := range ops {
		if op.staged == "" {
			continue
		}
		if e := j.staged[op.staged]; e != nil {
			return fmt.Errorf("journal: staged file %s belongs to pending op %d", op.staged, e.rec.Seq)
		}
		if claimed[op.staged] {
			return fmt.Errorf("journal: staged file %s is given by two concurrent commits", op.staged)
		}
	}
	for _, op := range ops {
		if op.staged != "" {
			claimed[op.staged] = true
		}
	}
	return nil
}

// prepare validates ops, makes every staged file durable in Config.Dir, and
// hashes it. No lock is held: this reads and fsyncs whole files.
func (j *Journal) prepare(ops []Op) ([]preparedOp, error) {
	out := make([]preparedOp, len(ops))
	seen := map[string]bool{}
	synced := 0 // staged files fsynced, not inlined
	var movedFrom []string
	for i, op := range ops {
		if op.Group < 0 || op.Group >= len(ops) {
			return nil, fmt.Errorf("journal: op %d (%s %q): group %d is not in [0, %d)", i, op.Kind, op.Key, op.Group, len(ops))
		}
		if err := validate(op); err != nil {
			return nil, fmt.Errorf("journal: op %d (%s %q): %w", i, op.Kind, op.Key, err)
		}
		out[i].Op = op
		if op.Kind == Copy {
			out[i].size = op.Size
		}
		if op.Kind != PutFile {
			continue
		}
		name, from, err := j.adopt(op.Staged)
		if err != nil {
			return nil, fmt.Errorf("journal: op %d (%s %q): %w", i, op.Kind, op.Key, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("journal: op %d (%s %q): staged file %s given twice", i, op.Kind, op.Key, op.Staged)
		}
		seen[name] = true
		if from != "" {
			movedFrom = append(movedFrom, from)
		}
		out[i].staged = name
		if op.SHA256 != "" && op.Partial == nil && !j.inlinable(j.stagedPath(name)) {
			// Hashed while written: only synced. A small file is read
			// and inlined instead, which saves its fsync.
			out[i].size, out[i].sha256, err = j.syncHashed(j.stagedPath(name), op.SHA256) // stream_commit.go
		} else {
			out[i].size, out[i].sha256, out[i].content, err = j.hashAndSync(j.stagedPath(name), op.Partial)
		}
		if err != nil {
			return nil, fmt.Errorf("journal: op %d (%s %q): %w", i, op.Kind, op.Key, err)
		}
		if op.Stream != nil {
			out[i].stream = sealStream(op, out[i].size) // stream_commit.go
		}
		if err := checkPartial(op.Partial, out[i].size); err != nil {
			return nil, fmt.Errorf("journal: op %d (%s %q): %w", i, op.Kind, op.Key, err)
		}
		if err := checkDelta(op.Delta, out[i].size); err != nil {
			return nil, fmt.Errorf("journal: op %d (%s %q): %w", i, op.Kind, op.Key, err)
		}
		if out[i].inlined = out[i].content != nil; !out[i].inlined {
			synced++
		}
	}
	if synced > 0 {
		if err := j.syncDir(j.dir); err != nil {
			return nil, fmt.Errorf("journal: sync staging folder: %w", err)
		}
	}
	for _, dir := range movedFrom {
		// The content is durable under its new name already; this only
		// keeps a crash from resurrecting the old name as garbage.
		if err := j.syncDir(dir); err != nil {
			j.log.Warn("sync folder of a moved staged file", "dir", dir, "err", err)
		}
	}
	return out, nil
}

func validate(op Op) error {
	switch {
	case op.Key == "":
		return errors.New("empty key")
	case op.Base.Exists && op.Base.ETag == "" && !(op.Kind == Delete && strings.HasSuffix(op.Key, "/")):
		// Only a directory marker may be deleted whatever its ETag: an
		// empty marker holds nothing to lose.
		return errors.New("base exists but has no ETag")
	}
	switch op.Kind {
	case PutFile:
		if op.Staged == "" {
			return errors.New("no staged file")
		}
		if strings.HasSuffix(op.Key, "/") {
			return errors.New("a file key cannot end in \"/\"")
		}
	case PutMarker:
		if !strings.HasSuffix(op.Key, "/") {
			return errors.New("a directory marker key must end in \"/\"")
		}
	case Copy:
		if op.Src == "" || op.Src == op.Key {
			return errors.New("copy needs a source other than its destination")
		}
	case Delete:
		if op.Trash != "" && (op.Trash == op.Key || strings.HasSuffix(op.Key, "/") || strings.HasSuffix(op.Trash, "/")) {
			return errors.New("only a file goes to the trash, under another key")
		}
	case MoveTree:
		if !strings.HasSuffix(op.Src, "/") || !strings.HasSuffix(op.Key, "/") || strings.HasPrefix(op.Key, op.Src) || strings.HasPrefix(op.Src, op.Key) {
			return errors.New("a tree move needs two folder prefixes, neither inside the other")
		}
	case Restore:
		if err := validateRestore(op); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown op kind %d", int(op.Kind))
	}
	if op.Kind != Delete && op.Trash != "" {
		return fmt.Errorf("%s takes no trash key", op.Kind)
	}
	if op.Kind != PutFile && op.Staged != "" {
		return fmt.Errorf("%s takes no staged file", op.Kind)
	}
	if op.Kind != PutFile && op.Delta != nil {
		return fmt.Errorf("%s takes no delta", op.Kind)
	}
	if op.Kind != PutFile && op.Partial != nil {
		return fmt.Errorf("%s takes no partial content", op.Kind)
	}
	return validateStream(op) // stream_commit.go
}

// checkPartial checks a PutFile's partial content against its staged
// file's size.
func checkPartial(p *Partial, size int64) error {
	if p == nil {
		return nil
	}
	if p.From == "" || p.FromETag == "" {
		return errors.New("partial content without the object and ETag that hold the rest")
	}
	if err := backend.CheckRanges(p.Missing, min(size, p.FromSize)); err != nil {
		return fmt.Errorf("missing ranges of the %d staged bytes, from %d: %w", size, p.FromSize, err)
	}
	return nil
}

// checkDelta checks a PutFile's delta against its staged content's size.
func checkDelta(d *Delta, size int64) error {
	if d == nil {
		return nil
	}
	if d.SrcETag == "" {
		return errors.New("delta without the ETag of the version it refers to")
	}
	if err := backend.CheckRanges(d.Same, size); err != nil {
		return fmt.Errorf("delta of the %d staged bytes: %w", size, err)
	}
	return nil
}

// adopt returns the base name in Config.Dir of the staged file at path,
// moving it there (by rename) when it is elsewhere; from is the folder it
// was moved from, if it was.
func (j *Journal) adopt(path string) (name, from string, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", "", fmt.Errorf("staged file %s: %w", path, err)
	}
	if filepath.Dir(abs) == j.dir {
		return filepath.Base(abs), "", nil
	}
	// Reserve a unique name, then rename over it (atomic replace).
	f, err := j.StagingFile()
	if err != nil {
		return "", "", err
	}
	dst := f.Name()
	if err := f.Close(); err != nil {
		return "", "", fmt.Errorf("staged file %s: %w", dst, err)
	}
	if err := os.Rename(abs, dst); err != nil {
		if rerr := os.Remove(dst); rerr != nil {
			j.log.Warn("remove reserved staging name", "file", dst, "err", rerr)
		}
		return "", "", fmt.Errorf("move staged file into %s (it must be on the same file system): %w", j.dir, err)
	}
	return filepath.Base(dst), filepath.Dir(abs), nil
}

// inlinable reports whether the staged file at path is small enough for
// its content to go into its record (hashAndSync); false when it cannot
// be looked at, for hashAndSync to report why.
func (j *Journal) inlinable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Size() <= j.inlineLimit
}

// hashAndSync returns the size and hex SHA-256 of the file at path, and
// makes it durable: whole content of at most inlineLimit bytes is returned
// (non-nil, even when empty) to be written into the record, and the file is
// not synced; any other is fsynced. For partial content the hash covers the
// bytes the file holds, the missing ranges and the version holding them:
// not the content's hash, but as unique to this version, which is all a
// replay needs to recognise its own upload.
func (j *Journal) hashAndSync(path string, p *Partial) (int64, string, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", nil, fmt.Errorf("staged file: %w", err)
	}
	defer closeQuietly(f)
	fi, err := f.Stat()
	if err != nil {
		return 0, "", nil, fmt.Errorf("staged file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return 0, "", nil, fmt.Errorf("staged file %s is not a regular file", path)
	}
	n := fi.Size()
	if p == nil && n <= j.inlineLimit {
		// One read past the size finds a file that grew meanwhile (its
		// writer broke the contract); it is then hashed and synced whole.
		content := make([]byte, n, n+1)
		if _, err := io.ReadFull(f, content); err != nil {
			return 0, "", nil, fmt.Errorf("read staged file: %w", err)
		}
		if m, _ := f.Read(make([]byte, 1)); m == 0 {
			sum := sha256.Sum256(content)
			return n, hex.EncodeToString(sum[:]), content, nil
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return 0, "", nil, fmt.Errorf("read staged file: %w", err)
		}
	}
	h := sha256.New()
	if p == nil {
		// 1 MiB reads (os.File's WriteTo would use 32 KiB ones).
		n, err = io.CopyBuffer(h, struct{ io.Reader }{f}, make([]byte, 1<<20))
	} else {
		err = hashPartial(h, f, n, p)
	}
	if err != nil {
		return 0, "", nil, fmt.Errorf("hash staged file: %w", err)
	}
	if err := j.syncFile(f); err != nil {
		return 0, "", nil, fmt.Errorf("sync staged file: %w", err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil, nil
}

// hashPartial hashes what a partial staged file of size bytes holds, and
// what it lacks.
func hashPartial(h io.Writer, f io.ReaderAt, size int64, p *Partial) error {
	fmt.Fprintf(h, "nimbus partial content\x00%d\x00%s\x00%s\x00", size, p.From, p.FromETag)
	pos := int64(0)
	buf := make([]byte, 1<<20)
	held := func(end int64) error {
		if end <= pos {
			return nil
		}
		_, err := io.CopyBuffer(h, io.NewSectionReader(f, pos, end-pos), buf)
		return err
	}
	for _, r := range p.Missing {
		if err := held(r.Off); err != nil {
			return err
		}
		fmt.Fprintf(h, "\x00missing %d %d\x00", r.Off, r.Len)
		pos = r.Off + r.Len
	}
	return held(size)
}

// plan is what a Commit will change.
type plan struct {
	added     []*entry          // new ops to record, in seq order
	removed   []*entry          // pending ops superseded or cancelled (frozen until done)
	wasState  []entryState      // of removed, before they were frozen
	dropFiles []string          // staged files to remove once the commit is durable
	content   map[*entry][]byte // of the added ops whose record is Inline
	coalesced []coalesced
	lastSeq   uint64
}

// coalesced describes a superseded op, for the log.
type coalesced struct {
	kind Kind
	key  string
	seq  uint64
	by   uint64 // seq of the op that superseded it; 0: cancelled by a delete
}

// planView is a copy of the queues a Commit touches, on which the plan is
// worked out before anything changes.
type planView struct {
	j      *Journal
	keyQ   map[string][]*entry
	groupQ map[uint64][]*entry
}

func (v *planView) key(k string) []*entry {
	if q, ok := v.keyQ[k]; ok {
		return q
	}
	q := slices.Clone(v.j.keyQ[k])
	v.keyQ[k] = q
	return q
}

func (v *planView) group(g uint64) []*entry {
	if q, ok := v.groupQ[g]; ok {
		return q
	}
	q := slices.Clone(v.j.groupQ[g])
	v.groupQ[g] = q
	return q
}

func (v *planView) add(e *entry) {
	for _, k := range e.keys() {
		v.keyQ[k] = append(v.key(k), e)
	}
	for _, g := range e.rec.Groups {
		v.groupQ[g] = append(v.group(g), e)
	}
}

func (v *planView) remove(e *entry) {
	for _, k := range e.keys() {
		v.keyQ[k] = slices.DeleteFunc(v.key(k), func(x *entry) bool { return x == e })
	}
	for _, g := range e.rec.Groups {
		v.groupQ[g] = slices.DeleteFunc(v.group(g), func(x *entry) bool { return x == e })
	}
}

// newestWriter returns the newest pending op whose Key is k (not a Copy
// that only reads k), or nil.
func (v *planView) newestWriter(k string) *entry {
	q := v.key(k)
	for i := len(q) - 1; i >= 0; i-- {
		if q[i].rec.Key == k {
			return q[i]
		}
	}
	return nil
}

// isLast reports whether nothing was ordered after e: it is the last op of
// its key and of each of its groups.
func (v *planView) isLast(e *entry) bool {
	for _, k := range e.keys() {
		if q := v.key(k); len(q) == 0 || q[len(q)-1] != e {
			return false
		}
	}
	for _, g := range e.rec.Groups {
		if q := v.group(g); len(q) == 0 || q[len(q)-1] != e {
			return false
		}
	}
	return true
}

// planLocked works out the records of a Commit: sequence numbers, chained
// bases, and the ops superseded. It freezes the existing ops it supersedes,
// so that they do not start before the Commit is durable. Callers hold
// writeMu and mu.
func (j *Journal) planLocked(ops []preparedOp) (*plan, error) {
	for _, op := range ops {
		if op.staged != "" && j.staged[op.staged] != nil {
			return nil, fmt.Errorf("journal: staged file %s belongs to pending op %d", op.staged, j.staged[op.staged].rec.Seq)
		}
	}
	p := &plan{lastSeq: j.lastSeq, content: map[*entry][]byte{}}
	v := &planView{j: j, keyQ: map[string][]*entry{}, groupQ: map[uint64][]*entry{}}
	group := j.lastSeq + 1
	now := j.now()
	isNew := map[*entry]bool{}

	drop := func(old *entry, by uint64) {
		v.remove(old)
		if isNew[old] {
			p.added = slices.DeleteFunc(p.added, func(x *entry) bool { return x == old })
		} else {
			p.removed = append(p.removed, old)
			p.wasState = append(p.wasState, old.state)
			old.state = stateFrozen
			j.refreshLocked(old)
		}
		if old.rec.Staged != "" {
			p.dropFiles = append(p.dropFiles, old.rec.Staged)
		}
		p.coalesced = append(p.coalesced, coalesced{kind: old.rec.Kind, key: old.rec.Key, seq: old.rec.Seq, by: by})
	}

	for _, op := range ops {
		p.lastSeq++
		e := newEntry(record{
			Seq:       p.lastSeq,
			Groups:    []uint64{group + uint64(op.Group)},
			Kind:      op.Kind,
			Key:       op.Key,
			Staged:    op.staged,
			Size:      op.size,
			SHA256:    op.sha256,
			Token:     tokenFor(op.Kind),
			Src:       op.Src,
			SrcETag:   op.SrcETag,
			Version:   op.Version,
			Trash:     op.Trash,
			Base:      base{Exists: op.Base.Exists, ETag: op.Base.ETag},
			Meta:      cloneMeta(op.Meta),
			Delta:     newDelta(op.Delta),
			Partial:   newPartial(op.Partial),
			Inline:    op.inlined,
			Committed: now,
		})
		if op.inlined {
			p.content[e] = op.content
		}
		if op.stream != nil {
			e.rec.Stream, e.rec.Token, e.stream = op.stream, op.Stream.token, op.Stream
		}
		if prev := v.newestWriter(op.Key); prev != nil {
			canReplace := prev.state != stateUploading && v.isLast(prev)
			switch {
			case canReplace && op.Kind == PutFile && prev.rec.Kind == PutFile:
				inherit(e, prev)
				drop(prev, e.rec.Seq)
			case canReplace && op.Kind == PutMarker && prev.rec.Kind == PutMarker:
				// A marker's Meta is the folder's whole set of
				// attributes: the newest says all the older did. A
				// marker has no upload token to remember, so whether
				// an earlier attempt may have made it is carried over
				// (a later rmdir must then delete it, not cancel).
				inherit(e, prev)
				e.maybeSent = prev.maybeSent
				drop(prev, e.rec.Seq)
			case canReplace && op.Kind == Delete && prev.rec.Kind == PutFile && cancellable(prev):
				drop(prev, 0)
				continue // the key stays as it is remotely: nothing to record
			case canReplace && op.Kind == Delete && prev.rec.Kind == PutFile:
				inherit(e, prev)
				drop(prev, e.rec.Seq)
			case canReplace && op.Kind == Delete && prev.rec.Kind == PutMarker && cancellable(prev):
				drop(prev, 0)
				continue
			default:
				e.rec.Base.After = prev.rec.Seq
			}
		}
		if op.Kind == Copy {
			if prev := v.newestWriter(op.Src); prev != nil {
				e.rec.SrcAfter = prev.rec.Seq
			}
		}
		isNew[e] = true
		v.add(e)
		p.added = append(p.added, e)
	}
	return p, nil
}

// cancellable reports whether a waiting op that creates a key can simply be
// forgotten when the key is deleted locally: the key did not exist remotely
// and nothing of this edit chain can have reached the store.
func cancellable(prev *entry) bool {
	b := prev.rec.Base
	return b.After == 0 && !b.Exists && !prev.maybeSent && len(prev.rec.Prior) == 0
}

// inherit makes e continue the edit chain of prev, which it supersedes: the
// same base (the remote state the chain started on), the same commit
// groups (so e keeps prev's place in them), the hashes that may already be
// on the store, and the time of the oldest change. e keeps its own Delta,
// or none: prev's describes content that e replaces.
func inherit(e, prev *entry) {
	e.rec.Base = prev.rec.Base
	for _, g := range prev.rec.Groups {
		if !slices.Contains(e.rec.Groups, g) {
			e.rec.Groups = append(e.rec.Groups, g)
		}
	}
	slices.Sort(e.rec.Groups)
	prior := slices.Clone(prev.rec.Prior)
	if id := prev.rec.uploadID(); prev.maybeSent && id != "" && !slices.Contains(prior, id) {
		prior = append(prior, id)
	}
	if len(prior) > maxPrior {
		prior = prior[len(prior)-maxPrior:]
	}
	e.rec.Prior = prior
	e.rec.Committed = prev.rec.Committed
	e.queuedAt = prev.queuedAt // bounds the upload delay (coalesce.go)
}

// tokenFor returns a new upload token for an op of kind k that uploads
// content, else "".
func tokenFor(k Kind) string {
	if k == PutFile {
		return newToken()
	}
	return ""
}

// uploadID is what identifies r's uploads on the store: its token, or its
// content hash for a record from before tokens.
func (r *record) uploadID() string {
	if r.Token != "" {
		return r.Token
	}
	return r.SHA256
}

// removeGarbage removes files in Config.Dir that no record references:
// staged by a caller that crashed before its Commit, or left behind by a
// crash after a record was removed. Called from Open.
func (j *Journal) removeGarbage() error {
	des, err := os.ReadDir(j.dir)
	if err != nil {
		return fmt.Errorf("read staging folder: %w", err)
	}
	j.mu.Lock()
	var garbage []string
	for _, de := range des {
		if de.Type().IsRegular() && j.staged[de.Name()] == nil {
			garbage = append(garbage, de.Name())
		}
	}
	j.mu.Unlock()
	for _, name := range garbage {
		if err := os.Remove(j.stagedPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove unreferenced staged file: %w", err)
		}
	}
	if len(garbage) > 0 {
		j.log.Info("removed unreferenced staged files", "count", len(garbage))
	}
	return nil
}

// syncDir fsyncs a directory so that renames and creations in it are
// durable.
func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	serr := d.Sync()
	cerr := d.Close()
	return errors.Join(serr, cerr)
}

// closeQuietly closes a file opened for reading, where a close error
// cannot lose data.
func closeQuietly(f *os.File) {
	_ = f.Close() // read-only: nothing to flush
}
