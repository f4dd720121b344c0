//! Fast bodies of the non-matmul [`CpuKernels`](crate::numerics::kernels::CpuKernels) methods.
//!
//! Every function here returns the same bits (and the same errors) as the straightforward i128
//! code it replaced, which is kept verbatim in the test-only `reference` module and compared
//! against these on random and extreme inputs. The speed comes from:
//! - 64-bit arithmetic wherever a bound (stated at each use) proves that the exact value fits;
//!   i128 only where it may not, decided per tensor or per element;
//! - exact division by an f64 estimate of the quotient corrected by integer remainders
//!   ([`DivRhe`]) instead of i128 division;
//! - f64 arithmetic where every value is an integer below `2^51` (exact), rounding half to even
//!   by adding `1.5·2^52` ([`rhe_f64`]): the elementwise loops vectorize;
//! - f64 quotients and roots taken only when provably farther from a rounding boundary than
//!   their error ([`DivRhe::div_est`], the AdamW roots), the exact path otherwise;
//! - recomputing cheap wide values in the requantization pass instead of collecting them into
//!   `Vec<i128>`, plain per-chunk loops (rayon's per-item closures were not inlined), and no
//!   per-row allocations;
//! - GELU tables cached per exponent across calls;
//! - rayon tasks of at least [`PAR_MIN_LEN`] elements, so small tensors do not pay fork/join.

use crate::numerics::fixed::{
    bitlen, div_rhe, exp2_tables, isqrt, log2_q16, requant_shift, rhe, rhe64, Rhe, B16_MANT_MAX,
    EXP2_TABLE_LEN, LN2_Q30, LOG2E_Q30,
};
use crate::numerics::kernels::{
    align_exp, check_adamw, check_add, check_col_dot, check_cross_entropy, check_gelu_bwd,
    check_layernorm, check_layernorm_bwd, check_mant, check_mul_cols, check_rescale,
    check_scatter_add_rows, check_softmax, check_softmax_bwd, checked_exp, shift_sat, AdamStep,
    Bfp, KernelError, EXP_ARG_SAT, GELU_K_Q16, WIDE_MANT_MAX,
};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

#[cfg(target_arch = "x86_64")]
mod adam_x86;
#[cfg(test)]
pub(crate) mod reference;
#[cfg(test)]
mod tests;

/// Smallest number of elements per rayon task: below it, fork/join costs more than it saves.
pub(crate) const PAR_MIN_LEN: usize = 1 << 12;

/// Largest quotient estimate [`DivRhe`] trusts: the f64 estimate has a relative error below
/// `2^−51` (three roundings of `2^−53`), so below `2^52` it is within 3 units of the exact
/// quotient once truncated.
const QUOT_EST_MAX: f64 = (1u64 << 52) as f64;

/// Largest divisor for which [`DivRhe`] computes remainders in wrapping i64: with the quotient
/// estimate within 3 units, the exact remainder `n·2^s − q·d` is below `4·d ≤ 2^62` in
/// magnitude, so its value modulo `2^64` (what wrapping arithmetic computes) is the value.
const DIV_NARROW_DIVISOR_MAX: i128 = 1 << 60;

/// Largest divisor for which [`DivRhe`] uses the estimate at all (remainders in i128): with
/// `q < 2^52`, `q·d < 2^116` cannot overflow.
const DIV_FAST_DIVISOR_MAX: i128 = 1 << 64;

/// Exact `div_rhe(n · 2^s, d)` (division rounded half to even) for many numerators `n` and one
/// divisor `d > 0`, without i128 division. `div_rhe` is odd-symmetric (`rhe(−x) = −rhe(x)`,
/// ties to even being sign-symmetric), so it divides `|n|`: the truncated f64 estimate of a
/// nonnegative quotient is then almost always its floor, the correction loops are almost never
/// taken, and the rounding is branch-free. The estimate only decides how many correction steps
/// run, never the result. Falls back to [`div_rhe`] when the estimate is `≥ 2^52` (or not
/// finite) or `d ≥ 2^64`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DivRhe {
    d: i128,
    s: u32,
    /// `2^s / d` in f64, or NaN to force the exact fallback.
    mul: f64,
    /// `d ≤ DIV_NARROW_DIVISOR_MAX`: remainders in wrapping i64.
    narrow: bool,
}

impl DivRhe {
    /// Divisor `d > 0`, numerators shifted left by `s ≤ 63` bits (so `n·2^s` fits in i128).
    pub(crate) fn new(d: i128, s: u32) -> Self {
        debug_assert!(d > 0 && s <= 63);
        let mul = if d > 0 && d < DIV_FAST_DIVISOR_MAX {
            2f64.powi(s as i32) / d as f64
        } else {
            f64::NAN
        };
        Self {
            d,
            s,
            mul,
            narrow: d <= DIV_NARROW_DIVISOR_MAX,
        }
    }

    /// `div_rhe(n · 2^s, d)`.
    #[inline]
    pub(crate) fn div(&self, n: i64) -> i128 {
        let a = n.unsigned_abs();
        // Signed conversion (one instruction); `a = 2^63` becomes negative and takes the
        // fallback, as does a NaN estimate.
        let est = a as i64 as f64 * self.mul;
        if !(0.0..QUOT_EST_MAX).contains(&est) {
            return div_rhe((n as i128) << self.s, self.d);
        }
        let q = if self.narrow {
            let d = self.d as i64;
            let mut q = est as i64;
            let mut r = (a << self.s).wrapping_sub((q as u64).wrapping_mul(d as u64)) as i64;
            while r < 0 {
                q -= 1;
                r += d;
            }
            while r >= d {
                q += 1;
                r -= d;
            }
            round_up(q, r as u64, d as u64) as i128
        } else {
            let d = self.d;
            let mut q = est as i64 as i128;
            let mut r = ((a as i128) << self.s) - q * d;
            while r < 0 {
                q -= 1;
                r += d;
            }
            while r >= d {
                q += 1;
                r -= d;
            }
            let twice = 2 * r;
            q + ((twice > d) | ((twice == d) & (q & 1 == 1))) as i128
        };
        if n < 0 {
            -q
        } else {
            q
        }
    }
}

/// Relative margin of [`DivRhe::div_est`]: the estimate `y` of `n·2^s/d` carries three
/// roundings (`d` to f64 when it exceeds `2^53`, `2^s/d`, the product; `n` is exact below
/// `2^53` and adds a fourth otherwise), so `|y − n·2^s/d| < |y|·2^−50`; the margin is four
/// times that.
const DIV_EST_MARGIN: f64 = 1.0 / (1u64 << 48) as f64;

/// Largest `|y|` [`DivRhe::div_est`] vouches for (the magic rounding needs `< 2^51`).
const DIV_EST_MAX: f64 = (1u64 << 50) as f64;

impl DivRhe {
    /// Branch-free estimate of [`DivRhe::div`]: `(q, sure)`, `q` being `n·2^s/d` rounded half
    /// to even in f64 from its estimate `y`. It is exact when `sure`: then `y` is farther from
    /// the nearest half-integer than from the exact quotient, so no rounding boundary lies
    /// between them and the exact quotient rounds to the same `q` (a NaN `y`, from the
    /// huge-divisor case, is never sure).
    #[inline]
    fn div_est(&self, n: i64) -> (f64, bool) {
        let y = n as f64 * self.mul;
        let q = (y + ROUND_MAGIC) - ROUND_MAGIC;
        let a = y.abs();
        // y − q is exact (|y − q| ≤ 1/2, a multiple of y's ulp); 1/2 − |y − q| is the
        // distance to the nearest half-integer.
        let off = 0.5 - (y - q).abs();
        (q, off > a * DIV_EST_MARGIN && a < DIV_EST_MAX)
    }
}

/// `q` rounded up by the remainder `0 ≤ r < d` as in `div_rhe`: `q + 1` iff `2r > d`, or
/// `2r = d` and `q` is odd; branch-free. `d < 2^63`, so `2r` does not overflow u64.
#[inline]
fn round_up(q: i64, r: u64, d: u64) -> i64 {
    let twice = 2 * r;
    q + ((twice > d) as i64 | ((twice == d) as i64 & q & 1))
}

