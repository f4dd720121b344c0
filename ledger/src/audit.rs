//! Audit: verify node logs end to end and fold them into the accounting report.
//!
//! For each log directory (`specs/ledger.md`, "Audit procedure"):
//!
//! 1. open it read-only-in-spirit with [`LogReader::open`] (checkpoint signature by the key its
//!    origin names, tail re-verification, store against `DIR/checkpoint`);
//! 2. read every entry; decode it; check author and index; batch-verify every author signature
//!    and co-signature with `ed25519_dalek::verify_batch`, chunks in parallel (rayon); on a failed
//!    batch, find the failing entry with single verification so the error names it;
//! 3. recompute the Merkle root from the entries' leaf hashes and compare with the checkpoint;
//! 4. apply the log rules ([`LogState`]) to every entry;
//! 5. verify the checkpoint's cosignatures from the witnesses the auditor trusts;
//! 6. check consistency with the checkpoint this auditor saw for the log in an earlier run
//!    (the auditor's state file), with a consistency proof from the audited store;
//!
//! then fold all logs ([`account::fold`]) and, only when everything verified, record the
//! checkpoints in the state file (written atomically).
//!
//! With a federation genesis ([`AuditOptions::genesis`]), membership is computed with
//! [`genesis::members`] over the admissions of all audited logs, and only the logs of members
//! are folded; the others are verified all the same and listed as [`Outsider`]s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::account::{self, AccountError, EvidenceCheck, LogState, LogView, Report, RuleError};
use crate::checkpoint;
use crate::entry::{self, DecodeError, Entry, PublicKey, VerifyError};
use crate::evidence::Equivocation;
use crate::genesis::{self, Genesis};
use crate::log::{LogError, LogReader};
use crate::merkle::{self, Hash};
use crate::note::{Note, Verifier};
use crate::store::READ_CHUNK_ENTRIES;

/// Auditor state file format version.
pub const STATE_VERSION: u32 = 1;
/// Largest auditor state file read, bytes.
pub const STATE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Why an audit failed. Every variant names the log and, where it applies, the entry.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log could not be opened or its tail does not verify.
    #[error(transparent)]
    Log(#[from] LogError),
    /// An entry does not decode.
    #[error("log {dir}: entry {index}: {source}")]
    Decode {
        /// Log directory.
        dir: PathBuf,
        /// Entry index.
        index: u64,
        /// Cause.
        source: DecodeError,
    },
    /// An entry's author or index is wrong for its position.
    #[error("log {dir}: entry {index}: {reason}")]
    Misplaced {
        /// Log directory.
        dir: PathBuf,
        /// Entry index.
        index: u64,
        /// Expected and found.
        reason: String,
    },
    /// A signature or co-signature does not verify.
    #[error("log {dir}: entry {index}: {source}")]
    Signature {
        /// Log directory.
        dir: PathBuf,
        /// Entry index.
        index: u64,
        /// Cause.
        source: VerifyError,
    },
    /// The root recomputed from the entries differs from the checkpoint.
    #[error("log {dir}: the root recomputed from its {size} entries is {computed}, the checkpoint says {expected}")]
    RootMismatch {
        /// Log directory.
        dir: PathBuf,
        /// Tree size.
        size: u64,
        /// Recomputed root (hex).
        computed: String,
        /// Checkpoint root (hex).
        expected: String,
    },
    /// An entry breaks the log rules.
    #[error("log {dir}: {source}")]
    Rule {
        /// Log directory.
        dir: PathBuf,
        /// Cause (names the entry).
        source: RuleError,
    },
    /// A cosignature from a trusted witness does not verify.
    #[error("log {dir}: cosignature: {reason}")]
    Cosignature {
        /// Log directory.
        dir: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The log is not consistent with the checkpoint seen in an earlier audit.
    #[error("log {dir} ({origin}): not consistent with the checkpoint of size {old_size} seen earlier: {reason}")]
    Inconsistent {
        /// Log directory.
        dir: PathBuf,
        /// Log origin.
        origin: String,
        /// Size of the earlier checkpoint.
        old_size: u64,
        /// What failed.
        reason: String,
        /// Portable evidence: the earlier and the current checkpoint notes and the proof
        /// the store served.
        evidence: Box<Equivocation>,
    },
    /// Two directories hold the same log.
    #[error("logs {first} and {second} belong to the same key {key}")]
    DuplicateLog {
        /// First directory.
        first: PathBuf,
        /// Second directory.
        second: PathBuf,
        /// Key hex.
        key: String,
    },
    /// The accounting fold failed.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The auditor state file could not be read or written.
    #[error("auditor state {path}: {reason}")]
    State {
        /// State file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the auditor remembers about one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenCheckpoint {
    /// Tree size.
    pub size: u64,
    /// Root hash, hex.
    pub root: String,
    /// The checkpoint note as it was verified.
    pub checkpoint: String,
}

/// The auditor state file (JSON): the latest checkpoint verified per log origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditorState {
    /// Format version, [`STATE_VERSION`].
    pub version: u32,
    /// Per log origin.
    pub logs: BTreeMap<String, SeenCheckpoint>,
}

impl AuditorState {
    /// Load the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<AuditorState, AuditError> {
        let err = |reason: String| AuditError::State {
            path: path.to_owned(),
            reason,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AuditorState {
                    version: STATE_VERSION,
                    logs: BTreeMap::new(),
                })
            }
            Err(e) => return Err(err(e.to_string())),
        };
        if meta.len() > STATE_BYTES_MAX {
            return Err(err(format!(
                "{} bytes, more than STATE_BYTES_MAX = {STATE_BYTES_MAX}",
                meta.len()
            )));
        }
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let state: AuditorState =
            serde_json::from_slice(&text).map_err(|e| err(format!("not valid state JSON: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(err(format!(
                "version {}, expected {STATE_VERSION}",
                state.version
            )));
        }
        Ok(state)
    }

    /// Write the state file atomically (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path) -> Result<(), AuditError> {
        use std::io::Write as _;
        let err = |e: std::io::Error| AuditError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let json = serde_json::to_vec_pretty(self).expect("the state serialises");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.write_all(b"\n").map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

