//! C2SP signed notes (<https://c2sp.org/signed-note>), Ed25519 only, plus the
//! timestamped Ed25519 cosignature type of <https://c2sp.org/tlog-cosignature>.
//!
//! A note is UTF-8 text, then a blank line, then one signature line per signature:
//!
//! ```text
//! <text, one or more lines, each ending in "\n">
//!
//! — <name> <base64(keyID[4] ‖ signature)>
//! ```
//!
//! The key ID binds the signer's name, algorithm and public key:
//! `SHA-256(name ‖ 0x0A ‖ alg ‖ pubkey)[..4]`. A verifier key is written
//! `name+hex(keyID)+base64(alg ‖ pubkey)`. Interoperable with Go's
//! `golang.org/x/mod/sumdb/note` (known-answer test in this module's tests).
//!
//! Hand-written rather than using the `signed_note` crate so that the exact limits,
//! rejection rules and error messages are ours to specify (`specs/tlog.md`), and the
//! cosignature type shares one verification path.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature as EdSignature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Largest encoded note accepted, bytes (Go's `note` package uses the same bound).
pub const NOTE_BYTES_MAX: usize = 1 << 20;
/// Largest number of signature lines in a note (as Go's `note` package).
pub const NOTE_SIGNATURES_MAX: usize = 100;
/// Length of a key ID, bytes.
pub const KEY_ID_SIZE: usize = 4;
/// Length of an Ed25519 public key, bytes.
pub const PUBLIC_KEY_SIZE: usize = 32;
/// Length of an Ed25519 signature, bytes.
pub const ED25519_SIGNATURE_SIZE: usize = 64;
/// Length of a cosignature's `timestamped_signature` (u64 timestamp ‖ Ed25519), bytes.
pub const COSIGNATURE_SIZE: usize = 8 + ED25519_SIGNATURE_SIZE;
/// Largest cosignature timestamp (c2sp.org/tlog-cosignature: at most 2^63 − 1).
pub const COSIGNATURE_TIMESTAMP_MAX: u64 = i64::MAX as u64;
/// Start of every signature line: U+2014 EM DASH, then a space.
pub const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";
/// Header line of the message a cosigner signs (c2sp.org/tlog-cosignature).
pub const COSIGNATURE_HEADER: &str = "cosignature/v1\n";

/// A 4-byte key ID.
pub type KeyId = [u8; KEY_ID_SIZE];

/// Signature algorithms this module knows (the signed-note "signature type" byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Plain Ed25519 over the note text (type 0x01): log checkpoints.
    Ed25519,
    /// Timestamped Ed25519 cosignature, `cosignature/v1` (type 0x04): witnesses.
    CosignatureV1,
}

impl Algorithm {
    /// The signature type byte.
    pub fn byte(self) -> u8 {
        match self {
            Algorithm::Ed25519 => 0x01,
            Algorithm::CosignatureV1 => 0x04,
        }
    }

    /// The algorithm with type byte `b`, if known.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Algorithm::Ed25519),
            0x04 => Some(Algorithm::CosignatureV1),
            _ => None,
        }
    }
}

