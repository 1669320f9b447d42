package journal

// Deltas along an edit chain.
//
// An op chained to a pending PutFile (see "Chained bases") carries a Delta
// against the version the chain started from, X: the local edits since X
// are what the vfs tracks. When the earlier op lands as version Y, the
// follower is conditioned on Y, and a delta against X would be useless (it
// is used only while the If-Match is its SrcETag), so the follower would
// send its whole content. But where both the earlier content and the
// follower still hold X's bytes, the follower holds Y's: the follower's
// delta is rebased onto Y as the intersection of the two ranges.

// rebasedDelta returns the delta of a follower of done once done completed
// with out: d itself when it already refers to the version done produced
// or cannot be rebased, else d rebased onto that version (nil when no
// range is left).
func rebasedDelta(d *delta, done *record, out outcome) *delta {
	if d == nil || out.conflict != nil || out.dropped || !out.next.Exists || out.next.ETag == "" ||
		d.SrcETag == out.next.ETag || done.Kind != PutFile || done.Delta == nil || done.Delta.SrcETag != d.SrcETag {
		return d
	}
	same := IntersectRanges(d.ranges(), done.Delta.ranges())
	if len(same) == 0 {
		return nil
	}
	return &delta{SrcETag: out.next.ETag, Same: pairsOf(same)}
}

// IntersectRanges returns the ranges common to a and b, which are sorted
// and disjoint; so is the result.
func IntersectRanges(a, b []Range) []Range {
	var out []Range
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo, hi := max(a[i].Off, b[j].Off), min(a[i].End(), b[j].End())
		if lo < hi {
			out = append(out, Range{Off: lo, Len: hi - lo})
		}
		if a[i].End() < b[j].End() {
			i++
		} else {
			j++
		}
	}
	return out
}
