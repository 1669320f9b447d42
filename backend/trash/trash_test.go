package trash

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/dir"
)

func put(t *testing.T, s *dir.Store, key, body string) {
	t.Helper()
	if _, err := s.Put(context.Background(), key, strings.NewReader(body), int64(len(body)), nil, backend.Cond{}); err != nil {
		t.Fatal(err)
	}
}

func TestKey(t *testing.T) {
	at := time.Date(2026, 12, 7, 23, 30, 0, 0, time.FixedZone("x", -2*3600)) // 01:30 UTC the next day
	if got, want := Key("p/", "docs/a.txt", at), "p/.nimbus-trash/2026-12-08/docs/a.txt~deleted-013000.000000000Z"; got != want {
		t.Errorf("Key = %q, want %q", got, want)
	}
}

// The time suffix of a trash key parses back to the path and the time of
// the delete, whatever the deleted file's name: a name that looks like a
// trash name itself keeps its look. A key without a suffix (made before
// it existed) is the plain path.
func TestKeyParses(t *testing.T) {
	at := time.Date(2026, 12, 7, 6, 32, 33, 123456789, time.UTC)
	for _, path := range []string{
		"a.txt", "docs/a b.txt", "x~deleted-063233.123456789Z", "d/~deleted-000000.000000000Z",
		"d~deleted-063233.123456789Z/f", "~", "Z",
	} {
		key := Key("p/", path, at)
		got, deleted, ok := parse(strings.TrimPrefix(key, "p/"+Dir+"/"))
		if !ok || got != path || !deleted.Equal(at) {
			t.Errorf("parse(Key(%q)) = %q, %v, %v; want the path back, deleted at %v", path, got, deleted, ok, at)
		}
	}
	if got, deleted, ok := parse("2026-12-07/docs/a.txt"); !ok || got != "docs/a.txt" || !deleted.IsZero() {
		t.Errorf("parse of a key without a suffix = %q, %v, %v; want the plain path and no time", got, deleted, ok)
	}
	for _, rel := range []string{"2026-12-07/", "2026-12-07/d/", "notadate/a.txt", "a.txt"} {
		if _, _, ok := parse(rel); ok {
			t.Errorf("parse(%q) took it for a trash copy", rel)
		}
	}
}

// Two deletes of one path on one day keep two copies; List gives both,
// newest first, with the times of the deletes, and Newest the later one.
func TestSameDayDeletes(t *testing.T) {
	s, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	first := time.Date(2026, 12, 7, 9, 0, 0, 1, time.UTC)
	second := first.Add(time.Nanosecond)
	k1, k2 := Key("", "d/a.txt", first), Key("", "d/a.txt", second)
	if k1 == k2 {
		t.Fatalf("two deletes a nanosecond apart share the key %q", k1)
	}
	put(t, s, k2, "second")
	put(t, s, k1, "first")
	got, err := List(context.Background(), s, "", "d/a.txt")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Key != k2 || !got[0].Deleted.Equal(second) || got[1].Key != k1 || !got[1].Deleted.Equal(first) || got[0].Path != "d/a.txt" {
		t.Fatalf("List = %+v; want the second delete, then the first, with their times", got)
	}
	if n := Newest(got); len(n) != 1 || n[0].Key != k2 {
		t.Fatalf("Newest = %+v; want the second delete", n)
	}
}

// List finds the trash copies under a path, newest first per path, and
// Sweep deletes only the date folders older than the time kept.
func TestListAndSweep(t *testing.T) {
	s, err := dir.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	put(t, s, "p/.nimbus-trash/2000-01-01/docs/a.txt", "old")
	put(t, s, "p/.nimbus-trash/2026-12-06/docs/a.txt", "yesterday")
	put(t, s, "p/.nimbus-trash/2026-12-07/docs/sub/b.txt", "today")
	put(t, s, "p/.nimbus-trash/2026-12-07/other.txt", "today")
	put(t, s, "p/docs/kept.txt", "live")

	got, err := List(ctx, s, "p/", "docs")
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, e := range got {
		paths = append(paths, e.Path+"@"+strings.Split(e.Key, "/")[2])
	}
	// Same ModTime resolution may tie; only check membership and order by path.
	if len(got) != 3 || got[0].Path != "docs/a.txt" || got[2].Path != "docs/sub/b.txt" {
		t.Errorf("List(docs) = %v", paths)
	}
	if n := len(Newest(got)); n != 2 {
		t.Errorf("Newest kept %d entries, want 2", n)
	}

	n, err := Sweep(ctx, s, "p/", 30*24*time.Hour, now)
	if err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1 deleted", n, err)
	}
	left, err := List(ctx, s, "p/", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 3 {
		t.Errorf("left after a 30d sweep: %+v", left)
	}
	if n, err := Sweep(ctx, s, "p/", time.Hour, now); err != nil || n != 1 {
		t.Errorf("1h sweep = %d, %v; want yesterday's one copy", n, err)
	}
	if _, err := s.Stat(ctx, "p/docs/kept.txt"); err != nil {
		t.Errorf("a live file was touched: %v", err)
	}
}
