package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// BenchmarkWritePath measures the write path against raw S3 in one run:
//
//   - 1,000 new 4 KiB files: until the last close() returns, and until
//     nimbus sync says all are uploaded, vs 1,000 raw PUTs (16 in parallel);
//   - a 1 GiB sequential write: until close(), and until uploaded, vs a raw
//     multipart upload of the same bytes (16 MiB parts, 8 in parallel).
//
// Run it with scripts/bench (it runs every Benchmark of the package).
func BenchmarkWritePath(b *testing.B) {
	for range b.N {
		benchWritePath(b)
	}
}

func benchWritePath(b *testing.B) {
	e := newEnv(b)
	var rows []benchRow
	add := func(r benchRow) *benchRow { rows = append(rows, r); return &rows[len(rows)-1] }
	small := bytes.Repeat([]byte("n"), 4096)

	start := time.Now()
	rawPuts(b, e, "raw-small/", 1000, small)
	rawSmall := add(benchRow{workload: "1000 x 4 KiB creates", system: "raw PUT x16", took: time.Since(start), bytes: 1000 * 4096})

	m := e.mount(mountOpt{})
	if err := os.Mkdir(m.path("small"), 0o755); err != nil {
		b.Fatal(err)
	}
	start = time.Now()
	for i := range 1000 {
		if err := os.WriteFile(m.path(fmt.Sprintf("small/f%04d", i)), small, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	add(benchRow{workload: "1000 x 4 KiB creates", system: "nimbus close()", took: time.Since(start), bytes: 1000 * 4096, limit: rawSmall})
	m.sync(10 * time.Minute)
	add(benchRow{workload: "1000 x 4 KiB creates", system: "nimbus uploaded", took: time.Since(start), bytes: 1000 * 4096, limit: rawSmall})

	big := pattern{seed: 51, size: bigSize}
	local := filepath.Join(b.TempDir(), "big.bin")
	writeLocal(b, local, big)
	start = time.Now()
	rawMultipart(b, e, "raw-big.bin", local)
	rawBig := add(benchRow{workload: "1 GiB sequential write", system: "raw multipart", took: time.Since(start), bytes: big.size})

	start = time.Now()
	f, err := os.Create(m.path("big.bin"))
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < big.size; off += int64(len(buf)) {
		n, _ := big.ReadAt(buf, off)
		if _, err := f.Write(buf[:n]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	add(benchRow{workload: "1 GiB sequential write", system: "nimbus close()", took: time.Since(start), bytes: big.size, limit: rawBig})
	m.sync(10 * time.Minute)
	add(benchRow{workload: "1 GiB sequential write", system: "nimbus uploaded", took: time.Since(start), bytes: big.size, limit: rawBig})

	printBenchTable(b, rows)
}

// rawPuts stores n objects of data under prefix, 16 at a time.
func rawPuts(tb testing.TB, e *env, prefix string, n int, data []byte) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	keys := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Go(func() {
			for k := range keys {
				_, err := e.s3.PutObject(ctx, &awss3.PutObjectInput{Bucket: &e.bucket, Key: aws.String(k), Body: bytes.NewReader(data)})
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		keys <- fmt.Sprintf("%sf%04d", prefix, i)
	}
	close(keys)
	wg.Wait()
	if firstErr != nil {
		tb.Fatal(firstErr)
	}
}

// rawMultipart uploads a local file with the SDK's transfer manager.
func rawMultipart(tb testing.TB, e *env, key, path string) {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	up := manager.NewUploader(e.s3, func(u *manager.Uploader) { u.PartSize = 16 << 20; u.Concurrency = 8 })
	if _, err := up.Upload(ctx, &awss3.PutObjectInput{Bucket: &e.bucket, Key: aws.String(key), Body: f}); err != nil {
		tb.Fatal(err)
	}
}
