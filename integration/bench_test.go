package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sys/unix"

	nimbuss3 "github.com/nimbus-fs/nimbus/backend/s3"
	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

// BenchmarkFileSystems compares, on one MinIO, one dataset and one run (so
// that the ratios hold on a noisy machine), four ways to use the bucket:
//
//   - raw: the limit, the SDK doing the least a client must (parallel ranged
//     GETs, one flat ListObjectsV2, 16 PUTs in parallel, a multipart
//     upload) and plain reads of a local file holding the same bytes;
//   - nimbus: the binary under test, mounted as the other tests mount it;
//   - rclone: `rclone mount --vfs-cache-mode full`;
//   - s3fs: `s3fs -o use_cache=…`.
//
// Each system gets a fresh mount and a fresh cache folder for each group of
// workloads (see benchPlans), and every system, raw included, uses a
// counting proxy in front of MinIO as its endpoint, so that the requests
// and bytes in the table are what the server saw. The table is printed as
// Markdown at the end, and written to $NIMBUS_BENCH_OUT if set.
//
// Run it with scripts/bench, as root (it drops the page cache). Knobs:
// NIMBUS_BENCH_LIMIT (time limit per workload, default 3m),
// NIMBUS_BENCH_SYSTEMS (e.g. "raw,nimbus"; default all: raw, nimbus,
// nimbus-pt (passthrough on, warm read workloads only), rclone, s3fs) and
// NIMBUS_BENCH_WORKLOADS (comma-separated words, e.g. "random,sequential
// read": only the groups of workloads one of whose names holds one of them;
// default all).
func BenchmarkFileSystems(b *testing.B) {
	for range b.N {
		benchFileSystems(b)
	}
}

// The dataset.
const (
	bigKey       = "big.bin" // bigSize bytes of pattern{seed: 1}
	treePrefix   = "tree/"   // treeDirs directories of treeFiles small objects
	treeDirs     = 100
	treeFiles    = 100
	parallelDir  = "par/" // parallelFiles objects of parallelSize bytes
	parallelSize = 256 << 20

	parallelFiles = 4
	randomReads   = 2000
	randomSize    = 4 << 10
	smallFiles    = 1000
	smallSize     = 4 << 10
)

// The workloads, in table order.
const (
	wColdRead     = "cold sequential read, 1 GiB"
	wWarmRead     = "warm read, 1 GiB (disk cache; page cache dropped)"
	wPageRead     = "repeated read, 1 GiB (page cache)"
	wRandomCold   = "2,000 random 4 KiB preads, cold"
	wRandomWarm   = "2,000 random 4 KiB preads, warm (page cache dropped)"
	wHead         = "head -c 1 of the 1 GiB object"
	wLsCold       = "ls -lR, 10,000 objects in 100 dirs, cold"
	wLsWarm       = "ls -lR again, warm"
	wFindCold     = "find, 10,000 objects, cold"
	wParallel     = "4 parallel readers, 4 x 256 MiB, cold"
	wCreatesClose = "1,000 x 4 KiB creates, until last close()"
	wCreatesDone  = "1,000 x 4 KiB creates, until uploaded"
	wWriteClose   = "1 GiB sequential write, until close()"
	wWriteDone    = "1 GiB sequential write, until uploaded"
	wUntar        = "untar of Go's src/ (no cmd/, testdata/), until uploaded"
	wRsync        = "rsync -a of the same tree, until uploaded"
)

var benchWorkloads = []string{
	wColdRead, wWarmRead, wPageRead, wRandomCold, wRandomWarm, wHead,
	wLsCold, wLsWarm, wFindCold, wParallel,
	wCreatesClose, wCreatesDone, wWriteClose, wWriteDone, wUntar, wRsync,
}

// bench is one run of the comparison.
type bench struct {
	b       *testing.B
	e       *env
	proxy   *s3proxy.Server
	s3      *awss3.Client // through the proxy: what the raw rows use
	limit   time.Duration // per workload
	local   string        // a local file holding the bytes of bigKey
	offsets []int64       // of the random preads, the same for every system
	rows    map[string]map[string]*benchRow
	untar   *untarSet // the untar workload's tree, once packed
}