/// Errors of note and key parsing, signing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The encoded note is larger than [`NOTE_BYTES_MAX`].
    #[error("note is {size} bytes, more than the maximum of {max}", max = NOTE_BYTES_MAX)]
    TooLarge {
        /// Its size in bytes.
        size: usize,
    },
    /// The note is not valid UTF-8.
    #[error("note is not valid UTF-8 at byte {offset}")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The note contains an ASCII control character other than newline.
    #[error("note contains control character 0x{byte:02x} at byte {offset}; only \\n is allowed")]
    ControlCharacter {
        /// Offset of the character.
        offset: usize,
        /// The character.
        byte: u8,
    },
    /// The note text is empty.
    #[error("note text is empty")]
    EmptyText,
    /// The note text does not end with a newline.
    #[error("note text does not end with a newline")]
    MissingFinalNewline,
    /// No blank line separates the text from the signatures.
    #[error("note has no blank line separating the text from the signature lines")]
    MissingSignatureBlock,
    /// The signature block is empty or does not end with a newline.
    #[error("note's signature block is empty or does not end with a newline")]
    BadSignatureBlock,
    /// A signature line is malformed.
    #[error("signature line {line}: {reason}")]
    BadSignatureLine {
        /// 1-based line number within the signature block.
        line: usize,
        /// What was expected and what was found.
        reason: String,
    },
    /// More than [`NOTE_SIGNATURES_MAX`] signatures.
    #[error("note has more than {max} signature lines", max = NOTE_SIGNATURES_MAX)]
    TooManySignatures,
    /// A key name is not allowed.
    #[error("key name {name:?} is invalid: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why: empty, contains whitespace, contains '+'.
        reason: &'static str,
    },
    /// A verifier key string is malformed.
    #[error("verifier key {key:?}: {reason}")]
    BadVerifierKey {
        /// The verifier key string (public material only).
        key: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// A verifier key's stated key ID does not match its name, algorithm and key.
    #[error("verifier key for {name}: stated key ID {stated} but name, algorithm and key give {computed}")]
    KeyIdMismatch {
        /// The key name.
        name: String,
        /// Hex of the stated key ID.
        stated: String,
        /// Hex of the computed key ID.
        computed: String,
    },
    /// Two different verifiers share a name and key ID.
    #[error("ambiguous key {name}+{key_id}: two different verifiers have this name and key ID")]
    AmbiguousKey {
        /// The key name.
        name: String,
        /// Hex of the key ID.
        key_id: String,
    },
    /// A signature by a known key does not verify.
    #[error("invalid signature for key {name}+{key_id}: {reason}")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// Hex of the key ID.
        key_id: String,
        /// What failed.
        reason: String,
    },
    /// None of the note's signatures is by a known key.
    #[error("note has no signature by a known key ({count} signatures by unknown keys)")]
    NoKnownSignature {
        /// Number of signatures by unknown keys.
        count: usize,
    },
    /// A cosignature timestamp is above [`COSIGNATURE_TIMESTAMP_MAX`].
    #[error("cosignature timestamp {found} exceeds 2^63-1")]
    TimestampTooLarge {
        /// The timestamp.
        found: u64,
    },
}

/// `SHA-256(name ‖ 0x0A ‖ alg ‖ pubkey)[..4]`: the key ID of a signed-note key.
pub fn key_id(name: &str, alg: Algorithm, public_key: &[u8; PUBLIC_KEY_SIZE]) -> KeyId {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', alg.byte()]);
    h.update(public_key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// Checks a key name: non-empty, no Unicode whitespace, no '+'.
pub fn check_name(name: &str) -> Result<(), NoteError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.chars().any(char::is_whitespace) {
        "it contains whitespace"
    } else if name.contains('+') {
        "it contains '+'"
    } else if name.chars().any(|c| c.is_ascii_control()) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(NoteError::BadName {
        name: name.to_string(),
        reason,
    })
}

/// Checks note text (or a whole note): valid characters only; see [`NoteError`].
fn check_chars(bytes: &[u8]) -> Result<&str, NoteError> {
    let s = std::str::from_utf8(bytes).map_err(|e| NoteError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    // ASCII control characters (C0 and DEL) other than newline are refused.
    if let Some(offset) = s
        .bytes()
        .position(|b| (b < 0x20 && b != b'\n') || b == 0x7f)
    {
        return Err(NoteError::ControlCharacter {
            offset,
            byte: bytes[offset],
        });
    }
    Ok(s)
}

/// Checks the text part of a note: non-empty, valid characters, final newline.
pub fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() {
        return Err(NoteError::EmptyText);
    }
    check_chars(text.as_bytes())?;
    if !text.ends_with('\n') {
        return Err(NoteError::MissingFinalNewline);
    }
    Ok(())
}

/// A public key that verifies note signatures of one algorithm under one name.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    alg: Algorithm,
    key_id: KeyId,
    key: VerifyingKey,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Verifier").field(&self.to_string()).finish()
    }
}

