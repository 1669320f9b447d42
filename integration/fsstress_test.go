package integration

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// fsstressMaxRatio bounds the bytes sent to the store (PutObject and
// UploadPart bodies, counted at the server) over the bytes it ends up
// holding. Repeated closes of a file that is still changing coalesce into
// one upload, and the unchanged parts of large files are copied
// server-side, so most of what fsstress rewrites is never sent twice.
const fsstressMaxRatio = 2.0

// TestFSStress runs xfstests' fsstress with several processes over a mount
// on MinIO: it must finish, nimbus sync must succeed, every file must be
// in the bucket at its size, and the bytes sent to the store must stay
// within fsstressMaxRatio of the bytes stored.
//
// The file sizes are bounded: fsstress grows a file by at most about
// 1.1 MiB per operation (writes and truncates land up to 1 MiB past EOF),
// except clonerange, copyrange and splice, which aim up to 1024 blocks
// past EOF (1 GiB with our 1 MiB st_blksize); those three are disabled, so
// the whole run can never write more than procs × ops × 1.2 MiB.
func TestFSStress(t *testing.T) {
	bin := thirdPartyPath(t, xfstestsDir, "fsstress")
	procs, ops := 4, 300
	if v := os.Getenv("NIMBUS_FSSTRESS_OPS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("NIMBUS_FSSTRESS_OPS=%q: want a positive number", v)
		}
		ops = n
	}
	seed := "1"
	if v := os.Getenv("NIMBUS_FSSTRESS_SEED"); v != "" {
		seed = v
	}

	e := newEnv(t)
	proxy := e.startProxy(t)
	m := e.mount(mountOpt{endpoint: proxy.URL})
	t.Cleanup(func() { e.emptyBucket() })
	start := proxy.Snapshot()

	dir := m.path("stress")
	args := []string{"-d", dir, "-p", strconv.Itoa(procs), "-n", strconv.Itoa(ops), "-s", seed,
		"-f", "clonerange=0", "-f", "copyrange=0", "-f", "splice=0"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	began := time.Now()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("fsstress %s did not finish within 10 minutes\n%s", strings.Join(args, " "), tail(string(out)))
	}
	if err != nil {
		t.Fatalf("fsstress %s: %v\n%s", strings.Join(args, " "), err, tail(string(out)))
	}
	ran := time.Since(began)
	m.sync(10 * time.Minute)
	synced := time.Since(began)

	// Every regular file of the mount is in the bucket, at its size.
	local := map[string]int64{}
	err = filepath.WalkDir(m.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(m.dir, p)
		local[rel] = fi.Size()
		return nil
	})
	if err != nil {
		t.Fatalf("walk the mount: %v", err)
	}
	remote := e.objectSizes()
	var stored int64
	for k, size := range remote {
		if !nimbusOwnKey(k) {
			stored += size
		}
	}
	for rel, size := range local {
		if got, ok := remote[rel]; !ok || got != size {
			t.Errorf("%s: %d bytes on the mount; in the bucket: %d bytes (present %v)", rel, size, got, ok)
		}
	}

	sent := proxy.Snapshot().Sub(start)
	ratio := float64(sent.PutBytes) / float64(max(stored, 1))
	t.Logf("fsstress -p %d -n %d -s %s: ran %v, synced after %v; %d files; sent %d bytes (%d PUT, %d PART, %d COPYPART, %d COPY), stored %d bytes: ratio %.2f",
		procs, ops, seed, ran.Round(time.Second), synced.Round(time.Second), len(local), sent.PutBytes,
		sent.Requests[s3proxy.OpPut], sent.Requests[s3proxy.OpPart], sent.Requests[s3proxy.OpCopyPart],
		sent.Requests[s3proxy.OpCopy], stored, ratio)
	if stored == 0 {
		t.Fatalf("fsstress left nothing in the bucket")
	}
	if ratio > fsstressMaxRatio {
		t.Errorf("sent %.2fx the bytes stored; want at most %.1fx", ratio, fsstressMaxRatio)
	}
}

// objectSizes lists every key of the bucket with its size.
func (e *env) objectSizes() map[string]int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sizes := map[string]int64{}
	p := awss3.NewListObjectsV2Paginator(e.s3, &awss3.ListObjectsV2Input{Bucket: &e.bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			e.t.Fatalf("list the bucket: %v", err)
		}
		for _, o := range page.Contents {
			sizes[aws.ToString(o.Key)] = aws.ToInt64(o.Size)
		}
	}
	return sizes
}

// emptyBucket deletes every object of the bucket, so that a stress test
// leaves no bytes behind.
func (e *env) emptyBucket() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := awss3.NewListObjectsV2Paginator(e.s3, &awss3.ListObjectsV2Input{Bucket: &e.bucket})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			e.t.Errorf("list the bucket to empty it: %v", err)
			return
		}
		if len(page.Contents) == 0 {
			continue
		}
		var ids []types.ObjectIdentifier
		for _, o := range page.Contents {
			ids = append(ids, types.ObjectIdentifier{Key: o.Key})
		}
		if _, err := e.s3.DeleteObjects(ctx, &awss3.DeleteObjectsInput{
			Bucket: &e.bucket, Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		}); err != nil {
			e.t.Errorf("empty the bucket: %v", err)
			return
		}
	}
}
