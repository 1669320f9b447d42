package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"syscall"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/nimbus-fs/nimbus/backend"
)

// errShortBody marks a Put whose body ended before size bytes. It is the
// caller's mistake, not a network failure, so classify must not call it
// offline even though the SDK reports it as a failed send.
var errShortBody = errors.New("body shorter than the given size")

// classify maps an SDK error to the backend domain error it means, or nil
// when none fits. The order matters: API codes are the most precise, then
// HTTP status codes, then transport failures.
func classify(err error) error {
	if err == nil || errors.Is(err, errShortBody) {
		return nil
	}
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "NoSuchBucket":
			return backend.ErrNoBucket
		case "NoSuchKey", "NotFound":
			return backend.ErrNotFound
		case "PreconditionFailed":
			return backend.ErrPrecondition
		case "ConditionalRequestConflict", "OperationAborted":
			return backend.ErrConflict
		case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
			"Forbidden", "ExpiredToken", "InvalidToken", "AccountProblem",
			"AllAccessDisabled", "RequestTimeTooSkewed":
			return backend.ErrAccess
		case "KeyTooLongError", "InvalidObjectName",
			"XMinioInvalidObjectName", "XMinioInvalidResourceName":
			return backend.ErrInvalidKey
		}
	}
	if status := httpStatus(err); status != 0 {
		switch status {
		case http.StatusNotFound:
			return backend.ErrNotFound
		case http.StatusPreconditionFailed:
			return backend.ErrPrecondition
		case http.StatusConflict:
			return backend.ErrConflict
		case http.StatusUnauthorized, http.StatusForbidden:
			return backend.ErrAccess
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			// A proxy in front of a dead store, or a store that is
			// still starting: unreachable for our purposes, and
			// worth retrying later.
			return backend.ErrOffline
		}
		// Any other HTTP answer means the store was reached.
		return nil
	}
	// Missing or unusable credentials fail before anything is sent.
	var signErr *v4.SigningError
	if errors.As(err, &signErr) {
		return backend.ErrAccess
	}
	if isNetworkFailure(err) {
		return backend.ErrOffline
	}
	return nil
}

// httpStatus returns the status of the HTTP answer err carries, or 0 when
// there was none: the SDK wraps transport failures in a ResponseError too,
// with status 0.
func httpStatus(err error) int {
	var respErr *awshttp.ResponseError
	if !errors.As(err, &respErr) || respErr.Response == nil || respErr.Response.Response == nil {
		return 0
	}
	return respErr.Response.StatusCode
}

// isNetworkFailure reports whether err means the store could not be reached,
// or the connection broke mid-response. TLS verification failures are not:
// retrying will not help and "offline" would hide a configuration error.
func isNetworkFailure(err error) bool {
	var (
		unknownCA   x509.UnknownAuthorityError
		invalidCert x509.CertificateInvalidError
		hostname    x509.HostnameError
		verifyErr   *tls.CertificateVerificationError
		recordErr   tls.RecordHeaderError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &invalidCert) ||
		errors.As(err, &hostname) || errors.As(err, &verifyErr) ||
		errors.As(err, &recordErr) {
		return false
	}
	var (
		sendErr    *smithyhttp.RequestSendError
		netErr     net.Error
		timeoutErr interface{ Timeout() bool }
	)
	switch {
	case errors.As(err, &sendErr), errors.As(err, &netErr):
		return true
	case errors.As(err, &timeoutErr) && timeoutErr.Timeout():
		return true
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return true
	}
	return false
}

// reason is a short, human cause for err, for one-line messages: the API
// code and message when the store answered, else the system error of a
// failed connection (connection refused), else the innermost error. The
// SDK's whole text (operation, attempts, request id…) is for the log.
func reason(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		if msg := apiErr.ErrorMessage(); msg != "" {
			return apiErr.ErrorCode() + ": " + msg
		}
		return apiErr.ErrorCode()
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.Error()
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Error()
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		return urlErr.Err.Error() // without the URL, which the message names already
	}
	return innermost(err).Error()
}

// innermost follows err's chain of single wraps to its end.
func innermost(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}

// requestError is the error of a failed request. Its text is one short
// line, `get "a/b" in s3://bkt at http://127.0.0.1:9000: backend
// unreachable: connection refused`; the domain error and the SDK's error
// stay reachable with errors.Is and errors.As.
type requestError struct {
	msg  string
	errs []error
}

func (e *requestError) Error() string   { return e.msg }
func (e *requestError) Unwrap() []error { return e.errs }

// opError wraps err from operation op on key with the domain error it
// means (see requestError). The SDK's whole text is logged at debug level.
// A cancelled ctx wins over any classification, so that callers see
// context.Canceled (EINTR) rather than "offline".
func (s *Store) opError(ctx context.Context, op, key string, err error) error {
	kind := classify(err)
	if ctx.Err() == nil {
		if isSSECRefusal(err, s.customerKey) {
			kind = fmt.Errorf("%w: %w", backend.ErrAccess, errNeedsKey)
		} else if kind == backend.ErrAccess && s.customerKey && (op == "get" || op == "stat") {
			kind = fmt.Errorf("%w: %w", backend.ErrAccess, errWrongKey)
		}
	}
	return s.requestError(ctx, op, key, kind, err)
}

// opErrorAs is opError with the domain error decided by the caller, for
// answers whose meaning depends on the request (a 404 to a conditional put
// is a failed precondition).
func (s *Store) opErrorAs(ctx context.Context, op, key string, kind, err error) error {
	return s.requestError(ctx, op, key, kind, err)
}

func (s *Store) requestError(ctx context.Context, op, key string, kind, err error) error {
	slog.Debug("s3 request failed", "op", op, "key", key, "store", s.name, "err", err)
	what := fmt.Sprintf("%s %q in %s", op, key, s)
	if ctxErr := ctx.Err(); ctxErr != nil {
		return &requestError{msg: what + ": " + ctxErr.Error(), errs: []error{ctxErr, err}}
	}
	if kind == nil {
		return &requestError{msg: what + ": " + reason(err), errs: []error{err}}
	}
	return &requestError{msg: what + ": " + kind.Error() + ": " + reason(err), errs: []error{kind, err}}
}

// openError is an error of New: a short message for the user that wraps the
// domain error and the SDK error without repeating their text.
type openError struct {
	msg   string
	kind  error
	cause error
	where string // the store, as Where returns it; "" when no request was made
}

// Where returns where New's error says the store is: the endpoint, with
// where it was set when that was not --endpoint ("http://localhost:9000
// (endpoint_url in profile default of ~/.aws/config)"), or "AWS S3 (region
// R)". ok is false when err names no store.
func Where(err error) (where string, ok bool) {
	var oe *openError
	if errors.As(err, &oe) && oe.where != "" {
		return oe.where, true
	}
	return "", false
}

func (e *openError) Error() string   { return e.msg }
func (e *openError) Unwrap() []error { return []error{e.kind, e.cause} }