func benchFileSystems(b *testing.B) {
	started := time.Now()
	e := newEnv(b)
	dropPageCache(b) // skips the benchmark unless root, before any setup
	limit := 3 * time.Minute
	if s := os.Getenv("NIMBUS_BENCH_LIMIT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("NIMBUS_BENCH_LIMIT: %v", err)
		}
		limit = d
	}
	proxy, err := s3proxy.Start(e.minio.Endpoint)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := proxy.Close(); err != nil {
			b.Logf("close proxy: %v", err)
		}
	})
	bx := &bench{
		b: b, e: e, proxy: proxy, limit: limit,
		s3: awss3.New(e.s3.Options(), func(o *awss3.Options) {
			o.BaseEndpoint = aws.String(proxy.URL)
			o.APIOptions = append(o.APIOptions, nimbuss3.UnsignedPayload) // as nimbus uploads to a loopback endpoint
		}),
		rows: make(map[string]map[string]*benchRow),
	}
	bx.putDataset()

	systems := []benchSystem{bx.nimbusSystem(), bx.nimbusPassthroughSystem(), bx.rcloneSystem(), bx.s3fsSystem()}
	only := os.Getenv("NIMBUS_BENCH_SYSTEMS")
	chosen := func(name string) bool { return only == "" || strings.Contains(","+only+",", ","+name+",") }
	if chosen("raw") {
		for _, p := range chosenPlans(rawPlans()) {
			bx.runPlan("raw", nil, p)
		}
	}
	for _, sys := range systems {
		if chosen(sys.name) {
			bx.runSystem(sys)
		}
	}
	table := bx.table(systems, chosen, time.Since(started))
	fmt.Print(table)
	if out := os.Getenv("NIMBUS_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			b.Error(err)
		}
	}
}

// putDataset stores the objects every workload reads, straight to MinIO.
func (bx *bench) putDataset() {
	e := bx.e
	big := pattern{seed: 1, size: bigSize}
	e.putStream(bigKey, big.reader(), big.size)
	for i := range parallelFiles {
		p := pattern{seed: uint64(2 + i), size: parallelSize}
		e.putStream(fmt.Sprintf("%sp%d", parallelDir, i), p.reader(), p.size)
	}
	objs := make(map[string]io.ReadSeeker, treeDirs*treeFiles)
	sizes := make(map[string]int64, treeDirs*treeFiles)
	for d := range treeDirs {
		for f := range treeFiles {
			key := fmt.Sprintf("%sd%03d/f%03d", treePrefix, d, f)
			data := []byte(strings.Repeat(key, 1+(d+f)%7))
			objs[key], sizes[key] = bytes.NewReader(data), int64(len(data))
		}
	}
	e.putAll(objs, sizes)

	bx.local = bx.b.TempDir() + "/big.bin"
	writeLocal(bx.b, bx.local, big)
	rng := rand.New(rand.NewPCG(42, 42))
	bx.offsets = make([]int64, randomReads)
	for i := range bx.offsets {
		bx.offsets[i] = rng.Int64N(bigSize/randomSize) * randomSize
	}
}

// outcome is what one workload did.
type outcome struct {
	took  time.Duration // 0: the time since the step started
	bytes int64         // read or written, for MiB/s
	ops   int64         // done, for a rate in unit, when bytes is 0
	unit  string        // of that rate: "preads/s", "files/s"…
	p50   time.Duration // median time of one operation, if measured
	note  string        // anything odd, e.g. a listing with files missing
}

// benchRow is one cell group of the table: one workload on one system.
type benchRow struct {
	outcome
	workload, system string
	counts           s3proxy.Counts // at the server, during the workload
	rss              int64          // peak RSS of the mount process; 0 for raw
	cpu              time.Duration  // user+system CPU of the mount process during the workload; 0 for raw
	status           string         // "" if measured; else what to show instead
	capped           bool           // stopped at the time limit
}

