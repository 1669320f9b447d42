package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestOfflineRemount checks promise 6 for reads: with the store down, a
// remount on the same cache folder comes up from the persisted tree, lists
// it, serves cached blocks, and fails an uncached read with EIO quickly
// instead of hanging. When the store is back, reads work again by themselves.
func TestOfflineRemount(t *testing.T) {
	e := newEnv(t)
	cached := pattern{seed: 11, size: 3<<20 + 17}
	uncached := pattern{seed: 12, size: 2 << 20}
	e.put("top.txt", []byte("top"))
	e.put("docs/a.txt", []byte("alpha"))
	e.putStream("docs/cached.bin", cached.reader(), cached.size)
	e.putStream("docs/deep/uncached.bin", uncached.reader(), uncached.size)

	cacheDir := t.TempDir()
	m := e.mount(mountOpt{cacheDir: cacheDir})
	// A folder's link count includes its subfolders once it has been
	// listed; the first ls -lR shows docs before listing it, so the
	// listing to compare is the second one.
	run(t, time.Minute, "ls", "-lR", m.dir)
	onlineListing := bytes.ReplaceAll(run(t, time.Minute, "ls", "-lR", m.dir), []byte(m.dir), []byte("MNT"))
	if got := fileSHA(t, m.path("docs/cached.bin")); got != cached.sha256() {
		t.Fatal("online read of cached.bin differs")
	}
	if data, err := os.ReadFile(m.path("docs/a.txt")); err != nil || string(data) != "alpha" {
		t.Fatalf("docs/a.txt = %q %v", data, err)
	}
	m.unmount()

	e.minio.Stop()
	m = e.mount(mountOpt{cacheDir: cacheDir})
	if st := m.status(); st.Online {
		t.Errorf("status says online while MinIO is stopped")
	}
	offlineListing := bytes.ReplaceAll(run(t, time.Minute, "ls", "-lR", m.dir), []byte(m.dir), []byte("MNT"))
	if !bytes.Equal(offlineListing, onlineListing) {
		t.Errorf("offline ls -lR differs from the online one:\n--- online\n%s\n--- offline\n%s", onlineListing, offlineListing)
	}
	if got := fileSHA(t, m.path("docs/cached.bin")); got != cached.sha256() {
		t.Error("offline read of cached.bin differs")
	}
	if data, err := os.ReadFile(m.path("docs/a.txt")); err != nil || string(data) != "alpha" {
		t.Errorf("offline docs/a.txt = %q %v", data, err)
	}
	start := time.Now()
	_, err := os.ReadFile(m.path("docs/deep/uncached.bin"))
	took := time.Since(start)
	if !errors.Is(err, syscall.EIO) {
		t.Errorf("offline read of uncached content: err %v, want EIO", err)
	}
	if took > 5*time.Second {
		t.Errorf("offline read of uncached content took %s, want < 5s", took)
	}
	t.Logf("offline uncached read failed in %s: %v", took, err)

	// The store comes back: the mount notices by itself.
	e.minio.Restart()
	deadline := time.Now().Add(45 * time.Second)
	for {
		data, err := os.ReadFile(m.path("docs/deep/uncached.bin"))
		if err == nil {
			if !bytes.Equal(data, uncached.bytes(0, uncached.size)) {
				t.Fatal("read after reconnect differs")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing 45s after MinIO came back: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if st := m.status(); !st.Online {
		t.Errorf("status still offline after reconnect")
	}
}

// TestRemoteChangesAppear checks promise 8 for reads: after --dir-ttl, stat
// shows a remote overwrite, a new open reads the new bytes, and a handle
// opened on the old version never returns bytes of the new one.
func TestRemoteChangesAppear(t *testing.T) {
	e := newEnv(t)
	v1 := pattern{seed: 21, size: 3 << 20}
	v2 := pattern{seed: 22, size: 5<<20 + 3}
	e.putStream("f.bin", v1.reader(), v1.size)
	m := e.mount(mountOpt{args: []string{"--dir-ttl", "1s"}})

	old, err := os.Open(m.path("f.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	head := make([]byte, 1<<20)
	if _, err := old.ReadAt(head, 0); err != nil || !bytes.Equal(head, v1.bytes(0, 1<<20)) {
		t.Fatalf("first MiB of v1: %v", err)
	}

	e.putStream("f.bin", v2.reader(), v2.size)
	time.Sleep(2500 * time.Millisecond) // past --dir-ttl and the kernel's 1s attribute cache

	st, err := os.Stat(m.path("f.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != v2.size {
		t.Errorf("stat after --dir-ttl: size %d, want the new %d", st.Size(), v2.size)
	}
	if got := fileSHA(t, m.path("f.bin")); got != v2.sha256() {
		t.Errorf("a new open after the overwrite does not read the new bytes")
	}

	// The handle opened on v1 may read v1, or v2 (the kernel's page cache
	// is per file, as with a local file rewritten in place), or fail; it
	// never reads bytes of neither version.
	buf := make([]byte, 1<<20)
	n, err := old.ReadAt(buf, 2<<20)
	switch {
	case err == nil || n > 0:
		if !bytes.Equal(buf[:n], v1.bytes(2<<20, int64(n))) && !bytes.Equal(buf[:n], v2.bytes(2<<20, int64(n))) {
			t.Errorf("an old handle returned bytes of neither version")
		}
	case errors.Is(err, syscall.ESTALE) || errors.Is(err, syscall.EIO):
		t.Logf("old handle after overwrite: %v (expected: its version is gone)", err)
	default:
		t.Errorf("old handle after overwrite: unexpected error %v", err)
	}

	// A remote delete makes the file disappear after --dir-ttl.
	e.delete("f.bin")
	time.Sleep(2500 * time.Millisecond)
	if _, err := os.Stat(m.path("f.bin")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after remote delete: %v, want not exist", err)
	}
}

// TestBadInput checks that every mistake gets one clear line and a non-zero
// exit, never a hang, a stack trace or a mount.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	empty := func() string {
		d := filepath.Join(t.TempDir(), "mnt")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	nonEmpty := empty()
	if err := os.WriteFile(filepath.Join(nonEmpty, "keep.txt"), []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	wrongCreds := []string{"AWS_ACCESS_KEY_ID=" + e.minio.AccessKey, "AWS_SECRET_ACCESS_KEY=not-the-secret", "AWS_REGION=us-east-1"}
	cases := []struct {
		name     string
		env      []string
		args     []string
		code     int
		contains string
	}{
		{"unknown bucket", e.minio.Env(), []string{"mount", "--endpoint", e.minio.Endpoint, "s3://no-such-bucket", empty()}, 1, `bucket "no-such-bucket" not found`},
		{"unreachable endpoint", e.minio.Env(), []string{"mount", "--endpoint", "http://127.0.0.1:1", "s3://" + e.bucket, empty()}, 1, "cannot reach http://127.0.0.1:1"},
		{"wrong credentials", wrongCreds, []string{"mount", "--endpoint", e.minio.Endpoint, "s3://" + e.bucket, empty()}, 1, "check your credentials"},
		{"missing mountpoint", e.minio.Env(), []string{"mount", "--endpoint", e.minio.Endpoint, "s3://" + e.bucket, filepath.Join(t.TempDir(), "nope")}, 1, "does not exist"},
		{"non-empty mountpoint", e.minio.Env(), []string{"mount", "--endpoint", e.minio.Endpoint, "s3://" + e.bucket, nonEmpty}, 1, "is not empty"},
		{"unparsable remote", nil, []string{"mount", "ftp://x/y", empty()}, 2, "expected s3://BUCKET[/PREFIX] or dir:/PATH"},
		{"bad bucket name", nil, []string{"mount", "s3://Bad_Bucket", empty()}, 2, "not a valid bucket name"},
		{"bad size", nil, []string{"mount", "--cache-size", "12XB", "dir:/tmp", empty()}, 2, `unknown unit "XB"`},
		{"unknown flag", nil, []string{"mount", "--nope", "dir:/tmp", empty()}, 2, "unknown flag: --nope"},
		{"missing dir remote", nil, []string{"mount", "dir:/definitely/not/here", empty()}, 1, "does not exist"},
		{"unknown command", nil, []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"status outside a mount", nil, []string{"status", t.TempDir()}, 1, "is not inside a nimbus mount"},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			cmd := exec.Command(nimbusBin, c.args...)
			cmd.Env = append(append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir()), c.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			start := time.Now()
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				if err := cmd.Process.Kill(); err != nil {
					t.Logf("kill: %v", err)
				}
				<-done
				t.Fatalf("hung for 30s; stderr: %s", stderr.String())
			}
			msg := stderr.String()
			if code := cmd.ProcessState.ExitCode(); code != c.code {
				t.Errorf("exit status %d, want %d; stderr: %s", code, c.code, msg)
			}
			first := strings.SplitN(msg, "\n", 2)[0]
			if !strings.Contains(first, c.contains) {
				t.Errorf("first line %q does not say %q", first, c.contains)
			}
			if strings.Contains(msg, "goroutine ") || strings.Contains(msg, "panic") {
				t.Errorf("stack trace in the output:\n%s", msg)
			}
			t.Logf("%s (%s): %s", c.name, time.Since(start).Round(time.Millisecond), first)
			if mp := c.args[len(c.args)-1]; isMounted(mp) {
				t.Errorf("%s was mounted despite the error", mp)
				if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
					t.Log(err)
				}
			}
		})
	}
	if data, err := os.ReadFile(filepath.Join(nonEmpty, "keep.txt")); err != nil || string(data) != "mine" {
		t.Errorf("the non-empty mountpoint's file was touched: %q %v", data, err)
	}
}

// TestDaemonDirRemote mounts a local folder (the zero-setup dir: remote) in
// the background, reads through it, and unmounts with nimbus unmount, after
// which the daemon is gone.
func TestDaemonDirRemote(t *testing.T) {
	requireFUSE(t)
	remote := t.TempDir()
	if err := os.MkdirAll(filepath.Join(remote, "sub", "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	content := pattern{seed: 31, size: 3<<20 + 5}
	if err := os.WriteFile(filepath.Join(remote, "sub", "data.bin"), content.bytes(0, content.size), 0o644); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	cacheDir := t.TempDir()
	out, err := exec.Command(nimbusBin, "mount", "--daemon", "--cache-dir", cacheDir, "dir:"+remote, mp).CombinedOutput()
	if err != nil {
		t.Fatalf("mount --daemon: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if isMounted(mp) {
			if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
				t.Log(err)
			}
		}
	})
	if !isMounted(mp) {
		t.Fatalf("mount --daemon returned before the mount was up")
	}
	var st statusReport
	m := &mount{t: t, dir: mp}
	st = m.status()
	pidOut := run(t, 10*time.Second, nimbusBin, "status", mp)
	if !strings.Contains(string(pidOut), "dir:"+remote) {
		t.Errorf("status does not name the remote:\n%s", pidOut)
	}
	pid := st.PID
	if pid <= 0 {
		t.Fatalf("status reports no daemon pid: %+v", st)
	}
	// Only the mount's owner can reach its control socket.
	sock := xattr(t, mp, "user.nimbus.control")
	if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket %s: %v %v, want a socket with mode 0600", sock, fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(sock)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("control socket folder: %v %v, want 0700", fi.Mode(), err)
	}
	// Any path inside the mount finds it; a PATH gives per-entry states.
	entries := run(t, 10*time.Second, nimbusBin, "status", "--json", filepath.Join(mp, "sub"))
	if !strings.Contains(string(entries), `"state": "online"`) || !strings.Contains(string(entries), "data.bin") {
		t.Errorf("nimbus status PATH does not list the entries with their state:\n%s", entries)
	}
	t.Cleanup(func() {
		if syscall.Kill(pid, 0) == nil {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Log(err)
			}
		}
	})
	if got := fileSHA(t, filepath.Join(mp, "sub", "data.bin")); got != content.sha256() {
		t.Errorf("read through the dir: remote differs")
	}
	if ents, err := os.ReadDir(filepath.Join(mp, "sub", "empty")); err != nil || len(ents) != 0 {
		t.Errorf("empty folder: %v %v", ents, err)
	}
	if after := m.status(); after.Requests["GetObject"] == st.Requests["GetObject"] {
		t.Errorf("reading data.bin made no GET on the dir backend")
	}
	if out, err := exec.Command(nimbusBin, "unmount", mp).CombinedOutput(); err != nil {
		t.Fatalf("unmount: %v: %s", err, out)
	}
	if isMounted(mp) {
		t.Fatal("still mounted after nimbus unmount")
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("daemon %d still running 10s after unmount", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
