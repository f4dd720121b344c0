//! Storage of one log: entries, the Merkle tree's stored hashes, the latest checkpoint.
//!
//! [`Store`] is the small interface the log needs; [`SledStore`] implements it on sled. Another
//! embedded store can replace sled by implementing the trait: an append must be atomic (all of
//! the batch or none of it) and durable when the call returns.
//!
//! sled layout (one tree, `specs/ledger.md` "Store layout"): `e‖u64 BE index` → entry bytes,
//! `h‖u64 BE stored-hash index` → 32-byte hash, `n` → tree size (u64 BE), `c` → latest
//! checkpoint note (with cosignatures), `v` → store format version (u8), and only while a
//! replica is verified in batches `p` → pending extent (u64 BE) ‖ the note it is a prefix of.

use std::path::{Path, PathBuf};

use crate::merkle::{self, Hash, HashReader, MerkleError};

/// Store format version written in key `v`.
pub const STORE_FORMAT_VERSION: u8 = 1;
/// Entries read per range query.
pub const READ_CHUNK_ENTRIES: u64 = 65_536;

const KEY_ENTRY: u8 = b'e';
const KEY_HASH: u8 = b'h';
const KEY_SIZE: &[u8] = b"n";
const KEY_CHECKPOINT: &[u8] = b"c";
const KEY_VERSION: &[u8] = b"v";
const KEY_PENDING: &[u8] = b"p";

/// Storage errors; each names the store and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption it detected itself).
    #[error("store {path}: {message}")]
    Backend {
        /// Store path.
        path: PathBuf,
        /// Backend's message.
        message: String,
    },
    /// A value that must exist is missing.
    #[error("store {path}: {what} is missing (tree size {size})")]
    Missing {
        /// Store path.
        path: PathBuf,
        /// What (e.g. `entry 17`, `stored hash 40`).
        what: String,
        /// Tree size recorded in the store.
        size: u64,
    },
    /// A stored value has the wrong shape.
    #[error("store {path}: {what} is corrupt: {reason}")]
    Corrupt {
        /// Store path.
        path: PathBuf,
        /// What.
        what: String,
        /// Expected vs found.
        reason: String,
    },
    /// The store directory does not exist, or already exists when creating.
    #[error("store {path}: {reason}")]
    Location {
        /// Store path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An append does not start at the stored size.
    #[error("store {path}: append starts at index {first}, but the store holds {size} entries")]
    NotAtEnd {
        /// Store path.
        path: PathBuf,
        /// First index of the batch.
        first: u64,
        /// Stored size.
        size: u64,
    },
    /// The checkpoint changed under a compare-and-swap.
    #[error("store {path}: the checkpoint changed concurrently")]
    CheckpointChanged {
        /// Store path.
        path: PathBuf,
    },
    /// Another process (a running node, usually) holds the store's file lock.
    #[error(
        "store {path}: locked by another process (a running node?); gave up after {waited_ms} ms"
    )]
    Locked {
        /// Store path.
        path: PathBuf,
        /// How long the open waited for the lock.
        waited_ms: u64,
    },
}

/// One atomic append.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Index of the first entry (= the number of entries stored before the append).
    pub first_index: u64,
    /// Encoded entries.
    pub entries: &'a [Vec<u8>],
    /// Index of the first new stored hash (= `stored_hash_count(first_index)`).
    pub first_hash_index: u64,
    /// New stored hashes, in index order.
    pub hashes: &'a [Hash],
    /// The signed checkpoint note: for [`Store::append`] the new one, of size
    /// `first_index + entries.len()`; for [`Store::append_pending`] the one of the larger tree
    /// the entries are a verified prefix of.
    pub checkpoint: &'a [u8],
}

/// Entries stored beyond the checkpoint: a verified prefix of a larger tree that a signed note
/// commits to, appended in batches by a replica (`specs/federation.md` §4.2). Readers ignore
/// them; the append that reaches the note's size commits them under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Entries stored, the checkpointed ones included (more than the size `n`).
    pub size: u64,
    /// The signed note (of a larger tree) the stored entries were verified against.
    pub note: Vec<u8>,
}

