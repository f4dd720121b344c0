//! What the server needs from a node: a read-only [`View`] and a [`Submit`] channel for signed
//! entries. The node implements both on its own handles (a running node holds its store
//! locked, so web never opens it again); [`crate::dir::DirView`] implements [`View`] on copies.

use std::sync::Arc;

use futures::future::BoxFuture;
use leam_ledger::account::Report;
use leam_ledger::entry::{Entry, PublicKey};
use leam_ledger::genesis::Genesis;
use leam_ledger::merkle::{Hash, HashReader, MerkleError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::progress::JobProgress;

/// Why a view could not answer. The message names the log and what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// No log with this key is held.
    #[error("no log with key {key} is served here")]
    UnknownLog {
        /// Log key, hex.
        key: String,
    },
    /// The request is outside the log (entries or hashes beyond its size).
    #[error("{0}")]
    Range(String),
    /// The underlying store failed (an operating error, not the client's).
    #[error("store: {0}")]
    Store(String),
}

/// One log the node holds: its own or a replica of another member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogInfo {
    /// The log owner's key (also the checkpoint key).
    pub key: PublicKey,
    /// Entries in the log (the held checkpoint's size).
    pub size: u64,
    /// Root of the held checkpoint.
    pub root: Hash,
    /// The held checkpoint note exactly as stored, with any witness cosignatures.
    pub checkpoint: Vec<u8>,
    /// Whether this is the serving node's own log.
    pub own: bool,
}

/// A connected peer, as the node's network layer reports it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Peer {
    /// libp2p PeerId.
    pub peer_id: String,
    /// Ledger key, hex.
    pub member_key: String,
    /// Organisation.
    pub organisation: String,
    /// Sector.
    pub sector: String,
    /// Addresses: the connected endpoint first, then the listen addresses it announced.
    pub addresses: Vec<String>,
    /// Last ping round trip, milliseconds.
    pub rtt_ms: Option<f64>,
}

/// Read-only access to what a node holds. Every method is cheap enough to call per request
/// except where noted; all results reflect one consistent moment per call.
pub trait View: Send + Sync + 'static {
    /// The federation's genesis, when the node belongs to one (`None` for a standalone log or
    /// copies served without a genesis).
    fn genesis(&self) -> Option<Genesis>;
    /// The logs held, own first, then replicas by key.
    fn logs(&self) -> Vec<LogInfo>;
    /// Encoded entries `start..end` of log `key` (the exact Merkle leaf inputs).
    fn entries(&self, key: &PublicKey, start: u64, end: u64) -> Result<Vec<Vec<u8>>, ViewError>;
    /// Stored hashes of log `key` by index in the tlog storage layout
    /// (`specs/tlog.md` §1.1): every complete subtree's hash, as
    /// `merkle::stored_hash_index(level, n)` numbers them.
    fn hashes(&self, key: &PublicKey, indexes: &[u64]) -> Result<Vec<Hash>, ViewError>;
    /// Connected peers (empty when serving copies).
    fn peers(&self) -> Vec<Peer>;
    /// The accounting report over the verified logs of federation members, computed by the
    /// ledger's own fold (`leam_ledger::account::fold`, as `leam audit --json` reports it under
    /// `accounting`). May be expensive; the server caches it per set of log sizes.
    fn report(&self) -> Result<Report, ViewError>;
    /// The progress documents of the jobs this node ran or runs as a bidder
    /// (`DIR/jobs/<job id>.progress.json`, `specs/market.md` §8.2), read with
    /// [`crate::progress::read_progress`] and its bounds; malformed ones are left out. Reads
    /// files: the server calls it off the async workers. None by default (a view without a
    /// node directory).
    fn job_progress(&self) -> Vec<JobProgress> {
        Vec::new()
    }
    /// The content-addressed blob (a corpus or a training state) with this SHA-256, from the
    /// node directory's blob store, if held and at most [`BLOB_SERVE_BYTES_MAX`] bytes; the
    /// bytes must hash to `sha256`. Reads a file: the server calls it off the async workers.
    /// None by default. Auditors fetch a shard's inputs this way to re-check wrong-result
    /// evidence.
    fn blob(&self, sha256: &[u8; 32]) -> Option<Vec<u8>> {
        let _ = sha256;
        None
    }
}

/// Largest blob `GET /api/blobs/{sha256}` serves.
pub const BLOB_SERVE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Adapter: one log of a [`View`] as a `merkle::HashReader`, for proofs and tiles.
#[derive(Clone, Copy)]
pub(crate) struct LogHashes<'a> {
    pub view: &'a dyn View,
    pub key: PublicKey,
}

impl HashReader for LogHashes<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MerkleError> {
        self.view
            .hashes(&self.key, indexes)
            .map_err(|e| MerkleError::Storage(e.to_string()))
    }
}

/// The outcome of a submission the node accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Accepted {
    /// Log the entry was appended to, key hex.
    pub log: String,
    /// Index of the entry in that log.
    pub index: u64,
}

/// Hands a signed entry to the node. web checks the entry's encoding, kind, signature and
/// author membership before calling; the node applies its log rules (sequence, balances, …)
/// and appends, or refuses with a reason that is returned to the client as a 409.
pub trait Submit: Send + Sync + 'static {
    /// Submit one entry (decoded and verified) with its canonical bytes.
    fn submit(&self, entry: Entry, bytes: Vec<u8>) -> BoxFuture<'static, Result<Accepted, String>>;
}

/// Shared handle types.
pub type SharedView = Arc<dyn View>;