// step is one timed run. It calls lap once for each of its workloads, in
// order, as each one ends; a step with no workloads is untimed preparation.
type step struct {
	workloads     []string
	dropPageCache bool // before the clock starts (MinIO's cache goes too, for every system alike)
	run           func(s subject, ctx context.Context, lap func(outcome)) error
}

// plan is the steps that share one fresh mount, in order.
type plan []step

// chosenPlans keeps the plans that NIMBUS_BENCH_WORKLOADS asks for: those
// with a workload whose name contains one of its comma-separated words.
func chosenPlans(plans []plan) []plan {
	only := os.Getenv("NIMBUS_BENCH_WORKLOADS")
	if only == "" {
		return plans
	}
	var out []plan
	for _, p := range plans {
		if slices.ContainsFunc(p, func(s step) bool {
			return slices.ContainsFunc(s.workloads, func(w string) bool {
				return slices.ContainsFunc(strings.Split(only, ","), func(word string) bool {
					return word != "" && strings.Contains(w, word)
				})
			})
		}) {
			out = append(out, p)
		}
	}
	return out
}

// runSystem runs every plan on its own fresh mount of sys.
func (bx *bench) runSystem(sys benchSystem) {
	for _, p := range chosenPlans(benchPlans()) {
		if !sys.runs(p) {
			continue
		}
		if sys.missing != "" {
			bx.skipPlan(sys.name, p, sys.missing)
			continue
		}
		m, err := sys.mount()
		if err != nil {
			bx.report(sys.name, "mount: %v", err)
			bx.skipPlan(sys.name, p, "mount failed")
			continue
		}
		bx.runPlan(sys.name, m, p)
		if err := m.unmount(); err != nil {
			bx.report(sys.name, "unmount: %v", err)
		}
	}
}

// runs reports whether sys runs plan p: all of them, or those holding
// one of its only workloads.
func (sys benchSystem) runs(p plan) bool {
	return sys.only == nil || slices.ContainsFunc(p, func(s step) bool {
		return slices.ContainsFunc(s.workloads, func(w string) bool { return slices.Contains(sys.only, w) })
	})
}

// runPlan runs the steps of p on m (nil for raw). Once a step fails or hits
// the time limit, the rest are not measured: a warm read after a cold one
// that did not finish would not be warm.
func (bx *bench) runPlan(system string, m benchMount, p plan) {
	for i, s := range p {
		if !bx.measure(system, m, s) {
			bx.skipPlan(system, p[i+1:], "not run: an earlier step on this mount did not finish")
			return
		}
	}
}

func (bx *bench) skipPlan(system string, p plan, why string) {
	for _, s := range p {
		for _, w := range s.workloads {
			bx.record(&benchRow{workload: w, system: system, status: why})
		}
	}
}

// measure runs one step and records its rows. The step's context ends at
// the time limit; a step still blocked 20 s later (in a read that a slow
// daemon never answers) is unblocked by aborting the mount.
func (bx *bench) measure(system string, m benchMount, s step) bool {
	if s.dropPageCache {
		dropPageCache(bx.b)
	} else {
		// The write-back a previous step left (a cache filled by a read)
		// is not this step's: it starts with none, as a cold one does.
		unix.Sync()
	}
	ctx, cancel := context.WithTimeout(context.Background(), bx.limit)
	defer cancel()
	if m != nil {
		watchdog := time.AfterFunc(bx.limit+20*time.Second, m.abort)
		defer watchdog.Stop()
	}
	laps := 0
	before := bx.proxy.Snapshot()
	var cpuBefore time.Duration
	if m != nil {
		cpuBefore = processCPU(m.pid())
	}
	start := time.Now()
	lap := func(o outcome) {
		if laps == len(s.workloads) {
			panic(fmt.Sprintf("step of %v lapped %d times", s.workloads, laps+1))
		}
		if o.took == 0 {
			o.took = time.Since(start)
		}
		r := &benchRow{outcome: o, workload: s.workloads[laps], system: system, counts: bx.proxy.Snapshot().Sub(before)}
		if m != nil {
			r.rss = peakRSS(m.pid())
			r.cpu = processCPU(m.pid()) - cpuBefore
		}
		bx.record(r)
		laps++
	}
	err := s.run(subject{bench: bx, system: system, m: m}, ctx, lap)
	if err == nil && laps < len(s.workloads) {
		err = fmt.Errorf("step ended after %d of its workloads %v", laps, s.workloads)
	}
	if err == nil {
		return true
	}
	status := "error"
	if ctx.Err() != nil {
		status = "> " + bx.limit.String()
	}
	for _, w := range s.workloads[laps:] {
		bx.record(&benchRow{workload: w, system: system, status: status, capped: ctx.Err() != nil})
	}
	bx.report(system, "%v: %s: %v", s.workloads, status, err)
	return false
}

