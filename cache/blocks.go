package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.etcd.io/bbolt"

	"github.com/nimbus-fs/nimbus/backend"
)

// Defaults and limits of the block store.
const (
	DefaultBlockSize        = 1 << 20
	DefaultReadAhead        = 64 << 20
	DefaultFetchConcurrency = 16
	DefaultFlushInterval    = time.Second

	// maxRunBytes caps one ranged GET: long enough to amortise the request
	// latency of a sequential stream, short enough that a failure wastes
	// little and that several GETs can run in parallel.
	maxRunBytes = 8 << 20

	// minAllocateBytes is the shortest run that allocates its range
	// before writing it (see allocate): the read-ahead runs of a
	// sequential reader, not a seeking reader's pages.
	minAllocateBytes = 4 << 20

	// fsBlockSize is the granularity at which holes can be punched. Block
	// sizes are multiples of it so that an evicted block frees exactly its
	// bytes.
	fsBlockSize = 4096

	// pinSpareBytes is the free space Pin leaves on the cache's file
	// system, for the database, the journal and everything else on it.
	pinSpareBytes = 64 << 20

	// maxSyncDelay is how long a flush may leave a content file unsynced
	// while GETs are still writing into it (see flush).
	maxSyncDelay = 10 * time.Second
)

// ErrBlockStoreClosed is returned by reads after BlockStore.Close.
var ErrBlockStoreClosed = errors.New("block store closed")

// ErrNoSpace means the cache's file system cannot hold the data: Pin
// found too little free space for what it would download, or a block
// write failed with ENOSPC or EDQUOT.
var ErrNoSpace = errors.New("not enough disk space for the cache")

// errNoRoom cancels a read-ahead run that would push the cache over its
// budget. Nobody waits for such a run, so the error is never returned.
var errNoRoom = errors.New("no room for read-ahead")

// Fetcher is what the block store needs from the object store: one ranged
// GET pinned to an ETag. backend.Backend satisfies it.
type Fetcher interface {
	// Get returns the bytes [off, off+n) of key. It fails with an error
	// wrapping backend.ErrPrecondition if the object's ETag is not ifMatch.
	Get(ctx context.Context, key string, off, n int64, ifMatch string) (io.ReadCloser, error)
}

var _ Fetcher = (backend.Backend)(nil)

// Content identifies one immutable version of an object. Cached blocks
// belong to a (Key, ETag) pair, so a new version of an object never sees the
// blocks of an old one.
type Content struct {
	Key  string
	ETag string
	Size int64
}

// BlockStoreConfig configures OpenBlockStore. Zero values take the defaults.
type BlockStoreConfig struct {
	// Dir holds the content files; it is created if missing. The block
	// store owns it: files in it that it does not know are removed.
	Dir string
	// DB is the shared database. The block store owns the buckets whose
	// names start with "blocks".
	DB      *bbolt.DB
	Fetcher Fetcher
	// BlockSize is the unit of fetching, caching and eviction. It must be a
	// multiple of 4096. Default 1 MiB. Changing it drops the cache.
	BlockSize int64
	// Capacity is the byte budget for clean, evictable cached blocks
	// (--cache-size). Blocks of pinned contents are outside it. It must
	// be > 0.
	Capacity int64
	// ReadAhead is the largest read-ahead window of one sequential reader,
	// in bytes. Default DefaultReadAhead (64 MiB); negative disables read-ahead. The window is
	// further limited to a quarter of Capacity.
	ReadAhead int64
	// FetchConcurrency caps the ranged GETs running at once in the whole
	// store. Default DefaultFetchConcurrency (16).
	FetchConcurrency int
	// FlushInterval is how often block presence is persisted. Default 1 s.
	FlushInterval time.Duration
	Logger        *slog.Logger
}

