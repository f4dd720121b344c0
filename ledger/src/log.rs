//! One node's append-only log: validated, signed entries in an RFC 6962 Merkle tree, with a
//! signed C2SP checkpoint committed atomically with every append.
//!
//! Directory layout of a node (`specs/ledger.md`, "Node directory"):
//!
//! - `DIR/node.key`: the node's identity key file (mode 0600), see [`crate::identity`];
//! - `DIR/ledger.sled/`: the sled store, see [`crate::store`];
//! - `DIR/checkpoint`: the latest checkpoint note, replaced atomically after every append. It is
//!   what the node serves, and it lets [`LogReader::open`] notice a store that lost committed
//!   entries (a truncated or rolled-back store still looks self-consistent).
//!
//! [`LogReader`] needs no secret key: exporters, provers and auditors use it. [`Log`] adds the
//! key and the running [`LogState`] needed to append.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::account::{LogState, Membership, RuleError};
use crate::checkpoint::{self, Checkpoint};
use crate::entry::{self, Admission, Body, DecodeError, Entry, PublicKey, VerifyError};
use crate::identity::{self, Identity, IdentityError};
use crate::merkle::{self, Hash, HashReader, MerkleError};
use crate::note::{Note, Verifier};
use crate::store::{Batch, SledStore, Store, StoreError, READ_CHUNK_ENTRIES};

/// File name of the node key inside a node directory.
pub const KEY_FILE_NAME: &str = "node.key";
/// Directory name of the sled store inside a node directory.
pub const STORE_DIR_NAME: &str = "ledger.sled";
/// File name of the latest checkpoint note inside a node directory.
pub const CHECKPOINT_FILE_NAME: &str = "checkpoint";
/// Entries at the end of the log whose leaf hashes and signatures are re-verified on open.
pub const TAIL_VERIFY_ENTRIES: u64 = 1024;
/// Most entries one `append_batch` call accepts.
pub const BATCH_ENTRIES_MAX: usize = 65_536;

/// Errors of the log; every variant names the log directory, and the entry index when known.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The identity key file could not be used.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored hashes could not be read or combined.
    #[error("log {dir}: Merkle tree: {source}")]
    Merkle {
        /// Node directory.
        dir: PathBuf,
        /// Cause.
        source: MerkleError,
    },
    /// An entry does not decode.
    #[error("log {dir}: entry {index}: {source}")]
    Decode {
        /// Node directory.
        dir: PathBuf,
        /// Entry index.
        index: u64,
        /// Cause.
        source: DecodeError,
    },
    /// An entry's signature or co-signature does not verify.
    #[error("log {dir}: entry {index}: {source}")]
    Signature {
        /// Node directory.
        dir: PathBuf,
        /// Entry index.
        index: u64,
        /// Cause.
        source: VerifyError,
    },
    /// An entry breaks the log rules (wrong index, overdraw, …); nothing of its batch is stored.
    #[error("log {dir}: {source}")]
    Rule {
        /// Node directory.
        dir: PathBuf,
        /// Cause (names the entry).
        source: RuleError,
    },
    /// The checkpoint note is missing, malformed or not signed by the log key.
    #[error("log {dir}: checkpoint ({what}): {reason}")]
    Checkpoint {
        /// Node directory.
        dir: PathBuf,
        /// Which checkpoint (`store` or `file`).
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The stored state does not match the checkpoint (corruption, loss, tampering).
    #[error("log {dir} is corrupt: {reason}")]
    Corrupt {
        /// Node directory.
        dir: PathBuf,
        /// What does not match, with expected and found values.
        reason: String,
    },
    /// The node directory is unusable (missing, or already initialised).
    #[error("log {dir}: {reason}")]
    Location {
        /// Node directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// A batch is empty or larger than [`BATCH_ENTRIES_MAX`], or an entry breaks a format limit.
    #[error("log {dir}: {reason}")]
    Batch {
        /// Node directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing `DIR/checkpoint` failed after the store committed the append.
    #[error(
        "log {dir}: the append is committed, but writing the checkpoint file failed: {source}"
    )]
    CheckpointFile {
        /// Node directory.
        dir: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// A verified checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Tree size.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// The note, exactly as stored (with any cosignatures).
    pub note: Vec<u8>,
}

/// Sign a checkpoint of this node's log.
fn sign_checkpoint(dir: &Path, id: &Identity, size: u64, root: Hash) -> Result<Vec<u8>, LogError> {
    Checkpoint::new(&id.origin(), size, root)
        .and_then(|c| c.sign(&id.note_signer()))
        .map(String::into_bytes)
        .map_err(|e| LogError::Checkpoint {
            dir: dir.to_owned(),
            what: "new",
            reason: e.to_string(),
        })
}

/// Parse a checkpoint note and verify the log key's signature on it.
pub(crate) fn open_checkpoint(
    dir: &Path,
    what: &'static str,
    note: &[u8],
    key: &PublicKey,
) -> Result<(Head, Note), LogError> {
    let err = |reason: String| LogError::Checkpoint {
        dir: dir.to_owned(),
        what,
        reason,
    };
    let verifier = identity::log_verifier(key).map_err(err)?;
    let (cp, parsed) = Checkpoint::open(note, &verifier).map_err(|e| err(e.to_string()))?;
    Ok((
        Head {
            size: cp.size,
            root: cp.root,
            note: note.to_vec(),
        },
        parsed,
    ))
}

/// Write `DIR/checkpoint` atomically: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_checkpoint_file(dir: &Path, note: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{CHECKPOINT_FILE_NAME}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(note)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(CHECKPOINT_FILE_NAME))?;
    File::open(dir)?.sync_all()
}

