//! The DiLoCo outer step, in exact integer arithmetic.
//!
//! Every shard of an outer round starts from the same global parameters θ (block floating point
//! tensors, [`Bfp`], with the wide master mantissas) and runs H inner steps. It returns the
//! parameter delta Δ = θ_end − θ_start, computed exactly ([`ParamDelta::between`]). The outer step
//! ([`outer_step`]) sorts the deltas by shard id, takes their integer mean with round-half-even,
//! and applies the outer optimizer:
//!
//! - [`OuterOptimizer::Average`]: θ ← θ + mean(Δ) (outer learning rate 1, no momentum; equal to
//!   averaging the workers' final parameters);
//! - [`OuterOptimizer::Nesterov`] (DiLoCo's choice, lr 0.7 and momentum 0.9 in the paper), with
//!   the outer gradient g = −mean(Δ): m ← μ·m + mean(Δ), θ ← θ + lr·(mean(Δ) + μ·m); μ and lr are
//!   Q16.16 fixed point and every product is rounded half to even at 2^-16.
//!
//! Results are requantized to the master mantissa bound with the same rule as the kernels
//! (`fixed::requantize`), so the next global state and its commitment are the same bits on every
//! machine. The algorithm and its communication volume are documented in `specs/shard.md`.

use sha2::{Digest, Sha256};

use crate::codec::{i64_be_signed, Reader, Truncated};
use crate::numerics::fixed::{div_rhe, requant_shift, rhe};
use crate::numerics::kernels::{Bfp, EXP_ABS_MAX, TENSOR_ELEMS_MAX};
use crate::verify::commit::Hash32;

/// Most tensors a parameter delta may hold.
pub const DELTA_TENSORS_MAX: usize = 4096;
/// Most elements a parameter delta may hold over all tensors.
pub const DELTA_ELEMS_MAX: usize = TENSOR_ELEMS_MAX;
/// Largest exponent difference aligned by a shift (keeps every aligned value below 2^96).
pub const ALIGN_SHIFT_MAX: u32 = 40;
/// Most shard deltas one outer step merges.
pub const OUTER_SHARDS_MAX: usize = 4096;
/// Encoding magic of a [`ParamDelta`].
pub const DELTA_MAGIC: [u8; 4] = *b"LDLT";
/// Encoding version of a [`ParamDelta`].
pub const DELTA_VERSION: u8 = 2;
/// The encoding's name in decoding errors.
const DELTA: &str = "param delta";
/// Fixed-point one of the outer optimizer's Q16.16 constants.
pub const Q16_ONE: u32 = 1 << 16;
/// Largest outer learning rate, Q16.16 (2.0).
pub const OUTER_LR_MAX_Q16: u32 = 2 << 16;
/// Most significant bits of any aligned intermediate value of the outer step; with Q16.16
/// constants ≤ 2^17 every product and sum then stays far below the i128 limit.
pub const WIDE_BITS_MAX: u32 = 100;
/// Domain separator of the outer-state commitment.
const OUTER_STATE_DOMAIN: &[u8] = b"leam/outer-state/v1\n";

/// Errors of delta construction, decoding and the outer step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DilocoError {
    /// Two parameter lists have different layouts.
    #[error("{what}: tensor {tensor} has {found} elements, expected {expected}")]
    Layout {
        /// Which operands.
        what: &'static str,
        /// Tensor index (or the tensor count when the lists differ in length).
        tensor: usize,
        /// Elements expected.
        expected: usize,
        /// Elements found.
        found: usize,
    },
    /// Two exponents are too far apart to align exactly.
    #[error("{what}: tensor {tensor} exponents {a} and {b} differ by more than {max}")]
    ExponentSpread {
        /// Which operands.
        what: &'static str,
        /// Tensor index.
        tensor: usize,
        /// First exponent.
        a: i64,
        /// Second exponent.
        b: i64,
        /// Largest difference.
        max: u32,
    },
    /// An exponent is outside `±EXP_ABS_MAX`.
    #[error("{what}: tensor {tensor} exponent {found} outside ±{max}")]
    ExponentRange {
        /// Which value.
        what: &'static str,
        /// Tensor index.
        tensor: usize,
        /// Exponent found.
        found: i64,
        /// Largest magnitude.
        max: i64,
    },
    /// A count exceeds its limit.
    #[error("{what}: {found} exceeds the limit {max}")]
    Limit {
        /// What was counted.
        what: &'static str,
        /// Count found.
        found: u64,
        /// Limit.
        max: u64,
    },
    /// The outer step got no deltas, or the same shard twice.
    #[error("outer step: {reason}")]
    Shards {
        /// What is wrong.
        reason: String,
    },
    /// A start state built from a params blob that is not the one the shard spec names.
    #[error("start state from the params blob: {reason}")]
    StartState {
        /// What is wrong.
        reason: String,
    },
    /// A decoding failure.
    #[error("param delta: {field} at offset {offset}: {reason}")]
    Decode {
        /// Field being read.
        field: &'static str,
        /// Byte offset.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A tensor of exact wide integers: `value[i] = values[i] · 2^exp`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IntTensor {
    /// Power-of-two exponent.
    pub exp: i32,
    /// Integer values.
    pub values: Vec<i64>,
}