/// `div_rhe(n, d)` for one numerator and divisor, both below `2^52` in magnitude (`d > 0`):
/// the f64 quotient of `|n|` (two exact operands, one rounding) truncates to the floor or one
/// below, and the exact i64 remainder corrects it. Same result as [`div_rhe`] for every input
/// (falls back to it outside the range).
#[inline]
fn div_rhe_small(n: i64, d: i64) -> i64 {
    const SMALL_MAX: u64 = 1 << 52;
    let a = n.unsigned_abs();
    if a >= SMALL_MAX || d as u64 >= SMALL_MAX || d <= 0 {
        return div_rhe(n as i128, d as i128) as i64;
    }
    // a, d < 2^52: every product and remainder below fits i64.
    let a = a as i64;
    // Both below 2^52: the i64 → f64 conversions are exact.
    let mut q = (a as f64 / d as f64) as i64;
    let mut r = a - q * d;
    while r < 0 {
        q -= 1;
        r += d;
    }
    while r >= d {
        q += 1;
        r -= d;
    }
    let q = round_up(q, r as u64, d as u64);
    if n < 0 {
        -q
    } else {
        q
    }
}

/// `rhe(x, k)` for i128 `x`, through [`rhe64`] when `x` fits in i64 (same result, see there).
#[inline]
fn rhe_wide(x: i128, k: u32) -> i128 {
    match i64::try_from(x) {
        Ok(v) => rhe64(v, k) as i128,
        Err(_) => rhe(x, k),
    }
}

/// The tensor result: mantissas with exponent `base_exp + k`, or `ExponentRange`.
fn finish(op: &'static str, mant: Vec<i32>, base_exp: i64, k: u32) -> Result<Bfp, KernelError> {
    Ok(Bfp {
        mant,
        exp: checked_exp(op, base_exp, k as i64)?,
    })
}

/// Largest `|f(v)|` over `x`, in parallel chunks of plain loops.
fn max_abs1<T: Copy + Sync, F: Fn(T) -> i64 + Sync>(x: &[T], f: F) -> u64 {
    x.par_chunks(PAR_MIN_LEN)
        .map(|c| c.iter().fold(0u64, |m, &v| m.max(f(v).unsigned_abs())))
        .max()
        .unwrap_or(0)
}

/// Largest `|f(v, w)|` over `x`, `y` (equal lengths).
fn max_abs2<F: Fn(i32, i32) -> i64 + Sync>(x: &[i32], y: &[i32], f: F) -> u64 {
    x.par_chunks(PAR_MIN_LEN)
        .zip(y.par_chunks(PAR_MIN_LEN))
        .map(|(c, d)| {
            c.iter()
                .zip(d)
                .fold(0u64, |m, (&v, &w)| m.max(f(v, w).unsigned_abs()))
        })
        .max()
        .unwrap_or(0)
}

/// `rhe(f(v), k)` for every `v` of `x`.
fn round1<T: Copy + Sync, F: Fn(T) -> i64 + Sync>(x: &[T], k: u32, f: F) -> Vec<i32> {
    let rh = Rhe::new(k);
    let mut out = vec![0i32; x.len()];
    out.par_chunks_mut(PAR_MIN_LEN)
        .zip(x.par_chunks(PAR_MIN_LEN))
        .for_each(|(o, c)| {
            for (o, &v) in o.iter_mut().zip(c) {
                *o = rh.round(f(v)) as i32;
            }
        });
    out
}

/// `rhe(f(v, w), k)` for every pair of `x`, `y` (equal lengths).
fn round2<F: Fn(i32, i32) -> i64 + Sync>(x: &[i32], y: &[i32], k: u32, f: F) -> Vec<i32> {
    let rh = Rhe::new(k);
    let mut out = vec![0i32; x.len()];
    out.par_chunks_mut(PAR_MIN_LEN)
        .zip(x.par_chunks(PAR_MIN_LEN).zip(y.par_chunks(PAR_MIN_LEN)))
        .for_each(|(o, (c, d))| {
            for ((o, &v), &w) in o.iter_mut().zip(c).zip(d) {
                *o = rh.round(f(v, w)) as i32;
            }
        });
    out
}

/// Requantizes exact i64 values like [`crate::numerics::kernels::requant_wide`] does their i128 copies
/// ([`rhe64`] equals [`rhe`] for every i64 input).
fn requant_i64(
    op: &'static str,
    wide: &[i64],
    base_exp: i64,
    mant_max: i32,
) -> Result<Bfp, KernelError> {
    let k = requant_shift(max_abs1(wide, |v| v) as u128, mant_max);
    finish(op, round_i64(wide, k), base_exp, k)
}

/// `rhe(v, k)` of every value.
fn round_i64(wide: &[i64], k: u32) -> Vec<i32> {
    round1(wide, k, |v| v)
}

/// Requantizes exact i128 values like [`crate::numerics::kernels::requant_wide`], in 64 bits when the
/// largest magnitude fits.
fn requant_i128(
    op: &'static str,
    wide: &[i128],
    base_exp: i64,
    mant_max: i32,
) -> Result<Bfp, KernelError> {
    let mx = wide
        .par_chunks(PAR_MIN_LEN)
        .map(|c| c.iter().fold(0u128, |m, v| m.max(v.unsigned_abs())))
        .max()
        .unwrap_or(0);
    let k = requant_shift(mx, mant_max);
    let narrow = mx <= i64::MAX as u128;
    let rh = Rhe::new(k);
    let mut mant = vec![0i32; wide.len()];
    mant.par_chunks_mut(PAR_MIN_LEN)
        .zip(wide.par_chunks(PAR_MIN_LEN))
        .for_each(|(o, c)| {
            for (o, &v) in o.iter_mut().zip(c) {
                *o = if narrow {
                    rh.round(v as i64) as i32
                } else {
                    rhe(v, k) as i32
                };
            }
        });
    finish(op, mant, base_exp, k)
}

/// Requantizes the values `f(x)` of one input tensor to `mant_max` from `base_exp` (the rule of
/// `requant_wide`) in two passes that both evaluate `f`: no intermediate vector.
fn requant_map1<F>(
    op: &'static str,
    x: &[i32],
    base_exp: i64,
    mant_max: i32,
    f: F,
) -> Result<Bfp, KernelError>
where
    F: Fn(i32) -> i64 + Sync,
{
    let k = requant_shift(max_abs1(x, &f) as u128, mant_max);
    finish(op, round1(x, k, f), base_exp, k)
}

/// [`requant_map1`] for elementwise functions of two tensors of equal length.
fn requant_map2<F>(
    op: &'static str,
    x: &[i32],
    y: &[i32],
    base_exp: i64,
    mant_max: i32,
    f: F,
) -> Result<Bfp, KernelError>
where
    F: Fn(i32, i32) -> i64 + Sync,
{
    let k = requant_shift(max_abs2(x, y, &f) as u128, mant_max);
    finish(op, round2(x, y, k, f), base_exp, k)
}

/// `1.5·2^52`: for `|y| < 2^51`, `(y + ROUND_MAGIC) − ROUND_MAGIC` is `y` rounded to an integer
/// with ties to even (IEEE 754 default rounding, ulp 1 on `[2^52, 2^53)`; `ROUND_MAGIC` is even,
/// so the parity of the rounded sum is that of the rounded `y`), and both steps vectorize.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// Bound (exclusive) on the magnitude of the exact values the f64 paths take: below `2^51`
/// every integer is an exact f64 and the rounding of [`rhe_f64`] is exact.
const F64_EXACT_BITS: u32 = 51;

/// Largest shift worth applying on the f64 paths: for `|s| < 2^51` and `k ≥ 53`,
/// `|s·2^−k| < 1/4`, so `rhe(s, k) = 0`, as it is for `k = 53`.
const F64_SHIFT_MAX: u32 = 53;

/// `2^−k` for the f64 paths (exact: `k ≤ 53`).
fn f64_scale(k: u32) -> f64 {
    f64::from_bits((1023 - k.min(F64_SHIFT_MAX) as u64) << 52)
}

/// `rhe(s, k)` for an integer `|s| < 2^51` given as f64, `scale = 2^−k`, whose result fits in
/// i32: the product is exact (a power of two, no underflow for `k ≤ 53`), adding
/// [`ROUND_MAGIC`] rounds half to even, and the sum `2^52 + 2^51 + q` holds `q` in the low bits
/// of its significand (two's complement modulo `2^52`), so its low 32 bits are `q`. No
/// float-to-int conversion: the loops vectorize.
#[inline]
fn rhe_f64(s: f64, scale: f64) -> i32 {
    (s * scale + ROUND_MAGIC).to_bits() as u32 as i32
}

/// Largest `|f(v)|` over `x` for exact f64 values (no rounding, so the maximum is exact).
fn max_abs_f64_1<F: Fn(i32) -> f64 + Sync>(x: &[i32], f: F) -> u64 {
    x.par_chunks(PAR_MIN_LEN)
        .map(|c| max_chunk1(c, &f))
        .reduce(|| 0.0, f64::max) as u64
}

/// Largest `|f(v)|` of one chunk (a separate function: its slice arguments do not alias, so
/// the loop vectorizes).
#[inline]
fn max_chunk1<T: Copy, F: Fn(T) -> f64>(c: &[T], f: &F) -> f64 {
    let mut m = 0f64;
    for &v in c {
        let a = f(v).abs();
        m = if a > m { a } else { m };
    }
    m
}