/// Options of an audit.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    /// Checks the evidence the ledger cannot check by itself (wrong-result evidence needs a
    /// shard replay); `None` counts only equivocation evidence
    /// ([`account::LedgerOnly`]).
    pub evidence: Option<Checker>,
    /// Auditor state file; `None` skips the check against earlier runs.
    pub state: Option<PathBuf>,
    /// Verifier keys (C2SP form) of witnesses whose cosignatures must verify when present.
    pub witnesses: Vec<String>,
    /// The federation's genesis: when set, only logs of federation members
    /// ([`genesis::members`] over the admissions of all audited logs) are folded into the
    /// accounting; the others are reported as [`AuditReport::outsiders`].
    pub genesis: Option<Genesis>,
}

/// A shared [`EvidenceCheck`] (its own type so that the options stay `Debug` and `Clone`).
#[derive(Clone)]
pub struct Checker(pub std::sync::Arc<dyn EvidenceCheck>);

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checker(..)")
    }
}

/// The audit result of one log.
#[derive(Debug, Clone, Serialize)]
pub struct LogAudit {
    /// Directory.
    pub dir: PathBuf,
    /// Log origin.
    pub origin: String,
    /// Verifier key.
    pub verifier_key: String,
    /// Entries verified (= checkpoint size).
    pub size: u64,
    /// Root, hex.
    pub root: String,
    /// Signatures verified (authors and co-signers).
    pub signatures_verified: u64,
    /// Names of trusted witnesses whose cosignatures verified.
    pub cosigned_by: Vec<String>,
    /// Size of the earlier checkpoint this one was proven consistent with.
    pub consistent_with_size: Option<u64>,
}

/// A verified log left out of the accounting because its owner is not a federation member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outsider {
    /// Owner key, hex.
    pub key: String,
    /// Log directory.
    pub dir: PathBuf,
    /// Entries in the log (all verified).
    pub entries: u64,
    /// Why it is not a member.
    pub reason: String,
}

/// The audit result.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// Per folded log (with a genesis: the members' logs).
    pub logs: Vec<LogAudit>,
    /// Accounting over the folded logs.
    pub accounting: Report,
    /// Logs verified but not folded because their owner is not a member of the federation
    /// ([`AuditOptions::genesis`]); always empty without a genesis (and then not serialised).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outsiders: Vec<Outsider>,
}

struct Verified {
    audit: LogAudit,
    checkpoint: String,
    owner: PublicKey,
    entries: Vec<Entry>,
}

