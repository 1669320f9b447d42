// Package cache is what a mount keeps on this machine about the remote
// tree, so that listings and reads need the network only when something is
// new: three stores, each in its own files under the cache folder.
//
// # The block store (BlockStore)
//
// The contents of remote objects, cached as fixed-size blocks (1 MiB by
// default) in one sparse file per version (key + ETag), under a byte
// budget with LRU eviction. Every GET is pinned to the ETag, so a block
// never mixes two versions; a version replaced remotely is retired
// (Forget) and its readers fail with backend.ErrPrecondition rather than
// read bytes of two versions. Evicted blocks are punched out of their file,
// so the disk space really goes. A Handle reads one version for one open
// file: it fetches the blocks a read misses in ranged GETs (joining fetches
// already in flight) and reads ahead for a sequential reader. Pinned
// versions are kept whole outside the budget (Pin, Unpin, Free). A
// content entirely cached can be held whole (HoldWhole) for a reader that
// reads its file directly, FUSE passthrough: nothing punches or removes
// it until released. Which
// blocks are present is recorded in bbolt, so the cache survives a restart;
// a crash loses at most the blocks of the last flush interval, never their
// integrity. The design notes are on BlockStore.
//
// # The tree (Tree, TreeDB)
//
// The remote tree's metadata: for each folder that was listed, its
// entries (name, size, ETag, mode, owner, times, symlink target) and when
// it was listed, plus the local entries and tombstones of changes not yet
// uploaded, which listings never override. It holds nothing in memory, so
// a million keys cost disk pages, not resident memory. Its bbolt file is
// written without fsync, since listings and the journal rebuild it: after
// a system crash (another boot ID) it starts afresh.
//
// # Pins (Pins)
//
// The set of pinned paths: a path is pinned when it or a folder above it
// was pinned. It lives in the mount's main database, beside the journal.
//
// Nothing here talks FUSE or decides about conflicts: the vfs package
// serves the kernel from these stores, and the journal package uploads.
package cache
