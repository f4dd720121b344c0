//! [`DirView`]: serve copies of logs (node directories, replica directories, exported logs)
//! read-only, for `leam serve --dir DIR…`.
//!
//! Opening audits every directory first with the ledger's own audit
//! (`leam_ledger::audit::audit_dirs`, the code behind `leam audit`): a copy that does not
//! verify end to end is refused, and the report the server answers is the audit's accounting.
//! Only then are the stores opened for reading; they are held open (and locked) until the view
//! is dropped. The jobs' progress documents in `DIR/jobs/` of the given directories are read
//! on every request ([`crate::progress::read_progress`]). Never point it at the directory of a running node: the node holds its store
//! locked and opening fails with the store's "locked" error.

use std::path::{Path, PathBuf};

use leam_ledger::account::Report;
use leam_ledger::audit::{audit_dirs, AuditError, AuditOptions};
use leam_ledger::entry::PublicKey;
use leam_ledger::genesis::Genesis;
use leam_ledger::identity;
use leam_ledger::log::{LogError, LogReader, CHECKPOINT_FILE_NAME};
use leam_ledger::merkle::{self, Hash, HashReader};

use crate::progress::{read_progress, JobProgress};
use crate::view::{LogInfo, Peer, View, ViewError};
use crate::witness_vkey;

/// Sub-directory of a node directory holding verified replicas, one folder per log key hex
/// (`leam-net`'s layout; `specs/federation.md`).
pub const REPLICAS_DIR_NAME: &str = "replicas";
/// Most directories one view serves.
pub const DIRS_MAX: usize = 1024;

/// Why a set of directories cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// No directory, or more than [`DIRS_MAX`].
    #[error("expected 1..={DIRS_MAX} log directories, found {found}")]
    Count {
        /// Directories found (with replicas).
        found: usize,
    },
    /// The audit refused a directory: nothing is served.
    #[error("audit: {0}")]
    Audit(#[from] AuditError),
    /// A store could not be opened after the audit.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Copies of logs served read-only; see the module documentation.
#[derive(Debug)]
pub struct DirView {
    dirs: Vec<PathBuf>,
    readers: Vec<LogReader>,
    genesis: Option<Genesis>,
    report: Report,
}

/// The log key of a node or replica directory, from its checkpoint file's origin line.
fn dir_log_key(dir: &Path) -> Option<PublicKey> {
    let note = std::fs::read(dir.join(CHECKPOINT_FILE_NAME)).ok()?;
    let text = std::str::from_utf8(&note).ok()?;
    identity::key_of_origin(text.lines().next()?)
}

/// `dirs`, each followed by its replicas (`DIR/replicas/<64 hex>`) whose log is not given
/// itself, in name order.
pub fn with_replicas(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut seen: Vec<PublicKey> = dirs.iter().filter_map(|d| dir_log_key(d)).collect();
    let mut out = Vec::new();
    for d in dirs {
        out.push(d.clone());
        let Ok(read) = std::fs::read_dir(d.join(REPLICAS_DIR_NAME)) else {
            continue;
        };
        let mut replicas: Vec<PathBuf> = read
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            })
            .map(|e| e.path())
            .collect();
        replicas.sort();
        for r in replicas {
            if let Some(k) = dir_log_key(&r) {
                if !seen.contains(&k) {
                    seen.push(k);
                    out.push(r);
                }
            }
        }
    }
    out
}

