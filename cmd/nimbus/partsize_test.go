package main

import "testing"

func TestEnvPartSize(t *testing.T) {
	for v, want := range map[string]int64{"": 0, "5MiB": 5 << 20, "16777216": 16 << 20} {
		t.Setenv(partSizeEnv, v)
		if got, err := envPartSize(); err != nil || got != want {
			t.Errorf("%s=%q: %d, %v; want %d", partSizeEnv, v, got, err, want)
		}
	}
	for _, v := range []string{"lots", "0", "-5MiB"} {
		t.Setenv(partSizeEnv, v)
		if _, err := envPartSize(); err == nil {
			t.Errorf("%s=%q accepted", partSizeEnv, v)
		}
	}
}