/// The exact parameter change of one shard, one tensor per parameter tensor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamDelta {
    /// Per-tensor deltas, in the model's parameter order.
    pub tensors: Vec<IntTensor>,
}

/// Outer optimizer of the DiLoCo step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterOptimizer {
    /// θ ← θ + mean(Δ).
    Average,
    /// Nesterov momentum (see the module docs); `momentum_q16 < 2^16`, `lr_q16 ≤ 2^17`.
    Nesterov {
        /// Outer learning rate, Q16.16.
        lr_q16: u32,
        /// Momentum μ, Q16.16.
        momentum_q16: u32,
    },
}

impl OuterOptimizer {
    /// DiLoCo's published outer optimizer: Nesterov, lr 0.7, momentum 0.9 (rounded to Q16.16).
    pub const DILOCO: OuterOptimizer = OuterOptimizer::Nesterov {
        lr_q16: 45_875,
        momentum_q16: 58_982,
    };
}

/// The global state between outer steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OuterState {
    /// Number of outer steps applied so far.
    pub round: u64,
    /// Global parameters (master mantissas).
    pub params: Vec<Bfp>,
    /// Outer momentum, one tensor per parameter tensor (empty for [`OuterOptimizer::Average`]).
    pub momentum: Vec<Bfp>,
}

fn exp_i64(e: i32) -> i64 {
    i64::from(e)
}

/// `v · 2^shift` exactly, as i128 (shift ≤ [`ALIGN_SHIFT_MAX`], |v| < 2^64 → < 2^104).
fn shl(v: i64, shift: u32) -> i128 {
    debug_assert!(shift <= ALIGN_SHIFT_MAX);
    i128::from(v) << shift
}

/// `v · 2^shift` exactly, or a `Limit` error if the result would exceed [`WIDE_BITS_MAX`] bits.
fn widen(what: &'static str, v: i128, shift: u32) -> Result<i128, DilocoError> {
    let bits = 128 - v.unsigned_abs().leading_zeros();
    if v != 0 && bits + shift > WIDE_BITS_MAX {
        return Err(DilocoError::Limit {
            what,
            found: u64::from(bits + shift),
            max: u64::from(WIDE_BITS_MAX),
        });
    }
    Ok(v << shift)
}

fn spread(what: &'static str, tensor: usize, a: i32, b: i32) -> Result<(), DilocoError> {
    if exp_i64(a).abs_diff(exp_i64(b)) > u64::from(ALIGN_SHIFT_MAX) {
        return Err(DilocoError::ExponentSpread {
            what,
            tensor,
            a: a.into(),
            b: b.into(),
            max: ALIGN_SHIFT_MAX,
        });
    }
    Ok(())
}

fn same_layout<A, B>(
    what: &'static str,
    a: &[A],
    b: &[B],
    len_a: impl Fn(&A) -> usize,
    len_b: impl Fn(&B) -> usize,
) -> Result<(), DilocoError> {
    if a.len() != b.len() {
        return Err(DilocoError::Layout {
            what,
            tensor: a.len().min(b.len()),
            expected: a.len(),
            found: b.len(),
        });
    }
    for (t, (x, y)) in a.iter().zip(b).enumerate() {
        if len_a(x) != len_b(y) {
            return Err(DilocoError::Layout {
                what,
                tensor: t,
                expected: len_a(x),
                found: len_b(y),
            });
        }
    }
    Ok(())
}

/// Requantizes exact wide values at `exp` to mantissas of magnitude ≤ `mant_max`, with the
/// kernels' rule (smallest right shift, round half to even).
fn requantize_wide(
    what: &'static str,
    tensor: usize,
    wide: &[i128],
    exp: i32,
    mant_max: i32,
) -> Result<Bfp, DilocoError> {
    let max_abs = wide.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    let k = requant_shift(max_abs, mant_max);
    let new_exp = i64::from(exp) + i64::from(k);
    if new_exp.abs() > EXP_ABS_MAX {
        return Err(DilocoError::ExponentRange {
            what,
            tensor,
            found: new_exp,
            max: EXP_ABS_MAX,
        });
    }
    let mant = wide
        .iter()
        .map(|&v| {
            let r = rhe(v, k);
            debug_assert!(r.unsigned_abs() <= mant_max.unsigned_abs() as u128);
            r as i32
        })
        .collect();
    // |new_exp| ≤ EXP_ABS_MAX < 2^31 was checked above.
    Ok(Bfp::new(mant, new_exp as i32))
}

