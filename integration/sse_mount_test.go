package integration

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/nimbus-fs/nimbus/integration/minio"
	"github.com/nimbus-fs/nimbus/integration/s3proxy"
)

const (
	// sseBigSize is above the store's 64 MiB multipart threshold, so that
	// writing the file through the mount is a multipart upload, and a
	// 1-byte edit of it is a delta of UploadPart and UploadPartCopy.
	sseBigSize = 80 << 20
	// sseEditAt is the byte the delta edits: in the middle, off any part
	// boundary.
	sseEditAt = sseBigSize/2 + 4321
	// sseKMSKeyName is the one key of the MinIO built-in KMS.
	sseKMSKeyName = "nimbus-mount-key"
)

// sseKMSSecretKey is MINIO_KMS_SECRET_KEY for the SSE-S3 and SSE-KMS tests.
var sseKMSSecretKey = sseKMSKeyName + ":" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x2c}, 32))

// customerKey is an SSE-C key as a test holds it: the raw bytes, and the
// file nimbus reads them from.
type customerKey struct {
	raw  []byte
	file string
}

// newCustomerKey makes a random key and writes it raw to a file.
func newCustomerKey(t *testing.T) customerKey {
	t.Helper()
	k := customerKey{raw: make([]byte, 32), file: filepath.Join(t.TempDir(), "sse-c.key")}
	if _, err := rand.Read(k.raw); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(k.file, k.raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

// headers returns the SSE-C request fields: algorithm, base64 key, base64
// MD5 of the key.
func (k customerKey) headers() (alg, key, keyMD5 *string) {
	sum := md5.Sum(k.raw)
	return aws.String("AES256"), aws.String(base64.StdEncoding.EncodeToString(k.raw)),
		aws.String(base64.StdEncoding.EncodeToString(sum[:]))
}

// spellings are the forms in which the key could leak into a text: raw,
// hex and base64.
func (k customerKey) spellings() map[string][]byte {
	return map[string][]byte{
		"raw":        k.raw,
		"hex":        []byte(hex.EncodeToString(k.raw)),
		"HEX":        []byte(strings.ToUpper(hex.EncodeToString(k.raw))),
		"base64":     []byte(base64.StdEncoding.EncodeToString(k.raw)),
		"base64 url": []byte(base64.RawURLEncoding.EncodeToString(k.raw)),
	}
}

// getSSEC downloads key with the SDK, with the customer key when k is not
// nil, and returns the body.
func (e *env) getSSEC(key string, k *customerKey) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	in := &awss3.GetObjectInput{Bucket: &e.bucket, Key: &key}
	if k != nil {
		in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = k.headers()
	}
	out, err := e.s3.GetObject(ctx, in)
	if err != nil {
		return nil, err
	}
	defer out.Body.Close()
	return io.ReadAll(out.Body)
}

// headSSEC is HeadObject of key with the SDK, with the customer key when k
// is not nil (any object: nil for those without SSE-C); partNumber > 0
// asks about that part (and the part count).
func (e *env) headSSEC(key string, k *customerKey, partNumber int32) (*awss3.HeadObjectOutput, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	in := &awss3.HeadObjectInput{Bucket: &e.bucket, Key: &key}
	if k != nil {
		in.SSECustomerAlgorithm, in.SSECustomerKey, in.SSECustomerKeyMD5 = k.headers()
	}
	if partNumber > 0 {
		in.PartNumber = aws.Int32(partNumber)
	}
	return e.s3.HeadObject(ctx, in)
}

// writeMountFile writes r to rel on the mount, within a time limit.
func writeMountFile(t *testing.T, m *mount, rel string, r io.Reader) {
	t.Helper()
	within(t, 5*time.Minute, "write "+rel+" on the mount", func() error {
		f, err := os.Create(m.path(rel))
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
}

// mountFileSHA256 reads rel through the mount, within a time limit, and
// returns its sha256 and size.
func mountFileSHA256(t *testing.T, m *mount, rel string) ([32]byte, int64) {
	t.Helper()
	var sum [32]byte
	var n int64
	within(t, 5*time.Minute, "read "+rel+" on the mount", func() error {
		f, err := os.Open(m.path(rel))
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if n, err = io.Copy(h, f); err != nil {
			return err
		}
		copy(sum[:], h.Sum(nil))
		return nil
	})
	return sum, n
}

// editMountByte overwrites the byte at off of rel on the mount in place
// (O_RDWR and pwrite, no truncation), within a time limit.
func editMountByte(t *testing.T, m *mount, rel string, off int64, b byte) {
	t.Helper()
	within(t, 5*time.Minute, "edit one byte of "+rel+" on the mount", func() error {
		f, err := os.OpenFile(m.path(rel), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt([]byte{b}, off); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
}

// renameOnMount renames from to to on the mount, within a time limit.
func renameOnMount(t *testing.T, m *mount, from, to string) {
	t.Helper()
	within(t, time.Minute, "rename "+from+" on the mount", func() error {
		return os.Rename(m.path(from), m.path(to))
	})
}

// headerProxy is a reverse proxy in front of MinIO that checks the headers
// of every request about an object's content as nimbus sends it. MinIO
// alone would not catch every missing header: it copies parts from an
// SSE-C source without the copy-source key, which S3 refuses.
type headerProxy struct {
	URL string

	// check returns what is wrong with the headers of request r of op,
	// or "". It must not put header values in what it returns: they may
	// be a key.
	check func(op s3proxy.Op, r *http.Request) string

	mu       sync.Mutex
	seen     map[s3proxy.Op]int // GUARDED_BY(mu)
	problems []string           // GUARDED_BY(mu)
}

// startHeaderProxy starts a headerProxy to srv. It serves TLS with the
// server's own certificate when the server does, so that the mounts'
// AWS_CA_BUNDLE trusts it too.
func startHeaderProxy(t *testing.T, srv *minio.Server, check func(s3proxy.Op, *http.Request) string) *headerProxy {
	t.Helper()
	target, err := url.Parse(srv.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &headerProxy{check: check, seen: make(map[s3proxy.Op]int)}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // signed by the client: keep it
		},
		Transport: srv.HTTPClient().Transport,
	}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.inspect(r)
		rp.ServeHTTP(w, r)
	}))
	if srv.CAFile == "" {
		hs.Start()
	} else {
		// The test certificate's key lies next to it (minio.makeCert).
		cert, err := tls.LoadX509KeyPair(srv.CAFile, filepath.Join(filepath.Dir(srv.CAFile), "private.key"))
		if err != nil {
			t.Fatalf("proxy certificate: %v", err)
		}
		hs.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		hs.StartTLS()
	}
	t.Cleanup(hs.Close)
	p.URL = hs.URL
	return p
}

func (p *headerProxy) inspect(r *http.Request) {
	op := s3proxy.Classify(r)
	switch {
	case op == s3proxy.OpHead && strings.Count(strings.Trim(r.URL.Path, "/"), "/") == 0:
		return // HeadBucket
	case op == s3proxy.OpMultipart && r.Method == http.MethodDelete:
		return // AbortMultipartUpload
	}
	problem := p.check(op, r)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen[op]++
	if problem != "" {
		p.problems = append(p.problems, r.Method+" "+r.URL.Path+" ("+op.String()+"): "+problem)
	}
}

// requireChecked fails the test if a request had a problem, or if no
// request of one of ops went through the proxy.
func (p *headerProxy) requireChecked(t *testing.T, ops ...s3proxy.Op) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, problem := range p.problems {
		t.Errorf("request without the encryption headers: %s", problem)
	}
	var seen []string
	for op, n := range p.seen {
		seen = append(seen, fmt.Sprintf("%v=%d", op, n))
	}
	sort.Strings(seen)
	t.Logf("requests seen at the proxy: %s", strings.Join(seen, " "))
	for _, op := range ops {
		if p.seen[op] == 0 {
			t.Errorf("no %v request went through the proxy: its headers are not checked", op)
		}
	}
}

// TestSSECThroughMount: a mount with --sse-c-key-file over a TLS MinIO
// (trusted through AWS_CA_BUNDLE) writes objects that only the key opens
// (a small one, a multipart one, a renamed one), reads them back in another
// mount with the key, and uploads a 1-byte edit of the large one as a
// delta. Every GET, HEAD, PUT, part, copy and copied part the two mounts
// send carries the key (copy-source key included), as a proxy sees them.
// A mount without the key, or with another, gets EACCES and a log line
// naming the key flag, not EIO and not bytes. The key is in no log and
// nowhere in the cache folders.
func TestSSECThroughMount(t *testing.T) {
	e := newEnvWith(t, minio.Options{TLS: true})
	if !strings.HasPrefix(e.minio.Endpoint, "https://") || e.minio.CAFile == "" {
		t.Fatalf("MinIO at %s, certificate %q: want TLS with a test certificate", e.minio.Endpoint, e.minio.CAFile)
	}
	if env := strings.Join(e.minio.Env(), "\n"); !strings.Contains(env, "AWS_CA_BUNDLE="+e.minio.CAFile) {
		t.Fatalf("the mounts' environment does not trust the test certificate:\n%s", env)
	}
	key := newCustomerKey(t)
	keyArgs := []string{"--sse-c-key-file", key.file, "--verbose"}
	_, keyB64, keyMD5 := key.headers()
	// Every request that reads or writes content carries the key; copies
	// carry it for their source too.
	proxy := startHeaderProxy(t, e.minio, func(op s3proxy.Op, r *http.Request) string {
		h := r.Header
		switch op {
		case s3proxy.OpGet, s3proxy.OpHead, s3proxy.OpPut, s3proxy.OpPart, s3proxy.OpMultipart, s3proxy.OpCopy, s3proxy.OpCopyPart:
		default:
			return ""
		}
		if h.Get("X-Amz-Server-Side-Encryption-Customer-Key") != *keyB64 ||
			h.Get("X-Amz-Server-Side-Encryption-Customer-Key-Md5") != *keyMD5 ||
			h.Get("X-Amz-Server-Side-Encryption-Customer-Algorithm") != "AES256" {
			return "no SSE-C key, or not the mount's"
		}
		if (op == s3proxy.OpCopy || op == s3proxy.OpCopyPart) &&
			(h.Get("X-Amz-Copy-Source-Server-Side-Encryption-Customer-Key") != *keyB64 ||
				h.Get("X-Amz-Copy-Source-Server-Side-Encryption-Customer-Key-Md5") != *keyMD5 ||
				h.Get("X-Amz-Copy-Source-Server-Side-Encryption-Customer-Algorithm") != "AES256") {
			return "no SSE-C key for the copy source"
		}
		return ""
	})
	keyMount := mountOpt{args: keyArgs, endpoint: proxy.URL}

	small := []byte("only the customer key opens this\n")
	big := pattern{seed: 131, size: sseBigSize}
	renamed := []byte("renamed with a server-side copy\n")

	writer := e.mount(keyMount)
	writeMountFile(t, writer, "small.txt", bytes.NewReader(small))
	writeMountFile(t, writer, "big.bin", big.reader())
	writeMountFile(t, writer, "before-rename.txt", bytes.NewReader(renamed))
	writer.sync(5 * time.Minute)
	before := writer.requests()
	renameOnMount(t, writer, "before-rename.txt", "renamed.txt")
	writer.sync(5 * time.Minute)
	if d := delta(before, writer.requests()); d["CopyObject"] == 0 {
		t.Errorf("the rename made no CopyObject (%v): the copy path is not exercised", d)
	}

	// (a) Only the key opens the objects, and they hold what was written.
	{
		for name, want := range map[string][]byte{"small.txt": small, "renamed.txt": renamed} {
			if got, err := e.getSSEC(name, nil); err == nil {
				t.Errorf("GET %s without the key succeeded (%d bytes): the object is not SSE-C", name, len(got))
			} else if status := httpStatusOf(err); status != 400 {
				t.Errorf("GET %s without the key: %v; want HTTP 400 (SSE-C object, no key)", name, err)
			}
			got, err := e.getSSEC(name, &key)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("GET %s with the key = %q, %v; want %q", name, got, err, want)
			}
		}
		if _, err := e.headSSEC("big.bin", nil, 0); err == nil {
			t.Error("HEAD big.bin without the key succeeded: the object is not SSE-C")
		}
		head, err := e.headSSEC("big.bin", &key, 1)
		if err != nil {
			t.Fatalf("HEAD big.bin part 1 with the key: %v", err)
		}
		if alg := aws.ToString(head.SSECustomerAlgorithm); alg != "AES256" {
			t.Errorf("big.bin: SSE-C algorithm %q; want AES256", alg)
		}
		if parts := aws.ToInt32(head.PartsCount); parts < 2 {
			t.Errorf("big.bin has %d parts; want a multipart upload (more than 64 MiB)", parts)
		}
		got, err := e.getSSEC("big.bin", &key)
		if err != nil {
			t.Fatalf("GET big.bin with the key: %v", err)
		}
		if int64(len(got)) != big.size || sha256.Sum256(got) != big.sha256() {
			t.Fatalf("big.bin read with the key: %d bytes, not the %d written", len(got), big.size)
		}
	}

	// (b) Another machine: a fresh cache, the same key.
	reader := e.mount(keyMount)
	{
		if sum, n := mountFileSHA256(t, reader, "small.txt"); sum != sha256.Sum256(small) {
			t.Errorf("small.txt through a fresh mount: %d bytes, not the content written", n)
		}
		if sum, n := mountFileSHA256(t, reader, "renamed.txt"); sum != sha256.Sum256(renamed) {
			t.Errorf("renamed.txt through a fresh mount: %d bytes, not the content written", n)
		}
		if sum, n := mountFileSHA256(t, reader, "big.bin"); n != big.size || sum != big.sha256() {
			t.Errorf("big.bin through a fresh mount: %d bytes, not the %d written", n, big.size)
		}
	}

	// (c) A 1-byte edit of the large object, as a delta.
	{
		flipped := big.bytes(sseEditAt, 1)[0] ^ 0xff
		beforeEdit := reader.requests()
		editMountByte(t, reader, "big.bin", sseEditAt, flipped)
		reader.sync(5 * time.Minute)
		d := delta(beforeEdit, reader.requests())
		t.Logf("requests for the edit: %v", d)
		got, err := e.getSSEC("big.bin", &key)
		if err != nil {
			t.Fatalf("GET big.bin with the key after the edit: %v", err)
		}
		if int64(len(got)) != big.size || !bytes.Equal(sumOf(got), editedSHA256(t, big, sseEditAt, []byte{flipped})) {
			t.Fatalf("big.bin after a 1-byte edit: %d bytes, not the edited content", len(got))
		}
		// Parts copied server-side had to carry the copy-source key.
		if d["UploadPartCopy"] == 0 || d["bytes_out"] > 2*s3PartSize {
			t.Errorf("the edit made %d UploadPartCopy and uploaded %d MiB; want a delta (parts copied, at most %d MiB sent)",
				d["UploadPartCopy"], d["bytes_out"]>>20, 2*s3PartSize>>20)
		}
	}

	proxy.requireChecked(t, s3proxy.OpGet, s3proxy.OpHead, s3proxy.OpPut, s3proxy.OpPart,
		s3proxy.OpMultipart, s3proxy.OpCopy, s3proxy.OpCopyPart)

	// (d) Without the key, or with another: EACCES, and the log says why.
	requireRefused(t, e.mount(mountOpt{}), []string{"small.txt", "big.bin"}, "mount with --sse-c-key-file")
	other := newCustomerKey(t)
	wrong := e.mount(mountOpt{args: []string{"--sse-c-key-file", other.file, "--verbose"}})
	requireRefused(t, wrong, []string{"small.txt"}, "--sse-c-key-file")

	// (e) Once the mounts have stopped, no key is in their logs or
	// anywhere in their cache folders.
	for _, use := range []struct {
		m   *mount
		key customerKey
	}{{writer, key}, {reader, key}, {wrong, other}} {
		use.m.unmount()
		log := []byte(use.m.stderr.String())
		if len(log) == 0 {
			t.Errorf("mount %s logged nothing: the check below would prove nothing", use.m.dir)
		}
		for form, s := range use.key.spellings() {
			if bytes.Contains(log, s) {
				t.Errorf("the key (%s) is in the log of mount %s", form, use.m.dir)
			}
		}
		requireKeyNotUnder(t, use.m.cacheDir, use.key)
	}
}