/// What a log needs from its storage.
pub trait Store: HashReader + Send + Sync {
    /// Number of entries (tree size) recorded with the last append.
    fn size(&self) -> Result<u64, StoreError>;
    /// The pending extension beyond the size, if any.
    fn pending(&self) -> Result<Option<Pending>, StoreError>;
    /// Append a batch that completes its checkpoint's tree. It must start at the end of what
    /// is stored (the pending extent, if any, else the size); writes the entries, hashes,
    /// checkpoint and size and drops any pending record. Atomic and durable when this
    /// returns `Ok`.
    fn append(&self, batch: Batch<'_>) -> Result<(), StoreError>;
    /// Append a batch that is a verified prefix of the larger tree its `checkpoint` signs, at
    /// the end of what is stored: writes the entries, hashes and the pending record
    /// (`first_index + entries.len()`, `checkpoint`), leaving the size and the checkpoint as
    /// they are. Atomic and durable when this returns `Ok`.
    fn append_pending(&self, batch: Batch<'_>) -> Result<(), StoreError>;
    /// Entries `start..end`, in order; errors if one is missing.
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Whether an entry exists at `index` (used to detect entries beyond the recorded size).
    fn has_entry(&self, index: u64) -> Result<bool, StoreError>;
    /// The latest checkpoint note, if any.
    fn checkpoint(&self) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replace the checkpoint note (to add cosignatures) if it still equals `old`; durable.
    fn replace_checkpoint(&self, old: &[u8], new: &[u8]) -> Result<(), StoreError>;
    /// Path for messages.
    fn path(&self) -> &Path;
}

/// A log store on sled. A clone shares the open database (sled's handles are
/// reference-counted and thread-safe): a running node lends clones to its web server to read
/// the stores it holds locked, and only the `Log` or `Replica` that owns the store writes.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    path: PathBuf,
}

fn key(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Page cache of one store. A node opens one store for its own log and one per replica of
/// every other member's log, so the cache is per store and small; reads are sequential.
pub const STORE_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Longest wait for sled's file lock when opening a store.
pub const LOCK_WAIT_MS_MAX: u64 = 2_000;
/// Pause between attempts to take the lock.
const LOCK_RETRY_MS: u64 = 10;

/// Why one attempt to open sled failed.
enum OpenError {
    /// Another handle holds the file lock (maybe one being dropped): worth retrying.
    Locked,
    /// Anything else: final.
    Other(StoreError),
}

/// Whether sled failed to open because another handle holds its file lock.
///
/// sled 0.34 (`Config::try_lock` in its `config.rs`) does not keep the `WouldBlock` of the
/// failed `flock`: it returns `Error::Io` of kind `Other` whose message starts with "could not
/// acquire lock on". No other failure of `open` has that kind and prefix. Detecting the lock
/// without that wording needs our own `flock` probe (`File::try_lock`, Rust 1.89, above the
/// workspace's `rust-version`), so the wording is pinned instead: the test
/// `tests::a_second_open_in_one_process_is_locked` fails if a sled upgrade changes it.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::Other
            && io.to_string().starts_with(SLED_LOCK_MESSAGE_PREFIX))
}

/// The start of sled 0.34's message when its file lock is held elsewhere.
const SLED_LOCK_MESSAGE_PREFIX: &str = "could not acquire lock on";

