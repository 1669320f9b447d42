package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests of nimbus as a system mount: mount(8) and fstab, systemd's
// readiness protocol, metrics, the AWS config, logs.

// fuseType is the mount(8) type that runs this test's nimbus binary.
// mount(8) runs its helpers with no PATH (the shell then looks in
// /usr/local/bin and the like), so the test cannot put its binary first on
// PATH; "fuse.nimbus" would run an installed nimbus. mount.fuse runs the
// type's name after "fuse." as the command, so an absolute path goes the
// same way through mount(8) and mount.fuse, and installs nothing. A dot
// in that path breaks it (mount(8) takes what follows a dot for a
// subtype, and never runs the helper), and scripts/test's temporary
// folders have one: the binary is reached through a symlink in a folder
// of /tmp whose path has none.
func fuseType(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "nimbus-mount-helper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
	})
	link := filepath.Join(dir, "nimbus")
	if err := os.Symlink(nimbusBin, link); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(link, ".") {
		t.Fatalf("the helper's path %s has a dot: mount(8) would not run it", link)
	}
	return "fuse." + link
}

// runMount8 runs mount(8) with args and extra environment, and returns its
// combined output and exit code.
func runMount8(t *testing.T, env []string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mount", args...)
	cmd.Env = append(append(os.Environ(), "AWS_EC2_METADATA_DISABLED=true"), env...)
	// The daemon nimbus leaves holds the output pipe: do not wait for it.
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("mount %s: still running after a minute: %s", strings.Join(args, " "), out)
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("mount %s: %v", strings.Join(args, " "), err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// statusOf is nimbus status --json of a mount the test did not start.
func statusOf(t *testing.T, mp string) statusReport {
	t.Helper()
	m := &mount{t: t, dir: mp}
	return m.status()
}

// mountOptionsReport is the options part of nimbus status --json.
type mountOptionsReport struct {
	Options struct {
		DirTTL   string `json:"dir_ttl"`
		ReadOnly bool   `json:"read_only"`
	} `json:"options"`
}

func statusOptions(t *testing.T, mp string) mountOptionsReport {
	t.Helper()
	out, code := cliRun(t, 30*time.Second, nil, "status", "--json", mp)
	if code != 0 {
		t.Fatalf("nimbus status: exit %d: %s", code, out)
	}
	var r mountOptionsReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return r
}

// TestMountTypeFuseNimbus mounts MinIO with mount -t fuse.nimbus and -o
// options, as an administrator would: mount(8) returns once the mount is
// up, and the options took effect.
func TestMountTypeFuseNimbus(t *testing.T) {
	requireRoot(t, "mount(8) with a FUSE helper")
	e := newEnv(t)
	e.put("docs/a.txt", []byte("from minio\n"))
	mp := cliMountpoint(t)
	opts := "rw,cache_size=64MiB,dir_ttl=5m,endpoint=" + e.minio.Endpoint + ",cache-dir=" + t.TempDir() + ",noauto,_netdev,nofail,x-systemd.automount,dev,suid"
	out, code := runMount8(t, e.minio.Env(), "-t", fuseType(t), "s3://"+e.bucket, mp, "-o", opts)
	if code != 0 {
		t.Fatalf("mount -t fuse.nimbus: exit %d: %s", code, out)
	}
	if !isMounted(mp) {
		t.Fatalf("mount returned 0 but %s is not mounted: %s", mp, out)
	}
	if got := string(run(t, 30*time.Second, "cat", filepath.Join(mp, "docs/a.txt"))); got != "from minio\n" {
		t.Fatalf("read %q", got)
	}
	if st := statusOf(t, mp); st.Cache.Capacity != 64<<20 {
		t.Errorf("cache capacity %d; want 64MiB from -o cache_size=64MiB", st.Cache.Capacity)
	}
	if o := statusOptions(t, mp).Options; o.DirTTL != "5m0s" || o.ReadOnly {
		t.Errorf("options %+v; want dir_ttl 5m0s, read-write", o)
	}
	if out, code := cliRun(t, time.Minute, nil, "unmount", mp); code != 0 {
		t.Fatalf("nimbus unmount: exit %d: %s", code, out)
	}

	// A mount that fails says why in one line, and mount(8) fails.
	out, code = runMount8(t, nil, "-t", fuseType(t), "dir:"+filepath.Join(t.TempDir(), "missing"), mp, "-o", "cache_dir="+t.TempDir())
	if code == 0 || !strings.Contains(out, "does not exist") || isMounted(mp) {
		t.Errorf("mount of a missing folder: exit %d: %q; want a failure that says it does not exist", code, out)
	}
	// An unknown option is named.
	out, code = runMount8(t, nil, "-t", fuseType(t), "dir:"+cliDirRemote(t), mp, "-o", "cache_dir="+t.TempDir()+",frobnicate=1")
	if code == 0 || !strings.Contains(out, "-o frobnicate: unknown option") || isMounted(mp) {
		t.Errorf("mount with an unknown option: exit %d: %q; want a failure naming it", code, out)
	}
}

// TestMountFromFstab mounts a dir: remote from an fstab line with mount -T.
func TestMountFromFstab(t *testing.T) {
	requireRoot(t, "mount(8) with a FUSE helper")
	requireFUSE(t)
	remote := cliDirRemote(t)
	mp := cliMountpoint(t)
	fstab := filepath.Join(t.TempDir(), "fstab")
	line := "# nimbus\ndir:" + remote + " " + mp + " " + fuseType(t) +
		" defaults,ro,cache_size=64MiB,dir_ttl=90s,cache_dir=" + t.TempDir() + ",noauto,nofail,x-systemd.requires=network-online.target,user,users,exec 0 0\n"
	if err := os.WriteFile(fstab, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := runMount8(t, nil, "-T", fstab, mp)
	if code != 0 || !isMounted(mp) {
		t.Fatalf("mount -T %s %s: exit %d: %s", fstab, mp, code, out)
	}
	if got := string(run(t, 30*time.Second, "cat", filepath.Join(mp, "hello.txt"))); got != "hello\n" {
		t.Fatalf("read %q", got)
	}
	if st := statusOf(t, mp); st.Cache.Capacity != 64<<20 {
		t.Errorf("cache capacity %d; want 64MiB", st.Cache.Capacity)
	}
	if o := statusOptions(t, mp).Options; o.DirTTL != "1m30s" || !o.ReadOnly {
		t.Errorf("options %+v; want dir_ttl 1m30s, read-only", o)
	}
	if err := os.WriteFile(filepath.Join(mp, "new.txt"), []byte("x"), 0o644); err == nil {
		t.Error("a write succeeded on a mount with the fstab option ro")
	}
	// umount(8) works too: the daemon sees the kernel unmount and exits.
	if out, err := exec.Command("umount", mp).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(cliProcesses(mp)) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("nimbus still running 20s after umount")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSystemdNotify runs a foreground mount as a Type=notify unit would:
// READY=1 arrives on NOTIFY_SOCKET once the mount serves, STOPPING=1 at
// unmount.
func TestSystemdNotify(t *testing.T) {
	requireFUSE(t)
	sockPath := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	read := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		if err := sock.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := sock.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %s on NOTIFY_SOCKET: %v", want, err)
		}
		if got := string(buf[:n]); got != want {
			t.Fatalf("NOTIFY_SOCKET got %q; want %q", got, want)
		}
	}
	cacheDir := t.TempDir()
	m := startMount(t, []string{"NOTIFY_SOCKET=" + sockPath}, cacheDir,
		[]string{"mount", "--cache-dir", cacheDir, "dir:" + cliDirRemote(t)})
	read("READY=1")
	// Ready means serving: the file is there, and status answers.
	if got := string(run(t, 30*time.Second, "cat", m.path("hello.txt"))); got != "hello\n" {
		t.Fatalf("read %q", got)
	}
	m.status()
	m.unmount()
	read("STOPPING=1")
}

// TestSystemdUnitsVerify checks the shipped units with systemd-analyze
// verify, with ExecStart pointing at this test's binary instead of
// /usr/local/bin/nimbus.
func TestSystemdUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd)")
	}
	dir := t.TempDir()
	for unit, name := range map[string]string{"nimbus-mount.service": "nimbus-mount.service", "nimbus@.service": "nimbus@my-bucket.service"} {
		raw, err := os.ReadFile(filepath.Join("..", "scripts", "systemd", unit))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(raw), "/usr/local/bin/nimbus", nimbusBin)
		if !strings.Contains(text, "Type=notify") {
			t.Errorf("%s is not Type=notify", unit)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"verify", "--man=no", path}
		if strings.Contains(unit, "@") {
			args = []string{"verify", "--user", "--man=no", path}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, "systemd-analyze", args...)
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+t.TempDir())
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// TestVersionCompletionMan checks the CLI's --version, shell completions and
// man pages on the built binary.
func TestVersionCompletionMan(t *testing.T) {
	out, code := cliRun(t, 30*time.Second, nil, "--version")
	if code != 0 || !strings.HasPrefix(out, "nimbus ") || !strings.Contains(out, "go1.") || strings.Count(out, "\n") != 1 {
		t.Errorf("nimbus --version: exit %d, %q; want one line: nimbus VERSION…, GO VERSION", code, out)
	}
	for _, shell := range []string{"bash", "zsh", "fish"} {
		var script, errOut strings.Builder
		if code := nimbusCommand(t, 30*time.Second, nil, &script, &errOut, "completion", shell); code != 0 || !strings.Contains(script.String(), "nimbus") {
			t.Errorf("nimbus completion %s: exit %d: %s", shell, code, errOut.String())
		}
		if shell != "bash" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		check := exec.CommandContext(ctx, "bash", "-n")
		check.Stdin = strings.NewReader(script.String())
		if out, err := check.CombinedOutput(); err != nil {
			t.Errorf("nimbus completion bash | bash -n: %v: %s", err, out)
		}
		cancel()
	}
	if out, _ := cliRun(t, 30*time.Second, nil, "help"); !strings.Contains(out, "completion") || !strings.Contains(out, "man ") {
		t.Errorf("nimbus help does not list completion and man:\n%s", out)
	}
	dir := filepath.Join(t.TempDir(), "man1")
	if out, code := cliRun(t, 30*time.Second, nil, "man", dir); code != 0 {
		t.Fatalf("nimbus man: exit %d: %s", code, out)
	}
	for _, page := range []string{"nimbus.1", "nimbus-mount.1", "nimbus-unmount.1", "nimbus-status.1"} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil || !strings.Contains(string(b), ".TH") {
			t.Errorf("man page %s: %v", page, err)
		}
	}
}

