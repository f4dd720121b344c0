//! The elementwise and column kernels of the CPU reference: `add` (with the operand
//! alignment AdamW shares), `requant`, `rescale`, `mul_cols`, `col_dot`, `scatter_add_rows`,
//! `sum_squares` and `scale`.

use super::rounding::{
    f64_scale, finish, max_abs1, requant_f64_1, requant_f64_2, requant_i128, requant_i64,
    requant_map1, requant_map2, rhe_f64, round_chunk1, F64_EXACT_BITS,
};
use super::PAR_MIN_LEN;
use crate::numerics::fixed::{requant_shift, rhe64, B16_MANT_MAX};
use crate::numerics::kernels::{
    align_exp, check_add, check_col_dot, check_mant, check_mul_cols, check_rescale,
    check_scatter_add_rows, Bfp, KernelError,
};
use rayon::prelude::*;

/// The alignment of one operand to the common exponent `e0` (see
/// [`crate::numerics::kernels::align`]): a left shift `e − e0` (at most `ADD_ALIGN_BITS_MAX = 40` by
/// the definition of `align_exp`) or a rounding right shift `e0 − e` (any amount). The
/// exponent arithmetic is the same i32 expression as `align`'s, so even wrapped exponents
/// give the same shift.
#[derive(Clone, Copy)]
pub(super) struct Align {
    pub(super) left: u32,
    pub(super) right: u32,
}

impl Align {
    pub(super) fn new(e: i32, e0: i32) -> Self {
        if e >= e0 {
            Self {
                left: (e - e0) as u32,
                right: 0,
            }
        } else {
            Self {
                left: 0,
                right: (e0 - e) as u32,
            }
        }
    }

    /// `align(x, e, e0)` for `|x| < 2^23`: the left shift is at most 40, so the result is
    /// below `2^63` in magnitude; [`rhe64`] equals [`rhe`] for any shift.
    #[inline]
    pub(super) fn apply(self, x: i64) -> i64 {
        if self.right == 0 {
            x << self.left
        } else {
            rhe64(x, self.right)
        }
    }

    /// `align(x, e, e0)` for any `|x| < 2^63` (the left shift is at most 40, the i128 result
    /// below `2^103`).
    #[inline]
    pub(super) fn apply_wide(self, x: i64) -> i128 {
        if self.right == 0 {
            (x as i128) << self.left
        } else {
            rhe64(x, self.right) as i128
        }
    }
}

/// [`crate::numerics::kernels::Kernels::add`]. Both operands are B24 (`|x| ≤ 2^23 − 1`); if the
/// exponents differ by 40 or more the coarser one is shifted left by exactly 40 and the finer
/// one rounded right (magnitude `≤ 2^23 − 1`), so `|sum| ≤ (2^23 − 1)·2^40 + 2^23 < 2^63`;
/// otherwise the coarser one is shifted by less than 40 and the bound is smaller still. So
/// the exact sums fit in i64.
pub(super) fn add(a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
    const OP: &str = "add";
    check_add(a, b)?;
    let e0 = align_exp(a.exp, b.exp);
    let (al, bl) = (Align::new(a.exp, e0), Align::new(b.exp, e0));
    if al.right == 0 && bl.right == 0 && al.left.max(bl.left) <= ADD_F64_LEFT_MAX {
        // No rounding shift and |x·2^l| ≤ 2^23·2^27: sums below 2^51, exact in f64.
        let (sa, sb) = (2f64.powi(al.left as i32), 2f64.powi(bl.left as i32));
        return requant_f64_2(
            OP,
            &a.mant,
            &b.mant,
            e0 as i64,
            B16_MANT_MAX,
            move |x, y| x as f64 * sa + y as f64 * sb,
        );
    }
    requant_map2(OP, &a.mant, &b.mant, e0 as i64, B16_MANT_MAX, |x, y| {
        al.apply(x as i64) + bl.apply(y as i64)
    })
}

/// Largest alignment shift of [`add`]'s f64 path (`2^23·2^27·2 ≤ 2^51`).
const ADD_F64_LEFT_MAX: u32 = 27;

/// [`crate::numerics::kernels::Kernels::requant`]: mantissas are i32, so 64-bit rounding is exact; a
/// shift of 0 is a copy.
pub(super) fn requant(x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
    const OP: &str = "requant";
    let k = requant_shift(max_abs1(&x.mant, |v| v as i64) as u128, mant_max);
    let mant = if k == 0 {
        x.mant.clone()
    } else {
        round_i32(&x.mant, k)
    };
    finish(OP, mant, x.exp as i64, k)
}

/// `rhe(v, k)` of i32 values (`|v| ≤ 2^31 < 2^51`) through [`rhe_f64`].
fn round_i32(x: &[i32], k: u32) -> Vec<i32> {
    let scale = f64_scale(k);
    let mut out = vec![0i32; x.len()];
    out.par_chunks_mut(PAR_MIN_LEN)
        .zip(x.par_chunks(PAR_MIN_LEN))
        .for_each(|(o, c)| round_chunk1(o, c, scale, &|v| v as f64));
    out
}

/// Largest right shift worth computing for an i32 mantissa: `|x| ≤ 2^31 < 2^(k−1)` for every
/// `k ≥ 62`, so `rhe(x, k) = 0` there, as it is for `rhe64(x, 62)`.
const I32_SHIFT_MAX: u32 = 62;

/// [`crate::numerics::kernels::Kernels::rescale`].
pub(super) fn rescale(x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
    check_rescale(x, exp)?;
    let k = ((exp - x.exp) as u32).min(I32_SHIFT_MAX);
    let mant = if k == 0 {
        x.mant.clone()
    } else {
        round_i32(&x.mant, k)
    };
    Ok(Bfp::new(mant, exp))
}

