package main

import (
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// --at takes an RFC 3339 time or a duration ago, makes the mount read-only
// with its own cache folder, and is refused on a dir: remote, in the
// future, and when unreadable.
func TestParseAtFlag(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	live, err := parseMountArgs([]string{"s3://bkt", "/m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o, err := parseMountArgs([]string{"--at", "2026-11-01T10:00:00Z", "s3://bkt", "/m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !o.readOnly || !o.store.atTime.Equal(time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("--at RFC 3339: read-only %v, time %v", o.readOnly, o.store.atTime)
	}
	if o.cacheDir == live.cacheDir || !strings.HasSuffix(o.cacheDir, "-at-20261101T100000Z") {
		t.Errorf("--at cache folder %q; want its own, apart from the live mount's %q", o.cacheDir, live.cacheDir)
	}
	if o.dirTTL != 24*time.Hour || o.poll != 0 {
		t.Errorf("--at: dir-ttl %v, poll %v; want a day and no polling (the past does not change)", o.dirTTL, o.poll)
	}
	before := time.Now()
	o, err = parseMountArgs([]string{"--at", "2h", "--dir-ttl", "5s", "s3://bkt", "/m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if d := before.Sub(o.store.atTime); d < 2*time.Hour-time.Second || d > 2*time.Hour+time.Minute || o.dirTTL != 5*time.Second {
		t.Errorf("--at 2h gave %v (%v ago), dir-ttl %v", o.store.atTime, d, o.dirTTL)
	}
	if d := before.Sub(mustParse(t, "3d")); d < 72*time.Hour-time.Second {
		t.Errorf("--at 3d gave %v ago", d)
	}
	args := o.store.pinAt([]string{"mount", "--at", "2h", "s3://bkt", "/m"})
	if want := []string{"mount", "--at", o.store.atTime.UTC().Format(time.RFC3339Nano), "s3://bkt", "/m"}; !slices.Equal(args, want) {
		t.Errorf("pinAt = %q, want %q", args, want)
	}
	for _, args := range [][]string{
		{"--at", "2h", "dir:/tmp", "/m"},
		{"--at", "2999-01-01T00:00:00Z", "s3://bkt", "/m"},
		{"--at", "yesterday", "s3://bkt", "/m"},
	} {
		_, err := parseMountArgs(args, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) || strings.Contains(err.Error(), "\n") {
			t.Errorf("parseMountArgs(%q) = %v; want a one-line usage error", args, err)
		}
	}
}

func mustParse(t *testing.T, at string) time.Time {
	t.Helper()
	o, err := parseMountArgs([]string{"--at", at, "s3://bkt", "/m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	return o.store.atTime
}
