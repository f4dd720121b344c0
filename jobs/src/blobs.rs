//! Content-addressed blobs (corpora, training states) in a node directory: `DIR/blobs/<sha256
//! hex>`, written to a temporary file and renamed, so a reader never sees half a blob and a
//! crash leaves at most a stray temporary file. Every blob read back is checked against its
//! name before it is served or used.

use std::path::{Path, PathBuf};

use leam_ledger::entry::Digest32;
use sha2::{Digest as _, Sha256};

/// Folder of the blobs in a node directory.
pub const BLOBS_DIR_NAME: &str = "blobs";
/// Largest blob a node stores or fetches (a corpus or a training state).
pub const BLOB_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Over [`BLOB_BYTES_MAX`].
    #[error("blob of {found} bytes, more than BLOB_BYTES_MAX = {BLOB_BYTES_MAX}")]
    TooLarge {
        /// Size found.
        found: u64,
    },
    /// The bytes do not hash to the name they were asked or stored under.
    #[error("blob {expected}: the bytes hash to {found}")]
    Hash {
        /// Hash expected (hex).
        expected: String,
        /// Hash of the bytes (hex).
        found: String,
    },
}

/// The blob store of one node directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// The store under `node_dir` (created on first write).
    pub fn new(node_dir: &Path) -> Self {
        Self {
            dir: node_dir.join(BLOBS_DIR_NAME),
        }
    }

    fn path(&self, hash: &Digest32) -> PathBuf {
        self.dir.join(hex::encode(hash))
    }

    /// Whether the blob is stored.
    pub fn has(&self, hash: &Digest32) -> bool {
        self.path(hash).is_file()
    }

    /// Store `bytes` under their SHA-256 and return it.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest32, BlobError> {
        if bytes.len() as u64 > BLOB_BYTES_MAX {
            return Err(BlobError::TooLarge {
                found: bytes.len() as u64,
            });
        }
        let hash: Digest32 = Sha256::digest(bytes).into();
        let path = self.path(&hash);
        if path.is_file() {
            return Ok(hash);
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BlobError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        // A name of its own per writer: two runs may fetch the same start state at once.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".{}.{}.{n}.tmp",
            hex::encode(hash),
            std::process::id()
        ));
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(hash)
    }

    /// The blob, checked against its hash; `None` when it is not stored.
    pub fn get(&self, hash: &Digest32) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(hash);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(BlobError::Io { path, source }),
        };
        check(hash, &bytes)?;
        Ok(Some(bytes))
    }

    /// Bytes `offset..offset + len` of a stored blob and its total size; `None` when it is not
    /// stored. Only what a chunk needs is read, but the whole blob is hashed once per
    /// request for the first chunk, so a corrupted file is never served.
    pub fn chunk(
        &self,
        hash: &Digest32,
        offset: u64,
        len: usize,
    ) -> Result<Option<(u64, Vec<u8>)>, BlobError> {
        let Some(bytes) = self.get(hash)? else {
            return Ok(None);
        };
        let total = bytes.len() as u64;
        let from = offset.min(total) as usize;
        let to = (from + len).min(bytes.len());
        Ok(Some((total, bytes[from..to].to_vec())))
    }
}

/// Check that `bytes` hash to `hash`.
pub fn check(hash: &Digest32, bytes: &[u8]) -> Result<(), BlobError> {
    let found: Digest32 = Sha256::digest(bytes).into();
    if &found != hash {
        return Err(BlobError::Hash {
            expected: hex::encode(hash),
            found: hex::encode(found),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_puts_of_one_blob_all_succeed() {
        // Two runs fetching the same start state store it at the same moment.
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::new(dir.path());
        let data = vec![7u8; 300_000];
        let hashes: Vec<Digest32> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| b.put(&data).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(hashes.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(b.get(&hashes[0]).unwrap().unwrap(), data);
    }

    #[test]
    fn put_get_chunk_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let b = Blobs::new(dir.path());
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let h = b.put(&data).unwrap();
        assert!(b.has(&h));
        assert_eq!(b.get(&h).unwrap().unwrap(), data);
        let (total, c) = b.chunk(&h, 4000, 2000).unwrap().unwrap();
        assert_eq!(total, 5000);
        assert_eq!(c, &data[4000..]);
        assert_eq!(b.get(&[0; 32]).unwrap(), None);
        // A corrupted file is refused, never served.
        std::fs::write(dir.path().join(BLOBS_DIR_NAME).join(hex::encode(h)), b"x").unwrap();
        assert!(matches!(b.get(&h), Err(BlobError::Hash { .. })));
        assert!(b.chunk(&h, 0, 10).is_err());
    }
}
