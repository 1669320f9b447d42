package vfs

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/wait"
)

// TestWalkListsAhead reads the folders of p/ one after another, as find
// does: reading one folder lists nothing more; from the second sibling on,
// the next walkAheadDirs siblings are listed before the walker reads them,
// and reading one of those does not list it again.
func TestWalkListsAhead(t *testing.T) {
	objects := make(map[string][]byte)
	for i := range 10 {
		objects[fmt.Sprintf("p/d%02d/f", i)] = []byte("x")
	}
	var mu sync.Mutex
	lists := make(map[string]int) // LISTs started, by prefix
	listed := func(prefix string) int {
		mu.Lock()
		defer mu.Unlock()
		return lists[prefix]
	}
	m := newTier(t, tierOpt{remote: seededRemote(t, objects), beforeListPage: func(prefix string, page int) {
		if page == 0 {
			mu.Lock()
			lists[prefix]++
			mu.Unlock()
		}
	}})
	if got := m.names("p"); len(got) != 10 {
		t.Fatalf("p holds %q, want 10 folders", got)
	}
	m.names("p/d00")
	time.Sleep(300 * time.Millisecond) // what a read-ahead would take here
	for i := 1; i < 10; i++ {
		if n := listed(fmt.Sprintf("p/d%02d/", i)); n != 0 {
			t.Fatalf("reading p/d00 alone listed p/d%02d/ %d times, want none", i, n)
		}
	}

	m.names("p/d01") // a walk: p/d02 to p/d05 are listed ahead
	ahead := []string{"p/d02/", "p/d03/", "p/d04/", "p/d05/"}
	wait.Until(t, 10*time.Second, "p/d02 to p/d05 listed ahead", func() bool {
		return !slices.ContainsFunc(ahead, func(p string) bool { return listed(p) == 0 })
	})
	if n := listed("p/d06/"); n != 0 {
		t.Fatalf("p/d06/ listed %d times after reading p/d01, want none (%d ahead)", n, walkAheadDirs)
	}
	if got := m.names("p/d02"); !slices.Equal(got, []string{"f"}) {
		t.Fatalf("p/d02 holds %q, want [f]", got)
	}
	wait.Until(t, 10*time.Second, "p/d06 listed ahead", func() bool { return listed("p/d06/") == 1 })
	if n := listed("p/d02/"); n != 1 {
		t.Fatalf("p/d02/ listed %d times, want once (ahead of the walker)", n)
	}
}
