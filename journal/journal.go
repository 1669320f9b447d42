package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
)

// Store is what the journal needs from the object store. backend.Backend
// satisfies it; the methods keep the contracts documented there. A Store
// that is also a backend.DeltaPutter uploads the PutFiles that carry a
// Delta (see PutFile).
type Store interface {
	Stat(ctx context.Context, key string) (backend.ObjectInfo, error)
	Put(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error)
	Copy(ctx context.Context, src, srcETag, dst string, cond backend.Cond) (backend.ObjectInfo, error)
	Delete(ctx context.Context, key, ifMatch string) error
	// Get reads what a partial staged file lacks (see Partial).
	Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error)
}

var _ Store = (backend.Backend)(nil)

// Errors returned by the journal.
var (
	// ErrClosed: the journal was closed.
	ErrClosed = errors.New("journal closed")
	// ErrParked: WaitIdle found ops that will not be retried before the
	// next Open (access denied, invalid key, missing staged file).
	ErrParked = errors.New("uploads parked")
)

// shaMeta is the user-metadata name under which every PutFile stores the hex
// SHA-256 of its content, so that a replay recognises its own upload.
const shaMeta = "nimbus-sha256"

// tokenMeta is the user-metadata name under which every PutFile stores its
// upload token (record.Token): content alone cannot tell our upload from
// another writer's of the same bytes (two empty files, say).
const tokenMeta = "nimbus-upload"

// Config configures Open.
type Config struct {
	// DB is the shared database; the journal owns the buckets named
	// "journal.*" and touches no others. The caller opens and closes it.
	DB *bbolt.DB
	// Dir is the staging folder for file contents, created if needed. It
	// belongs to this journal alone, and must be on the same file system
	// as the files handed to Commit (they are moved in by rename).
	Dir string
	// Store is the object store the uploader writes to.
	Store Store
	// Host names this machine in conflicted copies (default: the short
	// host name from os.Hostname).
	Host string
	// Concurrency bounds parallel uploads (default 4). Small ones (a
	// folder marker, a file of at most 1 MiB) may run up to four times
	// as many (schedule.go).
	Concurrency int
	// MinBackoff and MaxBackoff bound the exponential retry delay
	// (default 1s and 1m; backend.Backoff, so each delay is spread by
	// ±backend.BackoffJitter).
	MinBackoff, MaxBackoff time.Duration
	// Now stamps commits and conflicts (default time.Now). Retry timing
	// always uses the real clock.
	Now func() time.Time
	// Logger receives one line per event (default slog.Default()).
	Logger *slog.Logger
	// UploadDelay is how long a committed PutFile, PutMarker or Copy waits
	// before its upload starts, so that a newer commit of the same key
	// can supersede it (see coalesce.go); WaitIdle does not wait for it.
	// Zero means DefaultUploadDelay; negative, none.
	UploadDelay time.Duration
	// InlineLimit is the largest staged content (in bytes) that Commit
	// stores in the record itself instead of fsyncing the staged file and
	// the staging folder (see "Durability" in the package doc). Zero
	// means DefaultInlineLimit; negative, never.
	InlineLimit int64
	// SpareFiles is how many empty staging files StagingFile keeps made
	// ahead, so that a caller does not wait for the create (spare.go).
	// Zero means DefaultSpareFiles; negative, none.
	SpareFiles int
	// Applied, if set, is called after an op completed, before its record
	// and staged file are removed, so that the caller can update its
	// metadata while Pending still shows the op. It runs on an uploader
	// goroutine holding no journal lock, and may call the journal. After
	// a crash between Applied and the removal, the op is replayed and
	// Applied is called again with the same outcome. Superseded and
	// cancelled ops (see Commit) are never reported.
	Applied func(Result)
}

// Base is the remote state a local change was made on.
type Base struct {
	Exists bool   // the object existed remotely when the local edit began
	ETag   string // its ETag then (when Exists)
}

// Kind is the kind of an Op.
type Kind int