impl ParamDelta {
    /// The exact delta `end − start` of two parameter lists with the same layout. Each tensor's
    /// delta takes the smaller of the two exponents, so no bit is lost.
    pub fn between(start: &[Bfp], end: &[Bfp]) -> Result<ParamDelta, DilocoError> {
        const WHAT: &str = "param delta (start, end)";
        same_layout(WHAT, start, end, Bfp::len, Bfp::len)?;
        if start.len() > DELTA_TENSORS_MAX {
            return Err(DilocoError::Limit {
                what: "param delta tensors",
                found: start.len() as u64,
                max: DELTA_TENSORS_MAX as u64,
            });
        }
        let mut tensors = Vec::with_capacity(start.len());
        for (t, (s, e)) in start.iter().zip(end).enumerate() {
            spread(WHAT, t, s.exp, e.exp)?;
            let exp = s.exp.min(e.exp);
            let (ks, ke) = ((s.exp - exp) as u32, (e.exp - exp) as u32);
            // |mant| < 2^31 shifted by ≤ 40 stays below 2^71: compute in i128, then check.
            let mut values = Vec::with_capacity(s.len());
            for (&a, &b) in s.mant.iter().zip(&e.mant) {
                let d = shl(b.into(), ke) - shl(a.into(), ks);
                let d = i64::try_from(d).map_err(|_| DilocoError::Limit {
                    what: "param delta element magnitude (bits)",
                    found: u64::from(128 - d.unsigned_abs().leading_zeros()),
                    max: 63,
                })?;
                values.push(d);
            }
            tensors.push(IntTensor { exp, values });
        }
        Ok(ParamDelta { tensors })
    }

    /// Applies this delta to `start` exactly (the inverse of [`ParamDelta::between`]), then
    /// requantizes to `mant_max`.
    pub fn apply(&self, start: &[Bfp], mant_max: i32) -> Result<Vec<Bfp>, DilocoError> {
        const WHAT: &str = "param delta apply";
        same_layout(WHAT, start, &self.tensors, Bfp::len, |t| t.values.len())?;
        let mut out = Vec::with_capacity(start.len());
        for (t, (s, d)) in start.iter().zip(&self.tensors).enumerate() {
            spread(WHAT, t, s.exp, d.exp)?;
            let exp = s.exp.min(d.exp);
            let (ks, kd) = ((s.exp - exp) as u32, (d.exp - exp) as u32);
            let wide: Vec<i128> = s
                .mant
                .iter()
                .zip(&d.values)
                .map(|(&a, &v)| shl(a.into(), ks) + shl(v, kd))
                .collect();
            out.push(requantize_wide(WHAT, t, &wide, exp, mant_max)?);
        }
        Ok(out)
    }

    /// Total number of elements.
    pub fn elems(&self) -> usize {
        self.tensors.iter().map(|t| t.values.len()).sum()
    }

    /// Canonical encoding: `"LDLT"`, version `2`, tensor count (u32 BE), then per tensor the
    /// exponent (i32 BE), the element count (u32 BE), the value width `w` (u8: the smallest
    /// number of bytes, 1 to 8, that holds every value as two's complement; 1 for an empty
    /// tensor) and the values (`w` bytes each, big-endian two's complement). Deltas of a shard
    /// are small next to the parameters, so `w` is usually 2 or 3: this is what a worker uploads.
    pub fn encode(&self) -> Vec<u8> {
        let body: usize = self
            .tensors
            .iter()
            .map(|t| 9 + t.values.len() * value_width(&t.values))
            .sum();
        let mut out = Vec::with_capacity(9 + body);
        out.extend_from_slice(&DELTA_MAGIC);
        out.push(DELTA_VERSION);
        out.extend_from_slice(&(self.tensors.len() as u32).to_be_bytes());
        for t in &self.tensors {
            let w = value_width(&t.values);
            out.extend_from_slice(&t.exp.to_be_bytes());
            out.extend_from_slice(&(t.values.len() as u32).to_be_bytes());
            out.push(w as u8);
            for v in &t.values {
                out.extend_from_slice(&v.to_be_bytes()[8 - w..]);
            }
        }
        out
    }

    /// Decodes a canonical encoding, rejecting trailing bytes and out-of-range counts and
    /// exponents before allocating.
    pub fn decode(bytes: &[u8]) -> Result<ParamDelta, DilocoError> {
        let mut cur = Reader::new(DELTA, bytes);
        let magic = cur.take("magic", 4)?;
        if magic != DELTA_MAGIC {
            return Err(DilocoError::Decode {
                field: "magic",
                offset: 0,
                reason: format!("found {magic:?}, expected {DELTA_MAGIC:?}"),
            });
        }
        let version = cur.u8("version")?;
        if version != DELTA_VERSION {
            return Err(DilocoError::Decode {
                field: "version",
                offset: 4,
                reason: format!("unknown version {version}, this build reads {DELTA_VERSION}"),
            });
        }
        let count = cur.u32_be("tensor_count")? as usize;
        if count > DELTA_TENSORS_MAX {
            return Err(DilocoError::Limit {
                what: "param delta tensors",
                found: count as u64,
                max: DELTA_TENSORS_MAX as u64,
            });
        }
        let mut tensors = Vec::with_capacity(count);
        let mut elems = 0usize;
        for t in 0..count {
            let exp = cur.u32_be("exp")? as i32;
            if i64::from(exp).abs() > EXP_ABS_MAX {
                return Err(DilocoError::ExponentRange {
                    what: "param delta",
                    tensor: t,
                    found: exp.into(),
                    max: EXP_ABS_MAX,
                });
            }
            let len = cur.u32_be("len")? as usize;
            elems += len;
            if elems > DELTA_ELEMS_MAX {
                return Err(DilocoError::Limit {
                    what: "param delta elements",
                    found: elems as u64,
                    max: DELTA_ELEMS_MAX as u64,
                });
            }
            let width_at = cur.pos();
            let w = usize::from(cur.u8("width")?);
            if !DELTA_WIDTHS.contains(&w) {
                return Err(DilocoError::Decode {
                    field: "width",
                    offset: width_at,
                    reason: format!("tensor {t}: width {w}, expected one of {DELTA_WIDTHS:?}"),
                });
            }
            // `take` checks the bytes are present before anything is allocated for them.
            let raw = cur.take("values", len * w)?;
            let values: Vec<i64> = raw.chunks_exact(w).map(i64_be_signed).collect();
            if value_width(&values) != w {
                return Err(DilocoError::Decode {
                    field: "width",
                    offset: width_at,
                    reason: format!(
                        "tensor {t}: width {w} is not minimal ({} suffices)",
                        value_width(&values)
                    ),
                });
            }
            tensors.push(IntTensor { exp, values });
        }
        if cur.remaining() != 0 {
            return Err(DilocoError::Decode {
                field: "end",
                offset: cur.pos(),
                reason: format!("{} trailing bytes", cur.remaining()),
            });
        }
        Ok(ParamDelta { tensors })
    }

