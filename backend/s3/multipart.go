package s3

// Multipart upload of large Puts.
//
// A Put larger than Config.MultipartThreshold goes through the SDK's transfer
// manager (feature/s3/manager): CreateMultipartUpload, parallel UploadParts,
// CompleteMultipartUpload. Three things make it keep Put's contract:
//
//   - The condition. The manager copies the same-named fields of the
//     PutObjectInput onto the CompleteMultipartUploadInput, so If-Match and
//     If-None-Match travel on the Complete request, and the store checks them
//     atomically as it makes the object visible. AWS S3 and MinIO both do
//     (MinIO answers 412 PreconditionFailed, and 404 NoSuchKey to If-Match on
//     an absent key, exactly as for PutObject; multipart_test.go checks it,
//     racing writers included). There is no HEAD and no race window. The
//     price is that a doomed upload learns of its conflict only once all
//     its parts are sent.
//   - Cleanup. An upload that fails after CreateMultipartUpload leaves parts
//     that S3 stores (and bills) until the upload is aborted. The manager
//     aborts with the caller's ctx, which is useless once that ctx is
//     cancelled, so it is told to leave the parts and putMultipart aborts on
//     a context of its own.
//   - The body. The manager reads parts in parallel, without copying them,
//     only from an io.ReaderAt, and then from offset 0 rather than from the
//     body's current position. partSource hands it a view of exactly the
//     bytes Put must send, which staged files (*os.File) serve with pread.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/nimbus-fs/nimbus/backend"
)

// Multipart limits and defaults. See Config.
const (
	defaultMultipartThreshold = 64 << 20
	defaultPartSize           = 16 << 20
	defaultUploadConcurrency  = 8

	// minPartSize and maxPartSize bound S3's part size (the last part may
	// be smaller); maxPutObjectSize is the most one PutObject can carry,
	// maxCopyObjectSize the most one CopyObject can.
	minPartSize       = manager.MinUploadPartSize
	maxPartSize       = 5 << 30
	maxPutObjectSize  = 5 << 30
	maxCopyObjectSize = 5 << 30

	// abortTimeout bounds the abort of a failed upload, which runs after
	// the caller's ctx may have been cancelled.
	abortTimeout = 10 * time.Second
)

// withMultipartDefaults returns cfg with the zero multipart settings replaced
// by their defaults, or an error naming the setting S3 would refuse.
func withMultipartDefaults(cfg Config) (Config, error) {
	if cfg.MultipartThreshold == 0 {
		cfg.MultipartThreshold = defaultMultipartThreshold
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = defaultPartSize
	}
	if cfg.UploadConcurrency == 0 {
		cfg.UploadConcurrency = defaultUploadConcurrency
	}
	if cfg.CopyThreshold == 0 {
		cfg.CopyThreshold = maxCopyObjectSize
	}
	switch {
	case cfg.MultipartThreshold < 0 || cfg.MultipartThreshold > maxPutObjectSize:
		return cfg, fmt.Errorf("s3: multipart threshold %d is not within (0, %d]: objects up to it go up as one PutObject", cfg.MultipartThreshold, int64(maxPutObjectSize))
	case cfg.PartSize < minPartSize || cfg.PartSize > maxPartSize:
		return cfg, fmt.Errorf("s3: part size %d is not within S3's [%d, %d]", cfg.PartSize, minPartSize, int64(maxPartSize))
	case cfg.CopyThreshold < minPartSize || cfg.CopyThreshold > maxCopyObjectSize:
		return cfg, fmt.Errorf("s3: copy threshold %d is not within [%d, %d]: objects up to it are copied with one CopyObject, larger ones in parts of at least %d", cfg.CopyThreshold, minPartSize, int64(maxCopyObjectSize), minPartSize)
	case cfg.UploadConcurrency < 0:
		return cfg, fmt.Errorf("s3: negative upload concurrency %d", cfg.UploadConcurrency)
	}
	return cfg, nil
}

// newUploader returns the transfer manager for client, with cfg's multipart
// settings (defaults applied).
func newUploader(client *awss3.Client, cfg Config) *manager.Uploader {
	return manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize = cfg.PartSize
		u.Concurrency = cfg.UploadConcurrency
		// putMultipart aborts, with a context that outlives a cancelled
		// ctx; the manager's own abort would use the cancelled one.
		u.LeavePartsOnError = true
		// Send checksums on the same terms as the client's own requests
		// (only when required, for third-party stores).
		u.RequestChecksumCalculation = client.Options().RequestChecksumCalculation
	})
}

// putMultipart is Put for objects over the multipart threshold: a multipart
// upload whose CompleteMultipartUpload carries cond (see the file comment).
// Its errors are Put's. On failure the upload is aborted, so that no parts
// are left behind, unless the store cannot be reached to abort it (then a
// warning is logged, and only a bucket lifecycle rule such as
// AbortIncompleteMultipartUpload reclaims them).
func (s *Store) putMultipart(ctx context.Context, key string, body io.ReadSeeker, size int64, meta map[string]string, cond backend.Cond) (backend.ObjectInfo, error) {
	src, err := newPartSource(body, size)
	if err != nil {
		return backend.ObjectInfo{}, fmt.Errorf("put %q in %s: %w", key, s, err)
	}
	in := &awss3.PutObjectInput{
		Bucket:   aws.String(s.bucket),
		Key:      aws.String(key),
		Body:     src,
		Metadata: meta,
	}
	if cond.IfMatch != "" {
		in.IfMatch = quoteETag(cond.IfMatch)
	}
	if cond.IfNoneMatch {
		in.IfNoneMatch = aws.String("*")
	}
	out, err := s.uploader.Upload(ctx, in)
	if err != nil {
		var failed manager.MultiUploadFailure
		if errors.As(err, &failed) && failed.UploadID() != "" {
			s.abortUpload(ctx, key, failed.UploadID())
		}
		return backend.ObjectInfo{}, s.putError(ctx, key, cond, err)
	}
	return backend.ObjectInfo{Key: key, Size: size, ETag: unquoteETag(out.ETag)}, nil
}

