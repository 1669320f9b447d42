package journal

// Streamed uploads: a large file is sent while it is written.
//
// A file written sequentially from empty would otherwise be staged whole,
// then hashed and uploaded from zero after close. Instead, when the store
// is a backend.PartUploader (S3), the vfs opens a Stream on the file's
// working copy once its first part is written (StartStream), and hands over
// each part as the writer moves past it (Stream.Send). The Stream creates
// the multipart upload and sends the parts in the background, from its own
// read-only handle on the staged file, StreamConcurrency at a time.
//
// Nothing about durability changes: close still commits a PutFile of the
// whole staged file, fsynced, before it returns. To keep that fsync short,
// the Stream starts the disk write-back of each part as it is handed over
// (sync_file_range, without waiting): with a few GiB of memory the kernel
// would otherwise hold the whole file dirty until close, and the fsync
// would write all of it while close waits. The op names the Stream
// (Op.Stream), and its record carries the upload ID and the parts sent so
// far (record.Stream), and the upload token the upload's metadata holds.
// Commit seals the Stream, which then sends the remaining parts, the last
// partial one included, at once, without waiting for the upload delay. The
// uploader completes the upload instead of sending the file again
// (completeStream): it waits for the Stream's parts, sends any missing ones
// from the staged file (all those not in the record, after a restart), and
// makes the object visible with CompleteMultipartUpload under the op's
// condition, checked atomically by the store as a Put's is.
//
// Anything wrong with the early upload falls back to the normal path, a Put
// of the staged file: a part that failed, an upload that vanished
// (backend.ErrNoUpload), or any other error of the Complete except a
// retryable one (offline, 409), which retries the op later with the upload
// kept. A refused condition (412) aborts the upload and goes on as any
// PutFile's: our own earlier upload, the same content, or a conflicted copy,
// which is sent by Put. So the staged file is always what is uploaded if
// anything about the early parts is lost.
//
// Metadata. S3 takes an object's metadata when the upload is created,
// before the file is closed: the upload carries the attributes the file had
// then, without its times (mtime, atime, ctime change with every write), and
// with the op's upload token but not its content hash (not known yet). The
// vfs only hands a Stream to a commit whose other attributes are unchanged
// (a chmod during the write falls back). The exact times are those of the
// record's Meta, which the attribute index and the local tree get; a HEAD
// of such an object shows no nimbus-mtime, and its listing time stands in.
// Without the hash, another writer's identical bytes are not recognised
// (see PutFile): a later conflict over them keeps a needless copy, never
// loses one.
//
// Leftovers. An upload that is neither completed nor aborted keeps its
// parts (and S3 bills them). Every Stream is registered in the
// journal.streams bucket (by its upload token: key, time, and upload ID
// once known) before it creates its upload, and unregistered once the
// upload is completed or aborted. After a crash, Run aborts the registered
// uploads that no pending record names (abortOrphans); a registration
// without an upload ID (a crash while the upload was being created) aborts
// the uploads of its key that the store lists as started within
// orphanWindow of it. Such an upload could be another client's, racing on
// the same key at that moment: it then fails with NoSuchUpload, which every
// writer here retries, and nothing is lost. Uploads nimbus never registered
// (the transfer manager's own, of a Put cut short by a crash) are left to a
// bucket lifecycle rule (AbortIncompleteMultipartUpload).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/nimbus-fs/nimbus/backend"
)

// StreamConcurrency bounds the parts of one Stream in flight at once: the
// transfer manager's default, which the raw multipart upload uses too.
const StreamConcurrency = 8

// streamsBucket maps a Stream's upload token to its registration
// (streamReg).
var streamsBucket = []byte("journal.streams")

// orphanWindow: an upload of a registered key started this close to the
// registration (either way, for clock skew) is taken for the Stream's.
const orphanWindow = 5 * time.Minute

// streamAbortTimeout bounds an abort, which runs on a context of its own.
const streamAbortTimeout = 30 * time.Second

// streamReg is a registered Stream, for abortOrphans.
type streamReg struct {
	Key     string    `json:"key"`
	Created time.Time `json:"created"`
	// UploadID is "" while the upload is being created.
	UploadID string `json:"upload_id,omitempty"`
}

// stream is the persisted form of an op's early upload.
type stream struct {
	UploadID string         `json:"upload_id"`
	PartSize int64          `json:"part_size"`
	Parts    []backend.Part `json:"parts,omitempty"`
}

