package attrindex

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/backend/mem"
)

// pagedStore is the mem store whose delimited listings come in pages of
// size keys and prefixes, in key order, noting each page it produces.
type pagedStore struct {
	*mem.Store
	size   int
	events *[]string
}

func (s pagedStore) List(ctx context.Context, prefix string, fn func(backend.Page) error) error {
	type item struct {
		key string
		obj *backend.ObjectInfo
	}
	var items []item
	if err := s.Store.List(ctx, prefix, func(p backend.Page) error {
		for i := range p.Objects {
			items = append(items, item{key: p.Objects[i].Key, obj: &p.Objects[i]})
		}
		for _, d := range p.Prefixes {
			items = append(items, item{key: d})
		}
		return nil
	}); err != nil {
		return err
	}
	slices.SortFunc(items, func(a, b item) int { return strings.Compare(a.key, b.key) })
	for n := 0; len(items) > 0; n++ {
		var p backend.Page
		for _, it := range items[:min(s.size, len(items))] {
			if it.obj != nil {
				p.Objects = append(p.Objects, *it.obj)
			} else {
				p.Prefixes = append(p.Prefixes, it.key)
			}
		}
		items = items[min(s.size, len(items)):]
		*s.events = append(*s.events, fmt.Sprintf("produced %d", n))
		if err := fn(p); err != nil {
			return err
		}
	}
	return nil
}

// streamListing lists prefix through x over store in pages of size, and
// returns the events (pages produced by the store, pages passed on, with
// their first name) and the attributes of what was listed, by name.
func streamListing(t *testing.T, store *mem.Store, prefix string, size int) ([]string, map[string]*backend.Attrs) {
	t.Helper()
	var events []string
	x := newIndex(t, store, Config{})
	x.Backend = pagedStore{Store: store, size: size, events: &events}
	attrs := make(map[string]*backend.Attrs)
	passed := 0
	err := x.List(context.Background(), prefix, func(p backend.Page) error {
		var names []string
		for _, o := range p.Objects {
			name := strings.TrimPrefix(o.Key, prefix)
			names = append(names, name)
			attrs[name] = o.Attrs
		}
		for _, d := range p.Prefixes {
			name := strings.TrimPrefix(d, prefix)
			names = append(names, name)
			if a, ok := p.PrefixAttrs[d]; ok {
				attrs[name] = &a
			} else {
				attrs[name] = nil
			}
		}
		slices.Sort(names)
		events = append(events, fmt.Sprintf("passed %d %s", passed, strings.Join(names, ",")))
		passed++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return events, attrs
}

// TestListStreamsPastTheSidecar: a page is passed on as soon as the
// listing has reached the place of the folder's sidecar, the pages before
// it held until then, all with the sidecar's attributes.
func TestListStreamsPastTheSidecar(t *testing.T) {
	store := mem.New()
	w := newIndex(t, store, Config{})
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, name := range []string{"!a", "#b", "+c", "x", "y", "z"} {
		for _, dir := range []string{"early/", "late/"} {
			if dir == "early/" && name != "x" && name != "y" && name != "z" {
				continue
			}
			uploaded(w, store, dir+name, 0o700, mtime)
		}
	}
	store.PutString("early/.a", "before the sidecar")
	w.SetFile("early/.a", mustStat(t, store, "early/.a").ETag, backend.Attrs{Mode: syscall.S_IFREG | 0o700, MTime: mtime})
	store.PutString("late/sub/f", "in a folder")
	w.SetFolder("late/sub/", backend.Attrs{Mode: syscall.S_IFDIR | 0o750, MTime: mtime})
	store.PutString("late/$d/f", "in a folder before the sidecar")
	w.SetFolder("late/$d/", backend.Attrs{Mode: syscall.S_IFDIR | 0o705, MTime: mtime})
	flush(t, w)

	// early/: .a and the sidecar on page 0, so nothing waits.
	events, attrs := streamListing(t, store, "early/", 2)
	want := []string{"produced 0", "passed 0 .a", "produced 1", "passed 1 x,y", "produced 2", "passed 2 z"}
	if !reflect.DeepEqual(events, want) {
		t.Errorf("sidecar on the first page: events %q, want %q", events, want)
	}
	for _, name := range []string{".a", "x", "y", "z"} {
		if a := attrs[name]; a == nil || a.Mode != syscall.S_IFREG|0o700 || !a.MTime.Equal(mtime) {
			t.Errorf("early/%s listed with %+v, want mode 0700 and its mtime", name, a)
		}
	}
	if _, ok := attrs[Name]; ok {
		t.Error("the sidecar is listed")
	}

	// late/: !a, #b, $d/, +c, .nimbus-attrs, sub/, x...: pages 0 and 1
	// wait for page 2, which reaches the sidecar.
	events, attrs = streamListing(t, store, "late/", 2)
	want = []string{"produced 0", "produced 1", "produced 2", "passed 0 !a,#b", "passed 1 $d/,+c", "passed 2 sub/",
		"produced 3", "passed 3 x,y", "produced 4", "passed 4 z"}
	if !reflect.DeepEqual(events, want) {
		t.Errorf("sidecar on the third page: events %q, want %q", events, want)
	}
	for _, name := range []string{"!a", "#b", "+c", "x", "y", "z"} {
		if a := attrs[name]; a == nil || a.Mode != syscall.S_IFREG|0o700 || !a.MTime.Equal(mtime) {
			t.Errorf("late/%s listed with %+v, want mode 0700 and its mtime", name, a)
		}
	}
	for name, mode := range map[string]uint32{"$d/": 0o705, "sub/": 0o750} {
		if a := attrs[name]; a == nil || a.Mode != syscall.S_IFDIR|mode {
			t.Errorf("late/%s listed with %+v, want mode %o", name, a, mode)
		}
	}

	// A listing that ends before the sidecar's place passes its pages at
	// the end.
	store.PutString("none/!a", "")
	store.PutString("none/#b", "")
	events, attrs = streamListing(t, store, "none/", 1)
	want = []string{"produced 0", "produced 1", "passed 0 !a", "passed 1 #b"}
	if !reflect.DeepEqual(events, want) || len(attrs) != 2 || attrs["!a"] != nil {
		t.Errorf("no sidecar, all before its place: events %q attrs %v, want %q and none", events, attrs, want)
	}
}

func mustStat(t *testing.T, store *mem.Store, key string) backend.ObjectInfo {
	t.Helper()
	info, err := store.Stat(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	return info
}
