package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/cache"
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
	if got := cache.FormatBytes(3 << 29); got != "1.5 GiB" {
		t.Errorf("cache.FormatBytes = %q", got)
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
