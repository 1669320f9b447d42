package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// subject is what a step runs against: a mounted system, or raw (m nil).
type subject struct {
	*bench
	system string
	m      benchMount
}

// benchPlans are the workloads of a mounted system, grouped by mount: each
// plan gets a fresh mount with a fresh cache folder, so that "cold" means
// cold, and its later steps see what the earlier ones left (warm after cold).
func benchPlans() []plan {
	return []plan{
		{{workloads: []string{wHead}, dropPageCache: true, run: subject.headByte}},
		{
			{workloads: []string{wColdRead}, dropPageCache: true, run: subject.readBig},
			{workloads: []string{wWarmRead}, dropPageCache: true, run: subject.readBig},
			{workloads: []string{wPageRead}, run: subject.readBig},
		},
		{
			{workloads: []string{wRandomCold}, dropPageCache: true, run: subject.randomReads},
			{workloads: []string{wRandomWarm}, dropPageCache: true, run: subject.randomReads},
		},
		{
			{workloads: []string{wLsCold}, dropPageCache: true, run: subject.lsTree},
			{workloads: []string{wLsWarm}, run: subject.lsTree},
		},
		{{workloads: []string{wFindCold}, dropPageCache: true, run: subject.findTree}},
		{{workloads: []string{wParallel}, dropPageCache: true, run: subject.parallelReads}},
		{
			{run: subject.makeWriteDir},
			{workloads: []string{wCreatesClose, wCreatesDone}, run: subject.createSmall},
			{workloads: []string{wWriteClose, wWriteDone}, run: subject.writeBig},
		},
		{
			{run: subject.makeUntarDir},
			{workloads: []string{wUntar}, run: subject.untarTree},
		},
		{
			{run: subject.makeRsyncDir},
			{workloads: []string{wRsync}, run: subject.rsyncTree},
		},
	}
}

// rawPlans are the limits of the same workloads, with the same page-cache
// drops.
func rawPlans() []plan {
	return []plan{
		{{workloads: []string{wHead}, dropPageCache: true, run: subject.rawHead}},
		{
			{workloads: []string{wColdRead}, dropPageCache: true, run: subject.rawColdRead},
			{workloads: []string{wWarmRead}, dropPageCache: true, run: subject.readLocal},
			{workloads: []string{wPageRead}, run: subject.readLocal},
		},
		{
			{workloads: []string{wRandomCold}, dropPageCache: true, run: subject.rawRandomReads},
			{workloads: []string{wRandomWarm}, dropPageCache: true, run: subject.randomReads},
		},
		{
			{workloads: []string{wLsCold}, dropPageCache: true, run: subject.rawList},
			{workloads: []string{wLsWarm}, run: subject.rawList},
		},
		{{workloads: []string{wFindCold}, dropPageCache: true, run: subject.rawList}},
		{{workloads: []string{wParallel}, dropPageCache: true, run: subject.rawParallelReads}},
		{
			{workloads: []string{wCreatesClose, wCreatesDone}, run: subject.rawCreates},
			{workloads: []string{wWriteClose, wWriteDone}, run: subject.rawWrite},
		},
		{{workloads: []string{wUntar}, run: subject.rawUntar}},
		{{workloads: []string{wRsync}, run: subject.rawRsync}},
	}
}

// bigPattern is the content of bigKey.
var bigPattern = pattern{seed: 1, size: bigSize}

// bigPath is bigKey in the mount, or raw's local copy of it.
func (s subject) bigPath() string {
	if s.m == nil {
		return s.local
	}
	return s.m.path(bigKey)
}

func (s subject) readBig(ctx context.Context, lap func(outcome)) error {
	n, err := readFile(ctx, s.bigPath())
	if err != nil {
		return err
	}
	if n != bigSize {
		return fmt.Errorf("read %d bytes of %s, want %d", n, bigKey, bigSize)
	}
	lap(outcome{bytes: n})
	return nil
}

func (s subject) readLocal(ctx context.Context, lap func(outcome)) error { return s.readBig(ctx, lap) }