/// Largest `|f(v, w)|` of one chunk pair.
#[inline]
fn max_chunk2<F: Fn(i32, i32) -> f64>(c: &[i32], d: &[i32], f: &F) -> f64 {
    let n = c.len().min(d.len());
    let (c, d) = (&c[..n], &d[..n]);
    let mut m = 0f64;
    for i in 0..n {
        let a = f(c[i], d[i]).abs();
        m = if a > m { a } else { m };
    }
    m
}

/// `rhe_f64(f(v), scale)` over one chunk.
#[inline]
fn round_chunk1<T: Copy, F: Fn(T) -> f64>(o: &mut [i32], c: &[T], scale: f64, f: &F) {
    let n = o.len().min(c.len());
    let (o, c) = (&mut o[..n], &c[..n]);
    for i in 0..n {
        o[i] = rhe_f64(f(c[i]), scale);
    }
}

/// `rhe_f64(f(v, w), scale)` over one chunk pair.
#[inline]
fn round_chunk2<F: Fn(i32, i32) -> f64>(o: &mut [i32], c: &[i32], d: &[i32], scale: f64, f: &F) {
    let n = o.len().min(c.len()).min(d.len());
    let (o, c, d) = (&mut o[..n], &c[..n], &d[..n]);
    for i in 0..n {
        o[i] = rhe_f64(f(c[i], d[i]), scale);
    }
}

/// Largest `|f(v, w)|` over `x`, `y` for exact f64 values.
fn max_abs_f64_2<F: Fn(i32, i32) -> f64 + Sync>(x: &[i32], y: &[i32], f: F) -> u64 {
    x.par_chunks(PAR_MIN_LEN)
        .zip(y.par_chunks(PAR_MIN_LEN))
        .map(|(c, d)| max_chunk2(c, d, &f))
        .reduce(|| 0.0, f64::max) as u64
}

/// [`requant_map1`] for exact wide values below `2^51` computed in f64 (`f` must be exact).
fn requant_f64_1<F: Fn(i32) -> f64 + Sync>(
    op: &'static str,
    x: &[i32],
    base_exp: i64,
    mant_max: i32,
    f: F,
) -> Result<Bfp, KernelError> {
    let k = requant_shift(max_abs_f64_1(x, &f) as u128, mant_max);
    round_f64_1(op, x, base_exp, k, f)
}

/// The rounding pass of [`requant_f64_1`] with the shift `k` already known.
fn round_f64_1<F: Fn(i32) -> f64 + Sync>(
    op: &'static str,
    x: &[i32],
    base_exp: i64,
    k: u32,
    f: F,
) -> Result<Bfp, KernelError> {
    let scale = f64_scale(k);
    let mut out = vec![0i32; x.len()];
    out.par_chunks_mut(PAR_MIN_LEN)
        .zip(x.par_chunks(PAR_MIN_LEN))
        .for_each(|(o, c)| round_chunk1(o, c, scale, &f));
    finish(op, out, base_exp, k)
}

/// [`requant_map2`] for exact wide values below `2^51` computed in f64 (`f` must be exact).
fn requant_f64_2<F: Fn(i32, i32) -> f64 + Sync>(
    op: &'static str,
    x: &[i32],
    y: &[i32],
    base_exp: i64,
    mant_max: i32,
    f: F,
) -> Result<Bfp, KernelError> {
    let k = requant_shift(max_abs_f64_2(x, y, &f) as u128, mant_max);
    let scale = f64_scale(k);
    let mut out = vec![0i32; x.len()];
    out.par_chunks_mut(PAR_MIN_LEN)
        .zip(x.par_chunks(PAR_MIN_LEN).zip(y.par_chunks(PAR_MIN_LEN)))
        .for_each(|(o, (c, d))| round_chunk2(o, c, d, scale, &f));
    finish(op, out, base_exp, k)
}

/// The alignment of one operand to the common exponent `e0` (see
/// [`crate::numerics::kernels::align`]): a left shift `e − e0` (at most `ADD_ALIGN_BITS_MAX = 40` by
/// the definition of `align_exp`) or a rounding right shift `e0 − e` (any amount). The
/// exponent arithmetic is the same i32 expression as `align`'s, so even wrapped exponents
/// give the same shift.
#[derive(Clone, Copy)]
struct Align {
    left: u32,
    right: u32,
}

