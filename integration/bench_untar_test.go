package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// The untar workload: a source tree unpacked into the mount, as a checkout
// or an unpacked release is, timed until the bucket holds every file. The
// tree is the Go standard library's src/ without cmd/ and the testdata/
// folders (about 5,000 files and 60 MiB in 500 folders), packed once into
// a tar in the benchmark's temporary folder.

// untarSet is the tree: the tar, and the files it holds with their sizes.
type untarSet struct {
	tar   string           // the archive
	root  string           // the folder it was made from, for raw's PUTs
	files map[string]int64 // by slash path inside the archive
	bytes int64            // of all files
}

// packedTree packs the tree once and returns it.
func (bx *bench) packedTree() (*untarSet, error) {
	if bx.untar != nil {
		return bx.untar, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := runCtx(ctx, "go", "env", "GOROOT")
	if err != nil {
		return nil, err
	}
	u := &untarSet{root: filepath.Join(strings.TrimSpace(string(out)), "src"), files: make(map[string]int64)}
	u.tar = filepath.Join(bx.b.TempDir(), "gosrc.tar")
	if err := packTree(u); err != nil {
		return nil, fmt.Errorf("pack %s: %w", u.root, err)
	}
	bx.untar = u
	return u, nil
}

// packTree writes the regular files and folders under u.root, without
// cmd/ and testdata/, into u.tar, and records them in u.
func packTree(u *untarSet) error {
	f, err := os.Create(u.tar)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(u.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(u.root, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() && (rel == "cmd" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil // the tree has none; a symlink would not mean the same everywhere
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = rel
		if d.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		src, err := os.Open(path)
		if err != nil {
			return err
		}
		defer src.Close()
		if _, err := io.Copy(tw, src); err != nil {
			return err
		}
		u.files[rel] = info.Size()
		u.bytes += info.Size()
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (u *untarSet) note() string {
	return fmt.Sprintf("%d files, %s", len(u.files), formatBytes(u.bytes))
}

func (s subject) untarPrefix() string { return s.writePrefix() + "untar/" }

func (s subject) rsyncPrefix() string { return s.writePrefix() + "rsync/" }

func (s subject) makeUntarDir(ctx context.Context, lap func(outcome)) error {
	return s.makeTreeDir(s.untarPrefix())
}

func (s subject) makeRsyncDir(ctx context.Context, lap func(outcome)) error {
	return s.makeTreeDir(s.rsyncPrefix())
}

// makeTreeDir packs the tree, if not yet, and makes the folder on the
// mount it is put into.
func (s subject) makeTreeDir(prefix string) error {
	if _, err := s.packedTree(); err != nil {
		return err
	}
	return os.MkdirAll(s.m.path(prefix), 0o755)
}

// untarTree unpacks the tree with tar into the mount, and laps once the
// bucket holds every file with its size.
func (s subject) untarTree(ctx context.Context, lap func(outcome)) error {
	// As root tar would chown every file to the archive's owner: not what
	// a user unpacking a download does.
	return s.putTree(ctx, lap, s.untarPrefix(), func(u *untarSet, dst string) []string {
		return []string{"tar", "-x", "--no-same-owner", "-f", u.tar, "-C", dst}
	})
}

// rsyncTree copies the tree's folder into the mount with rsync -a, as a
// backup or a deploy does (each file: a temporary name, its times and mode
// set after close(), a rename), and laps once the bucket holds every file.
func (s subject) rsyncTree(ctx context.Context, lap func(outcome)) error {
	// --no-owner, --no-group: as root rsync -a would chown every file, as
	// tar would (see untarTree).
	return s.putTree(ctx, lap, s.rsyncPrefix(), func(u *untarSet, dst string) []string {
		return []string{"rsync", "-a", "--no-owner", "--no-group", "--exclude=/cmd/", "--exclude=testdata/", u.root + "/", dst}
	})
}

// putTree runs the command that puts the tree into the mount's folder at
// prefix, and laps once the bucket holds every file with its size.
func (s subject) putTree(ctx context.Context, lap func(outcome), prefix string, command func(u *untarSet, dst string) []string) error {
	u, err := s.packedTree()
	if err != nil {
		return err
	}
	args := command(u, s.m.path(prefix))
	if out, err := runCtx(ctx, args[0], args[1:]...); err != nil {
		return fmt.Errorf("%w: %s", err, tail(string(out)))
	}
	if err := s.m.flush(ctx); err != nil {
		return err
	}
	if err := s.waitFiles(ctx, prefix, u.files); err != nil {
		return err
	}
	lap(outcome{bytes: u.bytes, note: u.note()})
	return nil
}

// rawUntar is the limit of untarTree: the same files PUT with the SDK, 16
// at a time, read from the folder the tar was made from.
func (s subject) rawUntar(ctx context.Context, lap func(outcome)) error {
	return s.rawPutTree(ctx, s.untarPrefix(), lap)
}

// rawRsync is the limit of rsyncTree, the same as rawUntar's.
func (s subject) rawRsync(ctx context.Context, lap func(outcome)) error {
	return s.rawPutTree(ctx, s.rsyncPrefix(), lap)
}

// rawPutTree PUTs the tree's files under prefix, 16 at a time.
func (s subject) rawPutTree(ctx context.Context, prefix string, lap func(outcome)) error {
	u, err := s.packedTree()
	if err != nil {
		return err
	}
	rels := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Go(func() {
			for rel := range rels {
				data, err := os.ReadFile(filepath.Join(u.root, filepath.FromSlash(rel)))
				if err == nil {
					_, err = s.s3.PutObject(ctx, &awss3.PutObjectInput{Bucket: &s.e.bucket, Key: aws.String(prefix + rel), Body: bytes.NewReader(data)})
				}
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		})
	}
	for rel := range u.files {
		rels <- rel
	}
	close(rels)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	lap(outcome{bytes: u.bytes, note: u.note()})
	return nil
}

// waitFiles polls the bucket until every file of want is under prefix
// with its size.
func (s subject) waitFiles(ctx context.Context, prefix string, want map[string]int64) error {
	return s.waitStored(ctx, prefix, "files", len(want), func(key string, size int64) bool {
		w, ok := want[key]
		return ok && w == size
	})
}
