package pointintime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/backend"
)

// fakeVersions is an in-memory versioned store: versions as listed.
type fakeVersions struct {
	vs   []backend.Version
	data map[string]string // version ID → content
}

func (f *fakeVersions) Versioning(context.Context) (bool, error) { return true, nil }
func (f *fakeVersions) String() string                           { return "fake" }

func (f *fakeVersions) ListVersions(_ context.Context, prefix string, fn func([]backend.Version) error) error {
	var out []backend.Version
	for _, v := range f.vs {
		if strings.HasPrefix(v.Key, prefix) {
			out = append(out, v)
		}
	}
	backend.SortVersions(out)
	// Two pages, to cross a page boundary inside a key's versions.
	half := len(out) / 2
	if err := fn(out[:half]); err != nil {
		return err
	}
	return fn(out[half:])
}

func (f *fakeVersions) StatVersion(_ context.Context, key, id string) (backend.ObjectInfo, error) {
	d, ok := f.data[id]
	if !ok {
		return backend.ObjectInfo{}, backend.ErrNotFound
	}
	return backend.ObjectInfo{Key: key, Size: int64(len(d)), Meta: map[string]string{"nimbus-mode": "420"}}, nil
}

func (f *fakeVersions) GetVersion(_ context.Context, key, id string, off, n int64) (io.ReadCloser, error) {
	d, ok := f.data[id]
	if !ok {
		return nil, backend.ErrNotFound
	}
	d = d[min(off, int64(len(d))):]
	if n >= 0 {
		d = d[:min(n, int64(len(d)))]
	}
	return io.NopCloser(strings.NewReader(d)), nil
}

func (f *fakeVersions) add(key, data string, at time.Time, deleted bool) {
	id := fmt.Sprintf("v%d", len(f.vs)+1)
	v := backend.Version{Key: key, ID: id, ModTime: at, Deleted: deleted, Size: int64(len(data)), ETag: "etag-" + id}
	if !deleted {
		f.data[id] = data
	}
	f.vs = append(f.vs, v)
}

// The view shows each key's newest version up to the time, hides keys
// deleted then or written later, lists the folders of then, reads the
// versions of then, and refuses writes.
func TestView(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := t0.Add(time.Hour)
	f := &fakeVersions{data: map[string]string{}}
	f.add("a.txt", "a v1", t0, false)
	f.add("a.txt", "a v2", at.Add(time.Minute), false) // later: not shown
	f.add("d/b.txt", "b v1", t0, false)
	f.add("d/b.txt", "", at.Add(time.Minute), true) // deleted later: shown
	f.add("gone.txt", "g", t0, false)
	f.add("gone.txt", "", t0.Add(time.Minute), true) // deleted before: hidden
	f.add("later/c.txt", "c", at.Add(time.Second), false)
	f.add("e/", "", t0, false)
	f.add("e/f/g.txt", "g v1", at, false) // exactly at: shown
	s := New(f, at)
	ctx := context.Background()

	var objs, dirs []string
	err := s.List(ctx, "", func(p backend.Page) error {
		for _, o := range p.Objects {
			objs = append(objs, o.Key+"="+o.ETag)
		}
		dirs = append(dirs, p.Prefixes...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a.txt=etag-v1"}; !slices.Equal(objs, want) {
		t.Errorf("root objects = %v, want %v", objs, want)
	}
	if want := []string{"d/", "e/"}; !slices.Equal(dirs, want) {
		t.Errorf("root folders = %v, want %v", dirs, want)
	}
	var flat []string
	if err := s.ListFlat(ctx, "e/", func(p backend.Page) error {
		for _, o := range p.Objects {
			flat = append(flat, o.Key)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"e/", "e/f/g.txt"}; !slices.Equal(flat, want) {
		t.Errorf("flat e/ = %v, want %v", flat, want)
	}

	for key, want := range map[string]string{"a.txt": "a v1", "d/b.txt": "b v1", "e/f/g.txt": "g v1"} {
		r, err := s.Get(ctx, key, 0, -1, "")
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		got, _ := io.ReadAll(r)
		if string(got) != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if _, err := s.Get(ctx, "a.txt", 0, -1, "etag-v2"); !errors.Is(err, backend.ErrPrecondition) {
		t.Errorf("get a.txt if-match a later version: %v, want ErrPrecondition", err)
	}
	for _, key := range []string{"gone.txt", "later/c.txt"} {
		if _, err := s.Stat(ctx, key); !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("stat %s: %v, want ErrNotFound", key, err)
		}
	}
	if info, err := s.Stat(ctx, "a.txt"); err != nil || info.ETag != "etag-v1" || info.Meta["nimbus-mode"] != "420" {
		t.Errorf("stat a.txt = %+v, %v; want version 1 with its metadata", info, err)
	}
	if _, err := s.Put(ctx, "x", strings.NewReader(""), 0, nil, backend.Cond{}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("put: %v, want ErrReadOnly", err)
	}
	if err := s.Delete(ctx, "a.txt", ""); !errors.Is(err, ErrReadOnly) {
		t.Errorf("delete: %v, want ErrReadOnly", err)
	}
	if _, err := s.Copy(ctx, "a.txt", "", "b", backend.Cond{}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("copy: %v, want ErrReadOnly", err)
	}
}

// The view's version listing is the history as it stood at the view's
// time: later versions are left out, and Current marks the version each
// key showed then (a delete marker for a key deleted then), across pages.
func TestViewVersions(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	at := t0.Add(time.Hour)
	f := &fakeVersions{data: map[string]string{}}
	f.add("a.txt", "a v1", t0, false)
	f.add("a.txt", "a v2", t0.Add(30*time.Minute), false)
	f.add("a.txt", "a v3", at.Add(time.Minute), false) // later: not listed
	f.add("gone.txt", "g", t0, false)
	f.add("gone.txt", "", t0.Add(time.Minute), true)
	f.add("gone.txt", "g again", at.Add(time.Second), false) // later
	f.add("later.txt", "l", at.Add(time.Second), false)
	// Sorted first, so that the fake's page boundary falls inside a.txt.
	f.add("0.txt", "z v1", t0, false)
	f.add("0.txt", "z v2", t0.Add(time.Minute), false)
	for i := range f.vs {
		f.vs[i].Current = i == 2 || i == 5 || i == 6 || i == 8 // the store's current versions now
	}
	s := New(f, at)
	if on, err := s.Versioning(context.Background()); err != nil || !on {
		t.Fatalf("Versioning = %v, %v; want the store's", on, err)
	}
	var got []string
	err := s.ListVersions(context.Background(), "", func(p []backend.Version) error {
		for _, v := range p {
			got = append(got, fmt.Sprintf("%s %s current=%v deleted=%v", v.Key, v.ID, v.Current, v.Deleted))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"0.txt v9 current=true deleted=false",
		"0.txt v8 current=false deleted=false",
		"a.txt v2 current=true deleted=false",
		"a.txt v1 current=false deleted=false",
		"gone.txt v5 current=true deleted=true",
		"gone.txt v4 current=false deleted=false",
	}
	if !slices.Equal(got, want) {
		t.Errorf("versions at %v:\n%s\nwant:\n%s", at, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
