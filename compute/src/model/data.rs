//! Character-level corpus: loading (any UTF-8 text file), the vocabulary (sorted unique
//! characters, as nanoGPT's `prepare.py`), the 90/10 train/validation split, and batch sampling
//! as a pure function of `(seed, stream, step)`.

use crate::numerics::fixed::hash3;
use std::path::Path;

/// Largest corpus file accepted.
pub const CORPUS_BYTES_MAX: u64 = 1 << 30;
/// Share of the corpus (in per cent of characters) used for training; the rest validates.
pub const TRAIN_PERCENT: usize = 90;
/// Hash stream of training batches.
pub const STREAM_TRAIN: u64 = 1;
/// Hash stream of the fixed evaluation batches on the training split.
pub const STREAM_EVAL_TRAIN: u64 = 2;
/// Hash stream of the fixed evaluation batches on the validation split.
pub const STREAM_EVAL_VAL: u64 = 3;

/// Why a corpus or batch could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read corpus {path}: {reason}")]
    Io {
        /// File path.
        path: String,
        /// The operating system's message.
        reason: String,
    },
    /// The file has no bytes.
    #[error("corpus {path} is empty: expected UTF-8 text")]
    Empty {
        /// File path.
        path: String,
    },
    /// The file is larger than `CORPUS_BYTES_MAX`.
    #[error("corpus {path} has {bytes} bytes, the maximum is {max}")]
    TooLarge {
        /// File path.
        path: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The file is not valid UTF-8.
    #[error("corpus {path} is not UTF-8: invalid byte sequence at byte offset {offset}")]
    NotUtf8 {
        /// File path.
        path: String,
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// A split has too few tokens for one sequence of the requested length.
    #[error(
        "{what} has {tokens} tokens, but a batch of context {block_size} needs at least {needed}"
    )]
    TooShort {
        /// Which token sequence.
        what: &'static str,
        /// Its length.
        tokens: usize,
        /// The context length.
        block_size: usize,
        /// Tokens needed.
        needed: usize,
    },
    /// Text contains a character outside the vocabulary.
    #[error("character {ch:?} at character offset {offset} is not in the vocabulary")]
    UnknownChar {
        /// The character.
        ch: char,
        /// Its position.
        offset: usize,
    },
}

/// The character vocabulary: sorted unique characters; token id = index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    /// Characters in ascending order.
    pub chars: Vec<char>,
}

impl Vocab {
    /// Vocabulary of a text.
    pub fn of_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self { chars }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// True for an empty vocabulary.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        text.chars()
            .enumerate()
            .map(|(offset, ch)| {
                self.chars
                    .binary_search(&ch)
                    .map(|i| i as u32)
                    .map_err(|_| DataError::UnknownChar { ch, offset })
            })
            .collect()
    }

    /// Text of token ids (ids outside the vocabulary become U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.chars.get(i as usize).copied().unwrap_or('\u{FFFD}'))
            .collect()
    }
}

/// A tokenized corpus split 90/10 as nanoGPT (`n·9/10` characters for training).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corpus {
    /// The vocabulary of the whole text.
    pub vocab: Vocab,
    /// Training tokens.
    pub train: Vec<u32>,
    /// Validation tokens.
    pub val: Vec<u32>,
}

impl Corpus {
    /// Reads and tokenizes a UTF-8 text file.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let name = path.display().to_string();
        let io = |e: std::io::Error| DataError::Io {
            path: name.clone(),
            reason: e.to_string(),
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > CORPUS_BYTES_MAX {
            return Err(DataError::TooLarge {
                path: name,
                bytes: len,
                max: CORPUS_BYTES_MAX,
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(&bytes, &name)
    }

    /// Tokenizes UTF-8 bytes; `name` is used in errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Self, DataError> {
        if bytes.is_empty() {
            return Err(DataError::Empty { path: name.into() });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
            path: name.into(),
            offset: e.valid_up_to(),
        })?;
        let vocab = Vocab::of_text(text);
        let ids = vocab.encode(text)?;
        let n_train = ids.len() * TRAIN_PERCENT / 100;
        Ok(Self {
            vocab,
            train: ids[..n_train].to_vec(),
            val: ids[n_train..].to_vec(),
        })
    }
}

/// One batch: `batch` sequences of `len` token ids and their next-token targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Inputs, row-major `batch × len`.
    pub idx: Vec<u32>,
    /// Targets (inputs shifted by one).
    pub targets: Vec<u32>,
    /// Number of sequences.
    pub batch: usize,
    /// Sequence length.
    pub len: usize,
}

