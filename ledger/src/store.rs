//! Storage of one log: entries, the Merkle tree's stored hashes, the latest checkpoint.
//!
//! [`Store`] is the small interface the log needs; [`SledStore`] implements it on sled. Another
//! embedded store can replace sled by implementing the trait: an append must be atomic (all of
//! the batch or none of it) and durable when the call returns.
//!
//! sled layout (one tree, `specs/ledger.md` "Store layout"): `e‖u64 BE first` → a segment of
//! entries `first ..` (each a u32 BE length and the entry bytes; at most
//! [`SEGMENT_ENTRIES_MAX`] entries and, unless it holds one, [`SEGMENT_BYTES_MAX`] bytes),
//! `h‖u64 BE block` → stored hashes `256·block ..` concatenated (32 bytes each, at most
//! [`HASHES_PER_BLOCK`], every block full but the last), `n` → tree size (u64 BE), `c` → latest
//! checkpoint note (with cosignatures), `v` → store format version (u8), and only while a
//! replica is verified in batches `p` → pending extent (u64 BE) ‖ the note it is a prefix of.

use std::path::{Path, PathBuf};

use crate::merkle::{self, Hash, HashReader, MerkleError};

/// Store format version written in key `v` (2: entries in segments and stored hashes in
/// blocks; 1 had one key per entry and per stored hash).
pub const STORE_FORMAT_VERSION: u8 = 2;
/// Most entries in one segment (one value under an `e` key). An append stores its entries in
/// segments that it never rewrites: one key per entry made sled's insert (about 4 µs a key) the
/// largest cost of a batch append or a replica's extension.
pub const SEGMENT_ENTRIES_MAX: usize = 256;
/// Most bytes of a segment that holds more than one entry, so that a value stays small next to
/// sled's cache ([`STORE_CACHE_BYTES`]).
pub const SEGMENT_BYTES_MAX: usize = 1024 * 1024;
/// Stored hashes per value of a `h` key. One key per hash made sled's insert the largest cost
/// of an append or a replica's extension (3 of every 4 keys written); a block of 256 (8 KiB,
/// the size of a tlog tile) cuts the hash keys 256-fold while an append rewrites at most one
/// partial block.
pub const HASHES_PER_BLOCK: u64 = 256;
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

/// A segment's first index and its entries, copied out of the store.
type OwnedSegment = (u64, Vec<Vec<u8>>);

/// The index a key made by [`key`] names (every `e` and `h` key has 9 bytes).
fn index_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(k[1..].try_into().expect("9-byte keys"))
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
        for (first, segment) in segments(b.first_index, b.entries) {
            batch.insert(&key(KEY_ENTRY, first), segment);
        }
        self.hash_blocks(b.first_hash_index, b.hashes, &mut batch)?;
        Ok(batch)
    }

    /// Add to `batch` the hash blocks that appending stored hashes `hashes` at stored-hash
    /// index `first` gives: the partial last block (if `first` is inside one) completed, then
    /// new blocks.
    fn hash_blocks(
        &self,
        first: u64,
        hashes: &[Hash],
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let mut block = first / HASHES_PER_BLOCK;
        let held = (first % HASHES_PER_BLOCK) as usize;
        let mut value: Vec<u8> = Vec::with_capacity(HASHES_PER_BLOCK as usize * 32);
        if held > 0 {
            let old = self
                .db
                .get(key(KEY_HASH, block))
                .map_err(|e| self.backend(e))?
                .ok_or_else(|| StoreError::Missing {
                    path: self.path.clone(),
                    what: format!("stored-hash block {block}"),
                    size: first,
                })?;
            if old.len() != held * 32 {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("stored-hash block {block}"),
                    reason: format!(
                        "expected {} bytes ({held} hashes), found {}",
                        held * 32,
                        old.len()
                    ),
                });
            }
            value.extend_from_slice(&old);
        }
        for h in hashes {
            value.extend_from_slice(h);
            if value.len() == HASHES_PER_BLOCK as usize * 32 {
                batch.insert(&key(KEY_HASH, block), std::mem::take(&mut value));
                value.reserve(HASHES_PER_BLOCK as usize * 32);
                block += 1;
            }
        }
        if !value.is_empty() {
            batch.insert(&key(KEY_HASH, block), value);
        }
        Ok(())
    }

    /// The segment with the largest first index at most `index`, if any.
    fn segment_at_or_before(&self, index: u64) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        match self
            .db
            .range(key(KEY_ENTRY, 0)..=key(KEY_ENTRY, index))
            .next_back()
        {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| self.backend(e))?;
                let first = index_of(&k);
                Ok(Some((first, v)))
            }
        }
    }

    /// The entries of the segment stored at `first`.
    fn parse_segment<'v>(&self, first: u64, v: &'v [u8]) -> Result<Vec<&'v [u8]>, StoreError> {
        parse_segment(v).map_err(|reason| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("entry segment at {first}"),
            reason,
        })
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

    /// Replace the bytes of stored entry `index` (for tests that corrupt it), or store it alone
    /// if no segment holds it (to restore one removed by [`SledStore::raw_remove_entry`]).
    #[doc(hidden)]
    pub fn raw_replace_entry(&self, index: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let (first, mut entries) = self.raw_segment_of(index)?.unwrap_or((index, vec![]));
        let at = (index - first) as usize;
        if at < entries.len() {
            entries[at] = bytes.to_vec();
        } else {
            entries = vec![bytes.to_vec()];
        }
        let (_, value) = segments(first, &entries)
            .next()
            .expect("a segment holds a test's entries");
        self.raw_insert(&key(KEY_ENTRY, first), &value)
    }

    /// Remove stored entry `index`, keeping the entries around it (for tests of lost values).
    #[doc(hidden)]
    pub fn raw_remove_entry(&self, index: u64) -> Result<(), StoreError> {
        let Some((first, entries)) = self.raw_segment_of(index)? else {
            return Ok(());
        };
        let at = (index - first) as usize;
        self.raw_remove(&key(KEY_ENTRY, first))?;
        for (f, part) in [(first, &entries[..at]), (index + 1, &entries[at + 1..])] {
            for (f, value) in segments(f, part) {
                self.raw_insert(&key(KEY_ENTRY, f), &value)?;
            }
        }
        Ok(())
    }

    /// The segment holding `index`: its first index and its entries.
    fn raw_segment_of(&self, index: u64) -> Result<Option<OwnedSegment>, StoreError> {
        let Some((first, v)) = self.segment_at_or_before(index)? else {
            return Ok(None);
        };
        let entries: Vec<Vec<u8>> = self
            .parse_segment(first, &v)?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        Ok((first + entries.len() as u64 > index).then_some((first, entries)))
    }

    /// Key of the block that holds stored hashes `256·block ..` (for tests that corrupt one).
    #[doc(hidden)]
    pub fn hash_block_key(block: u64) -> [u8; 9] {
        key(KEY_HASH, block)
    }
}