// Stream is an early multipart upload of a staged file being written. Its
// methods are safe for concurrent use and never block on the network.
type Stream struct {
	j        *Journal
	up       backend.PartUploader
	key      string
	token    string
	meta     map[string]string
	partSize int64
	f        *os.File // own read-only handle on the staged file
	ctx      context.Context
	cancel   context.CancelFunc

	mu      sync.Mutex
	id      string               // GUARDED_BY(mu); "" until created
	parts   map[int]backend.Part // GUARDED_BY(mu); sent
	queue   []queuedPart         // GUARDED_BY(mu); to send, once created
	next    int                  // GUARDED_BY(mu); the next part number Send expects
	sealed  bool                 // GUARDED_BY(mu); its op was committed: no more Send
	active  int                  // GUARDED_BY(mu); parts in flight, and the creation
	err     error                // GUARDED_BY(mu); the first failure: the stream is broken
	aborted bool                 // GUARDED_BY(mu)
	settled chan struct{}        // GUARDED_BY(mu); the waiters', closed (and dropped) when active drops to 0 with nothing queued
}

type queuedPart struct {
	num       int
	off, size int64
}

// StartStream opens a Stream for the content being written to staged (a
// file from StagingFile) for key, whose object will carry meta. It returns
// nil when the store takes no parts or is offline, or the journal is
// closed: the file is then uploaded the normal way. The upload itself is
// created in the background.
func (j *Journal) StartStream(staged, key string, meta map[string]string) *Stream {
	up, ok := backend.Parts(j.store)
	if !ok {
		return nil
	}
	f, err := os.Open(staged)
	if err != nil {
		j.log.Warn("cannot stream a file being written; it uploads after close", "key", key, "err", err)
		return nil
	}
	s := &Stream{
		j: j, up: up, key: key, token: newToken(), partSize: up.PartSize(), f: f,
		parts: map[int]backend.Part{}, next: 1,
	}
	s.meta = cloneMeta(meta)
	if s.meta == nil {
		s.meta = map[string]string{}
	}
	s.meta[tokenMeta] = s.token
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.active = 1 // the creation
	j.mu.Lock()
	if j.closed || j.outage.offline {
		j.mu.Unlock()
		s.cancel()
		closeQuietly(f)
		return nil
	}
	j.liveStreams[s] = struct{}{}
	j.mu.Unlock()
	go s.create()
	return s
}

// forget drops s from the live streams and closes its file.
func (s *Stream) forget() {
	s.cancel()
	s.j.mu.Lock()
	delete(s.j.liveStreams, s)
	s.j.mu.Unlock()
	closeQuietly(s.f)
}

// Key is the key the Stream uploads to.
func (s *Stream) Key() string { return s.key }

// PartSize is the size of the Stream's parts.
func (s *Stream) PartSize() int64 { return s.partSize }

// Meta is the metadata the upload's object carries (with the token).
func (s *Stream) Meta() map[string]string { return cloneMeta(s.meta) }

// Send hands over part num (from 1), the bytes [(num-1)·PartSize,
// num·PartSize) of the staged file, which the writer will not change any
// more. Parts are handed over in order. It reports false when the Stream is
// broken, aborted, sealed, or num is not the next part: the caller then
// aborts it.
func (s *Stream) Send(num int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.aborted || s.sealed || num != s.next {
		return false
	}
	s.next++
	off := int64(num-1) * s.partSize
	s.queue = append(s.queue, queuedPart{num: num, off: off, size: s.partSize})
	s.pumpLocked()
	go s.writeBack(off, s.partSize) // may block on a busy disk: not here
	return true
}

// writeBack starts writing the staged bytes [off, off+size) to disk.
func (s *Stream) writeBack(off, size int64) {
	if err := s.j.startWriteBack(s.f, off, size); err != nil {
		// Only Commit's fsync takes longer.
		s.j.log.Debug("cannot start the write-back of a part", "key", s.key, "off", off, "err", err)
	}
}

// startWriteBack asks the kernel to start writing f's dirty pages in
// [off, off+size) to disk, and returns without waiting for them. It holds
// f's descriptor meanwhile: a Stream closes its file as soon as it is done.
func startWriteBack(f *os.File, off, size int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SyncFileRange(int(fd), off, size, unix.SYNC_FILE_RANGE_WRITE)
	}); err != nil {
		return err
	}
	return serr
}

// Broken reports whether the Stream can no longer be used.
func (s *Stream) Broken() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil || s.aborted
}

