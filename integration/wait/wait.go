// Package wait is the one wait-until helper of nimbus's tests, used by every
// tier (unit, in-process, integration): a test that waits for something to
// happen in the background polls a condition with a deadline, and fails
// saying what it waited for. A fixed sleep instead would either slow the
// suite or, on a loaded machine, let a test pass or fail by luck.
//
// Tests that check that something does NOT happen do not poll: they run in
// a testing/synctest bubble and call synctest.Wait.
package wait

import (
	"testing"
	"time"
)

// maxInterval bounds the pause between two checks: a condition that runs a
// command (nimbus status) is not re-run in a tight loop, and one that holds
// soon is seen within a tenth of a second.
const maxInterval = 100 * time.Millisecond

// Until polls cond, from every millisecond up to every maxInterval, until it
// holds; it fails the test (t.Fatalf, so from the test's goroutine only) if
// it still does not after timeout.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(pause)
		pause = min(2*pause, maxInterval)
	}
}
