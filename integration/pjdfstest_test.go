package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pjdfsMinPass is the share of pjdfstest's assertions (every folder but
// link) that must pass on a mount over MinIO.
const pjdfsMinPass = 0.95

// TestPjdfstest runs pjdfstest, as root, from a folder on a mount over
// MinIO with --allow-other (so default_permissions: the kernel checks the
// stored modes and owners), over every folder of its tests but link (hard
// links are not supported). Each assertion that fails is logged with its
// file and number.
func TestPjdfstest(t *testing.T) {
	bin := thirdPartyPath(t, pjdfstestDir, "pjdfstest")
	requireRoot(t, "pjdfstest acts as other users and makes devices")
	if _, err := exec.LookPath("prove"); err != nil {
		t.Fatalf("prove (perl) is needed: %v", err)
	}
	tests := filepath.Join(filepath.Dir(bin), "tests")
	var folders []string
	ents, err := os.ReadDir(tests)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() && e.Name() != "link" {
			folders = append(folders, filepath.Join(tests, e.Name()))
		}
	}
	if len(folders) < 10 {
		t.Fatalf("only %d test folders in %s", len(folders), tests)
	}

	e := newEnv(t)
	m := e.mount(mountOpt{args: []string{"--allow-other"}})
	work := m.path("pjd")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	started := time.Now()
	cmd := exec.CommandContext(ctx, "prove", append([]string{"-r", "-v", "--merge"}, folders...)...)
	cmd.Dir = work
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run() // prove exits 1 when any assertion fails: counted below
	took := time.Since(started)
	if ctx.Err() != nil {
		t.Fatalf("pjdfstest did not finish within the timeout (%v)\n%s", took, tail(out.String()))
	}
	if err := os.WriteFile(filepath.Join(t.TempDir(), "pjdfstest.tap"), out.Bytes(), 0o644); err != nil {
		t.Log(err)
	}
	res := parseProve(out.String(), tests)
	if res.planned == 0 {
		t.Fatalf("no TAP plan in prove's output (%v)\n%s", runErr, tail(out.String()))
	}
	for _, f := range res.failures {
		t.Logf("failed: %s", f)
	}
	total := res.passed + res.failed
	share := float64(res.passed) / float64(total)
	t.Logf("pjdfstest: %d passed, %d failed (%d missing from plans), %d skipped, of %d planned: %.1f%% in %v",
		res.passed, res.failed, res.missing, res.skipped, res.planned, 100*share, took.Round(time.Second))
	if share < pjdfsMinPass {
		t.Errorf("pjdfstest passed %.1f%% of its assertions, want at least %.0f%%", 100*share, 100*pjdfsMinPass)
	}
}

// proveResult counts the assertions of a prove -v run.
type proveResult struct {
	planned, passed, failed, skipped, missing int
	failures                                  []string // "chmod/00.t #12: tried …"
}

var (
	proveFile = regexp.MustCompile(`^(\S+\.t) \.+ ?`)
	tapPlan   = regexp.MustCompile(`^1\.\.(\d+)`)
	tapLine   = regexp.MustCompile(`^(not ok|ok)\s+(\d+)\s*(.*)$`)
)

// parseProve reads prove -v --merge output: per test file, the plan, then
// one line per assertion. An assertion that a plan promised and the file
// never reported (the script died) counts as failed.
func parseProve(out, testsDir string) proveResult {
	var r proveResult
	var file string
	var plan int
	seen := map[int]bool{}
	closeFile := func() {
		if file == "" {
			return
		}
		var lost []int
		for i := 1; i <= plan; i++ {
			if !seen[i] {
				lost = append(lost, i)
			}
		}
		if len(lost) > 0 {
			r.missing += len(lost)
			r.failed += len(lost)
			r.failures = append(r.failures, fmt.Sprintf("%s: %d assertion(s) never reported, from #%d", file, len(lost), lost[0]))
		}
		file, plan, seen = "", 0, map[int]bool{}
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := proveFile.FindStringSubmatch(line); m != nil {
			closeFile()
			file = strings.TrimPrefix(strings.TrimPrefix(m[1], testsDir), "/")
			if rest := strings.TrimSpace(line[len(m[0]):]); rest != "" {
				line = rest // prove prints the first TAP line after the name
			} else {
				continue
			}
		}
		if file == "" {
			continue
		}
		if m := tapPlan.FindStringSubmatch(line); m != nil {
			plan, _ = strconv.Atoi(m[1])
			r.planned += plan
			continue
		}
		m := tapLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		if seen[n] {
			continue
		}
		seen[n] = true
		switch {
		case m[1] == "ok" && strings.Contains(m[3], "# SKIP"):
			r.skipped++
		case m[1] == "ok":
			r.passed++
		default:
			r.failed++
			r.failures = append(r.failures, fmt.Sprintf("%s #%d %s", file, n, m[3]))
		}
	}
	closeFile()
	sort.Strings(r.failures)
	return r
}