// Abort gives the Stream up: nothing more is sent, and the upload (once
// its parts in flight are done) is aborted, in the background.
func (s *Stream) Abort() {
	s.mu.Lock()
	if s.aborted {
		s.mu.Unlock()
		return
	}
	s.aborted = true
	s.queue = nil
	s.mu.Unlock()
	s.cancel()
	go s.abortUpload()
}

// abortUpload aborts the upload once nothing is in flight, and
// unregisters it.
func (s *Stream) abortUpload() {
	<-s.settledChan()
	s.mu.Lock()
	id := s.id
	s.mu.Unlock()
	s.forget()
	if id != "" {
		s.j.abortUpload(s.key, id, s.token)
	}
}

// settledChan returns a channel closed once no part is in flight and none
// is queued (or the stream is broken or aborted). Each call judges the
// state anew: a channel closed while the stream was settled once must not
// answer a waiter that came after more parts were queued.
func (s *Stream) settledChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.settled == nil {
		s.settled = make(chan struct{})
	}
	ch := s.settled
	s.checkSettledLocked()
	return ch
}

// checkSettledLocked closes the waiters' channel if the stream is settled;
// the next waiter gets a new one.
func (s *Stream) checkSettledLocked() {
	if s.settled == nil || s.active > 0 || (len(s.queue) > 0 && s.err == nil && !s.aborted) {
		return
	}
	close(s.settled)
	s.settled = nil
}

// create registers the Stream, creates the upload, and registers its ID.
func (s *Stream) create() {
	reg := streamReg{Key: s.key, Created: time.Now()}
	err := s.j.register(s.token, reg)
	var id string
	if err == nil {
		// A failure leaves the registration: the upload may exist all
		// the same (a lost answer), and abortOrphans looks for it.
		id, err = s.up.CreateUpload(s.ctx, s.key, s.meta)
	}
	if err == nil {
		reg.UploadID = id
		if err = s.j.register(s.token, reg); err != nil {
			// Its intent is registered: abortOrphans would find it. No
			// need to wait for that.
			s.j.abortUpload(s.key, id, s.token)
			id = ""
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
	if err != nil {
		s.failLocked(fmt.Errorf("create upload: %w", err))
		return
	}
	s.id = id
	if s.aborted {
		// Abort ran before the ID was known: its abortUpload waits for
		// this creation to settle, then aborts by this ID.
		s.checkSettledLocked()
		return
	}
	s.j.log.Debug("streaming upload started", "key", s.key, "upload_id", id)
	s.pumpLocked()
}

// pumpLocked starts queued parts, up to StreamConcurrency at a time.
func (s *Stream) pumpLocked() {
	for s.id != "" && s.err == nil && !s.aborted && s.active < StreamConcurrency && len(s.queue) > 0 {
		p := s.queue[0]
		s.queue = s.queue[1:]
		s.active++
		go s.sendPart(s.id, p)
	}
	s.checkSettledLocked()
}

func (s *Stream) sendPart(id string, p queuedPart) {
	part, err := s.up.UploadPart(s.ctx, s.key, id, p.num, s.f, p.off, p.size)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
	if err != nil {
		s.failLocked(fmt.Errorf("part %d: %w", p.num, err))
		return
	}
	s.parts[p.num] = part
	s.pumpLocked()
}

func (s *Stream) failLocked(err error) {
	if s.err == nil && !s.aborted {
		s.err = err
		s.j.log.Info("streaming upload failed; the file uploads after close", "key", s.key, "err", err)
	}
	s.queue = nil
	s.checkSettledLocked()
}

// seal is Commit's: the staged file is final at size bytes, so every
// part not handed over yet is queued. It returns the persisted form of the
// stream, or nil when it cannot be used (then the caller aborts it).
func (s *Stream) seal(size int64) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil || s.aborted || s.sealed || size < int64(s.next-1)*s.partSize {
		return nil
	}
	s.sealed = true
	for off := int64(s.next-1) * s.partSize; off < size; off += s.partSize {
		s.queue = append(s.queue, queuedPart{num: s.next, off: off, size: min(s.partSize, size-off)})
		s.next++
	}
	s.pumpLocked()
	return &stream{UploadID: s.id, PartSize: s.partSize, Parts: s.sentLocked()}
}

// sentLocked returns the parts sent, by number.
func (s *Stream) sentLocked() []backend.Part {
	out := make([]backend.Part, 0, len(s.parts))
	for _, p := range s.parts {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b backend.Part) int { return a.Num - b.Num })
	return out
}

