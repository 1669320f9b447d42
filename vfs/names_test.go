package vfs

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
)

func TestListingToEntries(t *testing.T) {
	long := strings.Repeat("x", 256)
	pages := []backend.Page{
		{
			Objects: []backend.ObjectInfo{
				{Key: "p/", Size: 0}, // the directory's own marker
				{Key: "p/a.txt", Size: 3, ETag: "e1"},
				{Key: "p/both", Size: 9},    // shadowed by p/both/
				{Key: "p/" + long, Size: 1}, // too long
				{Key: "p/.", Size: 1},       // dot segment
				{Key: "p/bad\xff", Size: 1}, // not UTF-8
			},
			Prefixes: []string{"p/both/", "p//", "p/sub/"},
		},
		{Objects: []backend.ObjectInfo{{Key: "p/z", Size: 5}}, Prefixes: []string{"p/../"}},
	}
	entries, skipped := listingToEntries("p/", pages)
	var names []string
	for _, e := range entries {
		kind := "f"
		if e.Dir {
			kind = "d"
		}
		names = append(names, kind+":"+e.Name)
	}
	if want := []string{"d:both", "d:sub", "f:a.txt", "f:z"}; !reflect.DeepEqual(names, want) {
		t.Errorf("entries = %v, want %v", names, want)
	}
	reasons := map[string]string{}
	for _, s := range skipped {
		reasons[s.Key] = s.Reason
	}
	for key, want := range map[string]string{
		"p/both":    "shadowed",
		"p/" + long: "longer than 255",
		"p/.":       "dot",
		"p/bad\xff": "UTF-8",
		"p//":       "empty",
		"p/../":     "dot",
	} {
		if !strings.Contains(reasons[key], want) {
			t.Errorf("skipped[%q] = %q, want it to mention %q", key, reasons[key], want)
		}
	}
	if len(skipped) != 6 {
		t.Errorf("%d skipped, want 6: %v", len(skipped), skipped)
	}
}

func TestCheckKey(t *testing.T) {
	if err := checkKey(strings.Repeat("k", 1025)); err != errNameTooLong {
		t.Errorf("1025-byte key: %v", err)
	}
	if err := checkKey("bad\xfe"); err != errNameInvalid {
		t.Errorf("invalid UTF-8: %v", err)
	}
	if err := checkKey("fine/ok.txt"); err != nil {
		t.Errorf("valid key: %v", err)
	}
}
