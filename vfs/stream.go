package vfs

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"maps"

	"github.com/nimbus-fs/nimbus/journal"
)

// Upload while writing.
//
// A working copy that starts empty (a new file, a truncate to zero) and is
// written strictly sequentially is uploaded as it is written, when the
// store takes multipart parts (journal/stream.go has the design): the
// SHA-256 of its content is computed write by write, and once the writer
// has moved past a part (the store's part size), a journal.Stream is opened
// and every complete part is handed to it. Flush then commits the working
// copy as always, durable before close returns, with the Stream and the
// hash: the journal does not read the file again, and completes the upload
// rather than sending it.
//
// The working copy falls back to the normal path, and the Stream is
// aborted, as soon as anything breaks the sequence: a write anywhere but at
// the end, a truncate, a commit of a file that was renamed since the stream
// began (another key) or whose mode or owner changed (the upload carries
// the attributes it began with), or a second commit (the copy-on-write
// copy starts non-empty). A file smaller than one part never starts a
// stream. While the store is offline none starts, and the journal refuses
// one. The times (mtime, atime, ctime) are left out of the upload's
// metadata: they change with every write.

// streamer follows a working copy that may be uploaded while written.
type streamer struct {
	hash     hash.Hash // of the copy's bytes [0, size)
	size     int64
	partSize int64
	stream   *journal.Stream // nil until the first part is complete
	meta     map[string]string
	sent     int // parts handed to stream
}

// startStreaming makes w, an empty working copy, follow its writes for an
// upload while writing, when the journal can stream.
func (f *FS) startStreaming(w *workFile) {
	ps := f.cfg.Journal.StreamPartSize()
	if ps <= 0 || w.partial != nil {
		return
	}
	w.stream = &streamer{hash: sha256.New(), partSize: ps}
}

// streamWritten records a write of data at off into w (already in the
// file, whose size is now w.size), for node n. Called with n.mu held; it
// does no network I/O.
func (n *fileNode) streamWrittenLocked(w *workFile, data []byte, off int64) {
	s := w.stream
	if s == nil {
		return
	}
	if off != s.size || off+int64(len(data)) != w.size {
		n.stopStreamingLocked(w, "a write off the end")
		return
	}
	s.hash.Write(data) // hash.Hash.Write never fails
	s.size = w.size
	full := int(w.size / s.partSize)
	if full <= s.sent {
		return
	}
	if s.stream == nil {
		if !n.fsys.online() {
			n.stopStreamingLocked(w, "offline")
			return
		}
		_, _, key := n.location()
		if key == "" {
			n.stopStreamingLocked(w, "unlinked")
			return
		}
		s.meta = streamMeta(attrMeta(n.attrsLocked()))
		s.stream = n.fsys.cfg.Journal.StartStream(w.f.Name(), key, s.meta)
		if s.stream == nil {
			n.stopStreamingLocked(w, "the journal cannot stream now")
			return
		}
	}
	for s.sent < full {
		if !s.stream.Send(s.sent + 1) {
			n.stopStreamingLocked(w, "the upload failed")
			return
		}
		s.sent++
	}
}

// stopStreamingLocked makes w take the normal path: its stream, if any, is
// aborted.
func (n *fileNode) stopStreamingLocked(w *workFile, why string) {
	s := w.stream
	if s == nil {
		return
	}
	w.stream = nil
	if s.stream != nil {
		s.stream.Abort()
		n.fsys.log.Debug("upload while writing stopped", "key", s.stream.Key(), "why", why)
	}
}

// streamTruncatedLocked records a truncate of w to size (before w.size
// changes): anything but a no-op stops the stream, and a copy cut to empty
// starts afresh.
func (n *fileNode) streamTruncatedLocked(w *workFile, size int64) {
	if s := w.stream; s != nil && size == s.size {
		return
	}
	n.stopStreamingLocked(w, "a truncate")
	if size == 0 && w.partial == nil {
		n.fsys.startStreaming(w)
	}
}

// streamForCommitLocked returns the Stream and content hash to commit w
// with, as key whose attributes are meta, or nothing when the copy took
// the normal path (then its stream is aborted). The streamer is done
// either way: a committed copy is never written again.
func (n *fileNode) streamForCommitLocked(w *workFile, key string, meta map[string]string) (*journal.Stream, string) {
	s := w.stream
	if s == nil {
		return nil, ""
	}
	w.stream = nil
	sum := hex.EncodeToString(s.hash.Sum(nil))
	switch {
	case s.stream == nil:
		// Smaller than a part: the hash alone saves reading it again.
		return nil, sum
	case s.stream.Key() != key || !maps.Equal(s.meta, streamMeta(meta)):
		s.stream.Abort()
		n.fsys.log.Debug("upload while writing not used", "key", key, "why", "renamed, or attributes changed")
		return nil, sum
	}
	return s.stream, sum
}

// streamMeta is the metadata an upload while writing carries: meta without
// the times, which change with every write.
func streamMeta(meta map[string]string) map[string]string {
	out := maps.Clone(meta)
	delete(out, metaMTime)
	delete(out, metaATime)
	delete(out, metaCTime)
	return out
}
