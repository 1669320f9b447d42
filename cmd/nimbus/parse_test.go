package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/vfs"
)

func TestParseRemote(t *testing.T) {
	good := map[string]remote{
		"s3://bucket":           {scheme: "s3", bucket: "bucket"},
		"s3://my.bucket-1/":     {scheme: "s3", bucket: "my.bucket-1"},
		"s3://bucket/a/b":       {scheme: "s3", bucket: "bucket", prefix: "a/b/"},
		"s3://bucket/a/b/":      {scheme: "s3", bucket: "bucket", prefix: "a/b/"},
		"dir:/srv/files":        {scheme: "dir", path: "/srv/files"},
		"dir:/srv/files/../x/.": {scheme: "dir", path: "/srv/x"},
	}
	for in, want := range good {
		got, err := parseRemote(in)
		if err != nil || got != want {
			t.Errorf("parseRemote(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	bad := map[string]string{
		"bucket":             "expected s3://BUCKET[/PREFIX] or dir:/PATH",
		"s3://":              "not a valid bucket name",
		"s3://UPPER":         "not a valid bucket name",
		"s3://b_b/x":         "not a valid bucket name",
		"s3://bucket/a//b":   "empty path segment",
		"s3://bucket/a/../b": `".." segment`,
		"dir:":               "give a folder",
		"gs://bucket":        "expected s3://",
	}
	for in, want := range bad {
		if _, err := parseRemote(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("parseRemote(%q) = %v; want an error saying %q", in, err, want)
		}
	}
}

func TestRemoteIDIsStableAndDistinct(t *testing.T) {
	a, _ := parseRemote("s3://bucket/a")
	again, _ := parseRemote("s3://bucket/a/") // the same remote, written otherwise
	b, _ := parseRemote("s3://bucket/b")
	if a.id("") != again.id("") {
		t.Fatal("the same remote gets two cache ids")
	}
	if a.id("") == b.id("") || a.id("") == a.id("http://other:9000") {
		t.Fatal("different remotes or endpoints share a cache id")
	}
	if strings.ContainsAny(a.id(""), "/: ") {
		t.Fatalf("id %q is not a safe folder name", a.id(""))
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"1048576": 1 << 20, "512MiB": 512 << 20, "2GiB": 2 << 30, "10G": 10 << 30,
		"1.5GiB": 3 << 29, "64mib": 64 << 20, "1KB": 1000, "1TiB": 1 << 40, "7B": 7,
	}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "12XB", "-1GiB", "1.2.3G"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) succeeded", in)
		}
	}
	if got := formatBytes(3 << 29); got != "1.5 GiB" {
		t.Errorf("formatBytes = %q", got)
	}
}

