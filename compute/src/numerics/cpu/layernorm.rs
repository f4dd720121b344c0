//! Layernorm and its backward pass on the CPU: exact integer row statistics, quotients from
//! [`DivRhe`] (an f64 estimate when provably exact), outputs stored as f64 while they are exact.

use super::rounding::{
    f64_scale, finish, max_chunk1, requant_i128, rhe_f64, round_chunk1, DivRhe, F64_EXACT_BITS,
};
use super::{rows_per_task, PAR_MIN_LEN};
use crate::numerics::fixed::{div_rhe, isqrt, requant_shift, B16_MANT_MAX};
use crate::numerics::kernels::{check_layernorm, check_layernorm_bwd, Bfp, KernelError};
use rayon::prelude::*;

/// Storage of exact wide values: f64 while they are below `2^51` in magnitude (exact, and
/// the requantization vectorizes), i128 when some are not (the caller then redoes the pass).
trait Wide: Copy + Default + Send + Sync {
    /// f64 storage: quotients may be taken from [`DivRhe::div_est`].
    const F64: bool;
    /// The stored value and whether it is exact.
    fn put(v: i128) -> (Self, bool);
    /// An exact integer-valued f64 below `2^50` (only called when `F64`).
    fn from_f64(q: f64) -> Self;
    /// `|v|` as f64 when `F64` (exact), else 0 (unused).
    fn mag(self) -> f64;
}

impl Wide for f64 {
    const F64: bool = true;
    #[inline]
    fn put(v: i128) -> (Self, bool) {
        (v as i64 as f64, v.unsigned_abs() < 1 << F64_EXACT_BITS)
    }
    #[inline]
    fn from_f64(q: f64) -> Self {
        q
    }
    #[inline]
    fn mag(self) -> f64 {
        self.abs()
    }
}

impl Wide for i128 {
    const F64: bool = false;
    #[inline]
    fn put(v: i128) -> (Self, bool) {
        (v, true)
    }
    #[inline]
    fn from_f64(q: f64) -> Self {
        q as i128
    }
    #[inline]
    fn mag(self) -> f64 {
        0.0
    }
}

/// Requantizes exact f64 values (integers below `2^51`) like `requant_wide`.
fn requant_f64_vals(
    op: &'static str,
    vals: &[f64],
    base_exp: i64,
    mant_max: i32,
) -> Result<Bfp, KernelError> {
    let mx = vals
        .par_chunks(PAR_MIN_LEN)
        .map(|c| max_chunk1(c, &|v: f64| v))
        .reduce(|| 0.0, f64::max);
    round_f64_vals(
        op,
        vals,
        base_exp,
        requant_shift(mx as u64 as u128, mant_max),
    )
}

/// The rounding pass of [`requant_f64_vals`] with the shift `k` already known.
fn round_f64_vals(
    op: &'static str,
    vals: &[f64],
    base_exp: i64,
    k: u32,
) -> Result<Bfp, KernelError> {
    let scale = f64_scale(k);
    let mut out = vec![0i32; vals.len()];
    out.par_chunks_mut(PAR_MIN_LEN)
        .zip(vals.par_chunks(PAR_MIN_LEN))
        .for_each(|(o, c)| round_chunk1(o, c, scale, &|v: f64| v));
    finish(op, out, base_exp, k)
}