// requireRefused checks that reading each of names on m fails with EACCES
// and returns no bytes, and that m logs, for each, a line naming it that
// contains hint (what to do about the key).
func requireRefused(t *testing.T, m *mount, names []string, hint string) {
	t.Helper()
	for _, name := range names {
		var data []byte
		var err error
		within(t, time.Minute, "read "+name+" without the key", func() error {
			data, err = os.ReadFile(m.path(name))
			return nil
		})
		t.Logf("read %s without the right key: %v", name, err)
		switch {
		case err == nil:
			t.Errorf("read %s without the right key succeeded with %d bytes", name, len(data))
		case !errors.Is(err, syscall.EACCES):
			t.Errorf("read %s without the right key: %v; want EACCES", name, err)
		case len(data) > 0:
			t.Errorf("read %s without the right key returned %d bytes with its error", name, len(data))
		}
		// The log reaches the buffer through a pipe: give it a moment.
		var line string
		for deadline := time.Now().Add(5 * time.Second); line == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			for _, l := range strings.Split(m.stderr.String(), "\n") {
				if strings.Contains(l, `\"`+name+`\"`) && strings.Contains(l, hint) {
					line = l
					break
				}
			}
		}
		if line == "" {
			t.Errorf("the mount logged no line about %s saying that a key is needed (%q):\n%s", name, hint, m.stderr)
			continue
		}
		t.Logf("the mount logged: %s", line)
	}
}