// BlockStats is a snapshot of the block store's counters.
type BlockStats struct {
	Used         int64 // bytes of evictable (unpinned) cached blocks, including blocks being read; at most Capacity once they are released
	Capacity     int64 // the byte budget of Used
	Blocks       int64 // evictable cached blocks
	Pinned       int64 // bytes of cached blocks of pinned contents, outside the budget
	PinnedBlocks int64 // cached blocks of pinned contents
	Evictions    int64 // blocks evicted to stay within Capacity
	Hits         int64 // blocks a read found cached
	Misses       int64 // blocks a read had to fetch itself
	Joins        int64 // blocks a read found already being fetched, and waited for

	Fetches         int64 // ranged GETs issued, read-ahead included
	FetchedBytes    int64 // bytes received and stored by successful GETs
	ReadAheadWasted int64 // bytes fetched by read-ahead and evicted unread

	WholeHolds int64 // contents held whole for a passthrough reader (HoldWhole)
}

// BlockStore caches the contents of remote objects as fixed-size blocks in
// sparse files on disk, under a byte budget with LRU eviction. Pinned
// contents are kept whole outside the budget.
//
// # Layout
//
// Each Content (key + ETag) has one sparse file, Dir/ab/abcd…, named by a
// hash of key+"\x00"+etag. Block i lives at offset i*BlockSize, written
// with pwrite; an evicted block's range is punched out of the file
// (FALLOC_FL_PUNCH_HOLE) so that the disk space really goes, and a file
// without blocks is removed. Files are opened lazily and kept open while a
// handle, a fetch or an unsynced write needs them.
//
// # Index
//
// Every cached block is in exactly one of three places: the LRU list
// (evictable; golang-lru's simplelru gives the order, the store counts the
// bytes), the pinned map (a block of a pinned content), or the held map
// (being read right now, whatever its content). Eviction only ever takes
// the oldest LRU entry, so neither a pinned block nor a block under a
// reader is ever evicted. A released block goes back to the pinned map if
// its content is pinned, else to the LRU. A block being fetched has a flight,
// which every reader of that block waits on; a flight that completes with
// readers waiting hands each of them a hold, so a fetched block cannot be
// evicted before its readers have read it.
//
// # Fetching
//
// A read fetches the missing blocks it covers, consecutive ones in one
// ranged GET pinned to the ETag (at most maxRunBytes, 8 MiB, and a quarter
// of Capacity), and only publishes them
// once the body has delivered exactly the bytes asked for. A Handle that
// reads sequentially also reads ahead, in a window that doubles up to
// ReadAhead (and a quarter of Capacity), split into parallel GETs. All
// GETs share FetchConcurrency slots, fewer of which are open to
// read-ahead, and unread read-ahead is capped at half of Capacity, so that
// it cannot evict what readers are about to read.
//
// # Pinning
//
// Pinning is a property of a content (one version of an object), not of
// its blocks: Pin marks the content, moves its cached blocks from the LRU
// to the pinned map, and fetches the missing ones in parallel GETs, which
// land in the pinned map. The bytes of a pinned content's blocks count as
// pinnedBytes instead of used, so Capacity bounds only what can be evicted;
// a content's pin flip moves its bytes between the two counters at once.
// Unpin merges its blocks back into the LRU in the order of their last
// access and evicts down to Capacity. A pinned content stays in the index
// even without blocks, so a Pin that failed half-way resumes. Free drops a
// key's blocks now, except those under a reader, which carry a drop mark
// and go when released.
//
// # Whole holds
//
// A passthrough reader reads a content file without the block store
// seeing it: HoldWhole holds all of the blocks of an entirely cached
// content until its Release (see blocks_whole.go).
//
// # Persistence
//
// Presence is recorded in bbolt, one record per block (content id, block
// index) → access sequence number, which also restores the LRU order. A
// background flusher batches the changes: it first fdatasyncs the content
// files written since the previous flush, then commits the records, so a
// record never claims bytes that are not durable. Evictions punch at once
// and are committed at the next flush; to cover a crash in between, a
// record whose range is a hole is discarded when the store is opened after
// an unclean shutdown (see load).
//
// # Locking
//
// One mutex, mu, guards the whole index. It is held for metadata work only
// (map updates, opening and unlinking files, punching holes) and never
// across a GET, a read or write of block data, statfs, or a call to a Pin
// progress function. LOCK ORDER: flushMu → mu.
// Handle.mu is a leaf: nothing else is locked while it is held.
type BlockStore struct {
	dir     string
	db      *bbolt.DB
	fetcher Fetcher
	log     *slog.Logger

	bs             int64 // block size
	page           int64 // page size: the unit of a partial block (see blocks_partial.go)
	capacity       int64
	flushInterval  time.Duration
	runBlocks      int64 // most blocks fetched by one GET
	maxAheadBlocks int64 // largest read-ahead window of one handle; 0 = none
	aheadLimit     int64 // most bytes of unread read-ahead in the whole store

	// maxSyncDelay is the constant of that name; tests shorten it.
	maxSyncDelay time.Duration

	ctx    context.Context // background work; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // fetch runs and the flusher

	// fetchSlots bounds the GETs of the whole store. Read-ahead must also
	// take an aheadSlot, of which there are fewer, so that a reader's own
	// fetch always finds a slot soon even under heavy read-ahead.
	fetchSlots chan struct{}
	aheadSlots chan struct{}

	bufPool sync.Pool // *[]byte copy buffers

	flushMu sync.Mutex // serialises flushes

	mu       sync.Mutex
	closed   bool                               // GUARDED_BY(mu)
	contents map[contentID]*content             // GUARDED_BY(mu): live contents
	byKey    map[string][]*content              // GUARDED_BY(mu): live contents by key
	lru      *simplelru.LRU[blockKey, lruEntry] // GUARDED_BY(mu): cached, evictable blocks not being read
	pinned   map[blockKey]uint64                // GUARDED_BY(mu): cached blocks of pinned contents not being read → access seq
	held     map[blockKey]blockHold             // GUARDED_BY(mu): cached blocks being read
	flights  map[blockKey]*flight               // GUARDED_BY(mu): blocks being fetched
	partial  map[blockKey]pageMask              // GUARDED_BY(mu): cached blocks that hold only some pages; a cached block not in it is whole
	used     int64                              // GUARDED_BY(mu): bytes of cached blocks of unpinned contents (lru and held)
	reserved int64                              // GUARDED_BY(mu): bytes being written by fetches within the budget
	ahead    int64                              // GUARDED_BY(mu): read-ahead bytes in flight or cached unread
	seq      uint64                             // GUARDED_BY(mu): last access sequence number
	pending  map[blockKey]struct{}              // GUARDED_BY(mu): blocks whose record must be rewritten
	gone     []contentID                        // GUARDED_BY(mu): content records to delete
	unsynced map[*content]struct{}              // GUARDED_BY(mu): contents written since the last flush
	stats    BlockStats                         // GUARDED_BY(mu)
	warned   bool                               // GUARDED_BY(mu): hole punching failure was logged

	pinnedBytes  int64                 // GUARDED_BY(mu): bytes of cached blocks of pinned contents (pinned and held)
	pinnedBlocks int64                 // GUARDED_BY(mu): cached blocks of pinned contents
	pinPending   int64                 // GUARDED_BY(mu): bytes the running Pins still have to fetch
	recordDirty  map[*content]struct{} // GUARDED_BY(mu): contents whose record (its pin flag) must be rewritten
	wholeBytes   int64                 // GUARDED_BY(mu): bytes of unpinned contents held whole (blocks_whole.go)
}

