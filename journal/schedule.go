package journal

import (
	"cmp"
	"container/heap"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// entryState is where a pending op is in its life.
type entryState int

const (
	// stateQueued: waiting for its turn (earlier ops on its keys and
	// groups) or for its retry time.
	stateQueued entryState = iota
	// stateUploading: an uploader goroutine owns it.
	stateUploading
	// stateParked: not retried before the next Open.
	stateParked
	// stateFrozen: a Commit in progress is superseding it; it must not
	// start. Back to stateQueued if that Commit fails.
	stateFrozen
)

// entry is a pending op in memory. All fields are GUARDED_BY(Journal.mu).
// While an entry is uploading, only its uploader changes rec (and only under
// mu); nothing else does, since followers wait for it and Commit supersedes
// only ops that are not uploading.
type entry struct {
	rec   record
	state entryState
	// maybeSent: an attempt may have reached the store (it was tried in
	// this process, or was loaded at Open). Such an op is never cancelled
	// outright, and its hash is remembered by whatever supersedes it.
	maybeSent bool
	attempts  int
	backoff   *backend.Backoff // of its retries; nil until one fails
	notBefore time.Time        // retry not before (real clock); zero: now
	// queuedAt is when the oldest change this op carries was committed
	// (real clock; inherited by the op that supersedes it), and
	// settleUntil is when its upload delay ends (see Config.UploadDelay).
	queuedAt    time.Time
	settleUntil time.Time
	// due is when the op may start: notBefore, or settleUntil if later
	// and no WaitIdle is flushing. It orders the ready heap.
	due       time.Time
	startedAt time.Time // of the current or last attempt (real clock)
	lastErr   error     // of the last failed attempt
	parkedAt  time.Time
	heapIndex int // in Journal.ready; -1 when not there
	// stream is the op's early upload while this process still has it
	// (stream.go); noStream: it is gone (completed, aborted, or found
	// unusable), so the content goes up by Put. GUARDED_BY(Journal.mu).
	stream   *Stream
	noStream bool
}

func newEntry(r record) *entry { return &entry{rec: r, heapIndex: -1, queuedAt: time.Now()} }

// keys returns the keys e touches: its Key, and its Src for a Copy or a
// Restore from the trash (the two prefixes for a MoveTree), and its trash
// key for a Delete that keeps the object there.
func (e *entry) keys() []string {
	switch {
	case e.rec.Kind == Copy || e.rec.Kind == MoveTree || (e.rec.Kind == Restore && e.rec.Src != ""):
		return []string{e.rec.Key, e.rec.Src}
	case e.rec.Kind == Delete && e.rec.Trash != "":
		return []string{e.rec.Key, e.rec.Trash}
	}
	return []string{e.rec.Key}
}

// insertLocked adds e to the in-memory state. e's seq is higher than any
// pending op's, so appending keeps the queues in order. Callers hold writeMu
// and mu.
func (j *Journal) insertLocked(e *entry) {
	j.entries[e.rec.Seq] = e
	for _, k := range e.keys() {
		j.keyQ[k] = append(j.keyQ[k], e)
	}
	for _, g := range e.rec.Groups {
		j.groupQ[g] = append(j.groupQ[g], e)
	}
	if e.rec.Staged != "" {
		j.staged[e.rec.Staged] = e
	}
	if e.rec.Kind == PutFile {
		j.pendingBytes += e.rec.Size
	}
	if delayed(e.rec.Kind) && !e.maybeSent {
		j.delayLocked(e)
	}
	j.refreshLocked(e)
}

// removeLocked drops e from the in-memory state and lets the ops that
// waited for it start. Callers hold writeMu and mu.
func (j *Journal) removeLocked(e *entry) {
	delete(j.entries, e.rec.Seq)
	if j.staged[e.rec.Staged] == e {
		delete(j.staged, e.rec.Staged)
	}
	if e.rec.Kind == PutFile {
		j.pendingBytes -= e.rec.Size
	}
	if e.heapIndex >= 0 {
		heap.Remove(&j.ready, e.heapIndex)
	}
	var heads []*entry
	for _, k := range e.keys() {
		q := deleteEntry(j.keyQ[k], e)
		if len(q) == 0 {
			delete(j.keyQ, k)
		} else {
			j.keyQ[k] = q
			heads = append(heads, q[0])
		}
	}
	for _, g := range e.rec.Groups {
		q := deleteEntry(j.groupQ[g], e)
		if len(q) == 0 {
			delete(j.groupQ, g)
		} else {
			j.groupQ[g] = q
			heads = append(heads, q[0])
		}
	}
	for _, h := range heads {
		j.refreshLocked(h)
	}
}

// deleteEntry removes e from q. Removing the head re-slices, so draining a
// long queue costs O(1) per op.
func deleteEntry(q []*entry, e *entry) []*entry {
	if len(q) > 0 && q[0] == e {
		q[0] = nil
		return q[1:]
	}
	if i := slices.Index(q, e); i >= 0 {
		return slices.Delete(q, i, i+1)
	}
	return q
}

// runnableLocked reports whether e is the oldest pending op of each of its
// keys and groups, so that nothing it must follow is pending.
func (j *Journal) runnableLocked(e *entry) bool {
	for _, k := range e.keys() {
		if q := j.keyQ[k]; len(q) == 0 || q[0] != e {
			return false
		}
	}
	for _, g := range e.rec.Groups {
		if q := j.groupQ[g]; len(q) == 0 || q[0] != e {
			return false
		}
	}
	return true
}

// refreshLocked puts e in the ready heap, or takes it out, or moves it, so
// that the heap holds exactly the queued runnable ops.
func (j *Journal) refreshLocked(e *entry) {
	e.due = e.notBefore
	if j.flushing == 0 && e.settleUntil.After(e.due) {
		e.due = e.settleUntil
	}
	want := e.state == stateQueued && j.runnableLocked(e)
	switch {
	case want && e.heapIndex < 0:
		heap.Push(&j.ready, e)
	case want:
		heap.Fix(&j.ready, e.heapIndex)
	case e.heapIndex >= 0:
		heap.Remove(&j.ready, e.heapIndex)
	}
}

// readyHeap orders runnable ops by the time they are due, then sequence
// number.
type readyHeap []*entry

func (h readyHeap) Len() int { return len(h) }
func (h readyHeap) Less(a, b int) bool {
	if c := h[a].due.Compare(h[b].due); c != 0 {
		return c < 0
	}
	return h[a].rec.Seq < h[b].rec.Seq
}
func (h readyHeap) Swap(a, b int) {
	h[a], h[b] = h[b], h[a]
	h[a].heapIndex = a
	h[b].heapIndex = b
}
func (h *readyHeap) Push(x any) {
	e := x.(*entry)
	e.heapIndex = len(*h)
	*h = append(*h, e)
}
func (h *readyHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	e.heapIndex = -1
	*h = old[:len(old)-1]
	return e
}

// outage tracks an unreachable store. GUARDED_BY(Journal.mu).
type outage struct {
	offline bool
	backoff *backend.Backoff // of the probes; set when the pause begins
	until   time.Time        // no attempt before (real clock)
	since   time.Time        // when the current pause began
}

// Run uploads pending ops until ctx ends, then waits for its uploads to
// stop and returns. Work in flight is abandoned safely: an op whose upload
// was interrupted stays recorded and is replayed (idempotently) by the
// next Run or after the next Open. Only one Run may be active at a time.
func (j *Journal) Run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	j.mu.Lock()
	if j.running || j.closed {
		j.mu.Unlock()
		j.log.Error("journal Run called while running or after Close; ignored")
		return
	}
	j.running = true
	j.stopRun = cancel
	j.runDone = make(chan struct{})
	j.mu.Unlock()

	var workers sync.WaitGroup
	workers.Go(func() { j.abortOrphans(ctx) }) // stream.go
	defer func() {
		workers.Wait()
		j.mu.Lock()
		j.running = false
		j.stopRun = nil
		close(j.runDone)
		j.mu.Unlock()
	}()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		j.mu.Lock()
		wait := j.dispatchLocked(ctx, &workers)
		j.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-j.wake:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// idleWait is how long the dispatcher sleeps when nothing is scheduled; it
// is woken earlier by every change.
const idleWait = time.Hour

// dispatchLocked starts as many ready ops as allowed and returns how long
// to wait before something becomes due.
func (j *Journal) dispatchLocked(ctx context.Context, workers *sync.WaitGroup) time.Duration {
	// Checked under mu: an op requeued because ctx ended was requeued
	// under mu after the end, so it is never restarted here.
	if ctx.Err() != nil {
		return idleWait
	}
	now := time.Now()
	limit, smallLimit := j.concurrency, smallFactor*j.concurrency
	if j.outage.offline {
		if now.Before(j.outage.until) {
			return j.outage.until.Sub(now)
		}
		limit, smallLimit = 1, 1 // one op probes the store
	}
	for len(j.ready) > 0 {
		e := j.ready[0]
		if j.uploading >= limit && (j.uploading >= smallLimit || !small(e)) {
			break
		}
		if e.due.After(now) {
			return e.due.Sub(now)
		}
		if wait := j.heldByBurstLocked(e, now); wait > 0 {
			return wait // the oldest due op first: the others wait too
		}
		heap.Pop(&j.ready)
		e.state = stateUploading
		e.maybeSent = true
		if e.rec.Kind == PutFile || e.rec.Kind == PutMarker {
			j.uploadStartedLocked(e.rec.Key, now)
		}
		e.attempts++
		e.startedAt = now
		j.uploading++
		rec := e.rec // the uploader's snapshot; see entry
		rec.Meta = cloneMeta(rec.Meta)
		workers.Add(1)
		go func() {
			defer workers.Done()
			j.upload(ctx, e, rec)
		}()
	}
	return idleWait
}

// Small ops (a directory marker, a file of at most smallSize bytes) may
// run beyond Config.Concurrency, up to smallFactor times as many: each is
// about one round trip, so an untar's thousands of them go at the
// store's pace instead of four at a time, and more of their completions
// share a transaction (group commit). Large uploads stay within
// Concurrency: each holds buffers, and the link is theirs anyway.
const (
	smallFactor = 4
	smallSize   = 1 << 20
)

// small reports whether e is a small op (see smallFactor).
func small(e *entry) bool {
	switch e.rec.Kind {
	case PutMarker:
		return true
	case PutFile:
		return e.rec.Size <= smallSize && e.rec.Stream == nil && e.rec.Partial == nil
	}
	return false
}

// failure is how an attempt that did not complete is handled.
type failure int

const (
	failAbandoned failure = iota // Run is stopping: try again later, no error
	failOffline                  // pause everything, then probe
	failRetry                    // back off this op
	failPark                     // keep until the next Open
)

// failed puts e back after an attempt that did not complete.
func (j *Journal) failed(e *entry, err error, how failure) {
	now := time.Now()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.uploading--
	e.state = stateQueued
	switch how {
	case failAbandoned:
		j.refreshLocked(e)
		j.notifyLocked()
		return
	case failOffline:
		e.lastErr = err
		o := &j.outage
		// Only a failure of an attempt started after the pause began
		// (a probe) lengthens it: the others were already in flight.
		if !o.offline || !e.startedAt.Before(o.since) {
			if !o.offline {
				o.backoff = backend.NewBackoff(j.minBackoff, j.maxBackoff)
			}
			wait := o.backoff.Next()
			o.offline = true
			o.since = now
			o.until = now.Add(wait)
			j.log.Warn("store unreachable, pausing uploads", "key", e.rec.Key, "err", err, "retry_in", wait)
		}
	case failRetry:
		e.lastErr = err
		if e.backoff == nil {
			e.backoff = backend.NewBackoff(j.minBackoff, j.maxBackoff)
		}
		wait := e.backoff.Next()
		e.notBefore = now.Add(wait)
		j.storeAnsweredLocked()
		j.log.Warn("upload failed, will retry", "op", e.rec.Kind, "key", e.rec.Key, "seq", e.rec.Seq,
			"attempt", e.attempts, "retry_in", wait, "err", err)
	case failPark:
		e.lastErr = err
		e.state = stateParked
		e.parkedAt = now
		j.storeAnsweredLocked()
		j.log.Error("upload parked until the next mount", "op", e.rec.Kind, "key", e.rec.Key, "seq", e.rec.Seq, "err", err)
	}
	j.refreshLocked(e)
	j.notifyLocked()
}

// storeAnsweredLocked ends an outage: the store answered a request.
func (j *Journal) storeAnsweredLocked() {
	if j.outage.offline {
		j.log.Info("store reachable again, resuming uploads")
		j.outage = outage{}
	}
}

func sortEntries(es []*entry) {
	slices.SortFunc(es, func(a, b *entry) int { return cmp.Compare(a.rec.Seq, b.rec.Seq) })
}

func sortPendingByKey(ps []PendingOp) {
	slices.SortFunc(ps, func(a, b PendingOp) int { return cmp.Compare(a.Key, b.Key) })
}

func sortParked(ps []Parked) {
	slices.SortFunc(ps, func(a, b Parked) int { return cmp.Compare(a.Key, b.Key) })
}

func sortRetrying(rs []Retrying) {
	slices.SortFunc(rs, func(a, b Retrying) int { return cmp.Compare(a.Key, b.Key) })
}
