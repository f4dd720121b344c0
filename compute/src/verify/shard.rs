//! Shards: content-addressed descriptions of a run of inner training steps, and their results.
//!
//! A [`ShardSpec`] names everything that determines the bits of a shard's computation: the model
//! shape, the numerics contract, the committed starting state, the data range (corpus hash and
//! byte offsets), the seed, the fixed-point hyperparameters, the global index of the first inner
//! step and the number of inner steps. Its id is SHA-256 of its canonical encoding; there is
//! exactly one encoding per spec (decode rejects everything else), so two parties that agree on an
//! id agree on the computation.
//!
//! A [`ShardResult`] is what a provider returns: the final state commitment, the commitment to
//! the parameter delta (see [`crate::verify::diloco`]), the Merkle root over the state hash after every
//! inner step (see [`crate::verify::commit`]), the compute units (a pure function of the spec, see
//! [`compute_units`]) and the provider's device fingerprint.
//!
//! Every byte of both encodings is documented in `specs/shard.md`.

use sha2::{Digest, Sha256};

use crate::codec::{Reader, Truncated};
use crate::verify::commit::Hash32;

/// Most inner steps one shard may contain.
pub const SHARD_STEPS_MAX: u32 = 1 << 20;
// A shard's model obeys the model's limits (`crate::model::transformer`), so every shard spec that
// validates can be trained and replayed.
/// Largest vocabulary a shard's model may have, in tokens ([`crate::model::transformer::VOCAB_MAX`]).
pub const MODEL_VOCAB_MAX: u32 = crate::model::transformer::VOCAB_MAX as u32;
/// Most transformer layers ([`crate::model::transformer::N_LAYER_MAX`]).
pub const MODEL_LAYERS_MAX: u32 = crate::model::transformer::N_LAYER_MAX as u32;
/// Most attention heads per layer ([`crate::model::transformer::N_HEAD_MAX`]).
pub const MODEL_HEADS_MAX: u32 = crate::model::transformer::N_HEAD_MAX as u32;
/// Widest embedding ([`crate::model::transformer::N_EMBD_MAX`]).
pub const MODEL_EMBD_MAX: u32 = crate::model::transformer::N_EMBD_MAX as u32;
/// Longest context, in tokens ([`crate::model::transformer::BLOCK_SIZE_MAX`]).
pub const MODEL_BLOCK_MAX: u32 = crate::model::transformer::BLOCK_SIZE_MAX as u32;
/// Largest batch, in sequences ([`crate::model::transformer::BATCH_SIZE_MAX`]).
pub const MODEL_BATCH_MAX: u32 = crate::model::transformer::BATCH_SIZE_MAX as u32;
/// Longest device fingerprint, in bytes of UTF-8.
pub const FINGERPRINT_BYTES_MAX: usize = 256;
/// Highest global step index a shard may reach (first step + steps).
pub const GLOBAL_STEPS_MAX: u64 = 1 << 40;
/// Multiply-accumulates per compute unit (2^20, about one mega-MAC).
pub const MACS_PER_COMPUTE_UNIT: u128 = 1 << 20;

/// Encoding magic of a [`ShardSpec`].
pub const SPEC_MAGIC: [u8; 4] = *b"LSHS";
/// Encoding magic of a [`ShardResult`].
pub const RESULT_MAGIC: [u8; 4] = *b"LSHR";
/// The only encoding version this code writes and reads.
pub const ENCODING_VERSION: u8 = 1;
/// Numerics contract "B16 v1": block floating point with 16-bit mantissas, exact integer dot
/// products requantized with round-half-even, integer tables (see `specs/compute.md`).
pub const NUMERICS_B16_V1: u16 = 1;
/// Encoded size of a [`ShardSpec`] in bytes (fixed).
pub const SPEC_BYTES: usize = 195;
/// Largest value of a hyperparameter field (the optimizer's bound).
pub const HYPER_VALUE_MAX: i64 = 1 << 50;
/// Largest Adam β in Q30 (β ≤ 1).
pub const BETA_Q30_MAX: i64 = 1 << 30;
/// Encoded size of a [`ShardResult`] without its fingerprint, in bytes.
pub const RESULT_FIXED_BYTES: usize = 147;
/// Largest encoded [`ShardResult`] in bytes.
pub const RESULT_BYTES_MAX: usize = RESULT_FIXED_BYTES + FINGERPRINT_BYTES_MAX;

