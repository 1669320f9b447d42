package integration

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestPollShowsRemoteChanges checks promise 8's background part: with a
// long --dir-ttl, a shell whose working directory is inside the mount sees
// a file added, changed and deleted by another client within a few poll
// intervals, without a remount. A mount with --poll 0 still shows the old
// listing, so it is the poller that made the difference.
func TestPollShowsRemoteChanges(t *testing.T) {
	e := newEnv(t)
	e.put("watched/a.txt", []byte("v1"))
	e.put("watched/c.txt", []byte("to be deleted"))
	polled := e.mount(mountOpt{args: []string{"--dir-ttl", "1h", "--poll", "1s"}})
	still := e.mount(mountOpt{args: []string{"--dir-ttl", "1h", "--poll", "0"}})
	for _, m := range []*mount{polled, still} {
		if got := run(t, 10*time.Second, "ls", m.path("watched")); string(got) != "a.txt\nc.txt\n" {
			t.Fatalf("initial listing %q", got)
		}
	}

	e.put("watched/a.txt", []byte("v2, longer"))
	e.put("watched/b.txt", []byte("new"))
	e.delete("watched/c.txt")

	// A process sitting in the folder looks until it sees all three changes.
	script := `for i in $(seq 100); do
		if [ "$(ls | tr '\n' ' ')" = "a.txt b.txt " ] && [ "$(stat -c %s a.txt)" = 10 ] && [ "$(cat a.txt)" = "v2, longer" ]; then echo seen; exit 0; fi
		sleep 0.1
	done; ls; stat -c %s a.txt; exit 1`
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = polled.path("watched")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the polled mount did not show the remote changes within 10s: %v\n%s", err, out)
	}
	t.Logf("remote changes seen after %s", time.Since(start).Round(100*time.Millisecond))

	ents, err := os.ReadDir(still.path("watched"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, en := range ents {
		names = append(names, en.Name())
	}
	if strings.Join(names, " ") != "a.txt c.txt" {
		t.Errorf("the mount without polling changed too (%q): the test does not isolate the poller", names)
	}
}
