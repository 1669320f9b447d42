package s3

// Delta uploads: PutDelta (backend.DeltaPutter).
//
// A new version of a large object that shares ranges with the current one is
// sent as a multipart upload whose parts are either copied server-side from
// the current version (UploadPartCopy) or uploaded from the body
// (UploadPart), so that a one-byte edit of a 1 GiB file sends one part, not
// the gigabyte.
//
//   - Which parts are copied. The object is cut into parts of S3's
//     minimum part size, 5 MiB (larger for objects that would need more
//     than 10,000 parts), not Config.PartSize: a part holding one changed
//     byte is sent whole, so small parts send less, and runs of copied
//     parts are merged anyway. A part that lies entirely inside one of
//     the unchanged ranges, and inside the current version, is copied; any
//     other part is uploaded from the body. Runs of copied parts are merged
//     into one copy of at most 5 GiB (S3's part limit), so a one-byte edit in
//     the middle of 1 GiB costs two UploadPartCopy and one UploadPart. Every
//     part but the last is at least one part size, above S3's 5 MiB minimum.
//   - The condition. A HeadObject with If-Match base first fails a stale
//     base before anything is created, and gives the size of the current
//     version (parts past it cannot be copied). Each UploadPartCopy carries
//     x-amz-copy-source-if-match: base, so the bytes copied are base's, and
//     the CompleteMultipartUpload carries If-Match: base, so the new object
//     replaces base atomically or not at all. MinIO honours both: a copy
//     from a source that changed fails with 412 (delta_test.go checks it, at
//     the pinned version, directly and by changing the object between the
//     HEAD and the copies), and so does a Complete over a changed object. A
//     store that ignored the copy-source condition would still be covered
//     by the one on Complete, except if the object changed and then changed
//     back to base's exact ETag between a copy and the Complete.
//   - Small objects. An object under deltaThreshold (two parts), or one
//     with no part to copy, is sent with Put (If-Match base), as a whole.
//     The threshold is not the multipart threshold (64 MiB by default):
//     a 40 MiB file with one changed byte is worth a multipart upload that
//     sends 5 MiB.
//   - Cleanup. As in putMultipart, a failed upload is aborted on a context
//     of its own, so that a cancelled PutDelta leaves no parts behind.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nimbus-fs/nimbus/backend"
)

// maxUploadParts is S3's limit on the parts of one multipart upload.
const maxUploadParts = int64(manager.MaxUploadParts)

// deltaThreshold is the smallest object PutDelta sends as parts: below two
// minimum parts, at most one part could be copied.
const deltaThreshold = 2 * minPartSize

var _ backend.DeltaPutter = (*Store)(nil)

// PutDelta implements backend.DeltaPutter (see the file comment). Its
// requests: one HeadObject, then either a Put of the whole body or
// CreateMultipartUpload, UploadPartCopy for the copied parts and UploadPart
// for the others (UploadConcurrency at a time), and
// CompleteMultipartUpload. A stale or absent base, and a copy source or
// object changed meanwhile (412, or 404 once deleted), are ErrPrecondition;
// a multipart upload aborted elsewhere (NoSuchUpload) is ErrConflict.
func (s *Store) PutDelta(ctx context.Context, key string, body io.ReaderAt, size int64, meta map[string]string, base string, same []backend.Range) (backend.DeltaResult, error) {
	if err := checkKey("put", key); err != nil {
		return backend.DeltaResult{}, err
	}
	switch {
	case size < 0:
		return backend.DeltaResult{}, fmt.Errorf("put %q in %s: negative size %d", key, s, size)
	case base == "":
		return backend.DeltaResult{}, fmt.Errorf("put %q in %s: a delta needs the ETag of its base version", key, s)
	}
	if err := backend.CheckRanges(same, size); err != nil {
		return backend.DeltaResult{}, fmt.Errorf("put %q in %s: %w", key, s, err)
	}
	cond := backend.Cond{IfMatch: base}
	whole := func() (backend.DeltaResult, error) {
		info, err := s.Put(ctx, key, io.NewSectionReader(body, 0, size), size, meta, cond)
		return backend.DeltaResult{Info: info, Sent: size}, err
	}
	if size < deltaThreshold || len(same) == 0 {
		return whole()
	}
	cur, err := s.head(ctx, key, base, s.uploader.ClientOptions...)
	if err != nil {
		return backend.DeltaResult{}, s.putError(ctx, key, cond, err)
	}
	parts := planDelta(size, partSizeFor(size, minPartSize), same, cur.Size)
	copies := 0
	for _, p := range parts {
		if p.copy {
			copies++
		}
	}
	if copies == 0 {
		return whole()
	}
	res, err := s.putParts(ctx, key, body, size, meta, base, parts)
	if err != nil {
		return res, s.putError(ctx, key, cond, err)
	}
	slog.Debug("s3: delta put", "store", s.String(), "key", key, "size", size,
		"sent", res.Sent, "copied", res.Copied, "parts", len(parts), "copy_parts", res.CopyParts)
	return res, nil
}