/// Read access to a node's log, verified on open; needs no secret key.
#[derive(Debug)]
pub struct LogReader {
    pub(crate) dir: PathBuf,
    pub(crate) key: PublicKey,
    pub(crate) store: SledStore,
    pub(crate) head: Head,
}

impl LogReader {
    /// Open the log in `dir` and re-verify its tail: checkpoint signature, size, tree hash from
    /// the stored hashes, no entry past the size, the last [`TAIL_VERIFY_ENTRIES`] entries'
    /// leaf hashes and signatures, and the store against `DIR/checkpoint` (a store that lost
    /// committed entries is refused). The log key is read from the checkpoint's origin and must
    /// match the store's entries.
    pub fn open(dir: &Path) -> Result<LogReader, LogError> {
        let store = SledStore::open(&dir.join(STORE_DIR_NAME))?;
        Self::from_store(dir, store)
    }

    /// [`LogReader::open`] on a store already opened from `DIR/ledger.sled`.
    pub(crate) fn from_store(dir: &Path, store: SledStore) -> Result<LogReader, LogError> {
        let note = store.checkpoint()?.ok_or_else(|| LogError::Checkpoint {
            dir: dir.to_owned(),
            what: "store",
            reason: "the store has no checkpoint (creation interrupted?)".into(),
        })?;
        let origin = std::str::from_utf8(&note)
            .ok()
            .and_then(|t| t.lines().next())
            .unwrap_or_default()
            .to_owned();
        let key = identity::key_of_origin(&origin).ok_or_else(|| LogError::Checkpoint {
            dir: dir.to_owned(),
            what: "store",
            reason: format!(
                "origin {origin:?} is not `{}` followed by 64 lower-case hex digits",
                identity::ORIGIN_PREFIX
            ),
        })?;
        let (head, _) = open_checkpoint(dir, "store", &note, &key)?;
        let reader = LogReader {
            dir: dir.to_owned(),
            key,
            store,
            head,
        };
        reader.verify_tail()?;
        reader.check_checkpoint_file()?;
        Ok(reader)
    }

    fn corrupt(&self, reason: String) -> LogError {
        LogError::Corrupt {
            dir: self.dir.clone(),
            reason,
        }
    }

    pub(crate) fn merkle(&self, source: MerkleError) -> LogError {
        LogError::Merkle {
            dir: self.dir.clone(),
            source,
        }
    }

