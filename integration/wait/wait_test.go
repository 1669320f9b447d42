package wait

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	start := time.Now()
	Until(t, 10*time.Second, "the third check", func() bool { return n.Add(1) == 3 })
	if n.Load() != 3 {
		t.Fatalf("cond called %d times, want 3", n.Load())
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v for three checks", d)
	}
}

// fatalRecorder records Fatalf instead of ending the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	panic(r)
}

func TestUntilFailsAfterTheTimeoutSayingWhat(t *testing.T) {
	r := &fatalRecorder{TB: t}
	start := time.Now()
	func() {
		defer func() {
			if p := recover(); p != r {
				t.Fatalf("Until returned or panicked with %v instead of failing the test", p)
			}
		}()
		Until(r, 50*time.Millisecond, "the impossible", func() bool { return false })
	}()
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("failed after %v, before its 50ms timeout", d)
	}
	if !strings.Contains(r.msg, "the impossible") {
		t.Fatalf("failure message %q does not say what was awaited", r.msg)
	}
}
