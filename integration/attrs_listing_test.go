package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// TestModeAndMTimeInListings: chmod and touch on one mount show on other
// mounts in their first stat or ls -l, without opening the file and
// without a single HEAD: the folder's attribute index (.nimbus-attrs) is
// read with the listing. A mount that listed the folder before sees them
// once it lists again (after --dir-ttl, or when --poll re-lists it); a
// mount started afterwards sees them at once. When
// another S3 client replaces the file (new ETag, index untouched), the
// listing's mtime and the default mode show again.
func TestModeAndMTimeInListings(t *testing.T) {
	e := newEnv(t)
	e.put("shared/remote.txt", []byte("from the store\n"))
	e.put("top.txt", []byte("at the root\n"))
	a := e.mount(mountOpt{})
	b, proxyB := mountCounted(t, e, "--dir-ttl", "1s")
	polled, proxyP := mountCounted(t, e, "--dir-ttl", "1h", "--poll", "1s")
	for _, m := range []*mount{b, polled} {
		for _, name := range []string{"shared/remote.txt", "top.txt"} {
			if st, err := os.Stat(m.path(name)); err != nil || st.Mode().Perm() != 0o644 {
				t.Fatalf("before the change: %s %v %v", name, st, err)
			}
		}
	}

	remoteTime := time.Date(2003, 4, 5, 6, 7, 8, 0, time.UTC)
	newTime := time.Date(2011, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := os.WriteFile(a.path("shared/new.sh"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		mode  os.FileMode
		mtime time.Time
	}{
		"shared/remote.txt": {0o640, remoteTime},
		"shared/new.sh":     {0o750, newTime},
		"top.txt":           {0o600, remoteTime},
	}
	for name, w := range want {
		run(t, time.Minute, "chmod", fmt.Sprintf("%o", w.mode), a.path(name))
		run(t, time.Minute, "touch", "-d", w.mtime.Format("2006-01-02 15:04:05 UTC"), a.path(name))
	}
	a.sync(time.Minute)
	if files := e.attrIndex("shared/"); files["remote.txt"].Mode != 0o640 || files["new.sh"].Mode != 0o750 {
		t.Errorf("shared/.nimbus-attrs in the bucket = %+v", files)
	}

	check := func(m *mount, when string) {
		t.Helper()
		for name, w := range want {
			st, err := os.Stat(m.path(name))
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			if st.Mode().Perm() != w.mode || !st.ModTime().Equal(w.mtime) {
				t.Errorf("%s: %s is %v %v, want %v %v", when, name, st.Mode().Perm(), st.ModTime().UTC(), w.mode, w.mtime)
			}
		}
		if out := string(run(t, time.Minute, "ls", "-l", m.path("shared"))); !strings.Contains(out, "-rw-r----- ") || strings.Contains(out, ".nimbus") {
			t.Errorf("%s: ls -l shared:\n%s", when, out)
		}
	}
	noHEAD := func(m *mount, proxy *s3proxy.Server, before map[string]int64, atServer s3proxy.Counts, when string) {
		t.Helper()
		d := delta(before, m.requests())
		server := proxy.Snapshot().Sub(atServer)
		t.Logf("%s: requests %v; the server saw %d HEAD, %d GET, %d LIST", when, d, server.Requests[s3proxy.OpHead], server.Requests[s3proxy.OpGet], server.Requests[s3proxy.OpList])
		if d["HeadObject"] != 0 || server.Requests[s3proxy.OpHead] != 0 {
			t.Errorf("%s: %d HeadObject (%d at the server), want 0", when, d["HeadObject"], server.Requests[s3proxy.OpHead])
		}
	}

	// b listed before the change: it sees it once it lists again; the
	// polled mount, whose listings do not expire, once it polled.
	beforeB, serverB := b.requests(), proxyB.Snapshot()
	beforeP, serverP := polled.requests(), proxyP.Snapshot()
	time.Sleep(2500 * time.Millisecond) // past --dir-ttl, a poll and the kernel's 1s attribute cache
	check(b, "mount b, listing again")
	noHEAD(b, proxyB, beforeB, serverB, "mount b")
	check(polled, "polled mount")
	noHEAD(polled, proxyP, beforeP, serverP, "polled mount")

	// c starts now: its first stat shows them.
	c, proxyC := mountCounted(t, e, "--dir-ttl", "1s")
	beforeC, serverC := c.requests(), proxyC.Snapshot()
	check(c, "mount c, first listing")
	noHEAD(c, proxyC, beforeC, serverC, "mount c")

	// Another client replaces remote.txt: its entry names the old version.
	e.put("shared/remote.txt", []byte("replaced by another client\n"))
	head, err := e.s3.HeadObject(context.Background(), &awss3.HeadObjectInput{Bucket: &e.bucket, Key: aws.String("shared/remote.txt")})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	for _, m := range []*mount{b, c} {
		st, err := os.Stat(m.path("shared/remote.txt"))
		if err != nil {
			t.Fatal(err)
		}
		// The listing's LastModified has milliseconds, the HEAD's seconds.
		if st.Mode().Perm() != 0o644 || !st.ModTime().Truncate(time.Second).Equal(*head.LastModified) {
			t.Errorf("after another client's replace: remote.txt is %v %v, want 0644 and the listing's %v", st.Mode().Perm(), st.ModTime().UTC(), head.LastModified.UTC())
		}
	}
	noHEAD(b, proxyB, beforeB, serverB, "mount b, after the replace")
}

// TestAttrIndexCosts: creating many files in one folder writes its
// attribute index a few times, not once per file; removing the folder
// through the mount (or renaming it away) leaves no index behind, which
// would keep the folder alive in the bucket. The index's names cannot be
// taken by files or folders.
func TestAttrIndexCosts(t *testing.T) {
	e := newEnv(t)
	// No trash: the end checks that nothing of a removed folder stays.
	m := e.mount(mountOpt{args: []string{"--trash", "0"}})
	const n = 200
	if err := os.Mkdir(m.path("many"), 0o755); err != nil {
		t.Fatal(err)
	}
	m.sync(time.Minute)
	before := m.requests()
	for i := range n {
		if err := os.WriteFile(m.path(fmt.Sprintf("many/f%03d.txt", i)), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m.sync(2 * time.Minute)
	d := delta(before, m.requests())
	sidecarPuts := d["PutObject"] - n
	t.Logf("%d creates in one folder: %v; %d PUTs of the attribute index", n, d, sidecarPuts)
	if sidecarPuts < 1 || sidecarPuts > 30 {
		t.Errorf("%d creates made %d PUTs of the attribute index, want a few", n, sidecarPuts)
	}
	if files := e.attrIndex("many/"); len(files) != n {
		t.Errorf("many/.nimbus-attrs has %d entries, want %d", len(files), n)
	}

	// Reserved names: refused with EINVAL, never listed.
	for _, op := range []struct {
		desc string
		do   func() error
	}{
		{"create .nimbus-attrs", func() error { return os.WriteFile(m.path("many/.nimbus-attrs"), nil, 0o644) }},
		{"mkdir .nimbus-snapshots", func() error { return os.Mkdir(m.path(".nimbus-snapshots"), 0o755) }},
		{"rename onto .nimbus-attrs", func() error { return os.Rename(m.path("many/f000.txt"), m.path(".nimbus-attrs")) }},
	} {
		if err := op.do(); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s: %v, want EINVAL", op.desc, err)
		}
	}
	if out := string(run(t, time.Minute, "ls", "-a", m.path("many"))); strings.Contains(out, ".nimbus") {
		t.Errorf("ls -a shows nimbus's own objects:\n%s", out)
	}
	if st := m.status(); len(st.Skipped) != 0 {
		t.Errorf("status reports skipped keys: %+v", st.Skipped)
	}

	// A folder renamed, then removed: nothing of it stays in the bucket.
	if err := os.Rename(m.path("many"), m.path("moved")); err != nil {
		t.Fatal(err)
	}
	m.sync(2 * time.Minute)
	if keys := e.rawKeys("many/"); len(keys) != 0 {
		t.Errorf("after renaming many to moved, the bucket still has %v", keys)
	}
	if files := e.attrIndex("moved/"); len(files) != n {
		t.Errorf("moved/.nimbus-attrs has %d entries, want %d", len(files), n)
	}
	if out, err := exec.Command("rm", "-r", m.path("moved")).CombinedOutput(); err != nil {
		t.Fatalf("rm -r moved: %v: %s", err, out)
	}
	m.sync(2 * time.Minute)
	if keys := e.rawKeys(""); len(keys) != 0 {
		t.Errorf("after rm -r, the bucket still has %v", keys)
	}
	if ents, err := os.ReadDir(m.dir); err != nil || len(ents) != 0 {
		t.Errorf("mount root after rm -r: %v %v", ents, err)
	}
}

// mountCounted mounts the bucket through a counting proxy of its own.
func mountCounted(t *testing.T, e *env, args ...string) (*mount, *s3proxy.Server) {
	t.Helper()
	proxy := e.startProxy(t)
	return e.mount(mountOpt{endpoint: proxy.URL, args: args}), proxy
}

// attrRecord is an entry of a folder's attribute index.
type attrRecord struct {
	ETag  string `json:"etag"`
	MTime int64  `json:"mtime"`
	Mode  uint32 `json:"mode"`
}

// attrIndex returns the entries of the attribute index of the folder with
// key prefix prefix, nil if it has none.
func (e *env) attrIndex(prefix string) map[string]attrRecord {
	e.t.Helper()
	out, err := e.s3.GetObject(context.Background(), &awss3.GetObjectInput{Bucket: &e.bucket, Key: aws.String(prefix + ".nimbus-attrs")})
	if err != nil {
		e.t.Logf("no attribute index under %q: %v", prefix, err)
		return nil
	}
	defer out.Body.Close()
	data, err := io.ReadAll(out.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	var doc struct {
		Version int                   `json:"version"`
		Files   map[string]attrRecord `json:"files"`
	}
	if err := json.Unmarshal(data, &doc); err != nil || doc.Version != 1 {
		e.t.Fatalf("attribute index under %q: version %d, %v: %s", prefix, doc.Version, err, data)
	}
	return doc.Files
}

// rawKeys lists every key under prefix, nimbus's own objects included.
func (e *env) rawKeys(prefix string) []string {
	e.t.Helper()
	var keys []string
	p := awss3.NewListObjectsV2Paginator(e.s3, &awss3.ListObjectsV2Input{Bucket: &e.bucket, Prefix: &prefix})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			e.t.Fatal(err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys
}
