//! Single-node training: the full training state, one bit-exact step, its canonical encoding
//! and SHA-256 state hash, evaluation, and the training loop behind `leam train`.

use crate::codec::{Reader, Truncated};
use crate::model::data::STREAM_TRAIN;
use crate::model::data::{
    sample_batch, Batch, Corpus, DataError, STREAM_EVAL_TRAIN, STREAM_EVAL_VAL,
};
use crate::model::optim::{lr_q40, HyperQ, OptimError, MOMENT_INIT_EXP};
use crate::model::transformer::{
    forward_backward_on, init_params, Config, ModelError, Params, BATCH_SIZE_MAX,
};
use crate::numerics::fixed::{B16_MANT_MAX, B24_MANT_MAX};
use crate::numerics::kernels::{Bfp, KernelError, Kernels, EXP_ABS_MAX};
use crate::numerics::tensor::{Exec, Scalar, Tensor};
use sha2::{Digest, Sha256};

/// Magic and version of the canonical state encoding.
pub const STATE_MAGIC: &[u8; 8] = b"leamTS\x00\x01";
/// Domain prefix of the parameter commitment.
pub const PARAMS_DOMAIN: &[u8] = b"leam-params/1";
/// Largest number of training iterations of one run.
pub const ITERS_MAX: u64 = 1 << 32;
/// Largest number of evaluation batches.
pub const EVAL_ITERS_MAX: usize = 100_000;

/// Why training failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrainError {
    /// The model refused its input or a kernel failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The optimizer failed.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// Corpus or batch problem.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A setting is out of range.
    #[error("training setting `{name}` = {found}: expected {expected}")]
    Setting {
        /// Name.
        name: &'static str,
        /// Value.
        found: String,
        /// What was expected.
        expected: String,
    },
}

impl From<KernelError> for TrainError {
    fn from(e: KernelError) -> Self {
        TrainError::Model(ModelError::Kernel(e))
    }
}

/// The state encoding's name in decoding errors.
const STATE: &str = "training state";

/// Why a state encoding was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("state truncated at byte {offset} reading {what}: need {need} more bytes")]
    Truncated {
        /// Where.
        offset: usize,
        /// Which field.
        what: String,
        /// Bytes missing.
        need: usize,
    },
    /// Wrong magic or version.
    #[error("state magic/version: expected {expected}, found {found}")]
    Magic {
        /// Expected bytes (hex).
        expected: String,
        /// Found bytes (hex).
        found: String,
    },
    /// A field has an invalid value.
    #[error("state field {what} at byte {offset}: expected {expected}, found {found}")]
    Field {
        /// Which field.
        what: String,
        /// Where.
        offset: usize,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// Bytes after the end of the state.
    #[error("{extra} trailing bytes after the state at byte {offset}")]
    Trailing {
        /// Where the state ended.
        offset: usize,
        /// How many bytes follow.
        extra: usize,
    },
}

/// Statistics of one step (the loss is exact Q16; `loss` is for reporting).
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// The step that was performed (0-based).
    pub step: u64,
    /// Sum of per-position cross-entropy, Q16 nats.
    pub loss_sum_q16: i64,
    /// Mean loss in nats (reporting only).
    pub loss: f64,
    /// Learning rate used, Q40.
    pub lr_q40: i64,
    /// Whether gradient clipping was applied.
    pub clipped: bool,
}

/// The whole training state: everything that determines the next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainState {
    /// Model shape.
    pub model: Config,
    /// Integer optimizer hyperparameters.
    pub hyper: HyperQ,
    /// Sequences per batch.
    pub batch_size: usize,
    /// Seed of initialization and batch sampling.
    pub seed: u64,
    /// Number of steps done.
    pub step: u64,
    /// B24 master parameters, in `Config::param_specs` order.
    pub params: Vec<Bfp>,
    /// Adam first moments (B16).
    pub m: Vec<Bfp>,
    /// Square roots of Adam second moments (B16).
    pub r: Vec<Bfp>,
}

