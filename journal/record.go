package journal

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
)

// newToken returns a fresh upload token (see record.Token).
func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24)
	return hex.EncodeToString(b[:])
}

// The journal's bbolt buckets. Only this file reads or writes them.
var (
	// opsBucket maps seqKey(seq) to an encoded record; its bbolt sequence
	// is the last sequence number handed out.
	opsBucket = []byte("journal.ops")
	// conflictsBucket maps seqKey(n) to an encoded Conflict.
	conflictsBucket = []byte("journal.conflicts")
	// inlineBucket maps seqKey(seq) to the whole content of a PutFile
	// whose record says Inline: the durable copy of a small staged file.
	inlineBucket = []byte("journal.inline")
)

// recordVersion is written in every record whose content is in its staged
// file; a record of another version is refused at Open rather than misread.
// inlineVersion is written in a record whose content is in inlineBucket, so
// that a nimbus from before inlining refuses it instead of finding its
// staged file gone after a system crash.
const (
	recordVersion = 1
	inlineVersion = 2
)

// record is one committed op as stored in journal.ops.
type record struct {
	V      int      `json:"v"`
	Seq    uint64   `json:"seq"`
	Groups []uint64 `json:"groups"`
	Kind   Kind     `json:"kind"`
	Key    string   `json:"key"`
	// Staged is the base name of the content file in Config.Dir (PutFile).
	Staged string `json:"staged,omitempty"`
	Size   int64  `json:"size,omitempty"`
	// SHA256 is the hex SHA-256 of the staged content (PutFile).
	SHA256 string `json:"sha256,omitempty"`
	// Token (PutFile) is random, made at commit, and stored with every
	// upload of the op as tokenMeta: no other writer can produce it, so a
	// replay recognises its own upload by it. Records written before it
	// existed have none; they are recognised by SHA256, as then.
	Token    string `json:"token,omitempty"`
	Src      string `json:"src,omitempty"`
	SrcETag  string `json:"src_etag,omitempty"`
	SrcAfter uint64 `json:"src_after,omitempty"`
	Version  string `json:"version,omitempty"` // Restore
	// Trash (Delete) is Op.Trash. Records written before it existed have
	// none: their deletes are for good, as then.
	Trash string `json:"trash,omitempty"`
	Base  base   `json:"base"`
	// Prior are the tokens of superseded uploads of this key that may have
	// reached the store (see "Coalescing" in the package doc); hashes of
	// their content in records written before tokens existed.
	Prior []string          `json:"prior,omitempty"`
	Meta  map[string]string `json:"meta,omitempty"`
	// Delta (PutFile, optional) is Op.Delta. Records written before it
	// existed have none, and are uploaded whole.
	Delta *delta `json:"delta,omitempty"`
	// Partial (PutFile, optional) is Op.Partial.
	Partial *partial `json:"partial,omitempty"`
	// Inline (PutFile) says the content is in inlineBucket: the staged
	// file was not synced, and Open writes it again from there.
	Inline bool `json:"inline,omitempty"`
	// Stream (PutFile, optional) is the early upload of the content
	// (stream.go). Records written before it existed have none.
	Stream    *stream   `json:"stream,omitempty"`
	Committed time.Time `json:"committed"`
	// ConflictTime and ConflictReason are set once the uploader decided
	// that this op conflicts, before it uploads the conflicted copy, so
	// that a replay picks the same name.
	ConflictTime   time.Time `json:"conflict_time,omitzero"`
	ConflictReason string    `json:"conflict_reason,omitempty"`
}

// base is the persisted form of Base. When After is set the base is the
// state op After leaves the key in (resolved when it completes); Exists and
// ETag then hold what the caller passed, used only if After is missing,
// which a consistent log never shows.
type base struct {
	Exists bool   `json:"exists"`
	ETag   string `json:"etag,omitempty"`
	After  uint64 `json:"after,omitempty"`
}

// isOurs reports whether info is an upload of this very op (its token; by
// content only for a record from before tokens).
func (r *record) isOurs(info backend.ObjectInfo) bool {
	if r.Token != "" {
		return info.Meta[tokenMeta] == r.Token
	}
	return r.SHA256 != "" && info.Meta[shaMeta] == r.SHA256
}

