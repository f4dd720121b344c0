//! C2SP tlog-checkpoint (<https://c2sp.org/tlog-checkpoint>) and timestamped Ed25519
//! tlog-cosignature (<https://c2sp.org/tlog-cosignature>, type 0x04).
//!
//! A checkpoint is the text of a signed note:
//!
//! ```text
//! <origin>
//! <tree size, decimal, no leading zeros>
//! <base64 of the 32-byte RFC 6962 root>
//! [<extension line>…]
//! ```
//!
//! signed by the log (Ed25519, [`note::Signer`]) and cosigned by witnesses
//! ([`Cosigner`]): a cosignature signs `"cosignature/v1\ntime <ts>\n" ‖ checkpoint text`.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};

use crate::merkle::{Hash, HASH_SIZE};
use crate::note::{
    self, cosignature_message, Algorithm, Note, NoteError, Signature, Signer, Verifier,
    COSIGNATURE_TIMESTAMP_MAX,
};

/// Largest number of extension lines accepted in a checkpoint.
pub const EXTENSION_LINES_MAX: usize = 16;

/// Errors of checkpoint parsing, signing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The signed note around the checkpoint is malformed or does not verify.
    #[error("checkpoint note: {0}")]
    Note(#[from] NoteError),
    /// A mandatory line is missing.
    #[error("checkpoint has no {line} line (expected origin, size and root hash lines)")]
    MissingLine {
        /// Which line: "origin", "size" or "root hash".
        line: &'static str,
    },
    /// The origin line is empty.
    #[error("checkpoint origin line is empty")]
    EmptyOrigin,
    /// The size line is not a decimal number without leading zeros that fits in u64.
    #[error("checkpoint size line {found:?}: expected a decimal u64 without leading zeros")]
    BadSize {
        /// The size line as found.
        found: String,
    },
    /// The root hash line is not canonical padded base64.
    #[error("checkpoint root hash line {found:?} is not canonical padded base64")]
    RootBase64 {
        /// The root hash line as found.
        found: String,
    },
    /// The root hash does not have 32 bytes.
    #[error("checkpoint root hash has {found} bytes, expected {HASH_SIZE}")]
    RootLength {
        /// Its length in bytes.
        found: usize,
    },
    /// An extension line is empty.
    #[error("checkpoint extension line {line} is empty")]
    EmptyExtension {
        /// 1-based line number in the checkpoint text.
        line: usize,
    },
    /// More than [`EXTENSION_LINES_MAX`] extension lines.
    #[error("checkpoint has {found} extension lines, at most {EXTENSION_LINES_MAX} allowed")]
    TooManyExtensions {
        /// How many it has.
        found: usize,
    },
    /// A field would make the checkpoint text malformed.
    #[error("checkpoint {field} {value:?} must be non-empty and contain no newline")]
    BadField {
        /// "origin" or "extension".
        field: &'static str,
        /// The value.
        value: String,
    },
    /// The checkpoint note is not signed by the log's key.
    #[error("checkpoint is not signed by the log key {log}")]
    NotSignedByLog {
        /// The log's verifier key.
        log: String,
    },
    /// The log's key name does not match the checkpoint origin.
    #[error("checkpoint origin {origin:?} does not match the log key name {name:?}")]
    OriginMismatch {
        /// The origin line.
        origin: String,
        /// The log key name.
        name: String,
    },
    /// A cosignature verifier key has the wrong type.
    #[error("verifier {key} is not a cosignature/v1 (type 0x04) key")]
    NotCosignerKey {
        /// The verifier key.
        key: String,
    },
    /// The note carries no (valid) cosignature by the given cosigner.
    #[error("checkpoint has no cosignature by {cosigner}")]
    NoCosignature {
        /// The cosigner's verifier key.
        cosigner: String,
    },
}