/// Errors decoding or checking shard specs and results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The input ended inside a field.
    #[error("{what}: truncated at field `{field}` (offset {offset}): needs {needed} bytes, {remaining} left")]
    Truncated {
        /// Spec or result.
        what: &'static str,
        /// Field being read.
        field: &'static str,
        /// Byte offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        remaining: usize,
    },
    /// Bytes follow the last field.
    #[error("{what}: {extra} trailing bytes after the last field (offset {offset})")]
    TrailingBytes {
        /// Spec or result.
        what: &'static str,
        /// Offset of the first extra byte.
        offset: usize,
        /// Number of extra bytes.
        extra: usize,
    },
    /// The magic bytes are wrong.
    #[error("{what}: magic is {found:?}, expected {expected:?}")]
    BadMagic {
        /// Spec or result.
        what: &'static str,
        /// Magic found.
        found: [u8; 4],
        /// Magic expected.
        expected: [u8; 4],
    },
    /// An encoding version this code does not know.
    #[error("{what}: unknown encoding version {found}, this build reads version {supported}")]
    UnknownVersion {
        /// Spec or result.
        what: &'static str,
        /// Version found.
        found: u8,
        /// Version supported.
        supported: u8,
    },
    /// A numeric field outside its allowed range.
    #[error("{what}: field `{field}` is {value}, allowed {min}..={max}")]
    OutOfRange {
        /// Spec or result.
        what: &'static str,
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// Fields that are each in range but inconsistent with each other.
    #[error("{what}: field `{field}` is invalid: {reason}")]
    Invalid {
        /// Spec or result.
        what: &'static str,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The spec's content does not hash to the id it was received under.
    #[error("shard spec content hashes to {computed}, but it was received as {claimed}")]
    IdMismatch {
        /// Hex of the claimed id.
        claimed: String,
        /// Hex of SHA-256 of the received encoding.
        computed: String,
    },
    /// A result does not belong to, or does not fit, the spec it is checked against.
    #[error("shard result field `{field}` is {found}, the spec requires {expected}")]
    ResultMismatch {
        /// Field name.
        field: &'static str,
        /// Value the spec requires.
        expected: String,
        /// Value in the result.
        found: String,
    },
}

/// The transformer shape a shard trains (nanoGPT's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelShape {
    /// Vocabulary size in tokens.
    pub vocab_size: u32,
    /// Transformer layers.
    pub n_layer: u32,
    /// Attention heads per layer (divides `n_embd`).
    pub n_head: u32,
    /// Embedding width.
    pub n_embd: u32,
    /// Context length in tokens.
    pub block_size: u32,
    /// Sequences per batch.
    pub batch_size: u32,
}

/// Training hyperparameters in fixed point: the optimizer's own type (`optim::HyperQ`), the
/// integers that enter training and the state hash; no float enters anything that determines
/// the bits. Learning rates are Q40 (`lr = q / 2^40`), weight decay, betas and the gradient
/// clip Q30.
pub use crate::model::optim::HyperQ as Hyper;