impl HashReader for SledStore {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MerkleError> {
        let storage =
            |what: String| MerkleError::Storage(format!("{}: {what}", self.path.display()));
        // Callers ask for hashes in runs (a proof's or a tile's): keep the block last read.
        let mut held: Option<(u64, sled::IVec)> = None;
        indexes
            .iter()
            .map(|&i| {
                let block = i / HASHES_PER_BLOCK;
                if held.as_ref().map(|(b, _)| *b) != Some(block) {
                    let v = self
                        .db
                        .get(key(KEY_HASH, block))
                        .map_err(|e| storage(e.to_string()))?
                        .ok_or_else(|| storage(format!("stored hash {i} is missing (no block {block})")))?;
                    if v.len() % 32 != 0 || v.len() > HASHES_PER_BLOCK as usize * 32 {
                        return Err(storage(format!(
                            "stored-hash block {block} is {} bytes, expected a multiple of 32 up to {}",
                            v.len(),
                            HASHES_PER_BLOCK * 32
                        )));
                    }
                    held = Some((block, v));
                }
                let (_, v) = held.as_ref().expect("set above");
                let at = (i % HASHES_PER_BLOCK) as usize * 32;
                v.get(at..at + 32)
                    .map(|h| <Hash>::try_from(h).expect("32 bytes"))
                    .ok_or_else(|| {
                        storage(format!(
                            "stored hash {i} is missing (block {block} holds {})",
                            v.len() / 32
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
        // The segment that holds `start` begins at or before it.
        let from = match self.segment_at_or_before(start)? {
            Some((first, _)) => first,
            None => start,
        };
        for item in self.db.range(key(KEY_ENTRY, from)..key(KEY_ENTRY, end)) {
            let (k, v) = item.map_err(|e| self.backend(e))?;
            let first = index_of(&k);
            let expected = start + out.len() as u64;
            if first > expected {
                break;
            }
            let parsed = self.parse_segment(first, &v)?;
            let skip = (expected - first) as usize;
            if skip > parsed.len() {
                break;
            }
            let want = (end - expected) as usize;
            out.extend(parsed.into_iter().skip(skip).take(want).map(<[u8]>::to_vec));
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
        Ok(match self.segment_at_or_before(index)? {
            Some((first, v)) => first + self.parse_segment(first, &v)?.len() as u64 > index,
            None => false,
        })
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

/// `entries` (the first at index `first`) cut into segments: each a first index and the
/// value stored under its `e` key (`specs/ledger.md` §4).
pub fn segments(first: u64, entries: &[Vec<u8>]) -> impl Iterator<Item = (u64, Vec<u8>)> + '_ {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at == entries.len() {
            return None;
        }
        let start = at;
        let mut value = Vec::new();
        while at < entries.len() && at - start < SEGMENT_ENTRIES_MAX {
            let e = &entries[at];
            if at > start && value.len() + 4 + e.len() > SEGMENT_BYTES_MAX {
                break;
            }
            let len = u32::try_from(e.len()).expect("entries are at most ENTRY_BYTES_MAX");
            value.extend_from_slice(&len.to_be_bytes());
            value.extend_from_slice(e);
            at += 1;
        }
        Some((first + start as u64, value))
    })
}

/// The entries of a segment's value, or what is wrong with it: each is a u32 BE length from 1
/// to `ENTRY_BYTES_MAX` and that many bytes, and there are 1 to [`SEGMENT_ENTRIES_MAX`].
pub fn parse_segment(mut v: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    while !v.is_empty() {
        let i = out.len();
        if i == SEGMENT_ENTRIES_MAX {
            return Err(format!(
                "more than SEGMENT_ENTRIES_MAX = {SEGMENT_ENTRIES_MAX} entries"
            ));
        }
        let (len, rest) = v.split_first_chunk::<4>().ok_or_else(|| {
            format!(
                "entry {i}: {} bytes left, expected a 4-byte length",
                v.len()
            )
        })?;
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 || len > crate::entry::ENTRY_BYTES_MAX || len > rest.len() {
            return Err(format!(
                "entry {i}: length {len}, expected 1 to {} and at most the {} bytes left",
                crate::entry::ENTRY_BYTES_MAX,
                rest.len()
            ));
        }
        let (e, rest) = rest.split_at(len);
        out.push(e);
        v = rest;
    }
    if out.is_empty() {
        return Err("empty, expected at least one entry".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    proptest! {
        #[test]
        fn segments_parse_back_to_their_entries(
            sizes in proptest::collection::vec(1usize..3000, 0..700),
            first in 0u64..1 << 40,
        ) {
            let entries: Vec<Vec<u8>> =
                sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
            let mut next = first;
            let mut back = Vec::new();
            for (f, value) in segments(first, &entries) {
                prop_assert_eq!(f, next);
                let parsed = parse_segment(&value).unwrap();
                prop_assert!(parsed.len() <= SEGMENT_ENTRIES_MAX);
                prop_assert!(parsed.len() == 1 || value.len() <= SEGMENT_BYTES_MAX);
                next += parsed.len() as u64;
                back.extend(parsed.into_iter().map(<[u8]>::to_vec));
            }
            prop_assert_eq!(back, entries);
        }

        #[test]
        fn any_bytes_parse_or_name_the_fault(v in proptest::collection::vec(any::<u8>(), 0..600)) {
            match parse_segment(&v) {
                Ok(parsed) => {
                    let again: Vec<u8> = segments(0, &parsed.iter().map(|e| e.to_vec()).collect::<Vec<_>>())
                        .flat_map(|(_, v)| v)
                        .collect();
                    prop_assert_eq!(again, v);
                }
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }
    }

    #[test]
    fn a_segment_names_its_fault() {
        assert_eq!(
            parse_segment(&[]).unwrap_err(),
            "empty, expected at least one entry"
        );
        assert_eq!(
            parse_segment(&[0, 0, 0, 5, 1, 2]).unwrap_err(),
            "entry 0: length 5, expected 1 to 65536 and at most the 2 bytes left"
        );
        assert_eq!(
            parse_segment(&[0, 0, 0, 1, 7, 0, 0]).unwrap_err(),
            "entry 1: 2 bytes left, expected a 4-byte length"
        );
    }

    #[test]
    fn a_batch_append_writes_few_keys_and_reads_back_any_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::create(&dir.path().join("store")).unwrap();
        let entries: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().repeat(30)).collect();
        let hashes: Vec<Hash> = (0..merkle::stored_hash_count(1000))
            .map(|i| [i as u8; 32])
            .collect();
        store
            .append(Batch {
                first_index: 0,
                entries: &entries,
                first_hash_index: 0,
                hashes: &hashes,
                checkpoint: b"note",
            })
            .unwrap();
        let keys = |p: u8| store.db.scan_prefix([p]).count();
        assert_eq!(keys(KEY_ENTRY), 4, "1000 entries in segments of 256");
        assert_eq!(keys(KEY_HASH), 8, "1994 stored hashes in blocks of 256");
        for (a, b) in [(0, 1000), (255, 257), (256, 512), (999, 1000), (10, 11)] {
            assert_eq!(
                store.entries(a, b).unwrap(),
                entries[a as usize..b as usize]
            );
        }
        assert!(store.has_entry(999).unwrap());
        assert!(!store.has_entry(1000).unwrap());
        let idx: Vec<u64> = vec![0, 255, 256, 1993, 7];
        let read = store.read_hashes(&idx).unwrap();
        assert_eq!(read, idx.iter().map(|&i| [i as u8; 32]).collect::<Vec<_>>());
        assert!(store.read_hashes(&[1994]).is_err());
        // One entry removed: ranges over it name it as missing.
        store.raw_remove_entry(300).unwrap();
        let err = store.entries(290, 310).unwrap_err();
        assert!(
            matches!(&err, StoreError::Missing { what, .. } if what == "entry 300"),
            "{err}"
        );
        store.raw_replace_entry(300, &entries[300]).unwrap();
        assert_eq!(store.entries(0, 1000).unwrap(), entries);
    }

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