/// [`crate::numerics::kernels::Kernels::layernorm`]. Bounds (`C ≤ TENSOR_ELEMS_MAX = 2^28`):
/// `|A| ≤ C·2^15 < 2^43` and `|d| = |C·m − A| ≤ 2·C·2^15 < 2^44` fit in i64; `d²` is an exact
/// i128 product and `S` is summed in u128 as before. The outputs `|d|·2^40/R` are small
/// (`R ≥ 4·|d|` because `S ≥ d²` and `√C ≤ 2^14`, unless `S·2^32` wraps for absurd `C`), so
/// they are stored as f64 ([`Wide`]), with the i128 pass as the fallback.
pub(super) fn layernorm(x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
    const OP: &str = "layernorm";
    if let Some(early) = check_layernorm(x, rows, cols)? {
        return Ok(early);
    }
    if let Some((mant, rs, k)) = layernorm_fused(x, rows, cols) {
        return Ok((finish(OP, mant, -24, k)?, rs));
    }
    let (wide, rs, exact) = layernorm_rows::<f64>(x, rows, cols);
    if exact {
        return Ok((requant_f64_vals(OP, &wide, -24, B16_MANT_MAX)?, rs));
    }
    let (wide, rs, _) = layernorm_rows::<i128>(x, rows, cols);
    Ok((requant_i128(OP, &wide, -24, B16_MANT_MAX)?, rs))
}

/// Widest rows [`layernorm_fused`] takes: for `C ≤ 2^16`, `|d| ≤ 2·C·2^15 ≤ 2^32`, so
/// `S ≤ C·d² ≤ 2^80` and `S·2^32 < 2^112` does not wrap, and `S ≥ 1` gives
/// `S·2^32/C ≥ 2^16`, hence `R ≥ 1`.
const LN_FUSED_COLS_MAX: usize = 1 << 16;

