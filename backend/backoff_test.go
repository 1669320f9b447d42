package backend

import (
	"testing"
	"time"
)

func TestBackoffDoublesWithJitterUpToMax(t *testing.T) {
	b := NewBackoff(time.Second, 10*time.Second)
	nominal := []time.Duration{1, 2, 4, 8, 10, 10, 10}
	spread := false
	for round := 0; round < 50; round++ {
		b.Reset()
		for i, n := range nominal {
			n *= time.Second
			d := b.Next()
			lo := time.Duration(float64(n) * (1 - BackoffJitter))
			hi := min(time.Duration(float64(n)*(1+BackoffJitter))+1, 10*time.Second)
			if d < lo || d > hi {
				t.Fatalf("round %d, delay %d = %v, want within [%v, %v]", round, i, d, lo, hi)
			}
			if d != n {
				spread = true
			}
		}
	}
	if !spread {
		t.Fatal("350 delays all exactly nominal: no jitter")
	}
}

func TestBackoffLowAboveHigh(t *testing.T) {
	b := NewBackoff(time.Minute, time.Second)
	if d := b.Next(); d > time.Second {
		t.Fatalf("first delay %v exceeds the 1 s maximum", d)
	}
}
