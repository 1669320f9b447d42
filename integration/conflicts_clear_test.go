package integration

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// conflictedKeys returns the keys with a conflict that status lists.
func conflictedKeys(m *mount) []string {
	var keys []string
	for _, c := range m.status().Conflicts {
		keys = append(keys, c.Key)
	}
	slices.Sort(keys)
	return keys
}

// TestConflictsClear (issue 11, point 5): a conflict leaves the list once
// its conflicted copy no longer exists under its name (deleted or renamed
// away here, or deleted by another client), and nimbus conflicts --clear
// removes one by hand, leaving the files alone.
func TestConflictsClear(t *testing.T) {
	e := newEnv(t)
	names := []string{"deleted.txt", "renamed.txt", "remote-deleted.txt", "cleared.txt", "kept.txt"}
	for _, n := range names {
		e.put(n, []byte("original"))
	}
	m := e.mount(mountOpt{args: []string{"--dir-ttl", "1s"}})
	run(t, time.Minute, "ls", "-l", m.dir)
	for _, n := range names {
		f := openForEdit(t, m.path(n), "local edit of "+n)
		e.put(n, []byte("remote edit"))
		closeFile(t, f)
	}
	syncInProcess(t, m, time.Minute)
	if got := conflictedKeys(m); !slices.Equal(got, []string{"cleared.txt", "deleted.txt", "kept.txt", "remote-deleted.txt", "renamed.txt"}) {
		t.Fatalf("conflicts before: %q", got)
	}
	copyOf := map[string]string{}
	for _, c := range m.status().Conflicts {
		copyOf[c.Key] = c.ConflictKey
	}

	if err := os.Remove(m.path(copyOf["deleted.txt"])); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(m.path(copyOf["renamed.txt"]), m.path("renamed, reviewed.txt")); err != nil {
		t.Fatal(err)
	}
	e.delete(copyOf["remote-deleted.txt"])
	out, code := cliRun(t, time.Minute, nil, "conflicts", "--clear", m.path("cleared.txt"))
	if code != 0 || !strings.Contains(out, "cleared the conflict of cleared.txt") {
		t.Fatalf("conflicts --clear: exit %d: %s", code, out)
	}
	if out, code := cliRun(t, time.Minute, nil, "conflicts", "--clear", "--all", m.path("kept.txt")); code != 1 || !strings.Contains(out, "give its mountpoint") {
		t.Errorf("--clear --all with a file, not the mountpoint: exit %d, want 1: %s", code, out)
	}
	if out, code := cliRun(t, time.Minute, nil, "conflicts", "--clear", "--all"); code != 2 {
		t.Errorf("--clear --all without the mountpoint: exit %d, want 2 (usage): %s", code, out)
	}
	if out, code := cliRun(t, time.Minute, nil, "conflicts", "--clear", m.path("renamed, reviewed.txt")); code != 1 || !strings.Contains(out, "no conflict is recorded") {
		t.Errorf("--clear of a file with no conflict: exit %d: %s", code, out)
	}
	time.Sleep(1500 * time.Millisecond) // past --dir-ttl: the next look lists the root again
	run(t, time.Minute, "ls", "-l", m.dir)
	syncInProcess(t, m, time.Minute)
	if got := conflictedKeys(m); !slices.Equal(got, []string{"kept.txt"}) {
		t.Fatalf("conflicts after deleting, renaming and clearing copies: %q, want [kept.txt]", got)
	}
	out = string(run(t, 10*time.Second, nimbusBin, "conflicts", m.dir))
	if !strings.Contains(out, "kept.txt") || strings.Contains(out, "deleted.txt") {
		t.Errorf("nimbus conflicts:\n%s", out)
	}
	// Clearing touched no file: the copies of kept.txt and cleared.txt stay.
	objs := e.objects()
	for _, n := range []string{"kept.txt", "cleared.txt"} {
		if got := conflictCopies(objs, n); len(got) != 1 || got[0] != "local edit of "+n {
			t.Errorf("conflicted copies of %s after clearing: %q", n, got)
		}
	}
	if out, code := cliRun(t, time.Minute, nil, "conflicts", "--clear", "--all", m.dir); code != 0 || !strings.Contains(out, "kept.txt") {
		t.Fatalf("conflicts --clear --all: exit %d: %s", code, out)
	}
	if got := conflictedKeys(m); len(got) != 0 {
		t.Errorf("conflicts after --clear --all: %q", got)
	}
}