// contentID names a Content on disk and in the database: the first 16
// bytes of sha256(key + "\x00" + etag).
type contentID [16]byte

func contentIDOf(key, etag string) contentID {
	h := sha256.New()
	// hash.Hash.Write never returns an error.
	_, _ = io.WriteString(h, key)
	_, _ = h.Write([]byte{0})
	_, _ = io.WriteString(h, etag)
	var id contentID
	copy(id[:], h.Sum(nil))
	return id
}

func (id contentID) String() string { return hex.EncodeToString(id[:]) }

// content is one version of one object, as far as the block store knows it.
type content struct {
	id      contentID
	key     string
	etag    string
	size    int64
	nblocks int64
	path    string

	f      *os.File // GUARDED_BY(BlockStore.mu); nil while nobody needs it
	refs   int      // GUARDED_BY(BlockStore.mu): handles, reads and fetch runs using it
	blocks int64    // GUARDED_BY(BlockStore.mu): cached blocks
	bytes  int64    // GUARDED_BY(BlockStore.mu): cached bytes
	// recorded: its record is committed in the database.
	recorded bool // GUARDED_BY(BlockStore.mu)
	// stale: a GET failed with ErrPrecondition, so read-ahead stops.
	stale bool // GUARDED_BY(BlockStore.mu)
	// pinned: the content's blocks are never evicted and count as
	// pinnedBytes; it stays in the index (and the database) without blocks.
	pinned bool // GUARDED_BY(BlockStore.mu)
	// syncDeferred: when a flush first left the file unsynced because GETs
	// were writing into it; zero once it is synced.
	syncDeferred time.Time // GUARDED_BY(BlockStore.mu)
	// goneErr, once set, retires the content: it left the index, its file
	// was unlinked (the path may already belong to a successor with the
	// same id), and reads through old handles fail with goneErr.
	goneErr error // GUARDED_BY(BlockStore.mu)
	// shared: the file is also an upload's staged file (LinkAdopt, or a
	// second link found when the store opens), which others may
	// still read: no hole is ever punched in it. Set before any run can
	// use the file (under mu, or while the store opens), never cleared.
	shared bool
}

