package integration

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/nimbus-fs/nimbus/integration/wait"
)

// TestStatesAndPendingStatus covers the user.nimbus.state values not seen
// elsewhere (online, partial, local, uploading), the pending-upload fields
// of nimbus status, and that nimbus free never drops data that is not
// uploaded yet. An upload is held in flight by pausing MinIO (SIGSTOP).
func TestStatesAndPendingStatus(t *testing.T) {
	e := newEnv(t)
	big := pattern{seed: 61, size: 3 << 20}
	e.putStream("big.bin", big.reader(), big.size)
	m := e.mount(mountOpt{args: []string{"--poll", "0"}})

	state := func(rel string) string { return xattr(t, m.path(rel), "user.nimbus.state") }
	if s := state("big.bin"); s != "online" {
		t.Errorf("state before any read = %q, want online", s)
	}
	if got := readRange(t, m.path("big.bin"), 0, 100<<10); !bytes.Equal(got, big.bytes(0, 100<<10)) {
		t.Fatal("first 100 KiB differ")
	}
	if s := state("big.bin"); s != "partial" {
		t.Errorf("state after reading the start = %q, want partial", s)
	}
	if got := fileSHA(t, m.path("big.bin")); got != big.sha256() {
		t.Fatal("big.bin differs")
	}
	if s := state("big.bin"); s != "local" {
		t.Errorf("state after reading it all = %q, want local", s)
	}

	// Hold an upload in flight.
	e.minio.Pause()
	paused := true
	defer func() {
		if paused {
			e.minio.Resume()
		}
	}()
	content := bytes.Repeat([]byte("pending "), 128<<10) // 1 MiB
	before := time.Now()
	writeFile(t, m.path("up.txt"), content)
	wait.Until(t, 10*time.Second, "up.txt shows as uploading", func() bool { return state("up.txt") == "uploading" })
	st := m.status()
	if st.Uploads.Pending < 1 || st.Uploads.PendingBytes < int64(len(content)) {
		t.Errorf("status while uploading: %d pending, %d bytes; want >= 1 and >= %d", st.Uploads.Pending, st.Uploads.PendingBytes, len(content))
	}
	if st.Uploads.Oldest.IsZero() || st.Uploads.Oldest.Before(before.Add(-time.Second)) || st.Uploads.Oldest.After(time.Now()) {
		t.Errorf("status oldest pending change = %v, want the time up.txt was written (%v)", st.Uploads.Oldest, before)
	}

	// free drops cached content, never what is not uploaded yet.
	if out, err := nimbusCmd(t, time.Minute, "free", m.dir); err != nil {
		t.Fatalf("nimbus free: %v\n%s", err, out)
	}
	if s := state("big.bin"); s != "online" {
		t.Errorf("state of big.bin after free = %q, want online", s)
	}
	if got, err := os.ReadFile(m.path("up.txt")); err != nil || !bytes.Equal(got, content) {
		t.Errorf("up.txt after free, while its upload hangs: %d bytes, %v", len(got), err)
	}

	e.minio.Resume()
	paused = false
	m.sync(2 * time.Minute)
	if got := e.objects()["up.txt"]; !bytes.Equal(got, content) {
		t.Errorf("after sync the bucket has %d bytes of up.txt, want %d", len(got), len(content))
	}
	if s := state("up.txt"); s == "dirty" || s == "uploading" {
		t.Errorf("state of up.txt after sync = %q", s)
	}
}
