package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
)

// remote is a parsed REMOTE argument.
type remote struct {
	scheme string // "s3" or "dir"
	bucket string // s3 only
	prefix string // s3 only: "" or ending in "/"
	path   string // dir only: absolute folder
}

var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$`)

// parseRemote parses s3://BUCKET[/PREFIX] or dir:/PATH.
func parseRemote(s string) (remote, error) {
	switch {
	case strings.HasPrefix(s, "s3://"):
		rest := strings.TrimPrefix(s, "s3://")
		bucket, prefix, _ := strings.Cut(rest, "/")
		if !bucketName.MatchString(bucket) {
			return remote{}, fmt.Errorf("remote %q: %q is not a valid bucket name (3-63 characters: a-z, 0-9, '.', '-')", s, bucket)
		}
		prefix = strings.Trim(prefix, "/")
		if strings.Contains(prefix, "//") {
			return remote{}, fmt.Errorf("remote %q: the prefix has an empty path segment", s)
		}
		for _, seg := range strings.Split(prefix, "/") {
			if seg == "." || seg == ".." {
				return remote{}, fmt.Errorf("remote %q: the prefix has a %q segment", s, seg)
			}
		}
		if prefix != "" {
			prefix += "/"
		}
		return remote{scheme: "s3", bucket: bucket, prefix: prefix}, nil
	case strings.HasPrefix(s, "dir:"):
		p := strings.TrimPrefix(s, "dir:")
		if p == "" {
			return remote{}, fmt.Errorf("remote %q: give a folder, as in dir:/srv/files", s)
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			return remote{}, fmt.Errorf("remote %q: %w", s, err)
		}
		return remote{scheme: "dir", path: abs}, nil
	}
	return remote{}, fmt.Errorf("remote %q: expected s3://BUCKET[/PREFIX] or dir:/PATH", s)
}

func (r remote) String() string {
	if r.scheme == "dir" {
		return "dir:" + r.path
	}
	return "s3://" + r.bucket + "/" + r.prefix
}

// id names the remote's default cache folder: readable, and unique per
// endpoint and remote.
func (r remote) id(endpoint string) string {
	sum := sha256.Sum256([]byte(endpoint + "\x00" + r.String()))
	readable := strings.Trim(regexp.MustCompile(`[^A-Za-z0-9.\-]+`).ReplaceAllString(r.String(), "-"), "-")
	if len(readable) > 60 {
		readable = readable[:60]
	}
	return readable + "-" + hex.EncodeToString(sum[:6])
}
