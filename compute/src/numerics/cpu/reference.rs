//! The CPU kernels as they were before the fast paths of [`super`]: each function is the
//! verbatim old body of its `CpuKernels` method (and the old private helpers), kept as the
//! bit-exact oracle of the proptests in `super::tests`.

use crate::numerics::fixed::{
    bitlen, div_rhe, exp2_neg_q31, isqrt, log2_q16, rhe, B16_MANT_MAX, LN2_Q30, LOG2E_Q30,
};
use crate::numerics::kernels::*;
use rayon::prelude::*;

pub(crate) fn add(a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
    const OP: &str = "add";
    check_add(a, b)?;
    let e0 = align_exp(a.exp, b.exp);
    let sums: Vec<i128> = a
        .mant
        .par_iter()
        .zip(b.mant.par_iter())
        .map(|(&x, &y)| align(x as i128, a.exp, e0) + align(y as i128, b.exp, e0))
        .collect();
    requant_wide(OP, &sums, e0 as i64, B16_MANT_MAX)
}

pub(crate) fn requant(x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
    let w: Vec<i128> = x.mant.par_iter().map(|&v| v as i128).collect();
    requant_wide("requant", &w, x.exp as i64, mant_max)
}

pub(crate) fn rescale(x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
    check_rescale(x, exp)?;
    let k = (exp - x.exp) as u32;
    Ok(Bfp::new(
        x.mant
            .par_iter()
            .map(|&v| rhe(v as i128, k) as i32)
            .collect(),
        exp,
    ))
}

pub(crate) fn mul_cols(x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
    const OP: &str = "mul_cols";
    check_mul_cols(x, w, rows, cols)?;
    let wide: Vec<i128> = x
        .mant
        .par_iter()
        .enumerate()
        .map(|(i, &v)| v as i128 * w.mant[i % cols] as i128)
        .collect();
    requant_wide(OP, &wide, x.exp as i64 + w.exp as i64, B16_MANT_MAX)
}

pub(crate) fn col_dot(a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
    const OP: &str = "col_dot";
    check_col_dot(a, b, rows, cols)?;
    let wide: Vec<i128> = (0..cols)
        .into_par_iter()
        .map(|c| {
            (0..rows)
                .map(|r| a.mant[r * cols + c] as i128 * b.mant[r * cols + c] as i128)
                .sum()
        })
        .collect();
    requant_wide(OP, &wide, a.exp as i64 + b.exp as i64, B16_MANT_MAX)
}

pub(crate) fn layernorm(x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
    const OP: &str = "layernorm";
    if let Some(early) = check_layernorm(x, rows, cols)? {
        return Ok(early);
    }
    let c = cols as i128;
    let mut wide = vec![0i128; rows * cols];
    let mut rs = vec![0u64; rows];
    wide.par_chunks_mut(cols)
        .zip(rs.par_iter_mut())
        .zip(x.mant.par_chunks(cols))
        .for_each(|((out, r), xm)| {
            let a: i128 = xm.iter().map(|&v| v as i128).sum();
            let s: i128 = xm.iter().map(|&v| (c * v as i128 - a).pow(2)).sum();
            if s == 0 {
                return;
            }
            let rr = isqrt(((s as u128) << 32) / cols as u128) as i128;
            *r = rr as u64;
            for (o, &v) in out.iter_mut().zip(xm) {
                *o = div_rhe((c * v as i128 - a) << 40, rr);
            }
        });
    Ok((requant_wide(OP, &wide, -24, B16_MANT_MAX)?, rs))
}

pub(crate) fn layernorm_bwd(
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
    let c = cols as i128;
    let sh = (-2 * xhat.exp) as u32;
    let mut wide = vec![0i128; rows * cols];
    wide.par_chunks_mut(cols)
        .zip(r.par_iter())
        .zip(dxhat.mant.par_chunks(cols).zip(xhat.mant.par_chunks(cols)))
        .for_each(|((out, &rr), (g, h))| {
            if rr == 0 {
                return;
            }
            let a: i128 = g.iter().map(|&v| v as i128).sum();
            let b: i128 = g.iter().zip(h).map(|(&x, &y)| x as i128 * y as i128).sum();
            for ((o, &gi), &hi) in out.iter_mut().zip(g).zip(h) {
                let n = ((c * gi as i128 - a) << sh) - hi as i128 * b;
                *o = div_rhe(n << 24, rr as i128);
            }
        });
    let e = dxhat.exp as i64 + 2 * xhat.exp as i64 - x_exp as i64 + 16 - 24;
    requant_wide(OP, &wide, e, B16_MANT_MAX)
}