// isPrior reports whether info is an upload of an op this one superseded:
// a version of this same edit chain, ours to replace.
func (r *record) isPrior(info backend.ObjectInfo) bool {
	if t := info.Meta[tokenMeta]; t != "" && slices.Contains(r.Prior, t) {
		return true
	}
	// Prior entries of a record from before tokens are content hashes.
	return r.Token == "" && slices.Contains(r.Prior, info.Meta[shaMeta])
}

// sameContent reports whether info holds exactly this op's content, by
// whoever it was written: a name both sides gave the same bytes is no
// conflict.
func (r *record) sameContent(info backend.ObjectInfo) bool {
	if info.Size != r.Size {
		return false
	}
	return r.Size == 0 || (r.SHA256 != "" && info.Meta[shaMeta] == r.SHA256)
}

func (b base) public() Base { return Base{Exists: b.Exists, ETag: b.ETag} }

// Ranges are persisted as [offset, length] pairs.
type pairs [][2]int64

func pairsOf(rs []Range) pairs {
	out := make(pairs, len(rs))
	for i, r := range rs {
		out[i] = [2]int64{r.Off, r.Len}
	}
	return out
}

// public returns the ranges, a copy the caller may keep.
func (ps pairs) public() []Range {
	out := make([]Range, len(ps))
	for i, p := range ps {
		out[i] = Range{Off: p[0], Len: p[1]}
	}
	return out
}

// delta is the persisted form of Delta.
type delta struct {
	SrcETag string `json:"src_etag"`
	Same    pairs  `json:"same,omitempty"`
}

// newDelta returns the persisted form of d (nil for nil).
func newDelta(d *Delta) *delta {
	if d == nil {
		return nil
	}
	return &delta{SrcETag: d.SrcETag, Same: pairsOf(d.Same)}
}

// public returns the Delta d records, a copy the caller may keep.
func (d *delta) public() *Delta {
	if d == nil {
		return nil
	}
	return &Delta{SrcETag: d.SrcETag, Same: d.Same.public()}
}

// ranges returns d's ranges for the store.
func (d *delta) ranges() []Range { return d.Same.public() }

// partial is the persisted form of Partial.
type partial struct {
	From     string `json:"from"`
	FromETag string `json:"from_etag"`
	FromSize int64  `json:"from_size"`
	Missing  pairs  `json:"missing"`
}

// newPartial returns the persisted form of p (nil for nil).
func newPartial(p *Partial) *partial {
	if p == nil {
		return nil
	}
	return &partial{From: p.From, FromETag: p.FromETag, FromSize: p.FromSize, Missing: pairsOf(p.Missing)}
}

// public returns the Partial p records, a copy the caller may keep.
func (p *partial) public() *Partial {
	if p == nil {
		return nil
	}
	return &Partial{From: p.From, FromETag: p.FromETag, FromSize: p.FromSize, Missing: p.Missing.public()}
}

// ranges returns p's missing ranges for the store.
func (p *partial) ranges() []Range { return p.Missing.public() }

// seqKey encodes a sequence number as a bbolt key that sorts numerically.
func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

func encodeRecord(r *record) ([]byte, error) {
	r.V = recordVersion
	if r.Inline {
		r.V = inlineVersion
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode journal record %d: %w", r.Seq, err)
	}
	return b, nil
}

func decodeRecord(k, v []byte) (record, error) {
	var r record
	if len(k) != 8 {
		return r, fmt.Errorf("journal record key %x is not a sequence number", k)
	}
	if err := json.Unmarshal(v, &r); err != nil {
		return r, fmt.Errorf("decode journal record %d: %w", binary.BigEndian.Uint64(k), err)
	}
	if (r.V != recordVersion && r.V != inlineVersion) || (r.V == inlineVersion) != r.Inline {
		return r, fmt.Errorf("journal record %d has version %d, this nimbus reads versions %d and %d (inline content)", r.Seq, r.V, recordVersion, inlineVersion)
	}
	if r.Seq != binary.BigEndian.Uint64(k) {
		return r, fmt.Errorf("journal record under key %d says it is %d", binary.BigEndian.Uint64(k), r.Seq)
	}
	return r, nil
}

