package s3

// Server-side encryption.
//
// Encryption is applied by one middleware on the client (see apiOption), not
// by each call site: every request of the kinds below gets the headers,
// whichever code path made it (Put, the transfer manager's multipart
// upload, PutDelta's parts, Copy, snapshots), so no path can forget them.
//
//   - SSE-S3 and SSE-KMS (Encryption.SSE "AES256" or "aws:kms", with an
//     optional KMS key id) go on the requests that create an object:
//     PutObject, CopyObject and CreateMultipartUpload. Parts inherit it.
//   - SSE-C (Encryption.CustomerKey) goes on every request that reads or
//     writes object bytes: GetObject, HeadObject, PutObject, CopyObject,
//     CreateMultipartUpload, UploadPart, UploadPartCopy and
//     CompleteMultipartUpload; and the copy-source headers on CopyObject
//     and UploadPartCopy, since the source is encrypted with the same key.
//     A presigned URL would carry the key in its query string, so
//     PresignGet refuses to make one.
//
// The key lives in memory only: CustomerKey prints as "[redacted]" and the
// store never writes it anywhere.

import (
	"context"
	"crypto/md5"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
)

// Server-side encryption modes of Encryption.SSE.
const (
	SSES3  = "AES256"
	SSEKMS = "aws:kms"
)

// customerKeyLen is the length of an SSE-C key: AES-256.
const customerKeyLen = 32

// Encryption is the server-side encryption a Store asks for. The zero value
// asks for none (the bucket's default applies).
type Encryption struct {
	// SSE is "" (none), SSES3 or SSEKMS.
	SSE string
	// KMSKeyID is the KMS key of SSEKMS; "" means the store's default.
	KMSKeyID string
	// CustomerKey, when set, encrypts with SSE-C: a 32-byte key that the
	// store never keeps. It excludes SSE.
	CustomerKey CustomerKey
}

// CustomerKey is an SSE-C key. It formats as "[redacted]", in fmt and slog
// alike, so that it cannot reach a log by accident.
type CustomerKey []byte

func (CustomerKey) String() string             { return "[redacted]" }
func (CustomerKey) GoString() string           { return "[redacted]" }
func (CustomerKey) LogValue() slog.Value       { return slog.StringValue("[redacted]") }
func (CustomerKey) Format(f fmt.State, _ rune) { fmt.Fprint(f, "[redacted]") }

// ParseCustomerKey reads an SSE-C key from the contents of a key file:
// 32 raw bytes, or their base64 encoding (surrounding white space ignored).
func ParseCustomerKey(b []byte) (CustomerKey, error) {
	if len(b) == customerKeyLen {
		return CustomerKey(append([]byte(nil), b...)), nil
	}
	text := strings.TrimSpace(string(b))
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(text); err == nil && len(k) == customerKeyLen {
			return CustomerKey(k), nil
		}
	}
	// The message names sizes only: never the content.
	return nil, fmt.Errorf("an SSE-C key must be %d bytes, raw or base64; this file has %d bytes", customerKeyLen, len(b))
}

// check refuses an Encryption S3 would refuse.
func (e Encryption) check() error {
	switch {
	case e.SSE != "" && e.SSE != SSES3 && e.SSE != SSEKMS:
		return fmt.Errorf("s3: server-side encryption %q is not %s or %s", e.SSE, SSES3, SSEKMS)
	case e.KMSKeyID != "" && e.SSE != SSEKMS:
		return fmt.Errorf("s3: a KMS key id needs server-side encryption %s", SSEKMS)
	case e.CustomerKey != nil && e.SSE != "":
		return errors.New("s3: SSE-C (a customer key) excludes --sse: choose one")
	case e.CustomerKey != nil && len(e.CustomerKey) != customerKeyLen:
		return fmt.Errorf("s3: an SSE-C key must be %d bytes, not %d", customerKeyLen, len(e.CustomerKey))
	}
	return nil
}

// sseHeaders are the values the middleware sets, computed once.
type sseHeaders struct {
	sse      types.ServerSideEncryption
	kmsKeyID *string
	// SSE-C: algorithm, base64 key, base64 MD5 of the key (S3 checks it).
	cAlg, cKey, cMD5 *string
}

func (e Encryption) headers() *sseHeaders {
	if e.SSE == "" && e.CustomerKey == nil {
		return nil
	}
	h := &sseHeaders{sse: types.ServerSideEncryption(e.SSE)}
	if e.KMSKeyID != "" {
		h.kmsKeyID = aws.String(e.KMSKeyID)
	}
	if e.CustomerKey != nil {
		sum := md5.Sum(e.CustomerKey)
		h.cAlg = aws.String("AES256")
		h.cKey = aws.String(base64.StdEncoding.EncodeToString(e.CustomerKey))
		h.cMD5 = aws.String(base64.StdEncoding.EncodeToString(sum[:]))
	}
	return h
}

