// Package s3proxy is a counting reverse proxy for an S3 endpoint. The
// benchmark puts one in front of MinIO and gives its URL to every client it
// compares (the SDK, nimbus, rclone, s3fs), so that requests are counted by
// type, and bytes by direction, in the same terms for all of them: as the
// server sees them.
//
// Signatures: SigV4 signs the Host header. A client signs for the proxy's
// address, so the proxy forwards each request with the Host header it
// received and every other header untouched; the server then checks the
// signature the client made against the host the client named.
//
// Bodies are streamed in both directions and counted on the way through;
// nothing is buffered, so a 1 GiB GET costs the proxy a few buffers, and
// time to first byte is not delayed.
package s3proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Op is the type of an S3 request.
type Op int

const (
	OpGet       Op = iota // GetObject; its response body bytes are counted
	OpHead                // HeadObject or HeadBucket
	OpList                // a listing: ListObjects(V2), versions, uploads, buckets
	OpPut                 // PutObject; its request body bytes are counted
	OpPart                // UploadPart; its request body bytes are counted
	OpCopyPart            // UploadPartCopy
	OpCopy                // CopyObject
	OpMultipart           // create, complete or abort a multipart upload
	OpDelete              // DeleteObject, or one DeleteObjects batch
	OpOther               // anything else: bucket creation, ACLs, tags, location…
	numOps
)

var opNames = [numOps]string{"GET", "HEAD", "LIST", "PUT", "PART", "COPYPART", "COPY", "MPU", "DELETE", "OTHER"}

func (o Op) String() string {
	if o < 0 || o >= numOps {
		return fmt.Sprintf("Op(%d)", int(o))
	}
	return opNames[o]
}

// Ops lists every Op, in the order tables show them.
func Ops() []Op {
	ops := make([]Op, numOps)
	for i := range ops {
		ops[i] = Op(i)
	}
	return ops
}

// Counts is what the proxy has seen.
type Counts struct {
	Requests [numOps]int64
	GetBytes int64 // response body bytes of GetObject requests
	PutBytes int64 // request body bytes of PutObject and UploadPart requests
	Errors   int64 // requests the proxy could not forward (502)
}

// Sub returns c - before, for counting what happened between two snapshots.
func (c Counts) Sub(before Counts) Counts {
	d := Counts{
		GetBytes: c.GetBytes - before.GetBytes,
		PutBytes: c.PutBytes - before.PutBytes,
		Errors:   c.Errors - before.Errors,
	}
	for i := range d.Requests {
		d.Requests[i] = c.Requests[i] - before.Requests[i]
	}
	return d
}

// Classify tells the type of a path-style S3 request (/BUCKET/KEY?QUERY).
func Classify(r *http.Request) Op {
	key := objectKey(r.URL.Path)
	q := r.URL.Query()
	copySource := r.Header.Get("X-Amz-Copy-Source") != ""
	switch r.Method {
	case http.MethodGet:
		if key == "" {
			if isListing(q) {
				return OpList
			}
			return OpOther
		}
		if q.Has("uploadId") || hasSubresource(q) {
			return OpOther // ListParts, GetObjectAcl, GetObjectTagging…
		}
		return OpGet
	case http.MethodHead:
		return OpHead
	case http.MethodPut:
		switch {
		case key == "":
			return OpOther
		case q.Has("partNumber") && q.Has("uploadId"):
			if copySource {
				return OpCopyPart
			}
			return OpPart
		case hasSubresource(q):
			return OpOther
		case copySource:
			return OpCopy
		}
		return OpPut
	case http.MethodPost:
		switch {
		case key != "" && (q.Has("uploads") || q.Has("uploadId")):
			return OpMultipart
		case key == "" && q.Has("delete"):
			return OpDelete
		}
		return OpOther
	case http.MethodDelete:
		switch {
		case key == "" || hasSubresource(q):
			return OpOther
		case q.Has("uploadId"):
			return OpMultipart // AbortMultipartUpload
		}
		return OpDelete
	}
	return OpOther
}

