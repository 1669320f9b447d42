package journal

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
)

// Commit's part of streamed uploads (stream.go).

// validateStream checks an op's Stream and SHA256.
func validateStream(op Op) error {
	switch {
	case op.Kind != PutFile && (op.Stream != nil || op.SHA256 != ""):
		return fmt.Errorf("%s takes no stream and no hash", op.Kind)
	case op.SHA256 != "" && op.Partial != nil:
		return errors.New("a partial staged file has no content hash to give")
	case op.Stream != nil && (op.Delta != nil || op.Partial != nil):
		return errors.New("a streamed upload sends the whole content: no delta, no partial content")
	case op.Stream != nil && op.Stream.key != op.Key:
		return fmt.Errorf("the stream uploads to %q, not to the op's key", op.Stream.key)
	}
	if op.SHA256 != "" {
		if b, err := hex.DecodeString(op.SHA256); err != nil || len(b) != 32 {
			return fmt.Errorf("SHA256 %q is not a hex SHA-256", op.SHA256)
		}
	}
	return nil
}

// syncHashed fsyncs the staged file at path, whose hash the caller gave,
// and returns its size.
func (j *Journal) syncHashed(path, sha string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", fmt.Errorf("staged file: %w", err)
	}
	defer closeQuietly(f)
	fi, err := f.Stat()
	if err != nil {
		return 0, "", fmt.Errorf("staged file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return 0, "", fmt.Errorf("staged file %s is not a regular file", path)
	}
	if err := j.syncFile(f); err != nil {
		return 0, "", fmt.Errorf("sync staged file: %w", err)
	}
	return fi.Size(), sha, nil
}

// sealStream seals op's Stream at the staged size, or aborts it when it
// cannot be used; it returns what the record keeps of it (nil: nothing).
func sealStream(op Op, size int64) *stream {
	st := op.Stream.seal(size)
	if st == nil {
		op.Stream.Abort()
	}
	return st
}

// abortStreams aborts the Streams of ops a failed Commit took over.
func abortStreams(ops []Op) {
	for _, op := range ops {
		if op.Stream != nil {
			op.Stream.Abort()
		}
	}
}
