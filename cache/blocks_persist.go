package cache

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Database layout. All buckets are the block store's own.
//
//	blocks.meta      "blocksize" → uint64 BE; "clean" → present after a clean Close
//	blocks.contents  content id (16 bytes) → JSON contentRecord (identity and pin flag)
//	blocks.index     content id (16 bytes) + block index (uint32 BE) → access seq (uint64 BE),
//	                 then, for a partial block only, its pageMask (4 × uint64 BE)
var (
	bucketBlocksMeta     = []byte("blocks.meta")
	bucketBlocksContents = []byte("blocks.contents")
	bucketBlocksIndex    = []byte("blocks.index")

	metaBlockSize = []byte("blocksize")
	metaClean     = []byte("clean")
)

// contentRecord is the persisted identity of a content, and its pin flag.
// A pinned content keeps its record even without blocks.
type contentRecord struct {
	Key    string `json:"key"`
	ETag   string `json:"etag"`
	Size   int64  `json:"size"`
	Pinned bool   `json:"pinned,omitempty"`
}

func blockRecordKey(id contentID, i uint32) []byte {
	k := make([]byte, 20)
	copy(k, id[:])
	binary.BigEndian.PutUint32(k[16:], i)
	return k
}

func uint64Bytes(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// blockRecord is the persisted state of one cached block.
type blockRecord struct {
	k       blockKey
	seq     uint64
	partial bool
	mask    pageMask // the pages present, when partial
}

// value encodes r's record.
func (r *blockRecord) value() []byte {
	v := uint64Bytes(r.seq)
	if r.partial {
		for _, w := range r.mask {
			v = binary.BigEndian.AppendUint64(v, w)
		}
	}
	return v
}

// blockRecordValueLen are the lengths of a block record's value: whole,
// and partial.
const (
	wholeRecordLen   = 8
	partialRecordLen = 8 + 8*len(pageMask{})
)

// load restores the index from the database. It runs inside
// OpenBlockStore before any other goroutine can see the store, so the
// *Locked helpers it calls need no lock yet.
//
// After a clean Close every record is durable and matches the disk. After
// a crash, a record may be older than an eviction that punched its block
// (records are committed in batches, evictions punch at once), so each
// record is checked against its file: a block whose range holds a hole is
// dropped, and data that no record accounts for is punched. The "clean"
// marker is deleted in the same transaction, before anything else
// changes, so a crash during this run is seen as one by the next.
func (s *BlockStore) load() error {
	loaded := make(map[contentID]*content)
	var blocks []blockRecord
	err := s.db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketBlocksMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(metaBlockSize); v != nil && (len(v) != 8 || int64(binary.BigEndian.Uint64(v)) != s.bs) {
			s.log.Info("block size changed: dropping the cached blocks", "block_size", s.bs)
			for _, name := range [][]byte{bucketBlocksContents, bucketBlocksIndex} {
				if tx.Bucket(name) != nil {
					if err := tx.DeleteBucket(name); err != nil {
						return err
					}
				}
			}
		}
		if err := meta.Put(metaBlockSize, uint64Bytes(uint64(s.bs))); err != nil {
			return err
		}
		clean := meta.Get(metaClean) != nil
		if err := meta.Delete(metaClean); err != nil {
			return err
		}
		cb, err := tx.CreateBucketIfNotExists(bucketBlocksContents)
		if err != nil {
			return err
		}
		ib, err := tx.CreateBucketIfNotExists(bucketBlocksIndex)
		if err != nil {
			return err
		}
		if err := s.loadContents(cb, loaded); err != nil {
			return err
		}
		byContent, err := s.loadBlocks(ib, loaded)
		if err != nil {
			return err
		}
		var drop [][]byte
		for id, c := range loaded {
			recs := byContent[c]
			if !clean {
				// One file at a time: there may be more contents than
				// file descriptors.
				recs, drop = s.checkContent(c, recs, drop)
			}
			if len(recs) == 0 && !c.pinned {
				// A content without blocks has no business in the cache
				// unless it is pinned; the sweep removes its file.
				if err := cb.Delete(id[:]); err != nil {
					return err
				}
				delete(loaded, id)
				continue
			}
			blocks = append(blocks, recs...)
		}
		if len(drop) > 0 {
			s.log.Info("dropping block records without data", "records", len(drop))
		}
		for _, k := range drop {
			if err := ib.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	slices.SortFunc(blocks, func(a, b blockRecord) int { return cmp.Compare(a.seq, b.seq) })
	for _, b := range blocks {
		if b.k.c.pinned {
			s.pinned[b.k] = b.seq
		} else {
			s.lru.Add(b.k, lruEntry{seq: b.seq})
		}
		if b.partial {
			s.partial[b.k] = b.mask
		}
		s.accountLocked(b.k.c, 1, s.cachedLenLocked(b.k))
		s.seq = max(s.seq, b.seq)
	}
	for _, c := range loaded {
		s.addContentLocked(c)
	}
	s.sweepLocked()
	return nil
}

// loadContents reads the content records whose file exists, and those of
// pinned contents, which may have no blocks (and so no file) yet.
func (s *BlockStore) loadContents(cb *bbolt.Bucket, loaded map[contentID]*content) error {
	var drop [][]byte
	err := cb.ForEach(func(k, v []byte) error {
		var rec contentRecord
		if len(k) != len(contentID{}) || json.Unmarshal(v, &rec) != nil || rec.Size < 0 ||
			contentID(k) != contentIDOf(rec.Key, rec.ETag) {
			drop = append(drop, slices.Clone(k))
			return nil
		}
		c := s.newContent(contentID(k), rec.Key, rec.ETag, rec.Size)
		c.pinned = rec.Pinned
		var st unix.Stat_t
		if err := unix.Stat(c.path, &st); err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				s.log.Warn("stat content file", "path", c.path, "err", err)
			}
			if !c.pinned {
				drop = append(drop, slices.Clone(k))
				return nil
			}
		}
		// A second link is the journal's staged file, left by LinkAdopt
		// for an upload whose completion was not recorded (after a crash,
		// or a close that came first). The journal will upload it again
		// and then drop its name, but a working copy opened from that name
		// meanwhile still reads the file: no hole is punched in it this
		// run, even once the link count is 1 again.
		c.shared = st.Nlink > 1
		c.recorded = true
		loaded[c.id] = c
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range drop {
		if err := cb.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// loadBlocks reads the block records, grouped by content. Records of no
// loaded content, or beyond its end, are deleted.
func (s *BlockStore) loadBlocks(ib *bbolt.Bucket, loaded map[contentID]*content) (map[*content][]blockRecord, error) {
	byContent := make(map[*content][]blockRecord)
	var drop [][]byte
	err := ib.ForEach(func(k, v []byte) error {
		var c *content
		var i uint32
		if len(k) == 20 && (len(v) == wholeRecordLen || len(v) == partialRecordLen) {
			c = loaded[contentID(k[:16])]
			i = binary.BigEndian.Uint32(k[16:])
		}
		if c == nil || int64(i) >= c.nblocks {
			drop = append(drop, slices.Clone(k))
			return nil
		}
		rec := blockRecord{k: blockKey{c, i}, seq: binary.BigEndian.Uint64(v)}
		if len(v) == partialRecordLen {
			rec.partial = true
			for j := range rec.mask {
				rec.mask[j] = binary.BigEndian.Uint64(v[8+8*j:])
			}
			// Pages past the block's end, or none at all, mean a
			// record this store did not write.
			n := s.blockPages(c, int64(i))
			var valid pageMask
			valid.setRange(0, n)
			if rec.mask.count() == 0 || rec.mask.andNot(&valid) {
				drop = append(drop, slices.Clone(k))
				return nil
			}
			if rec.mask.hasRange(0, n) {
				rec.partial, rec.mask = false, pageMask{}
			}
		}
		byContent[c] = append(byContent[c], rec)
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range drop {
		if err := ib.Delete(k); err != nil {
			return nil, err
		}
	}
	return byContent, nil
}

// checkContent checks c's block records against its file after an
// unclean shutdown. It returns the records whose whole range holds data,
// adds the keys of the others to drop, and punches the data that no
// surviving record accounts for (blocks written but never committed, or
// half-written), which would otherwise use disk space outside the budget.
func (s *BlockStore) checkContent(c *content, recs []blockRecord, drop [][]byte) ([]blockRecord, [][]byte) {
	f, err := os.OpenFile(c.path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) && len(recs) == 0 {
		return nil, drop // a pinned content that has no blocks yet
	}
	if err != nil {
		s.log.Warn("open content file", "path", c.path, "err", err)
		for _, b := range recs {
			drop = append(drop, blockRecordKey(c.id, b.k.i))
		}
		return nil, drop
	}
	defer func() {
		if err := f.Close(); err != nil {
			s.log.Warn("close content file", "path", c.path, "err", err)
		}
	}()
	valid := recs[:0]
	recorded := make(map[uint32]*blockRecord, len(recs))
	for _, b := range recs {
		if s.recordHasData(f, &b) {
			valid = append(valid, b)
			recorded[b.k.i] = &valid[len(valid)-1]
		} else {
			drop = append(drop, blockRecordKey(c.id, b.k.i))
		}
	}
	if !punchable(c, f) {
		// Shared with a staged file the journal will upload again
		// (LinkAdopt before the crash; loadContents marked it): it holds
		// all of c's bytes, so nothing is punched.
		return valid, drop
	}
	// Every block no record claims is punched, by ranges: it may hold
	// data (written, never committed) or only the space a run allocated
	// before writing (allocate), which SEEK_DATA does not show.
	claimed := make([]int64, 0, len(valid))
	for _, b := range valid {
		claimed = append(claimed, int64(b.k.i))
	}
	slices.Sort(claimed)
	next := int64(0)
	for _, i := range append(claimed, c.nblocks) {
		if i > next {
			if err := punchHole(f, next*s.bs, min(i*s.bs, c.size)-next*s.bs); err != nil {
				s.log.Warn("punch unrecorded blocks", "path", c.path, "from", next, "to", i, "err", err)
				return valid, drop
			}
		}
		next = i + 1
	}
	for pos := int64(0); pos < c.size; {
		start, end, ok := nextData(f, pos)
		if !ok {
			break
		}
		for i := start / s.bs; i*s.bs < min(end, c.size); i++ {
			rec := recorded[uint32(i)]
			var err error
			switch {
			case rec == nil:
				// Punched above.
			case rec.partial:
				// Pages a fill wrote but never recorded.
				s.absentRuns(c, i, &rec.mask, func(lo, hi int64) {
					if perr := punchHole(f, i*s.bs+lo*s.page, (hi-lo)*s.page); perr != nil {
						err = perr
					}
				})
			}
			if err != nil {
				s.log.Warn("punch unrecorded block", "path", c.path, "block", i, "err", err)
				return valid, drop
			}
		}
		pos = end
	}
	return valid, drop
}

// recordHasData reports whether the file holds data wherever b says the
// block has some: the whole block, or each run of its present pages.
func (s *BlockStore) recordHasData(f *os.File, b *blockRecord) bool {
	c, i := b.k.c, int64(b.k.i)
	if !b.partial {
		return hasData(f, i*s.bs, s.blockLen(c, i))
	}
	ok := true
	var absent pageMask
	s.absentRuns(c, i, &b.mask, func(lo, hi int64) { absent.setRange(lo, hi) })
	s.absentRuns(c, i, &absent, func(lo, hi int64) {
		// A run of present pages.
		if ok && !hasData(f, i*s.bs+lo*s.page, min(hi*s.page, s.blockLen(c, i))-lo*s.page) {
			ok = false
		}
	})
	return ok
}

// sweepLocked removes the files in the store's directory that belong to
// no known content: written before a crash and never recorded, or left
// by a content whose records were dropped. Only names the store could
// have made are touched.
func (s *BlockStore) sweepLocked() {
	dirs, err := os.ReadDir(s.dir)
	if err != nil {
		s.log.Warn("sweep block store", "dir", s.dir, "err", err)
		return
	}
	for _, d := range dirs {
		if !d.IsDir() || len(d.Name()) != 2 {
			continue
		}
		sub := filepath.Join(s.dir, d.Name())
		files, err := os.ReadDir(sub)
		if err != nil {
			s.log.Warn("sweep block store", "dir", sub, "err", err)
			continue
		}
		for _, f := range files {
			var id contentID
			if b, err := hex.DecodeString(f.Name()); err != nil || len(b) != len(id) || f.Name()[:2] != d.Name() {
				continue
			} else {
				copy(id[:], b)
			}
			if s.contents[id] != nil {
				continue
			}
			if err := os.Remove(filepath.Join(sub, f.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
				s.log.Warn("remove stray content file", "path", filepath.Join(sub, f.Name()), "err", err)
			}
		}
	}
}

// flusher persists the index every flushInterval until Close.
func (s *BlockStore) flusher() {
	defer s.wg.Done()
	t := time.NewTicker(s.flushInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			if err := s.flush(false); err != nil {
				s.log.Warn("persist block index", "err", err)
			}
		}
	}
}

// flushBatch is one flush's share of the pending changes.
type flushBatch struct {
	syncs       []*content // contents written since the last flush; a ref is held on each
	files       []*os.File // their files, as of the snapshot
	puts        []blockRecord
	dels        []blockKey
	contentPuts []contentPut
	contentDels []contentID
}

// contentPut is a content record to write, as of the snapshot.
type contentPut struct {
	c   *content
	rec contentRecord
}

func (b *flushBatch) empty() bool {
	return len(b.syncs)+len(b.puts)+len(b.dels)+len(b.contentPuts)+len(b.contentDels) == 0
}

// flush persists the pending index changes: first fdatasync of the files
// written since the last flush, then one bbolt transaction, so that no
// committed record claims data that is not durable. clean marks a clean
// shutdown, which lets the next open skip checking the records.
//
// A file that GETs are still writing into is left for a later flush, with
// its new block records, until they pause or for maxSyncDelay at most
// (not at a clean shutdown): its fdatasync would write back what they are
// writing while they write it, and they stall behind it. A cold 1 GiB read
// took 0.86-1.31 s here, as a flush fell in its middle or not, and
// 0.88-1.02 s once such a flush waited. A crash meanwhile only forgets
// those blocks, which are fetched again.
func (s *BlockStore) flush(clean bool) error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()

	s.mu.Lock()
	var deferred map[*content]bool
	if !clean {
		deferred = s.deferredSyncsLocked(time.Now())
	}
	b := s.snapshotLocked(deferred)
	s.mu.Unlock()
	if b.empty() && !clean {
		return nil
	}

	var errs []error
	failed := make(map[*content]bool)
	for j, c := range b.syncs {
		if err := fdatasync(b.files[j]); err != nil {
			errs = append(errs, fmt.Errorf("sync %s: %w", c.path, err))
			failed[c] = true
		}
	}
	s.mu.Lock()
	for _, c := range b.syncs {
		if failed[c] {
			// After a failed fdatasync the page cache cannot be trusted
			// to reach the disk (or even to stay readable): drop the
			// content; its blocks are fetched again.
			s.log.Warn("content file sync failed: dropping its blocks", "key", c.key, "path", c.path)
			s.retireLocked(c, fmt.Errorf("cache file of %q failed to sync", c.key))
		}
		s.unrefLocked(c)
	}
	s.mu.Unlock()
	if len(failed) > 0 {
		b.puts = slices.DeleteFunc(b.puts, func(p blockRecord) bool { return failed[p.k.c] })
		b.contentPuts = slices.DeleteFunc(b.contentPuts, func(p contentPut) bool { return failed[p.c] })
	}

	err := s.commit(b, clean && len(errs) == 0)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		// Try again next time; meanwhile nothing claims more than is on disk.
		for _, p := range b.puts {
			s.pending[p.k] = struct{}{}
		}
		for _, k := range b.dels {
			s.pending[k] = struct{}{}
		}
		for _, p := range b.contentPuts {
			if !p.c.gone() {
				s.recordDirty[p.c] = struct{}{}
			}
		}
		s.gone = append(s.gone, b.contentDels...)
		return errors.Join(append(errs, fmt.Errorf("commit block index: %w", err))...)
	}
	for _, p := range b.contentPuts {
		p.c.recorded = true
		if p.c.gone() {
			// Retired while its record was being written.
			s.gone = append(s.gone, p.c.id)
		}
	}
	return errors.Join(errs...)
}

// snapshotLocked takes the pending changes for a flush.
func (s *BlockStore) snapshotLocked(deferred map[*content]bool) *flushBatch {
	b := &flushBatch{contentDels: s.gone}
	s.gone = nil
	toRecord := make(map[*content]bool)
	for c := range s.recordDirty {
		if !c.gone() {
			toRecord[c] = true
		}
	}
	clear(s.recordDirty)
	for k := range s.pending {
		var seq uint64
		cached := false
		mask, partial := s.partial[k]
		if h, ok := s.held[k]; ok {
			seq, cached = h.seq, true
		} else if pseq, ok := s.pinned[k]; ok {
			seq, cached = pseq, true
		} else if e, ok := s.lru.Peek(k); ok {
			seq, cached = e.seq, true
		}
		if !cached || k.c.gone() {
			b.dels = append(b.dels, k)
			delete(s.pending, k)
			continue
		}
		if deferred[k.c] {
			continue // recorded once its file is synced
		}
		b.puts = append(b.puts, blockRecord{k: k, seq: seq, partial: partial, mask: mask})
		delete(s.pending, k)
		if !k.c.recorded {
			toRecord[k.c] = true
		}
	}
	for c := range toRecord {
		b.contentPuts = append(b.contentPuts, contentPut{c, contentRecord{Key: c.key, ETag: c.etag, Size: c.size, Pinned: c.pinned}})
	}
	for c := range s.unsynced {
		if deferred[c] {
			continue
		}
		delete(s.unsynced, c)
		if c.f == nil {
			continue // cannot happen: an unsynced file stays open
		}
		c.refs++
		c.syncDeferred = time.Time{}
		b.syncs = append(b.syncs, c)
		b.files = append(b.files, c.f)
	}
	return b
}

// deferredSyncsLocked returns the unsynced contents that GETs are writing
// into, which flush leaves for later, except those left since
// maxSyncDelay before now.
func (s *BlockStore) deferredSyncsLocked(now time.Time) map[*content]bool {
	var out map[*content]bool
	for k := range s.flights {
		c := k.c
		if _, dirty := s.unsynced[c]; !dirty || out[c] {
			continue
		}
		if c.syncDeferred.IsZero() {
			c.syncDeferred = now
		}
		if now.Sub(c.syncDeferred) >= s.maxSyncDelay {
			continue
		}
		if out == nil {
			out = make(map[*content]bool)
		}
		out[c] = true
	}
	return out
}

// commit writes a batch in one transaction: deletions first, so that a
// content retired and cached again under the same id in the same batch
// keeps its new records.
func (s *BlockStore) commit(b *flushBatch, clean bool) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		meta, cb, ib := tx.Bucket(bucketBlocksMeta), tx.Bucket(bucketBlocksContents), tx.Bucket(bucketBlocksIndex)
		if meta == nil || cb == nil || ib == nil {
			return errors.New("block store buckets missing")
		}
		for _, id := range b.contentDels {
			if err := cb.Delete(id[:]); err != nil {
				return err
			}
		}
		for _, k := range b.dels {
			if err := ib.Delete(blockRecordKey(k.c.id, k.i)); err != nil {
				return err
			}
		}
		for _, p := range b.contentPuts {
			rec, err := json.Marshal(p.rec)
			if err != nil {
				return err
			}
			if err := cb.Put(p.c.id[:], rec); err != nil {
				return err
			}
		}
		for _, p := range b.puts {
			if err := ib.Put(blockRecordKey(p.k.c.id, p.k.i), p.value()); err != nil {
				return err
			}
		}
		if clean {
			return meta.Put(metaClean, []byte{1})
		}
		return nil
	})
}

// punchHole deallocates [off, off+n) of f, keeping its size. The end is
// rounded up to fsBlockSize: a range that is not a whole number of file
// system blocks would only be zeroed at its end, and the ranges punched
// end either at a block boundary, which is aligned, or at the end of the
// content, after which the file holds nothing.
func punchHole(f *os.File, off, n int64) error {
	n = (off+n+fsBlockSize-1)/fsBlockSize*fsBlockSize - off
	return fileControl(f, func(fd int) error {
		return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	})
}

// allocate gives [off, off+n) of f its disk blocks before a run writes
// them, extending the file's size to off+n if it was shorter. Writes into
// allocated blocks skip the file system's per-page delayed allocation
// (ext4 spends about 15% of a cold sequential read's CPU in nimbus on it),
// and a full disk fails the run before its GET body is read, not midway.
// The blocks stay unwritten extents until written: they read as zeros and
// SEEK_DATA does not show them, which is why checkContent punches every
// unrecorded block and not only the data it finds. A file system without
// fallocate fails here, and the run writes as before.
//
// Only runs of minAllocateBytes or more allocate: the gain is per byte,
// while each allocation leaves unwritten extents that do not merge with
// written neighbours until written back, so that short runs scattered over
// a file can cost an extent-tree block more than plain writes would.
func allocate(f *os.File, off, n int64) error {
	return fileControl(f, func(fd int) error {
		return unix.Fallocate(fd, 0, off, n)
	})
}

func fdatasync(f *os.File) error {
	return fileControl(f, unix.Fdatasync)
}

// hasData reports whether [off, off+n) of f is all data, with no hole: a
// block that a crash left unwritten, or punched, fails the check. On a
// file system without SEEK_HOLE the whole file counts as data.
func hasData(f *os.File, off, n int64) bool {
	var hole int64
	err := fileControl(f, func(fd int) error {
		var err error
		hole, err = unix.Seek(fd, off, unix.SEEK_HOLE)
		return err
	})
	return err == nil && hole >= off+n
}

// nextData returns the first data extent [start, end) of f at or after
// pos; ok is false if there is none.
func nextData(f *os.File, pos int64) (start, end int64, ok bool) {
	err := fileControl(f, func(fd int) error {
		var err error
		if start, err = unix.Seek(fd, pos, unix.SEEK_DATA); err != nil {
			return err
		}
		end, err = unix.Seek(fd, start, unix.SEEK_HOLE)
		return err
	})
	return start, end, err == nil
}

// fileControl runs fn on f's descriptor, retrying on EINTR. Going through
// SyscallConn keeps f from being closed under fn.
func fileControl(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if opErr = fn(int(fd)); !errors.Is(opErr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	return opErr
}
