package s3

// Parts uploaded one at a time: backend.PartUploader.
//
// The journal sends a file that is being written sequentially as a multipart
// upload while it is written (journal/stream.go): each part as soon as the
// writer has moved past it, the rest and the CompleteMultipartUpload once
// the file is closed and committed. This file is the store's side of it,
// the raw requests with nothing hidden:
//
//   - The condition travels on CompleteMultipartUpload, as in putMultipart:
//     If-Match / If-None-Match there are checked by the store atomically as
//     the object becomes visible (AWS S3 and MinIO both; parts_test.go checks
//     it against MinIO). A refused Complete leaves the upload open: the
//     caller aborts it (or keeps it to complete under another condition).
//   - The parts are PartSize bytes (Config.PartSize), every one but the last,
//     as S3 requires; the caller cuts them.
//   - An upload that vanished (aborted elsewhere, or by a lifecycle rule such
//     as AbortIncompleteMultipartUpload) answers NoSuchUpload:
//     backend.ErrNoUpload, so that the caller sends the object again by Put.
//   - Checksums are sent on the same terms as PutDelta's parts
//     (partChecksum): CRC32 for AWS, none when only required.

import (
	"context"
	"fmt"
	"io"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nimbus-fs/nimbus/backend"
)

var _ backend.PartUploader = (*Store)(nil)

// PartSize implements backend.PartUploader: Config.PartSize.
func (s *Store) PartSize() int64 { return s.uploader.PartSize }

// CreateUpload implements backend.PartUploader with one
// CreateMultipartUpload.
func (s *Store) CreateUpload(ctx context.Context, key string, meta map[string]string) (string, error) {
	if err := checkKey("create upload", key); err != nil {
		return "", err
	}
	out, err := s.client.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{
		Bucket:            aws.String(s.bucket),
		Key:               aws.String(key),
		Metadata:          meta,
		ChecksumAlgorithm: s.partChecksum(),
	}, s.uploader.ClientOptions...)
	if err != nil {
		return "", s.opError(ctx, "create upload", key, err)
	}
	return aws.ToString(out.UploadId), nil
}

// UploadPart implements backend.PartUploader with one UploadPart.
func (s *Store) UploadPart(ctx context.Context, key, uploadID string, num int, body io.ReaderAt, off, size int64) (backend.Part, error) {
	switch {
	case num < 1 || int64(num) > maxUploadParts:
		return backend.Part{}, fmt.Errorf("upload part of %q in %s: part number %d is not within [1, %d]", key, s, num, maxUploadParts)
	case size < 0 || off < 0:
		return backend.Part{}, fmt.Errorf("upload part of %q in %s: negative offset %d or size %d", key, s, off, size)
	}
	out, err := s.client.UploadPart(ctx, &awss3.UploadPartInput{
		Bucket:            aws.String(s.bucket),
		Key:               aws.String(key),
		UploadId:          aws.String(uploadID),
		PartNumber:        aws.Int32(int32(num)),
		Body:              io.NewSectionReader(shortBodyCheck{ra: body, base: off, end: off + size}, off, size),
		ContentLength:     aws.Int64(size),
		ChecksumAlgorithm: s.partChecksum(),
	}, s.uploader.ClientOptions...)
	if err != nil {
		if !isNoSuchUpload(err) && ctx.Err() == nil && s.uploadGone(ctx, key, uploadID) {
			// A store may answer NoSuchUpload before it has read the
			// body, and reset the connection under the rest of it (MinIO
			// does): the client then sees a network error, which is not
			// what happened.
			return backend.Part{}, s.opErrorAs(ctx, "upload part of", key, backend.ErrNoUpload, err)
		}
		return backend.Part{}, s.uploadError(ctx, "upload part of", key, err)
	}
	return backend.Part{Num: num, ETag: unquoteETag(out.ETag), Size: size, CRC32: aws.ToString(out.ChecksumCRC32)}, nil
}