/// Batch `step` of a token range: sequence `b` starts at
/// `offset = (hash3(seed, stream, step · batch + b) · (n − len)) >> 64` (a uniform index in
/// `[0, n − len)`, as nanoGPT's `torch.randint(len(data) − block_size)`), `n = tokens.len()`.
/// A pure function of its arguments: replay on any machine gives the same batch.
pub fn sample_batch(
    tokens: &[u32],
    what: &'static str,
    seed: u64,
    stream: u64,
    step: u64,
    batch: usize,
    len: usize,
) -> Result<Batch, DataError> {
    if tokens.len() < len + 1 {
        return Err(DataError::TooShort {
            what,
            tokens: tokens.len(),
            block_size: len,
            needed: len + 1,
        });
    }
    let span = (tokens.len() - len) as u128;
    let mut idx = Vec::with_capacity(batch * len);
    let mut targets = Vec::with_capacity(batch * len);
    for b in 0..batch as u64 {
        let h = hash3(
            seed,
            stream,
            step.wrapping_mul(batch as u64).wrapping_add(b),
        );
        let off = ((h as u128 * span) >> 64) as usize;
        idx.extend_from_slice(&tokens[off..off + len]);
        targets.extend_from_slice(&tokens[off + 1..off + 1 + len]);
    }
    Ok(Batch {
        idx,
        targets,
        batch,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn split_and_vocab_as_nanogpt() {
        let c = Corpus::from_bytes(b"hello world, hello!", "t").unwrap();
        assert_eq!(
            c.vocab.chars,
            vec![' ', '!', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w']
        );
        assert_eq!(c.train.len(), 19 * 9 / 10);
        assert_eq!(c.train.len() + c.val.len(), 19);
        assert_eq!(c.vocab.decode(&c.train[..5]), "hello");
    }

    #[test]
    fn bad_corpora_are_precise() {
        assert_eq!(
            Corpus::from_bytes(b"", "x.txt"),
            Err(DataError::Empty {
                path: "x.txt".into()
            })
        );
        assert_eq!(
            Corpus::from_bytes(b"abc\xffdef", "x.txt"),
            Err(DataError::NotUtf8 {
                path: "x.txt".into(),
                offset: 3
            })
        );
        let e = Corpus::load(Path::new("/nonexistent/corpus.txt")).unwrap_err();
        assert!(matches!(e, DataError::Io { .. }), "{e}");
    }

    #[test]
    fn batches_are_deterministic_and_shifted() {
        let tokens: Vec<u32> = (0..1000).collect();
        let a = sample_batch(&tokens, "train", 5, STREAM_TRAIN, 7, 4, 16).unwrap();
        let b = sample_batch(&tokens, "train", 5, STREAM_TRAIN, 7, 4, 16).unwrap();
        assert_eq!(a, b);
        for i in 0..a.idx.len() {
            assert_eq!(a.targets[i], a.idx[i] + 1);
        }
        let c = sample_batch(&tokens, "train", 5, STREAM_TRAIN, 8, 4, 16).unwrap();
        assert_ne!(a, c);
        assert!(matches!(
            sample_batch(&tokens[..16], "val", 5, STREAM_TRAIN, 0, 1, 16),
            Err(DataError::TooShort { needed: 17, .. })
        ));
    }

    proptest! {
        #[test]
        fn vocab_round_trips(text in "\\PC{1,200}") {
            let v = Vocab::of_text(&text);
            let ids = v.encode(&text).unwrap();
            prop_assert_eq!(v.decode(&ids), text);
        }

        #[test]
        fn non_utf8_is_rejected_at_its_offset(prefix in "[a-z]{0,50}", tail in proptest::collection::vec(any::<u8>(), 0..10)) {
            let mut bytes = prefix.clone().into_bytes();
            bytes.push(0xFF);
            bytes.extend(tail);
            prop_assert_eq!(
                Corpus::from_bytes(&bytes, "p"),
                Err(DataError::NotUtf8 { path: "p".into(), offset: prefix.len() })
            );
        }
    }
}
