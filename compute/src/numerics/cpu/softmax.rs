//! Softmax, its backward pass and cross-entropy on the CPU: exp2 from tables (cached per
//! exponent and scale), row sums in i64, quotients from [`DivRhe`].

use super::rounding::{f64_scale, finish, requant_i64, rhe_f64, DivRhe};
use super::tables::{exp2_q31, TableCache};
use super::{rows_per_task, PAR_MIN_LEN};
use crate::numerics::fixed::{
    bitlen, exp2_tables, log2_q16, requant_shift, rhe, rhe64, Rhe, B16_MANT_MAX, LN2_Q30, LOG2E_Q30,
};
use crate::numerics::kernels::{
    check_cross_entropy, check_softmax, check_softmax_bwd, shift_sat, Bfp, KernelError, EXP_ARG_SAT,
};
use rayon::prelude::*;
use std::sync::Arc;

/// `shift_sat(t, sh).min(EXP_ARG_SAT)` for `t ≥ 0`. A right shift is [`rhe64`] (exact for
/// any amount). A left shift of `t > 0` saturates at `2^100 > EXP_ARG_SAT`, so the result is
/// `EXP_ARG_SAT` exactly when `t·2^(−sh) ≥ 2^40`, i.e. when `bitlen(t) − sh > 40`.
#[inline]
fn exp_arg(t: i64, sh: i64) -> i64 {
    if sh >= 0 {
        rhe64(t, sh.min(127) as u32).min(EXP_ARG_SAT as i64)
    } else if t == 0 {
        0
    } else if bitlen(t as u128) as i64 - sh > 40 {
        EXP_ARG_SAT as i64
    } else {
        t << (-sh)
    }
}

/// Per-tensor constants of the softmax exponent `y = rhe(t · scale · LOG2E_Q30, 30 − exp)`,
/// `t = mx − m ∈ [0, 2^16)`.
#[derive(Clone, Copy)]
struct SoftmaxArg {
    /// `scale · LOG2E_Q30`.
    f: i128,
    /// `30 − exp`.
    sh: i64,
    /// `t · f < 2^63` for every `t < 2^16`: the product can be formed in i64.
    narrow: bool,
    /// The rounding by `sh` when `0 ≤ sh ≤ 61` (hoisted constants).
    rh: Option<Rhe>,
}

impl SoftmaxArg {
    fn new(exp: i32, scale_q16: u32) -> Self {
        let f = scale_q16 as i128 * LOG2E_Q30;
        let sh = 30 - exp as i64;
        Self {
            f,
            sh,
            narrow: f < 1 << 47,
            rh: (0..=Rhe::INLINE_K_MAX as i64)
                .contains(&sh)
                .then(|| Rhe::new(sh as u32)),
        }
    }

    /// The Q16 argument `y` of `exp2_neg_q31` for `t = mx − m`.
    #[inline]
    fn y(self, t: i32) -> i64 {
        match (self.narrow, self.rh) {
            (true, Some(rh)) => rh.round(t as i64 * self.f as i64).min(EXP_ARG_SAT as i64),
            (true, None) => exp_arg(t as i64 * self.f as i64, self.sh),
            (false, _) => shift_sat(t as i128 * self.f, self.sh).min(EXP_ARG_SAT) as i64,
        }
    }
}

/// [`crate::numerics::kernels::Kernels::softmax`]. `E ≤ 2^31`, `E·2^30 ≤ 2^61` and `p ≤ 2^30` fit in
/// i64 (and `p` in the i32 output, rounded in place once the shift is known); `ΣE` fits in
/// i64 for fewer than `2^32` columns.
pub(super) fn softmax(
    x: &Bfp,
    rows: usize,
    cols: usize,
    causal: bool,
    scale_q16: u32,
) -> Result<Bfp, KernelError> {
    const OP: &str = "softmax";
    check_softmax(x, rows, cols)?;
    let tables = exp2_tables();
    let arg = SoftmaxArg::new(x.exp, scale_q16);
    let table = softmax_table(x.exp, scale_q16, x.len());
    let exps = |t: i32| match &table {
        Some(tab) => tab[t as usize] as i64,
        None => exp2_q31(tables, arg.y(t)),
    };
    let mut mant = vec![0i32; rows * cols];
    let mx = mant
        .par_chunks_mut(cols.max(1))
        .zip(x.mant.par_chunks(cols.max(1)))
        .enumerate()
        .with_min_len(rows_per_task(cols))
        .map_init(Vec::new, |es: &mut Vec<i64>, (row, (out, xm))| {
            let used = if causal { row % cols + 1 } else { cols };
            let xm = &xm[..used];
            let m0 = xm.iter().copied().max().unwrap_or(0);
            es.clear();
            es.extend(xm.iter().map(|&m| exps(m0 - m)));
            let total: i64 = es.iter().sum();
            let div = DivRhe::new(total as i128, 30);
            // Estimates first (p ≤ 2^30); the row is redone exactly if one is unsure.
            let mut mx = 0f64;
            let mut sure = true;
            for (o, &e) in out.iter_mut().zip(es.iter()) {
                let (p, ok) = div.div_est(e);
                mx = if p > mx { p } else { mx };
                sure &= ok;
                *o = p as i32;
            }
            if sure {
                return mx as u32;
            }
            let mut mx = 0u32;
            for (o, &e) in out.iter_mut().zip(es.iter()) {
                let p = div.div(e) as i32;
                mx = mx.max(p.unsigned_abs());
                *o = p;
            }
            mx
        })
        .max()
        .unwrap_or(0);
    round_in_place(&mut mant, mx);
    let k = requant_shift(mx as u128, B16_MANT_MAX);
    finish(OP, mant, -30, k)
}