impl Verifier {
    /// A verifier for `name`, algorithm `alg`, Ed25519 public key `key`.
    pub fn new(name: &str, alg: Algorithm, key: VerifyingKey) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Verifier {
            name: name.to_string(),
            alg,
            key_id: key_id(name, alg, key.as_bytes()),
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key ID.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The Ed25519 public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Verifies `sig` (the signature bytes after the key ID) over note text `text`.
    /// For a cosignature returns its timestamp; for a plain signature returns `None`.
    pub fn verify(&self, text: &str, sig: &[u8]) -> Result<Option<u64>, NoteError> {
        let fail = |reason: String| NoteError::InvalidSignature {
            name: self.name.clone(),
            key_id: hex::encode(self.key_id),
            reason,
        };
        match self.alg {
            Algorithm::Ed25519 => {
                let sig = <[u8; ED25519_SIGNATURE_SIZE]>::try_from(sig).map_err(|_| {
                    fail(format!(
                        "expected {ED25519_SIGNATURE_SIZE} signature bytes, found {}",
                        sig.len()
                    ))
                })?;
                self.key
                    .verify_strict(text.as_bytes(), &EdSignature::from_bytes(&sig))
                    .map_err(|_| fail("Ed25519 signature does not verify".to_string()))?;
                Ok(None)
            }
            Algorithm::CosignatureV1 => {
                let sig = <[u8; COSIGNATURE_SIZE]>::try_from(sig).map_err(|_| {
                    fail(format!(
                        "expected {COSIGNATURE_SIZE} cosignature bytes (timestamp and signature), found {}",
                        sig.len()
                    ))
                })?;
                let (ts, ed) = sig.split_at(8);
                let ts = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
                if ts > COSIGNATURE_TIMESTAMP_MAX {
                    return Err(NoteError::TimestampTooLarge { found: ts });
                }
                let ed: [u8; ED25519_SIGNATURE_SIZE] = ed.try_into().expect("64 bytes");
                let msg = cosignature_message(ts, text);
                self.key
                    .verify_strict(msg.as_bytes(), &EdSignature::from_bytes(&ed))
                    .map_err(|_| fail(format!("cosignature (time {ts}) does not verify")))?;
                Ok(Some(ts))
            }
        }
    }
}

/// The message a `cosignature/v1` cosigner signs over note text `text`:
/// `"cosignature/v1\ntime <ts>\n" ‖ text`.
pub fn cosignature_message(timestamp: u64, text: &str) -> String {
    format!("{COSIGNATURE_HEADER}time {timestamp}\n{text}")
}

impl Verifier {
    /// Parses a verifier key string `name+hex(keyID)+base64(alg ‖ pubkey)` (same as
    /// `str::parse`).
    pub fn from_vkey(s: &str) -> Result<Self, NoteError> {
        s.parse()
    }
}

impl fmt::Display for Verifier {
    /// `name+hex(keyID)+base64(alg ‖ pubkey)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut material = Vec::with_capacity(1 + PUBLIC_KEY_SIZE);
        material.push(self.alg.byte());
        material.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id),
            B64.encode(material)
        )
    }
}

impl FromStr for Verifier {
    type Err = NoteError;

    /// Parses `name+hex(keyID)+base64(alg ‖ pubkey)`.
    fn from_str(s: &str) -> Result<Self, NoteError> {
        let bad = |reason: String| NoteError::BadVerifierKey {
            key: s.to_string(),
            reason,
        };
        // The name has no '+' and the key ID is hex, so the first two '+' delimit the
        // fields; the base64 key itself may contain '+'.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "expected three '+'-separated fields: name, hex key ID, base64 key".into(),
            ));
        };
        check_name(name)?;
        if id_hex.len() != 2 * KEY_ID_SIZE
            || !id_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad(format!(
                "key ID must be 8 lowercase hex digits, found {id_hex:?}"
            )));
        }
        let mut stated = [0u8; KEY_ID_SIZE];
        hex::decode_to_slice(id_hex, &mut stated).map_err(|e| bad(format!("key ID: {e}")))?;
        let material = B64
            .decode(b64)
            .map_err(|e| bad(format!("key is not canonical padded base64: {e}")))?;
        let Some((&alg_byte, key)) = material.split_first() else {
            return Err(bad("key material is empty".into()));
        };
        let alg = Algorithm::from_byte(alg_byte).ok_or_else(|| {
            bad(format!(
                "unknown signature type 0x{alg_byte:02x} (expected 0x01 Ed25519 or 0x04 cosignature/v1)"
            ))
        })?;
        let key: [u8; PUBLIC_KEY_SIZE] = key.try_into().map_err(|_| {
            bad(format!(
                "expected a {PUBLIC_KEY_SIZE}-byte Ed25519 public key, found {} bytes",
                key.len()
            ))
        })?;
        let computed = key_id(name, alg, &key);
        if computed != stated {
            return Err(NoteError::KeyIdMismatch {
                name: name.to_string(),
                stated: hex::encode(stated),
                computed: hex::encode(computed),
            });
        }
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| bad("public key is not a valid Ed25519 point".into()))?;
        Ok(Verifier {
            name: name.to_string(),
            alg,
            key_id: stated,
            key,
        })
    }
}