const (
	// PutFile uploads Op.Staged to Op.Key: If-Match Base.ETag when
	// Base.Exists, else If-None-Match. A failed precondition is resolved
	// by a Stat: our own earlier upload (same upload token) is done, an
	// absent object is re-created, an object holding the same bytes is
	// taken as the result, an empty version gives way to the remote one
	// (no copy: it holds nothing), anything else is a conflict and our content goes to a
	// conflicted copy. When the op has a Delta whose
	// SrcETag is the If-Match ETag, and the store is a
	// backend.DeltaPutter, the upload goes through PutDelta, which may
	// copy the unchanged ranges server-side; every other upload (another
	// condition, the conflicted copy) sends the whole content.
	PutFile Kind = iota + 1
	// PutMarker creates the directory marker Op.Key ("dir/"), empty,
	// If-None-Match, with Op.Meta (the folder's attributes); one that
	// exists already counts as done, once it carries that Meta (it is
	// rewritten If-Match otherwise). It waits for the upload delay as a
	// PutFile does, and a newer PutMarker of the key supersedes it.
	PutMarker
	// Copy copies Op.Src (expected at Op.SrcETag) to Op.Key server-side,
	// conditioned on Base like PutFile: a rename of a file with no local
	// changes. A Src changed remotely is copied as it is now (the Delete
	// of Src that follows in a rename then fails its If-Match and Src is
	// kept); a Src deleted remotely is a conflict and the op is dropped;
	// an existing destination keeps its name and the copy goes to a
	// conflicted copy of Key.
	Copy
	// Delete removes Op.Key, If-Match Base.ETag. A remote edit wins: on a
	// failed precondition the remote version stays and a conflict is
	// recorded. An absent key counts as deleted; a key that did not exist
	// when the edit began (Base.Exists false) is left alone. A directory
	// marker ("dir/") may be deleted with Base{Exists: true} and no ETag:
	// it holds nothing to lose, so it goes whatever its ETag.
	Delete
	// MoveTree moves every key under the folder prefix Op.Src ("dir/sub/")
	// to Op.Key ("new/sub/") followed by the rest of the key, as the
	// store lists them when the op runs: a folder renamed offline whose
	// content was never listed here. Each key is copied If-None-Match,
	// then deleted If-Match the version copied, so a key edited remotely
	// meanwhile is kept under its old name (and a conflict recorded), and
	// a taken destination keeps its content while the source stays. Ops
	// on keys inside either folder are not ordered with it (none can be
	// journaled for a folder never listed); ops on the two prefixes
	// themselves are.
	MoveTree
)

var kindNames = map[Kind]string{PutFile: "put", PutMarker: "marker", Copy: "copy", Delete: "delete", MoveTree: "movetree"}