// uploadGone reports whether the store says that multipart upload
// uploadID of key no longer exists (one ListParts of at most one part).
func (s *Store) uploadGone(ctx context.Context, key, uploadID string) bool {
	_, err := s.client.ListParts(ctx, &awss3.ListPartsInput{
		Bucket:   aws.String(s.bucket),
		Key:      aws.String(key),
		UploadId: aws.String(uploadID),
		MaxParts: aws.Int32(1),
	}, s.uploader.ClientOptions...)
	return isNoSuchUpload(err)
}

// CompleteUpload implements backend.PartUploader with one
// CompleteMultipartUpload carrying cond.
func (s *Store) CompleteUpload(ctx context.Context, key, uploadID string, parts []backend.Part, cond backend.Cond) (backend.ObjectInfo, error) {
	done := make([]types.CompletedPart, len(parts))
	var size int64
	for i, p := range parts {
		if p.Num != i+1 {
			return backend.ObjectInfo{}, fmt.Errorf("complete upload of %q in %s: part %d is numbered %d", key, s, i+1, p.Num)
		}
		done[i] = types.CompletedPart{PartNumber: aws.Int32(int32(p.Num)), ETag: quoteETag(p.ETag)}
		if p.CRC32 != "" {
			done[i].ChecksumCRC32 = aws.String(p.CRC32)
		}
		size += p.Size
	}
	in := &awss3.CompleteMultipartUploadInput{
		Bucket:          aws.String(s.bucket),
		Key:             aws.String(key),
		UploadId:        aws.String(uploadID),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: done},
	}
	if cond.IfMatch != "" {
		in.IfMatch = quoteETag(cond.IfMatch)
	}
	if cond.IfNoneMatch {
		in.IfNoneMatch = aws.String("*")
	}
	out, err := s.client.CompleteMultipartUpload(ctx, in, s.uploader.ClientOptions...)
	if err != nil {
		if isNoSuchUpload(err) {
			return backend.ObjectInfo{}, s.opErrorAs(ctx, "complete upload of", key, backend.ErrNoUpload, err)
		}
		return backend.ObjectInfo{}, s.putError(ctx, key, cond, err)
	}
	return backend.ObjectInfo{Key: key, Size: size, ETag: unquoteETag(out.ETag)}, nil
}

// AbortUpload implements backend.PartUploader with one
// AbortMultipartUpload; NoSuchUpload counts as done.
func (s *Store) AbortUpload(ctx context.Context, key, uploadID string) error {
	_, err := s.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{
		Bucket:   aws.String(s.bucket),
		Key:      aws.String(key),
		UploadId: aws.String(uploadID),
	}, s.uploader.ClientOptions...)
	if err == nil || isNoSuchUpload(err) {
		return nil
	}
	return s.opError(ctx, "abort upload of", key, err)
}

// ListUploads implements backend.PartUploader with ListMultipartUploads
// of the key as prefix (one request per 1,000 uploads), keeping those of
// exactly key.
func (s *Store) ListUploads(ctx context.Context, key string) ([]backend.Upload, error) {
	in := &awss3.ListMultipartUploadsInput{Bucket: aws.String(s.bucket), Prefix: aws.String(key)}
	var out []backend.Upload
	for {
		page, err := s.client.ListMultipartUploads(ctx, in, s.uploader.ClientOptions...)
		if err != nil {
			return nil, s.opError(ctx, "list uploads of", key, err)
		}
		for _, u := range page.Uploads {
			if aws.ToString(u.Key) == key {
				out = append(out, backend.Upload{ID: aws.ToString(u.UploadId), Initiated: aws.ToTime(u.Initiated)})
			}
		}
		if !aws.ToBool(page.IsTruncated) {
			return out, nil
		}
		in.KeyMarker, in.UploadIdMarker = page.NextKeyMarker, page.NextUploadIdMarker
	}
}

// uploadError maps the error of a request on an open upload.
func (s *Store) uploadError(ctx context.Context, op, key string, err error) error {
	if isNoSuchUpload(err) {
		return s.opErrorAs(ctx, op, key, backend.ErrNoUpload, err)
	}
	return s.opError(ctx, op, key, err)
}