// report notes a failure: nimbus's and the limit's fail the benchmark, the
// other systems' only show in the table and the log.
func (bx *bench) report(system, format string, args ...any) {
	msg := system + ": " + fmt.Sprintf(format, args...)
	if system == "nimbus" || system == "raw" {
		bx.b.Error(msg)
	} else {
		bx.b.Log(msg)
	}
}

// record keeps a row for the table, and says how far the run is on stderr.
func (bx *bench) record(r *benchRow) {
	if bx.rows[r.workload] == nil {
		bx.rows[r.workload] = make(map[string]*benchRow)
	}
	bx.rows[r.workload][r.system] = r
	result := r.status
	if result == "" {
		result = formatDuration(r.took) + ", " + r.throughput()
	}
	fmt.Fprintf(os.Stderr, "bench: %-7s %-55s %s\n", r.system, r.workload, result)
}

// table renders the rows as Markdown.
func (bx *bench) table(systems []benchSystem, chosen func(string) bool, took time.Duration) string {
	var uname unix.Utsname
	release := "?"
	if unix.Uname(&uname) == nil {
		release = unix.ByteSliceToString(uname.Release[:])
	}
	var w strings.Builder
	fmt.Fprintf(&w, "\n## File systems over S3: raw limit, nimbus, rclone, s3fs\n\n")
	fmt.Fprintf(&w, "One MinIO and one dataset, one run (%s, %d CPUs, Linux %s; the whole run took %s).\n\n",
		time.Now().Format("2006-01-02 15:04"), runtime.NumCPU(), release, took.Round(time.Second))
	fmt.Fprintf(&w, "**vs raw** = raw time / system time (= system throughput / raw throughput): "+
		"bigger is better, 1.00 = at the limit. Requests and bytes are what the server saw "+
		"(a counting proxy in front of MinIO is every system's endpoint, raw's too). "+
		"**peak RSS** is VmHWM of the mount process after the workload. "+
		"**CPU/MiB** is the user+system CPU time the mount process spent during the workload (/proc/PID/stat), per MiB read or written. "+
		"Every step starts after a sync(2), untimed; steps marked cold also drop the page cache, MinIO's included, for every system alike. "+
		"Time limit per workload: %s.\n\n", bx.limit)

	ops := s3proxy.Ops()
	head := []string{"workload", "system", "time", "throughput"}
	for _, op := range ops {
		head = append(head, op.String())
	}
	head = append(head, "bytes GET", "bytes PUT", "peak RSS", "CPU/MiB", "vs raw", "notes")
	fmt.Fprintf(&w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat(" --- |", len(head)))
	names := []string{"raw"}
	only := map[string][]string{}
	for _, s := range systems {
		names = append(names, s.name)
		only[s.name] = s.only
	}
	for _, wl := range benchWorkloads {
		raw := bx.rows[wl]["raw"]
		for _, name := range names {
			if !chosen(name) || (only[name] != nil && !slices.Contains(only[name], wl)) {
				continue
			}
			r := bx.rows[wl][name]
			if r == nil {
				r = &benchRow{workload: wl, system: name, status: "not run"}
			}
			fmt.Fprintf(&w, "| %s |\n", strings.Join(r.cells(raw, bx.limit), " | "))
		}
	}

	fmt.Fprintf(&w, "\nraw rows (the limit): cold read = 8 parallel ranged GETs of 8 MiB; warm and repeated read, warm preads = the same bytes in a local file; "+
		"cold preads = one 4 KiB ranged GET at a time; head = one 1-byte ranged GET; ls/find = one flat ListObjectsV2 of tree/ (1,000 keys a page); "+
		"4 readers = 4 objects at once, 2 ranged GETs of 8 MiB in flight each; creates = 1,000 PUTs 16 at a time; write = SDK multipart upload, 16 MiB parts 8 at a time "+
		"(a raw write is uploaded when it returns, so both its rows show the same run); untar, rsync = the same files PUT 16 at a time, read from the source folder. "+
		"Raw bodies are sent as nimbus sends them to a loopback endpoint: unsigned (UNSIGNED-PAYLOAD) and without a checksum.\n\n")
	fmt.Fprintf(&w, "head -c 1: bytes GET are counted 2 s after head returns, to include read-ahead. \"until uploaded\": nimbus = `nimbus sync`, then (every system) "+
		"the bucket is polled until all objects are there with their size. "+
		"untar: `tar -x --no-same-owner` of Go's src/ without cmd/ and the testdata/ folders (packed once; the notes give its files and bytes) into a fresh folder of the mount. "+
		"rsync: `rsync -a --no-owner --no-group` of the same files, from Go's src/, into a fresh folder of the mount.\n\n")
	for _, s := range systems {
		if chosen(s.name) {
			about := s.about
			if s.missing != "" {
				about = s.missing
			}
			fmt.Fprintf(&w, "- %s: %s\n", s.name, about)
		}
	}
	return w.String()
}

