package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// writePrefix is where a system writes: a folder of its own, so that the
// systems' writes never meet, and never show in the listed tree.
func (s subject) writePrefix() string { return "w-" + s.system + "/" }

func (s subject) makeWriteDir(ctx context.Context, lap func(outcome)) error {
	return os.MkdirAll(s.m.path(s.writePrefix()+"small"), 0o755)
}

// createSmall writes 1,000 new 4 KiB files, one after the other, as an
// untar or a build would. The first lap is when the last close() returns;
// the second when the bucket holds all of them.
func (s subject) createSmall(ctx context.Context, lap func(outcome)) error {
	data := bytes.Repeat([]byte("n"), smallSize)
	prefix := s.writePrefix() + "small/"
	for i := range smallFiles {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := os.WriteFile(s.m.path(fmt.Sprintf("%sf%04d", prefix, i)), data, 0o644); err != nil {
			return err
		}
	}
	lap(outcome{ops: smallFiles, unit: "files/s"})
	if err := s.m.flush(ctx); err != nil {
		return err
	}
	if err := s.waitObjects(ctx, prefix, smallFiles, smallSize); err != nil {
		return err
	}
	lap(outcome{ops: smallFiles, unit: "files/s"})
	return nil
}

// writeBig writes a 1 GiB file in 1 MiB writes, as cp would. The first lap
// is when close() returns; the second when the bucket holds it.
func (s subject) writeBig(ctx context.Context, lap func(outcome)) error {
	key := s.writePrefix() + bigKey
	f, err := os.Create(s.m.path(key))
	if err != nil {
		return err
	}
	content := bigWriteContent()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < bigSize; off += int64(len(buf)) {
		if err := ctx.Err(); err != nil {
			f.Close()
			return err
		}
		if _, err := content.ReadAt(buf, off); err != nil {
			f.Close()
			return err
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return fmt.Errorf("write %s at %d: %w", key, off, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", key, err)
	}
	lap(outcome{bytes: bigSize})
	if err := s.m.flush(ctx); err != nil {
		return err
	}
	if err := s.waitObjects(ctx, key, 1, bigSize); err != nil {
		return err
	}
	lap(outcome{bytes: bigSize})
	return nil
}

// rawCreates is the limit of createSmall: 1,000 PUTs, 16 at a time. A PUT
// is uploaded when it returns, so both laps are the same run.
func (s subject) rawCreates(ctx context.Context, lap func(outcome)) error {
	if err := rawPuts(ctx, s.s3, s.e.bucket, s.writePrefix()+"small/", smallFiles, bytes.Repeat([]byte("n"), smallSize)); err != nil {
		return err
	}
	lap(outcome{ops: smallFiles, unit: "files/s"})
	lap(outcome{ops: smallFiles, unit: "files/s"})
	return nil
}

// rawWrite is the limit of writeBig: the SDK's multipart upload.
func (s subject) rawWrite(ctx context.Context, lap func(outcome)) error {
	if err := rawMultipart(ctx, s.s3, s.e.bucket, s.writePrefix()+bigKey, io.NewSectionReader(bigWriteContent(), 0, bigSize)); err != nil {
		return err
	}
	lap(outcome{bytes: bigSize})
	lap(outcome{bytes: bigSize})
	return nil
}

// bigWriteContent is what the 1 GiB writes write: 16 MiB of pattern over
// and over, made once, so that making it costs no time inside the workload.
// None of the systems compresses or deduplicates.
func bigWriteContent() io.ReaderAt {
	bigWriteOnce.Do(func() { bigWriteChunk = pattern{seed: 51, size: 16 << 20}.bytes(0, 16<<20) })
	return cyclic(bigWriteChunk)
}

var (
	bigWriteOnce  sync.Once
	bigWriteChunk []byte
)

// cyclic is an endless repetition of its bytes.
type cyclic []byte

func (c cyclic) ReadAt(p []byte, off int64) (int, error) {
	for n := 0; n < len(p); {
		i := (off + int64(n)) % int64(len(c))
		n += copy(p[n:], c[i:])
	}
	return len(p), nil
}

// waitObjects polls the bucket (straight at MinIO, so the polls are not
// counted) until n objects of size bytes are under prefix.
func (s subject) waitObjects(ctx context.Context, prefix string, n int, size int64) error {
	return s.waitStored(ctx, prefix, "objects", n, func(key string, got int64) bool {
		return got == size && !nimbusOwnKey(prefix+key)
	})
}

// waitStored polls the bucket (straight at MinIO, so the polls are not
// counted) until n of the objects under prefix match (their key below
// prefix, their size).
func (s subject) waitStored(ctx context.Context, prefix, what string, n int, match func(key string, size int64) bool) error {
	for {
		got, err := countStored(ctx, s.e.s3, s.e.bucket, prefix, match)
		if err == nil && got == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d %s under %s uploaded (%v): %w", got, n, what, prefix, err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// countStored counts the objects under prefix that match.
func countStored(ctx context.Context, client *awss3.Client, bucket, prefix string, match func(key string, size int64) bool) (int, error) {
	p := awss3.NewListObjectsV2Paginator(client, &awss3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix})
	n := 0
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return n, err
		}
		for _, o := range out.Contents {
			if match(strings.TrimPrefix(aws.ToString(o.Key), prefix), aws.ToInt64(o.Size)) {
				n++
			}
		}
	}
	return n, nil
}

// rawPuts stores n objects of data under prefix, 16 at a time.
func rawPuts(ctx context.Context, client *awss3.Client, bucket, prefix string, n int, data []byte) error {
	keys := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Go(func() {
			for k := range keys {
				_, err := client.PutObject(ctx, &awss3.PutObjectInput{Bucket: &bucket, Key: aws.String(k), Body: bytes.NewReader(data)})
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
	return firstErr
}

// rawMultipart uploads body with the SDK's transfer manager: 16 MiB parts,
// 8 at a time.
func rawMultipart(ctx context.Context, client *awss3.Client, bucket, key string, body io.Reader) error {
	up := manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize, u.Concurrency = 16<<20, 8
		// No CRC32 of each part: nimbus sends none to a store at an
		// endpoint of its own (backend/s3).
		u.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	})
	_, err := up.Upload(ctx, &awss3.PutObjectInput{Bucket: &bucket, Key: aws.String(key), Body: body})
	return err
}