// finish waits until the Stream's parts are sent, and returns its upload
// ID and parts; an error when it broke or ctx ended.
func (s *Stream) finish(ctx context.Context) (string, []backend.Part, error) {
	select {
	case <-s.settledChan():
	case <-ctx.Done():
		return "", nil, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.aborted:
		return "", nil, errors.New("stream aborted")
	case s.err != nil:
		return "", nil, s.err
	}
	return s.id, s.sentLocked(), nil
}

// register records the Stream of upload token.
func (j *Journal) register(token string, r streamReg) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	err = j.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(streamsBucket)
		if err != nil {
			return err
		}
		return b.Put([]byte(token), v)
	})
	if err != nil {
		return fmt.Errorf("register the upload of %q: %w", r.Key, err)
	}
	return nil
}

// unregister forgets the Stream of upload token: its upload was completed
// or aborted.
func (j *Journal) unregister(token string) {
	if token == "" {
		return
	}
	err := j.db.Update(func(tx *bbolt.Tx) error {
		if b := tx.Bucket(streamsBucket); b != nil {
			return b.Delete([]byte(token))
		}
		return nil
	})
	if err != nil {
		// abortOrphans tries the abort again, which is harmless.
		j.log.Warn("unregister a streamed upload", "err", err)
	}
}

// abortUpload aborts upload id of key on a context of its own, and
// unregisters its Stream (upload token) once it is gone. A failure leaves
// it registered, for abortOrphans.
func (j *Journal) abortUpload(key, id, token string) {
	up, ok := backend.Parts(j.store)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), streamAbortTimeout)
	defer cancel()
	if err := up.AbortUpload(ctx, key, id); err != nil {
		j.log.Warn("cannot abort a streamed upload; it is tried again at the next mount", "key", key, "upload_id", id, "err", err)
		return
	}
	j.unregister(token)
	j.log.Debug("streamed upload aborted", "key", key, "upload_id", id)
}

// abortOrphans aborts the registered uploads that no pending op and no live
// Stream uses: left by a crash. Run calls it once.
func (j *Journal) abortOrphans(ctx context.Context) {
	up, ok := backend.Parts(j.store)
	if !ok {
		return
	}
	regs := map[string]streamReg{}
	err := j.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(streamsBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r streamReg
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode streamed upload %q: %w", k, err)
			}
			regs[string(k)] = r
			return nil
		})
	})
	if err != nil {
		j.log.Error("read streamed uploads", "err", err)
		return
	}
	j.mu.Lock()
	for _, e := range j.entries {
		// A record that names its upload completes or aborts it; one
		// committed before its upload existed does not know it.
		if st := e.rec.Stream; st != nil && st.UploadID != "" {
			delete(regs, e.rec.Token)
		}
	}
	for s := range j.liveStreams {
		delete(regs, s.token)
	}
	j.mu.Unlock()
	for token, r := range regs {
		if ctx.Err() != nil {
			return
		}
		if r.UploadID != "" {
			j.log.Info("aborting a streamed upload left by a crash", "key", r.Key, "upload_id", r.UploadID, "created", r.Created)
			j.abortUpload(r.Key, r.UploadID, token)
			continue
		}
		// A crash while the upload was being created: it may exist.
		ups, err := up.ListUploads(ctx, r.Key)
		if err != nil {
			j.log.Warn("cannot list the uploads of a key to abort one left by a crash; tried again at the next mount", "key", r.Key, "err", err)
			continue
		}
		left := false
		for _, u := range ups {
			if d := u.Initiated.Sub(r.Created); d > -orphanWindow && d < orphanWindow {
				j.log.Info("aborting a streamed upload left by a crash while it was created", "key", r.Key, "upload_id", u.ID, "initiated", u.Initiated)
				actx, cancel := context.WithTimeout(ctx, streamAbortTimeout)
				if err := up.AbortUpload(actx, r.Key, u.ID); err != nil {
					j.log.Warn("cannot abort a streamed upload; it is tried again at the next mount", "key", r.Key, "upload_id", u.ID, "err", err)
					left = true
				}
				cancel()
			}
		}
		if !left {
			j.unregister(token)
		}
	}
}

// errNoStream: the op has no usable early upload; its content is sent by
// Put.
var errNoStream = errors.New("no streamed upload")