pub(crate) fn softmax(
    x: &Bfp,
    rows: usize,
    cols: usize,
    causal: bool,
    scale_q16: u32,
) -> Result<Bfp, KernelError> {
    const OP: &str = "softmax";
    check_softmax(x, rows, cols)?;
    let mut wide = vec![0i128; rows * cols];
    wide.par_chunks_mut(cols.max(1))
        .zip(x.mant.par_chunks(cols.max(1)))
        .enumerate()
        .for_each(|(row, (out, xm))| {
            let used = if causal { row % cols + 1 } else { cols };
            let e = softmax_exps(&xm[..used], x.exp, scale_q16);
            let total: i128 = e.iter().map(|&(v, _)| v as i128).sum();
            for (o, &(v, _)) in out.iter_mut().zip(&e) {
                *o = div_rhe((v as i128) << 30, total);
            }
        });
    requant_wide(OP, &wide, -30, B16_MANT_MAX)
}

pub(crate) fn softmax_bwd(
    p: &Bfp,
    dp: &Bfp,
    rows: usize,
    cols: usize,
    scale_q16: u32,
) -> Result<Bfp, KernelError> {
    const OP: &str = "softmax_bwd";
    check_softmax_bwd(p, dp, rows, cols)?;
    let sh = (-p.exp) as u32;
    let mut wide = vec![0i128; rows * cols];
    wide.par_chunks_mut(cols.max(1))
        .zip(
            p.mant
                .par_chunks(cols.max(1))
                .zip(dp.mant.par_chunks(cols.max(1))),
        )
        .for_each(|(out, (pm, dm))| {
            let d: i128 = pm
                .iter()
                .zip(dm)
                .map(|(&a, &b)| a as i128 * b as i128)
                .sum();
            for ((o, &a), &b) in out.iter_mut().zip(pm).zip(dm) {
                *o = a as i128 * (((b as i128) << sh) - d) * scale_q16 as i128;
            }
        });
    let e = 2 * p.exp as i64 + dp.exp as i64 - 16;
    requant_wide(OP, &wide, e, B16_MANT_MAX)
}

pub(crate) fn cross_entropy(
    logits: &Bfp,
    targets: &[u32],
    rows: usize,
    cols: usize,
) -> Result<(i64, Bfp), KernelError> {
    const OP: &str = "cross_entropy";
    if let Some(early) = check_cross_entropy(logits, targets, rows, cols)? {
        return Ok(early);
    }
    let mut wide = vec![0i128; rows * cols];
    let losses: Vec<i64> = wide
        .par_chunks_mut(cols)
        .zip(logits.mant.par_chunks(cols))
        .zip(targets.par_iter())
        .map(|((out, xm), &t)| {
            let e = softmax_exps(xm, logits.exp, 1 << 16);
            let total: i128 = e.iter().map(|&(v, _)| v as i128).sum();
            for (j, (o, &(v, _))) in out.iter_mut().zip(&e).enumerate() {
                let pq = div_rhe((v as i128) << 30, total);
                let y = if j == t as usize { 1i128 << 30 } else { 0 };
                *o = div_rhe((pq - y) << 10, rows as i128);
            }
            let yt = e[t as usize].1 as i128;
            let l2 = log2_q16(total as u64) as i128 - (31 << 16) + yt;
            rhe(l2 * LN2_Q30, 30) as i64
        })
        .collect();
    let g = requant_wide(OP, &wide, -40, B16_MANT_MAX)?;
    Ok((losses.iter().sum(), g))
}