impl Align {
    fn new(e: i32, e0: i32) -> Self {
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
    fn apply(self, x: i64) -> i64 {
        if self.right == 0 {
            x << self.left
        } else {
            rhe64(x, self.right)
        }
    }

    /// `align(x, e, e0)` for any `|x| < 2^63` (the left shift is at most 40, the i128 result
    /// below `2^103`).
    #[inline]
    fn apply_wide(self, x: i64) -> i128 {
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
pub(crate) fn add(a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
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
pub(crate) fn requant(x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
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
pub(crate) fn rescale(x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
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
pub(crate) fn mul_cols(x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
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
pub(crate) fn col_dot(a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
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

/// Rows per rayon task for a row-wise op on `cols` columns.
fn rows_per_task(cols: usize) -> usize {
    (PAR_MIN_LEN / cols.max(1)).max(1)
}

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
pub(crate) fn layernorm(x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
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

/// The exp2 tables as arrays, fetched once per call.
type Exp2Tables = ([i64; EXP2_TABLE_LEN], [i64; EXP2_TABLE_LEN]);

/// [`crate::numerics::fixed::exp2_neg_q31`] with the tables passed in. `hi`, `lo ≤ 2^31`, so their
/// product fits in i64 and [`rhe64`] rounds it exactly as `rhe` does.
///
/// Branch-free: `v ≤ 2^31`, so `rhe(v, n) = 0` for every `n ≥ 33` (and for `n ≥ 64`, where
/// the reference returns 0 directly); `n` is clamped to 40, and `rhe(v, n)` is computed as
/// `rhe(2v, n + 1)` (the same quotient) so that the shift is never 0.
#[inline]
fn exp2_q31(t: &Exp2Tables, y: i64) -> i64 {
    const N_CLAMP: i64 = 40;
    debug_assert!(y >= 0);
    let n = (y >> 16).min(N_CLAMP) as u32 + 1;
    let f = (y & 0xFFFF) as usize;
    let v2 = 2 * rhe64(t.0[f >> 8] * t.1[f & 255], 31);
    let q = v2 >> n;
    q + (((v2 & ((1 << n) - 1)) + (1 << (n - 1)) - 1 + (q & 1)) >> n)
}

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
pub(crate) fn softmax(
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

/// A few immutable lookup tables shared across calls and threads, most recently used first: a
/// hit moves its entry to the front, a `put` drops entries beyond `LEN`. A table is a pure
/// function of its key, so whether a call finds one never changes a result bit.
#[derive(Debug)]
struct TableCache<K, V, const LEN: usize> {
    entries: Mutex<Vec<(K, Arc<V>)>>,
}

impl<K: PartialEq, V, const LEN: usize> TableCache<K, V, LEN> {
    const fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }

    fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|(k, _)| k == key)?;
        let hit = entries.remove(i);
        let table = hit.1.clone();
        entries.insert(0, hit);
        Some(table)
    }

    fn put(&self, key: K, table: Arc<V>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(0, (key, table));
        entries.truncate(LEN);
    }
}

/// Number of distinct softmax arguments `t = max − m ∈ [0, 2·B16_MANT_MAX]`.
const SOFTMAX_TABLE_LEN: usize = 2 * B16_MANT_MAX as usize + 1;

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

/// GELU's `(σ, g)` for one mantissa (`σ` the Q31 sigmoid of [`crate::numerics::kernels::Kernels::gelu`],
/// `g` the derivative factor of `gelu_bwd`), in i64. Bounds: `|m·GELU_K_Q16| < 2^32`; after
/// the shift and clamp `|z| ≤ 2^40`. For `|z| ≥ 2^22`, `y = rhe(|z|·LOG2E_Q30, 30) ≥ 1.44·2^22
/// − 1/2 ≥ 2^22`, so `E = 0` (the exp2 integer part is `≥ 64`), hence `σ ∈ {0, 2^31}` and
/// `t = σ·(2^31 − σ) = 0`; otherwise `|z|·LOG2E_Q30 < 2^53` and `|z·t| < 2^22·2^29`. `E ≤ 2^31`,
/// so `E·2^31`, `2^62` and `σ·(2^31 − σ) ≤ 2^60` fit in i64.
fn gelu_sg(t: &Exp2Tables, m: i32, exp: i32) -> (i64, i64) {
    const Z_E_ZERO_MIN: i64 = 1 << 22;
    let x = m as i64 * GELU_K_Q16;
    let sh = -(exp as i64);
    let z = if sh >= 0 {
        rhe64(x, sh.min(127) as u32)
    } else if x == 0 {
        0
    } else if bitlen(x.unsigned_abs() as u128) as i64 - sh > 40 {
        x.signum() * EXP_ARG_SAT as i64
    } else {
        x << (-sh)
    };
    let e = if z.abs() >= Z_E_ZERO_MIN {
        0
    } else {
        exp2_q31(t, rhe64(z.abs() * LOG2E_Q30 as i64, 30))
    };
    let one = 1i64 << 31;
    let s = if z >= 0 {
        div_rhe_small(1 << 62, one + e)
    } else {
        div_rhe_small(e << 31, one + e)
    };
    let tt = rhe64(s * (one - s), 31);
    let g = if tt == 0 {
        s
    } else {
        debug_assert!(z.abs() < Z_E_ZERO_MIN);
        s + rhe64(z * tt, 16)
    };
    (s, g)
}

/// Number of distinct B16 mantissas, the length of a GELU table.
const GELU_TABLE_LEN: usize = 2 * B16_MANT_MAX as usize + 1;

/// Smallest tensor for which a (not yet cached) GELU table is built: building costs about as
/// much as evaluating this many elements directly.
const GELU_TABLE_BUILD_MIN_LEN: usize = GELU_TABLE_LEN / 2;

/// Number of GELU tables kept (one per input exponent, most recently used first).
const GELU_CACHE_LEN: usize = 8;

/// `(σ, g)` of every B16 mantissa for one exponent: a pure function of `(m, exp)`, so looking
/// it up gives the same bits as computing it.
struct GeluTable {
    /// `σ ∈ [0, 2^31]`, so u32 (a quarter of the cache footprint of `(i64, i64)`).
    sigma: Vec<u32>,
    /// `g` (`|g| < 2^36`, an exact f64).
    g: Vec<f64>,
    /// `pos_max[j] = max |i·σ(i)|` over `0 ≤ i ≤ j` (exact f64, see [`gelu`]).
    pos_max: Vec<f64>,
    /// `neg_max[j] = max |i·σ(i)|` over `−j ≤ i ≤ 0`.
    neg_max: Vec<f64>,
}

impl GeluTable {
    /// `m·σ(m)`, exact in f64 (`|m·σ| ≤ 2^15·2^31 < 2^51`).
    #[inline]
    fn value(&self, m: i32) -> f64 {
        m as f64 * self.sigma[(m + B16_MANT_MAX) as usize] as f64
    }

    /// The running maxima of `|m·σ(m)|` outwards from 0, one per sign.
    fn prefix_max(sigma: &[u32]) -> (Vec<f64>, Vec<f64>) {
        let run = |ms: &mut dyn Iterator<Item = i32>| -> Vec<f64> {
            let mut acc = 0f64;
            ms.map(|m| {
                acc = acc.max((m as f64 * sigma[(m + B16_MANT_MAX) as usize] as f64).abs());
                acc
            })
            .collect()
        };
        (
            run(&mut (0..=B16_MANT_MAX)),
            run(&mut (0..=B16_MANT_MAX).map(|j| -j)),
        )
    }
}

/// Tables of recent exponents: the forward and backward of one layer share `x`, and
/// activations keep their exponent over many steps.
static GELU_CACHE: TableCache<i32, GeluTable, GELU_CACHE_LEN> = TableCache::new();

/// The cached table of `exp`, or a new one if the tensor is large enough to pay for it.
fn gelu_table(exp: i32, len: usize) -> Option<Arc<GeluTable>> {
    if let Some(table) = GELU_CACHE.get(&exp) {
        return Some(table);
    }
    if len < GELU_TABLE_BUILD_MIN_LEN {
        return None;
    }
    let t = exp2_tables();
    let (sigma, g): (Vec<u32>, Vec<f64>) = (0..GELU_TABLE_LEN)
        .into_par_iter()
        .with_min_len(PAR_MIN_LEN)
        .map(|i| {
            let (s, g) = gelu_sg(t, i as i32 - B16_MANT_MAX, exp);
            (s as u32, g as f64)
        })
        .unzip();
    let (pos_max, neg_max) = GeluTable::prefix_max(&sigma);
    let table = Arc::new(GeluTable {
        sigma,
        g,
        pos_max,
        neg_max,
    });
    GELU_CACHE.put(exp, table.clone());
    Some(table)
}

/// The requantization shift of GELU's `max |m·σ(m)|` over `x`, found from the smallest and
/// largest mantissa (one vectorized pass instead of a pass of table lookups), or `None` when
/// they do not decide it. The true maximum `M` lies between `lower`, the larger `|m·σ|` of the
/// two extreme mantissas (both present in `x`), and `upper`, the table's maximum over every
/// mantissa in `[lo, hi]` (a superset of those present); `requant_shift` is non-decreasing in
/// its argument, so when it agrees on both bounds it is also its value at `M`. In training the
/// positive tail (`σ ≈ 1`) dominates the bounded negative lobe and the bounds agree.
fn gelu_shift(tab: &GeluTable, x: &[i32]) -> Option<u32> {
    let (lo, hi) = x
        .par_chunks(PAR_MIN_LEN)
        .map(|c| {
            c.iter()
                .fold((0i32, 0i32), |(l, h), &m| (l.min(m), h.max(m)))
        })
        .reduce(|| (0, 0), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    // lo ≤ 0 ≤ hi (the folds start at 0; 0·σ(0) = 0 cannot raise the maximum), and
    // |lo|, hi ≤ B16_MANT_MAX (checked by the caller).
    let lower = tab.value(lo).abs().max(tab.value(hi).abs());
    let upper = tab.pos_max[hi as usize].max(tab.neg_max[lo.unsigned_abs() as usize]);
    let k = requant_shift(lower as u128, B16_MANT_MAX);
    (k == requant_shift(upper as u128, B16_MANT_MAX)).then_some(k)
}

/// [`crate::numerics::kernels::Kernels::gelu`]: `|m·σ| ≤ 2^15·2^31` fits in i64.
pub(crate) fn gelu(x: &Bfp) -> Result<Bfp, KernelError> {
    const OP: &str = "gelu";
    check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
    let base = x.exp as i64 - 31;
    match gelu_table(x.exp, x.len()) {
        // |m·σ| ≤ 2^15·2^31 < 2^51: exact in f64.
        Some(tab) => {
            let f = |m: i32| tab.value(m);
            match gelu_shift(&tab, &x.mant) {
                Some(k) => round_f64_1(OP, &x.mant, base, k, f),
                None => requant_f64_1(OP, &x.mant, base, B16_MANT_MAX, f),
            }
        }
        None => {
            let t = exp2_tables();
            let wide: Vec<i64> = x
                .mant
                .par_iter()
                .with_min_len(PAR_MIN_LEN)
                .map(|&m| m as i64 * gelu_sg(t, m, x.exp).0)
                .collect();
            requant_i64(OP, &wide, base, B16_MANT_MAX)
        }
    }
}

/// [`crate::numerics::kernels::Kernels::gelu_bwd`]: `|g| < 2^31 + 2^35` (see [`gelu_sg`]), so
/// `|dy·g| < 2^51` fits in i64.
pub(crate) fn gelu_bwd(x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
    const OP: &str = "gelu_bwd";
    check_gelu_bwd(x, dy)?;
    let base = dy.exp as i64 - 31;
    match gelu_table(x.exp, x.len()) {
        // |dy·g| < 2^15·2^36 = 2^51: exact in f64.
        Some(tab) => requant_f64_2(OP, &x.mant, &dy.mant, base, B16_MANT_MAX, |m, d| {
            d as f64 * tab.g[(m + B16_MANT_MAX) as usize]
        }),
        None => {
            let t = exp2_tables();
            let wide: Vec<i64> = x
                .mant
                .par_iter()
                .zip(dy.mant.par_iter())
                .with_min_len(PAR_MIN_LEN)
                .map(|(&m, &d)| d as i64 * gelu_sg(t, m, x.exp).1)
                .collect();
            requant_i64(OP, &wide, base, B16_MANT_MAX)
        }
    }
}

/// [`crate::numerics::kernels::Kernels::scatter_add_rows`]: at most `2^28` B16 values add up to less
/// than `2^43`, exact in i64.
pub(crate) fn scatter_add_rows(
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
pub(crate) fn sum_squares(x: &Bfp) -> Result<u128, KernelError> {
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
pub(crate) fn scale(x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
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

/// Exact floor square root of `x < 2^104` (so the root is below `2^52` and its square is one
/// 64×64-bit product): the f64 root of the top 62 bits of `x` (an even shift `2h` dropped,
/// restored as `2^h`) is within a unit or two, then corrected like [`isqrt`] does. Larger `x`
/// go to [`isqrt`].
#[inline]
fn isqrt_fast(x: u128) -> u64 {
    const FAST_MAX: u128 = 1 << 104;
    if x >= FAST_MAX {
        return isqrt(x) as u64;
    }
    let h = bitlen(x).saturating_sub(62).div_ceil(2);
    let top = (x >> (2 * h)) as i64; // < 2^62
    let est = (top as f64).sqrt() * f64::from_bits((1023 + h as u64) << 52);
    let mut r = est as i64 as u64;
    while (r as u128) * (r as u128) > x {
        r -= 1;
    }
    while ((r + 1) as u128) * ((r + 1) as u128) <= x {
        r += 1;
    }
    r
}

/// Elements per rayon task in `adamw` (each element is a few dozen operations).
const ADAM_CHUNK: usize = 1 << 12;

/// [`crate::numerics::kernels::Kernels::adamw`], the rule of [`AdamStep`]. For β in `[0, 2^30]` (every
/// real configuration) [`adamw_narrow`] runs it in three passes (maxima; m', r' and the
/// unrounded p'; rounding of p'), with 64-bit moments where the alignment allows and f64
/// estimates of roots and quotients where provably exact; on x86-64 with AVX-512 its passes
/// run 8 elements per instruction (`adam_x86`, the same values lane by lane, the scalar code
/// for the few elements an estimate cannot vouch for). Otherwise [`adamw_with`] runs the
/// reference's i128 expressions (so out-of-range hyperparameters wrap identically) in four
/// passes, with 64 bits only where the bound is structural: aligned B16 values
/// (`≤ 2^15·2^40 < 2^63`), `m'·2^30 < 2^45`, and the isqrt of values below `2^104`.
pub(crate) fn adamw(
    p: &Bfp,
    g: &Bfp,
    m: &Bfp,
    r: &Bfp,
    st: &AdamStep,
) -> Result<(Bfp, Bfp, Bfp), KernelError> {
    adamw_on(p, g, m, r, st, AdamSimd::new())
}

/// [`adamw`] with the vector passes of `simd` where they apply, or only the portable code
/// (`None`; the tests run both).
fn adamw_on(
    p: &Bfp,
    g: &Bfp,
    m: &Bfp,
    r: &Bfp,
    st: &AdamStep,
    simd: Option<AdamSimd>,
) -> Result<(Bfp, Bfp, Bfp), KernelError> {
    let one = 1i128 << 30;
    let (b1, b2) = (st.beta1_q30 as i128, st.beta2_q30 as i128);
    // 1. first moment, aligned to e0
    let e0 = align_exp(m.exp, g.exp);
    let (am, ag) = (Align::new(m.exp, e0), Align::new(g.exp, e0));
    // 2. second moment, aligned to e1
    let (er, eg) = (2 * r.exp, 2 * g.exp);
    let e1 = align_exp(er, eg);
    let (ar, ag2) = (Align::new(er, e1), Align::new(eg, e1));
    let ev = e1 as i64 - 30;
    let odd = ev % 2 != 0;
    let wm = move |a: i32, b: i32| {
        b1 * am.apply(a as i64) as i128 + (one - b1) * ag.apply(b as i64) as i128
    };
    let wv = move |a: i32, b: i32| {
        let (a2, b2g) = (a as i64 * a as i64, b as i64 * b as i64);
        let w = b2 * ar.apply_wide(a2) + (one - b2) * ag2.apply_wide(b2g);
        if odd {
            w << 1
        } else {
            w
        }
    };
    let betas_in_range = (0..=one).contains(&b1) && (0..=one).contains(&b2);
    if !betas_in_range {
        check_adamw(p, g, m, r)?;
        return adamw_with(p, g, m, r, st, e0, ev, wm, wv);
    }
    // β ∈ [0, 2^30]: |b1·am + (2^30 − b1)·ag| ≤ 2^30·2^15·2^16 = 2^61 in i64 when both
    // alignment shifts are at most 16 (else the reference's i128 products, as in the first
    // step, where the moments are zero at exponent −64); the second moment is a sum of
    // nonnegative terms `(β·A) << l` with `β·A ≤ 2^30·2^30` (A a square, rounded or not) and
    // `l ≤ 40`, below 2^101 even doubled: the same value as the i128 products `β·(A << l)`,
    // formed with one 64-bit product and a shift.
    let (b1n, b2n) = (b1 as i64, b2 as u64);
    let (c1, c2) = ((one as i64) - b1n, (one as u64) - b2n);
    let wm_narrow = move |a: i32, b: i32| b1n * am.apply(a as i64) + c1 * ag.apply(b as i64);
    let sq = |x: i32, al: Align| -> u64 {
        let s = (x as i64 * x as i64) as u64;
        if al.right == 0 {
            s
        } else {
            rhe64(s as i64, al.right) as u64
        }
    };
    let parts = move |a: i32, b: i32| (b2n * sq(a, ar), c2 * sq(b, ag2));
    let shifts = (ar.left, ag2.left, odd as u32);
    let narrow_m = am.left <= ADAM_M_LEFT_MAX && ag.left <= ADAM_M_LEFT_MAX;
    let moments = narrow_m
        .then_some(MomentConsts {
            b1: b1n,
            c1,
            am,
            ag,
            b2: b2n,
            c2,
            ar_right: ar.right,
            ag2_right: ag2.right,
            la: ar.left,
            lb: ag2.left,
        })
        .filter(MomentConsts::supported);
    // The vector pass 1 reads every mantissa anyway: when it runs, it checks their range too
    // (saving a serial pass over the four inputs), after the lengths are checked.
    let checked_in_pass1 =
        simd.is_some() && moments.is_some() && [g, m, r].iter().all(|t| t.len() == p.len());
    if !checked_in_pass1 {
        check_adamw(p, g, m, r)?;
    }
    let lanes = AdamLanes {
        simd,
        moments,
        checked_in_pass1,
    };
    if narrow_m {
        adamw_fast(p, g, m, r, st, e0, ev, wm_narrow, parts, shifts, lanes)
    } else {
        adamw_fast(p, g, m, r, st, e0, ev, wm, parts, shifts, lanes)
    }
}

/// The per-call constants of the moments (see [`super::adamw`]): `m'` before rounding is
/// `b1·am(m) + c1·ag(g)`, the second moment `(b2·sq(r, ar)) << la + (c2·sq(g, ag2)) << lb`
/// with `sq(x, al) = rhe(x², al.right)`.
#[derive(Clone, Copy)]
struct MomentConsts {
    b1: i64,
    c1: i64,
    am: Align,
    ag: Align,
    b2: u64,
    c2: u64,
    ar_right: u32,
    ag2_right: u32,
    la: u32,
    lb: u32,
}

/// Largest rounding shift of the vector passes: that of `Rhe`'s 64-bit formula, which they
/// repeat lane by lane.
const ADAM_RHE_K_MAX: u32 = Rhe::INLINE_K_MAX;

impl MomentConsts {
    /// Whether the vector passes compute these moments exactly: 32-bit multiplier operands
    /// (`b1, c1, b2, c2 ∈ [0, 2^30]`, first-moment left shifts `≤ ADAM_M_LEFT_MAX`, so an aligned
    /// `|x| ≤ 2^15 − 1` is below `2^31`, a signed 32-bit operand) and rounding shifts within
    /// the 64-bit formula (`≤ ADAM_RHE_K_MAX`); `la, lb ≤ 40` by alignment.
    fn supported(&self) -> bool {
        let beta = |b: i64| (0..=1 << 30).contains(&b);
        beta(self.b1)
            && beta(self.c1)
            && self.b2 <= 1 << 30
            && self.c2 <= 1 << 30
            && [self.am, self.ag]
                .iter()
                .all(|a| a.left <= ADAM_M_LEFT_MAX && a.right <= ADAM_RHE_K_MAX)
            && [self.ar_right, self.ag2_right, self.la, self.lb]
                .iter()
                .all(|&s| s <= ADAM_RHE_K_MAX)
    }
}

/// The f64 constants of the roots: `y = √(ta·fa + tb·fb)·scale_r`, and `k_m` for `m'`.
#[derive(Clone, Copy)]
struct RootConsts {
    fa: f64,
    fb: f64,
    scale_r: f64,
    k_m: u32,
}

/// The constants of the parameter update: `a = rhe(alpha·u, sh)` estimated as
/// `u·alpha_scaled`, `alpha_scaled = alpha·2^−sh` (exact, see [`UpdateConsts::new`]), and the
/// decay factor.
#[derive(Clone, Copy)]
struct UpdateConsts {
    alpha_scaled: f64,
    decay_q40: i64,
}

/// Largest `|alpha|` of the vector update: exact as an f64.
const ALPHA_MAX: u64 = 1 << 53;

/// Largest update rounding shift `sh` of the vector update: `|alpha|·2^−sh` and every nonzero
/// `|u·alpha|·2^−sh ≥ 2^−sh` stay normal f64 (no subnormal rounding) up to here.
const UPDATE_SH_MAX: i64 = 900;

/// Bound (exclusive) on the update estimates taken: [`ROUND_MAGIC`] rounds exactly below `2^51`.
const UPDATE_EST_MAX: f64 = (1u64 << 50) as f64;

impl UpdateConsts {
    /// `None` unless the vector update is exact for these constants: `0 ≤ sh ≤ UPDATE_SH_MAX`
    /// (negative shifts saturate, left to the scalar code), `|alpha| ≤ 2^53` and
    /// `|decay| < 2^40` (so `decay·p`, `|p| < 2^23`, fits in i64).
    fn new(alpha_q40: i64, decay_q40: i64, sh: i64) -> Option<Self> {
        let ok = (0..=UPDATE_SH_MAX).contains(&sh)
            && alpha_q40.unsigned_abs() <= ALPHA_MAX
            && decay_q40.unsigned_abs() < 1 << 40;
        // Both factors are exact (alpha below 2^53, a power of two from 2^0 to 2^−900), and
        // the product of an integer of magnitude ≥ 1 is normal: `alpha·2^−sh` exactly.
        let scale = f64::from_bits((1023 - sh.clamp(0, UPDATE_SH_MAX) as u64) << 52);
        ok.then_some(Self {
            alpha_scaled: alpha_q40 as f64 * scale,
            decay_q40,
        })
    }
}

/// The vector passes [`adamw_narrow`] may use: `simd` (the CPU's vector unit, if any) for the
/// parameter update, and with it the moments when `moments` is set (64-bit first moments whose
/// constants [`MomentConsts::supported`] accepts). `checked_in_pass1`: the mantissa ranges
/// are not checked yet (the lengths are) and the vector pass 1 checks them.
#[derive(Clone, Copy)]
struct AdamLanes {
    simd: Option<AdamSimd>,
    moments: Option<MomentConsts>,
    checked_in_pass1: bool,
}

#[cfg(target_arch = "x86_64")]
use adam_x86::Avx512Dq as AdamSimd;

/// No vector passes off x86-64: uninhabited, so only the portable code runs.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
enum AdamSimd {}

#[cfg(not(target_arch = "x86_64"))]
impl AdamSimd {
    fn new() -> Option<Self> {
        None
    }

    fn maxima(
        self,
        _: &MomentConsts,
        _: &[i32],
        _: &[i32],
        _: &[i32],
        _: &[i32],
    ) -> (u64, u128, u32, u64) {
        match self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn pass2<FR, FW>(
        self,
        _: &MomentConsts,
        _: &RootConsts,
        _: &UpdateConsts,
        _: (&[i32], &[i32], &[i32], &[i32]),
        _: u32,
        _: FR,
        _: FW,
    ) -> (Vec<i32>, Vec<i32>, Vec<i32>, u64, bool) {
        match self {}
    }

    #[allow(clippy::too_many_arguments)]
    fn update<F: Fn(i32, i32, i32) -> i128>(
        self,
        _: &UpdateConsts,
        _: &[i32],
        _: &[i32],
        _: &[i32],
        _: &mut [i32],
        _: u32,
        _: F,
    ) -> (u64, bool) {
        match self {}
    }
}

/// A first moment before rounding: i64 when the alignment allows, else i128.
trait Moment: Copy + Default + Send + Sync {
    /// `max(|self|, |v|)` as a nonnegative moment (`self` is nonnegative).
    fn max_abs(self, v: Self) -> Self;
    /// The exact value.
    fn wide(self) -> i128;
    /// `rhe(self, k)` (`rh` is the rounding by `k`).
    fn round(self, rh: Rhe, k: u32) -> i32;
    /// A nonnegative moment from its magnitude (below `2^62`, a maximum of the vector pass).
    fn from_abs(v: u64) -> Self;
}

impl Moment for i64 {
    #[inline]
    fn max_abs(self, v: Self) -> Self {
        // |v| ≤ 2^61 here, so the absolute value cannot overflow.
        self.max(v.abs())
    }
    #[inline]
    fn wide(self) -> i128 {
        self as i128
    }
    #[inline]
    fn round(self, rh: Rhe, _k: u32) -> i32 {
        rh.round(self) as i32
    }
    fn from_abs(v: u64) -> Self {
        // A no-op for every valid input (below 2^62); keeps wrapped lanes of out-of-range
        // input (reported right after pass 1) from overflowing `abs`.
        v.min(i64::MAX as u64) as i64
    }
}

impl Moment for i128 {
    #[inline]
    fn max_abs(self, v: Self) -> Self {
        // |v| < 2^120 (β ≤ 2^30 times an aligned B16 value below 2^56, twice).
        self.max(v.abs())
    }
    #[inline]
    fn wide(self) -> i128 {
        self
    }
    #[inline]
    fn round(self, rh: Rhe, k: u32) -> i32 {
        match i64::try_from(self) {
            Ok(v) => rh.round(v) as i32,
            Err(_) => rhe(self, k) as i32,
        }
    }
    fn from_abs(v: u64) -> Self {
        v as i128
    }
}

/// [`adamw_narrow`], or the general passes when it declines.
#[allow(clippy::too_many_arguments)]
fn adamw_fast<T: Moment, WM, WP>(
    p: &Bfp,
    g: &Bfp,
    m: &Bfp,
    r: &Bfp,
    st: &AdamStep,
    e0: i32,
    ev: i64,
    wm: WM,
    parts: WP,
    shifts: (u32, u32, u32),
    lanes: AdamLanes,
) -> Result<(Bfp, Bfp, Bfp), KernelError>
where
    WM: Fn(i32, i32) -> T + Sync + Copy,
    WP: Fn(i32, i32) -> (u64, u64) + Sync + Copy,
{
    let wv = move |a: i32, b: i32| {
        let (ta, tb) = parts(a, b);
        ((((ta as u128) << shifts.0) + ((tb as u128) << shifts.1)) << shifts.2) as i128
    };
    adamw_narrow(p, g, m, r, st, e0, ev, wm, parts, shifts, lanes)
        .unwrap_or_else(|| adamw_with(p, g, m, r, st, e0, ev, move |a, b| wm(a, b).wide(), wv))
}

/// [`adamw_with`] for moments formed in 64 bits (`wm`) and nonnegative below `2^102` (`wv`),
/// in two passes instead of four. With every `wv ≥ 0` and `s` chosen from the largest, the
/// shifted values `wv << 2s` stay below `2^101` (no wrap), so the largest root is the root of
/// the largest value (isqrt is monotone) and `r'`'s shift is known before any root is taken;
/// the parameter update then runs in the same pass. `None` when some `p'` before rounding does
/// not fit in i64 (the caller then runs the general passes).
#[allow(clippy::too_many_arguments)]
fn adamw_narrow<T: Moment, WM, WP>(
    p: &Bfp,
    g: &Bfp,
    m: &Bfp,
    r: &Bfp,
    st: &AdamStep,
    e0: i32,
    mut ev: i64,
    wm: WM,
    parts: WP,
    (la, lb, odd): (u32, u32, u32),
    lanes: AdamLanes,
) -> Option<Result<(Bfp, Bfp, Bfp), KernelError>>
where
    WM: Fn(i32, i32) -> T + Sync,
    WP: Fn(i32, i32) -> (u64, u64) + Sync,
{
    const OP: &str = "adamw";
    // The shifts `la, lb ≤ ADD_ALIGN_BITS_MAX = 40` as multipliers below 2^64: each term is
    // then one 64×64 → 128-bit multiply instead of a variable 128-bit shift (same value).
    let (pa, pb) = ((1u64 << la) as u128, (1u64 << lb) as u128);
    let wv_even = |a: i32, b: i32| {
        let (ta, tb) = parts(a, b);
        (ta as u128) * pa + (tb as u128) * pb
    };
    let wv = |a: i32, b: i32| wv_even(a, b) << odd;
    let n = p.len();
    if ev % 2 != 0 {
        ev -= 1;
    }
    // Pass 1: max |wm|, max wv and max |p| (for the guess of p's rounding shift), and the OR
    // of the B16 magnitudes when the vector pass checks their range.
    let (mx_m, mx_v, mx_pin, or_b16) = m
        .mant
        .par_chunks(ADAM_CHUNK)
        .zip(g.mant.par_chunks(ADAM_CHUNK))
        .zip(r.mant.par_chunks(ADAM_CHUNK))
        .zip(p.mant.par_chunks(ADAM_CHUNK))
        .map(|(((mc, gc), rc), pc)| {
            if let (Some(simd), Some(k)) = (lanes.simd, lanes.moments) {
                let (mm, mv, mp, or) = simd.maxima(&k, mc, gc, rc, pc);
                return (T::from_abs(mm), mv, mp, or);
            }
            let mut mm = T::default();
            let mut mv = 0u128;
            for ((&a, &b), &c) in mc.iter().zip(gc).zip(rc) {
                mm = mm.max_abs(wm(a, b));
                mv = mv.max(wv_even(c, b));
            }
            let mp = pc.iter().fold(0u32, |x, &v| x.max(v.unsigned_abs()));
            (mm, mv, mp, 0)
        })
        .reduce(
            || (T::default(), 0, 0, 0),
            |x, y| (x.0.max_abs(y.0), x.1.max(y.1), x.2.max(y.2), x.3 | y.3),
        );
    let in_range = or_b16 <= B16_MANT_MAX as u64 && mx_pin <= WIDE_MANT_MAX as u32;
    if lanes.checked_in_pass1 && !in_range {
        // The scan reports the first out-of-range mantissa, as it would have up front.
        if let Err(e) = check_adamw(p, g, m, r) {
            return Some(Err(e));
        }
    }
    // Doubling is monotone and the values stay below 2^102: the largest doubled value is the
    // doubled largest.
    let mx_v = mx_v << odd;
    let k_m = requant_shift(mx_m.wide() as u128, B16_MANT_MAX);
    let s = (100i64 - bitlen(mx_v) as i64).max(0) / 2;
    let m_exp = match checked_exp(OP, e0 as i64 - 30, k_m as i64) {
        Ok(e) => e,
        Err(e) => return Some(Err(e)),
    };
    let mx_q = isqrt(mx_v << (2 * s));
    let k_r = requant_shift(mx_q, B16_MANT_MAX);
    let r_exp = match checked_exp(OP, ev / 2 - s, k_r as i64) {
        Ok(e) => e,
        Err(e) => return Some(Err(e)),
    };
    let ea = m_exp as i64 - r_exp as i64 - 70;
    let sh = (p.exp as i64 - 16) - ea;
    let (rh_m, rh_r) = (Rhe::new(k_m), Rhe::new(k_r));
    // The f64 second moment: powers of two are exact (la + odd + 2s ≤ 143).
    let pow2 = |e: u32| f64::from_bits((1023 + e as u64) << 52);
    let (fa, fb) = (pow2(la + odd + 2 * s as u32), pow2(lb + odd + 2 * s as u32));
    let scale_r = f64_scale(k_r);
    let upd = AdamUpdate::new(st, sh);
    let upd_lanes = lanes
        .simd
        .zip(UpdateConsts::new(st.alpha_q40, st.decay_q40, sh));
    let root_lanes = lanes
        .simd
        .zip(lanes.moments)
        .filter(|_| k_m <= ADAM_RHE_K_MAX);
    let roots = RootConsts {
        fa,
        fb,
        scale_r,
        k_m,
    };
    let exact_root = |c: i32, b: i32| rh_r.round(isqrt_fast(wv(c, b) << (2 * s)) as i64) as i32;
    let round_chunk =
        |out: &mut [i32], m2c: &[i32], r2c: &[i32], pc: &[i32], rh: Rhe, k: u32| match upd_lanes {
            Some((simd, u)) => {
                simd.update(&u, m2c, r2c, pc, out, k, |mm, rm, pm| upd.wide(mm, rm, pm))
            }
            None => upd.round_chunk(out, m2c, r2c, pc, rh),
        };
    // p' is rounded in the same pass as it is formed, by the shift of `p << 16` (the update
    // is small next to the parameters, so that shift is almost always p''s); the pass
    // reports the true largest |p'| and, when its shift differs, the rounding runs again with
    // it over the unchanged m', r' (the same p' values, so the same bits as rounding them
    // after the fact).
    let k_guess = requant_shift((mx_pin as u128) << 16, WIDE_MANT_MAX);
    // Pass 2: m', r' and p' (rounded by `k_guess`), the largest unrounded |p'| and whether
    // every p' fits in i64.
    let (m2, r2, mut p2, mx_p, fits) =
        if let (Some((simd, k)), Some((_, u))) = (root_lanes, upd_lanes) {
            let ins = (&m.mant[..], &g.mant[..], &r.mant[..], &p.mant[..]);
            let wide = |mm, rm, pm| upd.wide(mm, rm, pm);
            simd.pass2(&k, &roots, &u, ins, k_guess, exact_root, wide)
        } else {
            let mut m2 = vec![0i32; n];
            let mut r2 = vec![0i32; n];
            let mut p2 = vec![0i32; n];
            let rh_guess = Rhe::new(k_guess);
            let (mx_p, fits) = m2
                .par_chunks_mut(ADAM_CHUNK)
                .zip(r2.par_chunks_mut(ADAM_CHUNK))
                .zip(p2.par_chunks_mut(ADAM_CHUNK))
                .zip(
                    m.mant
                        .par_chunks(ADAM_CHUNK)
                        .zip(g.mant.par_chunks(ADAM_CHUNK))
                        .zip(r.mant.par_chunks(ADAM_CHUNK))
                        .zip(p.mant.par_chunks(ADAM_CHUNK)),
                )
                .map(|(((m2c, r2c), p2c), (((mc, gc), rc), pc))| {
                    // Roots first, then divisions: two loops of independent iterations with short
                    // dependency chains, so the sqrt and divide units overlap consecutive elements.
                    let ins = mc.iter().zip(gc).zip(rc);
                    for ((mo, ro), ((&a, &b), &c)) in m2c.iter_mut().zip(r2c.iter_mut()).zip(ins) {
                        *mo = wm(a, b).round(rh_m, k_m);
                        // r' = rhe(isqrt(wv·2^2s), k_r) from the f64 root when provably the same
                        // (see ROOT_EST_MARGIN), else exactly; the root is below 2^51.
                        let (ta, tb) = parts(c, b);
                        let y = (ta as i64 as f64 * fa + tb as i64 as f64 * fb).sqrt() * scale_r;
                        let q = (y + ROUND_MAGIC) - ROUND_MAGIC;
                        let off = 0.5 - (y - q).abs();
                        *ro = if off > y * ROOT_EST_MARGIN + scale_r {
                            q as i32
                        } else {
                            exact_root(c, b)
                        };
                    }
                    round_chunk(p2c, m2c, r2c, pc, rh_guess, k_guess)
                })
                .reduce(|| (0, true), |x, y| (x.0.max(y.0), x.1 && y.1));
            (m2, r2, p2, mx_p, fits)
        };
    if !fits {
        return None;
    }
    let k_p = requant_shift(mx_p as u128, WIDE_MANT_MAX);
    if k_p != k_guess {
        let rh_p = Rhe::new(k_p);
        p2.par_chunks_mut(ADAM_CHUNK)
            .zip(m2.par_chunks(ADAM_CHUNK))
            .zip(r2.par_chunks(ADAM_CHUNK))
            .zip(p.mant.par_chunks(ADAM_CHUNK))
            .for_each(|(((p2c, m2c), r2c), pc)| {
                round_chunk(p2c, m2c, r2c, pc, rh_p, k_p);
            });
    }
    Some(
        finish(OP, p2, p.exp as i64 - 16, k_p)
            .map(|p2| (p2, Bfp::new(m2, m_exp), Bfp::new(r2, r_exp))),
    )
}

/// Steps 3–5 of [`AdamStep`]'s rule for given `m'`, `r'`: the unrounded `p'` of each element.
#[derive(Clone, Copy)]
struct AdamUpdate {
    alpha: i128,
    decay: i128,
    decay_q40: i64,
    /// `|decay| < 2^40` and `|p| < 2^23`: the decay product fits in i64.
    decay_narrow: bool,
    sh: i64,
    rh_a: Rhe,
    rh_d: Rhe,
}

impl AdamUpdate {
    fn new(st: &AdamStep, sh: i64) -> Self {
        Self {
            alpha: st.alpha_q40 as i128,
            decay: st.decay_q40 as i128,
            decay_q40: st.decay_q40,
            decay_narrow: st.decay_q40.unsigned_abs() < 1 << 40,
            sh,
            rh_a: Rhe::new(sh.clamp(0, 127) as u32),
            rh_d: Rhe::new(24),
        }
    }

    /// `p'` before rounding, from `m'` (`mm`), `r'` (`rm`) and `p` (`pm`).
    #[inline]
    fn wide(self, mm: i32, rm: i32, pm: i32) -> i128 {
        // |m'| ≤ 2^15 so m'·2^30 < 2^45; r' + 1 ∈ [1, 2^15]: both exact in f64, the
        // quotient rounded once (relative error 2^−53), taken when farther from a
        // rounding boundary than DIV_EST_MARGIN allows for.
        let (num, den) = ((mm as i64) << 30, rm as i64 + 1);
        let y = num as f64 / den as f64;
        let q = (y + ROUND_MAGIC) - ROUND_MAGIC;
        let off = 0.5 - (y - q).abs();
        let u = if off > y.abs() * DIV_EST_MARGIN {
            q as i64 as i128
        } else {
            div_rhe_small(num, den) as i128
        };
        let au = self.alpha * u;
        let a = if self.sh >= 0 {
            match i64::try_from(au) {
                Ok(v) => self.rh_a.round(v) as i128,
                Err(_) => rhe(au, self.sh.min(127) as u32),
            }
        } else {
            shift_sat(au, self.sh)
        };
        let d = if self.decay_narrow {
            self.rh_d.round(self.decay_q40 * pm as i64) as i128
        } else {
            rhe_wide(self.decay * pm as i128, 24)
        };
        ((pm as i128) << 16) - d - a
    }

    /// `p'` of one chunk rounded by `rh` into `out`; returns the largest unrounded `|p'|` and
    /// whether every one fits in i64 (when not, `out` is partly written and not used).
    fn round_chunk(
        self,
        out: &mut [i32],
        m2: &[i32],
        r2: &[i32],
        p: &[i32],
        rh: Rhe,
    ) -> (u64, bool) {
        let mut mp = 0u64;
        let mut fits = true;
        for (((o, &mm), &rm), &pm) in out.iter_mut().zip(m2).zip(r2).zip(p) {
            match i64::try_from(self.wide(mm, rm, pm)) {
                Ok(v) => {
                    *o = rh.round(v) as i32;
                    mp = mp.max(v.unsigned_abs());
                }
                Err(_) => fits = false,
            }
        }
        (mp, fits)
    }
}

/// Relative margin of the f64 roots of [`adamw_narrow`]: the two products `β·A` (below
/// `2^61`) are rounded to f64, scaled exactly and added (relative error `≤ 3·2^−53`), the
/// root halves that and adds one rounding: `|y − √X/2^k| < y·2^−51`. The floor root differs
/// from `√X` by less than one unit, `2^−k` after scaling. If `y` is farther than both from the
/// nearest half-integer, `√X/2^k`, the floor root scaled and `y` round alike and neither is a
/// tie; the margin is 8 times the f64 error, plus `2^−k` (so `k = 0` is never estimated).
const ROOT_EST_MARGIN: f64 = 1.0 / (1u64 << 48) as f64;

/// Largest alignment shift of `m` and `g` for which the first moment is formed in i64.
const ADAM_M_LEFT_MAX: u32 = 16;

/// The passes of [`adamw`] for given first (`wm`) and second (`wv`, already doubled when its
/// exponent `ev` is odd) moment functions of the mantissas.
#[allow(clippy::too_many_arguments)]
fn adamw_with<WM, WV>(
    p: &Bfp,
    g: &Bfp,
    m: &Bfp,
    r: &Bfp,
    st: &AdamStep,
    e0: i32,
    mut ev: i64,
    wm: WM,
    wv: WV,
) -> Result<(Bfp, Bfp, Bfp), KernelError>
where
    WM: Fn(i32, i32) -> i128 + Sync,
    WV: Fn(i32, i32) -> i128 + Sync,
{
    const OP: &str = "adamw";
    let n = p.len();
    if ev % 2 != 0 {
        ev -= 1;
    }
    // Pass 1: max |wm| and the (signed) max of wv.
    let (mx_m, mx_v) = m
        .mant
        .par_chunks(ADAM_CHUNK)
        .zip(g.mant.par_chunks(ADAM_CHUNK))
        .zip(r.mant.par_chunks(ADAM_CHUNK))
        .map(|((mc, gc), rc)| {
            let mut mm = 0u128;
            let mut mv = i128::MIN;
            for ((&a, &b), &c) in mc.iter().zip(gc).zip(rc) {
                mm = mm.max(wm(a, b).unsigned_abs());
                mv = mv.max(wv(c, b));
            }
            (mm, mv)
        })
        .reduce(|| (0, i128::MIN), |x, y| (x.0.max(y.0), x.1.max(y.1)));
    let mx_v = if n == 0 { 0 } else { mx_v };
    let k_m = requant_shift(mx_m, B16_MANT_MAX);
    let s = (100i64 - bitlen(mx_v as u128) as i64).max(0) / 2;
    let m_exp = checked_exp(OP, e0 as i64 - 30, k_m as i64)?;
    // Pass 2: m' mantissas and the roots q (u64: isqrt of a u128 is below 2^64).
    let mut m2 = vec![0i32; n];
    let mut q = vec![0u64; n];
    let mx_q = m2
        .par_chunks_mut(ADAM_CHUNK)
        .zip(q.par_chunks_mut(ADAM_CHUNK))
        .zip(
            m.mant
                .par_chunks(ADAM_CHUNK)
                .zip(g.mant.par_chunks(ADAM_CHUNK))
                .zip(r.mant.par_chunks(ADAM_CHUNK)),
        )
        .map(|((m2c, qc), ((mc, gc), rc))| {
            let mut mq = 0u64;
            for ((((o, qo), &a), &b), &c) in m2c.iter_mut().zip(qc).zip(mc).zip(gc).zip(rc) {
                *o = rhe_wide(wm(a, b), k_m) as i32;
                let root = isqrt_fast((wv(c, b) as u128) << (2 * s));
                *qo = root;
                mq = mq.max(root);
            }
            mq
        })
        .max()
        .unwrap_or(0);
    let k_r = requant_shift(mx_q as u128, B16_MANT_MAX);
    let r_exp = checked_exp(OP, ev / 2 - s, k_r as i64)?;
    // Pass 3: r' mantissas and the parameter update.
    let ea = m_exp as i64 - r_exp as i64 - 70;
    let sh = (p.exp as i64 - 16) - ea;
    let (alpha, decay) = (st.alpha_q40 as i128, st.decay_q40 as i128);
    // |decay| < 2^40 and |p| < 2^23: the decay product fits in i64.
    let decay_narrow = st.decay_q40.unsigned_abs() < 1 << 40;
    let (rh_r, rh_d) = (Rhe::new(k_r), Rhe::new(24));
    let rh_a = Rhe::new(sh.clamp(0, 127) as u32);
    let mut r2 = vec![0i32; n];
    let mut wp = vec![0i128; n];
    let mx_p = r2
        .par_chunks_mut(ADAM_CHUNK)
        .zip(wp.par_chunks_mut(ADAM_CHUNK))
        .zip(
            q.par_chunks(ADAM_CHUNK)
                .zip(m2.par_chunks(ADAM_CHUNK))
                .zip(p.mant.par_chunks(ADAM_CHUNK)),
        )
        .map(|((r2c, wpc), ((qc, m2c), pc))| {
            let mut mp = 0u128;
            for ((((ro, wo), &qv), &mm), &pm) in r2c.iter_mut().zip(wpc).zip(qc).zip(m2c).zip(pc) {
                // q < 2^64; the rounded root is at most 32767.
                let rm = if qv <= i64::MAX as u64 {
                    rh_r.round(qv as i64)
                } else {
                    rhe(qv as i128, k_r) as i64
                };
                *ro = rm as i32;
                // |m'| ≤ 2^15 so m'·2^30 < 2^45; r' + 1 ∈ [1, 2^15].
                let u = div_rhe_small((mm as i64) << 30, rm + 1) as i128;
                let au = alpha * u;
                let a = if sh >= 0 {
                    match i64::try_from(au) {
                        Ok(v) => rh_a.round(v) as i128,
                        Err(_) => rhe(au, sh.min(127) as u32),
                    }
                } else {
                    shift_sat(au, sh)
                };
                let d = if decay_narrow {
                    rh_d.round(st.decay_q40 * pm as i64) as i128
                } else {
                    rhe_wide(decay * pm as i128, 24)
                };
                let w = ((pm as i128) << 16) - d - a;
                *wo = w;
                mp = mp.max(w.unsigned_abs());
            }
            mp
        })
        .max()
        .unwrap_or(0);
    let p2 = requant_i128(OP, &wp, p.exp as i64 - 16, WIDE_MANT_MAX)?;
    debug_assert_eq!(
        p2.exp as i64,
        p.exp as i64 - 16 + requant_shift(mx_p, WIDE_MANT_MAX) as i64
    );
    Ok((p2, Bfp::new(m2, m_exp), Bfp::new(r2, r_exp)))
}
