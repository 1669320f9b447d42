package vfs

import (
	"slices"

	"github.com/nimbus-fs/nimbus/journal"
)

// maxTouched bounds the ranges a working copy tracks; a file written in
// more scattered places than that is uploaded whole.
const maxTouched = 4096

// changes tracks which bytes of a working copy may differ from the remote
// version it was copied from (its base), so that an upload can send only
// those and have the store copy the rest (journal.Delta).
type changes struct {
	// known: the working copy started as an exact copy of the base's
	// content, and every change since is recorded below.
	known bool
	// baseSize is the size of the base's content.
	baseSize int64
	// minSize is the smallest size the copy had since: bytes at or past it
	// were cut off by a truncate, and are new even if written again.
	minSize int64
	// from are the ranges, sorted and disjoint, where the copy held the
	// base's bytes when tracking began; nil: all of [0, baseSize). A copy
	// of content not uploaded yet holds the base's bytes only where that
	// content's own delta says so.
	from []journal.Range
	// touched are the written ranges, sorted and disjoint.
	touched []journal.Range
}

// copiedFrom starts tracking a copy of a base of size bytes.
func copiedFrom(size int64) changes {
	return changes{known: true, baseSize: size, minSize: size}
}

// write records a write of n bytes at off.
func (c *changes) write(off, n int64) {
	if !c.known || n <= 0 {
		return
	}
	r := journal.Range{Off: off, Len: n}
	// Find the first range ending at or after off, merge every range that
	// overlaps or touches [off, off+n), and insert the union there.
	i := 0
	for i < len(c.touched) && c.touched[i].Off+c.touched[i].Len < off {
		i++
	}
	j := i
	for j < len(c.touched) && c.touched[j].Off <= off+n {
		lo := min(r.Off, c.touched[j].Off)
		hi := max(r.Off+r.Len, c.touched[j].Off+c.touched[j].Len)
		r = journal.Range{Off: lo, Len: hi - lo}
		j++
	}
	c.touched = slices.Replace(c.touched, i, j, r)
	if len(c.touched) > maxTouched {
		c.forget()
	}
}

// truncate records a truncate to size.
func (c *changes) truncate(size int64) {
	c.minSize = min(c.minSize, size)
}

// forget gives up tracking: the next upload sends the whole content.
func (c *changes) forget() {
	*c = changes{}
}

// same returns the ranges of a copy of size bytes that still hold the
// base's bytes at the same offsets (nil when unknown or none).
func (c *changes) same(size int64) []journal.Range {
	if !c.known {
		return nil
	}
	end := min(c.baseSize, c.minSize, size)
	var out []journal.Range
	pos := int64(0)
	for _, t := range c.touched {
		if t.Off >= end {
			break
		}
		if t.Off > pos {
			out = append(out, journal.Range{Off: pos, Len: t.Off - pos})
		}
		pos = max(pos, t.Off+t.Len)
	}
	if pos < end {
		out = append(out, journal.Range{Off: pos, Len: end - pos})
	}
	if c.from != nil {
		out = journal.IntersectRanges(out, c.from)
	}
	return out
}

// copiedFromPending starts tracking a copy of content committed but not
// uploaded yet, whose own delta d says where it holds the bytes of base:
// an edit of a file whose previous close is still waiting to upload keeps
// its delta. Without such a delta nothing is known.
func copiedFromPending(d *journal.Delta, base journal.Base, size int64) changes {
	if d == nil || !base.Exists || d.SrcETag != base.ETag {
		return changes{}
	}
	c := copiedFrom(size)
	c.from = slices.Clone(d.Same)
	return c
}

// landed returns the changes of a working copy based on old once an upload
// of an earlier version of it, r, landed and became its base: the copy
// holds r's bytes where both still held old's. Unknown unless r's delta
// refers to old too.
func (c *changes) landed(old journal.Base, r journal.Result, size int64) changes {
	d := r.Op.Delta
	if !c.known || d == nil || !old.Exists || d.SrcETag != old.ETag {
		return changes{}
	}
	n := copiedFrom(r.Info.Size)
	n.from = journal.IntersectRanges(c.same(size), d.Same)
	if n.from == nil {
		n.from = []journal.Range{} // nothing in common, but still known
	}
	return n
}

// delta is the journal.Delta of a working copy of size bytes based on
// base, or nil when nothing can be copied from the store.
func (c *changes) delta(base journal.Base, size int64) *journal.Delta {
	if !base.Exists || base.ETag == "" {
		return nil
	}
	same := c.same(size)
	if len(same) == 0 {
		return nil
	}
	return &journal.Delta{SrcETag: base.ETag, Same: same}
}

// pendingChanges returns the changes of a new working copy of the content
// staged at staged (size bytes), the newest pending upload of key, based on
// base.
func (f *FS) pendingChanges(key, staged string, base journal.Base, size int64) changes {
	p, ok := f.cfg.Journal.Pending(key)
	if !ok || p.Kind != journal.PutFile || p.Staged != staged || p.Partial != nil {
		return changes{}
	}
	return copiedFromPending(p.Delta, base, size)
}