/// Number of distinct softmax arguments `t = max − m ∈ [0, 2·B16_MANT_MAX]`.
pub(super) const SOFTMAX_TABLE_LEN: usize = 2 * B16_MANT_MAX as usize + 1;

/// Number of softmax tables kept (one per input exponent and scale, most recent first).
const SOFTMAX_CACHE_LEN: usize = 8;

/// A softmax table: `E(t) ≤ 2^31` (u32) for every `t`.
type SoftmaxTable = Arc<Vec<u32>>;

/// Tables of recent `(exp, scale_q16)`: attention scores keep their exponent over many steps.
static SOFTMAX_CACHE: TableCache<(i32, u32), Vec<u32>, SOFTMAX_CACHE_LEN> = TableCache::new();

/// The cached table of `E(t) = exp2_q31(y(t))` for `(exp, scale_q16)`, or a new one when the
/// tensor has at least as many elements as the table (building costs about as much as
/// evaluating that many). `E` is a pure function of `(t, exp, scale_q16)`, so looking it up
/// gives the same bits as computing it.
fn softmax_table(exp: i32, scale_q16: u32, len: usize) -> Option<SoftmaxTable> {
    let key = (exp, scale_q16);
    if let Some(table) = SOFTMAX_CACHE.get(&key) {
        return Some(table);
    }
    if len < SOFTMAX_TABLE_LEN {
        return None;
    }
    let t = exp2_tables();
    let arg = SoftmaxArg::new(exp, scale_q16);
    let table: SoftmaxTable = Arc::new(
        (0..SOFTMAX_TABLE_LEN)
            .into_par_iter()
            .with_min_len(PAR_MIN_LEN)
            .map(|i| exp2_q31(t, arg.y(i as i32)) as u32)
            .collect(),
    );
    SOFTMAX_CACHE.put(key, table.clone());
    Some(table)
}

/// Rounds i32 values in place by the requantization shift of their maximum `mx` to B16.
fn round_in_place(mant: &mut [i32], mx: u32) {
    let k = requant_shift(mx as u128, B16_MANT_MAX);
    if k > 0 {
        let scale = f64_scale(k);
        mant.par_chunks_mut(PAR_MIN_LEN).for_each(|c| {
            for v in c {
                *v = rhe_f64(*v as f64, scale);
            }
        });
    }
}