func (s subject) rawColdRead(ctx context.Context, lap func(outcome)) error {
	n, err := rawParallelGet(ctx, s.s3, s.e.bucket, bigKey, bigSize, 8, 8<<20)
	if err != nil {
		return err
	}
	lap(outcome{bytes: n})
	return nil
}

// randomReads preads 4 KiB at each of the offsets, one after the other, as
// a database or an index lookup would, and checks every byte.
func (s subject) randomReads(ctx context.Context, lap func(outcome)) error {
	f, err := os.Open(s.bigPath())
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, randomSize)
	took := make([]time.Duration, 0, len(s.offsets))
	for _, off := range s.offsets {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		if _, err := f.ReadAt(buf, off); err != nil {
			return fmt.Errorf("pread %d at %d: %w", len(buf), off, err)
		}
		took = append(took, time.Since(start))
		if !bytes.Equal(buf, bigPattern.bytes(off, randomSize)) {
			return fmt.Errorf("pread at %d returned wrong bytes", off)
		}
	}
	lap(outcome{ops: int64(len(took)), unit: "preads/s", p50: median(took)})
	return nil
}

// rawRandomReads is the cold limit: one 4 KiB ranged GET per pread.
func (s subject) rawRandomReads(ctx context.Context, lap func(outcome)) error {
	took := make([]time.Duration, 0, len(s.offsets))
	for _, off := range s.offsets {
		start := time.Now()
		got, err := rawRange(ctx, s.s3, s.e.bucket, bigKey, off, randomSize)
		if err != nil {
			return err
		}
		took = append(took, time.Since(start))
		if !bytes.Equal(got, bigPattern.bytes(off, randomSize)) {
			return fmt.Errorf("GET of %d at %d returned wrong bytes", randomSize, off)
		}
	}
	lap(outcome{ops: int64(len(took)), unit: "preads/s", p50: median(took)})
	return nil
}

// headByte is time to first byte: `head -c 1` of the big object. The
// bytes the server sent are counted 2 s after head returns, so that
// read-ahead started by that one byte shows.
func (s subject) headByte(ctx context.Context, lap func(outcome)) error {
	start := time.Now()
	out, err := runCtx(ctx, "head", "-c", "1", s.m.path(bigKey))
	took := time.Since(start)
	if err != nil {
		return err
	}
	if !bytes.Equal(out, bigPattern.bytes(0, 1)) {
		return fmt.Errorf("head -c 1 = %x, want %x", out, bigPattern.bytes(0, 1))
	}
	select {
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
		return ctx.Err()
	}
	lap(outcome{took: took})
	return nil
}

func (s subject) rawHead(ctx context.Context, lap func(outcome)) error {
	got, err := rawRange(ctx, s.s3, s.e.bucket, bigKey, 0, 1)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, bigPattern.bytes(0, 1)) {
		return fmt.Errorf("GET of byte 0 = %x, want %x", got, bigPattern.bytes(0, 1))
	}
	lap(outcome{})
	return nil
}

// lsTree runs ls -lR over the tree and counts the regular files it shows.
func (s subject) lsTree(ctx context.Context, lap func(outcome)) error {
	files := lineCounter{first: '-'}
	if err := runTo(ctx, &files, "ls", "-lR", s.m.path(treePrefix)); err != nil {
		return err
	}
	lap(outcome{ops: treeDirs * treeFiles, unit: "files/s", note: seen(files.n, treeDirs*treeFiles, "files")})
	return nil
}

// findTree runs find over the tree and counts every name it prints.
func (s subject) findTree(ctx context.Context, lap func(outcome)) error {
	var names lineCounter
	if err := runTo(ctx, &names, "find", s.m.path(treePrefix)); err != nil {
		return err
	}
	const want = 1 + treeDirs + treeDirs*treeFiles
	lap(outcome{ops: treeDirs * treeFiles, unit: "files/s", note: seen(names.n, want, "names")})
	return nil
}

