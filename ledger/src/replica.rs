//! A verified replica of another member's log (`specs/federation.md` §3–§4).
//!
//! A replica directory has the layout of a node directory without `node.key`:
//! `DIR/ledger.sled/` (the store, same keys and values) and `DIR/checkpoint` (the latest
//! verified checkpoint note, as received). So [`crate::log::LogReader::open`] and
//! [`crate::audit::audit_dirs`] read a replica directory as they read a node's own.
//!
//! Nothing enters a replica unless it verifies against a checkpoint signed by the owner's log
//! key: every entry decodes, is the owner's, has its index as `seq`, carries valid signatures
//! and co-signatures, obeys the log rules, and the new leaves extend the stored tree to the
//! checkpoint's root ([`Replica::extend`]) or, for a log fetched in batches
//! ([`Replica::extend_prefix`]), to a tree that a consistency proof shows is a prefix of the
//! checkpoint's. An extension is one atomic, durable store write (as a log append); on any
//! error nothing is stored. Batches before the last are kept as the store's pending extension
//! (`store::Pending`): readers see only the checkpointed entries until the batch that reaches
//! the checkpoint's size commits them all under it, and a replica reopened after a failure
//! resumes after the last stored batch.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::account::{Delta, LogState, RuleError};
use crate::checkpoint::Checkpoint;
use crate::entry::{self, DecodeError, Entry, PublicKey, VerifyError};
use crate::evidence::Equivocation;
use crate::identity;
use crate::log::{self, Head, LogError, LogReader, CHECKPOINT_FILE_NAME, STORE_DIR_NAME};
use crate::merkle::{self, Hash, MerkleError};
use crate::store::{Batch, Pending, SledStore, Store as _, StoreError, READ_CHUNK_ENTRIES};

/// Most entries one [`Replica::extend`] or [`Replica::extend_prefix`] call accepts.
pub const REPLICA_EXTEND_ENTRIES_MAX: usize = 65_536;