impl SledStore {
    fn backend(&self, e: sled::Error) -> StoreError {
        StoreError::Backend {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
        // sled 0.34 releases its file lock asynchronously: background threads of a just-dropped
        // handle may hold it for a few milliseconds, so reopening at once can fail to take it.
        // Retry for a bounded time; a lock held by another live process fails with
        // `StoreError::Locked` after `LOCK_WAIT_MS_MAX`.
        let started = std::time::Instant::now();
        loop {
            match Self::open_db_once(path) {
                Err(OpenError::Locked) => {
                    let waited_ms = started.elapsed().as_millis() as u64;
                    if waited_ms >= LOCK_WAIT_MS_MAX {
                        return Err(StoreError::Locked {
                            path: path.to_owned(),
                            waited_ms,
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
                }
                Err(OpenError::Other(e)) => return Err(e),
                Ok(db) => return Ok(db),
            }
        }
    }

    fn open_db_once(path: &Path) -> Result<sled::Db, OpenError> {
        // sled can panic on some on-disk corruptions instead of returning an error; turn that
        // into a precise error rather than aborting the node.
        let p = path.to_owned();
        let opened = std::panic::catch_unwind(move || {
            sled::Config::new()
                .path(&p)
                .mode(sled::Mode::HighThroughput)
                .cache_capacity(STORE_CACHE_BYTES)
                // Every write is flushed before it is acknowledged (`append`): no background
                // flusher thread per store (a node holds one store per member's replica).
                .flush_every_ms(None)
                .open()
        });
        match opened {
            Ok(Ok(db)) => Ok(db),
            Ok(Err(e)) if is_lock_error(&e) => Err(OpenError::Locked),
            Ok(Err(e)) => Err(OpenError::Other(StoreError::Backend {
                path: path.to_owned(),
                message: e.to_string(),
            })),
            Err(_) => Err(OpenError::Other(StoreError::Backend {
                path: path.to_owned(),
                message: "sled panicked while opening the store (corrupt files?)".into(),
            })),
        }
    }

    /// Create a new, empty store at `path` (which must not exist).
    pub fn create(path: &Path) -> Result<SledStore, StoreError> {
        if path.exists() {
            return Err(StoreError::Location {
                path: path.to_owned(),
                reason: "already exists; refusing to create a store over it".into(),
            });
        }
        let db = Self::open_db(path)?;
        let s = SledStore {
            db,
            path: path.to_owned(),
        };
        s.db.insert(KEY_VERSION, &[STORE_FORMAT_VERSION])
            .map_err(|e| s.backend(e))?;
        s.db.insert(KEY_SIZE, &0u64.to_be_bytes())
            .map_err(|e| s.backend(e))?;
        s.db.flush().map_err(|e| s.backend(e))?;
        Ok(s)
    }

    /// Open an existing store.
    pub fn open(path: &Path) -> Result<SledStore, StoreError> {
        if !path.is_dir() {
            return Err(StoreError::Location {
                path: path.to_owned(),
                reason: "no store here (expected a sled directory)".into(),
            });
        }
        let db = Self::open_db(path)?;
        let s = SledStore {
            db,
            path: path.to_owned(),
        };
        match s.db.get(KEY_VERSION).map_err(|e| s.backend(e))? {
            Some(v) if v.as_ref() == [STORE_FORMAT_VERSION] => Ok(s),
            Some(v) => Err(StoreError::Corrupt {
                path: path.to_owned(),
                what: "format version".into(),
                reason: format!("expected [{STORE_FORMAT_VERSION}], found {:?}", v.as_ref()),
            }),
            None => Err(StoreError::Missing {
                path: path.to_owned(),
                what: "format version (key `v`)".into(),
                size: 0,
            }),
        }
    }

    /// The end of what is stored (the pending extent, else the size); a batch must start here.
    fn extent(&self) -> Result<u64, StoreError> {
        match self.pending()? {
            Some(p) => Ok(p.size),
            None => self.size(),
        }
    }

    /// A sled batch with `b`'s entries and hashes, after checking that it starts at the extent.
    fn entries_batch(&self, b: &Batch<'_>) -> Result<sled::Batch, StoreError> {
        let extent = self.extent()?;
        if extent != b.first_index {
            return Err(StoreError::NotAtEnd {
                path: self.path.clone(),
                first: b.first_index,
                size: extent,
            });
        }
        let new_size = b.first_index + b.entries.len() as u64;
        assert_eq!(
            b.first_hash_index + b.hashes.len() as u64,
            merkle::stored_hash_count(new_size),
            "a batch carries exactly the stored hashes of its entries"
        );
        let mut batch = sled::Batch::default();
        for (i, e) in b.entries.iter().enumerate() {
            batch.insert(&key(KEY_ENTRY, b.first_index + i as u64), e.as_slice());
        }
        for (i, h) in b.hashes.iter().enumerate() {
            batch.insert(&key(KEY_HASH, b.first_hash_index + i as u64), h);
        }
        Ok(batch)
    }

    /// Apply `batch` atomically and flush it.
    fn commit(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch).map_err(|e| self.backend(e))?;
        self.db.flush().map_err(|e| self.backend(e))?;
        Ok(())
    }

    /// Direct access for tests that simulate corruption of stored values.
    #[doc(hidden)]
    pub fn raw_insert(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.insert(key, value).map_err(|e| self.backend(e))?;
        self.db.flush().map_err(|e| self.backend(e))?;
        Ok(())
    }

    /// Direct access for tests that simulate lost values.
    #[doc(hidden)]
    pub fn raw_remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.db.remove(key).map_err(|e| self.backend(e))?;
        self.db.flush().map_err(|e| self.backend(e))?;
        Ok(())
    }

    /// Key of entry `index` (for tests that corrupt it).
    #[doc(hidden)]
    pub fn entry_key(index: u64) -> [u8; 9] {
        key(KEY_ENTRY, index)
    }

    /// Key of stored hash `index`.
    #[doc(hidden)]
    pub fn hash_key(index: u64) -> [u8; 9] {
        key(KEY_HASH, index)
    }
}

impl HashReader for SledStore {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MerkleError> {
        indexes
            .iter()
            .map(|&i| {
                let v = self
                    .db
                    .get(key(KEY_HASH, i))
                    .map_err(|e| MerkleError::Storage(format!("{}: {e}", self.path.display())))?
                    .ok_or_else(|| {
                        MerkleError::Storage(format!(
                            "{}: stored hash {i} is missing",
                            self.path.display()
                        ))
                    })?;
                <Hash>::try_from(v.as_ref()).map_err(|_| {
                    MerkleError::Storage(format!(
                        "{}: stored hash {i} is {} bytes, expected 32",
                        self.path.display(),
                        v.len()
                    ))
                })
            })
            .collect()
    }
}

impl Store for SledStore {
    fn size(&self) -> Result<u64, StoreError> {
        let v = self
            .db
            .get(KEY_SIZE)
            .map_err(|e| self.backend(e))?
            .ok_or_else(|| StoreError::Missing {
                path: self.path.clone(),
                what: "tree size (key `n`)".into(),
                size: 0,
            })?;
        let b: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            what: "tree size (key `n`)".into(),
            reason: format!("expected 8 bytes, found {}", v.len()),
        })?;
        Ok(u64::from_be_bytes(b))
    }

