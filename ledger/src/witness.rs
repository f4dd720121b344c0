//! A witness: cosigns a log's checkpoint only after verifying that it extends the last
//! checkpoint it cosigned for that log, and remembers that checkpoint durably.
//!
//! Rule (`specs/tlog.md`, "Witness"): for a checkpoint of origin `o` signed by log key `K`
//! 1. the note must carry a valid signature by `K` whose name is `o`;
//! 2. if the witness has cosigned for `o` before (state: `K` and that signed note):
//!    the key must still be `K`; the size must not shrink (rollback); and the offered
//!    consistency proof must prove the old (size, root) a prefix of the new one
//!    (`merkle::check_tree`; for equal sizes: empty proof, equal roots). A failed proof
//!    yields [`WitnessError::Inconsistent`] carrying [`Equivocation`] evidence;
//! 3. on first sight any validly signed checkpoint is accepted (trust on first use);
//! 4. the new state is written atomically and durably *before* the cosignature is
//!    returned, so a crash can never leave a cosignature the state does not reflect.

use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, CheckpointError, Cosigner};
use crate::evidence::Equivocation;
use crate::merkle::{self, Hash};
use crate::note::{Algorithm, Note, Verifier, NOTE_BYTES_MAX};

/// Value of the `type` field of a state file.
pub const STATE_TYPE: &str = "leam-witness-state/v1";
/// Largest state file accepted, bytes (one JSON-escaped note plus a key).
pub const STATE_BYTES_MAX: usize = 2 * NOTE_BYTES_MAX + 4096;

/// What a witness remembers about one log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogState {
    /// Always [`STATE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The log's verifier key.
    pub log: String,
    /// The last checkpoint note the witness cosigned, exactly as the log signed it.
    pub checkpoint: String,
}

/// Durable per-log state of a witness.
pub trait WitnessState {
    /// The state for log `origin`, if any.
    fn load(&self, origin: &str) -> Result<Option<LogState>, WitnessError>;
    /// Replaces the state for `origin`; atomic and durable when it returns.
    fn store(&mut self, origin: &str, state: &LogState) -> Result<(), WitnessError>;
}

/// Errors of a witness.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The checkpoint is malformed or not signed by the log key.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The log verifier key is not an Ed25519 (type 0x01) key.
    #[error("{key} is not an Ed25519 (type 0x01) log key")]
    NotLogKey {
        /// The key.
        key: String,
    },
    /// A size-0 checkpoint whose root is not SHA-256("").
    #[error("checkpoint of size 0 has root {found}, expected SHA-256(\"\")")]
    FalseEmptyRoot {
        /// Hex of the root.
        found: String,
    },
    /// The log's key differs from the one the witness cosigned for before.
    #[error("log {origin}: key {given} differs from the key {stored} the witness follows")]
    LogKeyChanged {
        /// The origin.
        origin: String,
        /// Key in the state.
        stored: String,
        /// Key given now.
        given: String,
    },
    /// The checkpoint is smaller than one already cosigned.
    #[error(
        "log {origin}: rollback from cosigned size {cosigned_size} to offered size {offered_size}"
    )]
    Rollback {
        /// The origin.
        origin: String,
        /// Size last cosigned.
        cosigned_size: u64,
        /// Size offered.
        offered_size: u64,
    },
    /// The consistency proof from the last cosigned checkpoint fails.
    #[error("log {origin}: size {old_size} -> {new_size} not proven consistent: {reason}")]
    Inconsistent {
        /// The origin.
        origin: String,
        /// Size last cosigned.
        old_size: u64,
        /// Size offered.
        new_size: u64,
        /// Why the proof failed.
        reason: String,
        /// The two checkpoints and the proof, for anyone to check.
        evidence: Box<Equivocation>,
    },
    /// A state file is unreadable or malformed.
    #[error("witness state {path}: {reason}")]
    StateCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// I/O on the state.
    #[error("witness state {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A witness: a cosigner and its durable state.
#[derive(Debug)]
pub struct Witness<S: WitnessState> {
    cosigner: Cosigner,
    state: S,
}

impl<S: WitnessState> Witness<S> {
    /// A witness signing with `cosigner` and remembering in `state`.
    pub fn new(cosigner: Cosigner, state: S) -> Self {
        Witness { cosigner, state }
    }

    /// The cosigner (for its verifier key).
    pub fn cosigner(&self) -> &Cosigner {
        &self.cosigner
    }