/// An Ed25519 note signer (type 0x01). `Debug` shows only the public verifier key.
pub struct Signer {
    verifier: Verifier,
    key: SigningKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("verifier", &self.verifier.to_string())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer named `name` with key `key`.
    pub fn new(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        let verifier = Verifier::new(name, Algorithm::Ed25519, key.verifying_key())?;
        Ok(Signer { verifier, key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        self.verifier.name()
    }

    /// The matching verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Signs note text `text` (which must pass [`check_text`]).
    pub fn sign(&self, text: &str) -> Result<Signature, NoteError> {
        check_text(text)?;
        Ok(Signature {
            name: self.verifier.name.clone(),
            key_id: self.verifier.key_id,
            sig: self.key.sign(text.as_bytes()).to_bytes().to_vec(),
        })
    }
}

/// One signature line: key name, key ID and the signature bytes after the key ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The key name.
    pub name: String,
    /// The key ID.
    pub key_id: KeyId,
    /// The signature bytes after the key ID (64 for Ed25519, 72 for a cosignature).
    pub sig: Vec<u8>,
}

impl Signature {
    /// The signature line: `— <name> <base64(keyID ‖ sig)>\n`.
    pub fn line(&self) -> String {
        let mut b = Vec::with_capacity(KEY_ID_SIZE + self.sig.len());
        b.extend_from_slice(&self.key_id);
        b.extend_from_slice(&self.sig);
        format!("{SIGNATURE_LINE_PREFIX}{} {}\n", self.name, B64.encode(b))
    }

    /// Parses one signature line without its final newline; `line` numbers errors.
    fn parse_line(s: &str, line: usize) -> Result<Signature, NoteError> {
        let bad = |reason: String| NoteError::BadSignatureLine { line, reason };
        let rest = s.strip_prefix(SIGNATURE_LINE_PREFIX).ok_or_else(|| {
            bad(format!(
                "expected it to start with \"\u{2014} \" (U+2014, space), found {:?}",
                s.chars().take(8).collect::<String>()
            ))
        })?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("expected \"<name> <base64>\", found no space".into()))?;
        check_name(name).map_err(|e| bad(e.to_string()))?;
        let bytes = B64
            .decode(b64)
            .map_err(|e| bad(format!("signature is not canonical padded base64: {e}")))?;
        if bytes.len() <= KEY_ID_SIZE {
            return Err(bad(format!(
                "expected a 4-byte key ID and a signature, found {} bytes",
                bytes.len()
            )));
        }
        let (id, sig) = bytes.split_at(KEY_ID_SIZE);
        Ok(Signature {
            name: name.to_string(),
            key_id: id.try_into().expect("4 bytes"),
            sig: sig.to_vec(),
        })
    }
}

/// A parsed signed note: its text and its signatures, in order, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The note text, ending in a newline (the signed message).
    pub text: String,
    /// The signatures, in the order of their lines (unknown ones included).
    pub sigs: Vec<Signature>,
}

/// The result of verifying a note: which known keys signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<'a> {
    /// Each known verifier with a valid signature, with the cosignature timestamp
    /// (`None` for plain Ed25519 signatures), in signature-line order, without repeats.
    pub signers: Vec<(&'a Verifier, Option<u64>)>,
    /// Number of signature lines by keys not in the verifier list (ignored).
    pub unknown: usize,
}

impl Verified<'_> {
    /// Whether `v` (by name and key ID) is among the valid signers; returns its timestamp.
    pub fn signed_by(&self, v: &Verifier) -> Option<Option<u64>> {
        self.signers
            .iter()
            .find(|(s, _)| s.name == v.name && s.key_id == v.key_id && s.key == v.key)
            .map(|(_, ts)| *ts)
    }
}

impl Note {
    /// A note with text `text` (checked) and no signatures yet.
    pub fn new(text: &str) -> Result<Note, NoteError> {
        check_text(text)?;
        Ok(Note {
            text: text.to_string(),
            sigs: Vec::new(),
        })
    }

