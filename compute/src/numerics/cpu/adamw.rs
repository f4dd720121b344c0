//! AdamW on the CPU: the rule of [`AdamStep`] in two or three passes with 64-bit moments and
//! f64 estimates where provably exact, the AVX-512 passes of `x86` where the CPU has them,
//! and the reference's i128 passes for hyperparameters outside the usual range.

use super::elementwise::Align;
use super::rounding::{
    div_rhe_small, f64_scale, finish, requant_i128, rhe_wide, DIV_EST_MARGIN, ROUND_MAGIC,
};
use crate::numerics::fixed::{bitlen, isqrt, requant_shift, rhe, rhe64, Rhe, B16_MANT_MAX};
use crate::numerics::kernels::{
    align_exp, check_adamw, checked_exp, shift_sat, AdamStep, Bfp, KernelError, WIDE_MANT_MAX,
};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod x86;

/// Exact floor square root of `x < 2^104` (so the root is below `2^52` and its square is one
/// 64×64-bit product): the f64 root of the top 62 bits of `x` (an even shift `2h` dropped,
/// restored as `2^h`) is within a unit or two, then corrected like [`isqrt`] does. Larger `x`
/// go to [`isqrt`].
#[inline]
pub(super) fn isqrt_fast(x: u128) -> u64 {
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
pub(super) const ADAM_CHUNK: usize = 1 << 12;

/// [`crate::numerics::kernels::Kernels::adamw`], the rule of [`AdamStep`]. For β in `[0, 2^30]` (every
/// real configuration) [`adamw_narrow`] runs it in three passes (maxima; m', r' and the
/// unrounded p'; rounding of p'), with 64-bit moments where the alignment allows and f64
/// estimates of roots and quotients where provably exact; on x86-64 with AVX-512 its passes
/// run 8 elements per instruction (`x86`, the same values lane by lane, the scalar code
/// for the few elements an estimate cannot vouch for). Otherwise [`adamw_with`] runs the
/// reference's i128 expressions (so out-of-range hyperparameters wrap identically) in four
/// passes, with 64 bits only where the bound is structural: aligned B16 values
/// (`≤ 2^15·2^40 < 2^63`), `m'·2^30 < 2^45`, and the isqrt of values below `2^104`.
pub(super) fn adamw(
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
pub(super) fn adamw_on(
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

/// The per-call constants of the moments (see [`adamw`]): `m'` before rounding is
/// `b1·am(m) + c1·ag(g)`, the second moment `(b2·sq(r, ar)) << la + (c2·sq(g, ag2)) << lb`
/// with `sq(x, al) = rhe(x², al.right)`.
#[derive(Clone, Copy)]
pub(super) struct MomentConsts {
    pub(super) b1: i64,
    pub(super) c1: i64,
    pub(super) am: Align,
    pub(super) ag: Align,
    pub(super) b2: u64,
    pub(super) c2: u64,
    pub(super) ar_right: u32,
    pub(super) ag2_right: u32,
    pub(super) la: u32,
    pub(super) lb: u32,
}

/// Largest rounding shift of the vector passes: that of `Rhe`'s 64-bit formula, which they
/// repeat lane by lane.
pub(super) const ADAM_RHE_K_MAX: u32 = Rhe::INLINE_K_MAX;

impl MomentConsts {
    /// Whether the vector passes compute these moments exactly: 32-bit multiplier operands
    /// (`b1, c1, b2, c2 ∈ [0, 2^30]`, first-moment left shifts `≤ ADAM_M_LEFT_MAX`, so an aligned
    /// `|x| ≤ 2^15 − 1` is below `2^31`, a signed 32-bit operand) and rounding shifts within
    /// the 64-bit formula (`≤ ADAM_RHE_K_MAX`); `la, lb ≤ 40` by alignment.
    pub(super) fn supported(&self) -> bool {
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
pub(super) struct RootConsts {
    pub(super) fa: f64,
    pub(super) fb: f64,
    pub(super) scale_r: f64,
    pub(super) k_m: u32,
}

/// The constants of the parameter update: `a = rhe(alpha·u, sh)` estimated as
/// `u·alpha_scaled`, `alpha_scaled = alpha·2^−sh` (exact, see [`UpdateConsts::new`]), and the
/// decay factor.
#[derive(Clone, Copy)]
pub(super) struct UpdateConsts {
    pub(super) alpha_scaled: f64,
    pub(super) decay_q40: i64,
}

/// Largest `|alpha|` of the vector update: exact as an f64.
const ALPHA_MAX: u64 = 1 << 53;

/// Largest update rounding shift `sh` of the vector update: `|alpha|·2^−sh` and every nonzero
/// `|u·alpha|·2^−sh ≥ 2^−sh` stay normal f64 (no subnormal rounding) up to here.
const UPDATE_SH_MAX: i64 = 900;

/// Bound (exclusive) on the update estimates taken: [`ROUND_MAGIC`] rounds exactly below `2^51`.
pub(super) const UPDATE_EST_MAX: f64 = (1u64 << 50) as f64;

impl UpdateConsts {
    /// `None` unless the vector update is exact for these constants: `0 ≤ sh ≤ UPDATE_SH_MAX`
    /// (negative shifts saturate, left to the scalar code), `|alpha| ≤ 2^53` and
    /// `|decay| < 2^40` (so `decay·p`, `|p| < 2^23`, fits in i64).
    pub(super) fn new(alpha_q40: i64, decay_q40: i64, sh: i64) -> Option<Self> {
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
pub(super) use x86::Avx512Dq as AdamSimd;

/// No vector passes off x86-64: uninhabited, so only the portable code runs.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(super) enum AdamSimd {}

#[cfg(not(target_arch = "x86_64"))]
impl AdamSimd {
    pub(super) fn new() -> Option<Self> {
        None
    }

    pub(super) fn maxima(
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
    pub(super) fn pass2<FR, FW>(
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
    pub(super) fn update<F: Fn(i32, i32, i32) -> i128>(
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
pub(super) struct AdamUpdate {
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
    pub(super) fn new(st: &AdamStep, sh: i64) -> Self {
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
    pub(super) fn wide(self, mm: i32, rm: i32, pm: i32) -> i128 {
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
    pub(super) fn round_chunk(
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
pub(super) const ROOT_EST_MARGIN: f64 = 1.0 / (1u64 << 48) as f64;

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
