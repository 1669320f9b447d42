package integration

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// fetch GETs url with the server's HTTP client and returns the status and
// the body.
func (e *env) fetch(url string) (int, []byte) {
	e.t.Helper()
	resp, err := e.minio.HTTPClient().Get(url)
	if err != nil {
		e.t.Fatalf("GET the share link: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("read the share link's answer: %v", err)
	}
	return resp.StatusCode, body
}

// TestShare: nimbus share prints a link that downloads the file's bytes
// with a plain HTTP client, and only on stdout (never in the log); it
// refuses a file whose latest change is not uploaded, unless --sync; a
// link past its --expires gets 403; more than 7 days is refused.
func TestShare(t *testing.T) {
	e := newEnv(t)
	m := e.mount(mountOpt{})
	content := []byte("shared bytes\n")
	if err := os.WriteFile(m.path("doc.txt"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	m.sync(time.Minute)

	out := nimbusOK(t, time.Minute, "share", m.path("doc.txt"))
	url := strings.TrimSpace(out)
	if !strings.HasPrefix(url, e.minio.Endpoint+"/") || strings.Count(out, "\n") != 1 {
		t.Fatalf("share printed %q; want one URL on the store", out)
	}
	if code, body := e.fetch(url); code != http.StatusOK || !bytes.Equal(body, content) {
		t.Fatalf("the link gave %d %q; want 200 and the file's bytes", code, body)
	}
	if strings.Contains(m.stderr.String(), "X-Amz-Signature") || strings.Contains(m.stderr.String(), url) {
		t.Fatalf("the link reached the mount's log:\n%s", m.stderr)
	}

	var res struct {
		URL     string    `json:"url"`
		Expires time.Time `json:"expires"`
	}
	jsonOut := nimbusOK(t, time.Minute, "share", "--json", m.path("doc.txt"))
	if err := json.Unmarshal([]byte(jsonOut), &res); err != nil {
		t.Fatalf("share --json: %v\n%s", err, jsonOut)
	}
	if d := time.Until(res.Expires); d < 7*24*time.Hour-time.Hour || d > 7*24*time.Hour {
		t.Fatalf("share --json expires in %v; want the default of 7 days", d)
	}
	if code, body := e.fetch(res.URL); code != http.StatusOK || !bytes.Equal(body, content) {
		t.Fatalf("the --json link gave %d %q", code, body)
	}

	// More than SigV4 allows: a usage error that says why.
	_, errOut, code := nimbusRun(t, time.Minute, "share", "--expires", "8d", m.path("doc.txt"))
	if code != 2 || !strings.Contains(errOut, "7 days") {
		t.Fatalf("share --expires 8d: exit %d, %q; want exit 2 naming the 7-day limit", code, errOut)
	}

	// A short link expires: 403 afterwards.
	short := strings.TrimSpace(nimbusOK(t, time.Minute, "share", "--expires", "2s", m.path("doc.txt")))
	time.Sleep(4 * time.Second)
	if code, body := e.fetch(short); code != http.StatusForbidden {
		t.Fatalf("an expired link gave %d %q; want 403", code, body)
	}

	// Not uploaded yet: the store is down while the file is written.
	e.minio.Stop()
	changed := []byte("changed offline, not uploaded yet\n")
	if err := os.WriteFile(m.path("doc.txt"), changed, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = nimbusRun(t, time.Minute, "share", m.path("doc.txt"))
	if code != 1 || !strings.Contains(errOut, "not uploaded") || !strings.Contains(errOut, "--sync") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Fatalf("share of a pending file: exit %d, %q; want one line refusing it and naming --sync", code, errOut)
	}
	e.minio.Restart()
	url = strings.TrimSpace(nimbusOK(t, 3*time.Minute, "share", "--sync", m.path("doc.txt")))
	if code, body := e.fetch(url); code != http.StatusOK || !bytes.Equal(body, changed) {
		t.Fatalf("share --sync link gave %d %q; want the new content", code, body)
	}
	if strings.Contains(m.stderr.String(), "X-Amz-Signature") {
		t.Fatalf("a link reached the mount's log:\n%s", m.stderr)
	}
}