func (s subject) rawList(ctx context.Context, lap func(outcome)) error {
	keys, err := rawFlatList(ctx, s.s3, s.e.bucket, treePrefix)
	if err != nil {
		return err
	}
	lap(outcome{ops: treeDirs * treeFiles, unit: "files/s", note: seen(keys, treeDirs*treeFiles, "keys")})
	return nil
}

// seen is a note when a listing did not show everything.
func seen(got, want int64, what string) string {
	if got == want {
		return ""
	}
	return fmt.Sprintf("showed %d of %d %s", got, want, what)
}

// parallelReads reads the 4 parallel objects at once, one reader each.
func (s subject) parallelReads(ctx context.Context, lap func(outcome)) error {
	return s.inParallel(lap, func(key string) (int64, error) { return readFile(ctx, s.m.path(key)) })
}

func (s subject) rawParallelReads(ctx context.Context, lap func(outcome)) error {
	return s.inParallel(lap, func(key string) (int64, error) {
		return rawParallelGet(ctx, s.s3, s.e.bucket, key, parallelSize, 2, 8<<20)
	})
}

func (s subject) inParallel(lap func(outcome), read func(key string) (int64, error)) error {
	var wg sync.WaitGroup
	sizes := make([]int64, parallelFiles)
	errs := make([]error, parallelFiles)
	for i := range parallelFiles {
		wg.Go(func() { sizes[i], errs[i] = read(fmt.Sprintf("%sp%d", parallelDir, i)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	var total int64
	for i, n := range sizes {
		if n != parallelSize {
			return fmt.Errorf("read %d bytes of %sp%d, want %d", n, parallelDir, i, parallelSize)
		}
		total += n
	}
	lap(outcome{bytes: total})
	return nil
}

// readFile reads a whole file in 1 MiB reads, as cp or cat would, until ctx
// ends.
func readFile(ctx context.Context, path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := f.Read(buf)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("read %s at %d: %w", path, total, err)
		}
	}
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

// rawParallelGet reads key with `workers` parallel ranged GETs of `chunk`
// bytes: the limit a client on this machine can reach.
func rawParallelGet(ctx context.Context, client *awss3.Client, bucket, key string, size int64, workers int, chunk int64) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
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
				out, err := client.GetObject(ctx, &awss3.GetObjectInput{
					Bucket: &bucket, Key: &key, Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, end)),
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
					cancel()
				}
				mu.Unlock()
			}
		})
	}
	for off := int64(0); off < size && ctx.Err() == nil; off += chunk {
		offs <- off
	}
	close(offs)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return total, firstErr
}

// rawRange GETs n bytes of key at off.
func rawRange(ctx context.Context, client *awss3.Client, bucket, key string, off, n int64) ([]byte, error) {
	out, err := client.GetObject(ctx, &awss3.GetObjectInput{
		Bucket: &bucket, Key: &key, Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, off+n-1)),
	})
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}

// rawFlatList lists every key under prefix without a delimiter (1,000 keys
// a request) and returns how many there are.
func rawFlatList(ctx context.Context, client *awss3.Client, bucket, prefix string) (int64, error) {
	p := awss3.NewListObjectsV2Paginator(client, &awss3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
	var keys int64
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return keys, err
		}
		for _, o := range out.Contents {
			if !nimbusOwnKey(aws.ToString(o.Key)) {
				keys++
			}
		}
	}
	return keys, nil
}

// runTo runs a command until ctx ends, with its output going to w.
func runTo(ctx context.Context, w io.Writer, name string, args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = w, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, tail(stderr.String()))
	}
	return nil
}

// lineCounter counts the non-empty lines written to it, or only those that
// start with first if it is set.
type lineCounter struct {
	first byte
	n     int64
	mid   bool // within a line
}

func (c *lineCounter) Write(p []byte) (int, error) {
	for _, b := range p {
		switch {
		case c.mid && b == '\n':
			c.mid = false
		case !c.mid && b != '\n':
			c.mid = true
			if c.first == 0 || b == c.first {
				c.n++
			}
		}
	}
	return len(p), nil
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