/// Layernorm without a buffer of unrounded outputs: the mantissas, `R` per row and the
/// requantization shift, or `None` when an output reaches `2^51` (then the callers' f64/i128
/// passes run) or the rows are wider than [`LN_FUSED_COLS_MAX`].
///
/// The first pass takes per row `A = Σm`, `Q = Σm²` (`Q ≤ C·2^30 < 2^46`, i64) and the extreme
/// mantissas. `S = Σ(C·m − A)² = C²·Q − 2·C·A·Σm + C·A² = C·(C·Q − A²)`, an integer identity, so
/// `S` is the reference's sum exactly (`C·Q < 2^62`, i128 anyway). The output
/// `q(d) = div_rhe(d·2^40, R)` is non-decreasing in `d = C·m − A` (rounding half to even is
/// monotone), so the row's largest `|q|` is at its smallest or largest mantissa: the maximum,
/// hence the shift `k`, is known before any output is formed. The second pass forms each `q`
/// (from the f64 estimate when it is sure, else exactly; both exact integers below `2^51`) and
/// rounds it by `k` as the reference's requantization does.
fn layernorm_fused(x: &Bfp, rows: usize, cols: usize) -> Option<(Vec<i32>, Vec<u64>, u32)> {
    if cols > LN_FUSED_COLS_MAX || cols == 0 {
        return None;
    }
    let c = cols as i64;
    let mut rs = vec![0u64; rows];
    let mut sums = vec![0i64; rows];
    let mx = rs
        .par_iter_mut()
        .zip(sums.par_iter_mut())
        .zip(x.mant.par_chunks(cols))
        .with_min_len(rows_per_task(cols))
        .map(|((r, a_out), xm)| {
            let (mut a, mut q, mut lo, mut hi) = (0i64, 0i64, i32::MAX, i32::MIN);
            for &v in xm {
                a += v as i64;
                q += v as i64 * v as i64;
                lo = lo.min(v);
                hi = hi.max(v);
            }
            *a_out = a;
            let s = (c as i128 * (c as i128 * q as i128 - a as i128 * a as i128)) as u128;
            if s == 0 {
                return 0;
            }
            let rr = isqrt((s << 32) / cols as u128) as i128;
            *r = rr as u64;
            let div = DivRhe::new(rr, 40);
            let ends = [c * lo as i64 - a, c * hi as i64 - a];
            ends.iter()
                .map(|&d| div.div(d).unsigned_abs())
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    if mx >= 1 << F64_EXACT_BITS {
        return None;
    }
    let k = requant_shift(mx, B16_MANT_MAX);
    let scale = f64_scale(k);
    let mut mant = vec![0i32; rows * cols];
    mant.par_chunks_mut(cols)
        .zip(rs.par_iter().zip(sums.par_iter()))
        .zip(x.mant.par_chunks(cols))
        .with_min_len(rows_per_task(cols))
        .for_each(|((out, (&rr, &a)), xm)| {
            if rr == 0 {
                return;
            }
            let div = DivRhe::new(rr as i128, 40);
            let mut sure = true;
            for (o, &v) in out.iter_mut().zip(xm) {
                let (q, ok) = div.div_est(c * v as i64 - a);
                *o = rhe_f64(q, scale);
                sure &= ok;
            }
            if !sure {
                for (o, &v) in out.iter_mut().zip(xm) {
                    *o = rhe_f64(div.div(c * v as i64 - a) as f64, scale);
                }
            }
        });
    Some((mant, rs, k))
}

/// The unrounded layernorm outputs, `R` per row, and whether every output was stored exactly.
fn layernorm_rows<T: Wide>(x: &Bfp, rows: usize, cols: usize) -> (Vec<T>, Vec<u64>, bool) {
    let c = cols as i64;
    let mut wide = vec![T::default(); rows * cols];
    let mut rs = vec![0u64; rows];
    let exact = wide
        .par_chunks_mut(cols)
        .zip(rs.par_iter_mut())
        .zip(x.mant.par_chunks(cols))
        .with_min_len(rows_per_task(cols))
        .map(|((out, r), xm)| {
            let a: i64 = xm.iter().map(|&v| v as i64).sum();
            let s: u128 = xm
                .iter()
                .map(|&v| {
                    let d = (c * v as i64 - a) as i128;
                    (d * d) as u128
                })
                .sum();
            if s == 0 {
                return true;
            }
            let rr = isqrt((s << 32) / cols as u128) as i128;
            *r = rr as u64;
            let div = DivRhe::new(rr, 40);
            if T::F64 {
                // Estimates first (they vectorize); the row is redone exactly if one is unsure.
                let mut sure = true;
                for (o, &v) in out.iter_mut().zip(xm) {
                    let (q, ok) = div.div_est(c * v as i64 - a);
                    *o = T::from_f64(q);
                    sure &= ok;
                }
                if sure {
                    return true;
                }
            }
            let mut exact = true;
            for (o, &v) in out.iter_mut().zip(xm) {
                let (w, ok) = T::put(div.div(c * v as i64 - a));
                *o = w;
                exact &= ok;
            }
            exact
        })
        .reduce(|| true, |x, y| x && y);
    (wide, rs, exact)
}

/// [`crate::numerics::kernels::Kernels::layernorm_bwd`]. `A`, `B` and `N` are computed by the same i128
/// expressions as the reference (so shifts beyond the i128 range wrap identically); the
/// division `N·2^24 / R` goes through [`DivRhe`] when `N` fits in i64 (always, unless
/// `−2·h.exp` is huge) and through `div_rhe` otherwise. Outputs are stored as f64 when they
/// are all below `2^51` ([`Wide`]), else the pass is redone in i128.
pub(super) fn layernorm_bwd(
    dxhat: &Bfp,
    xhat: &Bfp,
    r: &[u64],
    x_exp: i32,
    rows: usize,
    cols: usize,
) -> Result<Bfp, KernelError> {
    const OP: &str = "layernorm_bwd";
    if let Some(early) = check_layernorm_bwd(dxhat, xhat, r, rows, cols)? {
        return Ok(early);
    }
    let e = dxhat.exp as i64 + 2 * xhat.exp as i64 - x_exp as i64 + 16 - 24;
    let (wide, exact, mx) = layernorm_bwd_rows::<f64>(dxhat, xhat, r, cols);
    if exact {
        // mx is the largest |output|, exact (the outputs are exact f64 integers).
        let k = requant_shift(mx as u64 as u128, B16_MANT_MAX);
        return round_f64_vals(OP, &wide, e, k);
    }
    let (wide, _, _) = layernorm_bwd_rows::<i128>(dxhat, xhat, r, cols);
    requant_i128(OP, &wide, e, B16_MANT_MAX)
}

/// Largest bound of `|N|` for which [`layernorm_bwd`] forms `N` in i64.
const LN_BWD_N_NARROW_MAX: u128 = 1 << 62;

/// The unrounded layernorm_bwd outputs, whether every one was stored exactly and (for f64)
/// their largest magnitude.
fn layernorm_bwd_rows<T: Wide>(
    dxhat: &Bfp,
    xhat: &Bfp,
    r: &[u64],
    cols: usize,
) -> (Vec<T>, bool, f64) {
    let c = cols as i128;
    let sh = (-2 * xhat.exp) as u32;
    let mut wide = vec![T::default(); dxhat.len()];
    let (exact, mx) = wide
        .par_chunks_mut(cols)
        .zip(r.par_iter())
        .zip(dxhat.mant.par_chunks(cols).zip(xhat.mant.par_chunks(cols)))
        .with_min_len(rows_per_task(cols))
        .map(|((out, &rr), (g, h))| {
            if rr == 0 {
                return (true, 0.0);
            }
            // |Σ g| ≤ C·2^15 < 2^43 and |Σ g·h| ≤ C·2^30 < 2^58: exact in i64.
            let a64 = g.iter().map(|&v| v as i64).sum::<i64>();
            let b64 = g
                .iter()
                .zip(h)
                .map(|(&x, &y)| x as i64 * y as i64)
                .sum::<i64>();
            let (a, b) = (a64 as i128, b64 as i128);
            let div = DivRhe::new(rr as i128, 24);
            let mut exact = true;
            let mut mx = 0f64;
            // |C·g − A| ≤ C·2^15 + |A| and |h·B| ≤ 2^15·|B|: when the shifted bound is below
            // 2^62, N is formed in i64 (the same value as the i128 expression).
            let bound = ((c as u128 * B16_MANT_MAX as u128 + a64.unsigned_abs() as u128)
                .checked_shl(sh)
                .filter(|v| {
                    v >> sh == c as u128 * B16_MANT_MAX as u128 + a64.unsigned_abs() as u128
                }))
            .map(|v| v + B16_MANT_MAX as u128 * b64.unsigned_abs() as u128);
            if bound.is_some_and(|v| v < LN_BWD_N_NARROW_MAX) {
                let c64 = cols as i64;
                if T::F64 {
                    let mut sure = true;
                    let mut mx = 0f64;
                    for ((o, &gi), &hi) in out.iter_mut().zip(g).zip(h) {
                        let n = ((c64 * gi as i64 - a64) << sh) - hi as i64 * b64;
                        let (q, ok) = div.div_est(n);
                        *o = T::from_f64(q);
                        let a = q.abs();
                        mx = if a > mx { a } else { mx };
                        sure &= ok;
                    }
                    if sure {
                        return (true, mx);
                    }
                }
                for ((o, &gi), &hi) in out.iter_mut().zip(g).zip(h) {
                    let n = ((c64 * gi as i64 - a64) << sh) - hi as i64 * b64;
                    let (w, ok) = T::put(div.div(n));
                    *o = w;
                    mx = mx.max(w.mag());
                    exact &= ok;
                }
            } else {
                for ((o, &gi), &hi) in out.iter_mut().zip(g).zip(h) {
                    let n = ((c * gi as i128 - a) << sh) - hi as i128 * b;
                    let (w, ok) = T::put(match i64::try_from(n) {
                        Ok(n64) => div.div(n64),
                        Err(_) => div_rhe(n << 24, rr as i128),
                    });
                    *o = w;
                    mx = mx.max(w.mag());
                    exact &= ok;
                }
            }
            (exact, mx)
        })
        .reduce(|| (true, 0.0), |x, y| (x.0 && y.0, x.1.max(y.1)));
    (wide, exact, mx)
}