    fn verify_tail(&self) -> Result<(), LogError> {
        let size = self.store.size()?;
        if size != self.head.size {
            return Err(self.corrupt(format!(
                "checkpoint is for size {}, the store records size {size}",
                self.head.size
            )));
        }
        // Entries stored beyond the checkpoint can only be a replica's pending extension
        // (`Store::pending`, checked by the replica that wrote it); readers ignore them.
        let end = match self.store.pending()? {
            Some(p) if p.size > size => p.size,
            Some(p) => {
                return Err(self.corrupt(format!(
                    "a pending extension to size {} is not beyond the checkpoint size {size}",
                    p.size
                )))
            }
            None => size,
        };
        if self.store.has_entry(end)? {
            return Err(self.corrupt(format!(
                "entry {end} exists beyond the stored entries (checkpoint size {size}, {end} stored)"
            )));
        }
        let root = merkle::tree_hash(size, &self.store).map_err(|e| self.merkle(e))?;
        if root != self.head.root {
            return Err(self.corrupt(format!(
                "tree hash of the stored hashes is {}, the checkpoint's root is {}",
                hex::encode(root),
                hex::encode(self.head.root)
            )));
        }
        self.verify_range(size.saturating_sub(TAIL_VERIFY_ENTRIES), size)
    }

    /// Re-verify stored entries `start..end`: each entry's leaf hash equals its stored hash, it
    /// decodes, is the log key's with its index as `seq`, and its signatures verify.
    pub(crate) fn verify_range(&self, start: u64, end: u64) -> Result<(), LogError> {
        let entries = self.store.entries(start, end)?;
        let idx: Vec<u64> = (start..end)
            .map(|i| merkle::stored_hash_index(0, i))
            .collect();
        let stored = self.store.read_hashes(&idx).map_err(|e| self.merkle(e))?;
        for (i, (bytes, h)) in entries.iter().zip(&stored).enumerate() {
            let index = start + i as u64;
            let leaf = merkle::leaf_hash(bytes);
            if leaf != *h {
                return Err(self.corrupt(format!(
                    "entry {index}: leaf hash {} does not match the stored hash {}",
                    hex::encode(leaf),
                    hex::encode(h)
                )));
            }
            self.check_entry(index, bytes)?;
        }
        Ok(())
    }

    fn check_entry(&self, index: u64, bytes: &[u8]) -> Result<Entry, LogError> {
        let e = Entry::decode(bytes).map_err(|source| LogError::Decode {
            dir: self.dir.clone(),
            index,
            source,
        })?;
        if e.author != self.key || e.seq != index {
            return Err(self.corrupt(format!(
                "entry {index}: author {} seq {}, expected author {} seq {index}",
                hex::encode(e.author),
                e.seq,
                hex::encode(self.key)
            )));
        }
        e.verify().map_err(|source| LogError::Signature {
            dir: self.dir.clone(),
            index,
            source,
        })?;
        Ok(e)
    }

