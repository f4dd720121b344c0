//! Rounding and requantization helpers shared by the CPU kernels: exact division rounded half
//! to even without i128 division ([`DivRhe`]), the two-pass requantizations of exact wide
//! values (in i64, i128 or exact f64), and the f64 rounding that vectorizes ([`rhe_f64`]).

use super::PAR_MIN_LEN;
use crate::numerics::fixed::{div_rhe, requant_shift, rhe, rhe64, Rhe};
use crate::numerics::kernels::{checked_exp, Bfp, KernelError};
use rayon::prelude::*;

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
pub(super) struct DivRhe {
    d: i128,
    s: u32,
    /// `2^s / d` in f64, or NaN to force the exact fallback.
    mul: f64,
    /// `d ≤ DIV_NARROW_DIVISOR_MAX`: remainders in wrapping i64.
    narrow: bool,
}

impl DivRhe {
    /// Divisor `d > 0`, numerators shifted left by `s ≤ 63` bits (so `n·2^s` fits in i128).
    pub(super) fn new(d: i128, s: u32) -> Self {
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
    pub(super) fn div(&self, n: i64) -> i128 {
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
pub(super) const DIV_EST_MARGIN: f64 = 1.0 / (1u64 << 48) as f64;

/// Largest `|y|` [`DivRhe::div_est`] vouches for (the magic rounding needs `< 2^51`).
const DIV_EST_MAX: f64 = (1u64 << 50) as f64;

impl DivRhe {
    /// Branch-free estimate of [`DivRhe::div`]: `(q, sure)`, `q` being `n·2^s/d` rounded half
    /// to even in f64 from its estimate `y`. It is exact when `sure`: then `y` is farther from
    /// the nearest half-integer than from the exact quotient, so no rounding boundary lies
    /// between them and the exact quotient rounds to the same `q` (a NaN `y`, from the
    /// huge-divisor case, is never sure).
    #[inline]
    pub(super) fn div_est(&self, n: i64) -> (f64, bool) {
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
pub(super) fn div_rhe_small(n: i64, d: i64) -> i64 {
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
pub(super) fn rhe_wide(x: i128, k: u32) -> i128 {
    match i64::try_from(x) {
        Ok(v) => rhe64(v, k) as i128,
        Err(_) => rhe(x, k),
    }
}

/// The tensor result: mantissas with exponent `base_exp + k`, or `ExponentRange`.
pub(super) fn finish(
    op: &'static str,
    mant: Vec<i32>,
    base_exp: i64,
    k: u32,
) -> Result<Bfp, KernelError> {
    Ok(Bfp {
        mant,
        exp: checked_exp(op, base_exp, k as i64)?,
    })
}

/// Largest `|f(v)|` over `x`, in parallel chunks of plain loops.
pub(super) fn max_abs1<T: Copy + Sync, F: Fn(T) -> i64 + Sync>(x: &[T], f: F) -> u64 {
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
pub(super) fn requant_i64(
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
pub(super) fn requant_i128(
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
pub(super) fn requant_map1<F>(
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
pub(super) fn requant_map2<F>(
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
pub(super) const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;

/// Bound (exclusive) on the magnitude of the exact values the f64 paths take: below `2^51`
/// every integer is an exact f64 and the rounding of [`rhe_f64`] is exact.
pub(super) const F64_EXACT_BITS: u32 = 51;

/// Largest shift worth applying on the f64 paths: for `|s| < 2^51` and `k ≥ 53`,
/// `|s·2^−k| < 1/4`, so `rhe(s, k) = 0`, as it is for `k = 53`.
const F64_SHIFT_MAX: u32 = 53;

/// `2^−k` for the f64 paths (exact: `k ≤ 53`).
pub(super) fn f64_scale(k: u32) -> f64 {
    f64::from_bits((1023 - k.min(F64_SHIFT_MAX) as u64) << 52)
}

/// `rhe(s, k)` for an integer `|s| < 2^51` given as f64, `scale = 2^−k`, whose result fits in
/// i32: the product is exact (a power of two, no underflow for `k ≤ 53`), adding
/// [`ROUND_MAGIC`] rounds half to even, and the sum `2^52 + 2^51 + q` holds `q` in the low bits
/// of its significand (two's complement modulo `2^52`), so its low 32 bits are `q`. No
/// float-to-int conversion: the loops vectorize.
#[inline]
pub(super) fn rhe_f64(s: f64, scale: f64) -> i32 {
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
pub(super) fn max_chunk1<T: Copy, F: Fn(T) -> f64>(c: &[T], f: &F) -> f64 {
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
pub(super) fn round_chunk1<T: Copy, F: Fn(T) -> f64>(o: &mut [i32], c: &[T], scale: f64, f: &F) {
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
pub(super) fn requant_f64_1<F: Fn(i32) -> f64 + Sync>(
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
pub(super) fn round_f64_1<F: Fn(i32) -> f64 + Sync>(
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
pub(super) fn requant_f64_2<F: Fn(i32, i32) -> f64 + Sync>(
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