impl Hyper {
    /// The fields in encoding order with their names and largest allowed values (the step
    /// counts as `i64`: values of 2^63 and more read as negative, outside every range).
    pub fn fields(&self) -> [(&'static str, i64, i64); 8] {
        [
            ("lr_q40", self.lr_q40, HYPER_VALUE_MAX),
            ("min_lr_q40", self.min_lr_q40, HYPER_VALUE_MAX),
            ("warmup_iters", self.warmup_iters as i64, HYPER_VALUE_MAX),
            (
                "lr_decay_iters",
                self.lr_decay_iters as i64,
                HYPER_VALUE_MAX,
            ),
            ("weight_decay_q30", self.weight_decay_q30, HYPER_VALUE_MAX),
            ("beta1_q30", self.beta1_q30, BETA_Q30_MAX),
            ("beta2_q30", self.beta2_q30, BETA_Q30_MAX),
            ("grad_clip_q30", self.grad_clip_q30, HYPER_VALUE_MAX),
        ]
    }
}

/// The content-addressed description of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardSpec {
    /// Numerics contract the computation follows ([`NUMERICS_B16_V1`]).
    pub numerics: u16,
    /// Model shape.
    pub model: ModelShape,
    /// State hash of the starting training state (parameters, optimizer moments, step).
    pub start_state: Hash32,
    /// SHA-256 of the whole corpus file.
    pub corpus_sha256: Hash32,
    /// First byte of the shard's data range in the corpus.
    pub data_start: u64,
    /// One past the last byte of the data range.
    pub data_end: u64,
    /// Seed of every counter-based random draw (batch sampling, stochastic rounding).
    pub seed: u64,
    /// Hyperparameters.
    pub hyper: Hyper,
    /// Global index of the first inner step (drives the learning-rate schedule and batches).
    pub first_step: u64,
    /// Number of inner steps, 1..=[`SHARD_STEPS_MAX`].
    pub steps: u32,
}

/// What a provider returns for a shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardResult {
    /// Id of the spec this result answers.
    pub shard_id: Hash32,
    /// Number of inner steps (leaves of the step tree).
    pub steps: u32,
    /// State hash after the last inner step (equals the last leaf of the step tree).
    pub final_state: Hash32,
    /// Commitment to the parameter delta final − start ([`crate::verify::diloco::ParamDelta::commitment`]).
    pub delta_commitment: Hash32,
    /// RFC 6962 Merkle root over the state hash after each inner step.
    pub step_root: Hash32,
    /// Compute units spent ([`compute_units`] of the spec; never wall time).
    pub compute_units: u64,
    /// Device fingerprint of the provider (backend, vendor, device, driver, shader hashes).
    pub fingerprint: String,
}

/// Multiply-accumulates of one training step (forward, backward) of `model`, counted from tensor
/// shapes: per token `L·12·d²` (QKV, projection, 4× MLP up and down) plus `V·d` (output head),
/// per sequence and layer `2·T²·d` (scores and weighted values over the full T×T square), and the
/// backward pass counted as twice the forward (two matmuls per forward matmul).
pub fn step_macs(model: &ModelShape) -> u128 {
    let (b, t, d, l, v) = (
        u128::from(model.batch_size),
        u128::from(model.block_size),
        u128::from(model.n_embd),
        u128::from(model.n_layer),
        u128::from(model.vocab_size),
    );
    let per_token = l * 12 * d * d + v * d;
    let attention = l * 2 * t * t * d;
    let forward = b * (t * per_token + attention);
    3 * forward
}

/// Compute units of a shard: `ceil(steps · step_macs / 2^20)`. A pure function of the spec, so
/// a slow device cannot inflate its claim. With the limits above it fits in `u64`.
pub fn compute_units(spec: &ShardSpec) -> u64 {
    let macs = step_macs(&spec.model) * u128::from(spec.steps);
    let units = macs.div_ceil(MACS_PER_COMPUTE_UNIT);
    u64::try_from(units).unwrap_or(u64::MAX)
}

impl From<Truncated<'static>> for ShardError {
    fn from(t: Truncated<'static>) -> Self {
        ShardError::Truncated {
            what: t.what,
            field: t.field,
            offset: t.offset,
            needed: t.needed,
            remaining: t.remaining,
        }
    }
}

/// Reads the magic and version of a spec or result.
fn read_header(r: &mut Reader<'_>, magic: [u8; 4]) -> Result<(), ShardError> {
    let found: [u8; 4] = r.array("magic")?;
    if found != magic {
        return Err(ShardError::BadMagic {
            what: r.what(),
            found,
            expected: magic,
        });
    }
    let version = r.u8("version")?;
    if version != ENCODING_VERSION {
        return Err(ShardError::UnknownVersion {
            what: r.what(),
            found: version,
            supported: ENCODING_VERSION,
        });
    }
    Ok(())
}

/// `TrailingBytes` unless the whole input was read.
fn read_end(r: &Reader<'_>) -> Result<(), ShardError> {
    if r.remaining() != 0 {
        return Err(ShardError::TrailingBytes {
            what: r.what(),
            offset: r.pos(),
            extra: r.remaining(),
        });
    }
    Ok(())
}