    fn check_checkpoint_file(&self) -> Result<(), LogError> {
        let path = self.dir.join(CHECKPOINT_FILE_NAME);
        let note = match std::fs::read(&path) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LogError::Checkpoint {
                    dir: self.dir.clone(),
                    what: "file",
                    reason: format!("{} is missing", path.display()),
                })
            }
            Err(e) => {
                return Err(LogError::Checkpoint {
                    dir: self.dir.clone(),
                    what: "file",
                    reason: format!("{}: {e}", path.display()),
                })
            }
        };
        let (file, _) = open_checkpoint(&self.dir, "file", &note, &self.key)?;
        if file.size > self.head.size {
            return Err(self.corrupt(format!(
                "{} records size {} but the store holds only {} entries: committed entries were lost",
                path.display(),
                file.size,
                self.head.size
            )));
        }
        let root = merkle::tree_hash(file.size, &self.store).map_err(|e| self.merkle(e))?;
        if root != file.root {
            return Err(self.corrupt(format!(
                "{} (size {}) has root {}, but the store's tree of that size has root {}: the store's history was rewritten",
                path.display(),
                file.size,
                hex::encode(file.root),
                hex::encode(root)
            )));
        }
        Ok(())
    }

    /// The node directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The log owner's key.
    pub fn key(&self) -> PublicKey {
        self.key
    }
    /// The log's C2SP verifier key.
    pub fn verifier_key(&self) -> String {
        identity::verifier_key_of(&self.key)
    }
    /// The latest verified checkpoint.
    pub fn head(&self) -> &Head {
        &self.head
    }
    /// The store.
    pub fn store(&self) -> &SledStore {
        &self.store
    }

    /// Encoded entries `start..end`.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LogError> {
        if end > self.head.size || start > end {
            return Err(LogError::Batch {
                dir: self.dir.clone(),
                reason: format!(
                    "entries {start}..{end} are outside the log of size {}",
                    self.head.size
                ),
            });
        }
        Ok(self.store.entries(start, end)?)
    }

    /// Inclusion proof of entry `index` in the tree of size `size`.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(size)?;
        merkle::prove_record(size, index, &self.store).map_err(|e| self.merkle(e))
    }

    /// Consistency proof from the tree of size `from` to the tree of size `to`.
    pub fn prove_consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(to)?;
        merkle::prove_tree(to, from, &self.store).map_err(|e| self.merkle(e))
    }

    /// Root of the tree of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Result<Hash, LogError> {
        self.check_size(size)?;
        merkle::tree_hash(size, &self.store).map_err(|e| self.merkle(e))
    }

    fn check_size(&self, size: u64) -> Result<(), LogError> {
        if size > self.head.size {
            return Err(LogError::Batch {
                dir: self.dir.clone(),
                reason: format!(
                    "tree size {size} is beyond the log's size {}",
                    self.head.size
                ),
            });
        }
        Ok(())
    }

    /// Decode every entry (no signature check), for rebuilding state.
    pub(crate) fn decode_all(&self) -> Result<Vec<Entry>, LogError> {
        let mut out = Vec::with_capacity(self.head.size as usize);
        let mut start = 0;
        while start < self.head.size {
            let end = (start + READ_CHUNK_ENTRIES).min(self.head.size);
            for (i, b) in self.store.entries(start, end)?.iter().enumerate() {
                out.push(Entry::decode(b).map_err(|source| LogError::Decode {
                    dir: self.dir.clone(),
                    index: start + i as u64,
                    source,
                })?);
            }
            start = end;
        }
        Ok(out)
    }
}

/// A node's own log, open for appending.
#[derive(Debug)]
pub struct Log {
    reader: LogReader,
    identity: Identity,
    state: LogState,
}

/// A hash reader over the store plus the hashes of a batch not yet committed.
struct Overlay<'a> {
    base: &'a SledStore,
    base_count: u64,
    pending: &'a [Hash],
}

impl HashReader for Overlay<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MerkleError> {
        let old: Vec<u64> = indexes
            .iter()
            .copied()
            .filter(|&i| i < self.base_count)
            .collect();
        let old = self.base.read_hashes(&old)?;
        let mut old = old.into_iter();
        let mut out = Vec::with_capacity(indexes.len());
        for &i in indexes {
            if i < self.base_count {
                out.push(old.next().expect("partitioned above"));
            } else {
                let j = (i - self.base_count) as usize;
                out.push(*self.pending.get(j).ok_or(MerkleError::MissingStoredHash {
                    index: i,
                    stored: self.base_count + self.pending.len() as u64,
                })?);
            }
        }
        Ok(out)
    }
}

/// The stored hashes that appending leaf hashes `leaves` at index `first` adds to `store`
/// (which holds the stored hashes of the first `first` records), in index order starting at
/// `stored_hash_count(first)`, and the root of the tree of size `first + leaves.len()`. Reads
/// the store, writes nothing. Shared by [`Log::append_batch`] and the replica's `extend`.
pub(crate) fn extend_hashes(
    store: &SledStore,
    first: u64,
    leaves: &[Hash],
) -> Result<(Vec<Hash>, Hash), MerkleError> {
    let base_count = merkle::stored_hash_count(first);
    let mut pending: Vec<Hash> = Vec::with_capacity(leaves.len() * 2);
    for (i, leaf) in leaves.iter().enumerate() {
        let overlay = Overlay {
            base: store,
            base_count,
            pending: &pending,
        };
        let hs = merkle::stored_hashes_for_record_hash(first + i as u64, *leaf, &overlay)?;
        pending.extend(hs);
    }
    let overlay = Overlay {
        base: store,
        base_count,
        pending: &pending,
    };
    let root = merkle::tree_hash(first + leaves.len() as u64, &overlay)?;
    Ok((pending, root))
}