impl DirView {
    /// Audit and open `dirs` and the replicas they hold ([`with_replicas`]). With a genesis,
    /// the members' witness cosignatures on every checkpoint must verify, and the report
    /// counts members only (as `leam audit --genesis`).
    ///
    /// `evidence` re-checks the evidence the ledger cannot check by itself (wrong-result
    /// evidence, by replay); without it only equivocation evidence counts.
    pub fn open(
        dirs: &[PathBuf],
        genesis: Option<Genesis>,
        evidence: Option<leam_ledger::audit::Checker>,
    ) -> Result<DirView, DirError> {
        let given = dirs.to_vec();
        let dirs = with_replicas(dirs);
        if dirs.is_empty() || dirs.len() > DIRS_MAX {
            return Err(DirError::Count { found: dirs.len() });
        }
        let witnesses = genesis
            .as_ref()
            .map(|g| {
                g.members
                    .iter()
                    .filter_map(|f| witness_vkey(&f.key))
                    .collect()
            })
            .unwrap_or_default();
        let options = AuditOptions {
            evidence,
            state: None,
            witnesses,
            genesis: genesis.clone(),
        };
        // The audit opens and closes every store; only afterwards are they opened for serving
        // (sled locks a store per open handle).
        let audit = audit_dirs(&dirs, &options)?;
        let readers = dirs
            .iter()
            .map(|d| LogReader::open(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DirView {
            dirs: given,
            readers,
            genesis,
            report: audit.accounting,
        })
    }

    fn reader(&self, key: &PublicKey) -> Result<&LogReader, ViewError> {
        self.readers
            .iter()
            .find(|r| r.key() == *key)
            .ok_or_else(|| ViewError::UnknownLog {
                key: hex::encode(key),
            })
    }
}

impl View for DirView {
    fn genesis(&self) -> Option<Genesis> {
        self.genesis.clone()
    }

    fn logs(&self) -> Vec<LogInfo> {
        let mut logs: Vec<LogInfo> = self
            .readers
            .iter()
            .map(|r| LogInfo {
                key: r.key(),
                size: r.head().size,
                root: r.head().root,
                checkpoint: r.head().note.clone(),
                own: false,
            })
            .collect();
        logs.sort_by_key(|l| l.key);
        logs
    }

    fn entries(&self, key: &PublicKey, start: u64, end: u64) -> Result<Vec<Vec<u8>>, ViewError> {
        let r = self.reader(key)?;
        r.entries(start, end).map_err(|e| match e {
            LogError::Batch { reason, .. } => ViewError::Range(reason),
            other => ViewError::Store(other.to_string()),
        })
    }

    fn hashes(&self, key: &PublicKey, indexes: &[u64]) -> Result<Vec<Hash>, ViewError> {
        let r = self.reader(key)?;
        let count = merkle::stored_hash_count(r.head().size);
        if let Some(bad) = indexes.iter().find(|&&i| i >= count) {
            return Err(ViewError::Range(format!(
                "stored hash {bad} is beyond the {count} hashes of the log of size {}",
                r.head().size
            )));
        }
        r.store()
            .read_hashes(indexes)
            .map_err(|e| ViewError::Store(e.to_string()))
    }

    fn peers(&self) -> Vec<Peer> {
        Vec::new()
    }

    fn report(&self) -> Result<Report, ViewError> {
        Ok(self.report.clone())
    }

    /// The progress documents in `DIR/jobs/` of the directories given to [`DirView::open`]
    /// (replicas hold other members' logs, never jobs).
    fn job_progress(&self) -> Vec<JobProgress> {
        read_progress(&self.dirs)
    }

    /// A blob from `DIR/blobs/` of the directories given to [`DirView::open`].
    fn blob(&self, sha256: &[u8; 32]) -> Option<Vec<u8>> {
        self.dirs
            .iter()
            .find_map(|d| read_blob(&d.join("blobs"), sha256))
    }
}

/// Read the blob `sha256` from a blob folder (`DIR/blobs/<hex>`, the layout of
/// `leam_jobs::blobs`, which web cannot depend on), checked against its name and
/// [`crate::view::BLOB_SERVE_BYTES_MAX`]; `None` when absent, too large or not matching.
fn read_blob(blobs_dir: &std::path::Path, sha256: &[u8; 32]) -> Option<Vec<u8>> {
    use sha2::Digest as _;
    let path = blobs_dir.join(hex::encode(sha256));
    if std::fs::metadata(&path).ok()?.len() > crate::view::BLOB_SERVE_BYTES_MAX {
        return None;
    }
    let bytes = std::fs::read(&path).ok()?;
    let got: [u8; 32] = sha2::Sha256::digest(&bytes).into();
    (&got == sha256).then_some(bytes)
}