func TestParseMountArgs(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	o, err := parseMountArgs([]string{"--cache-size", "64MiB", "s3://bkt/p", "-v", "/mnt/x", "--dir-ttl", "5s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cacheSize != 64<<20 || !o.verbose || o.dirTTL != 5*time.Second || o.mountpoint != "/mnt/x" || o.remote.prefix != "p/" {
		t.Errorf("flags between and after arguments not parsed: %+v", o)
	}
	if !strings.HasPrefix(o.cacheDir, "/xdg/nimbus/s3-bkt-p-") {
		t.Errorf("default cache dir %q not under $XDG_CACHE_HOME/nimbus", o.cacheDir)
	}
	for _, args := range [][]string{
		{"s3://bkt"},
		{"s3://bkt", "/m", "extra"},
		{"--cache-size", "100", "s3://bkt", "/m"},
		{"--dir-ttl", "-1s", "s3://bkt", "/m"},
		{"--endpoint", "http://x", "dir:/tmp", "/m"},
		{"--bogus", "s3://bkt", "/m"},
	} {
		_, err := parseMountArgs(args, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) {
			t.Errorf("parseMountArgs(%q) = %v; want a usage error", args, err)
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	var out, errOut strings.Builder
	if code := run(nil, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "usage:") {
		t.Errorf("no arguments: code %d, stderr %q", code, errOut.String())
	}
	errOut.Reset()
	if code := run([]string{"mount", "-h"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "-cache-size") {
		t.Errorf("mount -h: code %d, stdout %q", code, out.String())
	}
	if code := run([]string{"unmount"}, &out, &errOut); code != 2 {
		t.Errorf("unmount without a mountpoint: code %d", code)
	}
}

func TestHelpForEveryCommand(t *testing.T) {
	for _, c := range newRoot().Commands() {
		name := c.Name()
		for _, args := range [][]string{{"help", name}, {name, "-h"}, {name, "--help"}} {
			var out, errOut strings.Builder
			code := run(args, &out, &errOut)
			if code != 0 || !strings.Contains(out.String(), "Usage:") || errOut.Len() != 0 {
				t.Errorf("nimbus %s: code %d, stdout %q, stderr %q", strings.Join(args, " "), code, out.String(), errOut.String())
			}
		}
	}
	for _, name := range []string{"mount", "unmount", "status", "sync", "conflicts", "pin", "unpin", "free"} {
		if c, _, err := newRoot().Find([]string{name}); err != nil || c.Name() != name {
			t.Errorf("command %s is missing: %v", name, err)
		}
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},
		{"mount", "--bogus", "s3://bkt", "/m"},
		{"mount", "s3://bkt"},
		{"mount", "--cache-size", "9e18TiB", "s3://bkt", "/m"},
		{"mount", "--cache-size", "9000000PiB", "s3://bkt", "/m"},
		{"status", "a", "b"},
		{"sync", "--timeout", "soon"},
		{"conflicts", "a", "b"},
		{"pin"},
		{"unpin"},
		{"free"},
		{"umount"},
	} {
		var out, errOut strings.Builder
		code := run(args, &out, &errOut)
		lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
		if code != 2 || len(lines) != 2 || !strings.HasPrefix(lines[1], `run "nimbus help`) {
			t.Errorf("nimbus %q: code %d, stderr %q; want 2 and a usage error", args, code, errOut.String())
		}
	}
}

func TestDoubleDashEndsFlags(t *testing.T) {
	// After --, "-a" is a path (which does not exist here): a failure, not
	// an unknown flag.
	var out, errOut strings.Builder
	dir := t.TempDir()
	t.Chdir(dir)
	code := run([]string{"pin", "--", "-a"}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "-a: lstat") {
		t.Errorf("pin -- -a: code %d, stderr %q; want the path -a not found", code, errOut.String())
	}
}

func TestLongFlagsWithOneDash(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	o, err := parseMountArgs(longFlagsWithOneDash(newRoot(), []string{"mount", "-cache-size", "64MiB", "-daemon", "-v", "s3://bkt", "/m"})[1:], io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cacheSize != 64<<20 || !o.daemon || !o.verbose {
		t.Errorf("one-dash long flags not taken: %+v", o)
	}
	got := longFlagsWithOneDash(newRoot(), []string{"pin", "--", "-no-wait"})
	if got[2] != "-no-wait" {
		t.Errorf("an argument after -- was rewritten: %q", got)
	}
}

func TestSizeOverflow(t *testing.T) {
	for _, in := range []string{"9e18TiB", "8EiB", "8388608TiB", "9223372036854775808", "1e3", "0x10", "Inf", "NaN", "."} {
		if n, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d; want an error", in, n)
		}
	}
	if n, err := parseSize("8388607TiB"); err != nil || n != 8388607<<40 {
		t.Errorf("parseSize(8388607TiB) = %d, %v", n, err)
	}
}

func TestMountOptions(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	o, err := parseMountArgs([]string{"s3://bkt", "/m", "-o", "rw,cache_size=64MiB,dir-ttl=5m,endpoint=http://127.0.0.1:9000",
		"-o", "ro,allow_other,noauto,_netdev,nofail,x-systemd.automount,user,users,dev,suid,exec,nodev,nosuid,noexec,defaults,auto,cache_dir=/c"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cacheSize != 64<<20 || o.dirTTL != 5*time.Minute || o.endpoint != "http://127.0.0.1:9000" ||
		!o.readOnly || !o.allowOther || o.cacheDir != "/c" {
		t.Errorf("-o options not applied: %+v", o)
	}
	for opt, want := range map[string]string{
		"bogus=1":         "-o bogus: unknown option",
		"cache_size":      "-o cache_size needs a value",
		"cache_size=9e18": "cache_size=9e18",
		"help":            "-o help: unknown option",
		"options=ro":      "-o options: unknown option",
	} {
		var out, errOut strings.Builder
		code := run([]string{"mount", "s3://bkt", "/m", "-o", opt}, &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), want) {
			t.Errorf("-o %s: code %d, stderr %q; want 2 and %q", opt, code, errOut.String(), want)
		}
	}
}

func TestPassthroughFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want bool
	}{
		{nil, false}, // opt-in: see the flag's help
		{[]string{"--passthrough"}, true},
		{[]string{"-o", "passthrough"}, true},
		{[]string{"-o", "passthrough=false"}, false},
		{[]string{"--passthrough", "-o", "passthrough=false"}, false},
	} {
		o, err := parseMountArgs(append([]string{"s3://bkt", "/m"}, c.args...), io.Discard)
		if err != nil || o.passthrough != c.want {
			t.Errorf("%q: passthrough %v, err %v; want %v", c.args, o.passthrough, err, c.want)
		}
	}
}

func TestMountFuseForm(t *testing.T) {
	// mount.fuse runs `nimbus REMOTE MOUNTPOINT -o …`: that is nimbus mount
	// --daemon. A bad option is a usage error naming it.
	var out, errOut strings.Builder
	code := run([]string{"dir:/nonexistent", "/m", "-o", "rw,frobnicate"}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "nimbus mount: -o frobnicate: unknown option") {
		t.Errorf("code %d, stderr %q", code, errOut.String())
	}
}

func TestSdNotifyAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@nimbus-test-%d", os.Getpid())
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	t.Setenv("NOTIFY_SOCKET", name)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if err := sock.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := sock.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
}

func TestMetricsListenAddr(t *testing.T) {
	for in, want := range map[string]string{
		":9101":          "127.0.0.1:9101",
		"127.0.0.1:9101": "127.0.0.1:9101",
		"0.0.0.0:9101":   "0.0.0.0:9101",
		"[::1]:9101":     "[::1]:9101",
	} {
		if got := metricsListenAddr(in); got != want {
			t.Errorf("metricsListenAddr(%q) = %q; want %q", in, got, want)
		}
	}
}

func TestVersionOf(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}
	if got := versionOf(info); got != "nimbus (devel), go1.26.8" {
		t.Errorf("without VCS: %q", got)
	}
	info.Main.Version = "v1.2.3"
	info.Settings = []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123"},
		{Key: "vcs.time", Value: "2026-12-07T03:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	if got, want := versionOf(info), "nimbus v1.2.3 (revision 0123456789ab 2026-12-07T03:00:00Z, modified), go1.26.8"; got != want {
		t.Errorf("with VCS: %q; want %q", got, want)
	}
}

func TestPassthroughLine(t *testing.T) {
	for _, c := range []struct {
		st   vfs.PassthroughStatus
		want []string
	}{
		{vfs.PassthroughStatus{On: true, Opens: 7, Open: 2}, []string{"on:", "7 opens, 2 open now"}},
		{vfs.PassthroughStatus{On: true, Opens: 1, Busy: 3}, []string{"on:", "3 changes refused"}},
		{vfs.PassthroughStatus{Reason: "not asked for (--passthrough turns it on)"}, []string{"off: not asked for (--passthrough turns it on)", "through nimbus"}},
	} {
		line := passthroughLine(c.st)
		for _, w := range c.want {
			if !strings.Contains(line, w) {
				t.Errorf("passthroughLine(%+v) = %q, want %q in it", c.st, line, w)
			}
		}
	}
}
