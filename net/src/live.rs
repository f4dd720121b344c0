//! [`Live`]: read handles on what a running node holds, for its web server and metrics. A
//! running node holds its stores locked, so nothing may open them again; instead the shell
//! publishes, after every event that changed them, each log's verified head (size, root,
//! checkpoint note) with a clone of its store handle, and periodically its peers, status and
//! replication lag. Readers copy what they need out of a short read lock and read the stores
//! outside it; entries and stored hashes below a published size never change, so such reads
//! are consistent with the published head. The swarm task never waits for a reader.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use leam_ledger::account::{AccountError, LogView, Report};
use leam_ledger::entry::{Entry, PublicKey};
use leam_ledger::genesis::Genesis;
use leam_ledger::merkle::{self, Hash, HashReader as _};
use leam_ledger::store::{SledStore, Store as _};

use crate::core::Core;
use crate::shell::{PeerInfo, Status};

/// Most entries one [`Live::entries`] call reads.
pub const READ_ENTRIES_MAX: u64 = 4096;
/// Most stored hashes one [`Live::hashes`] call reads.
pub const READ_HASHES_MAX: usize = 65_536;

/// Why a read of a live log failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    /// The node holds no log with this key.
    #[error("no log with key {key} is held by this node")]
    UnknownLog {
        /// Log key, hex.
        key: String,
    },
    /// The request is outside the log or over a read limit.
    #[error("{0}")]
    Range(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// The accounting fold refused the logs.
    #[error("accounting: {0}")]
    Account(String),
}

/// One held log's verified head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// Owner key.
    pub key: PublicKey,
    /// Whether it is the node's own log.
    pub own: bool,
    /// Entries held (the checkpoint's size).
    pub size: u64,
    /// The checkpoint's root.
    pub root: Hash,
    /// The checkpoint note as stored, with any cosignatures (empty for an empty replica).
    pub checkpoint: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Held {
    head: LogHead,
    store: SledStore,
}

#[derive(Debug, Default)]
struct Snapshot {
    /// Own log first, then replicas by key.
    logs: Vec<Held>,
    peers: Vec<PeerInfo>,
    status: Option<Status>,
    /// Per replica: (size held, newest size known).
    lag: BTreeMap<PublicKey, (u64, u64)>,
}

/// Shared read handles of a running node; cheap to clone. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<RwLock<Snapshot>>);

impl Live {
    fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Publish the heads of `core`'s logs if any changed (a comparison of sizes and notes
    /// when none did). Called by the shell after every event and before acknowledging an
    /// append.
    pub(crate) fn refresh_logs(&self, core: &Core) {
        let own = core.log().reader().head();
        let unchanged = {
            let snap = self.read();
            snap.logs.len() == 1 + core.replicas().len()
                && snap.logs[0].head.size == own.size
                && snap.logs[0].head.checkpoint == own.note
                && snap.logs[1..]
                    .iter()
                    .zip(core.replicas())
                    .all(|(h, (k, r))| {
                        h.head.key == *k
                            && h.head.size == r.size()
                            && h.head.checkpoint == r.checkpoint()
                    })
        };
        if unchanged {
            return;
        }
        let mut logs = vec![Held {
            head: LogHead {
                key: core.key(),
                own: true,
                size: own.size,
                root: own.root,
                checkpoint: own.note.clone(),
            },
            store: core.log().reader().store().clone(),
        }];
        logs.extend(core.replicas().iter().map(|(k, r)| Held {
            head: LogHead {
                key: *k,
                own: false,
                size: r.size(),
                root: r.root(),
                checkpoint: r.checkpoint().to_vec(),
            },
            store: r.store().clone(),
        }));
        self.0.write().unwrap_or_else(|p| p.into_inner()).logs = logs;
    }

    /// Publish peers, status and replication lag (on the shell's tick and connection events).
    pub(crate) fn refresh_network(&self, peers: Vec<PeerInfo>, status: Status, core: &Core) {
        let lag = core
            .known_sizes()
            .into_iter()
            .map(|(k, known)| {
                let held = core.replicas().get(&k).map(|r| r.size()).unwrap_or(0);
                (k, (held, known))
            })
            .collect();
        let mut snap = self.0.write().unwrap_or_else(|p| p.into_inner());
        snap.peers = peers;
        snap.status = Some(status);
        snap.lag = lag;
    }