// completeStream makes rec's content visible under rec.Key from its early
// upload, under c. errNoStream: the early upload is unusable (and was
// aborted); the caller sends the content by Put. Other errors are the
// attempt's: retryable ones keep the upload for the next attempt;
// ErrPrecondition comes with the upload aborted.
func (j *Journal) completeStream(ctx context.Context, e *entry, rec *record, f *os.File, c backend.Cond) (backend.ObjectInfo, error) {
	up, isParts := backend.Parts(j.store)
	j.mu.Lock()
	live, gone := e.stream, e.noStream
	j.mu.Unlock()
	st := rec.Stream
	if !isParts || gone || (live == nil && (st == nil || st.UploadID == "")) {
		return backend.ObjectInfo{}, errNoStream
	}
	var err error
	var id string
	var parts []backend.Part
	partSize := int64(0)
	if live != nil {
		id, parts, err = live.finish(ctx)
		if ctx.Err() != nil {
			return backend.ObjectInfo{}, ctx.Err()
		}
		if err != nil || id == "" {
			j.log.Info("streamed upload unusable; sending the staged file", "key", rec.Key, "err", err)
			j.dropStream(e)
			live.Abort()
			return backend.ObjectInfo{}, errNoStream
		}
		partSize = live.partSize
	} else {
		id, parts, partSize = st.UploadID, slices.Clone(st.Parts), st.PartSize
	}
	abandon := func(why error) {
		j.log.Info("streamed upload unusable; sending the staged file", "key", rec.Key, "upload_id", id, "err", why)
		j.dropStream(e)
		j.abortUpload(rec.Key, id, rec.Token)
	}
	if partSize <= 0 {
		abandon(errors.New("no part size"))
		return backend.ObjectInfo{}, errNoStream
	}
	// Every part, from the staged file where it is not sent yet (or was
	// sent with another size: never, unless the record is damaged).
	n := int((rec.Size + partSize - 1) / partSize)
	have := map[int]backend.Part{}
	for _, p := range parts {
		have[p.Num] = p
	}
	all := make([]backend.Part, n)
	for i := range n {
		off := int64(i) * partSize
		size := min(partSize, rec.Size-off)
		if p, ok := have[i+1]; ok && p.Size == size {
			all[i] = p
			continue
		}
		p, err := up.UploadPart(ctx, rec.Key, id, i+1, f, off, size)
		switch {
		case errors.Is(err, backend.ErrNoUpload):
			abandon(err)
			return backend.ObjectInfo{}, errNoStream
		case err != nil:
			return backend.ObjectInfo{}, err
		}
		all[i] = p
	}
	info, err := up.CompleteUpload(ctx, rec.Key, id, all, c)
	switch {
	case err == nil:
		j.dropStream(e)
		j.unregister(rec.Token)
		j.log.Debug("streamed upload completed", "key", rec.Key, "upload_id", id, "parts", n)
		return info, nil
	case errors.Is(err, backend.ErrPrecondition):
		j.dropStream(e)
		j.abortUpload(rec.Key, id, rec.Token)
		return backend.ObjectInfo{}, err
	case backend.Retryable(err) || ctx.Err() != nil:
		return backend.ObjectInfo{}, err
	default:
		abandon(err)
		return backend.ObjectInfo{}, errNoStream
	}
}

// dropStream makes e forget its early upload, in memory: later attempts
// send the staged file. A record that still names it tries it again after
// a restart, and finds it gone (ErrNoUpload).
func (j *Journal) dropStream(e *entry) {
	j.mu.Lock()
	live := e.stream
	e.stream = nil
	e.noStream = true
	j.mu.Unlock()
	if live != nil {
		live.forget()
	}
}

// releaseStreams aborts the early uploads of ops that leave the journal
// without having completed them: superseded, cancelled, or uploaded
// otherwise (a conflicted copy).
func (j *Journal) releaseStreams(es ...*entry) {
	for _, e := range es {
		j.mu.Lock()
		live, st, gone := e.stream, e.rec.Stream, e.noStream
		e.stream, e.noStream = nil, true
		j.mu.Unlock()
		switch {
		case live != nil:
			live.Abort()
		case !gone && st != nil && st.UploadID != "":
			go j.abortUpload(e.rec.Key, st.UploadID, e.rec.Token)
		}
	}
}

// StreamPartSize is the part size of the store's multipart uploads, or 0
// when it takes none: then StartStream always returns nil.
func (j *Journal) StreamPartSize() int64 {
	if up, ok := backend.Parts(j.store); ok {
		return up.PartSize()
	}
	return 0
}