func putRecord(tx *bbolt.Tx, r *record) error {
	v, err := encodeRecord(r)
	if err != nil {
		return err
	}
	if err := tx.Bucket(opsBucket).Put(seqKey(r.Seq), v); err != nil {
		return fmt.Errorf("write journal record %d: %w", r.Seq, err)
	}
	return nil
}

// putInline stores the content of the inline record seq.
func putInline(tx *bbolt.Tx, seq uint64, content []byte) error {
	if content == nil {
		content = []byte{} // bbolt refuses a nil value; empty content is content
	}
	if err := tx.Bucket(inlineBucket).Put(seqKey(seq), content); err != nil {
		return fmt.Errorf("write inline content of journal record %d: %w", seq, err)
	}
	return nil
}

// deleteRecord removes record seq and its inline content, if any.
func deleteRecord(tx *bbolt.Tx, seq uint64) error {
	if err := tx.Bucket(opsBucket).Delete(seqKey(seq)); err != nil {
		return fmt.Errorf("delete journal record %d: %w", seq, err)
	}
	if err := tx.Bucket(inlineBucket).Delete(seqKey(seq)); err != nil {
		return fmt.Errorf("delete inline content of journal record %d: %w", seq, err)
	}
	return nil
}

// setLastSeq persists the last sequence number handed out.
func setLastSeq(tx *bbolt.Tx, seq uint64) error {
	if err := tx.Bucket(opsBucket).SetSequence(seq); err != nil {
		return fmt.Errorf("write journal sequence: %w", err)
	}
	return nil
}

func putConflict(tx *bbolt.Tx, c *Conflict) error {
	if c.Recorded.IsZero() {
		c.Recorded = time.Now()
	}
	b := tx.Bucket(conflictsBucket)
	n, err := b.NextSequence()
	if err != nil {
		return fmt.Errorf("number conflict record: %w", err)
	}
	v, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode conflict record: %w", err)
	}
	if err := b.Put(seqKey(n), v); err != nil {
		return fmt.Errorf("write conflict record: %w", err)
	}
	return nil
}

// loaded is what Open reads from the DB.
type loaded struct {
	records   []record // in sequence order
	lastSeq   uint64
	conflicts int
}

// initBuckets creates the journal's buckets and reads them.
func initBuckets(db *bbolt.DB) (loaded, error) {
	var l loaded
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{opsBucket, conflictsBucket, inlineBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		ops := tx.Bucket(opsBucket)
		l.lastSeq = ops.Sequence()
		err := ops.ForEach(func(k, v []byte) error {
			r, err := decodeRecord(k, v)
			if err != nil {
				return err
			}
			l.records = append(l.records, r)
			l.lastSeq = max(l.lastSeq, r.Seq)
			return nil
		})
		if err != nil {
			return err
		}
		l.conflicts = tx.Bucket(conflictsBucket).Stats().KeyN
		return nil
	})
	return l, err
}

// readConflicts returns every recorded conflict, oldest first.
func readConflicts(db *bbolt.DB) ([]Conflict, error) {
	var out []Conflict
	err := db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(conflictsBucket).ForEach(func(k, v []byte) error {
			var c Conflict
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("decode conflict record %x: %w", k, err)
			}
			out = append(out, c)
			return nil
		})
	})
	return out, err
}

// restoreInline makes the staged file of every inline record hold its
// content again: a system crash may have lost the unsynced file, or part of
// it. The file is not synced: until the record goes, inlineBucket stays the
// durable copy, and the next Open restores it again.
func restoreInline(db *bbolt.DB, dir string, records []record) (restored int, err error) {
	err = db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(inlineBucket)
		for i := range records {
			r := &records[i]
			if !r.Inline {
				continue
			}
			content := b.Get(seqKey(r.Seq))
			if content == nil {
				return fmt.Errorf("journal record %d (%q) has lost its inline content", r.Seq, r.Key)
			}
			path := filepath.Join(dir, r.Staged)
			if have, err := os.ReadFile(path); err == nil && bytes.Equal(have, content) {
				continue
			}
			if err := os.WriteFile(path, content, 0o600); err != nil {
				return fmt.Errorf("restore staged file of journal record %d: %w", r.Seq, err)
			}
			restored++
		}
		return nil
	})
	return restored, err
}