// putError maps the error of a PutObject or of a multipart upload for Put.
// A 404 to an If-Match put means the object is absent: a failed
// precondition. A multipart upload that vanished under us (NoSuchUpload,
// also a 404: aborted by a lifecycle rule or another client) is a
// concurrent operation, worth retrying, and says nothing about the
// condition.
func (s *Store) putError(ctx context.Context, key string, cond backend.Cond, err error) error {
	switch {
	case isNoSuchUpload(err):
		return s.opErrorAs(ctx, "put", key, backend.ErrConflict, err)
	case cond.IfMatch != "" && errors.Is(classify(err), backend.ErrNotFound):
		return s.opErrorAs(ctx, "put", key, backend.ErrPrecondition, err)
	case (cond.IfMatch != "" || cond.IfNoneMatch) && errors.Is(classify(err), backend.ErrOffline) && s.condFails(ctx, key, cond):
		// A store that refuses a conditional write early answers 412 and
		// closes the connection while the body is still being sent (MinIO
		// does): the client sees a reset, not the answer. Our write lost
		// either way; a write that landed but whose answer was lost shows
		// as a changed object too, which the caller recognises as its own.
		return s.opErrorAs(ctx, "put", key, backend.ErrPrecondition, err)
	default:
		return s.opError(ctx, "put", key, err)
	}
}

// condFails reports whether the store's current object under key fails
// cond, by a HEAD; false when that cannot be known.
func (s *Store) condFails(ctx context.Context, key string, cond backend.Cond) bool {
	info, err := s.Stat(ctx, key)
	switch {
	case errors.Is(err, backend.ErrNotFound):
		return cond.IfMatch != ""
	case err != nil:
		return false
	case cond.IfNoneMatch:
		return true
	default:
		return info.ETag != cond.IfMatch
	}
}

// abortUpload aborts the multipart upload uploadID of key, on a context
// detached from ctx (whose values it keeps): a cancelled Put must clean up
// too. Its failure cannot change Put's outcome, so it is logged.
func (s *Store) abortUpload(ctx context.Context, key, uploadID string) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	_, err := s.client.AbortMultipartUpload(actx, &awss3.AbortMultipartUploadInput{
		Bucket:   aws.String(s.bucket),
		Key:      aws.String(key),
		UploadId: aws.String(uploadID),
	})
	if err == nil || isNoSuchUpload(err) {
		// NoSuchUpload: already gone (completed, or aborted elsewhere).
		return
	}
	slog.Warn("s3: cannot abort a failed multipart upload; its parts stay until aborted or removed by a lifecycle rule",
		"store", s.String(), "key", key, "upload_id", uploadID, "err", err)
}

// isNoSuchUpload reports whether err is S3's answer about a multipart
// upload that does not exist (any more).
func isNoSuchUpload(err error) bool {
	var apiErr smithy.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode() == "NoSuchUpload"
}

// newPartSource returns the size bytes of body from its current position as
// an io.SectionReader: an io.ReaderAt for the manager to read parts in
// parallel from, and an io.ReadSeeker it can measure, whose offset 0 is
// body's current position. A body that is an io.ReaderAt (*os.File,
// bytes.Reader) is read with ReadAt, concurrently; any other is read by
// seeking, one read at a time. A body that ends before size bytes fails the
// read with errShortBody.
func newPartSource(body io.ReadSeeker, size int64) (*io.SectionReader, error) {
	base, err := body.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	ra, ok := body.(io.ReaderAt)
	if !ok {
		ra = &seekingReaderAt{r: body}
	}
	return io.NewSectionReader(shortBodyCheck{ra: ra, base: base, end: base + size}, base, size), nil
}

// shortBodyCheck turns an io.EOF before end into errShortBody, so that a
// body shorter than its stated size fails the Put as the caller's mistake
// rather than as a network failure (an early EOF looks like a broken
// connection to classify).
type shortBodyCheck struct {
	ra        io.ReaderAt
	base, end int64 // the body's offsets of the first and past the last byte
}

func (c shortBodyCheck) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.ra.ReadAt(p, off)
	if err == io.EOF && off+int64(n) < c.end {
		err = fmt.Errorf("%w: ended after %d of %d bytes", errShortBody, off+int64(n)-c.base, c.end-c.base)
	}
	return n, err
}

// seekingReaderAt is an io.ReaderAt over a body that only seeks. The reads
// are serialised (the parts are still sent in parallel); the manager's own
// fallback for such bodies would instead buffer a whole part per worker,
// UploadConcurrency × PartSize bytes of memory. It moves the body's offset:
// the body belongs to the Put while it runs.
type seekingReaderAt struct {
	mu sync.Mutex
	r  io.ReadSeeker // GUARDED_BY(mu)
}

func (s *seekingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.r.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	n, err := io.ReadFull(s.r, p)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		// io.ReaderAt reports a short read as io.EOF.
		err = io.EOF
	}
	return n, err
}
