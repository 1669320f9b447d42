package vfs

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nimbus-fs/nimbus/cache"
	"github.com/nimbus-fs/nimbus/journal"
)

func TestPartialRanges(t *testing.T) {
	tests := []struct {
		name string
		do   func(p *partial)
		want []journal.Range
	}{
		{"untouched", func(p *partial) {}, []journal.Range{rg(0, 100)}},
		{"write in the middle", func(p *partial) { p.cut(40, 1) }, []journal.Range{rg(0, 40), rg(41, 59)}},
		{"writes at both ends", func(p *partial) { p.cut(0, 10); p.cut(90, 20) }, []journal.Range{rg(10, 80)}},
		{"write across two holes", func(p *partial) { p.cut(40, 1); p.cut(30, 20) }, []journal.Range{rg(0, 30), rg(50, 50)}},
		{"truncate down", func(p *partial) { p.truncate(30) }, []journal.Range{rg(0, 30)}},
		{"truncate down, then up", func(p *partial) { p.truncate(30); p.truncate(100) }, []journal.Range{rg(0, 30)}},
		{"truncate to zero", func(p *partial) { p.truncate(0) }, nil},
		{"all written", func(p *partial) { p.cut(0, 100) }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &partial{snap: cacheContent("snap", "e1", 100), missing: []journal.Range{rg(0, 100)}}
			tt.do(p)
			if len(p.missing) == 0 {
				p.missing = nil
			}
			if !reflect.DeepEqual(p.missing, tt.want) {
				t.Errorf("missing = %v, want %v", p.missing, tt.want)
			}
			d := p.describe()
			if (d == nil) != (tt.want == nil) || (d != nil && (!reflect.DeepEqual(d.Missing, tt.want) || d.From != "snap" || d.FromETag != "e1")) {
				t.Errorf("describe() = %+v; want the snapshot and the missing ranges, or nil when none", d)
			}
		})
	}
}

// A copy of a partial file copies what it holds and leaves the rest as a
// hole: the copy's size is the same, and nothing missing is read.
func TestCopyHeldSkipsMissing(t *testing.T) {
	src := &countingReaderAt{data: []byte("AAAA" + strings.Repeat("?", 8) + "BBBB")}
	p := &partial{missing: []journal.Range{rg(4, 8)}}
	dst, err := os.Create(filepath.Join(t.TempDir(), "copy"))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if n, err := copyHeld(dst, src, 16, p); err != nil || n != 16 {
		t.Fatalf("copyHeld = %d, %v; want 16, nil", n, err)
	}
	got, err := os.ReadFile(dst.Name())
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte("AAAA\x00\x00\x00\x00\x00\x00\x00\x00BBBB"); !bytes.Equal(got, want) {
		t.Errorf("copy = %q, want %q", got, want)
	}
	if slices.ContainsFunc(src.reads, func(r journal.Range) bool { return r.Off < 12 && r.End() > 4 }) {
		t.Errorf("reads %v touch the missing range [4, 12)", src.reads)
	}
}

type countingReaderAt struct {
	data  []byte
	reads []journal.Range
}

func (r *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	r.reads = append(r.reads, rg(off, int64(len(p))))
	return bytes.NewReader(r.data).ReadAt(p, off)
}

func cacheContent(key, etag string, size int64) cache.Content {
	return cache.Content{Key: key, ETag: etag, Size: size}
}