/// Audit log directories (see the module documentation). Returns the report only if every
/// check passed; the state file is updated only then.
pub fn audit_dirs(dirs: &[PathBuf], options: &AuditOptions) -> Result<AuditReport, AuditError> {
    let mut state = match &options.state {
        Some(p) => Some(AuditorState::load(p)?),
        None => None,
    };
    let mut verified: Vec<Verified> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        let v = audit_log(dir, options, state.as_ref())?;
        if let Some(prev) = verified.iter().find(|x| x.owner == v.owner) {
            return Err(AuditError::DuplicateLog {
                first: prev.audit.dir.clone(),
                second: dir.clone(),
                key: hex::encode(v.owner),
            });
        }
        verified.push(v);
    }
    let mut outsiders = Vec::new();
    let mut folded: Vec<&Verified> = verified.iter().collect();
    if let Some(g) = &options.genesis {
        let all = || verified.iter().flat_map(|v| v.entries.iter());
        let members = genesis::members(g, all());
        folded.retain(|v| members.contains_key(&v.owner));
        for v in verified.iter().filter(|v| !members.contains_key(&v.owner)) {
            let votes = genesis::voters(&members, &v.owner, all()).len();
            outsiders.push(Outsider {
                key: hex::encode(v.owner),
                dir: v.audit.dir.clone(),
                entries: v.audit.size,
                reason: format!(
                    "not a founder of federation {}, and admitted by {votes} of the {} members needed",
                    hex::encode(g.id()),
                    g.threshold
                ),
            });
        }
    }
    let views: Vec<LogView<'_>> = folded
        .iter()
        .map(|v| LogView {
            owner: v.owner,
            entries: &v.entries,
        })
        .collect();
    let check: &dyn EvidenceCheck = match &options.evidence {
        Some(c) => c.0.as_ref(),
        None => &account::LedgerOnly,
    };
    let accounting = accounting(options.genesis.as_ref(), &views, check)?;
    if let (Some(path), Some(state)) = (&options.state, state.as_mut()) {
        for v in &verified {
            state.logs.insert(
                v.audit.origin.clone(),
                SeenCheckpoint {
                    size: v.audit.size,
                    root: v.audit.root.clone(),
                    checkpoint: v.checkpoint.clone(),
                },
            );
        }
        state.save(path)?;
    }
    let logs = folded.iter().map(|v| v.audit.clone()).collect();
    Ok(AuditReport {
        logs,
        accounting,
        outsiders,
    })
}