const SPEC: &str = "shard spec";
const RESULT: &str = "shard result";

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), ShardError> {
    if value < min || value > max {
        return Err(ShardError::OutOfRange {
            what: SPEC,
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

impl ShardSpec {
    /// Checks every field's range and the fields' consistency.
    pub fn validate(&self) -> Result<(), ShardError> {
        let invalid = |field: &'static str, reason: String| ShardError::Invalid {
            what: SPEC,
            field,
            reason,
        };
        let n = u64::from(NUMERICS_B16_V1);
        range("numerics", u64::from(self.numerics), n, n)?;
        let m = &self.model;
        range("vocab_size", m.vocab_size.into(), 2, MODEL_VOCAB_MAX.into())?;
        range("n_layer", m.n_layer.into(), 1, MODEL_LAYERS_MAX.into())?;
        range("n_head", m.n_head.into(), 1, MODEL_HEADS_MAX.into())?;
        range("n_embd", m.n_embd.into(), 1, MODEL_EMBD_MAX.into())?;
        range("block_size", m.block_size.into(), 1, MODEL_BLOCK_MAX.into())?;
        range("batch_size", m.batch_size.into(), 1, MODEL_BATCH_MAX.into())?;
        if !m.n_embd.is_multiple_of(m.n_head) {
            return Err(invalid(
                "n_head",
                format!("{} heads do not divide n_embd {}", m.n_head, m.n_embd),
            ));
        }
        if self.data_end <= self.data_start
            || self.data_end - self.data_start <= u64::from(m.block_size)
        {
            return Err(invalid(
                "data_end",
                format!(
                    "data range {}..{} must hold more than block_size {} bytes",
                    self.data_start, self.data_end, m.block_size
                ),
            ));
        }
        for (field, value, max) in self.hyper.fields() {
            if !(0..=max).contains(&value) {
                return Err(ShardError::OutOfRange {
                    what: SPEC,
                    field,
                    // Negative values show as their two's complement, as encoded.
                    value: value as u64,
                    min: 0,
                    max: max as u64,
                });
            }
        }
        range("steps", self.steps.into(), 1, SHARD_STEPS_MAX.into())?;
        range(
            "first_step",
            self.first_step,
            0,
            GLOBAL_STEPS_MAX - u64::from(self.steps),
        )?;
        Ok(())
    }

    /// The canonical encoding (fixed [`SPEC_BYTES`] bytes, big-endian; see `specs/shard.md`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SPEC_BYTES);
        out.extend_from_slice(&SPEC_MAGIC);
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.numerics.to_be_bytes());
        let m = &self.model;
        for v in [
            m.vocab_size,
            m.n_layer,
            m.n_head,
            m.n_embd,
            m.block_size,
            m.batch_size,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.start_state);
        out.extend_from_slice(&self.corpus_sha256);
        out.extend_from_slice(&self.data_start.to_be_bytes());
        out.extend_from_slice(&self.data_end.to_be_bytes());
        out.extend_from_slice(&self.seed.to_be_bytes());
        for (_, v, _) in self.hyper.fields() {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.first_step.to_be_bytes());
        out.extend_from_slice(&self.steps.to_be_bytes());
        debug_assert_eq!(out.len(), SPEC_BYTES);
        out
    }

    /// Decodes and validates a canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, ShardError> {
        let mut r = Reader::new(SPEC, bytes);
        read_header(&mut r, SPEC_MAGIC)?;
        let numerics = r.u16_be("numerics")?;
        let model = ModelShape {
            vocab_size: r.u32_be("vocab_size")?,
            n_layer: r.u32_be("n_layer")?,
            n_head: r.u32_be("n_head")?,
            n_embd: r.u32_be("n_embd")?,
            block_size: r.u32_be("block_size")?,
            batch_size: r.u32_be("batch_size")?,
        };
        let start_state = r.array("start_state")?;
        let corpus_sha256 = r.array("corpus_sha256")?;
        let data_start = r.u64_be("data_start")?;
        let data_end = r.u64_be("data_end")?;
        let seed = r.u64_be("seed")?;
        // Values ≥ 2^63 become negative here and are rejected by `validate` with their field.
        let hyper = Hyper {
            lr_q40: r.u64_be("lr_q40")? as i64,
            min_lr_q40: r.u64_be("min_lr_q40")? as i64,
            warmup_iters: r.u64_be("warmup_iters")?,
            lr_decay_iters: r.u64_be("lr_decay_iters")?,
            weight_decay_q30: r.u64_be("weight_decay_q30")? as i64,
            beta1_q30: r.u64_be("beta1_q30")? as i64,
            beta2_q30: r.u64_be("beta2_q30")? as i64,
            grad_clip_q30: r.u64_be("grad_clip_q30")? as i64,
        };
        let first_step = r.u64_be("first_step")?;
        let steps = r.u32_be("steps")?;
        read_end(&r)?;
        let spec = ShardSpec {
            numerics,
            model,
            start_state,
            corpus_sha256,
            data_start,
            data_end,
            seed,
            hyper,
            first_step,
            steps,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Content address: SHA-256 of the canonical encoding.
    pub fn id(&self) -> Hash32 {
        Sha256::digest(self.encode()).into()
    }

    /// Decodes a spec received under `claimed_id` and checks that its content hashes to it.
    pub fn decode_verified(bytes: &[u8], claimed_id: &Hash32) -> Result<Self, ShardError> {
        let computed: Hash32 = Sha256::digest(bytes).into();
        if &computed != claimed_id {
            return Err(ShardError::IdMismatch {
                claimed: hex::encode(claimed_id),
                computed: hex::encode(computed),
            });
        }
        Self::decode(bytes)
    }

    /// Global step index of inner step `inner` (0-based).
    pub fn global_step(&self, inner: u32) -> u64 {
        self.first_step + u64::from(inner)
    }
}

impl ShardResult {
    /// The canonical encoding (big-endian; see `specs/shard.md`).
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.fingerprint.len() <= FINGERPRINT_BYTES_MAX,
            "fingerprint longer than FINGERPRINT_BYTES_MAX; build results with ShardResult::new"
        );
        let mut out = Vec::with_capacity(RESULT_FIXED_BYTES + self.fingerprint.len());
        out.extend_from_slice(&RESULT_MAGIC);
        out.push(ENCODING_VERSION);
        out.extend_from_slice(&self.shard_id);
        out.extend_from_slice(&self.steps.to_be_bytes());
        out.extend_from_slice(&self.final_state);
        out.extend_from_slice(&self.delta_commitment);
        out.extend_from_slice(&self.step_root);
        out.extend_from_slice(&self.compute_units.to_be_bytes());
        // Length fits: checked against FINGERPRINT_BYTES_MAX (< 2^16) above.
        out.extend_from_slice(&(self.fingerprint.len() as u16).to_be_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        out
    }

    /// Decodes a canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, ShardError> {
        let mut r = Reader::new(RESULT, bytes);
        read_header(&mut r, RESULT_MAGIC)?;
        let shard_id = r.array("shard_id")?;
        let steps = r.u32_be("steps")?;
        if steps == 0 || steps > SHARD_STEPS_MAX {
            return Err(ShardError::OutOfRange {
                what: RESULT,
                field: "steps",
                value: steps.into(),
                min: 1,
                max: SHARD_STEPS_MAX.into(),
            });
        }
        let final_state = r.array("final_state")?;
        let delta_commitment = r.array("delta_commitment")?;
        let step_root = r.array("step_root")?;
        let compute_units = r.u64_be("compute_units")?;
        let len = r.u16_be("fingerprint_len")?;
        if usize::from(len) > FINGERPRINT_BYTES_MAX {
            return Err(ShardError::OutOfRange {
                what: RESULT,
                field: "fingerprint_len",
                value: len.into(),
                min: 0,
                max: FINGERPRINT_BYTES_MAX as u64,
            });
        }
        let fp = r.take("fingerprint", len.into())?;
        let fingerprint = std::str::from_utf8(fp)
            .map_err(|e| ShardError::Invalid {
                what: RESULT,
                field: "fingerprint",
                reason: format!("not UTF-8: {e}"),
            })?
            .to_owned();
        read_end(&r)?;
        Ok(ShardResult {
            shard_id,
            steps,
            final_state,
            delta_commitment,
            step_root,
            compute_units,
            fingerprint,
        })
    }

    /// SHA-256 of the canonical encoding.
    pub fn id(&self) -> Hash32 {
        Sha256::digest(self.encode()).into()
    }

    /// Checks that this result answers `spec`: same shard id, same step count, and the compute
    /// units the spec's shapes imply.
    pub fn check_against(&self, spec: &ShardSpec) -> Result<(), ShardError> {
        let id = spec.id();
        if self.shard_id != id {
            return Err(ShardError::ResultMismatch {
                field: "shard_id",
                expected: hex::encode(id),
                found: hex::encode(self.shard_id),
            });
        }
        if self.steps != spec.steps {
            return Err(ShardError::ResultMismatch {
                field: "steps",
                expected: spec.steps.to_string(),
                found: self.steps.to_string(),
            });
        }
        let units = compute_units(spec);
        if self.compute_units != units {
            return Err(ShardError::ResultMismatch {
                field: "compute_units",
                expected: units.to_string(),
                found: self.compute_units.to_string(),
            });
        }
        Ok(())
    }

    /// Whether two results commit to the same computation (everything but the fingerprint).
    pub fn same_commitments(&self, other: &ShardResult) -> bool {
        self.shard_id == other.shard_id
            && self.steps == other.steps
            && self.final_state == other.final_state
            && self.delta_commitment == other.delta_commitment
            && self.step_root == other.step_root
            && self.compute_units == other.compute_units
    }
}