// requireKeyNotUnder fails the test if any spelling of k is in a file
// under dir.
func requireKeyNotUnder(t *testing.T, dir string, k customerKey) {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		files++
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for form, s := range k.spellings() {
			if bytes.Contains(data, s) {
				t.Errorf("the key (%s) is in %s", form, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk the cache %s: %v", dir, err)
	}
	if files == 0 {
		t.Errorf("no file under the cache %s: the check would prove nothing", dir)
	}
	t.Logf("%d files under %s hold no form of the key", files, dir)
}

// sumOf is the sha256 of b, as a slice.
func sumOf(b []byte) []byte {
	sum := sha256.Sum256(b)
	return sum[:]
}

// httpStatusOf returns the HTTP status of an SDK error, or 0.
func httpStatusOf(err error) int {
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// TestSSEKMSThroughMount: a mount with --sse aws:kms --sse-kms-key-id
// leaves every object it writes (PutObject, multipart upload, the copy of a
// rename, a delta edit) encrypted with that KMS key, as HEAD shows, and a
// fresh mount reads them back.
func TestSSEKMSThroughMount(t *testing.T) {
	testSSEThroughMount(t, types.ServerSideEncryptionAwsKms, sseKMSKeyName)
}

// TestSSES3ThroughMount is TestSSEKMSThroughMount with --sse AES256.
func TestSSES3ThroughMount(t *testing.T) {
	testSSEThroughMount(t, types.ServerSideEncryptionAes256, "")
}

// testSSEThroughMount mounts with --sse want (and --sse-kms-key-id keyID
// unless "") and checks what every write leaves in the bucket.
func testSSEThroughMount(t *testing.T, want types.ServerSideEncryption, keyID string) {
	e := newEnvWith(t, minio.Options{KMSSecretKey: sseKMSSecretKey})
	args := []string{"--sse", string(want)}
	if keyID != "" {
		args = append(args, "--sse-kms-key-id", keyID)
	}
	small := []byte("encrypted at rest by the store\n")
	renamed := []byte("copied server-side by a rename\n")
	big := pattern{seed: 137, size: sseBigSize}
	flipped := big.bytes(sseEditAt, 1)[0] ^ 0xff
	var bigEdited [32]byte
	copy(bigEdited[:], editedSHA256(t, big, sseEditAt, []byte{flipped}))

	// Every request that creates an object asks for the encryption, and
	// for the KMS key when one was given.
	proxy := startHeaderProxy(t, e.minio, func(op s3proxy.Op, r *http.Request) string {
		creates := op == s3proxy.OpPut || op == s3proxy.OpCopy || op == s3proxy.OpMultipart && r.URL.Query().Has("uploads")
		switch {
		case !creates:
			return ""
		case r.Header.Get("X-Amz-Server-Side-Encryption") != string(want):
			return "no x-amz-server-side-encryption: " + string(want)
		case keyID != "" && r.Header.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id") != keyID:
			return "no x-amz-server-side-encryption-aws-kms-key-id: " + keyID
		}
		return ""
	})
	m := e.mount(mountOpt{args: args, endpoint: proxy.URL})
	writeMountFile(t, m, "small.txt", bytes.NewReader(small))
	writeMountFile(t, m, "before-rename.txt", bytes.NewReader(renamed))
	writeMountFile(t, m, "big.bin", big.reader())
	m.sync(5 * time.Minute)
	before := m.requests()
	renameOnMount(t, m, "before-rename.txt", "renamed.txt")
	m.sync(5 * time.Minute)
	if d := delta(before, m.requests()); d["CopyObject"] == 0 {
		t.Errorf("the rename made no CopyObject (%v): the copy path is not exercised", d)
	}
	before = m.requests()
	editMountByte(t, m, "big.bin", sseEditAt, flipped)
	m.sync(5 * time.Minute)
	if d := delta(before, m.requests()); d["UploadPartCopy"] == 0 {
		t.Errorf("the 1-byte edit of big.bin copied no part server-side (%v): the delta path is not exercised", d)
	}

	proxy.requireChecked(t, s3proxy.OpPut, s3proxy.OpMultipart, s3proxy.OpCopy, s3proxy.OpCopyPart)

	for _, key := range []string{"small.txt", "renamed.txt", "big.bin"} {
		head, err := e.headSSEC(key, nil, 0)
		if err != nil {
			t.Errorf("HEAD %s: %v", key, err)
			continue
		}
		if head.ServerSideEncryption != want {
			t.Errorf("%s: server-side encryption %q; want %q", key, head.ServerSideEncryption, want)
		}
		// MinIO's built-in KMS has one key, so this passes without the
		// key id too: the proxy checked that it was sent.
		if keyID != "" && !strings.HasSuffix(aws.ToString(head.SSEKMSKeyId), keyID) {
			t.Errorf("%s: KMS key %q; want %q", key, aws.ToString(head.SSEKMSKeyId), keyID)
		}
	}
	if head, err := e.headSSEC("big.bin", nil, 1); err != nil || aws.ToInt32(head.PartsCount) < 2 {
		t.Errorf("big.bin: HEAD of part 1 = %v; want a multipart object", err)
	}

	fresh := e.mount(mountOpt{})
	for name, sum := range map[string][32]byte{"small.txt": sha256.Sum256(small), "renamed.txt": sha256.Sum256(renamed), "big.bin": bigEdited} {
		if got, n := mountFileSHA256(t, fresh, name); got != sum {
			t.Errorf("%s through a fresh mount: %d bytes, not the content written", name, n)
		}
	}
}