// apiOption returns the client option that adds e's headers to every
// request that needs them (see the file comment), or nil for none.
func (e Encryption) apiOption() func(*middleware.Stack) error {
	h := e.headers()
	if h == nil {
		return nil
	}
	return func(stack *middleware.Stack) error {
		return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("nimbusSSE",
			func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
				h.apply(in.Parameters)
				return next.HandleInitialize(ctx, in)
			}), middleware.Before)
	}
}

// apply sets the encryption fields of one request's input that the caller
// left unset.
func (h *sseHeaders) apply(params any) {
	switch in := params.(type) {
	case *awss3.PutObjectInput:
		h.create(&in.ServerSideEncryption, &in.SSEKMSKeyId)
		h.customer(&in.SSECustomerAlgorithm, &in.SSECustomerKey, &in.SSECustomerKeyMD5)
	case *awss3.CopyObjectInput:
		h.create(&in.ServerSideEncryption, &in.SSEKMSKeyId)
		h.customer(&in.SSECustomerAlgorithm, &in.SSECustomerKey, &in.SSECustomerKeyMD5)
		h.customer(&in.CopySourceSSECustomerAlgorithm, &in.CopySourceSSECustomerKey, &in.CopySourceSSECustomerKeyMD5)
	case *awss3.CreateMultipartUploadInput:
		h.create(&in.ServerSideEncryption, &in.SSEKMSKeyId)
		h.customer(&in.SSECustomerAlgorithm, &in.SSECustomerKey, &in.SSECustomerKeyMD5)
	case *awss3.UploadPartInput:
		h.customer(&in.SSECustomerAlgorithm, &in.SSECustomerKey, &in.SSECustomerKeyMD5)
	case *awss3.UploadPartCopyInput:
		h.customer(&in.SSECustomerAlgorithm, &in.SSECustomerKey, &in.SSECustomerKeyMD5)
		h.customer(&in.CopySourceSSECustomerAlgorithm, &in.CopySourceSSECustomerKey, &in.CopySourceSSECustomerKeyMD5)
	case *awss3.CompleteMultipartUploadInput:
		h.customer(&in.SSECustomerAlgorithm, &in.SSECustomerKey, &in.SSECustomerKeyMD5)
	case *awss3.GetObjectInput:
		h.customer(&in.SSECustomerAlgorithm, &in.SSECustomerKey, &in.SSECustomerKeyMD5)
	case *awss3.HeadObjectInput:
		h.customer(&in.SSECustomerAlgorithm, &in.SSECustomerKey, &in.SSECustomerKeyMD5)
	}
}

func (h *sseHeaders) create(sse *types.ServerSideEncryption, kmsKeyID **string) {
	if h.sse == "" || *sse != "" {
		return
	}
	*sse = h.sse
	if *kmsKeyID == nil {
		*kmsKeyID = h.kmsKeyID
	}
}

func (h *sseHeaders) customer(alg, key, md5 **string) {
	if h.cKey == nil || *key != nil {
		return
	}
	*alg, *key, *md5 = h.cAlg, h.cKey, h.cMD5
}

// errNeedsKey marks a read refused because the object is encrypted with a
// customer key (SSE-C) that the request did not carry, or carried wrong.
var errNeedsKey = errors.New("the object is encrypted with a customer key (SSE-C): mount with --sse-c-key-file holding the key it was written with")

// errWrongKey hints at the likely cause of a refused read when requests
// carry a customer key: S3 answers a wrong key with a plain 403.
var errWrongKey = errors.New("is --sse-c-key-file the key the object was written with?")

// isSSECRefusal reports whether err is the store refusing a read of an
// SSE-C object: S3 answers 400 InvalidRequest naming the encryption when no
// key is sent (HeadObject, without a body, is a bare 400), and 403 when
// the key is wrong.
func isSSECRefusal(err error, hadKey bool) bool {
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	msg := strings.ToLower(apiErr.ErrorMessage())
	switch {
	case strings.Contains(msg, "server side encryption") || strings.Contains(msg, "server-side encryption") ||
		strings.Contains(msg, "encryption parameters") || strings.Contains(msg, "customer key"):
		return true
	case !hadKey && httpStatus(err) == 400 && apiErr.ErrorCode() == "BadRequest":
		return true
	}
	return false
}