impl Log {
    /// Create a new log in `dir` (created if missing; must not hold a log already): writes the
    /// key file `DIR/node.key` (mode 0600), creates the store, and appends entry 0, the owner's
    /// self-admission as `membership`.
    pub fn create(
        dir: &Path,
        identity: Identity,
        membership: &Membership,
        timestamp_ms: u64,
    ) -> Result<Log, LogError> {
        let location = |reason: String| LogError::Location {
            dir: dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| location(e.to_string()))?;
        for name in [KEY_FILE_NAME, STORE_DIR_NAME, CHECKPOINT_FILE_NAME] {
            if dir.join(name).exists() {
                return Err(location(format!(
                    "{name} already exists; refusing to create a log here"
                )));
            }
        }
        identity.write_new(&dir.join(KEY_FILE_NAME))?;
        let store = SledStore::create(&dir.join(STORE_DIR_NAME))?;
        let genesis = Entry::sign(
            identity.signing_key(),
            0,
            timestamp_ms,
            Body::Admission(Admission {
                organisation: membership.organisation.clone(),
                sector: membership.sector,
                member: identity.public_key(),
            }),
        );
        let key = identity.public_key();
        let mut log = Log {
            reader: LogReader {
                dir: dir.to_owned(),
                key,
                store,
                head: Head {
                    size: 0,
                    root: merkle::empty_root(),
                    note: vec![],
                },
            },
            state: LogState::new(key),
            identity,
        };
        log.append(genesis)?;
        Ok(log)
    }

