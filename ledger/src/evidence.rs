//! Portable equivocation evidence: two checkpoints signed by one log key that cannot
//! both be honest views of one append-only log. Anyone can check it with the log's
//! public verifier key alone (rule and format: `specs/tlog.md`, "Equivocation evidence").
//!
//! Canonical encoding: one line of compact JSON, keys in this order, no whitespace,
//! serde_json string escaping, proof hashes as lowercase hex:
//!
//! ```text
//! {"type":"leam-equivocation/v1","log":"<vkey>","a":"<signed note>","b":"<signed note>","proof":["<hex>",…]}
//! ```
//!
//! Verification rule (which pairs count, and how strongly):
//! * same size, different roots: **conclusive**;
//! * a size-0 checkpoint whose root is not SHA-256(""): **conclusive** (a false root);
//! * sizes `m < n` and a consistency proof (as the log served it) that, run from size
//!   `m` to `n`, yields the signed root of `n` but a size-`m` prefix root different from
//!   the signed root of `m`: **conclusive** (the log's size-`n` tree has another prefix;
//!   forging this needs a SHA-256 collision). Possible only when `m` is not a power of
//!   two, because otherwise RFC 9162 omits the prefix root from the proof;
//! * sizes `m < n` and no proof, or a proof that does not even yield the signed root of
//!   `n`: **not conclusive** ([`EquivocationKind::Unproven`]): a consistency proof is
//!   unique, so the next step is to ask the log (or any mirror) for it; a log that
//!   cannot serve one that verifies has forked;
//! * a proof that verifies: the checkpoints are consistent and the "evidence" is rejected.

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::merkle::{self, Hash, MerkleError};
use crate::note::{Algorithm, NoteError, Verifier, NOTE_BYTES_MAX};

/// Value of the `type` field of the encoding.
pub const EVIDENCE_TYPE: &str = "leam-equivocation/v1";
/// Largest encoded evidence accepted, bytes: two maximal notes (JSON-escaped text can
/// double in size) plus a maximal proof.
pub const EVIDENCE_BYTES_MAX: usize = 4 * NOTE_BYTES_MAX + 64 * 1024;

/// Errors of decoding and verifying evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The encoding is larger than [`EVIDENCE_BYTES_MAX`].
    #[error("evidence is {size} bytes, more than the maximum of {max}", max = EVIDENCE_BYTES_MAX)]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The encoding is not the expected JSON object.
    #[error("evidence JSON: {0}")]
    Json(String),
    /// The encoding is valid JSON but not the canonical form.
    #[error("evidence is not in canonical form (compact JSON, fixed key order, lowercase hex)")]
    NonCanonical,
    /// The `type` field is not [`EVIDENCE_TYPE`].
    #[error("evidence type {found:?}, expected {EVIDENCE_TYPE:?}")]
    WrongType {
        /// The type found.
        found: String,
    },
    /// A proof hash is not 64 lowercase hex digits.
    #[error("evidence proof hash {index} is {found:?}, expected 64 lowercase hex digits")]
    BadProofHash {
        /// Its position in the proof.
        index: usize,
        /// What was found.
        found: String,
    },
    /// The log verifier key is malformed or not an Ed25519 (type 0x01) key.
    #[error("evidence log key: {0}")]
    LogKey(NoteError),
    /// One of the two checkpoints is malformed or not signed by the log key.
    #[error("evidence checkpoint {which}: {source}")]
    Checkpoint {
        /// "a" or "b".
        which: &'static str,
        /// What is wrong with it.
        source: CheckpointError,
    },
    /// The two checkpoints are of different logs.
    #[error("evidence checkpoints have different origins: {a:?} and {b:?}")]
    DifferentOrigins {
        /// Origin of a.
        a: String,
        /// Origin of b.
        b: String,
    },
    /// The two checkpoints agree (same size and root, or an empty tree with the right root).
    #[error("not an equivocation: {reason}")]
    NotEquivocation {
        /// Why.
        reason: String,
    },
    /// The proof shows the two checkpoints are consistent.
    #[error("not an equivocation: the proof shows size {old_size} is a prefix of size {new_size}")]
    Consistent {
        /// Smaller size.
        old_size: u64,
        /// Larger size.
        new_size: u64,
    },
    /// The proof is malformed for the two sizes.
    #[error("evidence proof: {0}")]
    Proof(MerkleError),
    /// The evidence verifies but is not conclusive (from [`Equivocation::verify_conclusive`]).
    #[error("evidence is not conclusive: sizes {old_size} and {new_size}, no proof yields a different prefix; ask the log for the consistency proof")]
    NotConclusive {
        /// Smaller size.
        old_size: u64,
        /// Larger size.
        new_size: u64,
    },
}

/// What a verified piece of evidence shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EquivocationKind {
    /// Two signed checkpoints of one size with different roots. Conclusive.
    SameSizeDifferentRoots {
        /// The size.
        size: u64,
    },
    /// A signed size-0 checkpoint with a root other than SHA-256(""). Conclusive.
    FalseEmptyRoot,
    /// The proof yields the signed larger root and a different prefix root. Conclusive.
    ForkedPrefix {
        /// Smaller size.
        old_size: u64,
        /// Larger size.
        new_size: u64,
        /// The size-`old_size` prefix root that the larger tree has.
        prefix_root: Hash,
    },
    /// Different sizes without a proof that settles it. Not conclusive on its own.
    Unproven {
        /// Smaller size.
        old_size: u64,
        /// Larger size.
        new_size: u64,
    },
}