func (c *content) gone() bool { return c.goneErr != nil }

// blockKey names one block of one content. The pointer keeps keys small and
// keeps a retired content's blocks apart from its successor's.
type blockKey struct {
	c *content
	i uint32
}

// lruEntry is the LRU's value for a cached, evictable block.
type lruEntry struct {
	seq   uint64 // access sequence number, persisted to restore the order
	ahead bool   // fetched by read-ahead and not read yet
}

// blockHold marks a cached block that readers are reading.
type blockHold struct {
	refs int32
	seq  uint64 // sequence number of the latest access
	drop bool   // Free dropped its content: drop the block once released
}

// flight is a fetch of one block in progress. Reads of the block join it
// instead of issuing their own GET.
type flight struct {
	done    chan struct{} // closed, under mu, once the block is cached or failed
	err     error         // set before done is closed
	waiters int32         // GUARDED_BY(BlockStore.mu): reads that will take a hold
	ahead   bool          // started by read-ahead
}

// OpenBlockStore opens the block store in cfg.Dir, restoring the blocks
// cached by a previous run, and starts its background flusher.
func OpenBlockStore(cfg BlockStoreConfig) (*BlockStore, error) {
	if err := cfg.normalize(); err != nil {
		return nil, fmt.Errorf("open block store: %w", err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("open block store: %w", err)
	}
	lru, err := simplelru.NewLRU[blockKey, lruEntry](math.MaxInt, nil)
	if err != nil {
		return nil, fmt.Errorf("open block store: %w", err)
	}
	bs := cfg.BlockSize
	aheadSlots := max(1, cfg.FetchConcurrency-cfg.FetchConcurrency/4)
	ctx, cancel := context.WithCancel(context.Background())
	s := &BlockStore{
		dir:            cfg.Dir,
		db:             cfg.DB,
		fetcher:        cfg.Fetcher,
		log:            cfg.Logger.With("component", "blocks"),
		bs:             bs,
		page:           pageSizeFor(bs),
		capacity:       cfg.Capacity,
		flushInterval:  cfg.FlushInterval,
		maxSyncDelay:   maxSyncDelay,
		runBlocks:      max(1, min(maxRunBytes, cfg.Capacity/4)/bs),
		maxAheadBlocks: max(0, min(cfg.ReadAhead, cfg.Capacity/4)/bs),
		aheadLimit:     cfg.Capacity / 2,
		ctx:            ctx,
		cancel:         cancel,
		fetchSlots:     make(chan struct{}, cfg.FetchConcurrency),
		aheadSlots:     make(chan struct{}, aheadSlots),
		contents:       make(map[contentID]*content),
		byKey:          make(map[string][]*content),
		lru:            lru,
		pinned:         make(map[blockKey]uint64),
		held:           make(map[blockKey]blockHold),
		flights:        make(map[blockKey]*flight),
		partial:        make(map[blockKey]pageMask),
		pending:        make(map[blockKey]struct{}),
		unsynced:       make(map[*content]struct{}),
		recordDirty:    make(map[*content]struct{}),
	}
	s.bufPool.New = func() any {
		b := make([]byte, 256<<10)
		return &b
	}
	if err := s.load(); err != nil {
		cancel()
		return nil, fmt.Errorf("open block store in %s: %w", cfg.Dir, err)
	}
	s.mu.Lock()
	// The budget may have shrunk since the last run.
	s.evictLocked(0)
	s.mu.Unlock()

	s.wg.Add(1)
	go s.flusher()
	st := s.Stats()
	s.log.Info("block store open", "dir", cfg.Dir, "blocks", st.Blocks, "used", st.Used, "capacity", st.Capacity,
		"pinned_blocks", st.PinnedBlocks, "pinned", st.Pinned)
	return s, nil
}

func (cfg *BlockStoreConfig) normalize() error {
	switch {
	case cfg.Dir == "":
		return errors.New("no directory")
	case cfg.DB == nil:
		return errors.New("no database")
	case cfg.Fetcher == nil:
		return errors.New("no fetcher")
	case cfg.Capacity <= 0:
		return fmt.Errorf("capacity %d: must be > 0", cfg.Capacity)
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.BlockSize < 0 || cfg.BlockSize%fsBlockSize != 0 {
		return fmt.Errorf("block size %d: must be a positive multiple of %d", cfg.BlockSize, fsBlockSize)
	}
	if cfg.ReadAhead == 0 {
		cfg.ReadAhead = DefaultReadAhead
	}
	if cfg.FetchConcurrency <= 0 {
		cfg.FetchConcurrency = DefaultFetchConcurrency
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return nil
}

// Close stops read-ahead and the flusher, waits for fetches in progress to
// end (they are cancelled), persists the index and closes the content
// files. Reads through handles still open fail with ErrBlockStoreClosed.
func (s *BlockStore) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	s.cancel()
	s.wg.Wait()
	err := s.flush(true)

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.contents {
		s.closeFileLocked(c)
	}
	if err != nil {
		return fmt.Errorf("close block store: %w", err)
	}
	return nil
}

// Open returns a handle for reading c. Each open file handle should have its
// own, because the handle tracks whether its reads are sequential.
func (s *BlockStore) Open(c Content) *Handle {
	h := &Handle{s: s, lastEnd: -1}
	if err := s.validateContent(c); err != nil {
		h.err = fmt.Errorf("open %q: %w", c.Key, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		h.err = ErrBlockStoreClosed
	}
	if h.err != nil {
		h.closed = true
		return h
	}
	h.c = s.contentLocked(c)
	h.c.refs++
	return h
}

// validateContent checks that c can be cached.
func (s *BlockStore) validateContent(c Content) error {
	switch {
	case c.Size < 0:
		return fmt.Errorf("negative size %d", c.Size)
	case (c.Size+s.bs-1)/s.bs > math.MaxUint32:
		return fmt.Errorf("%d bytes is too large for block size %d", c.Size, s.bs)
	}
	return nil
}

// contentLocked returns the live content for c, creating it if needed.
func (s *BlockStore) contentLocked(c Content) *content {
	id := contentIDOf(c.Key, c.ETag)
	if cc := s.contents[id]; cc != nil {
		return cc
	}
	cc := s.newContent(id, c.Key, c.ETag, c.Size)
	s.addContentLocked(cc)
	return cc
}

func (s *BlockStore) newContent(id contentID, key, etag string, size int64) *content {
	name := id.String()
	return &content{
		id:      id,
		key:     key,
		etag:    etag,
		size:    size,
		nblocks: (size + s.bs - 1) / s.bs,
		path:    filepath.Join(s.dir, name[:2], name),
	}
}

func (s *BlockStore) addContentLocked(c *content) {
	s.contents[c.id] = c
	s.byKey[c.key] = append(s.byKey[c.key], c)
}

// CachedBytes returns how many bytes of c are cached on disk: 0 means the
// content is online only, c.Size that it is entirely local.
func (s *BlockStore) CachedBytes(c Content) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cc := s.contents[contentIDOf(c.Key, c.ETag)]; cc != nil {
		return cc.bytes
	}
	return 0
}

// Forget drops every cached version of key except the one with ETag
// keepETag ("" drops them all), because the remote object changed. Pinned
// versions go too: the caller pins the new one. Handles open on a dropped
// version fail their reads, and Pins of it return, with an error wrapping
// backend.ErrPrecondition.
func (s *BlockStore) Forget(key string, keepETag string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range slices.Clone(s.byKey[key]) {
		if keepETag != "" && c.etag == keepETag {
			continue
		}
		s.log.Debug("forget content", "key", c.key, "etag", c.etag, "bytes", c.bytes)
		s.retireLocked(c, fmt.Errorf("content %q etag %q was replaced: %w", c.key, c.etag, backend.ErrPrecondition))
	}
}

// Stats returns the current counters.
func (s *BlockStore) Stats() BlockStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Used = s.used
	st.Capacity = s.capacity
	st.Blocks = int64(s.lru.Len()+len(s.pinned)+len(s.held)) - s.pinnedBlocks
	st.Pinned = s.pinnedBytes
	st.PinnedBlocks = s.pinnedBlocks
	return st
}

// blockLen is the length of block i of c: BlockSize, except for a shorter
// last block.
func (s *BlockStore) blockLen(c *content, i int64) int64 {
	return min(s.bs, c.size-i*s.bs)
}

func (s *BlockStore) nextSeqLocked() uint64 {
	s.seq++
	return s.seq
}

func (s *BlockStore) cachedLocked(k blockKey) bool {
	if _, ok := s.held[k]; ok {
		return true
	}
	if _, ok := s.pinned[k]; ok {
		return true
	}
	return s.lru.Contains(k)
}

// accountLocked adds blocks cached blocks of n bytes in all (both negative
// to take them away) to c and to the counter of its class: pinnedBytes
// for a pinned content, used (the budget) for the others.
func (s *BlockStore) accountLocked(c *content, blocks, n int64) {
	c.blocks += blocks
	c.bytes += n
	if c.pinned {
		s.pinnedBlocks += blocks
		s.pinnedBytes += n
	} else {
		s.used += n
	}
}

// missingLocked reports whether block k is neither cached nor being fetched.
func (s *BlockStore) missingLocked(k blockKey) bool {
	if s.cachedLocked(k) {
		return false
	}
	_, inFlight := s.flights[k]
	return !inFlight
}

// acquireLocked takes a read hold on block k if it is cached, taking it
// out of the LRU (or the pinned map) so that it cannot be evicted (or
// freed) while it is read.
func (s *BlockStore) acquireLocked(k blockKey) bool {
	if h, ok := s.held[k]; ok {
		h.refs++
		s.held[k] = h
		return true
	}
	if seq, ok := s.pinned[k]; ok {
		delete(s.pinned, k)
		s.held[k] = blockHold{refs: 1, seq: seq}
		return true
	}
	e, ok := s.lru.Peek(k)
	if !ok {
		return false
	}
	s.lru.Remove(k)
	if e.ahead {
		s.ahead -= s.blockLen(k.c, int64(k.i))
	}
	s.held[k] = blockHold{refs: 1, seq: e.seq}
	return true
}

// releaseLocked drops a hold taken by acquireLocked or handed over by a
// flight. The last one puts the block back into the pinned map, or into
// the LRU as its most recently used entry, or drops it if Free said so.
func (s *BlockStore) releaseLocked(k blockKey) {
	h, ok := s.held[k]
	if !ok {
		return // the content was retired while it was being read
	}
	if h.refs--; h.refs > 0 {
		s.held[k] = h
		return
	}
	delete(s.held, k)
	s.pending[k] = struct{}{}
	c := k.c
	switch {
	case h.drop:
		s.accountLocked(c, -1, -s.cachedLenLocked(k))
		delete(s.partial, k)
		if c.blocks == 0 && c.refs == 0 && !c.pinned {
			s.retireLocked(c, nil)
		} else {
			s.punchLocked(c, int64(k.i)*s.bs, s.blockLen(c, int64(k.i)))
		}
		return
	case c.pinned:
		s.pinned[k] = s.nextSeqLocked()
		return
	}
	s.lru.Add(k, lruEntry{seq: s.nextSeqLocked()})
	// Holds may have pushed the cache over budget while nothing could be
	// evicted; now something can.
	s.evictLocked(0)
}

// evictLocked evicts the least recently used blocks until need more bytes
// fit within the budget. It reports false if they cannot fit because the
// remaining blocks are all being read or written.
func (s *BlockStore) evictLocked(need int64) bool {
	for s.used+s.reserved+need > s.capacity {
		k, e, ok := s.lru.RemoveOldest()
		if !ok {
			return false
		}
		c, n := k.c, s.blockLen(k.c, int64(k.i))
		s.stats.Evictions++
		if e.ahead {
			// Read-ahead fetches whole blocks only.
			s.ahead -= n
			s.stats.ReadAheadWasted += n
		}
		s.accountLocked(c, -1, -s.cachedLenLocked(k)) // c is not pinned: its block was in the LRU
		delete(s.partial, k)
		s.pending[k] = struct{}{}
		if c.refs == 0 && (c.blocks == 0 || c.shared) {
			// A shared file cannot give one block's space back (see
			// punchable); unused, it goes whole.
			s.retireLocked(c, nil)
		} else {
			s.punchLocked(c, int64(k.i)*s.bs, n)
		}
	}
	return true
}

// retireLocked takes c out of the index: its blocks are dropped, its file
// is unlinked, and its record is deleted at the next flush. Readers still
// inside a pread keep reading the unlinked file, which is why a retired
// content's data is never punched while blocks of it are held. reason, if
// not nil, is what later reads through c's handles fail with.
func (s *BlockStore) retireLocked(c *content, reason error) {
	if c.gone() {
		return
	}
	if reason == nil {
		reason = fmt.Errorf("content %q etag %q was evicted", c.key, c.etag)
	}
	held := false
	for _, i := range s.cachedBlocksLocked(c) {
		k := blockKey{c, i}
		if e, ok := s.lru.Peek(k); ok {
			s.lru.Remove(k)
			if e.ahead {
				s.ahead -= s.blockLen(c, int64(i))
			}
		} else if _, ok := s.pinned[k]; ok {
			delete(s.pinned, k)
		} else {
			delete(s.held, k)
			held = true
		}
		delete(s.partial, k)
		s.pending[k] = struct{}{}
	}
	s.accountLocked(c, -c.blocks, -c.bytes)
	c.goneErr = reason

	delete(s.contents, c.id)
	s.byKey[c.key] = slices.DeleteFunc(s.byKey[c.key], func(x *content) bool { return x == c })
	if len(s.byKey[c.key]) == 0 {
		delete(s.byKey, c.key)
	}
	delete(s.unsynced, c)
	delete(s.recordDirty, c)
	if c.recorded {
		s.gone = append(s.gone, c.id)
	}
	if err := os.Remove(c.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("remove content file", "path", c.path, "err", err)
	}
	switch {
	case c.refs == 0:
		s.closeFileLocked(c)
	case c.f != nil && !held:
		// Handles keep the unlinked file open; give its space back now.
		s.punchLocked(c, 0, c.size)
	}
}

// cachedBlocksLocked lists the cached blocks of c, scanning whichever is
// smaller: c's block range or the whole index.
func (s *BlockStore) cachedBlocksLocked(c *content) []uint32 {
	if c.blocks == 0 {
		return nil
	}
	var out []uint32
	if c.nblocks <= int64(s.lru.Len()+len(s.pinned)+len(s.held)) {
		for i := range uint32(c.nblocks) {
			if s.cachedLocked(blockKey{c, i}) {
				out = append(out, i)
			}
		}
		return out
	}
	for _, k := range s.lru.Keys() {
		if k.c == c {
			out = append(out, k.i)
		}
	}
	for k := range s.pinned {
		if k.c == c {
			out = append(out, k.i)
		}
	}
	for k := range s.held {
		if k.c == c {
			out = append(out, k.i)
		}
	}
	return out
}

// fileLocked returns c's content file, opening (and creating) it if needed.
// The caller must hold a reference on c for as long as it uses the file.
func (s *BlockStore) fileLocked(c *content) (*os.File, error) {
	if c.f != nil {
		return c.f, nil
	}
	if c.gone() {
		// The path may belong to a successor already.
		return nil, c.goneErr
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return nil, fmt.Errorf("content file for %q: %w", c.key, err)
	}
	f, err := os.OpenFile(c.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("content file for %q: %w", c.key, err)
	}
	c.f = f
	return f, nil
}

func (s *BlockStore) closeFileLocked(c *content) {
	if c.f == nil {
		return
	}
	if err := c.f.Close(); err != nil {
		// Only reads and fdatasync'ed writes went through it, so nothing
		// is lost; the error is worth a line all the same.
		s.log.Warn("close content file", "path", c.path, "err", err)
	}
	c.f = nil
}

// unrefLocked drops a reference on c. The last one closes its file, unless
// the flusher still has to sync it, and removes c if it has no blocks and
// is not pinned.
func (s *BlockStore) unrefLocked(c *content) {
	if c.refs--; c.refs > 0 {
		return
	}
	switch {
	case c.gone():
		s.closeFileLocked(c)
	case c.blocks == 0 && !c.pinned:
		s.retireLocked(c, nil)
	default:
		if _, dirty := s.unsynced[c]; !dirty {
			s.closeFileLocked(c)
		}
	}
}

// punchLocked frees the bytes [off, off+n) of c's file. Doing it under mu
// orders it with the index: a block cannot be fetched again, and so
// rewritten, before its old copy is punched.
func (s *BlockStore) punchLocked(c *content, off, n int64) {
	f := c.f
	if f == nil {
		var err error
		if f, err = os.OpenFile(c.path, os.O_RDWR, 0); err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				s.log.Warn("open content file to evict", "path", c.path, "err", err)
			}
			return
		}
		defer func() {
			if err := f.Close(); err != nil {
				s.log.Warn("close content file", "path", c.path, "err", err)
			}
		}()
	}
	if !punchable(c, f) {
		return
	}
	if err := punchHole(f, off, n); err != nil && !s.warned {
		// Typically a file system without hole punching: the budget still
		// holds in the index, but the disk does not shrink. Say it once.
		s.warned = true
		s.log.Warn("punch hole: evicted blocks keep their disk space", "path", c.path, "err", err)
	}
}
