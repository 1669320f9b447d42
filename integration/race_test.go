package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strings"
	"testing"
	"time"
)

// TestTwoMountsRace has two mounts of one bucket, each with its own cache
// folder, race on the same names: both create a new file of the same name
// at once, and both append to one file at once, round after round. Every
// line either side wrote must end in the bucket, in the file or in a
// conflicted copy; no write may fail; and no conflicted copy may hold only
// what the file itself holds (an empty file racing an empty file is no
// conflict). The mounted binary is built with -race.
func TestTwoMountsRace(t *testing.T) {
	withRaceBinary(t)
	e := newEnv(t)
	args := []string{"--poll", "1s", "--dir-ttl", "1s"}
	m1 := e.mount(mountOpt{args: args})
	m2 := e.mount(mountOpt{args: args})
	rounds := 200
	const syncEvery = 20
	syncBoth := func() {
		m1.sync(2 * time.Minute)
		m2.sync(2 * time.Minute)
	}

	// runRounds runs script (a bash fragment using $i, $M1 and $M2) for
	// rounds i = from..to-1 in one shell; a failed write ends it with the
	// shell's error output.
	runRounds := func(script string, from, to int) {
		t.Helper()
		body := fmt.Sprintf(`set -u
for i in $(seq %d %d); do
%s
done`, from, to-1, script)
		cmd := exec.Command("bash", "-c", body)
		cmd.Env = append(os.Environ(), "M1="+m1.dir, "M2="+m2.dir, "T="+t.TempDir())
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil || out.Len() > 0 {
				// Go on: the losses are counted at the end.
				t.Errorf("rounds %d-%d: %v\n%s", from, to-1, err, out.String())
			}
		case <-time.After(3 * time.Minute):
			_ = cmd.Process.Kill() // reported just below
			t.Fatalf("rounds %d-%d did not finish in 3 minutes\n%s", from, to-1, out.String())
		}
	}
	// Each side's write runs in the background; a failure of either is
	// printed, which fails the test. Both sides have created (opened) the
	// file before either writes its line: a side that opened only after
	// the other's line was uploaded would see that version, and
	// replacing a file one sees is an overwrite, not a race.
	const creates = `side() { # side M TAG OTHER
  { exec 3>"$1/race-$i.txt" && touch "$T/$2-$i" &&
    for _ in $(seq 2000); do [ -e "$T/$3-$i" ] && break; sleep 0.005; done &&
    echo "$2-$i" >&3 && exec 3>&-; } || echo "$2 create $i failed"
}
side "$M1" A B & a=$!
side "$M2" B A & b=$!
wait $a $b`
	const appends = `echo "AA-$i" >> "$M1/log.txt" & a=$!
echo "BB-$i" >> "$M2/log.txt" & b=$!
wait $a || echo "m1 append $i failed: $?"
wait $b || echo "m2 append $i failed: $?"`

	for from := 0; from < rounds; from += syncEvery {
		runRounds(creates, from, from+syncEvery)
		syncBoth()
	}

	if err := os.WriteFile(m1.path("log.txt"), []byte("start\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	syncBoth()
	for from := 0; from < rounds; from += syncEvery {
		runRounds(appends, from, from+syncEvery)
		syncBoth()
	}
	syncBoth()

	objs := e.objects()
	var lost []string
	var noise []string
	lines := func(b []byte) map[string]bool {
		out := map[string]bool{}
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				out[l] = true
			}
		}
		return out
	}
	// check reports the lines of want missing from key and its conflicted
	// copies, and the copies that hold nothing key does not.
	check := func(key string, want []string) {
		held := lines(objs[key])
		inCopies := map[string]bool{}
		for _, c := range conflictCopies(objs, key) {
			cl := lines([]byte(c))
			extra := false
			for l := range cl {
				inCopies[l] = true
				if !held[l] {
					extra = true
				}
			}
			if !extra {
				noise = append(noise, fmt.Sprintf("%s: conflicted copy %q holds nothing the file (%q) does not", key, c, objs[key]))
			}
		}
		for _, l := range want {
			if !held[l] && !inCopies[l] {
				lost = append(lost, fmt.Sprintf("%s: line %q (file holds %q)", key, l, objs[key]))
			}
		}
	}
	var appended []string
	for i := range rounds {
		check(fmt.Sprintf("race-%d.txt", i), []string{fmt.Sprintf("A-%d", i), fmt.Sprintf("B-%d", i)})
		appended = append(appended, fmt.Sprintf("AA-%d", i), fmt.Sprintf("BB-%d", i))
	}
	check("log.txt", append(appended, "start"))
	copies := 0
	for k := range objs {
		if strings.Contains(path.Base(k), " (conflicted copy ") {
			copies++
		}
	}
	t.Logf("%d rounds of creates and of appends: %d lines lost, %d conflicted copies, %d of them with nothing new", rounds, len(lost), copies, len(noise))
	for _, l := range lost {
		t.Errorf("lost: %s", l)
	}
	for _, n := range noise {
		t.Errorf("needless copy: %s", n)
	}
	for _, m := range []*mount{m1, m2} {
		if strings.Contains(m.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in the mount at %s", m.dir)
		}
	}
}

