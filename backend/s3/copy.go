package s3

// Multipart copy: Copy and CopyVersion of sources over one CopyObject.
//
// S3 copies at most 5 GiB with one CopyObject. A larger source (more than
// Config.CopyThreshold, 5 GiB by default) is copied as a multipart upload
// whose every part is an UploadPartCopy of a range of the source, with the
// machinery of delta uploads (delta.go: partsUpload, uploadParts):
//
//   - One version. Every UploadPartCopy carries x-amz-copy-source-if-match
//     with the ETag the source's HEAD gave (and, for CopyVersion,
//     x-amz-copy-source-version-id through "?versionId="), so a source
//     overwritten in the middle of the copy fails the part with 412 instead
//     of mixing two versions' bytes; the upload is then aborted, and Copy
//     answers ErrPrecondition (or tries again, as the single copy does,
//     when the caller named no source ETag and no condition).
//   - The destination's condition. As for the single copy, it is checked
//     with a HeadObject first (so a doomed copy fails before any part is
//     made), and then carried by the CompleteMultipartUpload (If-Match /
//     If-None-Match), which AWS S3 and MinIO both check atomically (see the
//     package doc): unlike CopyObject on MinIO, the race window is closed.
//   - Metadata. CreateMultipartUpload does not copy the source's metadata
//     as CopyObject does, so the user metadata and the content headers of
//     the source's HEAD (type, encoding, disposition, language, cache
//     control) are given to it.
//   - Encryption. The SSE middleware (sse.go) adds the encryption of the
//     new object to CreateMultipartUpload and, with SSE-C, the key and the
//     copy-source key to every UploadPartCopy and the Complete.
//   - Parts. Parts are min(CopyThreshold, 512 MiB) long (larger when more
//     than 10,000 would be needed), copied UploadConcurrency at a time: a
//     6 GiB copy is 12 requests, 8 in flight, rather than two 5 GiB parts
//     copied one after the other.
//   - The result. The new object's ETag is the multipart one ("…-N"), not
//     the source's; callers that recognise a copy after a crash compare
//     content hashes, which the copied metadata keeps.

import (
	"context"
	"log/slog"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nimbus-fs/nimbus/backend"
)

// maxCopyPartSize is the longest part of a multipart copy (see the file
// comment).
const maxCopyPartSize = 512 << 20

// copyPartSize is the part size of a multipart copy of size bytes.
func (s *Store) copyPartSize(size int64) int64 {
	return partSizeFor(size, min(s.copyThreshold, maxCopyPartSize))
}

// planCopy cuts [0, size) into parts of partSize (the last may be
// smaller), all copied.
func planCopy(size, partSize int64) []deltaPart {
	var parts []deltaPart
	for off := int64(0); off < size; off += partSize {
		parts = append(parts, deltaPart{off: off, n: min(partSize, size-off), copy: true})
	}
	return parts
}

// copyParts copies the object whose HEAD is src, named by source
// (copySource's form, "?versionId=" included for a version), to dst under
// cond as a multipart upload (see the file comment). Its errors are the
// SDK's, for the caller to map.
func (s *Store) copyParts(ctx context.Context, source string, src *awss3.HeadObjectOutput, dst string, cond backend.Cond) (backend.ObjectInfo, error) {
	size := aws.ToInt64(src.ContentLength)
	parts := planCopy(size, s.copyPartSize(size))
	up := &partsUpload{key: dst, copySource: source, copyIfMatch: unquoteETag(src.ETag)}
	create := &awss3.CreateMultipartUploadInput{
		Metadata:           src.Metadata,
		ContentType:        src.ContentType,
		ContentEncoding:    src.ContentEncoding,
		ContentDisposition: src.ContentDisposition,
		ContentLanguage:    src.ContentLanguage,
		CacheControl:       src.CacheControl,
	}
	etag, err := s.uploadParts(ctx, up, create, parts, cond)
	if err != nil {
		return backend.ObjectInfo{}, err
	}
	slog.Debug("s3: multipart copy", "store", s.String(), "source", source, "key", dst, "size", size, "parts", len(parts))
	return backend.ObjectInfo{Key: dst, Size: size, ETag: etag, Meta: lowerKeys(src.Metadata)}, nil
}
