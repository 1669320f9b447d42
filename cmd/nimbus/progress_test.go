package main

import (
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/vfs"
)

// The pin progress line: an honest ETA from the rate so far, an empty bar
// (not a full one) while the files are still being counted, a full one
// when done.
func TestProgressLine(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       vfs.PinProgress
		elapsed time.Duration
		want    []string
		notWant []string
	}{
		{"counting", vfs.PinProgress{Running: true}, time.Second,
			[]string{"[" + strings.Repeat(".", 24) + "]", "listing what to download"}, []string{"0/0 files", "#"}},
		{"a quarter in 10 s", vfs.PinProgress{Running: true, Files: 4, FilesDone: 1, Bytes: 400 << 20, BytesDone: 100 << 20}, 10 * time.Second,
			[]string{"[######" + strings.Repeat(".", 18) + "]", "1/4 files", "ETA 30s"}, nil},
		{"nothing fetched yet", vfs.PinProgress{Running: true, Files: 4, Bytes: 400 << 20}, 10 * time.Second,
			[]string{"ETA -"}, []string{"ETA 0s"}},
		{"done", vfs.PinProgress{Complete: true, Files: 4, FilesDone: 4, Bytes: 400 << 20, BytesDone: 400 << 20}, 40 * time.Second,
			[]string{"[" + strings.Repeat("#", 24) + "]", "4/4 files", "done"}, nil},
		{"empty folder", vfs.PinProgress{Complete: true}, time.Second,
			[]string{"[" + strings.Repeat("#", 24) + "]", "done"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := progressLine("/mnt/d", &tc.p, tc.elapsed)
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("%q lacks %q", line, w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(line, w) {
					t.Errorf("%q has %q", line, w)
				}
			}
		})
	}
}