// String returns the name used in records and logs.
func (k Kind) String() string {
	if n, ok := kindNames[k]; ok {
		return n
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// MarshalText encodes the kind by name, so records stay readable and do
// not depend on the order of the constants.
func (k Kind) MarshalText() ([]byte, error) {
	if _, ok := kindNames[k]; !ok {
		return nil, fmt.Errorf("unknown op kind %d", int(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText decodes a kind name.
func (k *Kind) UnmarshalText(b []byte) error {
	for kind, name := range kindNames {
		if name == string(b) {
			*k = kind
			return nil
		}
	}
	return fmt.Errorf("unknown op kind %q", b)
}

// Op is one change to the remote tree.
type Op struct {
	Kind Kind
	// Key is the destination key.
	Key string
	// Staged (PutFile) is the path of a file holding the full new content,
	// in Config.Dir (see StagingFile) or on the same file system. Commit
	// takes ownership, even when it fails: the caller must not write to it
	// or remove it afterwards.
	Staged string
	// Src and SrcETag (Copy) name the source and the ETag it had.
	Src, SrcETag string
	// Size (Copy, optional) is the size of the source version, which
	// PendingOp reports: the destination is shown at its size while the
	// copy is pending, after a restart too.
	Size int64
	// Version (Restore) is the version ID of Key to make current again.
	Version string
	// Trash (Delete, optional) is where the object goes before it is
	// deleted: the key of a server-side copy of the version being deleted
	// (the trash of an unversioned bucket, trash.Key). Empty: deleted for
	// good. A rename's Delete has none: its content lives on under the new
	// name.
	Trash string
	// Base is the condition: Exists → If-Match ETag, else If-None-Match.
	// Ignored while an earlier op on Key is pending (see "Chained bases").
	Base Base
	// Meta is user metadata to store (mode, mtime…); lower-case names.
	Meta map[string]string
	// Group orders ops within one Commit: ops with the same Group run in
	// order, ops of different Groups are independent (a folder rename
	// moves each file as its own copy-then-delete pair, in parallel). It
	// must be in [0, number of ops of the Commit).
	Group int
	// Delta (PutFile, optional) says which bytes of Staged are unchanged
	// from an existing version of Key, so that a store able to copy ranges
	// server-side re-sends only the changed parts. Nil: send everything.
	Delta *Delta
	// Partial (PutFile, optional) says that Staged lacks some of the
	// content, which another object holds. Nil: Staged is complete.
	Partial *Partial
	// Stream (PutFile, optional) is the early upload of Staged, started
	// with StartStream for Key while it was written (stream.go). Commit
	// takes it over, even when it fails; it is used only if Staged still
	// holds every part it sent. Not with Delta or Partial.
	Stream *Stream
	// SHA256 (PutFile, optional) is the hex SHA-256 of Staged, computed by
	// the caller as it wrote the file, so that Commit does not read the
	// file again. The caller vouches for it. Not with Partial.
	SHA256 string
}

// Partial describes a staged file that holds only part of the content: a
// large file edited without downloading it. The rest is in an object the
// caller made for the purpose (a server-side copy of the version the edit
// began from) and keeps until no pending op refers to it.
type Partial struct {
	// From and FromETag name that object, FromSize is its size; its
	// bytes at the Missing offsets are the content's.
	From, FromETag string
	FromSize       int64
	// Missing are the ranges, sorted and disjoint, that the staged file
	// lacks (it reads zeros there).
	Missing []Range
}

// Delta describes a PutFile's content relative to a version of its key.
type Delta struct {
	// SrcETag is the version of Key the ranges refer to. The delta is
	// used only while the upload's If-Match condition is this same ETag;
	// otherwise the whole content is sent.
	SrcETag string
	// Same are the ranges, sorted and disjoint, where the staged content
	// holds exactly the bytes SrcETag has at the same offsets.
	Same []Range
}

// Range is the byte range [Off, Off+Len), as the store takes it.
type Range = backend.Range

// PendingOp is a committed op that has not completed.
type PendingOp struct {
	Seq    uint64
	Kind   Kind
	Key    string
	Staged string // PutFile: the content; it stays until Applied has reported the op
	Size   int64  // PutFile: bytes of content; Copy: Op.Size
	SHA256 string // PutFile: hex SHA-256 of the content
	Src    string // Copy
	// SrcETag (Copy) is the ETag Src is expected to have; while SrcChained
	// it is replaced when the pending write of Src completes.
	SrcETag    string
	SrcChained bool
	// Base is the condition the op will be uploaded with. While Chained,
	// it is what the caller passed, and is replaced by the result of the
	// earlier pending op on Key when that completes.
	Base    Base
	Chained bool
	Meta    map[string]string
	// Delta (PutFile) is the op's Delta, nil when it has none; a copy.
	Delta *Delta
	// Partial (PutFile) is the op's Partial, nil when it has none; a copy.
	Partial   *Partial
	Committed time.Time // when the oldest change this op carries was committed
	Uploading bool
	Parked    bool
}

// Result reports a completed op to Config.Applied.
type Result struct {
	Seq uint64
	Op  Op
	// Info is the object written: the uploaded or copied object (new
	// ETag, size), which is the conflicted copy when Conflict is set. Zero
	// for a Delete and for a dropped op.
	Info backend.ObjectInfo
	// Conflict is set when the remote version kept the name.
	Conflict *Conflict
	// Dropped: the op was not applied because a remote change wins (a
	// local delete of a file edited remotely, a rename of a file deleted
	// remotely). Conflict says why.
	Dropped bool
}

// Conflict is a recorded conflict, shown by nimbus status and nimbus
// conflicts.
type Conflict struct {
	Key string `json:"key"`
	// ConflictKey is where our version went; empty when no copy was made
	// (a local delete or rename lost to a remote change).
	ConflictKey string    `json:"conflict_key,omitempty"`
	Time        time.Time `json:"time"`
	Reason      string    `json:"reason"`
	// Recorded is when the conflict was recorded, its copy uploaded: a
	// listing started later shows the copy if it still exists.
	Recorded time.Time `json:"recorded,omitempty"`
}

// Conflict reasons.
const (
	ReasonEdited        = "edited on both sides"
	ReasonCreated       = "created on both sides"
	ReasonRenamedOnto   = "renamed onto an existing file"
	ReasonDeleteKept    = "local delete kept the remote edit"
	ReasonRenameSrcGone = "renamed file was deleted remotely"
)

// Stats is a snapshot of the journal for nimbus status and nimbus sync.
type Stats struct {
	Pending      int       // ops not completed, including uploading and parked ones
	PendingBytes int64     // content bytes of pending PutFile ops
	Oldest       time.Time // commit time of the oldest pending change; zero when none
	Uploading    int
	Parked       []Parked
	// Retrying lists ops whose last attempt failed and that will be
	// retried.
	Retrying []Retrying
	// Offline: the last attempt found the store unreachable; uploads are
	// paused until OfflineUntil, then one op probes the store.
	Offline      bool
	OfflineUntil time.Time
	Conflicts    int // recorded conflicts
}

// Parked is an op that will not be retried before the next Open.
type Parked struct {
	Key   string
	Err   string
	Since time.Time
}

// Retrying is an op whose last attempt failed.
type Retrying struct {
	Key      string
	Err      string
	Attempts int
	Next     time.Time // zero: as soon as its turn comes
}

// Journal is the durable op log and its uploader. It is safe for
// concurrent use.
type Journal struct {
	db          *bbolt.DB
	dir         string // absolute
	store       Store
	host        string
	concurrency int
	minBackoff  time.Duration
	maxBackoff  time.Duration
	now         func() time.Time
	log         *slog.Logger
	applied     func(Result)
	uploadDelay time.Duration
	inlineLimit int64 // negative: never inline
	spareFiles  int   // negative: none
	spares      spares

	// syncFile and syncDir make data durable; tests replace them (right
	// after Open) to check that Commit calls them before it records.
	syncFile func(*os.File) error
	syncDir  func(path string) error
	// startWriteBack starts writing a range of a streamed file to disk
	// (stream.go); tests replace it to see which ranges.
	startWriteBack func(f *os.File, off, size int64) error

	// writeMu serialises the journal's bbolt writes with the structural
	// changes of the in-memory state that mirror them.
	writeMu sync.Mutex
	// queueMu guards commitQ and completeQ: the Commit calls and the
	// finished ops waiting for writeMu, which the next holder records
	// together (group commit; the first completion queued leads the
	// others, see complete). A leaf lock.
	queueMu   sync.Mutex
	commitQ   []*commitRequest // GUARDED_BY(queueMu)
	completeQ []*completion    // GUARDED_BY(queueMu): finished ops to record
	// linger is how the leader of a group of completions waits for more
	// while other uploads are in flight (completionLinger; tests stub it).
	linger func()
	// recordCompletions runs the transaction of a group of completions:
	// db.Update; tests make it fail.
	recordCompletions func(fn func(*bbolt.Tx) error) error
	// commitTxs and completeTxs count the bbolt transactions of Commit
	// calls and of completions (tests).
	commitTxs, completeTxs atomic.Int64

	lastSeq uint64 // GUARDED_BY(writeMu)

	mu      sync.Mutex
	closed  bool                // GUARDED_BY(mu)
	entries map[uint64]*entry   // GUARDED_BY(mu); structure changes also hold writeMu
	keyQ    map[string][]*entry // GUARDED_BY(mu); per key, pending ops touching it, by seq
	groupQ  map[uint64][]*entry // GUARDED_BY(mu); per commit group, its pending ops, by seq
	staged  map[string]*entry   // GUARDED_BY(mu); staged base name → op owning it
	ready   readyHeap           // GUARDED_BY(mu); ops free to start, by (notBefore, seq)

	pendingBytes int64                // GUARDED_BY(mu); content bytes of pending PutFiles
	uploading    int                  // GUARDED_BY(mu); attempts in flight
	conflicts    int                  // GUARDED_BY(mu); recorded conflicts
	copies       map[string]bool      // GUARDED_BY(mu); keys of the conflicted copies made
	outage       outage               // GUARDED_BY(mu)
	flushing     int                  // GUARDED_BY(mu); WaitIdle calls running: no upload delay
	lastCommit   time.Time            // GUARDED_BY(mu); of the last Commit transaction (coalesce.go)
	keyDelays    map[string]*keyDelay // GUARDED_BY(mu); upload delays of recently uploaded keys
	changed      chan struct{}        // GUARDED_BY(mu); closed and replaced on every change
	wake         chan struct{}        // capacity 1, never closed: nudges the dispatcher
	running      bool                 // GUARDED_BY(mu); a Run is active
	stopRun      context.CancelFunc   // GUARDED_BY(mu); cancels the active Run
	runDone      chan struct{}        // GUARDED_BY(mu); closed when the active Run returns
	liveStreams  map[*Stream]struct{} // GUARDED_BY(mu); Streams not yet completed or aborted
}

// Open loads the journal from cfg.DB, removes staged files that no record
// references (left by a crash between StagingFile and Commit), and returns
// a journal ready to Commit. Uploads start with Run. Ops parked before are
// queued again.
func Open(cfg Config) (*Journal, error) {
	if cfg.DB == nil || cfg.Store == nil || cfg.Dir == "" {
		return nil, errors.New("journal: Config needs DB, Store and Dir")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("journal: staging folder %q: %w", cfg.Dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: create staging folder: %w", err)
	}
	j := &Journal{
		db:          cfg.DB,
		dir:         dir,
		store:       cfg.Store,
		host:        cfg.Host,
		concurrency: cfg.Concurrency,
		minBackoff:  cfg.MinBackoff,
		maxBackoff:  cfg.MaxBackoff,
		now:         cfg.Now,
		log:         cfg.Logger,
		applied:     cfg.Applied,
		uploadDelay: cfg.UploadDelay,
		inlineLimit: cfg.InlineLimit,
		spareFiles:  cfg.SpareFiles,
		syncFile:    (*os.File).Sync,
		syncDir:     syncDir,
		entries:     map[uint64]*entry{},
		keyQ:        map[string][]*entry{},
		groupQ:      map[uint64][]*entry{},
		staged:      map[string]*entry{},
		keyDelays:   map[string]*keyDelay{},
		liveStreams: map[*Stream]struct{}{},
		changed:     make(chan struct{}),
		wake:        make(chan struct{}, 1),
	}
	j.startWriteBack = startWriteBack
	j.linger = func() { time.Sleep(completionLinger) }
	j.recordCompletions = cfg.DB.Update
	if j.host == "" {
		j.host = shortHostname()
	}
	if j.uploadDelay == 0 {
		j.uploadDelay = DefaultUploadDelay
	}
	if j.concurrency <= 0 {
		j.concurrency = 4
	}
	if j.inlineLimit == 0 {
		j.inlineLimit = DefaultInlineLimit
	}
	if j.spareFiles == 0 {
		j.spareFiles = DefaultSpareFiles
	}
	if j.minBackoff <= 0 {
		j.minBackoff = time.Second
	}
	if j.maxBackoff <= 0 {
		j.maxBackoff = time.Minute
	}
	j.maxBackoff = max(j.maxBackoff, j.minBackoff)
	if j.now == nil {
		j.now = time.Now
	}
	if j.log == nil {
		j.log = slog.Default()
	}
	j.log = j.log.With("component", "journal")

	l, err := initBuckets(cfg.DB)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	j.lastSeq = l.lastSeq
	j.conflicts = l.conflicts
	restored, err := restoreInline(cfg.DB, dir, l.records)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if restored > 0 {
		j.log.Info("restored staged files from their inline records", "count", restored)
	}
	recorded, err := readConflicts(cfg.DB)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	j.copies = make(map[string]bool, len(recorded))
	for _, c := range recorded {
		if c.ConflictKey != "" {
			j.copies[c.ConflictKey] = true
		}
	}
	j.writeMu.Lock()
	j.mu.Lock()
	for i := range l.records {
		e := newEntry(l.records[i])
		// The previous process may have sent it before it stopped.
		e.maybeSent = true
		j.insertLocked(e)
	}
	j.checkChainsLocked()
	j.mu.Unlock()
	j.writeMu.Unlock()
	if err := j.removeGarbage(); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if n := len(l.records); n > 0 {
		j.log.Info("journal loaded", "pending", n, "bytes", j.pendingBytes)
	}
	return j, nil
}

// checkChainsLocked repairs chains that point at a missing record, which a
// consistent log never has: the op falls back to the base its caller gave.
// Called from Open.
func (j *Journal) checkChainsLocked() {
	for _, e := range j.entries {
		if a := e.rec.Base.After; a != 0 && j.entries[a] == nil {
			j.log.Error("journal record chained to a missing op; using the base it was committed with",
				"seq", e.rec.Seq, "key", e.rec.Key, "after", a)
			e.rec.Base.After = 0
		}
		if a := e.rec.SrcAfter; a != 0 && j.entries[a] == nil {
			j.log.Error("journal copy chained to a missing op; using the source ETag it was committed with",
				"seq", e.rec.Seq, "key", e.rec.Key, "src_after", a)
			e.rec.SrcAfter = 0
		}
		if e.rec.Kind == PutFile {
			if _, err := os.Stat(j.stagedPath(e.rec.Staged)); err != nil {
				e.state = stateParked
				e.lastErr = fmt.Errorf("staged content %s: %w", e.rec.Staged, err)
				e.parkedAt = time.Now()
				j.refreshLocked(e)
				j.log.Error("journal op parked: staged content unreadable", "seq", e.rec.Seq, "key", e.rec.Key, "err", err)
			}
		}
	}
}

// shortHostname returns the host name up to its first dot.
func shortHostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "unknown"
	}
	if i := strings.IndexByte(h, '.'); i > 0 {
		h = h[:i]
	}
	return h
}

// Close stops Run (waiting for it to return) and makes later Commits fail
// with ErrClosed, and removes the spare staging files. It does not close the
// DB, which the caller owns. Pending ops stay recorded for the next Open.
func (j *Journal) Close() error {
	j.writeMu.Lock()
	j.mu.Lock()
	j.closed = true
	stop, done := j.stopRun, j.runDone
	for s := range j.liveStreams {
		// Their uploads stay registered: the next Open completes those
		// its records name and aborts the others.
		s.cancel()
	}
	j.mu.Unlock()
	j.writeMu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	j.closeSpares()
	return nil
}

// Pending returns the newest pending op whose Key is key.
func (j *Journal) Pending(key string) (PendingOp, bool) {
	return j.PendingBefore(key, math.MaxUint64)
}

// PendingUnder returns, for every key starting with prefix that has pending
// ops, the newest of them, sorted by key. It scans all pending keys.
func (j *Journal) PendingUnder(prefix string) []PendingOp {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []PendingOp
	for key, q := range j.keyQ {
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		for i := len(q) - 1; i >= 0; i-- {
			if q[i].rec.Key == key {
				out = append(out, j.pendingOpLocked(q[i]))
				break
			}
		}
	}
	sortPendingByKey(out)
	return out
}

func (j *Journal) pendingOpLocked(e *entry) PendingOp {
	r := &e.rec
	p := PendingOp{
		Seq:        r.Seq,
		Kind:       r.Kind,
		Key:        r.Key,
		Size:       r.Size,
		SHA256:     r.SHA256,
		Src:        r.Src,
		SrcETag:    r.SrcETag,
		SrcChained: r.SrcAfter != 0,
		Base:       r.Base.public(),
		Chained:    r.Base.After != 0,
		Meta:       cloneMeta(r.Meta),
		Delta:      r.Delta.public(),
		Partial:    r.Partial.public(),
		Committed:  r.Committed,
		Uploading:  e.state == stateUploading,
		Parked:     e.state == stateParked,
	}
	if r.Staged != "" {
		p.Staged = j.stagedPath(r.Staged)
	}
	return p
}

// Stats returns a snapshot of the pending work.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := Stats{
		Pending:      len(j.entries),
		PendingBytes: j.pendingBytes,
		Uploading:    j.uploading,
		Offline:      j.outage.offline,
		Conflicts:    j.conflicts,
	}
	if s.Offline {
		s.OfflineUntil = j.outage.until
	}
	for _, e := range j.entries {
		if s.Oldest.IsZero() || e.rec.Committed.Before(s.Oldest) {
			s.Oldest = e.rec.Committed
		}
		switch {
		case e.state == stateParked:
			s.Parked = append(s.Parked, Parked{Key: e.rec.Key, Err: e.lastErr.Error(), Since: e.parkedAt})
		case e.lastErr != nil:
			s.Retrying = append(s.Retrying, Retrying{Key: e.rec.Key, Err: e.lastErr.Error(), Attempts: e.attempts, Next: e.notBefore})
		}
	}
	sortParked(s.Parked)
	sortRetrying(s.Retrying)
	return s
}

// IsConflictCopy reports whether key is a conflicted copy this journal
// made. It answers from memory: the state of every file asks it.
func (j *Journal) IsConflictCopy(key string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.copies[key]
}

// Conflicts returns every recorded conflict, oldest first.
func (j *Journal) Conflicts() []Conflict {
	cs, err := readConflicts(j.db)
	if err != nil {
		// The count in Stats still tells the user there are some.
		j.log.Error("read conflict records", "err", err)
	}
	return cs
}

// WaitIdle returns nil once no op is pending. While it waits, no upload
// is delayed (Config.UploadDelay). Parked ops will not complete
// before the next Open, so if there are any it returns at once an error
// wrapping ErrParked that names them. When ctx ends first, it returns an
// error wrapping ctx.Err() that says what is still pending and why.
func (j *Journal) WaitIdle(ctx context.Context) error {
	defer j.flush()()
	for {
		j.mu.Lock()
		if len(j.entries) == 0 {
			j.mu.Unlock()
			return nil
		}
		if err := j.parkedErrorLocked(); err != nil {
			j.mu.Unlock()
			return err
		}
		changed := j.changed
		j.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			j.mu.Lock()
			defer j.mu.Unlock()
			return fmt.Errorf("%s: %w", j.describePendingLocked(), ctx.Err())
		}
	}
}

// maxListed bounds the ops an error message names.
const maxListed = 10

func (j *Journal) parkedErrorLocked() error {
	var parked []*entry
	for _, e := range j.entries {
		if e.state == stateParked {
			parked = append(parked, e)
		}
	}
	if len(parked) == 0 {
		return nil
	}
	sortEntries(parked)
	var b strings.Builder
	fmt.Fprintf(&b, "%d upload(s) parked until the next mount (fix the cause, then remount):", len(parked))
	for i, e := range parked {
		if i == maxListed {
			fmt.Fprintf(&b, " and %d more", len(parked)-maxListed)
			break
		}
		fmt.Fprintf(&b, " %s %q: %v;", e.rec.Kind, e.rec.Key, e.lastErr)
	}
	return fmt.Errorf("%s %w", strings.TrimSuffix(b.String(), ";"), ErrParked)
}

func (j *Journal) describePendingLocked() string {
	all := make([]*entry, 0, len(j.entries))
	for _, e := range j.entries {
		all = append(all, e)
	}
	sortEntries(all)
	var b strings.Builder
	fmt.Fprintf(&b, "%d change(s) not uploaded (%d bytes)", len(all), j.pendingBytes)
	if j.outage.offline {
		fmt.Fprintf(&b, "; the store is unreachable, next try at %s", j.outage.until.Format(time.TimeOnly))
	}
	b.WriteString(":")
	for i, e := range all {
		if i == maxListed {
			fmt.Fprintf(&b, " and %d more", len(all)-maxListed)
			break
		}
		fmt.Fprintf(&b, " %s %q: %s;", e.rec.Kind, e.rec.Key, j.whyPendingLocked(e))
	}
	return strings.TrimSuffix(b.String(), ";")
}

// whyPendingLocked says why e has not completed.
func (j *Journal) whyPendingLocked(e *entry) string {
	switch {
	case e.state == stateUploading:
		if e.lastErr != nil {
			return fmt.Sprintf("uploading (attempt %d; last error: %v)", e.attempts, e.lastErr)
		}
		return "uploading"
	case e.state == stateParked:
		return fmt.Sprintf("parked: %v", e.lastErr)
	case e.lastErr != nil:
		return fmt.Sprintf("retrying after %d attempt(s): %v", e.attempts, e.lastErr)
	case !j.runnableLocked(e):
		return "waiting for an earlier change to the same file or of the same operation"
	default:
		return "waiting to upload"
	}
}

// notifyLocked wakes WaitIdle callers and the dispatcher.
func (j *Journal) notifyLocked() {
	close(j.changed)
	j.changed = make(chan struct{})
	j.nudge()
}

// nudge wakes the dispatcher only. wake is never closed, so no lock is
// needed.
func (j *Journal) nudge() {
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

func cloneMeta(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
