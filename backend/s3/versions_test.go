package s3

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/nimbus-fs/nimbus/backend"
	"github.com/nimbus-fs/nimbus/integration/minio"
)

func listVersions(t *testing.T, s *Store, prefix string) []backend.Version {
	t.Helper()
	var all []backend.Version
	if err := s.ListVersions(deltaCtx(t), prefix, func(p []backend.Version) error { all = append(all, p...); return nil }); err != nil {
		t.Fatalf("ListVersions: %v", err)
	}
	return all
}

func readVersion(t *testing.T, s *Store, key, id string) string {
	t.Helper()
	r, err := s.GetVersion(deltaCtx(t), key, id, 0, -1)
	if err != nil {
		t.Fatalf("GetVersion %s %s: %v", key, id, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestVersions: on a versioned bucket the store lists a key's versions and
// delete markers newest first, reads and copies an old version, and the
// copy is conditional; on an unversioned one Versioning says so.
func TestVersions(t *testing.T) {
	srv := minio.Start(t)
	ctx := deltaCtx(t)
	plain, _ := open(t, srv)
	if on, err := plain.Versioning(ctx); err != nil || on {
		t.Fatalf("Versioning of a plain bucket = %v, %v; want false", on, err)
	}

	bucket := minio.BucketName(t)
	srv.MakeBucket(t, bucket)
	srv.EnableVersioning(t, bucket)
	s := openEncrypted(t, srv, bucket, Encryption{})
	if on, err := s.Versioning(ctx); err != nil || !on {
		t.Fatalf("Versioning of a versioned bucket = %v, %v; want true", on, err)
	}
	putVersion(t, s, "d/f", []byte("one"))
	putVersion(t, s, "d/f", []byte("second"))
	putVersion(t, s, "d/g", []byte("other key"))
	if err := s.Delete(ctx, "d/f", ""); err != nil {
		t.Fatal(err)
	}
	vs := listVersions(t, s, "d/f")
	if len(vs) != 3 || !vs[0].Deleted || !vs[0].Current || vs[1].Deleted || vs[1].Size != 6 || vs[2].Size != 3 || vs[1].Current || vs[2].Current {
		t.Fatalf("versions of d/f = %+v; want the current delete marker, then 6 and 3 bytes", vs)
	}
	if all := listVersions(t, s, "d/"); len(all) != 4 || all[3].Key != "d/g" || !all[3].Current {
		t.Fatalf("versions under d/ = %+v; want d/f's three, then d/g's current one", all)
	}
	if got := readVersion(t, s, "d/f", vs[2].ID); got != "one" {
		t.Fatalf("GetVersion(oldest) = %q; want one", got)
	}
	if _, err := s.StatVersion(ctx, "d/f", "no-such-version"); !errors.Is(err, backend.ErrNotFound) {
		t.Fatalf("StatVersion(unknown id) = %v; want ErrNotFound", err)
	}

	// Undelete: the key is absent, so If-None-Match passes.
	info, err := s.CopyVersion(ctx, "d/f", vs[2].ID, "d/f", backend.Cond{IfNoneMatch: true})
	if err != nil {
		t.Fatalf("CopyVersion onto the deleted key: %v", err)
	}
	if readVersion(t, s, "d/f", listVersions(t, s, "d/f")[0].ID) != "one" {
		t.Fatal("the restored version does not read as the old content")
	}
	// Restore conditional on the current version: a stale ETag changes
	// nothing.
	if _, err := s.CopyVersion(ctx, "d/f", vs[1].ID, "d/f", backend.Cond{IfMatch: "0123456789abcdef0123456789abcdef"}); !errors.Is(err, backend.ErrPrecondition) {
		t.Fatalf("CopyVersion with a stale If-Match = %v; want ErrPrecondition", err)
	}
	if _, err := s.CopyVersion(ctx, "d/f", vs[1].ID, "d/f", backend.Cond{IfMatch: info.ETag}); err != nil {
		t.Fatalf("CopyVersion with the current ETag: %v", err)
	}
	r, err := s.Get(ctx, "d/f", 0, -1, "")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if !bytes.Equal(got, []byte("second")) {
		t.Fatalf("after restoring the second version d/f = %q", got)
	}
	if n := len(listVersions(t, s, "d/f")); n != 5 {
		t.Fatalf("d/f has %d versions after two restores; want 5 (each restore adds one, none is lost)", n)
	}
}
