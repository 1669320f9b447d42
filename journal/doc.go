// Package journal is the durable log of local changes and the uploader that
// applies them to the object store with conditional writes, so that a change
// made meanwhile on another machine is detected and both versions are kept
// (DESIGN promises 4, 5 and 6).
//
// # Durability
//
// Commit records a group of operations before the FUSE call that made them
// returns. For every PutFile it hashes the staged file (SHA-256) and fsyncs
// it, fsyncs the staging folder, then writes all records of the call in one
// bbolt transaction, which bbolt fsyncs at commit. A crash before that
// commit leaves staged files that no record references: Open removes them.
// A crash after it loses nothing: Open loads the records and Run resumes.
//
// Small files (Config.InlineLimit, 32 KiB by default) skip both fsyncs:
// their whole content is written into the same transaction (inlined), so a
// close() of a small file costs bbolt's commit alone instead of three more
// fsyncs. The staged file is still written, unsynced, and is what reads and
// the uploader use. A crash of nimbus keeps it (the page cache holds it); a
// crash of the system may lose or tear it, so Open rewrites the staged file
// of every inline record from the record's content whenever the two differ.
// The inline content stays in the DB until the record goes, so an Open need
// not sync what it restores.
//
// # On-disk format
//
// The journal owns these buckets of the shared bbolt DB (and no others):
//
//	journal.ops        8-byte big-endian sequence number → record (JSON, "v":1, or 2 with inline content)
//	journal.conflicts  8-byte big-endian sequence number → Conflict (JSON)
//	journal.inline     8-byte big-endian sequence number → the whole content
//	                   of an inline PutFile (raw bytes)
//	journal.streams    upload token → early multipart upload (JSON; stream.go)
//
// The ops bucket's bbolt sequence holds the last sequence number handed out,
// so numbers keep increasing even when the log has drained. A record holds
// the op (kind as a name: "put", "marker", "copy", "delete"), the staged
// file's base name in Config.Dir, its size and SHA-256, whether its content
// is inline (such a record is "v":2, so that a nimbus from before inlining
// refuses it instead of missing a lost staged file), the base the write
// is conditioned on, the commit groups it belongs to, its upload token,
// the tokens of earlier versions it superseded that may have reached the
// store, the PutFile's
// delta if it has one (the ETag it refers to and the unchanged ranges, as
// [offset, length] pairs; optional, so older records read as "no delta"),
// the key a Delete first copies the object to (its trash copy; optional, so
// older records read as "deleted for good"), the trash copy a Restore
// brings back on a store without versions,
// the early multipart upload of a file uploaded while it was written (its
// ID, part size and the parts sent by the commit; optional, see
// stream.go), and, once decided, the time and reason of a conflict (so
// that a replay after a crash reuses the same conflict name). Staged files are named
// "staged-*" in Config.Dir; the folder belongs to one journal.
//
// # Ordering
//
// Every op touches one or two keys (its Key, and for Copy its Src) and
// belongs to one or more commit groups (the sequence number of the first op
// of its Commit call, plus the groups of ops it superseded). An op may start
// only when it is the oldest pending op of each of its keys and of each of
// its groups. So ops on one key run strictly in sequence order, the ops of
// one Commit run one after the other in the order given (a rename's Delete
// of the old key waits for the Copy to the new one), and unrelated keys
// upload in parallel, at most Config.Concurrency at a time. Because an op
// only ever waits for ops with lower sequence numbers, there is no cycle and
// no deadlock.
//
// # Chained bases
//
// A write is conditioned on the remote state the local edit started from
// (its Base). When an op is committed while an earlier op on the same key is
// still pending, the local state it was made on is that earlier op's result,
// whatever the caller passed: the record then points at the earlier op
// (base.after = its sequence number) instead of naming an ETag. When the
// earlier op completes, the same bbolt transaction that removes its record
// rewrites the follower's base to what it produced: the new ETag after a
// write, "absent" after a delete. After a conflict (the earlier content went
// to a conflicted copy and the remote version kept the name) the follower
// inherits the earlier op's own base, so it conflicts too and is kept as a
// second copy instead of overwriting the remote edit. A Copy whose Src has a
// pending write is chained the same way (src_after). Resolution and removal
// are one transaction, so a crash never leaves a follower pointing at a
// record that is gone.
//
// The caller therefore never needs to compute a chained base: it may pass
// Pending(key).Base or anything else while an op on the key is pending.
// Otherwise Base is taken literally; a caller that reads it from metadata
// updated by Config.Applied does not race, because Applied runs before the
// completed op's record disappears.
//
// # Coalescing
//
// A PutFile committed while the newest pending op on its key is a PutFile
// that is not uploading supersedes it: the earlier record is removed in the
// same transaction (its staged file afterwards) and the new op keeps the
// earlier base and commit groups, since the edit chain started there, but
// its own Delta (which the caller computes against that same base), or
// none. A PutMarker likewise replaces a waiting PutMarker of its folder:
// a marker's metadata is the folder's whole set of attributes, so a mkdir
// followed by a chmod and a utime (what tar does to every folder) is one
// upload with the last of them. A Delete likewise replaces a waiting
// PutFile, or cancels it (or a waiting PutMarker) outright when the key
// never existed remotely and the op cannot have reached the store.
// An op is superseded only while it is the last op of its key and of its
// groups, so no other op was ordered after it. Because a superseded attempt
// may have reached the store before failing (a lost response), the new op
// keeps the upload tokens of such earlier versions: finding one of them
// remotely means "our own earlier write", not a conflict.
//
// # Conflicts and idempotent replay
//
// Every upload is conditional (If-Match the base ETag, or If-None-Match).
// On a failed precondition the uploader looks at the remote object. Each
// PutFile record holds a random upload token, made at commit and stored with
// every upload of it as "nimbus-upload" metadata: the remote object carrying
// our token means the upload already happened (a replay after a crash, a
// lost answer). Content cannot say that: another mount writing the same
// bytes (two empty files) would be taken for us, and the next write would
// then be conditioned on the other writer's version. An absent object is
// re-created. An object holding exactly our bytes ("nimbus-sha256", or
// both empty) is no conflict: the chain continues from it. An empty version
// (a new file, a truncate) whose object another writer changed keeps no
// copy, since it holds nothing, and its chain continues from its own base,
// so that a later write of it conflicts. Anything else is a conflict: the remote keeps the name and our
// content goes to conflictName(key, host, time). Deletes are conditional too, and a remote
// edit always survives a local delete. See the Kind constants for each op's
// rules.
//
// # Delta uploads
//
// A PutFile may carry a Delta: the ranges of its content that are unchanged
// from a version of its key. It is used only by an upload whose If-Match is
// that very version, through a store that is a backend.DeltaPutter (on S3,
// the unchanged parts are copied server-side). Every other upload of the op
// (a re-creation after a remote delete, a base resolved from a chained op,
// the conflicted copy) sends the whole content. The nimbus-sha256 metadata
// is the hash of the whole content either way, so a replay recognises a
// delta upload like any other.
//
// # Upload while writing
//
// A file written sequentially may be sent as a multipart upload while it is
// written (Stream); its PutFile then completes that upload under the same
// condition instead of sending the staged file, and falls back to sending
// it whenever the early upload is unusable. stream.go has the design.
//
// # Failures
//
// backend.ErrOffline (and ErrNoBucket, an unplugged remote disk) pauses all
// uploads with exponential backoff; after the pause one op probes the store,
// and the first answer resumes full concurrency. Any other error except
// ErrAccess and ErrInvalidKey (409 conflicts, 5xx, unknown failures) retries
// that op with its own exponential backoff, forever. ErrAccess and
// ErrInvalidKey park the op: it keeps its data and its place, shows in
// Stats().Parked, blocks later ops on its key and group, and is retried at
// the next Open.
//
// # Locking
//
// LOCK ORDERING: Journal.writeMu, then Journal.mu.
//
// writeMu serialises every bbolt write of the journal together with the
// structural change of the in-memory state that mirrors it (commits, and
// completions of ops). mu guards the in-memory state; structural fields are
// changed only while both are held, so a holder of writeMu may drop mu
// across a bbolt transaction and find the structure as it left it. No lock
// is held across a store call, an fsync of a staged file, or Config.Applied;
// writeMu is held across bbolt's own commit (one small fsync).
//
// Group commit: a Commit queues its prepared ops (under queueMu, a leaf
// lock) before it waits for writeMu. Whoever then holds writeMu records
// every queued call in one transaction, planned as one Commit of all their
// ops in queue order with each call's groups kept apart, and marks them
// done; a caller that finds its call done returns its result. So while one
// commit's fsync runs, the closes that arrive meanwhile share the next.
package journal