/// Truncates a fingerprint to [`FINGERPRINT_BYTES_MAX`] bytes at a character boundary.
pub fn bounded_fingerprint(s: &str) -> String {
    if s.len() <= FINGERPRINT_BYTES_MAX {
        return s.to_owned();
    }
    let mut end = FINGERPRINT_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The shard spec of the `nanogpt-cpu` configuration (section 5 of issue #3) for a corpus of
/// `corpus_len` bytes hashing to `corpus_sha256`, training on the first 90% (nanoGPT's split),
/// starting from `start_state` at global step `first_step` for `steps` steps. Used by tests,
/// the golden example in `specs/shard.md` and the communication-volume numbers.
pub fn nanogpt_cpu_spec(
    start_state: Hash32,
    corpus_sha256: Hash32,
    corpus_len: u64,
    seed: u64,
    first_step: u64,
    steps: u32,
) -> ShardSpec {
    use crate::model::preset::NANOGPT_CPU as P;
    ShardSpec {
        numerics: NUMERICS_B16_V1,
        model: ModelShape {
            vocab_size: 65,
            n_layer: P.n_layer as u32,
            n_head: P.n_head as u32,
            n_embd: P.n_embd as u32,
            block_size: P.block_size as u32,
            batch_size: P.batch_size as u32,
        },
        start_state,
        corpus_sha256,
        data_start: 0,
        data_end: corpus_len * 9 / 10,
        seed,
        hyper: P
            .hyper
            .to_fixed()
            .expect("the nanoGPT preset's settings are in range"),
        first_step,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanogpt_spec_is_valid_and_fixed_size() {
        let s = nanogpt_cpu_spec([0; 32], [0; 32], 1_115_394, 1337, 0, 2000);
        assert_eq!(s.encode().len(), SPEC_BYTES);
        s.validate().unwrap();
        let mut bad = s.clone();
        bad.hyper.beta2_q30 = BETA_Q30_MAX + 1;
        assert!(matches!(
            bad.validate(),
            Err(ShardError::OutOfRange {
                field: "beta2_q30",
                ..
            })
        ));
    }

    #[test]
    fn compute_units_of_nanogpt_cpu_step() {
        let s = nanogpt_cpu_spec([0; 32], [0; 32], 1_115_394, 1337, 0, 1);
        // forward: 768 tokens × (4·12·128² + 65·128) + 12 sequences × 4 layers × 2·64²·128
        assert_eq!(step_macs(&s.model), 3 * (768 * 794_752 + 50_331_648));
        assert_eq!(compute_units(&s), 1891);
    }
}