    /// Every held log's head, own first, then replicas by key.
    pub fn logs(&self) -> Vec<LogHead> {
        self.read().logs.iter().map(|h| h.head.clone()).collect()
    }

    fn held(&self, key: &PublicKey) -> Result<Held, LiveError> {
        self.read()
            .logs
            .iter()
            .find(|h| h.head.key == *key)
            .cloned()
            .ok_or_else(|| LiveError::UnknownLog {
                key: hex::encode(key),
            })
    }

    /// Encoded entries `start..end` of log `key` (at most [`READ_ENTRIES_MAX`], below its
    /// published size).
    pub fn entries(
        &self,
        key: &PublicKey,
        start: u64,
        end: u64,
    ) -> Result<Vec<Vec<u8>>, LiveError> {
        let h = self.held(key)?;
        if start > end || end > h.head.size {
            return Err(LiveError::Range(format!(
                "entries {start}..{end} are outside the log of size {}",
                h.head.size
            )));
        }
        if end - start > READ_ENTRIES_MAX {
            return Err(LiveError::Range(format!(
                "entries {start}..{end}: at most {READ_ENTRIES_MAX} entries are read at once"
            )));
        }
        h.store
            .entries(start, end)
            .map_err(|e| LiveError::Store(e.to_string()))
    }

    /// Stored hashes of log `key` by index (`merkle::stored_hash_index`), each below the
    /// stored-hash count of its published size, at most [`READ_HASHES_MAX`] at once.
    pub fn hashes(&self, key: &PublicKey, indexes: &[u64]) -> Result<Vec<Hash>, LiveError> {
        let h = self.held(key)?;
        if indexes.len() > READ_HASHES_MAX {
            return Err(LiveError::Range(format!(
                "{} stored hashes asked: at most {READ_HASHES_MAX} are read at once",
                indexes.len()
            )));
        }
        let count = merkle::stored_hash_count(h.head.size);
        if let Some(bad) = indexes.iter().find(|&&i| i >= count) {
            return Err(LiveError::Range(format!(
                "stored hash {bad} is beyond the {count} hashes of the log of size {}",
                h.head.size
            )));
        }
        h.store
            .read_hashes(indexes)
            .map_err(|e| LiveError::Store(e.to_string()))
    }

    /// Connected members (as of the last tick or connection event).
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.read().peers.clone()
    }

    /// The node's status (as of the last tick), `None` before the first.
    pub fn status(&self) -> Option<Status> {
        self.read().status.clone()
    }

    /// Per replica: (entries held, newest size known), as of the last tick.
    pub fn lag(&self) -> BTreeMap<PublicKey, (u64, u64)> {
        self.read().lag.clone()
    }

    /// The accounting report over the own log and every replica at their published sizes, as
    /// the audit computes it (`leam_ledger::audit::accounting`: members only with a genesis).
    /// Reads and decodes every entry: callers cache it per set of sizes.
    pub fn report(
        &self,
        genesis: Option<&Genesis>,
        check: &dyn leam_ledger::account::EvidenceCheck,
    ) -> Result<Report, LiveError> {
        let logs: Vec<Held> = self.read().logs.clone();
        let mut decoded: Vec<(PublicKey, Vec<Entry>)> = Vec::with_capacity(logs.len());
        for h in &logs {
            let mut entries = Vec::with_capacity(h.head.size as usize);
            let mut start = 0;
            while start < h.head.size {
                let end = (start + READ_ENTRIES_MAX).min(h.head.size);
                let raw = h
                    .store
                    .entries(start, end)
                    .map_err(|e| LiveError::Store(e.to_string()))?;
                for (i, b) in raw.iter().enumerate() {
                    entries.push(Entry::decode(b).map_err(|e| {
                        LiveError::Store(format!(
                            "log {} entry {}: {e}",
                            hex::encode(h.head.key),
                            start + i as u64
                        ))
                    })?);
                }
                start = end;
            }
            decoded.push((h.head.key, entries));
        }
        let views: Vec<LogView<'_>> = decoded
            .iter()
            .map(|(owner, entries)| LogView {
                owner: *owner,
                entries,
            })
            .collect();
        leam_ledger::audit::accounting(genesis, &views, check)
            .map_err(|e: AccountError| LiveError::Account(e.to_string()))
    }
}
