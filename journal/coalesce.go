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
// package doc), so that one upload carries them all. The delay is short
// (DefaultUploadDelay, 1 s, against rclone's 5 s --vfs-write-back) because
// another machine sees nothing before the upload, and it is bounded from
// the first change of the chain (maxDelayFactor times the delay), so a
// file rewritten without pause still uploads every few seconds. WaitIdle
// (nimbus sync) does not wait for it: while a WaitIdle runs, every op is
// due at once.

// DefaultUploadDelay is Config.UploadDelay when it is zero.
const DefaultUploadDelay = time.Second

// maxDelayFactor bounds how long superseding commits may keep deferring an
// upload: at most this many upload delays after the oldest change.
const maxDelayFactor = 5

// delayLocked sets when a newly committed PutFile's upload delay ends.
// Callers hold mu.
func (j *Journal) delayLocked(e *entry) {
	if j.uploadDelay <= 0 {
		return
	}
	until := time.Now().Add(j.uploadDelay)
	if limit := e.queuedAt.Add(maxDelayFactor * j.uploadDelay); limit.Before(until) {
		until = limit
	}
	e.settleUntil = until
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