pub(crate) fn gelu(x: &Bfp) -> Result<Bfp, KernelError> {
    const OP: &str = "gelu";
    check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
    let table = GeluTable::new(x);
    let wide: Vec<i128> = x
        .mant
        .par_iter()
        .map(|&m| m as i128 * table.get(m).0 as i128)
        .collect();
    requant_wide(OP, &wide, x.exp as i64 - 31, B16_MANT_MAX)
}

pub(crate) fn gelu_bwd(x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
    const OP: &str = "gelu_bwd";
    check_gelu_bwd(x, dy)?;
    let table = GeluTable::new(x);
    let wide: Vec<i128> = x
        .mant
        .par_iter()
        .zip(dy.mant.par_iter())
        .map(|(&m, &d)| d as i128 * table.get(m).1)
        .collect();
    requant_wide(OP, &wide, dy.exp as i64 - 31, B16_MANT_MAX)
}

pub(crate) fn scatter_add_rows(
    src: &Bfp,
    idx: &[u32],
    out_rows: usize,
    cols: usize,
) -> Result<Bfp, KernelError> {
    const OP: &str = "scatter_add_rows";
    check_scatter_add_rows(src, idx, out_rows, cols)?;
    let mut wide = vec![0i128; out_rows * cols];
    for (r, &t) in idx.iter().enumerate() {
        let dst = &mut wide[t as usize * cols..(t as usize + 1) * cols];
        for (d, &v) in dst.iter_mut().zip(&src.mant[r * cols..(r + 1) * cols]) {
            *d += v as i128;
        }
    }
    requant_wide(OP, &wide, src.exp as i64, B16_MANT_MAX)
}

pub(crate) fn sum_squares(x: &Bfp) -> Result<u128, KernelError> {
    check_mant("sum_squares", "x", &x.mant, B16_MANT_MAX)?;
    Ok(x.mant
        .par_iter()
        .map(|&v| (v as i64 * v as i64) as u128)
        .sum())
}

pub(crate) fn scale(x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
    check_mant("scale", "x", &x.mant, B16_MANT_MAX)?;
    let wide: Vec<i128> = x
        .mant
        .par_iter()
        .map(|&v| v as i128 * c_q30 as i128)
        .collect();
    requant_wide("scale", &wide, x.exp as i64 - 30, B16_MANT_MAX)
}

pub(crate) fn adamw(
    p: &Bfp,
    g: &Bfp,
    m: &Bfp,
    r: &Bfp,
    st: &AdamStep,
) -> Result<(Bfp, Bfp, Bfp), KernelError> {
    const OP: &str = "adamw";
    check_adamw(p, g, m, r)?;
    let one = 1i128 << 30;
    let (b1, b2) = (st.beta1_q30 as i128, st.beta2_q30 as i128);
    // 1. first moment
    let e0 = align_exp(m.exp, g.exp);
    let wm: Vec<i128> = m
        .mant
        .par_iter()
        .zip(g.mant.par_iter())
        .map(|(&a, &b)| b1 * align(a as i128, m.exp, e0) + (one - b1) * align(b as i128, g.exp, e0))
        .collect();
    let m2 = requant_wide(OP, &wm, e0 as i64 - 30, B16_MANT_MAX)?;
    // 2. sqrt of the second moment
    let (er, eg) = (2 * r.exp, 2 * g.exp);
    let e1 = align_exp(er, eg);
    let mut wv: Vec<i128> = r
        .mant
        .par_iter()
        .zip(g.mant.par_iter())
        .map(|(&a, &b)| {
            let (a2, b2g) = (a as i128 * a as i128, b as i128 * b as i128);
            b2 * align(a2, er, e1) + (one - b2) * align(b2g, eg, e1)
        })
        .collect();
    let mut ev = e1 as i64 - 30;
    if ev % 2 != 0 {
        wv.par_iter_mut().for_each(|w| *w <<= 1);
        ev -= 1;
    }
    let mx = wv.iter().copied().max().unwrap_or(0);
    let s = (100i64 - bitlen(mx as u128) as i64).max(0) / 2;
    let rq: Vec<i128> = wv
        .par_iter()
        .map(|&w| isqrt((w as u128) << (2 * s)) as i128)
        .collect();
    let r2 = requant_wide(OP, &rq, ev / 2 - s, B16_MANT_MAX)?;
    // 3.-5. parameter update
    let ea = m2.exp as i64 - r2.exp as i64 - 70;
    let sh = (p.exp as i64 - 16) - ea;
    let wp: Vec<i128> = p
        .mant
        .par_iter()
        .zip(m2.mant.par_iter().zip(r2.mant.par_iter()))
        .map(|(&pm, (&mm, &rm))| {
            let u = div_rhe((mm as i128) << 30, rm as i128 + 1);
            let a = shift_sat(st.alpha_q40 as i128 * u, sh);
            let d = rhe(st.decay_q40 as i128 * pm as i128, 24);
            ((pm as i128) << 16) - d - a
        })
        .collect();
    let p2 = requant_wide(OP, &wp, p.exp as i64 - 16, WIDE_MANT_MAX)?;
    Ok((p2, m2, r2))
}

