package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// BenchmarkReadPath measures the read path against its limits in one run,
// on one MinIO, so that the ratios hold on a noisy machine:
//
//   - cold sequential read of a 1 GiB object vs a raw parallel ranged GET;
//   - warm read (from the disk cache, page cache dropped) vs a plain read of
//     a local file holding the same bytes (page cache dropped too);
//   - ls -lR over 10,000 objects in 100 directories, cold and warm, vs a raw
//     flat ListObjectsV2 of the same keys.
//
// Run it with scripts/bench (go test -bench ReadPath -benchtime 1x).
func BenchmarkReadPath(b *testing.B) {
	for range b.N {
		benchReadPath(b)
	}
}

type benchRow struct {
	workload, system string
	took             time.Duration
	bytes            int64
	requests         map[string]int64
	limit            *benchRow // what the ratio is taken against
}

func (r benchRow) throughput() string {
	if r.bytes == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MiB/s", float64(r.bytes)/(1<<20)/r.took.Seconds())
}

func benchReadPath(b *testing.B) {
	e := newEnv(b)
	big := pattern{seed: 1, size: bigSize}
	e.putStream("big.bin", big.reader(), big.size)
	e.putTree(100, 100)
	local := filepath.Join(b.TempDir(), "local.bin")
	writeLocal(b, local, big)

	var rows []benchRow
	add := func(r benchRow) *benchRow { rows = append(rows, r); return &rows[len(rows)-1] }

	// Raw limit: 8 parallel ranged GETs of 8 MiB.
	start := time.Now()
	n := rawParallelGet(b, e, "big.bin", big.size, 8, 8<<20)
	rawGet := add(benchRow{workload: "cold read 1 GiB", system: "raw GET x8", took: time.Since(start), bytes: n})

	m := e.mount(mountOpt{args: []string{"--cache-size", "2GiB"}})
	dropPageCache(b)
	before := m.requests()
	start = time.Now()
	n = readAll(b, m.path("big.bin"))
	add(benchRow{workload: "cold read 1 GiB", system: "nimbus", took: time.Since(start), bytes: n, requests: delta(before, m.requests()), limit: rawGet})

	dropPageCache(b)
	start = time.Now()
	n = readAll(b, local)
	localRead := add(benchRow{workload: "warm read 1 GiB", system: "local file", took: time.Since(start), bytes: n})
	dropPageCache(b)
	before = m.requests()
	start = time.Now()
	n = readAll(b, m.path("big.bin"))
	add(benchRow{workload: "warm read 1 GiB", system: "nimbus", took: time.Since(start), bytes: n, requests: delta(before, m.requests()), limit: localRead})
	m.unmount()

	start = time.Now()
	pages := rawFlatList(b, e)
	rawList := add(benchRow{workload: "ls -lR 10k objects", system: "raw flat LIST", took: time.Since(start), requests: map[string]int64{"ListObjectsV2": pages}})
	m = e.mount(mountOpt{args: []string{"--dir-ttl", "10m"}})
	before = m.requests()
	start = time.Now()
	run(b, 5*time.Minute, "sh", "-c", "ls -lR "+m.dir+" >/dev/null")
	add(benchRow{workload: "ls -lR 10k objects", system: "nimbus cold", took: time.Since(start), requests: delta(before, m.requests()), limit: rawList})
	before = m.requests()
	start = time.Now()
	run(b, 5*time.Minute, "sh", "-c", "ls -lR "+m.dir+" >/dev/null")
	add(benchRow{workload: "ls -lR 10k objects", system: "nimbus warm", took: time.Since(start), requests: delta(before, m.requests()), limit: rawList})

	printBenchTable(b, rows)
}

// printBenchTable prints the rows with their ratio to the limit, and
// reports each ratio as a benchmark metric.
func printBenchTable(b *testing.B, rows []benchRow) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "workload\tsystem\ttime\tthroughput\trequests\tvs limit")
	for _, r := range rows {
		ratio := "limit"
		if r.limit != nil {
			if r.bytes > 0 {
				// Throughput ratio: higher is better.
				ratio = fmt.Sprintf("%.2fx throughput", r.limit.took.Seconds()/r.took.Seconds())
			} else {
				// Time ratio: lower is better.
				ratio = fmt.Sprintf("%.2fx time", r.took.Seconds()/r.limit.took.Seconds())
			}
			b.ReportMetric(r.took.Seconds()/r.limit.took.Seconds(), metricName(r))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.workload, r.system, r.took.Round(time.Millisecond), r.throughput(), formatRequests(r.requests), ratio)
	}
	w.Flush()
}

func metricName(r benchRow) string {
	name := r.workload + "/" + r.system
	out := make([]rune, 0, len(name))
	for _, c := range name {
		if c == ' ' {
			c = '_'
		}
		out = append(out, c)
	}
	return string(out) + "-time-ratio"
}

func formatRequests(req map[string]int64) string {
	if len(req) == 0 {
		return "-"
	}
	s := ""
	for _, op := range []string{"ListObjectsV2", "HeadObject", "GetObject"} {
		if req[op] > 0 {
			if s != "" {
				s += " "
			}
			s += fmt.Sprintf("%s=%d", op, req[op])
		}
	}
	if s == "" {
		return "none"
	}
	return s
}

func writeLocal(tb testing.TB, path string, p pattern) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(f, p.reader()); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
}

func readAll(tb testing.TB, path string) int64 {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	n, err := io.CopyBuffer(io.Discard, f, make([]byte, 1<<20))
	if err != nil {
		tb.Fatalf("read %s: %v", path, err)
	}
	return n
}

// rawParallelGet reads key with `workers` parallel ranged GETs of `chunk`
// bytes: the limit a client on this machine can reach.
func rawParallelGet(tb testing.TB, e *env, key string, size int64, workers int, chunk int64) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	offs := make(chan int64)
	var total int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for off := range offs {
				end := min(off+chunk, size) - 1
				out, err := e.s3.GetObject(ctx, &awss3.GetObjectInput{
					Bucket: &e.bucket, Key: &key, Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, end)),
				})
				var n int64
				if err == nil {
					n, err = io.CopyBuffer(io.Discard, out.Body, buf)
					out.Body.Close()
				}
				mu.Lock()
				total += n
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	for off := int64(0); off < size; off += chunk {
		offs <- off
	}
	close(offs)
	wg.Wait()
	if firstErr != nil {
		tb.Fatal(firstErr)
	}
	return total
}

// rawFlatList lists every key of the bucket without a delimiter and returns
// the number of requests.
func rawFlatList(tb testing.TB, e *env) int64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p := awss3.NewListObjectsV2Paginator(e.s3, &awss3.ListObjectsV2Input{Bucket: &e.bucket})
	var pages, keys int64
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		pages++
		keys += int64(len(out.Contents))
	}
	if keys < 10000 {
		tb.Fatalf("flat list found %d keys, want >= 10000", keys)
	}
	return pages
}