impl TrainState {
    /// Fresh state: parameters from [`init_params`], zero moments.
    pub fn new(
        model: Config,
        hyper: HyperQ,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self, TrainError> {
        model.validate()?;
        if batch_size == 0 || batch_size > BATCH_SIZE_MAX {
            return Err(TrainError::Setting {
                name: "batch_size",
                found: batch_size.to_string(),
                expected: format!("1..={BATCH_SIZE_MAX}"),
            });
        }
        let params = init_params(&model, seed);
        let zeros: Vec<Bfp> = params
            .iter()
            .map(|p| Bfp::zeros(p.len(), MOMENT_INIT_EXP))
            .collect();
        Ok(Self {
            model,
            hyper,
            batch_size,
            seed,
            step: 0,
            params,
            m: zeros.clone(),
            r: zeros,
        })
    }

    /// Training batch of step `step` from `tokens` (the shard's data range).
    pub fn batch_for(&self, tokens: &[u32], step: u64) -> Result<Batch, DataError> {
        sample_batch(
            tokens,
            "training tokens",
            self.seed,
            STREAM_TRAIN,
            step,
            self.batch_size,
            self.model.block_size,
        )
    }

    /// One training step on `batch`: forward, backward, AdamW; `step` advances by one. A run
    /// of steps keeps its tensors on the backend's device through a [`Session`] instead.
    pub fn step(&mut self, kernels: &dyn Kernels, batch: &Batch) -> Result<StepStats, TrainError> {
        let mut s = self.session(kernels)?;
        let stats = s.step(batch);
        s.finish()?;
        stats
    }

    /// A run of steps with the state's tensors where `kernels` keeps them: moved into host
    /// tensors (no copy) for a backend in host memory, uploaded once for a device (wgpu), so
    /// that a step moves only its batch up and its loss down. [`Session::finish`] (or drop)
    /// writes the state back.
    pub fn session<'s, 'k>(
        &'s mut self,
        kernels: &'k dyn Kernels,
    ) -> Result<Session<'s, 'k>, TrainError> {
        self.session_on(Exec::new(kernels))
    }

    /// A session on a given executor (`Exec::host_only` for the baseline of
    /// `leam compute bench --train-step --host-tensors`).
    pub fn session_on<'s, 'k>(&'s mut self, ex: Exec<'k>) -> Result<Session<'s, 'k>, TrainError> {
        let resident = ex.is_resident();
        let place = |v: &mut Vec<Bfp>| -> Result<Vec<Tensor>, KernelError> {
            if resident {
                // The host copy stays: it is the state until the session writes back.
                v.iter().map(|b| ex.put_copy(b)).collect()
            } else {
                Ok(std::mem::take(v).into_iter().map(Tensor::Host).collect())
            }
        };
        let params = place(&mut self.params).map_err(ModelError::Kernel)?;
        let m = place(&mut self.m).map_err(ModelError::Kernel)?;
        let r = place(&mut self.r).map_err(ModelError::Kernel)?;
        Ok(Session {
            state: Live {
                params,
                m,
                r,
                step: self.step,
            },
            st: self,
            ex,
            written: false,
        })
    }

    /// Mean loss (nats) over `iters` fixed batches of `tokens` drawn from `stream` (inside one
    /// `rayon::scope`, as [`TrainState::step`]).
    pub fn evaluate(
        &self,
        kernels: &dyn Kernels,
        tokens: &[u32],
        what: &'static str,
        stream: u64,
        iters: usize,
    ) -> Result<f64, TrainError> {
        let ex = Exec::new(kernels);
        let params = Params::Host(&self.params);
        rayon::scope(|_| self.evaluate_in_pool(&ex, params, tokens, what, stream, iters))
    }

    #[allow(clippy::too_many_arguments)] // `evaluate`'s arguments, with the parameters apart
    fn evaluate_in_pool(
        &self,
        ex: &Exec<'_>,
        params: Params<'_>,
        tokens: &[u32],
        what: &'static str,
        stream: u64,
        iters: usize,
    ) -> Result<f64, TrainError> {
        let batch_loss = |i: u64| -> Result<(Scalar, usize), TrainError> {
            let b = sample_batch(
                tokens,
                what,
                self.seed,
                stream,
                i,
                self.batch_size,
                self.model.block_size,
            )?;
            let (pass, _) = forward_backward_on(
                ex,
                &self.model,
                params,
                &b.idx,
                Some(&b.targets),
                b.batch,
                b.len,
                false,
            )?;
            Ok((pass.loss_sum_q16, pass.positions))
        };
        // Two batches at a time, one per `rayon::join` arm: the forward passes overlap their
        // serial parts, and at most two sets of activations are alive. The integer sum does not
        // depend on the order; errors are taken in batch order, as a sequential loop would.
        let iters = iters as u64;
        let all = || -> Result<Vec<(Scalar, usize)>, TrainError> {
            let mut out = Vec::with_capacity(iters as usize);
            for i in (0..iters).step_by(2) {
                let (first, second) = rayon::join(
                    || batch_loss(i),
                    || (i + 1 < iters).then(|| batch_loss(i + 1)).transpose(),
                );
                out.extend(std::iter::once(first?).chain(second?));
            }
            Ok(out)
        };
        // On a device, recorded without waiting for exponents; the checked path again if a
        // range check fails afterwards (see `Session::step`).
        let losses = match ex.deferred(all) {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => all()?,
            Err(e) => return Err(ModelError::Kernel(e).into()),
        };
        let mut sum: i128 = 0;
        let mut positions = 0usize;
        for (loss, n) in losses {
            sum += ex.value(&loss).map_err(ModelError::Kernel)? as i128;
            positions += n;
        }
        Ok(sum as f64 / 65536.0 / positions.max(1) as f64)
    }

    /// Canonical little-endian encoding: magic, config (5 × u32), batch size u32, seed u64,
    /// integer hyperparameters (8 × 64-bit), step u64, then the params, m and r tensors, each
    /// as exponent i32 and its mantissas i32 (lengths implied by the config).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + 12 * self.model.n_params());
        out.extend_from_slice(STATE_MAGIC);
        encode_header(&mut out, &self.model);
        out.extend_from_slice(&(self.batch_size as u32).to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        let h = &self.hyper;
        for v in [
            h.lr_q40,
            h.min_lr_q40,
            h.warmup_iters as i64,
            h.lr_decay_iters as i64,
            h.weight_decay_q30,
            h.beta1_q30,
            h.beta2_q30,
            h.grad_clip_q30,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.step.to_le_bytes());
        for t in self.params.iter().chain(&self.m).chain(&self.r) {
            encode_tensor(&mut out, t);
        }
        out
    }

    /// Inverse of [`TrainState::encode`]; rejects anything that is not exactly a valid state
    /// (config limits, mantissa bounds, exponent range, non-negative `r`, trailing bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut rd = Reader::new(STATE, bytes);
        let magic = rd.take("magic", 8)?;
        if magic != STATE_MAGIC {
            return Err(DecodeError::Magic {
                expected: hex::encode(STATE_MAGIC),
                found: hex::encode(magic),
            });
        }
        let model = decode_header(&mut rd)?;
        let at = rd.pos();
        let batch_size = rd.u32_le("batch_size")? as usize;
        if batch_size == 0 || batch_size > BATCH_SIZE_MAX {
            return Err(DecodeError::Field {
                what: "batch_size".into(),
                offset: at,
                expected: format!("1..={BATCH_SIZE_MAX}"),
                found: batch_size.to_string(),
            });
        }
        let seed = rd.u64_le("seed")?;
        let mut hv = [0i64; 8];
        for (i, v) in hv.iter_mut().enumerate() {
            *v = rd.u64_le(&format!("hyperparameter {i}"))? as i64;
        }
        let hyper = HyperQ {
            lr_q40: hv[0],
            min_lr_q40: hv[1],
            warmup_iters: hv[2] as u64,
            lr_decay_iters: hv[3] as u64,
            weight_decay_q30: hv[4],
            beta1_q30: hv[5],
            beta2_q30: hv[6],
            grad_clip_q30: hv[7],
        };
        for (i, &v) in hv.iter().enumerate() {
            let max = if i == 5 || i == 6 {
                1i64 << 30
            } else {
                1i64 << 50
            };
            if !(0..=max).contains(&v) {
                return Err(DecodeError::Field {
                    what: format!("hyperparameter {i}"),
                    offset: at + 12 + 8 * i,
                    expected: format!("0..={max}"),
                    found: v.to_string(),
                });
            }
        }
        let step = rd.u64_le("step")?;
        let specs = model.param_specs();
        let mut parts: [Vec<Bfp>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for (pi, part) in parts.iter_mut().enumerate() {
            let (kind, max, nonneg) = match pi {
                0 => ("params", B24_MANT_MAX, false),
                1 => ("m", B16_MANT_MAX, false),
                _ => ("r", B16_MANT_MAX, true),
            };
            for s in &specs {
                part.push(read_tensor(
                    &mut rd,
                    &format!("{kind} {}", s.name),
                    s.len(),
                    max,
                    nonneg,
                )?);
            }
        }
        if rd.remaining() != 0 {
            return Err(DecodeError::Trailing {
                offset: rd.pos(),
                extra: rd.remaining(),
            });
        }
        let [params, m, r] = parts;
        Ok(Self {
            model,
            hyper,
            batch_size,
            seed,
            step,
            params,
            m,
            r,
        })
    }

    /// SHA-256 of the canonical encoding: the per-step state hash.
    pub fn state_hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Commitment to the parameters alone: SHA-256 of `PARAMS_DOMAIN`, the config header and
    /// the params tensors in the state encoding.
    pub fn params_commitment(&self) -> [u8; 32] {
        params_commitment(&self.model, &self.params)
    }
}

/// See [`TrainState::params_commitment`].
pub fn params_commitment(model: &Config, params: &[Bfp]) -> [u8; 32] {
    let mut out = Vec::new();
    out.extend_from_slice(PARAMS_DOMAIN);
    encode_header(&mut out, model);
    for t in params {
        encode_tensor(&mut out, t);
    }
    Sha256::digest(out).into()
}

/// Domain and version of a [`params_blob`].
pub const PARAMS_BLOB_MAGIC: &[u8] = b"leam-params-blob/1";
/// Bytes per mantissa in a [`params_blob`]: B24 mantissas (|x| ≤ 2^23 − 1) fit 24-bit two's
/// complement exactly.
pub const PARAMS_BLOB_MANT_BYTES: usize = 3;

/// The parameters as a worker fetches them to build a fresh start state
/// ([`decode_params_blob`], then `crate::verify::diloco::fresh_start_state`): `PARAMS_BLOB_MAGIC`, the config header, then per
/// params tensor its exponent (i32 LE) and its mantissas as 24-bit little-endian two's
/// complement: 3 bytes per parameter, against 12 for a whole state. (Mantissas of B24 master
/// parameters never exceed 2^23 − 1; a wider one is a programmer error.)
pub fn params_blob(model: &Config, params: &[Bfp]) -> Vec<u8> {
    let elems: usize = params.iter().map(Bfp::len).sum();
    let mut out = Vec::with_capacity(64 + PARAMS_BLOB_MANT_BYTES * elems + 4 * params.len());
    out.extend_from_slice(PARAMS_BLOB_MAGIC);
    encode_header(&mut out, model);
    for t in params {
        out.extend_from_slice(&t.exp.to_le_bytes());
        for &v in &t.mant {
            assert!(
                v.abs() <= B24_MANT_MAX,
                "params blob: mantissa {v} is not B24"
            );
            out.extend_from_slice(&v.to_le_bytes()[..PARAMS_BLOB_MANT_BYTES]);
        }
    }
    out
}

/// Inverse of [`params_blob`] for `model`: the params tensors, checked as the state decoder
/// checks them (exponent range, B24 mantissas). A blob of another model, of a wrong length or
/// with an out-of-range value is refused, naming the tensor and field.
pub fn decode_params_blob(model: &Config, blob: &[u8]) -> Result<Vec<Bfp>, DecodeError> {
    let mut prefix = PARAMS_BLOB_MAGIC.to_vec();
    encode_header(&mut prefix, model);
    let Some(packed) = blob.strip_prefix(prefix.as_slice()) else {
        let n = prefix.len().min(blob.len());
        return Err(DecodeError::Field {
            what: "params blob magic and model header".into(),
            offset: 0,
            expected: hex::encode(&prefix),
            found: hex::encode(&blob[..n]),
        });
    };
    let specs = model.param_specs();
    let packed_len: usize = specs
        .iter()
        .map(|t| 4 + PARAMS_BLOB_MANT_BYTES * t.len())
        .sum();
    if packed.len() != packed_len {
        return Err(DecodeError::Field {
            what: "params blob tensors".into(),
            offset: prefix.len(),
            expected: format!("{packed_len} bytes"),
            found: format!("{} bytes", packed.len()),
        });
    }
    // Widened to the state encoding's tensors (exponent as is, each mantissa sign-extended) so
    // that one tensor reader checks both formats.
    let mut wide = Vec::with_capacity(packed_len / PARAMS_BLOB_MANT_BYTES * 4 + 4 * specs.len());
    let mut at = 0;
    for t in &specs {
        wide.extend_from_slice(&packed[at..at + 4]);
        at += 4;
        for m in packed[at..at + PARAMS_BLOB_MANT_BYTES * t.len()].chunks_exact(3) {
            let fill = if m[2] & 0x80 != 0 { 0xff } else { 0 };
            wide.extend_from_slice(&[m[0], m[1], m[2], fill]);
        }
        at += PARAMS_BLOB_MANT_BYTES * t.len();
    }
    let mut rd = Reader::new("params blob (widened)", &wide);
    specs
        .iter()
        .map(|t| {
            read_tensor(
                &mut rd,
                &format!("params {}", t.name),
                t.len(),
                B24_MANT_MAX,
                false,
            )
        })
        .collect()
}

fn encode_header(out: &mut Vec<u8>, m: &Config) {
    for v in [m.vocab, m.n_layer, m.n_head, m.n_embd, m.block_size] {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
}

fn encode_tensor(out: &mut Vec<u8>, t: &Bfp) {
    out.extend_from_slice(&t.exp.to_le_bytes());
    for &v in &t.mant {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn decode_header(rd: &mut Reader<'_>) -> Result<Config, DecodeError> {
    let at = rd.pos();
    let mut v = [0usize; 5];
    for (i, name) in ["vocab", "n_layer", "n_head", "n_embd", "block_size"]
        .iter()
        .enumerate()
    {
        v[i] = rd.u32_le(name)? as usize;
    }
    let model = Config {
        vocab: v[0],
        n_layer: v[1],
        n_head: v[2],
        n_embd: v[3],
        block_size: v[4],
    };
    model.validate().map_err(|e| DecodeError::Field {
        what: "model config".into(),
        offset: at,
        expected: "a valid config".into(),
        found: e.to_string(),
    })?;
    Ok(model)
}

/// One tensor of the state encoding: exponent, then `len` mantissas bounded by `max` (and
/// nonnegative when `nonneg`), little-endian i32s.
fn read_tensor(
    rd: &mut Reader<'_>,
    what: &str,
    len: usize,
    max: i32,
    nonneg: bool,
) -> Result<Bfp, DecodeError> {
    let at = rd.pos();
    let exp = rd.u32_le(&format!("{what} exponent"))? as i32;
    if (exp as i64).abs() > EXP_ABS_MAX {
        return Err(DecodeError::Field {
            what: format!("{what} exponent"),
            offset: at,
            expected: format!("|exp| <= {EXP_ABS_MAX}"),
            found: exp.to_string(),
        });
    }
    let start = rd.pos();
    let raw = rd.i32s_le(&format!("{what} mantissas"), len)?;
    let mut mant = Vec::with_capacity(len);
    for (i, v) in raw.enumerate() {
        if v.unsigned_abs() > max as u32 || (nonneg && v < 0) {
            return Err(DecodeError::Field {
                what: format!("{what} mantissa {i}"),
                offset: start + 4 * i,
                expected: if nonneg {
                    format!("0..={max}")
                } else {
                    format!("|m| <= {max}")
                },
                found: v.to_string(),
            });
        }
        mant.push(v);
    }
    Ok(Bfp::new(mant, exp))
}

impl From<Truncated<'_>> for DecodeError {
    fn from(t: Truncated<'_>) -> Self {
        DecodeError::Truncated {
            offset: t.offset,
            what: t.field.into(),
            need: t.needed - t.remaining,
        }
    }
}

/// A session's tensors and step count (cheap to clone when resident: handles).
#[derive(Clone, Debug)]
struct Live {
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    r: Vec<Tensor>,
    step: u64,
}

/// One training step of a session.
fn step_once(
    st: &TrainState,
    ex: &Exec<'_>,
    live: &mut Live,
    batch: &Batch,
) -> Result<StepStats, TrainError> {
    let (pass, logits) = forward_backward_on(
        ex,
        &st.model,
        Params::Tensors(&live.params),
        &batch.idx,
        Some(&batch.targets),
        batch.batch,
        batch.len,
        true,
    )?;
    drop(logits);
    let it = live.step;
    let clipped = crate::model::optim::step(
        ex,
        &st.hyper,
        it,
        &st.model.param_specs(),
        &mut live.params,
        &mut live.m,
        &mut live.r,
        &pass.grads,
    )
    .map_err(ModelError::Kernel)?;
    live.step += 1;
    // Read after the optimizer is recorded: the loss and the clipping flag come with the
    // step's one submission.
    let loss_sum_q16 = ex.value(&pass.loss_sum_q16).map_err(ModelError::Kernel)?;
    let clipped = ex.value(&clipped).map_err(ModelError::Kernel)? != 0;
    Ok(StepStats {
        step: it,
        loss_sum_q16,
        loss: loss_sum_q16 as f64 / 65536.0 / pass.positions.max(1) as f64,
        lr_q40: lr_q40(&st.hyper, it),
        clipped,
    })
}

/// A [`TrainState`] whose tensors live where the backend keeps them (see
/// [`TrainState::session`]).
#[derive(Debug)]
pub struct Session<'s, 'k> {
    st: &'s mut TrainState,
    ex: Exec<'k>,
    state: Live,
    /// The state was written back, or the one attempt failed (nothing to do on drop).
    written: bool,
}

impl Session<'_, '_> {
    /// Steps done, counting this session's.
    pub fn step_number(&self) -> u64 {
        self.state.step
    }

    /// The state's settings (its tensors are not current until [`Session::finish`]).
    pub fn state_ref(&self) -> &TrainState {
        self.st
    }

    /// The executor (its backend and fallback count).
    pub fn exec(&self) -> &Exec<'_> {
        &self.ex
    }

    /// One training step on `batch` (as [`TrainState::step`]).
    pub fn step(&mut self, batch: &Batch) -> Result<StepStats, TrainError> {
        rayon::scope(|_| self.step_in_pool(batch))
    }

    /// On a device, the step is recorded without waiting for exponents ([`Exec::deferred`]);
    /// if a range check the host makes afterwards fails, the state goes back to what it was
    /// before the step, and the step runs again on the checked path (same bits either way).
    fn step_in_pool(&mut self, batch: &Batch) -> Result<StepStats, TrainError> {
        if !self.ex.is_resident() {
            return step_once(self.st, &self.ex, &mut self.state, batch);
        }
        let saved = self.state.clone();
        let (st, ex, state) = (&*self.st, &self.ex, &mut self.state);
        match ex.deferred(|| step_once(st, ex, state, batch)) {
            Ok(Ok(stats)) => Ok(stats),
            // Deferred or not, a device failure is the same failure.
            Err(e) => Err(ModelError::Kernel(e).into()),
            Ok(Err(_)) => {
                self.state = saved;
                step_once(self.st, &self.ex, &mut self.state, batch)
            }
        }
    }

    /// Mean loss as [`TrainState::evaluate`], on this session's parameters.
    pub fn evaluate(
        &self,
        tokens: &[u32],
        what: &'static str,
        stream: u64,
        iters: usize,
    ) -> Result<f64, TrainError> {
        let params = Params::Tensors(&self.state.params);
        rayon::scope(|_| {
            self.st
                .evaluate_in_pool(&self.ex, params, tokens, what, stream, iters)
        })
    }

    /// Writes the state back (moving host tensors, reading resident ones back) and ends the
    /// session.
    pub fn finish(mut self) -> Result<(), TrainError> {
        self.write_back()
    }

    /// Once, all or nothing: the state changes only if every tensor could be read back (the CPU
    /// path moves its tensors and copies nothing); otherwise it stays as before the session.
    fn write_back(&mut self) -> Result<(), TrainError> {
        if std::mem::replace(&mut self.written, true) {
            return Ok(());
        }
        // One read-back for the whole state.
        let (np, nm) = (self.state.params.len(), self.state.m.len());
        let all: Vec<Tensor> = std::mem::take(&mut self.state.params)
            .into_iter()
            .chain(std::mem::take(&mut self.state.m))
            .chain(std::mem::take(&mut self.state.r))
            .collect();
        let mut all = self.ex.take_all(all).map_err(ModelError::Kernel)?;
        let r = all.split_off(np + nm);
        let m = all.split_off(np);
        let p = all;
        self.st.params = p;
        self.st.m = m;
        self.st.r = r;
        self.st.step = self.state.step;
        Ok(())
    }
}

impl Drop for Session<'_, '_> {
    fn drop(&mut self) {
        // A session dropped early (an error, a panic) leaves the state it reached if it can be
        // read back; otherwise the state before the session (device copies) stays.
        let _ = self.write_back();
    }
}

/// Settings of the training loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopOptions {
    /// Total iterations (the state's `step` counts up to it).
    pub max_iters: u64,
    /// Evaluate every this many iterations (and at the end); 0 disables.
    pub eval_interval: u64,
    /// Batches per evaluation.
    pub eval_iters: usize,
    /// Show an indicatif progress bar on stderr.
    pub progress: bool,
}

/// One evaluation point of the loss curve.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalPoint {
    /// Iteration.
    pub step: u64,
    /// Mean training loss over the fixed evaluation batches.
    pub train_loss: f64,
    /// Mean validation loss.
    pub val_loss: f64,
}