impl EquivocationKind {
    /// Whether this alone proves that the log signed two incompatible histories.
    pub fn is_conclusive(&self) -> bool {
        !matches!(self, EquivocationKind::Unproven { .. })
    }
}

/// Two checkpoint notes signed by one log key, and optionally the consistency proof
/// the log served between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    /// The log's verifier key (`name+hex(keyID)+base64(0x01 ‖ pubkey)`).
    pub log_verifier_key: String,
    /// First signed checkpoint note, exactly as signed.
    pub a: String,
    /// Second signed checkpoint note, exactly as signed.
    pub b: String,
    /// Consistency proof from the smaller to the larger size, as served; may be empty.
    pub proof: Vec<Hash>,
}

/// Wire form; field order is the canonical key order.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    log: String,
    a: String,
    b: String,
    proof: Vec<String>,
}

impl Equivocation {
    /// Evidence from two signed checkpoint notes of the log with key `log_verifier_key`.
    pub fn new(log_verifier_key: &str, a: &str, b: &str, proof: Vec<Hash>) -> Self {
        Equivocation {
            log_verifier_key: log_verifier_key.to_string(),
            a: a.to_string(),
            b: b.to_string(),
            proof,
        }
    }

    /// The canonical encoding (one line of compact JSON, no final newline).
    pub fn encode(&self) -> String {
        let wire = Wire {
            kind: EVIDENCE_TYPE.to_string(),
            log: self.log_verifier_key.clone(),
            a: self.a.clone(),
            b: self.b.clone(),
            proof: self.proof.iter().map(hex::encode).collect(),
        };
        serde_json::to_string(&wire).expect("serialising strings cannot fail")
    }

    /// Decodes the canonical encoding; rejects any other form. `decode(encode(e)) == e`.
    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > EVIDENCE_BYTES_MAX {
            return Err(EvidenceError::TooLarge { size: bytes.len() });
        }
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| EvidenceError::Json(e.to_string()))?;
        if wire.kind != EVIDENCE_TYPE {
            return Err(EvidenceError::WrongType { found: wire.kind });
        }
        let mut proof = Vec::with_capacity(wire.proof.len());
        for (index, h) in wire.proof.iter().enumerate() {
            let mut out = [0u8; 32];
            let ok = h.len() == 64
                && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                && hex::decode_to_slice(h, &mut out).is_ok();
            if !ok {
                return Err(EvidenceError::BadProofHash {
                    index,
                    found: h.chars().take(80).collect(),
                });
            }
            proof.push(out);
        }
        let e = Equivocation {
            log_verifier_key: wire.log,
            a: wire.a,
            b: wire.b,
            proof,
        };
        if e.encode().as_bytes() != bytes {
            return Err(EvidenceError::NonCanonical);
        }
        Ok(e)
    }

    /// Checks the evidence (rule in the module documentation) and says what it shows.
    /// Errors for malformed or forged evidence; `Ok(Unproven)` is not conclusive.
    pub fn verify(&self) -> Result<EquivocationKind, EvidenceError> {
        let log: Verifier = self
            .log_verifier_key
            .parse()
            .map_err(EvidenceError::LogKey)?;
        if log.algorithm() != Algorithm::Ed25519 {
            return Err(EvidenceError::LogKey(NoteError::BadVerifierKey {
                key: self.log_verifier_key.clone(),
                reason: "a log key must have signature type 0x01 (Ed25519)".into(),
            }));
        }
        let open = |which, note: &str| {
            Checkpoint::open(note.as_bytes(), &log)
                .map(|(c, _)| c)
                .map_err(|source| EvidenceError::Checkpoint { which, source })
        };
        let (a, b) = (open("a", &self.a)?, open("b", &self.b)?);
        if a.origin != b.origin {
            return Err(EvidenceError::DifferentOrigins {
                a: a.origin,
                b: b.origin,
            });
        }
        let (old, new) = if a.size <= b.size { (a, b) } else { (b, a) };
        if old.size == new.size {
            if old.root == new.root {
                return Err(EvidenceError::NotEquivocation {
                    reason: format!("both checkpoints have size {} and the same root", old.size),
                });
            }
            return Ok(EquivocationKind::SameSizeDifferentRoots { size: old.size });
        }
        if old.size == 0 {
            if old.root != merkle::empty_root() {
                return Ok(EquivocationKind::FalseEmptyRoot);
            }
            return Err(EvidenceError::NotEquivocation {
                reason: "the empty tree is a prefix of every tree".into(),
            });
        }
        let unproven = EquivocationKind::Unproven {
            old_size: old.size,
            new_size: new.size,
        };
        if self.proof.is_empty() {
            return Ok(unproven);
        }
        let (prefix_root, new_root) =
            merkle::consistency_roots(&self.proof, new.size, old.size, &old.root)
                .map_err(EvidenceError::Proof)?;
        if new_root != new.root {
            return Ok(unproven);
        }
        if prefix_root == old.root {
            return Err(EvidenceError::Consistent {
                old_size: old.size,
                new_size: new.size,
            });
        }
        Ok(EquivocationKind::ForkedPrefix {
            old_size: old.size,
            new_size: new.size,
            prefix_root,
        })
    }

    /// Like [`Equivocation::verify`], but only conclusive evidence passes.
    pub fn verify_conclusive(&self) -> Result<EquivocationKind, EvidenceError> {
        match self.verify()? {
            EquivocationKind::Unproven { old_size, new_size } => {
                Err(EvidenceError::NotConclusive { old_size, new_size })
            }
            k => Ok(k),
        }
    }
}