    fn pending(&self) -> Result<Option<Pending>, StoreError> {
        let Some(v) = self.db.get(KEY_PENDING).map_err(|e| self.backend(e))? else {
            return Ok(None);
        };
        let (size, note) = v
            .split_first_chunk::<8>()
            .ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                what: "pending extension (key `p`)".into(),
                reason: format!(
                    "expected 8 bytes of size and a note, found {} bytes",
                    v.len()
                ),
            })?;
        Ok(Some(Pending {
            size: u64::from_be_bytes(*size),
            note: note.to_vec(),
        }))
    }

    fn append(&self, b: Batch<'_>) -> Result<(), StoreError> {
        let mut batch = self.entries_batch(&b)?;
        let new_size = b.first_index + b.entries.len() as u64;
        batch.insert(KEY_CHECKPOINT, b.checkpoint);
        batch.insert(KEY_SIZE, &new_size.to_be_bytes());
        batch.remove(KEY_PENDING);
        self.commit(batch)
    }

    fn append_pending(&self, b: Batch<'_>) -> Result<(), StoreError> {
        let mut batch = self.entries_batch(&b)?;
        let new_size = b.first_index + b.entries.len() as u64;
        let mut value = new_size.to_be_bytes().to_vec();
        value.extend_from_slice(b.checkpoint);
        batch.insert(KEY_PENDING, value);
        self.commit(batch)
    }

    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        if start >= end {
            return Ok(out);
        }
        for item in self.db.range(key(KEY_ENTRY, start)..key(KEY_ENTRY, end)) {
            let (k, v) = item.map_err(|e| self.backend(e))?;
            let expected = start + out.len() as u64;
            if k.as_ref() != key(KEY_ENTRY, expected) {
                break;
            }
            out.push(v.to_vec());
        }
        if out.len() as u64 != end - start {
            let size = self.size()?;
            return Err(StoreError::Missing {
                path: self.path.clone(),
                what: format!("entry {}", start + out.len() as u64),
                size,
            });
        }
        Ok(out)
    }

    fn has_entry(&self, index: u64) -> Result<bool, StoreError> {
        self.db
            .contains_key(key(KEY_ENTRY, index))
            .map_err(|e| self.backend(e))
    }

    fn checkpoint(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .db
            .get(KEY_CHECKPOINT)
            .map_err(|e| self.backend(e))?
            .map(|v| v.to_vec()))
    }

    fn replace_checkpoint(&self, old: &[u8], new: &[u8]) -> Result<(), StoreError> {
        self.db
            .compare_and_swap(KEY_CHECKPOINT, Some(old), Some(new))
            .map_err(|e| self.backend(e))?
            .map_err(|_| StoreError::CheckpointChanged {
                path: self.path.clone(),
            })?;
        self.db.flush().map_err(|e| self.backend(e))?;
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_second_open_in_one_process_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let held = SledStore::create(&path).unwrap();

        // Pin sled's wording: a raw second open fails with exactly the error `is_lock_error`
        // recognises. If a sled upgrade rewords it, this fails here rather than turning a
        // held lock into a generic backend error.
        let raw = sled::Config::new().path(&path).open().unwrap_err();
        assert!(is_lock_error(&raw), "sled's lock error changed: {raw:?}");

        let started = Instant::now();
        let err = SledStore::open(&path).unwrap_err();
        let elapsed = started.elapsed();
        match &err {
            StoreError::Locked { path: p, waited_ms } => {
                assert_eq!(p, &path);
                assert!(*waited_ms >= LOCK_WAIT_MS_MAX, "{waited_ms}");
            }
            other => panic!("expected StoreError::Locked, got {other:?}"),
        }
        assert!(
            elapsed >= Duration::from_millis(LOCK_WAIT_MS_MAX)
                && elapsed < Duration::from_millis(LOCK_WAIT_MS_MAX + 3_000),
            "the wait is bounded by LOCK_WAIT_MS_MAX: {elapsed:?}"
        );
        // The binary maps this message to its environment exit code.
        let message = err.to_string();
        assert!(
            message.contains("locked by another process")
                && message.contains(&path.display().to_string()),
            "{message}"
        );
        // The held handle is unaffected.
        assert_eq!(held.size().unwrap(), 0);
    }

    #[test]
    fn a_reopen_after_drop_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        drop(SledStore::create(&path).unwrap());
        // sled releases its lock asynchronously; each reopen right after a drop must succeed
        // within the bounded wait, not fail as locked.
        for _ in 0..5 {
            let started = Instant::now();
            let s = SledStore::open(&path).unwrap();
            assert!(started.elapsed() < Duration::from_millis(LOCK_WAIT_MS_MAX));
            assert_eq!(s.size().unwrap(), 0);
            drop(s);
        }
    }
}
