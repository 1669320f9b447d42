package journal

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestConflictName(t *testing.T) {
	at := time.Date(2026, 11, 21, 15, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		key, host string
		n         int
		want      string
	}{
		{"a/b.txt", "laptop", 1, "a/b (conflicted copy 2026-11-21 153000 laptop).txt"},
		{"b.txt", "laptop", 1, "b (conflicted copy 2026-11-21 153000 laptop).txt"},
		{"notes/README", "laptop", 1, "notes/README (conflicted copy 2026-11-21 153000 laptop)"},
		{".bashrc", "laptop", 1, ".bashrc (conflicted copy 2026-11-21 153000 laptop)"},
		{"home/.config.json", "laptop", 1, "home/.config (conflicted copy 2026-11-21 153000 laptop).json"},
		{"archive.tar.gz", "laptop", 1, "archive.tar (conflicted copy 2026-11-21 153000 laptop).gz"},
		{"trailing.", "laptop", 1, "trailing. (conflicted copy 2026-11-21 153000 laptop)"},
		{"dir.d/file", "laptop", 1, "dir.d/file (conflicted copy 2026-11-21 153000 laptop)"},
		{"a/b.txt", "laptop", 2, "a/b (conflicted copy 2026-11-21 153000 laptop 2).txt"},
		{"a/b.txt", "laptop", 3, "a/b (conflicted copy 2026-11-21 153000 laptop 3).txt"},
		{"a/b.txt", "", 1, "a/b (conflicted copy 2026-11-21 153000 unknown).txt"},
		{"a/b.txt", "evil/host", 1, "a/b (conflicted copy 2026-11-21 153000 evil-host).txt"},
	} {
		got := conflictNameN(tc.key, tc.host, at, tc.n)
		if got != tc.want {
			t.Errorf("conflictNameN(%q, %q, %d) = %q, want %q", tc.key, tc.host, tc.n, got, tc.want)
		}
		if tc.n == 1 && conflictName(tc.key, tc.host, at) != got {
			t.Errorf("conflictName(%q) differs from conflictNameN(…, 1)", tc.key)
		}
	}
}

func TestConflictNameStaysWithinNameMax(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// 250 bytes of two-byte characters: truncation must not split one.
	long := strings.Repeat("é", 125) + ".txt"
	got := conflictName("dir/"+long, "laptop", at)
	name := strings.TrimPrefix(got, "dir/")
	if len(name) > maxNameLen {
		t.Fatalf("name is %d bytes, more than %d: %q", len(name), maxNameLen, name)
	}
	if !strings.HasSuffix(name, " (conflicted copy 2026-01-02 030405 laptop).txt") {
		t.Errorf("suffix or extension lost: %q", name)
	}
	if !strings.HasPrefix(name, "éé") || !utf8.ValidString(name) {
		t.Errorf("stem cut badly: %q", name)
	}
}
