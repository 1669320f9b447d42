package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cliProcesses returns the pids of the nimbus processes whose command
// line holds arg (a test's own mountpoint, so no one else's process).
func cliProcesses(arg string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
		if argv[0] != nimbusBin {
			continue
		}
		for _, a := range argv[1:] {
			if a == arg {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// cliKillAll kills every nimbus process whose command line names mp,
// again and again until none is left: a process that forks itself (the
// bug TestDaemonFlagSpellings guards against) makes new ones meanwhile.
func cliKillAll(t testing.TB, mp string) {
	deadline := time.Now().Add(time.Minute)
	for {
		pids := cliProcesses(mp)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("nimbus processes of %s still alive after a minute of killing: %v", mp, pids)
			return
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Logf("kill %d: %v", pid, err)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// cliMountpoint returns an empty folder under the test's temp dir whose
// mount (and nimbus processes) are cleaned up at the end of the test.
func cliMountpoint(t testing.TB) string {
	t.Helper()
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if isMounted(mp) {
			if out, err := exec.Command(nimbusBin, "unmount", mp).CombinedOutput(); err != nil {
				t.Logf("nimbus unmount %s: %v: %s", mp, err, out)
			}
		}
		cliKillAll(t, mp)
		if isMounted(mp) {
			if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
				t.Errorf("detach %s: %v", mp, err)
			}
		}
	})
	return mp
}

// cliRun runs the nimbus binary with extra environment, at most timeout,
// and returns its combined output and exit code (-1: killed at the timeout).
func cliRun(t testing.TB, timeout time.Duration, env []string, args ...string) (string, int) {
	t.Helper()
	var out bytes.Buffer
	code := nimbusCommand(t, timeout, env, &out, &out, args...)
	return out.String(), code
}

// nimbusCommand runs the nimbus binary with extra environment, at most
// timeout, writing to stdout and stderr, and returns its exit code (-1:
// killed at the timeout).
func nimbusCommand(t testing.TB, timeout time.Duration, env []string, stdout, stderr io.Writer, args ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, nimbusBin, args...)
	cmd.Env = append(append(os.Environ(), "AWS_EC2_METADATA_DISABLED=true"), env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// A --daemon mount leaves its child holding the output pipe: wait for
	// the command itself, not for the pipe to close.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return -1
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("nimbus %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode()
}

// cliDirRemote returns a local folder holding one file, for dir: mounts.
func cliDirRemote(t testing.TB) string {
	t.Helper()
	remote := t.TempDir()
	if err := os.WriteFile(filepath.Join(remote, "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return remote
}

// TestDaemonFlagSpellings mounts with every spelling of --daemon: each must
// return once mounted and leave exactly one daemon, never a chain of
// children each starting the next.
func TestDaemonFlagSpellings(t *testing.T) {
	requireFUSE(t)
	remote := cliDirRemote(t)
	for _, spelling := range []string{"--daemon", "--daemon=1", "--daemon=t", "--daemon=TRUE", "-daemon=1", "-daemon"} {
		t.Run(strings.TrimLeft(spelling, "-"), func(t *testing.T) {
			mp := cliMountpoint(t)
			cmd := exec.Command(nimbusBin, "mount", spelling, "--cache-dir", t.TempDir(), "dir:"+remote, mp)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			cmd.WaitDelay = time.Second // the daemon keeps the output pipe
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// At most the mount command and its daemon child may exist; stop
			// at once if they multiply, before they fill the machine.
			deadline := time.After(time.Minute)
		wait:
			for {
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("mount %s: %v: %s", spelling, err, out.String())
					}
					break wait
				case <-deadline:
					t.Fatalf("mount %s did not return within a minute", spelling)
				case <-time.After(10 * time.Millisecond):
					if pids := cliProcesses(mp); len(pids) > 2 {
						cliKillAll(t, mp)
						t.Fatalf("mount %s started %d nimbus processes: each child starts another", spelling, len(pids))
					}
				}
			}
			if !isMounted(mp) {
				t.Fatalf("mount %s returned 0 but %s is not mounted", spelling, mp)
			}
			if data, err := os.ReadFile(filepath.Join(mp, "hello.txt")); err != nil || string(data) != "hello\n" {
				t.Fatalf("read through the mount: %q %v", data, err)
			}
			if pids := cliProcesses(mp); len(pids) != 1 {
				t.Fatalf("%d nimbus processes serve %s, want 1: %v", len(pids), mp, pids)
			}
			if out, code := cliRun(t, time.Minute, nil, "unmount", mp); code != 0 {
				t.Fatalf("unmount: exit %d: %s", code, out)
			}
		})
	}
}

// cliDaemonMount mounts the dir: remote on a fresh folder at path (made
// here) in the background, and cleans it up at the end of the test.
func cliDaemonMount(t *testing.T, remote, path string) string {
	t.Helper()
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if isMounted(path) {
			if out, err := exec.Command(nimbusBin, "unmount", path).CombinedOutput(); err != nil {
				t.Logf("nimbus unmount %s: %v: %s", path, err, out)
			}
		}
		cliKillAll(t, path)
		if isMounted(path) {
			if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil {
				t.Errorf("detach %s: %v", path, err)
			}
		}
	})
	if out, code := cliRun(t, time.Minute, nil, "mount", "--daemon", "--cache-dir", t.TempDir(), "dir:"+remote, path); code != 0 {
		t.Fatalf("mount %s: exit %d: %s", path, code, out)
	}
	return path
}

// TestCleanTestMountsTouchesOnlyLeftovers runs the clean-up that
// scripts/test runs first with a user's own nimbus mount next to the
// tests' folders: only the mount a finished test run left under its own
// folder goes; the user's mount and a running test run's mount stay.
func TestCleanTestMountsTouchesOnlyLeftovers(t *testing.T) {
	requireFUSE(t)
	src := cliDirRemote(t)
	base := t.TempDir()
	prefix := filepath.Join(base, "nimbus-tests.")

	// A finished run: its .pid names a process that has exited.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	finished := prefix + "old123"
	if err := os.MkdirAll(finished, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(finished, ".pid"), []byte(strconv.Itoa(dead.Process.Pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	running := prefix + "live456"
	if err := os.MkdirAll(running, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(running, ".pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	leftover := cliDaemonMount(t, src, filepath.Join(finished, "TestSomething", "001", "mnt"))
	live := cliDaemonMount(t, src, filepath.Join(running, "TestOther", "001", "mnt"))
	users := cliDaemonMount(t, src, filepath.Join(base, "home", "drive"))
	lookalike := cliDaemonMount(t, src, filepath.Join(base, "my-nimbus-tests.backup", "mnt"))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "../scripts/clean-test-mounts", prefix).CombinedOutput()
	if err != nil {
		t.Fatalf("clean-test-mounts: %v: %s", err, out)
	}
	for _, mp := range []string{users, lookalike, live} {
		if !isMounted(mp) {
			t.Errorf("%s was unmounted by the tests' clean-up", mp)
			continue
		}
		if data, err := os.ReadFile(filepath.Join(mp, "hello.txt")); err != nil || string(data) != "hello\n" {
			t.Errorf("%s no longer serves its files: %q %v", mp, data, err)
		}
	}
	if isMounted(leftover) {
		t.Errorf("the finished run's mount %s is still there: %s", leftover, out)
	}
	if _, err := os.Stat(finished); !os.IsNotExist(err) {
		t.Errorf("the finished run's folder is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(running, ".pid")); err != nil {
		t.Errorf("the running run's folder was touched: %v", err)
	}
}

// TestUnmountSaysWhatIsPending unmounts with uploads pending (the store is
// down) by nimbus unmount, SIGINT and SIGTERM: each says how many changes
// and bytes are not uploaded, and that they upload at the next mount of
// the same cache folder.
func TestUnmountSaysWhatIsPending(t *testing.T) {
	for _, how := range []string{"unmount", "SIGINT", "SIGTERM"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			cacheDir := t.TempDir()
			m := e.mount(mountOpt{cacheDir: cacheDir})
			run(t, time.Minute, "ls", m.dir)
			e.minio.Stop()
			if err := os.WriteFile(m.path("a.txt"), bytes.Repeat([]byte("a"), 3000), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(m.path("b.txt"), bytes.Repeat([]byte("b"), 5000), 0o644); err != nil {
				t.Fatal(err)
			}
			st := m.status()
			if st.Uploads.Pending < 2 || st.Uploads.PendingBytes < 8000 {
				t.Fatalf("pending after two offline writes: %+v", st.Uploads)
			}
			// The size is rendered for people (cmd/nimbus's own tests check
			// how); here, that it is there.
			want := regexp.MustCompile(regexp.QuoteMeta(fmt.Sprintf("%d changes (", st.Uploads.Pending)) +
				`[0-9.]+ (B|[KMGTP]iB)` + regexp.QuoteMeta(") not uploaded yet: they upload at the next mount of the cache folder "+cacheDir))
			var said string
			switch how {
			case "unmount":
				out, code := cliRun(t, time.Minute, nil, "unmount", m.dir)
				if code != 0 {
					t.Fatalf("nimbus unmount: exit %d: %s", code, out)
				}
				said = out
			default:
				sig := map[string]syscall.Signal{"SIGINT": syscall.SIGINT, "SIGTERM": syscall.SIGTERM}[how]
				if err := m.cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-m.exited:
			case <-time.After(30 * time.Second):
				t.Fatalf("nimbus still running 30s after %s", how)
			}
			if how != "unmount" {
				said = m.stderr.String()
			}
			if !want.MatchString(said) {
				t.Errorf("after %s nimbus said:\n%s\nwant it to match %q", how, said, want)
			}
			if code := m.cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("nimbus mount exited %d after %s", code, how)
			}
		})
	}
}

// TestUnmountWait checks nimbus unmount --wait: with the store down it
// gives up after DUR and leaves the mount; once the store is back, it
// uploads everything, then unmounts.
func TestUnmountWait(t *testing.T) {
	e := newEnv(t)
	m := e.mount(mountOpt{})
	run(t, time.Minute, "ls", m.dir)
	e.minio.Stop()
	content := []byte("written while the store was down\n")
	if err := os.WriteFile(m.path("later.txt"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := cliRun(t, time.Minute, nil, "unmount", "--wait=2s", m.dir)
	if code != 1 || !strings.Contains(out, "stays mounted: not everything is uploaded") {
		t.Errorf("unmount --wait=2s with the store down: exit %d: %s; want 1 and why it stays mounted", code, out)
	}
	if !isMounted(m.dir) {
		t.Fatalf("unmount --wait=2s unmounted although the upload could not be done")
	}
	e.minio.Restart()
	out, code = cliRun(t, 3*time.Minute, nil, "unmount", "--wait", m.dir)
	if code != 0 || !strings.Contains(out, "every change is uploaded") {
		t.Fatalf("unmount --wait with the store back: exit %d: %s", code, out)
	}
	if isMounted(m.dir) {
		t.Fatalf("still mounted after unmount --wait")
	}
	if got := e.objects()["later.txt"]; !bytes.Equal(got, content) {
		t.Errorf("the bucket holds %q for later.txt, want %q", got, content)
	}
}

// TestDaemonStartsOffline mounts --daemon from a known tree with the store
// down, then with a mistyped endpoint: each mounts, and says in one line
// that it is offline, why, and that changes are queued.
func TestDaemonStartsOffline(t *testing.T) {
	e := newEnv(t)
	e.put("known.txt", []byte("known"))
	cacheDir := t.TempDir()
	m := e.mount(mountOpt{cacheDir: cacheDir})
	run(t, time.Minute, "ls", m.dir)
	m.unmount()
	e.minio.Stop()

	for _, c := range []struct{ name, endpoint, why string }{
		{"store down", e.minio.Endpoint, "cannot reach " + e.minio.Endpoint},
		{"mistyped endpoint", "http://127.0.0.1:1", "cannot reach http://127.0.0.1:1"},
	} {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			mp := cliMountpoint(t)
			out, code := cliRun(t, time.Minute, e.minio.Env(), "mount", "--daemon", "--endpoint", c.endpoint, "--cache-dir", cacheDir, "s3://"+e.bucket, mp)
			if code != 0 || !isMounted(mp) {
				daemonLog, _ := os.ReadFile(filepath.Join(cacheDir, "nimbus.log")) // shown as it is; absent reads as empty
				t.Fatalf("mount --daemon offline: exit %d, mounted %v: %s\ndaemon log:\n%s", code, isMounted(mp), out, lastLines(daemonLog, 40))
			}
			t.Logf("mount --daemon said: %s", out)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], "offline") || !strings.Contains(lines[0], c.why) || !strings.Contains(lines[0], "changes are queued") {
				t.Errorf("mount --daemon offline said %q; want one line: offline, %q, changes are queued", out, c.why)
			}
			if _, err := os.Stat(filepath.Join(mp, "known.txt")); err != nil {
				t.Errorf("the known tree is not shown offline: %v", err)
			}
			if err := os.WriteFile(filepath.Join(mp, "offline-"+strconv.Itoa(len(c.name))+".txt"), []byte("queued"), 0o644); err != nil {
				t.Errorf("write offline: %v", err)
			}
			if out, code := cliRun(t, time.Minute, nil, "unmount", mp); code != 0 {
				t.Fatalf("unmount: exit %d: %s", code, out)
			}
		})
	}
}

// cliNoCredentials is an environment with no AWS credentials anywhere:
// none in the environment, no config or credentials file, no IMDS.
func cliNoCredentials(t *testing.T) []string {
	home := t.TempDir()
	env := []string{"HOME=" + home, "AWS_CONFIG_FILE=" + filepath.Join(home, "no-config"),
		"AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(home, "no-credentials"), "AWS_EC2_METADATA_DISABLED=true"}
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "AWS_") && name != "AWS_EC2_METADATA_DISABLED" {
			env = append(env, name+"=") // cliRun appends: the last one wins
		}
	}
	return env
}

// checkShortLine checks that out is one line under 200 characters that
// holds each of want.
func checkShortLine(t *testing.T, what, out string, want ...string) {
	t.Helper()
	t.Logf("%s: %s", what, out)
	line := strings.TrimSuffix(out, "\n")
	if strings.Contains(line, "\n") || len(line) >= 200 {
		t.Errorf("%s: %d lines, %d characters; want one line under 200:\n%s", what, strings.Count(out, "\n"), len(line), out)
	}
	for _, w := range want {
		if !strings.Contains(line, w) {
			t.Errorf("%s: %q does not say %q", what, line, w)
		}
	}
}

// TestErrorsAreOneShortLine checks the errors users meet most: no
// credentials, and status and sync while the store is down.
func TestErrorsAreOneShortLine(t *testing.T) {
	e := newEnv(t)
	t.Run("no_credentials", func(t *testing.T) {
		mp := cliMountpoint(t)
		out, code := cliRun(t, time.Minute, cliNoCredentials(t), "mount", "--endpoint", e.minio.Endpoint, "--cache-dir", t.TempDir(), "s3://"+e.bucket, mp)
		if code != 1 {
			t.Errorf("mount without credentials: exit %d, want 1", code)
		}
		checkShortLine(t, "mount without credentials", out, "no AWS credentials found", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")
		if strings.Contains(out, "IMDS") {
			t.Errorf("mount without credentials talks of IMDS: %s", out)
		}
	})
	t.Run("offline", func(t *testing.T) {
		e.put("uncached.txt", []byte("never read"))
		m := e.mount(mountOpt{})
		run(t, time.Minute, "ls", m.dir)
		e.minio.Stop()
		defer e.minio.Restart()
		if err := os.WriteFile(m.path("new.txt"), []byte("pending"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := os.ReadFile(m.path("uncached.txt")); err == nil {
			t.Fatal("read an uncached file with the store down")
		}
		deadline := time.Now().Add(time.Minute)
		for m.status().Online {
			if time.Now().After(deadline) {
				t.Fatal("still online a minute after the store went down")
			}
			time.Sleep(100 * time.Millisecond)
		}
		out, code := cliRun(t, time.Minute, nil, "status", m.dir)
		if code != 0 {
			t.Errorf("status offline: exit %d: %s", code, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "state:") {
				checkShortLine(t, "status offline", line, "OFFLINE", "connection refused", "changes are queued")
			} else if len(line) >= 200 {
				t.Errorf("status offline: a line of %d characters: %s", len(line), line)
			}
		}
		out, code = cliRun(t, time.Minute, nil, "sync", "--timeout", "3s", m.dir)
		if code != 1 {
			t.Errorf("sync offline: exit %d, want 1", code)
		}
		checkShortLine(t, "sync offline", out, "not everything is uploaded", "1 change(s) (7 B)", "offline", "connection refused", "upload once it is back")
	})
}
