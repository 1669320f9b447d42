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
	if got, want := Key("p/", "docs/a.txt", at), "p/.nimbus-trash/2026-12-08/docs/a.txt"; got != want {
		t.Errorf("Key = %q, want %q", got, want)
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