// waitForFile waits until the file at path holds want.
func waitForFile(t *testing.T, path, want string, exited <-chan struct{}) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(path) // missing until nimbus made it
		if strings.Contains(string(b), want) {
			return string(b)
		}
		select {
		case <-exited:
			t.Fatalf("nimbus exited before %s held %q:\n%s", path, want, b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not hold %q after 30s:\n%s", path, want, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLogFile mounts in the foreground with --log-file and -v: the log goes
// to the file, the mount says where, and debug lines of the backend (here
// the dir store's, about a name it cannot show) are in it.
func TestLogFile(t *testing.T) {
	requireFUSE(t)
	remote := cliDirRemote(t)
	if err := os.WriteFile(filepath.Join(remote, "bad-\xff.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "logs", "mount.log")
	cacheDir := t.TempDir()
	mp := cliMountpoint(t)
	m := &mount{t: t, dir: mp, cacheDir: cacheDir, stderr: &syncBuffer{}, exited: make(chan struct{})}
	m.cmd = exec.Command(nimbusBin, "mount", "-v", "--cache-dir", cacheDir, "--log-file", logPath, "dir:"+remote, mp)
	m.cmd.Stderr = m.stderr
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = m.cmd.Wait() // the status is not needed
		close(m.exited)
	}()
	t.Cleanup(m.cleanup)
	waitForFile(t, logPath, "msg=mounted", m.exited)
	if !strings.Contains(m.stderr.String(), "logging to "+logPath) {
		t.Errorf("the mount does not say where it logs: %q", m.stderr.String())
	}
	run(t, 30*time.Second, "ls", mp)
	waitForFile(t, logPath, "dir: skipping a name that is not UTF-8", m.exited)
	m.unmount()
	if strings.Contains(m.stderr.String(), "msg=") {
		t.Errorf("log lines on stderr with --log-file:\n%s", m.stderr)
	}

	// --daemon (here -o log_file, as fstab says it) logs to the file and
	// says so.
	mp2 := cliMountpoint(t)
	logPath2 := filepath.Join(t.TempDir(), "daemon.log")
	out, code := cliRun(t, time.Minute, nil, "mount", "--daemon", "--cache-dir", t.TempDir(), "-o", "log_file="+logPath2, "dir:"+remote, mp2)
	if code != 0 || !strings.Contains(out, "log in "+logPath2) {
		t.Fatalf("mount --daemon -o log_file: exit %d: %q; want it to say where the log is", code, out)
	}
	waitForFile(t, logPath2, "msg=mounted", nil)
}

// awsFiles writes an AWS config and credentials file for profile (with the
// test MinIO's keys) and returns the environment that uses only them.
func awsFiles(t *testing.T, e *env, profile, config string) []string {
	t.Helper()
	dir := t.TempDir()
	cfgPath, credPath := filepath.Join(dir, "config"), filepath.Join(dir, "credentials")
	creds := "[" + profile + "]\naws_access_key_id = " + e.minio.AccessKey + "\naws_secret_access_key = " + e.minio.SecretKey + "\n"
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(credPath, []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
	return append(cliNoCredentials(t), "AWS_CONFIG_FILE="+cfgPath, "AWS_SHARED_CREDENTIALS_FILE="+credPath, "AWS_PROFILE="+profile)
}

// TestEndpointFromAWSConfig mounts MinIO with no --endpoint: the endpoint
// (a host name, localhost, so virtual-hosted addressing would fail), the
// region and the credentials all come from the AWS files, by endpoint_url
// in the profile and in its services section. An unreachable endpoint from
// the config is named with where it was set.
func TestEndpointFromAWSConfig(t *testing.T) {
	e := newEnv(t)
	e.put("cfg.txt", []byte("via the AWS config\n"))
	u, err := url.Parse(e.minio.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://localhost:" + u.Port()
	for name, config := range map[string]string{
		"profile":  "[profile nimbus]\nregion = us-east-1\nendpoint_url = " + endpoint + "\n",
		"services": "[profile nimbus]\nregion = us-east-1\nservices = local\n\n[services local]\ns3 =\n  endpoint_url = " + endpoint + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			env := awsFiles(t, e, "nimbus", config)
			cacheDir := t.TempDir()
			m := startMount(t, env, cacheDir, []string{"mount", "-v", "--cache-dir", cacheDir, "s3://" + e.bucket})
			if got := string(run(t, 30*time.Second, "cat", m.path("cfg.txt"))); got != "via the AWS config\n" {
				t.Fatalf("read %q", got)
			}
			if st := m.status(); !strings.Contains(statusStore(t, m), "localhost:"+u.Port()) || !st.Online {
				t.Errorf("store %q online %v; want the endpoint of the config", statusStore(t, m), st.Online)
			}
			m.unmount()
			if strings.Contains(m.stderr.String(), e.minio.SecretKey) {
				t.Errorf("the secret key is in the log:\n%s", m.stderr)
			}
		})
	}

	// Nothing listens there: the error says where the endpoint was set.
	dead := "http://localhost:1"
	env := awsFiles(t, e, "nimbus", "[profile nimbus]\nregion = us-east-1\nendpoint_url = "+dead+"\n")
	out, code := cliRun(t, time.Minute, env, "mount", "--cache-dir", t.TempDir(), "s3://"+e.bucket, cliMountpoint(t))
	if code != 1 || !strings.Contains(out, "cannot reach "+dead+" (endpoint_url in profile nimbus of ") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("unreachable endpoint from the config: exit %d: %q; want one line naming it and where it was set", code, out)
	}
	env = append(awsFiles(t, e, "nimbus", "[profile nimbus]\nregion = us-east-1\n"), "AWS_ENDPOINT_URL_S3="+dead)
	out, code = cliRun(t, time.Minute, env, "mount", "--cache-dir", t.TempDir(), "s3://"+e.bucket, cliMountpoint(t))
	if code != 1 || !strings.Contains(out, "cannot reach "+dead+" (AWS_ENDPOINT_URL_S3)") {
		t.Errorf("unreachable endpoint from AWS_ENDPOINT_URL_S3: exit %d: %q", code, out)
	}
}

// statusStore is the store field of nimbus status --json.
func statusStore(t *testing.T, m *mount) string {
	t.Helper()
	out, code := cliRun(t, 30*time.Second, nil, "status", "--json", m.dir)
	if code != 0 {
		t.Fatalf("nimbus status: exit %d: %s", code, out)
	}
	var r struct {
		Store string `json:"store"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return r.Store
}

// freeLoopbackAddr returns a loopback HOST:PORT nothing listens on now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// scrape returns the samples of http://addr/metrics by name with labels,
// as the text format writes them: `nimbus_x{op="GetObject"}` → value.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s, %v", resp.Status, err)
	}
	samples := make(map[string]float64)
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// TestMetrics scrapes /metrics of a MinIO mount (-o metrics_addr) before
// and after a read: the GET counter, the bytes, the cache misses and the
// FUSE read histogram move; the capacity and the online state are there.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	data := bytes.Repeat([]byte("metrics "), 1<<15) // 256 KiB
	e.put("m/data.bin", data)
	addr := freeLoopbackAddr(t)
	m := e.mount(mountOpt{args: []string{"-o", "metrics_addr=" + addr + ",cache_size=64MiB"}})
	before := scrape(t, addr)
	if got := run(t, 30*time.Second, "cat", m.path("m/data.bin")); !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes; want %d", len(got), len(data))
	}
	after := scrape(t, addr)
	for _, name := range []string{
		`nimbus_s3_requests_total{op="GetObject"}`,
		`nimbus_s3_bytes_total{direction="in"}`,
		`nimbus_cache_misses_total`,
		`nimbus_fuse_operation_duration_seconds_count{op="read"}`,
		`nimbus_fuse_operation_duration_seconds_count{op="open"}`,
	} {
		if after[name] <= before[name] {
			t.Errorf("%s did not move with a read: %v → %v", name, before[name], after[name])
		}
	}
	if got := after[`nimbus_s3_bytes_total{direction="in"}`] - before[`nimbus_s3_bytes_total{direction="in"}`]; got < float64(len(data)) {
		t.Errorf("bytes in grew by %v; want at least %d", got, len(data))
	}
	for name, want := range map[string]float64{
		"nimbus_cache_capacity_bytes": 64 << 20,
		"nimbus_online":               1,
		"nimbus_uploads_pending":      0,
		"nimbus_conflicts":            0,
	} {
		if got, ok := after[name]; !ok || got != want {
			t.Errorf("%s = %v (present %v); want %v", name, got, ok, want)
		}
	}
	// Errors by errno: a lookup of a name that is not there.
	if _, err := os.Stat(m.path("m/missing")); err == nil {
		t.Fatal("stat of a missing file succeeded")
	}
	if got := scrape(t, addr)[`nimbus_fuse_errors_total{errno="ENOENT",op="lookup"}`]; got < 1 {
		t.Errorf("lookup ENOENT errors = %v; want at least 1", got)
	}
}