/// Why a replica cannot be opened, extended or read. Every variant names the replicated log
/// by its owner's key (hex), and the entry index where one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The directory is unusable: it holds another key's log, or a store without its
    /// checkpoint, or cannot be created.
    #[error("replica of {log} in {dir}: {reason}")]
    Location {
        /// Owner key hex.
        log: String,
        /// Replica directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Opening or reading the stored log failed (tail verification, ranges, proofs).
    #[error("replica of {log}: {source}")]
    Log {
        /// Owner key hex.
        log: String,
        /// Cause.
        source: Box<LogError>,
    },
    /// The store failed.
    #[error("replica of {log}: {source}")]
    Store {
        /// Owner key hex.
        log: String,
        /// Cause.
        source: StoreError,
    },
    /// Stored hashes could not be read or combined.
    #[error("replica of {log}: Merkle tree: {source}")]
    Merkle {
        /// Owner key hex.
        log: String,
        /// Cause.
        source: MerkleError,
    },
    /// The offered checkpoint is malformed, of another log, or not signed by the owner.
    #[error("replica of {log}: checkpoint: {reason}")]
    Checkpoint {
        /// Owner key hex.
        log: String,
        /// What is wrong.
        reason: String,
    },
    /// More entries than [`REPLICA_EXTEND_ENTRIES_MAX`] in one extension.
    #[error("replica of {log}: {found} entries in one extension, more than REPLICA_EXTEND_ENTRIES_MAX = {max}")]
    TooManyEntries {
        /// Owner key hex.
        log: String,
        /// Entries offered.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The checkpoint's size is not the replica's size plus the number of entries offered
    /// ([`Replica::extend`]), or is smaller than that ([`Replica::extend_prefix`]). The replica's
    /// size here counts a pending extension's entries.
    #[error("replica of {log}: checkpoint size {found}, expected {expected} (replica size {replica} + {entries} entries)")]
    SizeMismatch {
        /// Owner key hex.
        log: String,
        /// Size the extension needs.
        expected: u64,
        /// The checkpoint's size.
        found: u64,
        /// The replica's size.
        replica: u64,
        /// Entries offered.
        entries: usize,
    },
    /// An offered entry does not decode.
    #[error("replica of {log}: entry {index}: {source}")]
    Decode {
        /// Owner key hex.
        log: String,
        /// Entry index in the log.
        index: u64,
        /// Cause.
        source: DecodeError,
    },
    /// An offered entry's author or seq is wrong for its place.
    #[error("replica of {log}: entry {index}: field `{field}` is {found}, expected {expected}")]
    Misplaced {
        /// Owner key hex.
        log: String,
        /// Entry index in the log.
        index: u64,
        /// `author` or `seq`.
        field: &'static str,
        /// What its place requires.
        expected: String,
        /// What the entry holds.
        found: String,
    },
    /// An offered entry's signature or co-signature does not verify.
    #[error("replica of {log}: entry {index}: {source}")]
    Signature {
        /// Owner key hex.
        log: String,
        /// Entry index in the log.
        index: u64,
        /// Cause.
        source: VerifyError,
    },
    /// An offered entry breaks the log rules.
    #[error("replica of {log}: {source}")]
    Rule {
        /// Owner key hex.
        log: String,
        /// Cause (names the entry).
        source: RuleError,
    },
    /// A prefix extension offers no entries for a checkpoint of a larger tree.
    #[error("replica of {log}: no entries offered after the {replica} held, for a checkpoint of size {size}")]
    EmptyPrefix {
        /// Owner key hex.
        log: String,
        /// The replica's size, pending entries included.
        replica: u64,
        /// The checkpoint's size.
        size: u64,
    },
    /// The tree that entries `first..end` complete is not proven to be a prefix of the
    /// checkpoint's tree (a wrong entry, or a wrong or missing consistency proof).
    #[error("replica of {log}: entries {first}..{end}: the tree of size {end} they complete has root {computed}, which the consistency proof does not show to be a prefix of the signed tree of size {size} with root {expected}: {source}")]
    NotAPrefix {
        /// Owner key hex.
        log: String,
        /// Index of the first offered entry.
        first: u64,
        /// Index after the last offered entry (the size of the tree they complete).
        end: u64,
        /// The checkpoint's size.
        size: u64,
        /// The computed root of the tree of size `end` (hex).
        computed: String,
        /// The checkpoint's root (hex).
        expected: String,
        /// Why the proof fails.
        source: MerkleError,
    },
    /// The stored tree extended by the offered entries does not have the checkpoint's root.
    #[error("replica of {log}: the tree of size {size} with the offered entries has root {computed}, the checkpoint says {expected}")]
    RootMismatch {
        /// Owner key hex.
        log: String,
        /// Tree size.
        size: u64,
        /// The checkpoint's root (hex).
        expected: String,
        /// The computed root (hex).
        computed: String,
    },
    /// Writing `DIR/checkpoint` failed after the store committed the extension; reopening
    /// the replica repairs the file.
    #[error("replica of {log}: the extension is committed, but writing {dir}/checkpoint failed: {source}")]
    CheckpointFile {
        /// Owner key hex.
        log: String,
        /// Replica directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// What a checkpoint signed by the owner means for a replica ([`Replica::classify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// The log is bigger than the replica: fetch entries `replica.size()..size`.
    Ahead {
        /// The checkpoint's size.
        size: u64,
    },
    /// The replica already holds this tree (same size and root, or a smaller size whose root
    /// is the replica's tree of that size).
    Known,
    /// The owner signed a tree the replica contradicts; the evidence (the replica's signed
    /// checkpoint, the offered one and a consistency proof from the smaller size to the
    /// replica's size) passes `Equivocation::verify_conclusive`.
    Equivocation(Equivocation),
    /// The owner signed a root for `size` that differs from the replica's tree of that size,
    /// but tlog.md §6 evidence built from the two notes cannot be conclusive: `size` is a
    /// power of two below the replica's size (the consistency proof omits that subtree), or
    /// the replica holds no signed checkpoint to pair it with. The owner's own signed entries
    /// in the replica still contradict the note.
    Contradiction {
        /// The checkpoint's size.
        size: u64,
        /// The checkpoint's root.
        note_root: Hash,
        /// The replica's root of that size.
        replica_root: Hash,
    },
}

/// A verified replica of the log owned by one key; see the module documentation.
#[derive(Debug)]
pub struct Replica {
    reader: LogReader,
    /// The log rules' state after every stored entry, pending ones included.
    state: LogState,
    /// Entries stored beyond the checkpoint: a verified prefix of a larger signed tree.
    pending: Option<Pending>,
}

impl Replica {
    fn log(&self) -> String {
        hex::encode(self.reader.key)
    }

    fn wrap_log(&self, source: LogError) -> ReplicaError {
        ReplicaError::Log {
            log: self.log(),
            source: Box::new(source),
        }
    }

    /// Open the replica of `owner`'s log in `dir`, or create an empty one (size 0, no
    /// checkpoint) when `dir` holds no store. An existing store is opened with the same tail
    /// verification as [`LogReader::open`] and must be a replica (or the log) of `owner`; the
    /// log rules are re-applied to every entry, and a `DIR/checkpoint` left behind the store by
    /// a crash is rewritten.
    pub fn open_or_create(dir: &Path, owner: PublicKey) -> Result<Replica, ReplicaError> {
        let log = hex::encode(owner);
        let location = |reason: String| ReplicaError::Location {
            log: log.clone(),
            dir: dir.to_owned(),
            reason,
        };
        let store_err = |source| ReplicaError::Store {
            log: log.clone(),
            source,
        };
        let store_path = dir.join(STORE_DIR_NAME);
        let file = dir.join(CHECKPOINT_FILE_NAME);
        let empty = |store: SledStore| Replica {
            reader: LogReader {
                dir: dir.to_owned(),
                key: owner,
                store,
                head: Head {
                    size: 0,
                    root: merkle::empty_root(),
                    note: vec![],
                },
            },
            state: LogState::new(owner),
            pending: None,
        };
        if !store_path.exists() {
            if file.exists() {
                return Err(location(format!(
                    "{CHECKPOINT_FILE_NAME} exists but {STORE_DIR_NAME} does not: the store was lost"
                )));
            }
            std::fs::create_dir_all(dir).map_err(|e| location(e.to_string()))?;
            let store = SledStore::create(&store_path).map_err(store_err)?;
            return Ok(empty(store));
        }
        let store = SledStore::open(&store_path).map_err(store_err)?;
        if store.checkpoint().map_err(store_err)?.is_none() {
            // An empty replica: nothing may be stored yet, but a pending extension.
            let size = store.size().map_err(store_err)?;
            let pending = store.pending().map_err(store_err)?.is_some();
            if size != 0 || (!pending && store.has_entry(0).map_err(store_err)?) {
                return Err(location(format!(
                    "the store has no checkpoint but records size {size}"
                )));
            }
            if file.exists() {
                return Err(location(format!(
                    "{CHECKPOINT_FILE_NAME} exists but the store is empty: committed entries were lost"
                )));
            }
            let mut replica = empty(store);
            replica.load_pending()?;
            return Ok(replica);
        }
        let reader = LogReader::from_store(dir, store).map_err(|source| ReplicaError::Log {
            log: log.clone(),
            source: Box::new(source),
        })?;
        if reader.key != owner {
            return Err(location(format!(
                "it holds the log of {}, not of {log}",
                hex::encode(reader.key)
            )));
        }
        if std::fs::read(&file).ok().as_deref() != Some(reader.head.note.as_slice()) {
            log::write_checkpoint_file(dir, &reader.head.note).map_err(|source| {
                ReplicaError::CheckpointFile {
                    log: log.clone(),
                    dir: dir.to_owned(),
                    source,
                }
            })?;
        }
        let entries = reader.decode_all().map_err(|source| ReplicaError::Log {
            log: log.clone(),
            source: Box::new(source),
        })?;
        let mut state = LogState::new(owner);
        state
            .apply_all(&entries)
            .map_err(|source| ReplicaError::Rule {
                log: log.clone(),
                source,
            })?;
        let mut replica = Replica {
            reader,
            state,
            pending: None,
        };
        replica.load_pending()?;
        Ok(replica)
    }

    /// Check the store's pending extension, if any, and apply the log rules to its entries:
    /// its note is the owner's and of a larger tree, it extends the checkpointed entries, no
    /// entry is stored beyond it, and its last [`log::TAIL_VERIFY_ENTRIES`] entries have their
    /// stored leaf hashes and valid signatures. That it is a prefix of the note's tree was
    /// proven when it was stored, and is proven again by every later extension.
    fn load_pending(&mut self) -> Result<(), ReplicaError> {
        let log = self.log();
        let store_err = |source| ReplicaError::Store {
            log: log.clone(),
            source,
        };
        let Some(pending) = self.reader.store.pending().map_err(store_err)? else {
            return Ok(());
        };
        let cp = self.open_checkpoint(&pending.note)?;
        let size = self.size();
        let corrupt = |reason: String| ReplicaError::Log {
            log: log.clone(),
            source: Box::new(LogError::Corrupt {
                dir: self.reader.dir.clone(),
                reason,
            }),
        };
        if pending.size <= size || pending.size >= cp.size {
            return Err(corrupt(format!(
                "the pending extension to size {} is not between the checkpoint size {size} and its note's size {}",
                pending.size, cp.size
            )));
        }
        if self
            .reader
            .store
            .has_entry(pending.size)
            .map_err(store_err)?
        {
            return Err(corrupt(format!(
                "entry {} exists beyond the pending extension to size {}",
                pending.size, pending.size
            )));
        }
        let mut start = size;
        while start < pending.size {
            let end = (start + READ_CHUNK_ENTRIES).min(pending.size);
            let bytes = self.reader.store.entries(start, end).map_err(store_err)?;
            let decoded = bytes
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    Entry::decode(b).map_err(|source| ReplicaError::Decode {
                        log: log.clone(),
                        index: start + i as u64,
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.state
                .apply_all(&decoded)
                .map_err(|source| ReplicaError::Rule {
                    log: log.clone(),
                    source,
                })?;
            start = end;
        }
        let tail = pending
            .size
            .saturating_sub(log::TAIL_VERIFY_ENTRIES)
            .max(size);
        self.reader
            .verify_range(tail, pending.size)
            .map_err(|e| self.wrap_log(e))?;
        self.pending = Some(pending);
        Ok(())
    }

    /// Close the store and open it again, keeping the verified state (nothing is re-read or
    /// re-verified: this replica wrote it). sled 0.34 keeps what it has written in memory while
    /// a database is open, whatever its cache size (about 10 KiB per entry with its hashes,
    /// measured), so a client verifying a big log in batches reopens after each batch to keep
    /// its memory bounded by one batch. Needs the only handle on the store: while a clone from
    /// [`Replica::store`] is alive the reopen fails as locked, after `LOCK_WAIT_MS_MAX`.
    pub fn reopen(self) -> Result<Replica, ReplicaError> {
        let Replica {
            reader,
            state,
            pending,
        } = self;
        let LogReader {
            dir,
            key,
            store,
            head,
        } = reader;
        drop(store);
        let store =
            SledStore::open(&dir.join(STORE_DIR_NAME)).map_err(|source| ReplicaError::Store {
                log: hex::encode(key),
                source,
            })?;
        Ok(Replica {
            reader: LogReader {
                dir,
                key,
                store,
                head,
            },
            state,
            pending,
        })
    }

    /// The replica directory.
    pub fn dir(&self) -> &Path {
        &self.reader.dir
    }
    /// The key of the log's owner.
    pub fn owner(&self) -> PublicKey {
        self.reader.key
    }
    /// Number of entries held under the stored checkpoint (what readers of the directory see).
    pub fn size(&self) -> u64 {
        self.reader.head.size
    }
    /// Number of entries stored and verified: [`Replica::size`] plus a pending extension's.
    /// The next extension starts here.
    pub fn verified_size(&self) -> u64 {
        self.pending.as_ref().map_or(self.size(), |p| p.size)
    }
    /// The pending extension: entries stored beyond the checkpoint as a verified prefix of a
    /// larger tree, and the note of that tree (see [`Replica::extend_prefix`]).
    pub fn pending(&self) -> Option<&Pending> {
        self.pending.as_ref()
    }
    /// Root of the tree of all entries held (`SHA-256("")` when empty).
    pub fn root(&self) -> Hash {
        self.reader.head.root
    }
    /// The latest verified checkpoint note exactly as received (with any cosignature lines);
    /// empty when nothing was stored yet.
    pub fn checkpoint(&self) -> &[u8] {
        &self.reader.head.note
    }
    /// The store (for read handles; only the extensions write to it).
    pub fn store(&self) -> &SledStore {
        self.reader.store()
    }
    /// The log rules' state after the entries stored (balance, admitted keys), a pending
    /// extension's included.
    pub fn state(&self) -> &LogState {
        &self.state
    }

    /// Encoded entries `start..end` (`end <= size`).
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, ReplicaError> {
        self.reader
            .entries(start, end)
            .map_err(|e| self.wrap_log(e))
    }

    /// Every entry held, decoded (they were verified when stored).
    pub fn decode_all(&self) -> Result<Vec<Entry>, ReplicaError> {
        self.reader.decode_all().map_err(|e| self.wrap_log(e))
    }

    /// Consistency proof from the tree of size `from` to the tree of size `to` (`to <= size`).
    pub fn prove_consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, ReplicaError> {
        self.reader
            .prove_consistency(from, to)
            .map_err(|e| self.wrap_log(e))
    }

    /// Root of the tree of the first `size` entries (`size <= self.size()`).
    pub fn root_at(&self, size: u64) -> Result<Hash, ReplicaError> {
        self.reader.root_at(size).map_err(|e| self.wrap_log(e))
    }

    /// Parses `note` as a checkpoint of the owner's log and verifies the owner's signature
    /// (rule 1 of `specs/federation.md` §4); stores nothing. A client fetching a log checks
    /// the checkpoint with this before it fetches entries.
    pub fn open_checkpoint(&self, note: &[u8]) -> Result<Checkpoint, ReplicaError> {
        let err = |reason: String| ReplicaError::Checkpoint {
            log: self.log(),
            reason,
        };
        let verifier = identity::log_verifier(&self.reader.key).map_err(err)?;
        let (cp, _) = Checkpoint::open(note, &verifier).map_err(|e| err(e.to_string()))?;
        Ok(cp)
    }

    /// Verify and durably append `entries` (encoded) under `note`, a checkpoint signed by the
    /// owner's log key with size `self.verified_size() + entries.len()` (see the module
    /// documentation and `specs/federation.md` §4). Each entry must decode, be authored by the
    /// owner, have its index as `seq`, carry valid signatures and co-signatures (batch
    /// verification), and obey the log rules after the entries held; the stored hashes
    /// extended by the new leaves must give the checkpoint's root. Entries, stored hashes, the
    /// note and the size are written in one atomic, durable store write; on any error nothing
    /// is stored. With no entries, a checkpoint of the same size and root (re-signed or
    /// cosigned) replaces the stored note. Afterwards `DIR/checkpoint` is replaced atomically.
    pub fn extend(&mut self, note: &[u8], entries: &[Vec<u8>]) -> Result<(), ReplicaError> {
        let cp = self.open_extension(note, entries)?;
        let first = self.verified_size();
        let size = first + entries.len() as u64;
        if cp.size != size {
            return Err(ReplicaError::SizeMismatch {
                log: self.log(),
                expected: size,
                found: cp.size,
                replica: first,
                entries: entries.len(),
            });
        }
        self.append_verified(&cp, note, entries, &[])
    }

    /// Verify and durably append `entries` (encoded), the next entries after the
    /// [`Replica::verified_size`] held, as part of the tree that `note` (signed by the owner's
    /// log key, size `S`) commits to: for logs too big for one [`Replica::extend`], fetched in
    /// batches of at most [`REPLICA_EXTEND_ENTRIES_MAX`] (`specs/federation.md` §4.2). Every
    /// entry passes the same checks as in `extend`. With `end` the replica's verified size
    /// after the entries: if `end = S` this is `extend` (`proof` must be empty); if `end < S`,
    /// `proof` must be the RFC 9162 consistency proof from `end` to `S` and show that the tree
    /// of size `end`, computed from the stored hashes and the new leaves, is a prefix of the
    /// signed tree ([`ReplicaError::NotAPrefix`] otherwise). Such a batch is stored as the
    /// pending extension: entries and hashes durably and atomically, while the checkpoint, the
    /// size and `DIR/checkpoint` stay as they were until the batch that reaches `S`. On any
    /// error nothing of the batch is stored; the batches before it stay, and the next call
    /// resumes after them (with the same or a newer checkpoint, as each batch is proven
    /// against the checkpoint it comes with).
    pub fn extend_prefix(
        &mut self,
        note: &[u8],
        entries: &[Vec<u8>],
        proof: &[Hash],
    ) -> Result<(), ReplicaError> {
        let cp = self.open_extension(note, entries)?;
        let first = self.verified_size();
        let end = first + entries.len() as u64;
        if end > cp.size {
            return Err(ReplicaError::SizeMismatch {
                log: self.log(),
                expected: end,
                found: cp.size,
                replica: first,
                entries: entries.len(),
            });
        }
        if end < cp.size && entries.is_empty() {
            return Err(ReplicaError::EmptyPrefix {
                log: self.log(),
                replica: first,
                size: cp.size,
            });
        }
        self.append_verified(&cp, note, entries, proof)
    }

    /// Rule 1 and the size bound of an extension: `note` opens as the owner's checkpoint and
    /// at most [`REPLICA_EXTEND_ENTRIES_MAX`] entries are offered.
    fn open_extension(&self, note: &[u8], entries: &[Vec<u8>]) -> Result<Checkpoint, ReplicaError> {
        if entries.len() > REPLICA_EXTEND_ENTRIES_MAX {
            return Err(ReplicaError::TooManyEntries {
                log: self.log(),
                found: entries.len(),
                max: REPLICA_EXTEND_ENTRIES_MAX,
            });
        }
        self.open_checkpoint(note)
    }

    /// Rules 3 to 5 for `entries` at log index `first`: each decodes, is the owner's, has its
    /// index as `seq`; every signature verifies; the log rules hold after the stored entries.
    /// The first bad entry is named, whatever order the threads finished in.
    fn check_entries(&self, first: u64, entries: &[Vec<u8>]) -> Result<Delta, ReplicaError> {
        let log = self.log();
        let owner = self.reader.key;
        let checked: Vec<Result<Entry, ReplicaError>> = entries
            .par_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let index = first + i as u64;
                let e = Entry::decode(bytes).map_err(|source| ReplicaError::Decode {
                    log: log.clone(),
                    index,
                    source,
                })?;
                if e.author != owner {
                    return Err(ReplicaError::Misplaced {
                        log: log.clone(),
                        index,
                        field: "author",
                        expected: hex::encode(owner),
                        found: hex::encode(e.author),
                    });
                }
                if e.seq != index {
                    return Err(ReplicaError::Misplaced {
                        log: log.clone(),
                        index,
                        field: "seq",
                        expected: index.to_string(),
                        found: e.seq.to_string(),
                    });
                }
                Ok(e)
            })
            .collect();
        let decoded: Vec<Entry> = checked.into_iter().collect::<Result<_, _>>()?;
        entry::verify_many(&decoded, entries).map_err(|(i, source)| ReplicaError::Signature {
            log: log.clone(),
            index: first + i as u64,
            source,
        })?;
        self.state
            .check(&decoded)
            .map_err(|source| ReplicaError::Rule { log, source })
    }

    /// Check `entries` (the next after [`Replica::verified_size`]) against `cp`, whose size is
    /// at least their end, and store them: committed under `note` when they reach its size
    /// (rule 6), else as the pending extension once `proof` shows their tree is a prefix of
    /// `cp`'s.
    fn append_verified(
        &mut self,
        cp: &Checkpoint,
        note: &[u8],
        entries: &[Vec<u8>],
        proof: &[Hash],
    ) -> Result<(), ReplicaError> {
        let log = self.log();
        let first = self.verified_size();
        let end = first + entries.len() as u64;
        debug_assert!(end <= cp.size, "callers check the size");
        let delta = self.check_entries(first, entries)?;
        let leaves: Vec<Hash> = entries.par_iter().map(|b| merkle::leaf_hash(b)).collect();
        let (hashes, root) =
            log::extend_hashes(&self.reader.store, first, &leaves).map_err(|source| {
                ReplicaError::Merkle {
                    log: log.clone(),
                    source,
                }
            })?;
        let complete = end == cp.size;
        let proven = if complete && proof.is_empty() {
            Ok(())
        } else if complete {
            Err(MerkleError::ProofLength {
                expected: 0,
                found: proof.len(),
            })
        } else {
            merkle::check_tree(proof, cp.size, &cp.root, end, &root)
        };
        if let Err(source) = proven {
            return Err(ReplicaError::NotAPrefix {
                log,
                first,
                end,
                size: cp.size,
                computed: hex::encode(root),
                expected: hex::encode(cp.root),
                source,
            });
        }
        if complete && root != cp.root {
            return Err(ReplicaError::RootMismatch {
                log,
                size: end,
                expected: hex::encode(cp.root),
                computed: hex::encode(root),
            });
        }
        let batch = Batch {
            first_index: first,
            entries,
            first_hash_index: merkle::stored_hash_count(first),
            hashes: &hashes,
            checkpoint: note,
        };
        let store_err = |source| ReplicaError::Store {
            log: log.clone(),
            source,
        };
        if !complete {
            self.reader.store.append_pending(batch).map_err(store_err)?;
            self.state.commit(delta);
            self.pending = Some(Pending {
                size: end,
                note: note.to_vec(),
            });
            return Ok(());
        }
        self.reader.store.append(batch).map_err(store_err)?;
        self.state.commit(delta);
        self.pending = None;
        self.reader.head = Head {
            size: end,
            root,
            note: note.to_vec(),
        };
        log::write_checkpoint_file(&self.reader.dir, note).map_err(|source| {
            ReplicaError::CheckpointFile {
                log,
                dir: self.reader.dir.clone(),
                source,
            }
        })
    }

    /// Classify `note`, a checkpoint that must be signed by the owner's log key (else an
    /// error), against the replica: [`Classified::Ahead`] when it is bigger,
    /// [`Classified::Known`] when the replica holds its tree, [`Classified::Equivocation`]
    /// with conclusive evidence when a size the replica covers has another root, and
    /// [`Classified::Contradiction`] when it has another root but the notes cannot make
    /// conclusive evidence (see there). Reads only; stores nothing.
    pub fn classify(&self, note: &[u8]) -> Result<Classified, ReplicaError> {
        let cp = self.open_checkpoint(note)?;
        let size = self.size();
        if cp.size > size {
            return Ok(Classified::Ahead { size: cp.size });
        }
        let replica_root = self.root_at(cp.size)?;
        if replica_root == cp.root {
            return Ok(Classified::Known);
        }
        let contradiction = Classified::Contradiction {
            size: cp.size,
            note_root: cp.root,
            replica_root,
        };
        let mine = match std::str::from_utf8(&self.reader.head.note) {
            Ok(s) if !s.is_empty() => s,
            _ => return Ok(contradiction),
        };
        let theirs = std::str::from_utf8(note).map_err(|e| ReplicaError::Checkpoint {
            log: self.log(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let proof = if cp.size == 0 || cp.size == size {
            vec![]
        } else {
            self.prove_consistency(cp.size, size)?
        };
        let evidence = Equivocation::new(
            &identity::verifier_key_of(&self.reader.key),
            mine,
            theirs,
            proof,
        );
        match evidence.verify_conclusive() {
            Ok(_) => Ok(Classified::Equivocation(evidence)),
            Err(_) => Ok(contradiction),
        }
    }
}