/// [`crate::numerics::kernels::Kernels::softmax_bwd`]. `D = Σ p·dp` is below `C·2^30` (i64); `w` is
/// the same i128 product as the reference; the rounding pass uses 64 bits when the largest
/// `|w|` fits. Two passes recompute `w` instead of storing it.
pub(super) fn softmax_bwd(
    p: &Bfp,
    dp: &Bfp,
    rows: usize,
    cols: usize,
    scale_q16: u32,
) -> Result<Bfp, KernelError> {
    const OP: &str = "softmax_bwd";
    check_softmax_bwd(p, dp, rows, cols)?;
    let sh = (-p.exp) as u32;
    let cw = cols.max(1);
    let scale = scale_q16 as i128;
    let w = move |a: i32, b: i32, d: i128| a as i128 * (((b as i128) << sh) - d) * scale;
    // Per row: D (|D| ≤ C·2^30 < 2^58 in i64) and whether every w of the row fits in i64:
    // |w| ≤ 32767·(32767·2^sh + |D|)·scale (sh ≤ 64, so the bound fits in u128).
    let row_bound_ok = move |d: i64| {
        let lim = B16_MANT_MAX as u128;
        (lim * ((lim << sh) + d.unsigned_abs() as u128))
            .checked_mul(scale as u128)
            .is_some_and(|v| v <= i64::MAX as u128)
    };
    let (s64, sc64) = (sh, scale_q16 as i64);
    let w64 = move |a: i32, b: i32, d: i64| a as i64 * (((b as i64) << s64) - d) * sc64;
    let mut ds = vec![(0i64, false); rows];
    let mx = ds
        .par_iter_mut()
        .zip(p.mant.par_chunks(cw).zip(dp.mant.par_chunks(cw)))
        .with_min_len(rows_per_task(cols))
        .map(|(dr, (pm, dm))| {
            let d = pm
                .iter()
                .zip(dm)
                .map(|(&a, &b)| a as i64 * b as i64)
                .sum::<i64>();
            let narrow = row_bound_ok(d);
            *dr = (d, narrow);
            if narrow {
                pm.iter()
                    .zip(dm)
                    .fold(0u64, |m, (&a, &b)| m.max(w64(a, b, d).unsigned_abs()))
                    as u128
            } else {
                pm.iter().zip(dm).fold(0u128, |m, (&a, &b)| {
                    m.max(w(a, b, d as i128).unsigned_abs())
                })
            }
        })
        .max()
        .unwrap_or(0);
    let k = requant_shift(mx, B16_MANT_MAX);
    let fits = mx <= i64::MAX as u128;
    let rh = Rhe::new(k);
    let mut mant = vec![0i32; rows * cols];
    mant.par_chunks_mut(cw)
        .zip(ds.par_iter())
        .zip(p.mant.par_chunks(cw).zip(dp.mant.par_chunks(cw)))
        .with_min_len(rows_per_task(cols))
        .for_each(|((out, &(d, narrow)), (pm, dm))| {
            if narrow {
                for ((o, &a), &b) in out.iter_mut().zip(pm).zip(dm) {
                    *o = rh.round(w64(a, b, d)) as i32;
                }
            } else {
                for ((o, &a), &b) in out.iter_mut().zip(pm).zip(dm) {
                    let v = w(a, b, d as i128);
                    *o = if fits {
                        rh.round(v as i64) as i32
                    } else {
                        rhe(v, k) as i32
                    };
                }
            }
        });
    let e = 2 * p.exp as i64 + dp.exp as i64 - 16;
    finish(OP, mant, e, k)
}

/// [`crate::numerics::kernels::Kernels::cross_entropy`]: softmax rows as in [`softmax`] (scale 1.0);
/// `(p − [j = t]·2^30)·2^10` is below `2^41` and the gradient below `2^40`, in i64.
pub(super) fn cross_entropy(
    logits: &Bfp,
    targets: &[u32],
    rows: usize,
    cols: usize,
) -> Result<(i64, Bfp), KernelError> {
    const OP: &str = "cross_entropy";
    if let Some(early) = check_cross_entropy(logits, targets, rows, cols)? {
        return Ok(early);
    }
    let tables = exp2_tables();
    let arg = SoftmaxArg::new(logits.exp, 1 << 16);
    let by_rows = DivRhe::new(rows as i128, 10);
    let mut wide = vec![0i64; rows * cols];
    let loss: i64 = wide
        .par_chunks_mut(cols)
        .zip(logits.mant.par_chunks(cols))
        .zip(targets.par_iter())
        .with_min_len(rows_per_task(cols))
        .map_init(Vec::new, |ey: &mut Vec<(i64, i64)>, ((out, xm), &t)| {
            let m0 = xm.iter().copied().max().unwrap_or(0);
            ey.clear();
            ey.extend(xm.iter().map(|&m| {
                let y = arg.y(m0 - m);
                (exp2_q31(tables, y), y)
            }));
            let total: i64 = ey.iter().map(|&(e, _)| e).sum();
            let div = DivRhe::new(total as i128, 30);
            for (j, (o, &(e, _))) in out.iter_mut().zip(ey.iter()).enumerate() {
                let pq = div.div(e) as i64;
                let y = if j == t as usize { 1i64 << 30 } else { 0 };
                *o = by_rows.div(pq - y) as i64;
            }
            let yt = ey[t as usize].1 as i128;
            let l2 = log2_q16(total as u64) as i128 - (31 << 16) + yt;
            rhe(l2 * LN2_Q30, 30) as i64
        })
        .sum();
    let g = requant_i64(OP, &wide, -40, B16_MANT_MAX)?;
    Ok((loss, g))
}