    /// Open the log in `dir` for appending: loads `DIR/node.key`, opens and re-verifies the
    /// store ([`LogReader::open`]), checks the key is the log's, and rebuilds the append state
    /// by applying the log rules to every entry.
    pub fn open(dir: &Path) -> Result<Log, LogError> {
        let identity = Identity::load(&dir.join(KEY_FILE_NAME))?;
        let reader = LogReader::open(dir)?;
        if let Some(p) = reader.store.pending()? {
            return Err(LogError::Corrupt {
                dir: dir.to_owned(),
                reason: format!(
                    "the store holds a pending extension to size {} (a replica being fetched), which a node's own log never has",
                    p.size
                ),
            });
        }
        if reader.key != identity.public_key() {
            return Err(LogError::Location {
                dir: dir.to_owned(),
                reason: format!(
                    "{KEY_FILE_NAME} holds key {}, but the log belongs to {}",
                    hex::encode(identity.public_key()),
                    hex::encode(reader.key)
                ),
            });
        }
        // A crash between the store's commit and the checkpoint file's rename leaves the file
        // behind the store (LogReader::open checked it is a consistent prefix): bring it up to
        // date before appending.
        let file = dir.join(CHECKPOINT_FILE_NAME);
        if std::fs::read(&file).ok().as_deref() != Some(reader.head.note.as_slice()) {
            write_checkpoint_file(dir, &reader.head.note).map_err(|source| {
                LogError::CheckpointFile {
                    dir: dir.to_owned(),
                    source,
                }
            })?;
        }
        let mut state = LogState::new(reader.key);
        let entries = reader.decode_all()?;
        state.apply_all(&entries).map_err(|source| LogError::Rule {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Log {
            reader,
            identity,
            state,
        })
    }

    /// Read access (proofs, entries, head).
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }
    /// The node identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    /// The append state (balance, admitted members).
    pub fn state(&self) -> &LogState {
        &self.state
    }
    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.reader.head.size
    }
    /// Latest checkpoint note, exactly as signed (with cosignatures).
    pub fn checkpoint(&self) -> &[u8] {
        &self.reader.head.note
    }
    /// Inclusion proof of entry `index` in the tree of size `size`.
    pub fn prove_inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.reader.prove_inclusion(index, size)
    }
    /// Consistency proof between tree sizes `from` and `to`.
    pub fn prove_consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, LogError> {
        self.reader.prove_consistency(from, to)
    }

    /// Sign `body` as the entry `offset` places after the current end (for building batches).
    pub fn sign_next(&self, offset: u64, timestamp_ms: u64, body: Body) -> Entry {
        Entry::sign(
            self.identity.signing_key(),
            self.size() + offset,
            timestamp_ms,
            body,
        )
    }

    /// Validate and append one entry; returns its index.
    pub fn append(&mut self, entry: Entry) -> Result<u64, LogError> {
        let index = self.size();
        self.append_batch(vec![entry])?;
        Ok(index)
    }

    /// Validate a batch (format limits, signatures and co-signatures, log rules including
    /// credit overdraw), then commit entries, stored hashes and a newly signed checkpoint in one
    /// atomic, durable store write. On any error nothing of the batch is stored.
    pub fn append_batch(&mut self, entries: Vec<Entry>) -> Result<(), LogError> {
        let dir = self.reader.dir.clone();
        if entries.is_empty() || entries.len() > BATCH_ENTRIES_MAX {
            return Err(LogError::Batch {
                dir,
                reason: format!(
                    "a batch holds 1..={BATCH_ENTRIES_MAX} entries, found {}",
                    entries.len()
                ),
            });
        }
        let first = self.size();
        let encoded: Vec<Vec<u8>> = entries
            .par_iter()
            .enumerate()
            .map(|(i, e)| {
                e.check_limits().map_err(|source| LogError::Decode {
                    dir: dir.clone(),
                    index: first + i as u64,
                    source,
                })?;
                Ok(e.encode())
            })
            .collect::<Result<_, LogError>>()?;
        entry::verify_many(&entries, &encoded).map_err(|(i, source)| LogError::Signature {
            dir: dir.clone(),
            index: first + i as u64,
            source,
        })?;
        let delta = self
            .state
            .check(&entries)
            .map_err(|source| LogError::Rule {
                dir: dir.clone(),
                source,
            })?;
        let leaves: Vec<Hash> = encoded.par_iter().map(|b| merkle::leaf_hash(b)).collect();
        let base_count = merkle::stored_hash_count(first);
        let (pending, root) =
            extend_hashes(&self.reader.store, first, &leaves).map_err(|e| self.reader.merkle(e))?;
        let size = first + entries.len() as u64;
        let note = sign_checkpoint(&dir, &self.identity, size, root)?;
        self.reader.store.append(Batch {
            first_index: first,
            entries: &encoded,
            first_hash_index: base_count,
            hashes: &pending,
            checkpoint: &note,
        })?;
        self.state.commit(delta);
        self.reader.head = Head { size, root, note };
        write_checkpoint_file(&dir, &self.reader.head.note)
            .map_err(|source| LogError::CheckpointFile { dir, source })
    }

    /// Add a witness cosignature line (`— <name> <base64>\n`, as `witness::Witness::cosign`
    /// returns it) to the latest checkpoint, after verifying it with the witness's verifier;
    /// stored durably and written to `DIR/checkpoint`.
    pub fn add_cosignature(&mut self, line: &str, witness: &Verifier) -> Result<(), LogError> {
        let dir = self.reader.dir.clone();
        let old = self.reader.head.note.clone();
        let mut new = old.clone();
        new.extend_from_slice(line.as_bytes());
        let (head, parsed) = open_checkpoint(&dir, "cosigned", &new, &self.reader.key)?;
        checkpoint::verify_cosignature(&parsed, witness).map_err(|e| LogError::Checkpoint {
            dir: dir.clone(),
            what: "cosigned",
            reason: e.to_string(),
        })?;
        self.reader.store.replace_checkpoint(&old, &new)?;
        self.reader.head = head;
        write_checkpoint_file(&dir, &new).map_err(|source| LogError::CheckpointFile { dir, source })
    }
}
