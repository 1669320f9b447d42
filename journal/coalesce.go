package journal

import "time"

// Upload delay.
//
// A PutFile is not uploaded the moment it is committed: a program that
// closes a file and opens it again to write more (a log, a build's output,
// fsstress) would otherwise send every intermediate version whole, each
// close costing an upload of the entire file. Every close is durable in the
// journal already, so waiting costs no safety; it only lets a newer commit
// of the same key supersede the waiting one (see "Coalescing" in the
// package doc), so that one upload carries them all. A PutMarker waits
// the same way: a folder's mode and times change right after its mkdir
// (tar sets them as it leaves the folder), and one upload carries them.
// So does a Copy (a rename): a folder rename's copies then complete after
// the kernel has moved the folder's nodes, the common case the vfs
// settles them in (it handles the other too: vfs resetMoved).
//
// How long to wait is a trade: another machine sees nothing before the
// upload. A file saved once (an editor's save, a cp) waits the base delay,
// Config.UploadDelay (1 s by default; rclone's --vfs-write-back is 5 s).
// A key that is committed again soon after its previous upload started
// (within hotWindow delays) is being rewritten, and its delay doubles, up
// to maxDelayFactor times the base (30 s); a key quiet for that long is
// back to the base delay. Each commit restarts the wait, but never beyond
// maxDelayFactor base delays after the oldest change the op carries, so a
// file rewritten without pause still uploads every half minute. WaitIdle
// (nimbus sync) does not wait at all: while a WaitIdle runs, every op is
// due at once.

// Bursts of commits.
//
// While commits keep coming (the last one less than burstGap ago: an
// untar, a build, a copy of many files), due uploads wait for the burst to
// end, but never more than burstHold base delays past when they were due.
// On a small machine an upload running beside a stream of closes slows
// every close: its CPU, its completion's fsync, the mount's update of its
// metadata. The closes are what the program waits for; once they stop,
// the uploads run at full concurrency. WaitIdle (nimbus sync) does not
// wait for a burst to end either.
const (
	burstGap  = 50 * time.Millisecond
	burstHold = 4
)

// heldByBurstLocked reports how long e, due now, should still wait for the
// burst of commits to end (zero: start it). Callers hold mu.
func (j *Journal) heldByBurstLocked(e *entry, now time.Time) time.Duration {
	if j.uploadDelay <= 0 || j.flushing > 0 || j.lastCommit.IsZero() {
		return 0
	}
	quiet := j.lastCommit.Add(burstGap)
	limit := e.due.Add(burstHold * j.uploadDelay)
	if !now.Before(quiet) || !now.Before(limit) {
		return 0
	}
	if limit.Before(quiet) {
		return limit.Sub(now)
	}
	return quiet.Sub(now)
}

// delayed reports whether ops of kind k wait for the upload delay.
func delayed(k Kind) bool { return k == PutFile || k == PutMarker || k == Copy }

// DefaultUploadDelay is Config.UploadDelay when it is zero.
const DefaultUploadDelay = time.Second

const (
	// maxDelayFactor bounds a key's delay, and how long commits may keep
	// deferring an upload, in base delays.
	maxDelayFactor = 30
	// hotWindow: a commit this many of the key's delays after its last
	// upload started doubles the delay; later, it resets it.
	hotWindow = 4
	// maxHotKeys bounds the keys whose delay is remembered; beyond it the
	// ones quiet for longest are forgotten.
	maxHotKeys = 4096
)

// keyDelay is the upload delay of a key that uploaded recently.
// GUARDED_BY(Journal.mu).
type keyDelay struct {
	delay     time.Duration
	lastStart time.Time // its last upload started (real clock)
	raised    bool      // delay already doubled since lastStart
}

// delayLocked sets when a newly committed PutFile's upload delay ends.
// Callers hold mu.
func (j *Journal) delayLocked(e *entry) {
	if j.uploadDelay <= 0 {
		return
	}
	now := time.Now()
	d := j.uploadDelay
	if k := j.keyDelays[e.rec.Key]; k != nil {
		switch {
		case now.Sub(k.lastStart) >= hotWindow*k.delay:
			k.delay = j.uploadDelay // quiet since: a fresh start
		case !k.raised:
			k.delay = min(2*k.delay, maxDelayFactor*j.uploadDelay)
			k.raised = true
		}
		d = k.delay
	}
	until := now.Add(d)
	if limit := e.queuedAt.Add(maxDelayFactor * j.uploadDelay); limit.Before(until) {
		until = limit
	}
	e.settleUntil = until
}

// uploadStartedLocked notes that a PutFile of key starts uploading, for
// the delay of its next commit. Callers hold mu.
func (j *Journal) uploadStartedLocked(key string, now time.Time) {
	if j.uploadDelay <= 0 {
		return
	}
	k := j.keyDelays[key]
	if k == nil {
		if len(j.keyDelays) >= maxHotKeys {
			j.forgetQuietKeysLocked(now)
		}
		k = &keyDelay{delay: j.uploadDelay}
		j.keyDelays[key] = k
	}
	k.lastStart, k.raised = now, false
}

// forgetQuietKeysLocked drops the remembered delays that no longer matter
// (quiet past their window), or, if all still do, the older half.
func (j *Journal) forgetQuietKeysLocked(now time.Time) {
	for key, k := range j.keyDelays {
		if now.Sub(k.lastStart) >= hotWindow*k.delay {
			delete(j.keyDelays, key)
		}
	}
	if len(j.keyDelays) < maxHotKeys/2 {
		return
	}
	cut := now.Add(-hotWindow * maxDelayFactor * j.uploadDelay / 2)
	for key, k := range j.keyDelays {
		if k.lastStart.Before(cut) {
			delete(j.keyDelays, key)
		}
	}
	if len(j.keyDelays) >= maxHotKeys {
		clear(j.keyDelays) // all hot at once: start over
	}
}

// flush makes every pending op due at once, delays ignored, until the
// returned function is called. WaitIdle uses it: nimbus sync must not
// wait for the upload delay.
func (j *Journal) flush() (done func()) {
	j.mu.Lock()
	j.flushing++
	j.refreshAllLocked()
	j.notifyLocked()
	j.mu.Unlock()
	return func() {
		j.mu.Lock()
		j.flushing--
		j.refreshAllLocked()
		j.mu.Unlock()
	}
}

// refreshAllLocked recomputes when every queued op is due.
func (j *Journal) refreshAllLocked() {
	for _, e := range j.entries {
		if e.state == stateQueued {
			j.refreshLocked(e)
		}
	}
}