    /// Parses an encoded note (syntax only; see [`Note::verify`]).
    pub fn parse(msg: &[u8]) -> Result<Note, NoteError> {
        if msg.len() > NOTE_BYTES_MAX {
            return Err(NoteError::TooLarge { size: msg.len() });
        }
        let s = check_chars(msg)?;
        // The signature block follows the last blank line; signature lines never contain
        // "\n\n", so text containing blank lines still splits correctly.
        let split = s.rfind("\n\n").ok_or(NoteError::MissingSignatureBlock)?;
        let (text, block) = (&s[..split + 1], &s[split + 2..]);
        if block.is_empty() || !block.ends_with('\n') {
            return Err(NoteError::BadSignatureBlock);
        }
        let lines: Vec<&str> = block[..block.len() - 1].split('\n').collect();
        if lines.len() > NOTE_SIGNATURES_MAX {
            return Err(NoteError::TooManySignatures);
        }
        let sigs = lines
            .iter()
            .enumerate()
            .map(|(i, l)| Signature::parse_line(l, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Note {
            text: text.to_string(),
            sigs,
        })
    }

    /// The encoded note: text, blank line, signature lines. `parse(encode(n)) == n`.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(self.text.len() + 1 + 128 * self.sigs.len());
        s.push_str(&self.text);
        s.push('\n');
        for sig in &self.sigs {
            s.push_str(&sig.line());
        }
        s
    }

    /// Adds a signature, replacing any earlier one with the same name and key ID.
    pub fn add_signature(&mut self, sig: Signature) -> Result<(), NoteError> {
        self.sigs
            .retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        if self.sigs.len() >= NOTE_SIGNATURES_MAX {
            return Err(NoteError::TooManySignatures);
        }
        self.sigs.push(sig);
        Ok(())
    }

    /// Signs the note with `signer` (replacing its earlier signature, if any).
    pub fn sign(&mut self, signer: &Signer) -> Result<(), NoteError> {
        let sig = signer.sign(&self.text)?;
        self.add_signature(sig)
    }

