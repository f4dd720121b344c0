//! Versioned binary checkpoints: the vocabulary and the full training state, sealed by SHA-256.
//!
//! Layout (little-endian): magic `LEAMCKPT` (8 bytes), version u32 (= 1), vocabulary length u32,
//! each character as a u32 Unicode scalar (strictly ascending), state length u64, the state
//! ([`TrainState::encode`]), then SHA-256 of all preceding bytes (32 bytes).

use crate::codec::{Reader, Truncated};
use crate::model::data::Vocab;
use crate::model::train::{DecodeError, TrainState};
use sha2::{Digest, Sha256};
use std::path::Path;

/// File magic.
pub const MAGIC: &[u8; 8] = b"LEAMCKPT";
/// Format version written and accepted.
pub const VERSION: u32 = 1;
/// Largest checkpoint file accepted.
pub const CHECKPOINT_BYTES_MAX: u64 = 1 << 34;
/// The format's name in decoding errors.
const CHECKPOINT: &str = "checkpoint";

/// Why a checkpoint could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// File system error.
    #[error("checkpoint {path}: {reason}")]
    Io {
        /// Path.
        path: String,
        /// The operating system's message.
        reason: String,
    },
    /// The file is larger than the limit.
    #[error("checkpoint has {bytes} bytes, the maximum is {max}")]
    TooLarge {
        /// Size.
        bytes: u64,
        /// Limit.
        max: u64,
    },
    /// The SHA-256 trailer does not match the content.
    #[error("checkpoint checksum mismatch: content hashes to {computed}, trailer says {stored}")]
    Checksum {
        /// Hash of the content (hex).
        computed: String,
        /// Stored trailer (hex).
        stored: String,
    },
    /// Unsupported version.
    #[error("checkpoint version {found}: this build reads version {expected}")]
    Version {
        /// Version found.
        found: u32,
        /// Version supported.
        expected: u32,
    },
    /// Vocabulary entry invalid.
    #[error("checkpoint vocabulary entry {index}: {reason}")]
    Vocab {
        /// Entry.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Structure or state field invalid.
    #[error("checkpoint: {0}")]
    Decode(#[from] DecodeError),
}

impl From<Truncated<'_>> for CheckpointError {
    fn from(t: Truncated<'_>) -> Self {
        CheckpointError::Decode(t.into())
    }
}

/// A checkpoint: vocabulary plus training state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Character vocabulary (its length equals `state.model.vocab`).
    pub vocab: Vocab,
    /// Full training state.
    pub state: TrainState,
}