// deltaPart is one part of a delta upload: the object's bytes [off, off+n),
// copied from the base version or uploaded from the body.
type deltaPart struct {
	off, n int64
	copy   bool
}

// partSizeFor returns the part size for an upload of size bytes: partSize,
// or more when partSize would need more than S3's 10,000 parts.
func partSizeFor(size, partSize int64) int64 {
	if need := (size + maxUploadParts - 1) / maxUploadParts; need > partSize {
		return need
	}
	return partSize
}

// planDelta cuts [0, size) into parts of partSize (the last may be
// smaller). A part inside one range of same and within the base's srcSize
// bytes is copied, and runs of copied parts are merged up to maxPartSize;
// the others are uploaded. same is sorted and disjoint.
func planDelta(size, partSize int64, same []backend.Range, srcSize int64) []deltaPart {
	var parts []deltaPart
	i := 0 // the first range of same that ends after the current part starts
	for off := int64(0); off < size; off += partSize {
		n := min(partSize, size-off)
		end := off + n
		for i < len(same) && same[i].End() <= off {
			i++
		}
		copyable := i < len(same) && same[i].Off <= off && end <= same[i].End() && end <= srcSize
		if last := len(parts) - 1; copyable && last >= 0 && parts[last].copy && parts[last].n+n <= maxPartSize {
			parts[last].n += n
			continue
		}
		parts = append(parts, deltaPart{off: off, n: n, copy: copyable})
	}
	return parts
}

// putParts sends parts as one multipart upload of key whose Complete
// carries If-Match base (see uploadParts). Its errors are the SDK's, for
// putError.
func (s *Store) putParts(ctx context.Context, key string, body io.ReaderAt, size int64, meta map[string]string, base string, parts []deltaPart) (backend.DeltaResult, error) {
	up := &partsUpload{
		key:         key,
		copySource:  copySource(s.bucket, key),
		copyIfMatch: base,
		body:        shortBodyCheck{ra: body, base: 0, end: size},
	}
	etag, err := s.uploadParts(ctx, up, &awss3.CreateMultipartUploadInput{Metadata: meta}, parts, backend.Cond{IfMatch: base})
	res := up.result()
	if err == nil {
		res.Info = backend.ObjectInfo{Key: key, Size: size, ETag: etag}
	}
	return res, err
}

// uploadParts makes up.key out of parts in one multipart upload: create
// (whose bucket, key and checksum are filled in here) starts it, the parts
// are copied or sent by up, and the CompleteMultipartUpload carries cond,
// so that the object appears atomically and only if cond holds then. A
// failure aborts the upload, on a context of its own. It returns the new
// object's ETag; its errors are the SDK's.
func (s *Store) uploadParts(ctx context.Context, up *partsUpload, create *awss3.CreateMultipartUploadInput, parts []deltaPart, cond backend.Cond) (string, error) {
	opts := s.uploader.ClientOptions
	up.s = s
	up.checksum = s.partChecksum()
	create.Bucket, create.Key, create.ChecksumAlgorithm = aws.String(s.bucket), aws.String(up.key), up.checksum
	created, err := s.client.CreateMultipartUpload(ctx, create, opts...)
	if err != nil {
		return "", err
	}
	up.uploadID = aws.ToString(created.UploadId)
	done, err := up.sendParts(ctx, parts)
	if err == nil {
		in := &awss3.CompleteMultipartUploadInput{
			Bucket:          aws.String(s.bucket),
			Key:             aws.String(up.key),
			UploadId:        aws.String(up.uploadID),
			MultipartUpload: &types.CompletedMultipartUpload{Parts: done},
		}
		if cond.IfMatch != "" {
			in.IfMatch = quoteETag(cond.IfMatch)
		}
		if cond.IfNoneMatch {
			in.IfNoneMatch = aws.String("*")
		}
		var out *awss3.CompleteMultipartUploadOutput
		if out, err = s.client.CompleteMultipartUpload(ctx, in, opts...); err == nil {
			return unquoteETag(out.ETag), nil
		}
	}
	s.abortUpload(ctx, up.key, up.uploadID)
	return "", err
}