    /// Verifies the note against known verifiers.
    ///
    /// Signatures by keys not in `verifiers` (by name and key ID) are counted and
    /// ignored. Every signature by a known key must verify (stricter than Go, which
    /// checks only the first one per key). At least one must be by a known key.
    pub fn verify<'a>(&self, verifiers: &'a [Verifier]) -> Result<Verified<'a>, NoteError> {
        let mut out = Verified {
            signers: Vec::new(),
            unknown: 0,
        };
        for sig in &self.sigs {
            let mut matching = verifiers
                .iter()
                .filter(|v| v.name == sig.name && v.key_id == sig.key_id);
            let Some(v) = matching.next() else {
                out.unknown += 1;
                continue;
            };
            if matching.any(|w| w != v) {
                return Err(NoteError::AmbiguousKey {
                    name: sig.name.clone(),
                    key_id: hex::encode(sig.key_id),
                });
            }
            let ts = v.verify(&self.text, &sig.sig)?;
            if out.signed_by(v).is_none() {
                out.signers.push((v, ts));
            }
        }
        if out.signers.is_empty() {
            return Err(NoteError::NoKnownSignature { count: out.unknown });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer test from Go's golang.org/x/mod/sumdb/note/note_test.go (TestSign,
    // TestNewVerifier, TestOpen; BSD-style licence): the published key pair and the
    // exact signed note Go produces for it.
    const GO_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_SIGNED: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    const GO_ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const GO_ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

    fn go_signer() -> Signer {
        // Go's private key string: PRIVATE+KEY+name+hex(keyID)+base64(0x01 ‖ seed).
        let b64 = GO_SKEY.splitn(5, '+').nth(4).unwrap();
        let material = B64.decode(b64).unwrap();
        assert_eq!(material[0], 0x01);
        let seed: [u8; 32] = material[1..].try_into().unwrap();
        Signer::new("PeterNeumann", SigningKey::from_bytes(&seed)).unwrap()
    }

    #[test]
    fn go_known_answer() {
        let signer = go_signer();
        assert_eq!(signer.verifier().to_string(), GO_VKEY);
        let mut note = Note::new(GO_TEXT).unwrap();
        note.sign(&signer).unwrap();
        assert_eq!(note.encode(), GO_SIGNED);

        let peter: Verifier = GO_VKEY.parse().unwrap();
        let enoch: Verifier = GO_ENOCH_VKEY.parse().unwrap();
        let both = format!("{GO_SIGNED}{GO_ENOCH_SIG}");
        let parsed = Note::parse(both.as_bytes()).unwrap();
        assert_eq!(parsed.encode(), both);
        let vs = [peter.clone()];
        let v = parsed.verify(&vs).unwrap();
        assert_eq!((v.signers.len(), v.unknown), (1, 1));
        let vs = [peter, enoch];
        let v = parsed.verify(&vs).unwrap();
        assert_eq!((v.signers.len(), v.unknown), (2, 0));
        assert_eq!(
            parsed.verify(&[]),
            Err(NoteError::NoKnownSignature { count: 2 })
        );
    }

    #[test]
    fn go_bad_verifier_keys_are_rejected() {
        // From TestNewVerifier: wrong key length with adjusted hash; unknown algorithm.
        assert!(matches!(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
                .parse::<Verifier>(),
            Err(NoteError::BadVerifierKey { .. })
        ));
        let e = "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            .parse::<Verifier>()
            .unwrap_err();
        assert!(e.to_string().contains("unknown signature type 0x65"), "{e}");
        // Every proper substring and every single-byte change must fail.
        let b = GO_VKEY.as_bytes();
        for i in 0..b.len() {
            for j in i + 1..=b.len() {
                if (i, j) != (0, b.len()) {
                    let s = String::from_utf8_lossy(&b[i..j]);
                    assert!(s.parse::<Verifier>().is_err(), "{s}");
                }
            }
            let mut c = b.to_vec();
            c[i] = c[i].wrapping_add(1);
            let s = String::from_utf8_lossy(&c);
            assert!(s.parse::<Verifier>().is_err(), "{s}");
        }
        assert_eq!(
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
                .parse::<Verifier>(),
            Err(NoteError::KeyIdMismatch {
                name: "PeterNeumann".into(),
                stated: "c74f20a4".into(),
                computed: "c74f20a3".into()
            })
        );
    }

    #[test]
    fn go_malformed_notes_are_rejected() {
        let sig = GO_SIGNED.split("\n\n").nth(1).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (GO_TEXT.to_string(), "blank line"),
            (format!("{GO_TEXT}\n"), "signature block"),
            (
                format!("{GO_TEXT}\n{}", &sig[..sig.len() - 1]),
                "signature block",
            ),
            (format!("\x01{GO_TEXT}\n{sig}"), "control character 0x01"),
            (format!("{GO_TEXT}\n{sig}Unexpected line.\n"), "line 2"),
            (
                format!("{GO_TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"),
                "line 1",
            ),
            (format!("{GO_TEXT}\n{}", sig.repeat(101)), "more than 100"),
        ];
        for (msg, want) in cases {
            let e = Note::parse(msg.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(want), "{msg:?}: {e}");
        }
        let mut bytes = format!("{GO_TEXT}\n{sig}").into_bytes();
        bytes.insert(0, 0xff);
        assert_eq!(Note::parse(&bytes), Err(NoteError::NotUtf8 { offset: 0 }));
        assert_eq!(
            Note::parse(&vec![b'a'; NOTE_BYTES_MAX + 1]),
            Err(NoteError::TooLarge {
                size: NOTE_BYTES_MAX + 1
            })
        );
    }

    #[test]
    fn bad_signature_by_known_key_is_an_error() {
        // From TestOpen: "ABCD" spliced into Peter's signature.
        let i = GO_TEXT.len() + 1 + 60;
        let msg = format!("{}ABCD{}", &GO_SIGNED[..i], &GO_SIGNED[i..]);
        let note = Note::parse(msg.as_bytes()).unwrap();
        let vs = [GO_VKEY.parse::<Verifier>().unwrap()];
        let e = note.verify(&vs).unwrap_err();
        assert!(
            matches!(&e, NoteError::InvalidSignature { name, key_id, .. } if name == "PeterNeumann" && key_id == "c74f20a3"),
            "{e}"
        );
    }

    #[test]
    fn ambiguous_verifiers_are_an_error() {
        let note = Note::parse(GO_SIGNED.as_bytes()).unwrap();
        let peter: Verifier = GO_VKEY.parse().unwrap();
        // Same name, same key ID (forced), different key.
        let mut other = Verifier::new(
            "PeterNeumann",
            Algorithm::Ed25519,
            SigningKey::from_bytes(&[7; 32]).verifying_key(),
        )
        .unwrap();
        other.key_id = peter.key_id;
        assert!(matches!(
            note.verify(&[peter.clone(), other]),
            Err(NoteError::AmbiguousKey { .. })
        ));
        // The same verifier twice is not ambiguous.
        assert!(note.verify(&[peter.clone(), peter]).is_ok());
    }
}
