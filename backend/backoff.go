package backend

import (
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff is the one retry schedule of nimbus: the journal's uploads, the
// health checker's probes and the attribute index's writes all wait by it.
// Each delay doubles from Min up to Max and is spread by ±BackoffJitter, so
// that mounts (or entries) that failed together do not all retry in the
// same instant. The zero value is not usable; make one with NewBackoff.
// It is not safe for concurrent use: each retrying thing owns one.
type Backoff struct {
	b backoff.ExponentialBackOff
}

// BackoffJitter is how far each delay is spread around its nominal value:
// a nominal 4 s waits between 3 s and 5 s.
const BackoffJitter = 0.25

// NewBackoff returns a schedule whose first delay is about lo and whose
// delays never exceed hi (lo is lowered to hi if it is larger).
func NewBackoff(lo, hi time.Duration) *Backoff {
	b := &Backoff{b: backoff.ExponentialBackOff{
		InitialInterval:     max(1, min(lo, hi)),
		RandomizationFactor: BackoffJitter,
		Multiplier:          2,
		MaxInterval:         hi,
	}}
	b.b.Reset()
	return b
}

// Next returns the delay before the next attempt and lengthens the one
// after it.
func (b *Backoff) Next() time.Duration {
	return min(b.b.NextBackOff(), b.b.MaxInterval)
}

// Reset starts the schedule again from its first delay, after a success.
func (b *Backoff) Reset() { b.b.Reset() }