// cells formats a row; raw is the same workload's limit row (may be nil).
func (r *benchRow) cells(raw *benchRow, limit time.Duration) []string {
	c := []string{r.workload, r.system}
	ops := s3proxy.Ops()
	if r.status != "" {
		c = append(c, r.status)
		for range len(ops) + 7 {
			c = append(c, "")
		}
		if r.capped && raw != nil && raw.status == "" {
			c[len(c)-2] = fmt.Sprintf("< %.2f", raw.took.Seconds()/limit.Seconds())
		}
		return c
	}
	c = append(c, formatDuration(r.took), r.throughput())
	for _, op := range ops {
		c = append(c, fmt.Sprint(r.counts.Requests[op]))
	}
	c = append(c, formatBytes(r.counts.GetBytes), formatBytes(r.counts.PutBytes))
	if r.rss > 0 {
		c = append(c, formatBytes(r.rss))
	} else {
		c = append(c, "-")
	}
	if r.system != "raw" && r.bytes > 0 {
		c = append(c, fmt.Sprintf("%.1f ms", r.cpu.Seconds()*1000/(float64(r.bytes)/(1<<20))))
	} else {
		c = append(c, "-")
	}
	switch {
	case r.system == "raw":
		c = append(c, "1.00 (limit)")
	case raw == nil || raw.status != "":
		c = append(c, "-")
	default:
		c = append(c, fmt.Sprintf("%.2f", raw.took.Seconds()/r.took.Seconds()))
	}
	note := r.note
	if r.counts.Errors > 0 {
		note = strings.TrimSpace(note + fmt.Sprintf(" %d proxy errors", r.counts.Errors))
	}
	return append(c, note)
}

func (r *benchRow) throughput() string {
	secs := r.took.Seconds()
	switch {
	case r.bytes > 0:
		return fmt.Sprintf("%.0f MiB/s", float64(r.bytes)/(1<<20)/secs)
	case r.ops > 0 && r.p50 > 0:
		return fmt.Sprintf("%.0f %s, p50 %s", float64(r.ops)/secs, r.unit, formatDuration(r.p50))
	case r.ops > 0:
		return fmt.Sprintf("%.0f %s", float64(r.ops)/secs, r.unit)
	}
	return "-"
}

func formatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func formatBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