// objectKey returns KEY of /BUCKET/KEY, "" for the bucket itself or the
// service root.
func objectKey(path string) string {
	path = strings.TrimPrefix(path, "/")
	_, key, _ := strings.Cut(path, "/")
	return key
}

// listParams are the query parameters that make a bucket-level GET a listing.
var listParams = []string{"list-type", "prefix", "delimiter", "marker", "continuation-token",
	"start-after", "max-keys", "encoding-type", "fetch-owner", "versions", "uploads"}

func isListing(q url.Values) bool {
	if len(q) == 0 {
		return true // ListObjects (v1) with no parameters, or ListBuckets
	}
	for _, p := range listParams {
		if q.Has(p) {
			return true
		}
	}
	return false
}

// subresources are the object-level query parameters that turn a request
// into a configuration call rather than a data transfer.
var subresources = []string{"acl", "tagging", "retention", "legal-hold", "attributes", "torrent", "restore", "select"}

func hasSubresource(q url.Values) bool {
	for _, s := range subresources {
		if q.Has(s) {
			return true
		}
	}
	return false
}

// Proxy is an http.Handler that forwards requests to one S3 endpoint and
// counts them. It is safe for concurrent use.
type Proxy struct {
	rp       *httputil.ReverseProxy
	requests [numOps]atomic.Int64
	getBytes atomic.Int64
	putBytes atomic.Int64
	errors   atomic.Int64
}

var _ http.Handler = (*Proxy)(nil)

// New returns a proxy to target, an http:// URL such as http://127.0.0.1:9000.
func New(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("s3proxy: target %q is not an http:// URL", target)
	}
	p := &Proxy{}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host // signed by the client: keep it
		},
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 256, // the default 2 would open a connection per request under load
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true, // pass bodies as they are, so bytes count what the server sent
		},
		BufferPool: bufferPool{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// A client that hangs up mid-body (head -c 1) is not a failure
			// of the proxy; anything else is counted for the reader to see.
			if !errors.Is(err, context.Canceled) {
				p.errors.Add(1)
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	return p, nil
}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op := Classify(r)
	p.requests[op].Add(1)
	switch op {
	case OpPut, OpPart:
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &countingBody{ReadCloser: r.Body, n: &p.putBytes}
		}
	case OpGet:
		w = &countingWriter{ResponseWriter: w, n: &p.getBytes}
	}
	p.rp.ServeHTTP(w, r)
}

// Snapshot returns the counts so far. Take one before and one after a
// workload and Sub them.
func (p *Proxy) Snapshot() Counts {
	var c Counts
	for i := range c.Requests {
		c.Requests[i] = p.requests[i].Load()
	}
	c.GetBytes = p.getBytes.Load()
	c.PutBytes = p.putBytes.Load()
	c.Errors = p.errors.Load()
	return c
}

// countingBody counts a request body as the proxy streams it upstream.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// countingWriter counts a response body as the proxy streams it to the client.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	// Counted before the write, so that a snapshot taken as soon as the
	// client has the bytes includes them; a short write takes back the rest.
	w.n.Add(int64(len(p)))
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n - len(p)))
	return n, err
}

// Unwrap lets http.ResponseController (used by ReverseProxy to flush) reach
// the real writer.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// bufferPool gives ReverseProxy 256 KiB copy buffers instead of 32 KiB
// ones: fewer syscalls per GiB on a machine where the proxy shares the CPU
// with everything it measures.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }

// Server is a Proxy listening on a local port.
type Server struct {
	*Proxy
	URL string // http://127.0.0.1:PORT, the endpoint to give clients

	srv  *http.Server
	done chan error
}

// Start listens on a free port of 127.0.0.1 and proxies to target.
func Start(target string) (*Server, error) {
	p, err := New(target)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("s3proxy: listen: %w", err)
	}
	s := &Server{
		Proxy: p,
		URL:   "http://" + l.Addr().String(),
		srv:   &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second},
		done:  make(chan error, 1),
	}
	go func() { s.done <- s.srv.Serve(l) }()
	return s, nil
}

// Close stops listening and closes every connection at once.
func (s *Server) Close() error {
	err := s.srv.Close()
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) && err == nil {
		err = serveErr
	}
	return err
}