    /// The state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Applies the witness rule (module documentation) to a signed checkpoint note and,
    /// if it holds, stores the new state and returns the cosignature line
    /// (`— <name> <base64>\n`) to append to the note. `now_unix_secs` is the cosignature
    /// timestamp.
    pub fn cosign(
        &mut self,
        signed_checkpoint: &[u8],
        log: &Verifier,
        consistency_proof: &[Hash],
        now_unix_secs: u64,
    ) -> Result<String, WitnessError> {
        if log.algorithm() != Algorithm::Ed25519 {
            return Err(WitnessError::NotLogKey {
                key: log.to_string(),
            });
        }
        let (cp, note) = Checkpoint::open(signed_checkpoint, log)?;
        if cp.size == 0 && cp.root != merkle::empty_root() {
            return Err(WitnessError::FalseEmptyRoot {
                found: hex::encode(cp.root),
            });
        }
        let vkey = log.to_string();
        let new_note = note.encode();
        if let Some(prev) = self.state.load(&cp.origin)? {
            if prev.log != vkey {
                return Err(WitnessError::LogKeyChanged {
                    origin: cp.origin,
                    stored: prev.log,
                    given: vkey,
                });
            }
            let (old, _) = Checkpoint::open(prev.checkpoint.as_bytes(), log).map_err(|e| {
                WitnessError::StateCorrupt {
                    path: PathBuf::from(&cp.origin),
                    reason: format!("stored checkpoint does not open: {e}"),
                }
            })?;
            if cp.size < old.size {
                return Err(WitnessError::Rollback {
                    origin: cp.origin,
                    cosigned_size: old.size,
                    offered_size: cp.size,
                });
            }
            if old.size > 0 {
                merkle::check_tree(consistency_proof, cp.size, &cp.root, old.size, &old.root)
                    .map_err(|e| WitnessError::Inconsistent {
                        origin: cp.origin.clone(),
                        old_size: old.size,
                        new_size: cp.size,
                        reason: e.to_string(),
                        evidence: Box::new(Equivocation::new(
                            &vkey,
                            &prev.checkpoint,
                            &new_note,
                            consistency_proof.to_vec(),
                        )),
                    })?;
            }
        }
        let line = self.cosigner.cosign(&note.text, now_unix_secs)?.line();
        let state = LogState {
            kind: STATE_TYPE.to_string(),
            log: vkey,
            checkpoint: new_note,
        };
        self.state.store(&cp.origin, &state)?;
        Ok(line)
    }
}

/// [`WitnessState`] in a directory: one JSON file per log, named by the hex SHA-256 of
/// its origin, replaced atomically (temp file, fsync, rename, fsync directory).
#[derive(Debug, Clone)]
pub struct FileState {
    dir: PathBuf,
}

impl FileState {
    /// State in directory `dir` (created if missing).
    pub fn open(dir: &Path) -> Result<Self, WitnessError> {
        fs::create_dir_all(dir).map_err(|source| WitnessError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(FileState {
            dir: dir.to_path_buf(),
        })
    }

    /// The file that holds the state of log `origin`.
    pub fn path(&self, origin: &str) -> PathBuf {
        let h = Sha256::digest(origin.as_bytes());
        self.dir.join(format!("{}.json", hex::encode(h)))
    }
}

impl WitnessState for FileState {
    fn load(&self, origin: &str) -> Result<Option<LogState>, WitnessError> {
        let path = self.path(origin);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(WitnessError::Io { path, source }),
        };
        let corrupt = |reason: String| WitnessError::StateCorrupt {
            path: path.clone(),
            reason,
        };
        if bytes.len() > STATE_BYTES_MAX {
            return Err(corrupt(format!(
                "{} bytes, more than {STATE_BYTES_MAX}",
                bytes.len()
            )));
        }
        let s: LogState = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if s.kind != STATE_TYPE {
            return Err(corrupt(format!(
                "type {:?}, expected {STATE_TYPE:?}",
                s.kind
            )));
        }
        let origin_found = Note::parse(s.checkpoint.as_bytes())
            .map_err(CheckpointError::from)
            .and_then(|n| Checkpoint::parse(&n.text))
            .map(|c| c.origin);
        match origin_found {
            Ok(o) if o == origin => Ok(Some(s)),
            Ok(o) => Err(corrupt(format!(
                "holds a checkpoint of origin {o:?}, expected {origin:?}"
            ))),
            Err(e) => Err(corrupt(format!("stored checkpoint: {e}"))),
        }
    }

    fn store(&mut self, origin: &str, state: &LogState) -> Result<(), WitnessError> {
        let path = self.path(origin);
        let tmp = path.with_extension("json.tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WitnessError::Io { path, source }
        };
        let bytes = serde_json::to_vec(state).expect("serialising strings cannot fail");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}