impl Checkpoint {
    /// Serialized bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.vocab.chars.len() as u32).to_le_bytes());
        for &c in &self.vocab.chars {
            out.extend_from_slice(&(c as u32).to_le_bytes());
        }
        let st = self.state.encode();
        out.extend_from_slice(&(st.len() as u64).to_le_bytes());
        out.extend_from_slice(&st);
        let h = Sha256::digest(&out);
        out.extend_from_slice(&h);
        out
    }

    /// Parses and validates bytes (checksum first, then every field).
    pub fn decode(bytes: &[u8]) -> Result<Self, CheckpointError> {
        let mut rd = Reader::new(CHECKPOINT, bytes);
        let magic = rd.take("magic", 8)?;
        if magic != MAGIC {
            return Err(DecodeError::Magic {
                expected: hex::encode(MAGIC),
                found: hex::encode(magic),
            }
            .into());
        }
        if bytes.len() < 8 + 32 {
            return Err(DecodeError::Truncated {
                offset: bytes.len(),
                what: "checksum".into(),
                need: 40 - bytes.len(),
            }
            .into());
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 32);
        let computed = Sha256::digest(body);
        if computed.as_slice() != trailer {
            return Err(CheckpointError::Checksum {
                computed: hex::encode(computed),
                stored: hex::encode(trailer),
            });
        }
        let mut rd = Reader::at(CHECKPOINT, body, 8);
        let version = rd.u32_le("version")?;
        if version != VERSION {
            return Err(CheckpointError::Version {
                found: version,
                expected: VERSION,
            });
        }
        let n = rd.u32_le("vocabulary length")? as usize;
        if n == 0 || n > crate::model::transformer::VOCAB_MAX {
            return Err(CheckpointError::Vocab {
                index: 0,
                reason: format!(
                    "length {n}, expected 1..={}",
                    crate::model::transformer::VOCAB_MAX
                ),
            });
        }
        let mut chars: Vec<char> = Vec::with_capacity(n);
        for index in 0..n {
            let u = rd.u32_le("vocabulary entry")?;
            let c = char::from_u32(u).ok_or_else(|| CheckpointError::Vocab {
                index,
                reason: format!("{u:#x} is not a Unicode scalar value"),
            })?;
            if let Some(&prev) = chars.last() {
                if c <= prev {
                    return Err(CheckpointError::Vocab {
                        index,
                        reason: format!("{c:?} does not follow {prev:?} in ascending order"),
                    });
                }
            }
            chars.push(c);
        }
        let len = rd.u64_le("state length")?;
        let left = rd.remaining() as u64;
        if len != left {
            return Err(DecodeError::Field {
                what: "state length".into(),
                offset: rd.pos() - 8,
                expected: format!("{left} (the remaining bytes)"),
                found: len.to_string(),
            }
            .into());
        }
        let state = TrainState::decode(&body[rd.pos()..])?;
        if state.model.vocab != chars.len() {
            return Err(CheckpointError::Vocab {
                index: chars.len(),
                reason: format!(
                    "vocabulary has {} characters but the model's vocab is {}",
                    chars.len(),
                    state.model.vocab
                ),
            });
        }
        Ok(Self {
            vocab: Vocab { chars },
            state,
        })
    }

    /// Writes to `path` (via a temporary file and rename, so a crash leaves the old file).
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let io = |e: std::io::Error| CheckpointError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.encode()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let io = |e: std::io::Error| CheckpointError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > CHECKPOINT_BYTES_MAX {
            return Err(CheckpointError::TooLarge {
                bytes: len,
                max: CHECKPOINT_BYTES_MAX,
            });
        }
        Self::decode(&std::fs::read(path).map_err(io)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::optim::Hyper;
    use crate::model::transformer::Config;
    use proptest::prelude::*;

    fn ckpt(seed: u64, vocab: usize, step: u64) -> Checkpoint {
        let cfg = Config {
            vocab,
            n_layer: 1,
            n_head: 1,
            n_embd: 4,
            block_size: 3,
        };
        let mut state =
            TrainState::new(cfg, Hyper::nanogpt_cpu().to_fixed().unwrap(), 1, seed).unwrap();
        state.step = step;
        let chars = (0..vocab as u32)
            .map(|i| char::from_u32(0x41 + i).unwrap())
            .collect();
        Checkpoint {
            vocab: Vocab { chars },
            state,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn round_trip(seed in any::<u64>(), vocab in 1usize..30, step in any::<u64>()) {
            let c = ckpt(seed, vocab, step);
            prop_assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn any_mutation_is_rejected(pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let c = ckpt(1, 5, 9);
            let mut b = c.encode();
            let i = pos.index(b.len());
            b[i] ^= flip;
            prop_assert!(Checkpoint::decode(&b).is_err());
        }

        #[test]
        fn truncation_is_rejected(cut in any::<prop::sample::Index>()) {
            let b = ckpt(1, 5, 9).encode();
            prop_assert!(Checkpoint::decode(&b[..cut.index(b.len())]).is_err());
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let b = ckpt(1, 5, 9).encode();
        let mut m = b.clone();
        m[20] ^= 1;
        assert!(matches!(
            Checkpoint::decode(&m),
            Err(CheckpointError::Checksum { .. })
        ));
        // Re-seal a body with a wrong version: the checksum passes, the version is reported.
        let mut v = b[..b.len() - 32].to_vec();
        v[8] = 2;
        let h = Sha256::digest(&v);
        v.extend_from_slice(&h);
        assert_eq!(
            Checkpoint::decode(&v),
            Err(CheckpointError::Version {
                found: 2,
                expected: 1
            })
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ckpt");
        ckpt(1, 5, 9).save(&p).unwrap();
        assert_eq!(Checkpoint::load(&p).unwrap(), ckpt(1, 5, 9));
        assert!(matches!(
            Checkpoint::load(&dir.path().join("missing")),
            Err(CheckpointError::Io { .. })
        ));
    }
}
