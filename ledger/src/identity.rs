//! Node identity: one ed25519 key per node.
//!
//! The same key authors the node's ledger entries, signs its log's checkpoints (as a C2SP
//! signed-note signer named after the log origin) and later becomes its libp2p PeerId.
//!
//! Key file (`specs/ledger.md`, "Key file"), UTF-8, exactly three lines each ending in `\n`:
//!
//! ```text
//! leam-node-key/v1
//! <base64 (standard, padded) of the 32-byte ed25519 seed>
//! <verifier key of the log: leam.ledger/<hex pubkey>+<hex keyID>+<base64(0x01 ‖ pubkey)>>
//! ```
//!
//! The file is created with mode 0600 (never widened) and published atomically without
//! overwriting; loading refuses a file that group or others can read or write.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::entry::PublicKey;
use crate::note;

/// First line of a key file.
pub const KEY_FILE_MAGIC: &str = "leam-node-key/v1";
/// Mode a key file is created with.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Permission bits that must be clear on a key file (any group or other access).
pub const KEY_FILE_FORBIDDEN_MODE_BITS: u32 = 0o077;
/// Largest key file accepted, bytes (the real one is about 200).
pub const KEY_FILE_BYTES_MAX: u64 = 1024;
/// Prefix of a node's log origin; the rest is the hex of its public key.
pub const ORIGIN_PREFIX: &str = "leam.ledger/";

/// Errors reading or writing a key file. None of them contains key material.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The key file is readable or writable by group or others.
    #[error("key file {path} has mode {mode:04o}; it must not be accessible by group or others (expected 0600)")]
    LoosePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file already exists (keygen never overwrites).
    #[error("key file {path} already exists; refusing to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// I/O error on the key file.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file's content is malformed.
    #[error("key file {path} line {line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected and found (never key material).
        reason: String,
    },
}

/// A node's signing identity. `Debug` redacts the secret; nothing here logs or prints it.
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &hex::encode(self.public_key()))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// A fresh identity from a cryptographic RNG (callers pass `rand_core::OsRng`).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Identity {
        Identity {
            key: SigningKey::generate(rng),
        }
    }

    /// An identity from a 32-byte seed (tests and golden vectors).
    pub fn from_seed(seed: &[u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The raw public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.verifying_key().to_bytes()
    }

    /// The origin (and note signer name) of this node's log: `leam.ledger/<hex pubkey>`.
    pub fn origin(&self) -> String {
        origin_of(&self.public_key())
    }

    /// The C2SP signed-note verifier key of this node's log:
    /// `<origin>+<hex keyID>+<base64(0x01 ‖ pubkey)>`.
    pub fn verifier_key(&self) -> String {
        verifier_key_of(&self.public_key())
    }

    /// A note signer for checkpoints of this node's log (named after the origin).
    pub fn note_signer(&self) -> note::Signer {
        note::Signer::new(&self.origin(), self.key.clone())
            .expect("a leam origin is a valid note key name")
    }

    /// The key file text. Wrapped in `Zeroizing` so the seed is wiped after use.
    fn file_text(&self) -> Zeroizing<String> {
        let seed =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.key.to_bytes()));
        Zeroizing::new(format!(
            "{KEY_FILE_MAGIC}\n{}\n{}\n",
            seed.as_str(),
            self.verifier_key()
        ))
    }

    /// Write a new key file at `path`: a temporary file in the same directory, created with
    /// mode 0600, synced, then hard-linked to `path` (atomic, and fails if `path` exists).
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            return Err(IdentityError::Exists {
                path: path.to_owned(),
            });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| io(std::io::Error::other("key path has no file name")))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(KEY_FILE_MODE)
                .open(&tmp)?;
            f.write_all(self.file_text().as_bytes())?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(IdentityError::Exists {
                path: path.to_owned(),
            }),
            Err(e) => Err(io(e)),
        }
    }

    /// Load a key file, refusing one that group or others can access.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let f = File::open(path).map_err(io)?;
        let meta = f.metadata().map_err(io)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & KEY_FILE_FORBIDDEN_MODE_BITS != 0 {
            return Err(IdentityError::LoosePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = Zeroizing::new(String::new());
        f.take(KEY_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Identity, IdentityError> {
        let bad = |line, reason: String| IdentityError::Malformed {
            path: path.to_owned(),
            line,
            reason,
        };
        if text.len() as u64 > KEY_FILE_BYTES_MAX {
            return Err(bad(
                1,
                format!("file is longer than KEY_FILE_BYTES_MAX = {KEY_FILE_BYTES_MAX} bytes"),
            ));
        }
        let Some(body) = text.strip_suffix('\n') else {
            return Err(bad(1, "file must end with a newline".into()));
        };
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() != 3 {
            return Err(bad(
                lines.len().min(4),
                format!("expected exactly 3 lines, found {}", lines.len()),
            ));
        }
        if lines[0] != KEY_FILE_MAGIC {
            return Err(bad(
                1,
                format!(
                    "expected {KEY_FILE_MAGIC:?}, found {:?}",
                    lines[0].chars().take(40).collect::<String>()
                ),
            ));
        }
        let seed = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(lines[1])
                .map_err(|_| bad(2, "the seed is not standard padded base64".into()))?,
        );
        let seed: Zeroizing<[u8; 32]> =
            Zeroizing::new(seed.as_slice().try_into().map_err(|_| {
                bad(
                    2,
                    format!("the seed must be 32 bytes, found {}", seed.len()),
                )
            })?);
        let id = Identity::from_seed(&seed);
        let expected = id.verifier_key();
        if lines[2] != expected {
            return Err(bad(
                3,
                format!(
                    "verifier key line does not match the seed: expected {expected}, found {}",
                    lines[2]
                ),
            ));
        }
        Ok(id)
    }
}

/// The log origin of a node key: `leam.ledger/<hex pubkey>`.
pub fn origin_of(key: &PublicKey) -> String {
    format!("{ORIGIN_PREFIX}{}", hex::encode(key))
}

/// The public key named by a log origin, if it is a leam origin.
pub fn key_of_origin(origin: &str) -> Option<PublicKey> {
    let hex_key = origin.strip_prefix(ORIGIN_PREFIX)?;
    if hex_key.len() != 64 || hex_key.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key).ok()?;
    Some(key)
}

/// The C2SP signed-note verifier of a node's log (type 0x01, named after the origin), or why
/// the key cannot be one.
pub fn log_verifier(key: &PublicKey) -> Result<note::Verifier, String> {
    let vk = VerifyingKey::from_bytes(key)
        .map_err(|_| format!("{} is not a valid ed25519 public key", hex::encode(key)))?;
    note::Verifier::new(&origin_of(key), note::Algorithm::Ed25519, vk).map_err(|e| e.to_string())
}

/// The C2SP verifier key string of a node's log; for invalid keys, the hex of the key.
pub fn verifier_key_of(key: &PublicKey) -> String {
    log_verifier(key)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| hex::encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_secret() {
        let id = Identity::from_seed(&[7; 32]);
        let seed_b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let dbg = format!("{id:?}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        assert!(
            !dbg.contains(&seed_b64) && !dbg.contains(&hex::encode([7u8; 32])),
            "{dbg}"
        );
    }

    #[test]
    fn origin_round_trips() {
        let id = Identity::from_seed(&[1; 32]);
        assert_eq!(key_of_origin(&id.origin()), Some(id.public_key()));
        assert_eq!(key_of_origin("leam.ledger/00"), None);
        assert_eq!(key_of_origin(&id.origin().to_uppercase()), None);
    }
}
