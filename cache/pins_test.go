package cache

import (
	"path/filepath"
	"reflect"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestPinsInheritAndPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meta.db")
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p, err := OpenPins(db)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"photos/2024", "docs", "photos/2024/raw"} {
		if err := p.Add(dir); err != nil {
			t.Fatal(err)
		}
	}
	check := func(path string, want bool, wantBy string) {
		t.Helper()
		got, by, err := p.Pinned(path)
		if err != nil || got != want || by != wantBy {
			t.Errorf("Pinned(%q) = %v by %q, %v; want %v by %q", path, got, by, err, want, wantBy)
		}
	}
	check("photos/2024/raw/x.cr2", true, "photos/2024/raw")
	check("photos/2024/a.jpg", true, "photos/2024")
	check("photos/2023/a.jpg", false, "")
	check("photos/2024x/a.jpg", false, "")
	check("docs", true, "docs")
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if p, err = OpenPins(db); err != nil {
		t.Fatal(err)
	}
	check("photos/2024/raw/x.cr2", true, "photos/2024/raw")
	// Pinning an ancestor makes the pins below it redundant.
	if err := p.Add("photos"); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.List(); !reflect.DeepEqual(got, []string{"docs", "photos"}) {
		t.Errorf("List = %q, want [docs photos]", got)
	}
	// Unpinning below a pinned folder leaves it pinned by inheritance.
	if inherited, err := p.Remove("photos/2024"); err != nil || !inherited {
		t.Errorf("Remove below a pin: inherited %v, %v", inherited, err)
	}
	if inherited, err := p.Remove("photos"); err != nil || inherited {
		t.Errorf("Remove of the pin: inherited %v, %v", inherited, err)
	}
	check("photos/2024/raw/x.cr2", false, "")
	// The whole mount.
	if err := p.Add(""); err != nil {
		t.Fatal(err)
	}
	check("anything/at/all", true, "")
	if got, _ := p.List(); !reflect.DeepEqual(got, []string{""}) {
		t.Errorf("List after pinning the root = %q", got)
	}
}
