package main

import (
	"strings"
	"testing"
)

func TestSizeFromEnv(t *testing.T) {
	for _, name := range []string{partSizeEnv, copyThresholdEnv} {
		for v, want := range map[string]int64{"": 0, "5MiB": 5 << 20, "16777216": 16 << 20} {
			t.Setenv(name, v)
			if got, err := sizeFromEnv(name); err != nil || got != want {
				t.Errorf("%s=%q: %d, %v; want %d", name, v, got, err, want)
			}
		}
		for _, v := range []string{"lots", "0", "-5MiB"} {
			t.Setenv(name, v)
			if _, err := sizeFromEnv(name); err == nil || !strings.Contains(err.Error(), name) {
				t.Errorf("%s=%q: error %v, want one naming the variable", name, v, err)
			}
		}
	}
}