/// [`crate::numerics::kernels::Kernels::mul_cols`]: products of two B16 mantissas are below `2^30`.
pub(super) fn mul_cols(x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
    const OP: &str = "mul_cols";
    check_mul_cols(x, w, rows, cols)?;
    let base = x.exp as i64 + w.exp as i64;
    let row_min = (PAR_MIN_LEN / cols.max(1)).max(1);
    // Products of B16 mantissas are below 2^30: exact in f64.
    let wf: Vec<f64> = w.mant.iter().map(|&c| c as f64).collect();
    let mx = x
        .mant
        .par_chunks(cols.max(1))
        .with_min_len(row_min)
        .map(|row| {
            row.iter()
                .zip(&wf)
                .fold(0f64, |m, (&v, &c)| m.max((v as f64 * c).abs()))
        })
        .reduce(|| 0.0, f64::max);
    let k = requant_shift(mx as u64 as u128, B16_MANT_MAX);
    let scale = f64_scale(k);
    let mut mant = vec![0i32; x.len()];
    mant.par_chunks_mut(cols.max(1))
        .zip(x.mant.par_chunks(cols.max(1)))
        .with_min_len(row_min)
        .for_each(|(out, row)| {
            for ((o, &v), &c) in out.iter_mut().zip(row).zip(&wf) {
                *o = rhe_f64(v as f64 * c, scale);
            }
        });
    finish(OP, mant, base, k)
}

/// [`crate::numerics::kernels::Kernels::col_dot`]: each product is below `2^30` and there are at most
/// `TENSOR_ELEMS_MAX = 2^28` rows, so column sums stay below `2^58` in i64. Row blocks are
/// summed in parallel; integer addition is exact, so the order does not matter.
pub(super) fn col_dot(a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
    const OP: &str = "col_dot";
    check_col_dot(a, b, rows, cols)?;
    let base = a.exp as i64 + b.exp as i64;
    if cols == 0 {
        return finish(OP, Vec::new(), base, 0);
    }
    let block = (PAR_MIN_LEN / cols).max(1) * cols;
    let sums = a
        .mant
        .par_chunks(block)
        .zip(b.mant.par_chunks(block))
        .fold(
            || vec![0i64; cols],
            |mut acc, (ab, bb)| {
                for (ra, rb) in ab.chunks(cols).zip(bb.chunks(cols)) {
                    for ((s, &x), &y) in acc.iter_mut().zip(ra).zip(rb) {
                        *s += x as i64 * y as i64;
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![0i64; cols],
            |mut x, y| {
                for (s, v) in x.iter_mut().zip(y) {
                    *s += v;
                }
                x
            },
        );
    requant_i64(OP, &sums, base, B16_MANT_MAX)
}

/// [`crate::numerics::kernels::Kernels::scatter_add_rows`]: at most `2^28` B16 values add up to less
/// than `2^43`, exact in i64.
pub(super) fn scatter_add_rows(
    src: &Bfp,
    idx: &[u32],
    out_rows: usize,
    cols: usize,
) -> Result<Bfp, KernelError> {
    const OP: &str = "scatter_add_rows";
    check_scatter_add_rows(src, idx, out_rows, cols)?;
    let mut wide = vec![0i64; out_rows * cols];
    if cols > 0 {
        for (&t, row) in idx.iter().zip(src.mant.chunks(cols)) {
            let dst = &mut wide[t as usize * cols..(t as usize + 1) * cols];
            for (d, &v) in dst.iter_mut().zip(row) {
                *d += v as i64;
            }
        }
    }
    requant_i64(OP, &wide, src.exp as i64, B16_MANT_MAX)
}

/// [`crate::numerics::kernels::Kernels::sum_squares`]: squares are below `2^30` and there are at most
/// `2^28` of them, so the sum fits in u64.
pub(super) fn sum_squares(x: &Bfp) -> Result<u128, KernelError> {
    check_mant("sum_squares", "x", &x.mant, B16_MANT_MAX)?;
    Ok(x.mant
        .par_iter()
        .with_min_len(PAR_MIN_LEN)
        .map(|&v| (v as i64 * v as i64) as u64)
        .sum::<u64>() as u128)
}

/// Largest `|c_q30|` for which `m · c_q30` fits in i64 for every B16 `m`:
/// `32767 · 2^48 < 2^63`.
const SCALE_NARROW_MAX: i64 = 1 << 48;

/// Bits of `|c_q30|` below which [`scale`] takes the f64 path.
const SCALE_F64_BITS: u32 = F64_EXACT_BITS - 15;

/// [`crate::numerics::kernels::Kernels::scale`].
pub(super) fn scale(x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
    const OP: &str = "scale";
    check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
    let base = x.exp as i64 - 30;
    if c_q30.unsigned_abs() < 1 << SCALE_F64_BITS {
        // |m·c| < 2^15·2^36 = 2^51: exact in f64.
        let c = c_q30 as f64;
        return requant_f64_1(OP, &x.mant, base, B16_MANT_MAX, move |v| v as f64 * c);
    }
    if c_q30.unsigned_abs() <= SCALE_NARROW_MAX as u64 {
        return requant_map1(OP, &x.mant, base, B16_MANT_MAX, |v| v as i64 * c_q30);
    }
    let wide: Vec<i128> = x
        .mant
        .par_iter()
        .with_min_len(PAR_MIN_LEN)
        .map(|&v| v as i128 * c_q30 as i128)
        .collect();
    requant_i128(OP, &wide, base, B16_MANT_MAX)
}