/// The accounting of verified logs as the audit reports it: with a genesis, only the logs of
/// federation members (`genesis::members` over every admission in `logs`) are folded; without,
/// every log. Shared by [`audit_dirs`] and a running node's report over its own log and
/// replicas, so both count alike.
pub fn accounting(
    genesis: Option<&Genesis>,
    logs: &[LogView<'_>],
    check: &dyn EvidenceCheck,
) -> Result<Report, AccountError> {
    match genesis {
        None => account::fold_with(logs, check),
        Some(g) => {
            let members = genesis::members(g, logs.iter().flat_map(|l| l.entries.iter()));
            let folded: Vec<LogView<'_>> = logs
                .iter()
                .filter(|l| members.contains_key(&l.owner))
                .copied()
                .collect();
            account::fold_with(&folded, check)
        }
    }
}

/// One chunk's result: decoded entries, leaf hashes, signature count.
type ChunkOut = (Vec<Entry>, Vec<Hash>, u64);

/// Decode and verify the entries `first..first+chunk.len()` of the log owned by `owner`:
/// decoding, author and index, leaf hashes and batch signature verification, in parallel.
pub fn verify_chunk(
    dir: &Path,
    owner: &PublicKey,
    first: u64,
    chunk: &[Vec<u8>],
) -> Result<ChunkOut, AuditError> {
    let step = entry::VERIFY_BATCH_SIGNATURES / 2;
    let parts: Vec<ChunkOut> = chunk
        .par_chunks(step)
        .enumerate()
        .map(|(k, sub)| verify_sub_chunk(dir, owner, first + (k * step) as u64, sub))
        .collect::<Result<_, _>>()?;
    let mut out = (
        Vec::with_capacity(chunk.len()),
        Vec::with_capacity(chunk.len()),
        0,
    );
    for (e, l, n) in parts {
        out.0.extend(e);
        out.1.extend(l);
        out.2 += n;
    }
    Ok(out)
}

fn verify_sub_chunk(
    dir: &Path,
    owner: &PublicKey,
    base: u64,
    sub: &[Vec<u8>],
) -> Result<ChunkOut, AuditError> {
    let mut entries = Vec::with_capacity(sub.len());
    let mut leaves = Vec::with_capacity(sub.len());
    let mut signatures = 0u64;
    for (i, bytes) in sub.iter().enumerate() {
        let index = base + i as u64;
        let e = Entry::decode(bytes).map_err(|source| AuditError::Decode {
            dir: dir.to_owned(),
            index,
            source,
        })?;
        if e.author != *owner || e.seq != index {
            return Err(AuditError::Misplaced {
                dir: dir.to_owned(),
                index,
                reason: format!(
                    "author {} seq {}, expected author {} seq {index}",
                    hex::encode(e.author),
                    e.seq,
                    hex::encode(owner)
                ),
            });
        }
        signatures += 1 + u64::from(e.body.cosigned().is_some());
        leaves.push(merkle::leaf_hash(bytes));
        entries.push(e);
    }
    entry::verify_many(&entries, sub).map_err(|(i, source)| AuditError::Signature {
        dir: dir.to_owned(),
        index: base + i as u64,
        source,
    })?;
    Ok((entries, leaves, signatures))
}

fn audit_log(
    dir: &Path,
    options: &AuditOptions,
    state: Option<&AuditorState>,
) -> Result<Verified, AuditError> {
    let reader = LogReader::open(dir)?;
    let owner = reader.key();
    let head = reader.head().clone();
    let origin = crate::identity::origin_of(&owner);
    let mut entries: Vec<Entry> = Vec::with_capacity(head.size as usize);
    let mut leaves: Vec<Hash> = Vec::with_capacity(head.size as usize);
    let mut signatures_verified = 0;
    let mut rules = LogState::new(owner);
    let mut start = 0;
    while start < head.size {
        let end = (start + READ_CHUNK_ENTRIES).min(head.size);
        let chunk = reader.entries(start, end)?;
        let (es, ls, n) = verify_chunk(dir, &owner, start, &chunk)?;
        rules.apply_all(&es).map_err(|source| AuditError::Rule {
            dir: dir.to_owned(),
            source,
        })?;
        entries.extend(es);
        leaves.extend(ls);
        signatures_verified += n;
        start = end;
    }
    let root = merkle::root_of(&leaves);
    if root != head.root {
        return Err(AuditError::RootMismatch {
            dir: dir.to_owned(),
            size: head.size,
            computed: hex::encode(root),
            expected: hex::encode(head.root),
        });
    }
    let note = String::from_utf8(head.note.clone()).expect("a verified checkpoint is UTF-8");
    let cosigned_by = verify_cosignatures(dir, &note, &options.witnesses)?;
    let mut consistent_with_size = None;
    if let Some(seen) = state.and_then(|s| s.logs.get(&origin)) {
        check_consistency(dir, &origin, &reader, &leaves, seen, &note)?;
        consistent_with_size = Some(seen.size);
    }
    Ok(Verified {
        audit: LogAudit {
            dir: dir.to_owned(),
            origin,
            verifier_key: reader.verifier_key(),
            size: head.size,
            root: hex::encode(head.root),
            signatures_verified,
            cosigned_by,
            consistent_with_size,
        },
        checkpoint: note,
        owner,
        entries,
    })
}

fn check_consistency(
    dir: &Path,
    origin: &str,
    reader: &LogReader,
    leaves: &[Hash],
    seen: &SeenCheckpoint,
    note: &str,
) -> Result<(), AuditError> {
    let size = leaves.len() as u64;
    let fail_with = |reason: String, proof: Vec<Hash>| AuditError::Inconsistent {
        dir: dir.to_owned(),
        origin: origin.to_owned(),
        old_size: seen.size,
        reason,
        evidence: Box::new(Equivocation::new(
            &reader.verifier_key(),
            &seen.checkpoint,
            note,
            proof,
        )),
    };
    let fail = |reason: String| fail_with(reason, vec![]);
    if seen.size > size {
        return Err(fail(format!(
            "the log shrank from {} to {size} entries",
            seen.size
        )));
    }
    let mut old_root = [0u8; 32];
    hex::decode_to_slice(&seen.root, &mut old_root).map_err(|_| {
        fail(format!(
            "the state's root {:?} is not 64 hex digits",
            seen.root
        ))
    })?;
    if seen.size == 0 || seen.size == size {
        let root = merkle::root_of(&leaves[..seen.size as usize]);
        if root != old_root {
            return Err(fail(format!(
                "tree of size {} has root {}, the earlier checkpoint had {}",
                seen.size,
                hex::encode(root),
                seen.root
            )));
        }
        return Ok(());
    }
    let proof = reader
        .prove_consistency(seen.size, size)
        .map_err(|e| fail(format!("no consistency proof from the store: {e}")))?;
    let new_root = merkle::root_of(leaves);
    merkle::check_tree(&proof, size, &new_root, seen.size, &old_root).map_err(|e| {
        fail_with(
            format!("consistency proof does not verify: {e}"),
            proof.clone(),
        )
    })
}

fn verify_cosignatures(
    dir: &Path,
    note: &str,
    witnesses: &[String],
) -> Result<Vec<String>, AuditError> {
    let err = |reason: String| AuditError::Cosignature {
        dir: dir.to_owned(),
        reason,
    };
    let parsed = Note::parse(note.as_bytes()).map_err(|e| err(e.to_string()))?;
    let mut names = Vec::new();
    for w in witnesses {
        let v: Verifier = w
            .parse()
            .map_err(|e| err(format!("witness key {w}: {e}")))?;
        let present = parsed
            .sigs
            .iter()
            .any(|s| s.name == v.name() && s.key_id == v.key_id());
        if present {
            checkpoint::verify_cosignature(&parsed, &v)
                .map_err(|e| err(format!("witness {}: {e}", v.name())))?;
            names.push(v.name().to_owned());
        }
    }
    Ok(names)
}