    /// Commitment carried in a shard result: SHA-256 of the canonical encoding.
    pub fn commitment(&self) -> Hash32 {
        Sha256::digest(self.encode()).into()
    }
}

impl From<Truncated<'static>> for DilocoError {
    fn from(t: Truncated<'static>) -> Self {
        DilocoError::Decode {
            field: t.field,
            offset: t.offset,
            reason: format!("needs {} bytes, {} left", t.needed, t.remaining),
        }
    }
}

/// Value widths of the [`ParamDelta`] encoding, in bytes: any whole number of bytes up to 8, so
/// a delta of B24 parameters (|value| < 2^23 in practice after a shard) travels in 3 bytes, not 4.
pub const DELTA_WIDTHS: [usize; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// The smallest width in [`DELTA_WIDTHS`] holding every value as two's complement (1 for
/// none).
fn value_width(values: &[i64]) -> usize {
    let (lo, hi) = values
        .iter()
        .fold((0i64, 0i64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    // Bits of the magnitude plus a sign bit, rounded up to whole bytes.
    let bits = |v: i64| {
        65 - if v < 0 {
            v.leading_ones()
        } else {
            v.leading_zeros()
        }
    };
    (bits(lo).max(bits(hi)) as usize).div_ceil(8).clamp(1, 8)
}

fn encode_bfp_list(h: &mut Sha256, list: &[Bfp]) {
    h.update((list.len() as u64).to_be_bytes());
    for t in list {
        h.update(t.exp.to_be_bytes());
        h.update((t.mant.len() as u64).to_be_bytes());
        for m in &t.mant {
            h.update(m.to_be_bytes());
        }
    }
}

impl OuterState {
    /// A fresh global state at round 0 with zero momentum shaped like `params`.
    pub fn new(params: Vec<Bfp>, optimizer: OuterOptimizer) -> Self {
        let momentum = match optimizer {
            OuterOptimizer::Average => Vec::new(),
            OuterOptimizer::Nesterov { .. } => {
                params.iter().map(|p| Bfp::zeros(p.len(), p.exp)).collect()
            }
        };
        OuterState {
            round: 0,
            params,
            momentum,
        }
    }

    /// Commitment to the global state: SHA-256 of `"leam/outer-state/v1\n"`, the round (u64 BE),
    /// then the parameter list and the momentum list, each as a count (u64 BE) followed by, per
    /// tensor, exponent (i32 BE), element count (u64 BE) and mantissas (i32 BE).
    pub fn commitment(&self) -> Hash32 {
        let mut h = Sha256::new();
        h.update(OUTER_STATE_DOMAIN);
        h.update(self.round.to_be_bytes());
        encode_bfp_list(&mut h, &self.params);
        encode_bfp_list(&mut h, &self.momentum);
        h.finalize().into()
    }
}

/// Sum of the deltas of one tensor aligned to the smallest exponent: (exp, exact sums).
fn aligned_sum(
    deltas: &[&ParamDelta],
    t: usize,
    len: usize,
) -> Result<(i32, Vec<i128>), DilocoError> {
    const WHAT: &str = "outer step (shard deltas)";
    let exp = deltas.iter().map(|d| d.tensors[t].exp).min().unwrap_or(0);
    let mut sum = vec![0i128; len];
    for d in deltas {
        let dt = &d.tensors[t];
        spread(WHAT, t, exp, dt.exp)?;
        let k = (dt.exp - exp) as u32;
        for (s, &v) in sum.iter_mut().zip(&dt.values) {
            // ≤ OUTER_SHARDS_MAX (2^12) terms below 2^WIDE_BITS_MAX each: no i128 overflow.
            *s += widen("outer step aligned delta (bits)", v.into(), k)?;
        }
    }
    Ok((exp, sum))
}

/// Aligns two exact wide tensors to the smaller exponent (values multiplied by 2^shift).
fn align2(
    what: &'static str,
    t: usize,
    (ea, a): (i32, Vec<i128>),
    (eb, b): (i32, Vec<i128>),
) -> Result<(i32, Vec<i128>, Vec<i128>), DilocoError> {
    spread(what, t, ea, eb)?;
    let e = ea.min(eb);
    let (ka, kb) = ((ea - e) as u32, (eb - e) as u32);
    const BITS: &str = "outer step aligned value (bits)";
    let a = a
        .into_iter()
        .map(|v| widen(BITS, v, ka))
        .collect::<Result<_, _>>()?;
    let b = b
        .into_iter()
        .map(|v| widen(BITS, v, kb))
        .collect::<Result<_, _>>()?;
    Ok((e, a, b))
}

fn bfp_wide(b: &Bfp) -> (i32, Vec<i128>) {
    (b.exp, b.mant.iter().map(|&m| i128::from(m)).collect())
}

/// `x · q / 2^16` rounded half to even.
fn mul_q16(x: i128, q: u32) -> i128 {
    rhe(x * i128::from(q), 16)
}

/// One DiLoCo outer step: merges the deltas of several shards (each tagged with its shard id)
/// into the next global state. The deltas are processed in ascending shard-id order and the
/// same id may not appear twice, so the result does not depend on arrival order; integer sums
/// are exact, so it would not depend on it anyway. `mant_max` bounds the mantissas of the new
/// parameters and momentum (e.g. `fixed::B24_MANT_MAX`).
pub fn outer_step(
    state: &OuterState,
    deltas: &[(Hash32, ParamDelta)],
    optimizer: OuterOptimizer,
    mant_max: i32,
) -> Result<OuterState, DilocoError> {
    const WHAT: &str = "outer step";
    if deltas.is_empty() {
        return Err(DilocoError::Shards {
            reason: "no shard deltas to merge".into(),
        });
    }
    if deltas.len() > OUTER_SHARDS_MAX {
        return Err(DilocoError::Limit {
            what: "shard deltas per outer step",
            found: deltas.len() as u64,
            max: OUTER_SHARDS_MAX as u64,
        });
    }
    let mut sorted: Vec<&(Hash32, ParamDelta)> = deltas.iter().collect();
    sorted.sort_by_key(|d| d.0);
    for w in sorted.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(DilocoError::Shards {
                reason: format!("shard {} appears twice", hex::encode(w[0].0)),
            });
        }
    }
    let ds: Vec<&ParamDelta> = sorted.iter().map(|(_, d)| d).collect();
    for d in &ds {
        same_layout(
            "outer step (params, delta)",
            &state.params,
            &d.tensors,
            Bfp::len,
            |t| t.values.len(),
        )?;
    }
    if let OuterOptimizer::Nesterov {
        lr_q16,
        momentum_q16,
    } = optimizer
    {
        if momentum_q16 >= Q16_ONE {
            return Err(DilocoError::Limit {
                what: "outer momentum (Q16.16)",
                found: momentum_q16.into(),
                max: u64::from(Q16_ONE) - 1,
            });
        }
        if lr_q16 > OUTER_LR_MAX_Q16 {
            return Err(DilocoError::Limit {
                what: "outer learning rate (Q16.16)",
                found: lr_q16.into(),
                max: OUTER_LR_MAX_Q16.into(),
            });
        }
        same_layout(
            "outer step (params, momentum)",
            &state.params,
            &state.momentum,
            Bfp::len,
            Bfp::len,
        )?;
    }
    let n = ds.len() as i128;
    let mut params = Vec::with_capacity(state.params.len());
    let mut momentum = Vec::with_capacity(state.momentum.len());
    for (t, p) in state.params.iter().enumerate() {
        let (e, sum) = aligned_sum(&ds, t, p.len())?;
        let mean: Vec<i128> = sum.into_iter().map(|s| div_rhe(s, n)).collect();
        let update = match optimizer {
            OuterOptimizer::Average => (e, mean),
            OuterOptimizer::Nesterov {
                lr_q16,
                momentum_q16,
            } => {
                // m' = μ·m + mean, at the finer of the two exponents.
                let m_old = bfp_wide(&state.momentum[t]);
                let (em, m_old, mean) = align2(WHAT, t, m_old, (e, mean))?;
                let m_new: Vec<i128> = m_old
                    .iter()
                    .zip(&mean)
                    .map(|(&m, &d)| mul_q16(m, momentum_q16) + d)
                    .collect();
                let m_q = requantize_wide(WHAT, t, &m_new, em, mant_max)?;
                // update = lr · (mean + μ·m'), using the exact m' (before requantization).
                let upd: Vec<i128> = mean
                    .iter()
                    .zip(&m_new)
                    .map(|(&d, &m)| mul_q16(d + mul_q16(m, momentum_q16), lr_q16))
                    .collect();
                momentum.push(m_q);
                (em, upd)
            }
        };
        let (ep, pw, uw) = align2(WHAT, t, bfp_wide(p), update)?;
        let wide: Vec<i128> = pw.iter().zip(&uw).map(|(a, b)| a + b).collect();
        params.push(requantize_wide(WHAT, t, &wide, ep, mant_max)?);
    }
    Ok(OuterState {
        round: state.round + 1,
        params,
        momentum,
    })
}

/// The start state of a worker's next shard: its own previous final state (step counter, Adam
/// moments) with the parameters replaced by the new global parameters of `global`. DiLoCo keeps
/// inner optimizer states local; only parameters are synchronised.
pub fn next_start_state(
    prev_final: &crate::model::train::TrainState,
    global: &OuterState,
) -> Result<crate::model::train::TrainState, DilocoError> {
    with_params(
        "next start state (params, global params)",
        prev_final,
        &global.params,
    )
}

/// `state` with its parameters replaced by `params` of the same layout.
fn with_params(
    what: &'static str,
    state: &crate::model::train::TrainState,
    params: &[Bfp],
) -> Result<crate::model::train::TrainState, DilocoError> {
    same_layout(what, &state.params, params, Bfp::len, Bfp::len)?;
    let mut next = state.clone();
    next.params = params.to_vec();
    Ok(next)
}

/// The start state of every worker's shards in an outer round: `template`'s model,
/// hyperparameters, batch size and seed, the round's global parameters `params`, the inner
/// optimizer started afresh (Adam moments zero, as [`crate::model::train::TrainState::new`]
/// leaves them) and the step counter at `step` (the round's first global step, for the
/// learning-rate schedule). Every input is public (the job and the outer-state commitment), so
/// the bidder, any provider, replica or referee builds the same bytes without moving inner
/// optimizer state: a worker returns its parameter delta, not its moments (`specs/shard.md` §6).
pub fn fresh_start_state(
    template: &crate::model::train::TrainState,
    params: &[Bfp],
    step: u64,
) -> Result<crate::model::train::TrainState, DilocoError> {
    let mut next = with_params(
        "fresh start state (template params, params)",
        template,
        params,
    )?;
    for t in next.m.iter_mut().chain(next.r.iter_mut()) {
        t.mant.fill(0);
        t.exp = crate::model::optim::MOMENT_INIT_EXP;
    }
    next.step = step;
    Ok(next)
}

/// The start state a worker builds for `spec` from the params blob it fetched
/// ([`crate::model::train::params_blob`] of the round's global parameters): the job's model,
/// hyperparameters, batch size and seed as the spec states them, the blob's parameters, fresh
/// moments and the spec's first step ([`fresh_start_state`]). It must hash to
/// `spec.start_state`, else it is refused: a worker never runs from a state the spec does not
/// name.
pub fn fresh_start_for_spec(
    spec: &crate::verify::shard::ShardSpec,
    params_blob: &[u8],
) -> Result<crate::model::train::TrainState, DilocoError> {
    let m = &spec.model;
    let cfg = crate::model::transformer::Config {
        vocab: m.vocab_size as usize,
        n_layer: m.n_layer as usize,
        n_head: m.n_head as usize,
        n_embd: m.n_embd as usize,
        block_size: m.block_size as usize,
    };
    let bad = |reason: String| DilocoError::StartState { reason };
    let template =
        crate::model::train::TrainState::new(cfg, spec.hyper, m.batch_size as usize, spec.seed)
            .map_err(|e| bad(e.to_string()))?;
    let params = crate::model::train::decode_params_blob(&template.model, params_blob)
        .map_err(|e| bad(e.to_string()))?;
    let state = fresh_start_state(&template, &params, spec.first_step)?;
    let h = state.state_hash();
    if h != spec.start_state {
        return Err(bad(format!(
            "it hashes to {}, the spec names {}",
            hex::encode(h),
            hex::encode(spec.start_state)
        )));
    }
    Ok(state)
}

/// Bytes one worker sends plus receives per outer step: its delta up (the [`ParamDelta`]
/// encoding at `delta_width` bytes per element, plus headers) and the start parameters down
/// (the params blob, [`crate::model::train::params_blob`]: 3 bytes per element, an exponent per
/// tensor, the magic and the 20-byte config header).
pub fn diloco_bytes_per_outer_step(param_elems: u64, tensors: u64, delta_width: u64) -> u64 {
    delta_bytes(param_elems, tensors, delta_width) + params_blob_bytes(param_elems, tensors)
}

/// Length of a [`ParamDelta`] encoding whose tensors all have width `delta_width`.
pub fn delta_bytes(param_elems: u64, tensors: u64, delta_width: u64) -> u64 {
    9 + tensors * 9 + param_elems * delta_width
}

/// Length of a params blob ([`crate::model::train::params_blob`]).
pub fn params_blob_bytes(param_elems: u64, tensors: u64) -> u64 {
    let magic = crate::model::train::PARAMS_BLOB_MAGIC.len() as u64;
    magic + 20 + tensors * 4 + param_elems * crate::model::train::PARAMS_BLOB_MANT_BYTES as u64
}

/// Bytes one worker sends plus receives for `inner_steps` steps of plain data parallelism in the
/// same star topology (B16 gradient mantissas up, 2 bytes per element, and the averaged B16
/// gradient down, 2 bytes per element, every step; exponents ignored). A ring all-reduce moves
/// about twice as much per worker.
pub fn data_parallel_bytes(param_elems: u64, inner_steps: u64) -> u64 {
    inner_steps * param_elems * 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::fixed::B24_MANT_MAX;

    fn params() -> Vec<Bfp> {
        vec![
            Bfp::new(vec![100, -200, 300, 0], -10),
            Bfp::new(vec![7, 8], -3),
        ]
    }

    /// A tiny model's initial state (vocabulary 10, one layer, width 8, context 4, batch 2).
    fn tiny_state() -> crate::model::train::TrainState {
        let cfg = crate::model::transformer::Config {
            vocab: 10,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            block_size: 4,
        };
        let hyper = crate::model::optim::Hyper::nanogpt_cpu()
            .to_fixed()
            .unwrap();
        crate::model::train::TrainState::new(cfg, hyper, 2, 7).unwrap()
    }

    #[test]
    fn a_fresh_start_is_the_same_from_the_global_state_and_from_the_params_blob() {
        use crate::model::train::params_blob;
        let start = tiny_state();
        let cfg = start.model;
        // Round 0 starts from the initial state itself.
        let g0 = OuterState::new(start.params.clone(), OuterOptimizer::DILOCO);
        assert_eq!(fresh_start_state(&start, &g0.params, 0).unwrap(), start);
        // A worker that trained (moments non-zero, step advanced) is not the template.
        let mut worn = start.clone();
        worn.step = 9;
        worn.m[0].mant.fill(5);
        worn.params[0].mant[0] += 3;
        let mut global = g0.clone();
        global.params[0].mant[1] -= 4;
        let fresh = fresh_start_state(&worn, &global.params, 12).unwrap();
        assert_eq!(fresh.step, 12);
        assert_eq!(fresh.params, global.params);
        assert!(fresh
            .m
            .iter()
            .chain(&fresh.r)
            .all(|t| t.mant.iter().all(|&v| v == 0)));
        assert_eq!(
            fresh_start_state(&start, &global.params, 12).unwrap(),
            fresh
        );
        // The same bytes from the params blob alone.
        let blob = params_blob(&cfg, &global.params);
        let corpus = "abcdefghij".repeat(20);
        let kernels = crate::numerics::cpu::CpuKernels;
        let runner = crate::verify::replay::ModelRunner::new(&kernels, corpus.as_bytes()).unwrap();
        let mut spec = runner.spec_for(&fresh, 0, 100, 3).unwrap();
        assert_eq!(fresh_start_for_spec(&spec, &blob).unwrap(), fresh);
        // Anything else is refused with the reason.
        spec.start_state[0] ^= 1;
        let e = fresh_start_for_spec(&spec, &blob).unwrap_err().to_string();
        assert!(e.contains("the spec names"), "{e}");
        spec.start_state[0] ^= 1;
        let e = fresh_start_for_spec(&spec, &blob[..blob.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("params blob tensors"), "{e}");
        let mut other = blob.clone();
        other[0] ^= 1;
        let e = fresh_start_for_spec(&spec, &other).unwrap_err().to_string();
        assert!(e.contains("magic and model header"), "{e}");
    }

    #[test]
    fn delta_round_trips_through_apply() {
        let start = params();
        let end = vec![
            Bfp::new(vec![1000, -2001, 3003, 5], -12),
            Bfp::new(vec![9, 8], -2),
        ];
        let d = ParamDelta::between(&start, &end).unwrap();
        assert_eq!(d.tensors[0].exp, -12);
        assert_eq!(d.tensors[0].values, vec![600, -1201, 1803, 5]);
        // Same values; the sum keeps the finer exponent (requantization only shifts right).
        let back = d.apply(&start, B24_MANT_MAX).unwrap();
        assert_eq!(back[0], end[0]);
        assert_eq!(back[1], Bfp::new(vec![18, 16], -3));
        for (x, y) in back.iter().zip(&end) {
            assert_eq!(x.to_f64(), y.to_f64());
        }
    }

    #[test]
    fn average_of_two_is_mean_with_ties_to_even() {
        let start = vec![Bfp::new(vec![0, 0, 0], 0)];
        let a = ParamDelta {
            tensors: vec![IntTensor {
                exp: 0,
                values: vec![1, 3, -1],
            }],
        };
        let b = ParamDelta {
            tensors: vec![IntTensor {
                exp: 0,
                values: vec![0, 0, 0],
            }],
        };
        let s = OuterState::new(start, OuterOptimizer::Average);
        let out = outer_step(
            &s,
            &[([2; 32], a.clone()), ([1; 32], b.clone())],
            OuterOptimizer::Average,
            B24_MANT_MAX,
        )
        .unwrap();
        // 1/2 → 0, 3/2 → 2, −1/2 → 0 (ties to even).
        assert_eq!(out.params[0].mant, vec![0, 2, 0]);
        assert_eq!(out.round, 1);
        let dup = outer_step(
            &s,
            &[([1; 32], a), ([1; 32], b)],
            OuterOptimizer::Average,
            B24_MANT_MAX,
        );
        assert!(matches!(dup, Err(DilocoError::Shards { .. })));
    }

    #[test]
    fn nesterov_first_step_is_lr_times_one_plus_mu() {
        let start = vec![Bfp::new(vec![0], 0)];
        let opt = OuterOptimizer::Nesterov {
            lr_q16: Q16_ONE / 2,
            momentum_q16: Q16_ONE / 2,
        };
        let s = OuterState::new(start, opt);
        let d = ParamDelta {
            tensors: vec![IntTensor {
                exp: 0,
                values: vec![1000],
            }],
        };
        let out = outer_step(&s, &[([0; 32], d.clone())], opt, B24_MANT_MAX).unwrap();
        // m = 1000; update = 0.5 · (1000 + 0.5·1000) = 750.
        assert_eq!(out.momentum[0].mant, vec![1000]);
        assert_eq!(out.params[0].mant, vec![750]);
        let out2 = outer_step(&out, &[([0; 32], d)], opt, B24_MANT_MAX).unwrap();
        // m = 0.5·1000 + 1000 = 1500; update = 0.5 · (1000 + 750) = 875.
        assert_eq!(out2.momentum[0].mant, vec![1500]);
        assert_eq!(out2.params[0].mant, vec![1625]);
        assert_ne!(out.commitment(), out2.commitment());
    }

    #[test]
    fn communication_numbers_of_specs_shard_md() {
        // nanogpt-cpu: 804,096 parameters in 27 tensors (specs/shard.md section 6).
        let (p, tensors) = (804_096, 27);
        assert_eq!(data_parallel_bytes(p, 1), 3_216_384);
        assert_eq!(data_parallel_bytes(p, 500), 1_608_192_000);
        assert_eq!(diloco_bytes_per_outer_step(p, tensors, 3), 4_824_974);
        for (w, ratio) in [(2, 399), (3, 333), (4, 285)] {
            assert_eq!(
                data_parallel_bytes(p, 500) / diloco_bytes_per_outer_step(p, tensors, w),
                ratio
            );
        }
        // The encodings of a 27-tensor delta (values of 21 bits: width 3) and of the params
        // blob have exactly the sizes counted.
        let d = ParamDelta {
            tensors: (0..27)
                .map(|i| IntTensor {
                    exp: 0,
                    values: vec![1 << 20; i],
                })
                .collect(),
        };
        let elems = d.elems() as u64;
        let state = tiny_state();
        let cfg = state.model;
        let blob = crate::model::train::params_blob(&cfg, &state.params);
        assert_eq!(d.encode().len() as u64, delta_bytes(elems, 27, 3));
        assert_eq!(
            blob.len() as u64,
            params_blob_bytes(cfg.n_params() as u64, state.params.len() as u64)
        );
    }

    fn arb_delta(lens: [usize; 2]) -> impl proptest::strategy::Strategy<Value = ParamDelta> {
        use proptest::prelude::*;
        (
            -30i32..0,
            prop::collection::vec(-(1i64 << 30)..(1i64 << 30), lens[0]),
            -30i32..0,
            prop::collection::vec(-(1i64 << 30)..(1i64 << 30), lens[1]),
        )
            .prop_map(|(e0, v0, e1, v1)| ParamDelta {
                tensors: vec![
                    IntTensor {
                        exp: e0,
                        values: v0,
                    },
                    IntTensor {
                        exp: e1,
                        values: v1,
                    },
                ],
            })
    }

    proptest::proptest! {
        #[test]
        fn outer_step_ignores_arrival_order(
            deltas in proptest::collection::vec(arb_delta([3, 2]), 1..5),
            rot in 0usize..5,
            nesterov in proptest::bool::ANY,
        ) {
            let opt = if nesterov { OuterOptimizer::DILOCO } else { OuterOptimizer::Average };
            let start = vec![Bfp::new(vec![1 << 20, -5, 0], -20), Bfp::new(vec![77, -1], -10)];
            let state = OuterState::new(start.clone(), opt);
            let tagged: Vec<(Hash32, ParamDelta)> = deltas
                .into_iter()
                .enumerate()
                .map(|(i, d)| ([i as u8; 32], d))
                .collect();
            let mut rotated = tagged.clone();
            let n = rotated.len();
            rotated.rotate_left(rot % n);
            let a = outer_step(&state, &tagged, opt, B24_MANT_MAX).unwrap();
            let b = outer_step(&state, &rotated, opt, B24_MANT_MAX).unwrap();
            proptest::prop_assert_eq!(a.commitment(), b.commitment());
            for p in &a.params {
                proptest::prop_assert!(p.mant.iter().all(|m| m.unsigned_abs() <= B24_MANT_MAX as u32));
            }
            if n == 1 && !nesterov {
                // One shard, plain averaging: exactly the shard's parameters.
                let applied = tagged[0].1.apply(&start, B24_MANT_MAX).unwrap();
                proptest::prop_assert_eq!(&a.params, &applied);
            }
        }
    }
}