// TestTwoMountsRaceAfterEmptyCreates is the race of empty files: both
// mounts create the same empty files at once and upload them (each create
// meets the other's identical empty object), then both write their own
// line into every file at once. An empty file racing an empty file is no
// conflict; every line either side wrote must end in the bucket.
func TestTwoMountsRaceAfterEmptyCreates(t *testing.T) {
	withRaceBinary(t)
	e := newEnv(t)
	fast := []string{"--poll", "1s", "--dir-ttl", "1s"}
	m1 := e.mount(mountOpt{args: fast})
	m2 := e.mount(mountOpt{args: fast})
	const rounds = 200
	both := func(script func(m *mount, side string) string) {
		t.Helper()
		out, err := exec.Command("bash", "-c", script(m1, "A")+" & "+script(m2, "B")+" & wait").CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Fatalf("%v %s", err, out)
		}
	}
	both(func(m *mount, _ string) string {
		return fmt.Sprintf("for i in $(seq 0 %d); do : > %s/empty-$i.txt; done", rounds-1, m.dir)
	})
	m1.sync(3 * time.Minute)
	m2.sync(3 * time.Minute)
	copiesAfterCreates := 0
	for key := range e.objects() {
		if strings.Contains(key, "conflicted copy") {
			copiesAfterCreates++
		}
	}
	if copiesAfterCreates > 0 {
		t.Errorf("%d conflicted copies after both sides created the same empty files", copiesAfterCreates)
	}
	both(func(m *mount, side string) string {
		return fmt.Sprintf("for i in $(seq 0 %d); do echo %s-$i >> %s/empty-$i.txt; done", rounds-1, side, m.dir)
	})
	m1.sync(3 * time.Minute)
	m2.sync(3 * time.Minute)
	m1.sync(3 * time.Minute)
	lines := map[string]bool{}
	for _, body := range e.objects() {
		for _, l := range strings.Split(string(body), "\n") {
			lines[l] = true
		}
	}
	lost := 0
	for i := range rounds {
		for _, side := range []string{"A", "B"} {
			if w := fmt.Sprintf("%s-%d", side, i); !lines[w] {
				lost++
				if lost <= 20 {
					t.Errorf("line %q is in no object of the bucket", w)
				}
			}
		}
	}
	t.Logf("%d files: %d of %d lines lost", rounds, lost, 2*rounds)
	m1.unmount()
	m2.unmount()
	for _, m := range []*mount{m1, m2} {
		if log := m.stderr.String(); strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("the race detector fired in the mount of %s:\n%s", m.dir, log)
		}
	}
}