// partChecksum is the checksum algorithm of multipart uploads: CRC32, as
// the transfer manager sends, unless checksums are sent only when required
// (third-party stores; see newStore).
func (s *Store) partChecksum() types.ChecksumAlgorithm {
	if s.client.Options().RequestChecksumCalculation == aws.RequestChecksumCalculationWhenRequired {
		return ""
	}
	return types.ChecksumAlgorithmCrc32
}

// partsUpload is one multipart upload (of PutDelta, or of a large Copy)
// while its parts are sent: copied parts come from copySource (copySource's
// form, with "?versionId=" for a version) and carry
// x-amz-copy-source-if-match: copyIfMatch, so that every part is copied
// from the same version; uploaded parts are read from body.
type partsUpload struct {
	s           *Store
	key         string
	uploadID    string
	copySource  string
	copyIfMatch string
	body        io.ReaderAt // nil when every part is copied
	checksum    types.ChecksumAlgorithm

	sent, copied, copyParts atomic.Int64 // of the requests made
}

func (u *partsUpload) result() backend.DeltaResult {
	return backend.DeltaResult{Sent: u.sent.Load(), Copied: u.copied.Load(), CopyParts: int(u.copyParts.Load())}
}

// sendParts sends every part, UploadConcurrency at a time, and returns the
// completed parts in order. The first failure stops the others.
func (u *partsUpload) sendParts(ctx context.Context, parts []deltaPart) ([]types.CompletedPart, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make([]types.CompletedPart, len(parts))
	var (
		errOnce  sync.Once
		firstErr error // set once, read after wg.Wait
		wg       sync.WaitGroup
	)
	next := make(chan int)
	for range min(max(u.s.uploader.Concurrency, 1), len(parts)) {
		wg.Go(func() {
			for i := range next {
				cp, err := u.sendPart(ctx, int32(i+1), parts[i])
				if err != nil {
					errOnce.Do(func() {
						firstErr = err
						cancel()
					})
					continue
				}
				done[i] = cp
			}
		})
	}
feed:
	for i := range parts {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		// The caller's ctx ended before every part was handed out.
		return nil, err
	}
	return done, nil
}

// sendPart copies or uploads part number num.
func (u *partsUpload) sendPart(ctx context.Context, num int32, p deltaPart) (types.CompletedPart, error) {
	s := u.s
	opts := s.uploader.ClientOptions
	if p.copy {
		u.copyParts.Add(1)
		u.copied.Add(p.n)
		out, err := s.client.UploadPartCopy(ctx, &awss3.UploadPartCopyInput{
			Bucket:            aws.String(s.bucket),
			Key:               aws.String(u.key),
			UploadId:          aws.String(u.uploadID),
			PartNumber:        aws.Int32(num),
			CopySource:        aws.String(u.copySource),
			CopySourceIfMatch: quoteETag(u.copyIfMatch),
			CopySourceRange:   aws.String(fmt.Sprintf("bytes=%d-%d", p.off, p.off+p.n-1)),
		}, opts...)
		if err != nil {
			return types.CompletedPart{}, err
		}
		cp := types.CompletedPart{PartNumber: aws.Int32(num)}
		if r := out.CopyPartResult; r != nil {
			cp.ETag = r.ETag
			cp.ChecksumCRC32, cp.ChecksumCRC32C, cp.ChecksumCRC64NVME = r.ChecksumCRC32, r.ChecksumCRC32C, r.ChecksumCRC64NVME
			cp.ChecksumSHA1, cp.ChecksumSHA256 = r.ChecksumSHA1, r.ChecksumSHA256
		}
		return cp, nil
	}
	u.sent.Add(p.n)
	out, err := s.client.UploadPart(ctx, &awss3.UploadPartInput{
		Bucket:            aws.String(s.bucket),
		Key:               aws.String(u.key),
		UploadId:          aws.String(u.uploadID),
		PartNumber:        aws.Int32(num),
		Body:              io.NewSectionReader(u.body, p.off, p.n),
		ContentLength:     aws.Int64(p.n),
		ChecksumAlgorithm: u.checksum,
	}, opts...)
	if err != nil {
		return types.CompletedPart{}, err
	}
	return types.CompletedPart{
		PartNumber:        aws.Int32(num),
		ETag:              out.ETag,
		ChecksumCRC32:     out.ChecksumCRC32,
		ChecksumCRC32C:    out.ChecksumCRC32C,
		ChecksumCRC64NVME: out.ChecksumCRC64NVME,
		ChecksumSHA1:      out.ChecksumSHA1,
		ChecksumSHA256:    out.ChecksumSHA256,
	}, nil
}