/// For one softmax row (mantissas `xm`, exponent `exp`): per element `(E, y)` with `y` the Q16
/// power of two `rhe((mx − m) · scale_q16 · LOG2E_Q30, 30 − exp)` (saturated at 2^40) and
/// `E = exp2_neg_q31(y)`.
fn softmax_exps(xm: &[i32], exp: i32, scale_q16: u32) -> Vec<(i64, i64)> {
    let mx = xm.iter().copied().max().unwrap_or(0);
    xm.iter()
        .map(|&m| {
            let t = (mx - m) as i128 * scale_q16 as i128 * LOG2E_Q30;
            let y = shift_sat(t, 30 - exp as i64).min(EXP_ARG_SAT) as i64;
            (exp2_neg_q31(y), y)
        })
        .collect()
}

/// `(σ, g)` of GELU for every mantissa of one exponent (`g` the derivative factor of
/// [`Kernels::gelu_bwd`]), precomputed when the tensor is larger than the table; a pure function
/// of `(m, exp)`, so the results are identical to computing each element directly.
struct GeluTable {
    exp: i32,
    table: Option<Vec<(i64, i128)>>,
}

/// GELU's `(σ, g)` for one mantissa: `σ` as in `gelu_sigma`, `g = σ + rhe(z · rhe(σ·(2^31 − σ),
/// 31), 16)`.
fn gelu_sg(m: i32, exp: i32) -> (i64, i128) {
    let (z, s) = gelu_sigma(m, exp);
    let s128 = s as i128;
    let t = rhe(s128 * ((1i128 << 31) - s128), 31);
    (s, s128 + rhe(z * t, 16))
}

impl GeluTable {
    fn new(x: &Bfp) -> Self {
        let n = 2 * B16_MANT_MAX as usize + 1;
        let table = (x.len() > 2 * n).then(|| {
            (0..n)
                .into_par_iter()
                .map(|i| gelu_sg(i as i32 - B16_MANT_MAX, x.exp))
                .collect()
        });
        Self { exp: x.exp, table }
    }

    fn get(&self, m: i32) -> (i64, i128) {
        match &self.table {
            Some(t) => t[(m + B16_MANT_MAX) as usize],
            None => gelu_sg(m, self.exp),
        }
    }
}

/// GELU's `(z, σ(z))`: `z = 1.702·x` in Q16 (saturated at ±2^40), `σ` in Q31.
pub(crate) fn gelu_sigma(m: i32, exp: i32) -> (i128, i64) {
    let z =
        shift_sat(m as i128 * GELU_K_Q16 as i128, -(exp as i64)).clamp(-EXP_ARG_SAT, EXP_ARG_SAT);
    let y = rhe(z.abs() * LOG2E_Q30, 30) as i64;
    let e = exp2_neg_q31(y.min(EXP_ARG_SAT as i64)) as i128;
    let one = 1i128 << 31;
    let s = if z >= 0 {
        div_rhe(one << 31, one + e)
    } else {
        div_rhe(e << 31, one + e)
    };
    (z, s as i64)
}