/// Trains `state` on `corpus` until `max_iters`, evaluating as configured; calls `report` with
/// each evaluation point (the CLI prints them). Returns the loss curve.
pub fn run(
    kernels: &dyn Kernels,
    state: &mut TrainState,
    corpus: &Corpus,
    opts: &LoopOptions,
    report: &mut dyn FnMut(&EvalPoint),
) -> Result<Vec<EvalPoint>, TrainError> {
    if opts.max_iters > ITERS_MAX {
        return Err(TrainError::Setting {
            name: "max_iters",
            found: opts.max_iters.to_string(),
            expected: format!("at most {ITERS_MAX}"),
        });
    }
    if opts.eval_iters > EVAL_ITERS_MAX {
        return Err(TrainError::Setting {
            name: "eval_iters",
            found: opts.eval_iters.to_string(),
            expected: format!("at most {EVAL_ITERS_MAX}"),
        });
    }
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(opts.max_iters);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_position(state.step);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut curve = Vec::new();
    let mut eval = |s: &Session<'_, '_>, curve: &mut Vec<EvalPoint>| -> Result<(), TrainError> {
        let train_loss = s.evaluate(
            &corpus.train,
            "training split",
            STREAM_EVAL_TRAIN,
            opts.eval_iters,
        )?;
        let val_loss = s.evaluate(
            &corpus.val,
            "validation split",
            STREAM_EVAL_VAL,
            opts.eval_iters,
        )?;
        let p = EvalPoint {
            step: s.step_number(),
            train_loss,
            val_loss,
        };
        bar.suspend(|| report(&p));
        curve.push(p);
        Ok(())
    };
    // One session for the whole run: on a device, the state goes up once and comes back at
    // the end.
    let mut session = state.session(kernels)?;
    while session.step_number() < opts.max_iters {
        let step = session.step_number();
        if opts.eval_interval > 0 && step.is_multiple_of(opts.eval_interval) && opts.eval_iters > 0
        {
            eval(&session, &mut curve)?;
        }
        let batch = session.state_ref().batch_for(&corpus.train, step)?;
        let st = session.step(&batch)?;
        bar.set_message(format!("loss {:.4}", st.loss));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if opts.eval_iters > 0 && curve.last().map(|p| p.step) != Some(session.step_number()) {
        eval(&session, &mut curve)?;
    }
    session.finish()?;
    Ok(curve)
}

/// Mean seconds per training step of `state` on `backend` over `steps` steps (after one
/// warm-up step), batches from `tokens`.
pub fn train_step_secs(
    backend: &dyn Kernels,
    state: &mut TrainState,
    tokens: &[u32],
    steps: u64,
) -> Result<f64, TrainError> {
    let mut s = state.session(backend)?;
    let one = |s: &mut Session<'_, '_>| -> Result<(), TrainError> {
        let batch = s.state_ref().batch_for(tokens, s.step_number())?;
        s.step(&batch)?;
        Ok(())
    };
    one(&mut s)?;
    let t = std::time::Instant::now();
    for _ in 0..steps.max(1) {
        one(&mut s)?;
    }
    let secs = t.elapsed().as_secs_f64() / steps.max(1) as f64;
    s.finish()?;
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::optim::Hyper;
    use crate::numerics::cpu::CpuKernels;
    use proptest::prelude::*;

    fn tiny() -> TrainState {
        let cfg = Config {
            vocab: 11,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            block_size: 6,
        };
        TrainState::new(cfg, Hyper::nanogpt_cpu().to_fixed().unwrap(), 2, 3).unwrap()
    }

    #[test]
    fn steps_are_reproducible_and_change_the_hash() {
        let tokens: Vec<u32> = (0..200).map(|i| (i * 7 % 11) as u32).collect();
        let mut a = tiny();
        let mut b = tiny();
        let h0 = a.state_hash();
        for _ in 0..3 {
            let ba = a.batch_for(&tokens, a.step).unwrap();
            a.step(&CpuKernels, &ba).unwrap();
            let bb = b.batch_for(&tokens, b.step).unwrap();
            b.step(&CpuKernels, &bb).unwrap();
            assert_eq!(a.state_hash(), b.state_hash());
        }
        assert_ne!(a.state_hash(), h0);
        assert_eq!(TrainState::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn decode_rejects_precisely() {
        let s = tiny();
        let enc = s.encode();
        assert!(matches!(
            TrainState::decode(&enc[..enc.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut extra = enc.clone();
        extra.push(0);
        assert_eq!(
            TrainState::decode(&extra),
            Err(DecodeError::Trailing {
                offset: enc.len(),
                extra: 1
            })
        );
        let mut bad = enc.clone();
        bad[0] ^= 1;
        assert!(matches!(
            TrainState::decode(&bad),
            Err(DecodeError::Magic { .. })
        ));
        // Last 4 bytes: the last mantissa of r, which must be non-negative.
        let mut neg = enc.clone();
        let n = neg.len();
        neg[n - 4..].copy_from_slice(&(-1i32).to_le_bytes());
        let err = TrainState::decode(&neg).unwrap_err().to_string();
        assert!(err.contains("r ln_f.weight mantissa 7"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decode_never_panics_on_mutations(pos in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let s = tiny();
            let mut enc = s.encode();
            let i = pos.index(enc.len());
            enc[i] = byte;
            let _ = TrainState::decode(&enc);
            let c = cut.index(enc.len());
            prop_assert!(TrainState::decode(&enc[..c]).is_err());
        }

        #[test]
        fn params_blobs_round_trip_and_refuse_anything_else(
            seed in any::<u64>(),
            step in 0u64..1_000_000,
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let s = tiny();
            // Parameters anywhere in the B24 range, the extremes included.
            let mut p = s.params.clone();
            for (i, t) in p.iter_mut().enumerate() {
                for (j, m) in t.mant.iter_mut().enumerate() {
                    let h = crate::numerics::fixed::hash3(seed, i as u64, j as u64);
                    *m = match h % 5 {
                        0 => B24_MANT_MAX,
                        1 => -B24_MANT_MAX,
                        _ => (h % (2 * B24_MANT_MAX as u64 + 1)) as i32 - B24_MANT_MAX,
                    };
                }
                t.exp -= (seed % 7) as i32;
            }
            let blob = params_blob(&s.model, &p);
            let built = crate::verify::diloco::fresh_start_state(
                &s,
                &decode_params_blob(&s.model, &blob).unwrap(),
                step,
            )
            .unwrap();
            prop_assert_eq!(&built.params, &p);
            prop_assert_eq!(built.step, step);
            prop_assert!(built.m.iter().chain(&built.r).all(|t| t.exp == MOMENT_INIT_EXP && t.mant.iter().all(|&v| v == 0)));
            prop_assert_eq!(params_blob(&built.model, &built.params), blob.clone());
            // A mutated blob is refused or is the params blob of what it built; a cut one is refused.
            let mut bad = blob.clone();
            let i = pos.index(bad.len());
            bad[i] = byte;
            if let Ok(b) = decode_params_blob(&s.model, &bad) {
                prop_assert_eq!(params_blob(&s.model, &b), bad);
            }
            let c = cut.index(blob.len());
            prop_assert!(decode_params_blob(&s.model, &blob[..c]).is_err());
        }
    }
}