/// A transparency-log checkpoint: the log's signed statement of its size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Identifies the log; by convention also the log key's name.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 6962 root hash of the first `size` leaves.
    pub root: Hash,
    /// Opaque extension lines (not recommended; kept and signed verbatim).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: &str, size: u64, root: Hash) -> Result<Self, CheckpointError> {
        let c = Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions: Vec::new(),
        };
        c.check_fields()?;
        Ok(c)
    }

    fn check_fields(&self) -> Result<(), CheckpointError> {
        let bad = |field, value: &str| CheckpointError::BadField {
            field,
            value: value.to_string(),
        };
        if self.origin.is_empty() || self.origin.contains('\n') {
            return Err(bad("origin", &self.origin));
        }
        if self.extensions.len() > EXTENSION_LINES_MAX {
            return Err(CheckpointError::TooManyExtensions {
                found: self.extensions.len(),
            });
        }
        for e in &self.extensions {
            if e.is_empty() || e.contains('\n') {
                return Err(bad("extension", e));
            }
        }
        note::check_text(&self.body())?;
        Ok(())
    }

    /// The checkpoint text (the note body that is signed), ending in a newline.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses checkpoint text (a note's text). `parse(body(c)) == c`.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        note::check_text(text)?;
        let mut lines = text[..text.len() - 1].split('\n');
        let origin = lines
            .next()
            .ok_or(CheckpointError::MissingLine { line: "origin" })?;
        if origin.is_empty() {
            return Err(CheckpointError::EmptyOrigin);
        }
        let size_line = lines
            .next()
            .ok_or(CheckpointError::MissingLine { line: "size" })?;
        let size = parse_decimal(size_line).ok_or_else(|| CheckpointError::BadSize {
            found: size_line.to_string(),
        })?;
        let root_line = lines
            .next()
            .ok_or(CheckpointError::MissingLine { line: "root hash" })?;
        let root = B64
            .decode(root_line)
            .map_err(|_| CheckpointError::RootBase64 {
                found: root_line.to_string(),
            })?;
        let root: Hash = root
            .as_slice()
            .try_into()
            .map_err(|_| CheckpointError::RootLength { found: root.len() })?;
        let mut extensions = Vec::new();
        for (i, e) in lines.enumerate() {
            if e.is_empty() {
                return Err(CheckpointError::EmptyExtension { line: 4 + i });
            }
            extensions.push(e.to_string());
        }
        if extensions.len() > EXTENSION_LINES_MAX {
            return Err(CheckpointError::TooManyExtensions {
                found: extensions.len(),
            });
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// The signed note of this checkpoint, signed by the log's `signer`.
    pub fn sign(&self, signer: &Signer) -> Result<String, CheckpointError> {
        self.check_fields()?;
        let mut n = Note::new(&self.body())?;
        n.sign(signer)?;
        Ok(n.encode())
    }

    /// Parses a signed checkpoint note and verifies the log's signature. The log key's
    /// name must equal the origin (c2sp.org/tlog-checkpoint: "SHOULD"; required here).
    /// Other signatures (cosignatures, unknown keys) are kept in the returned note.
    pub fn open(msg: &[u8], log: &Verifier) -> Result<(Checkpoint, Note), CheckpointError> {
        let n = Note::parse(msg)?;
        let c = Checkpoint::parse(&n.text)?;
        if c.origin != log.name() {
            return Err(CheckpointError::OriginMismatch {
                origin: c.origin,
                name: log.name().to_string(),
            });
        }
        let known = std::slice::from_ref(log);
        match n.verify(known) {
            Ok(v) if v.signed_by(log) == Some(None) => Ok((c, n)),
            Ok(_) | Err(NoteError::NoKnownSignature { .. }) => {
                Err(CheckpointError::NotSignedByLog {
                    log: log.to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.body())
    }
}

/// Parses a decimal u64 with no sign, no leading zeros (except "0") and no overflow.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// A witness's cosigning key (cosignature/v1, type 0x04). `Debug` shows only the
/// public verifier key.
pub struct Cosigner {
    verifier: Verifier,
    key: SigningKey,
}

impl fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cosigner")
            .field("verifier", &self.verifier.to_string())
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    /// A cosigner named `name` (a schema-less URL by convention) with key `key`. Use a
    /// key that signs nothing else (the v1 message does not commit to the name).
    pub fn new(name: &str, key: SigningKey) -> Result<Self, CheckpointError> {
        let verifier = Verifier::new(name, Algorithm::CosignatureV1, key.verifying_key())?;
        Ok(Cosigner { verifier, key })
    }

    /// The cosigner's verifier (type 0x04).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Cosigns checkpoint text `body` at POSIX time `timestamp` (an argument: pure).
    /// Checks only the timestamp bound and the text; the witness rule lives in `witness`.
    pub fn cosign(&self, body: &str, timestamp: u64) -> Result<Signature, CheckpointError> {
        if timestamp > COSIGNATURE_TIMESTAMP_MAX {
            return Err(NoteError::TimestampTooLarge { found: timestamp }.into());
        }
        note::check_text(body)?;
        let ed = self
            .key
            .sign(cosignature_message(timestamp, body).as_bytes());
        let mut sig = Vec::with_capacity(note::COSIGNATURE_SIZE);
        sig.extend_from_slice(&timestamp.to_be_bytes());
        sig.extend_from_slice(&ed.to_bytes());
        Ok(Signature {
            name: self.verifier.name().to_string(),
            key_id: self.verifier.key_id(),
            sig,
        })
    }
}

/// Verifies the cosignature by `cosigner` (a type 0x04 verifier) on a parsed checkpoint
/// note and returns its timestamp. Other signatures are ignored.
pub fn verify_cosignature(n: &Note, cosigner: &Verifier) -> Result<u64, CheckpointError> {
    if cosigner.algorithm() != Algorithm::CosignatureV1 {
        return Err(CheckpointError::NotCosignerKey {
            key: cosigner.to_string(),
        });
    }
    let known = std::slice::from_ref(cosigner);
    match n.verify(known) {
        Ok(v) => match v.signed_by(cosigner) {
            Some(Some(ts)) => Ok(ts),
            _ => Err(CheckpointError::NoCosignature {
                cosigner: cosigner.to_string(),
            }),
        },
        Err(NoteError::NoKnownSignature { .. }) => Err(CheckpointError::NoCosignature {
            cosigner: cosigner.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle;

    fn log_signer() -> Signer {
        Signer::new("example.org/log", SigningKey::from_bytes(&[1; 32])).unwrap()
    }

    #[test]
    fn sign_open_round_trip_with_cosignature() {
        let c = Checkpoint::new("example.org/log", 3, merkle::leaf_hash(b"x")).unwrap();
        let signer = log_signer();
        let signed = c.sign(&signer).unwrap();
        let (c2, mut n) = Checkpoint::open(signed.as_bytes(), signer.verifier()).unwrap();
        assert_eq!(c2, c);
        let w = Cosigner::new("witness.example/w1", SigningKey::from_bytes(&[2; 32])).unwrap();
        n.add_signature(w.cosign(&n.text, 1_700_000_000).unwrap())
            .unwrap();
        let cosigned = n.encode();
        let (_, n2) = Checkpoint::open(cosigned.as_bytes(), signer.verifier()).unwrap();
        assert_eq!(verify_cosignature(&n2, w.verifier()), Ok(1_700_000_000));
        // The log key is not a cosigner key; a different witness has no cosignature.
        assert!(matches!(
            verify_cosignature(&n2, signer.verifier()),
            Err(CheckpointError::NotCosignerKey { .. })
        ));
        let w2 = Cosigner::new("witness.example/w2", SigningKey::from_bytes(&[3; 32])).unwrap();
        assert!(matches!(
            verify_cosignature(&n2, w2.verifier()),
            Err(CheckpointError::NoCosignature { .. })
        ));
    }

    #[test]
    fn wrong_log_key_is_rejected() {
        let c = Checkpoint::new("example.org/log", 0, merkle::empty_root()).unwrap();
        let signed = c.sign(&log_signer()).unwrap();
        let other = Signer::new("example.org/log", SigningKey::from_bytes(&[9; 32])).unwrap();
        assert!(matches!(
            Checkpoint::open(signed.as_bytes(), other.verifier()),
            Err(CheckpointError::NotSignedByLog { .. })
        ));
        let renamed = Signer::new("example.org/other", SigningKey::from_bytes(&[1; 32])).unwrap();
        assert!(matches!(
            Checkpoint::open(signed.as_bytes(), renamed.verifier()),
            Err(CheckpointError::OriginMismatch { .. })
        ));
    }

    #[test]
    fn body_errors_are_precise() {
        let root = B64.encode([0u8; 32]);
        let cases = [
            (
                "example\n".to_string(),
                CheckpointError::MissingLine { line: "size" },
            ),
            (format!("\n1\n{root}\n"), CheckpointError::EmptyOrigin),
            (
                format!("o\n01\n{root}\n"),
                CheckpointError::BadSize { found: "01".into() },
            ),
            (
                format!("o\n+1\n{root}\n"),
                CheckpointError::BadSize { found: "+1".into() },
            ),
            (
                format!("o\n18446744073709551616\n{root}\n"),
                CheckpointError::BadSize {
                    found: "18446744073709551616".into(),
                },
            ),
            (
                "o\n1\n".to_string(),
                CheckpointError::MissingLine { line: "root hash" },
            ),
            (
                "o\n1\nAAA\n".to_string(),
                CheckpointError::RootBase64 {
                    found: "AAA".into(),
                },
            ),
            (
                "o\n1\nAAAA\n".to_string(),
                CheckpointError::RootLength { found: 3 },
            ),
            (
                format!("o\n1\n{root}\n\n"),
                CheckpointError::EmptyExtension { line: 4 },
            ),
            (
                format!("o\n1\n{root}"),
                CheckpointError::Note(NoteError::MissingFinalNewline),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Checkpoint::parse(&text), Err(want), "{text:?}");
        }
        assert_eq!(
            Checkpoint::parse(&format!("o\n0\n{root}\next a\n"))
                .unwrap()
                .extensions,
            ["ext a"]
        );
    }

    #[test]
    fn cosignature_timestamp_bound() {
        let w = Cosigner::new("w", SigningKey::from_bytes(&[2; 32])).unwrap();
        assert_eq!(
            w.cosign("o\n0\nAA==\n", u64::MAX).unwrap_err(),
            CheckpointError::Note(NoteError::TimestampTooLarge { found: u64::MAX })
        );
    }
}
