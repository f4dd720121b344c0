//! AVX-512 passes of [`super::adamw_narrow`], eight elements per step (one 64-bit lane each).
//!
//! This module is `unsafe` for the same two reasons as the matmul kernels of
//! `crate::numerics::gemm::x86`: calling `#[target_feature]` functions from code compiled without the
//! features, and SIMD loads/stores through pointers. Safety rests on two invariants:
//! - the proof type [`Avx512Dq`] can only be built by [`Avx512Dq::new`], which returns `None`
//!   unless the CPU reports AVX-512 F and DQ (every feature the functions are compiled for);
//! - every load/store goes through a reference to a fixed-size array (`&[i32; 8]`,
//!   `&mut [S; 8]` for a 4-byte [`Slot`] `S`) obtained by `as_chunks` or a local array, so the
//!   pointer is valid for exactly the 32 bytes accessed (unaligned access instructions are
//!   used).
//!
//! [`Avx512Dq::pass2`] also allocates its three outputs without zeroing them (zeroing is a
//! serial pass over all three, page faults included, about 5% of the whole AdamW): its
//! kernels write every element before the lengths are set, as stated where they are.
//!
//! Exactness: the integer lanes compute the same exact values as the scalar code (each bound
//! is stated where it is used), and the f64 lanes repeat the scalar code's operations one for
//! one (separate multiplies and adds, no fused multiply-add), so an estimate is vouched for in
//! exactly the lanes where the scalar code vouches for it. A lane whose estimate is not
//! provably exact goes through the scalar fallback the caller passes in, for just that element,
//! so every result is the scalar code's by construction.
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{
    MomentConsts, RootConsts, UpdateConsts, ADAM_CHUNK, ADAM_RHE_K_MAX, ROOT_EST_MARGIN,
    UPDATE_EST_MAX,
};
use crate::numerics::cpu::elementwise::Align;
use crate::numerics::cpu::rounding::{DIV_EST_MARGIN, ROUND_MAGIC};

/// An output element of the kernels: an `i32`, or one not initialized yet (the outputs of
/// [`Avx512Dq::pass2`]). Implemented only for those two types, both 4 bytes.
pub(in crate::numerics::cpu) trait Slot: Sized {
    /// Writes `v`.
    fn put(&mut self, v: i32);
    /// The address of 8 consecutive slots, for one 32-byte store of initialized values.
    fn ptr8(o: &mut [Self; LANES]) -> *mut i32;
}

impl Slot for i32 {
    fn put(&mut self, v: i32) {
        *self = v;
    }
    fn ptr8(o: &mut [Self; LANES]) -> *mut i32 {
        o.as_mut_ptr()
    }
}

impl Slot for MaybeUninit<i32> {
    fn put(&mut self, v: i32) {
        self.write(v);
    }
    fn ptr8(o: &mut [Self; LANES]) -> *mut i32 {
        // `MaybeUninit<i32>` has the layout of `i32`.
        o.as_mut_ptr().cast()
    }
}

/// Results of [`Avx512Dq::pass2`]: `m'`, `r'`, `p'` (rounded by the guessed shift), the
/// largest unrounded `|p'|` and whether every `p'` fits in i64.
pub(in crate::numerics::cpu) type Pass2 = (Vec<i32>, Vec<i32>, Vec<i32>, u64, bool);

/// Lanes per step: 64-bit integers or f64 in a zmm register.
const LANES: usize = 8;

/// Proof that the CPU supports AVX-512 F and DQ (see module docs).
#[derive(Debug, Clone, Copy)]
pub(in crate::numerics::cpu) struct Avx512Dq(());

impl Avx512Dq {
    /// `Some` only if the running CPU has AVX-512 F and DQ.
    pub(in crate::numerics::cpu) fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq"))
            .then_some(Self(()))
    }

    /// [`maxima`] (see there).
    pub(in crate::numerics::cpu) fn maxima(
        self,
        k: &MomentConsts,
        m: &[i32],
        g: &[i32],
        r: &[i32],
        p: &[i32],
    ) -> Maxima {
        // SAFETY: `self` exists only if `new` detected every feature `maxima` enables.
        unsafe { maxima(k, m, g, r, p) }
    }

    /// [`moments`] (see there).
    #[cfg(test)]
    pub(in crate::numerics::cpu) fn moments<F: Fn(i32, i32) -> i32>(
        self,
        k: &MomentConsts,
        root: &RootConsts,
        ins: (&[i32], &[i32], &[i32]),
        m2: &mut [i32],
        r2: &mut [i32],
        exact_root: F,
    ) {
        // SAFETY: as for `maxima`.
        unsafe { moments(k, root, ins, m2, r2, &exact_root) }
    }

    /// Pass 2 of [`super::adamw_narrow`] in parallel chunks: [`moments`], then [`update`] of
    /// the chunk's `m'`, `r'` and `p = ins.3` with `p'` rounded by `k`, into three vectors
    /// allocated without zeroing.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::numerics::cpu) fn pass2<FR, FW>(
        self,
        k: &MomentConsts,
        roots: &RootConsts,
        u: &UpdateConsts,
        (m, g, r, p): (&[i32], &[i32], &[i32], &[i32]),
        k_p: u32,
        exact_root: FR,
        wide: FW,
    ) -> Pass2
    where
        FR: Fn(i32, i32) -> i32 + Sync,
        FW: Fn(i32, i32, i32) -> i128 + Sync,
    {
        // Equal lengths (checked by the caller); the shortest, so that the chunks of the inputs
        // and of the outputs pair up one to one whatever the caller passes.
        debug_assert!([m.len(), g.len(), r.len()].iter().all(|&l| l == p.len()));
        let n = [m.len(), g.len(), r.len(), p.len()]
            .into_iter()
            .min()
            .unwrap_or(0);
        let (m, g, r, p) = (&m[..n], &g[..n], &r[..n], &p[..n]);
        let (mut m2, mut r2, mut p2) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mx, fits) = m2.spare_capacity_mut()[..n]
            .par_chunks_mut(ADAM_CHUNK)
            .zip(r2.spare_capacity_mut()[..n].par_chunks_mut(ADAM_CHUNK))
            .zip(p2.spare_capacity_mut()[..n].par_chunks_mut(ADAM_CHUNK))
            .zip(
                m.par_chunks(ADAM_CHUNK)
                    .zip(g.par_chunks(ADAM_CHUNK))
                    .zip(r.par_chunks(ADAM_CHUNK))
                    .zip(p.par_chunks(ADAM_CHUNK)),
            )
            .map(|(((m2c, r2c), p2c), (((mc, gc), rc), pc))| {
                // SAFETY: as for `maxima`.
                unsafe { moments(k, roots, (mc, gc, rc), m2c, r2c, &exact_root) };
                // SAFETY: `moments` initialized every element of both chunks (it is as long
                // as `mc`: whole groups by `store8`, the tail by `put`), and `MaybeUninit<i32>`
                // has the layout of `i32`.
                let (m2c, r2c) = unsafe {
                    (
                        &*(m2c as *const [MaybeUninit<i32>] as *const [i32]),
                        &*(r2c as *const [MaybeUninit<i32>] as *const [i32]),
                    )
                };
                // SAFETY: as for `maxima`.
                unsafe { update(u, m2c, r2c, pc, p2c, k_p, &wide) }
            })
            .reduce(|| (0, true), |x, y| (x.0.max(y.0), x.1 && y.1));
        // SAFETY: the capacity is at least `n`; the chunks of the first `n` spare elements of
        // each vector cover them, and each chunk was written whole: `moments` (see above) and
        // `update` (whole groups by `store8`, the tail by `put`) write every element of their
        // outputs, the lanes recomputed by the scalar code included.
        unsafe {
            m2.set_len(n);
            r2.set_len(n);
            p2.set_len(n);
        }
        (m2, r2, p2, mx, fits)
    }

    /// [`update`] (see there).
    #[allow(clippy::too_many_arguments)]
    pub(in crate::numerics::cpu) fn update<F: Fn(i32, i32, i32) -> i128>(
        self,
        u: &UpdateConsts,
        m2: &[i32],
        r2: &[i32],
        p: &[i32],
        out: &mut [i32],
        k: u32,
        wide: F,
    ) -> (u64, bool) {
        // SAFETY: as for `maxima`.
        unsafe { update(u, m2, r2, p, out, k, &wide) }
    }
}

/// Results of [`maxima`]: the largest `|m'|` before rounding, the largest second moment (not
/// doubled), the largest `|p|`, and the bitwise OR of every `|m|`, `|g|` and `|r|` (all are
/// at most `2^15 − 1` exactly when the OR is: it has all fifteen low bits set).
pub(in crate::numerics::cpu) type Maxima = (u64, u128, u32, u64);

/// Loads 8 i32 as 8 i64 lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn load8(x: &[i32; LANES]) -> __m512i {
    // SAFETY: `x` is valid for 32 bytes; `loadu` has no alignment requirement.
    _mm512_cvtepi32_epi64(unsafe { _mm256_loadu_si256(x.as_ptr().cast()) })
}

/// Stores the low 32 bits of 8 i64 lanes (the scalar code's `as i32`).
#[inline]
#[target_feature(enable = "avx512f")]
fn store8<S: Slot>(o: &mut [S; LANES], v: __m512i) {
    // SAFETY: `o` is 8 slots of 4 bytes (see `Slot`), valid for 32 bytes; `storeu` has no
    // alignment requirement; the values stored are initialized.
    unsafe { _mm256_storeu_si256(S::ptr8(o).cast(), _mm512_cvtepi64_epi32(v)) }
}

/// A shift count for the `sll/srl/sra` instructions (counts above 63 give 0, or the sign).
#[inline]
#[target_feature(enable = "avx512f")]
fn count(k: u32) -> __m128i {
    _mm_cvtsi64_si128(k as i64)
}

/// `Rhe::new(k).round` per lane (`k ≤ ADAM_RHE_K_MAX`): the same formula, `q = s >> k` plus
/// `((s & (2^k − 1)) + 2^(k−1) − 1 + (q & 1)) >> k`; `k = 0` is the identity.
#[inline]
#[target_feature(enable = "avx512f")]
fn rhe(s: __m512i, k: u32) -> __m512i {
    debug_assert!(k <= ADAM_RHE_K_MAX);
    if k == 0 {
        return s;
    }
    let c = count(k);
    let mask = _mm512_set1_epi64((1i64 << k) - 1);
    let bias = _mm512_set1_epi64((1i64 << (k - 1)) - 1);
    let q = _mm512_sra_epi64(s, c);
    let odd = _mm512_and_si512(q, _mm512_set1_epi64(1));
    let t = _mm512_add_epi64(_mm512_add_epi64(_mm512_and_si512(s, mask), bias), odd);
    _mm512_add_epi64(q, _mm512_sra_epi64(t, c))
}

/// `Align::apply` per lane (`|x| < 2^23`, `right ≤ ADAM_RHE_K_MAX`).
#[inline]
#[target_feature(enable = "avx512f")]
fn align(x: __m512i, a: Align) -> __m512i {
    if a.right == 0 {
        _mm512_sll_epi64(x, count(a.left))
    } else {
        rhe(x, a.right)
    }
}

/// `m'` before rounding and the two terms `(ta, tb)` of the second moment of 8 elements.
#[inline]
#[target_feature(enable = "avx512f")]
fn terms(k: &MomentConsts, m: __m512i, g: __m512i, r: __m512i) -> [__m512i; 3] {
    // `vpmuldq` multiplies the low 32 bits of each lane as signed: the aligned B16 values are
    // below 2^31 in magnitude (see `MomentConsts::supported`) and b1, c1 ∈ [0, 2^30]; the sum is below
    // 2^61 (as in the scalar `wm_narrow`).
    let wm = _mm512_add_epi64(
        _mm512_mul_epi32(_mm512_set1_epi64(k.b1), align(m, k.am)),
        _mm512_mul_epi32(_mm512_set1_epi64(k.c1), align(g, k.ag)),
    );
    // Squares of B16 values (< 2^30, `vpmuldq` of 16-bit operands), rounded right as `sq`
    // (still < 2^30) and multiplied by b2, c2 ≤ 2^30 as unsigned 32-bit operands: < 2^60.
    let sq = |x: __m512i, right: u32| rhe(_mm512_mul_epi32(x, x), right);
    let ta = _mm512_mul_epu32(_mm512_set1_epi64(k.b2 as i64), sq(r, k.ar_right));
    let tb = _mm512_mul_epu32(_mm512_set1_epi64(k.c2 as i64), sq(g, k.ag2_right));
    [wm, ta, tb]
}

/// Pass 1 of [`super::adamw_narrow`] over one chunk: the largest `|wm|`, the largest
/// `(ta << la) + (tb << lb)` (below `2^101`, kept as 128-bit lanes split into high and low
/// 64-bit halves), the largest `|p|` and the OR of the B16 magnitudes, so that the caller can
/// skip the separate range scan of the inputs. The tail is padded with zeros, which add zeros
/// to maxima of nonnegative values and nothing to the OR. Out-of-range mantissas give wrapped
/// lanes, never a panic (the caller then reports them as the scan would).
#[target_feature(enable = "avx512f,avx512dq")]
fn maxima(k: &MomentConsts, m: &[i32], g: &[i32], r: &[i32], p: &[i32]) -> Maxima {
    let (mc, mt) = m.as_chunks::<LANES>();
    let (gc, gt) = g.as_chunks::<LANES>();
    let (rc, rt) = r.as_chunks::<LANES>();
    let (pc, pt) = p.as_chunks::<LANES>();
    let x = maxima_groups(k, mc, gc, rc, pc);
    if mt.is_empty() {
        return x;
    }
    let y = maxima_groups(k, &[pad(mt)], &[pad(gt)], &[pad(rt)], &[pad(pt)]);
    (x.0.max(y.0), x.1.max(y.1), x.2.max(y.2), x.3 | y.3)
}

/// [`maxima`] of whole groups of 8 (one loop with the constants in registers).
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn maxima_groups(
    k: &MomentConsts,
    m: &[[i32; LANES]],
    g: &[[i32; LANES]],
    r: &[[i32; LANES]],
    p: &[[i32; LANES]],
) -> Maxima {
    let z = _mm512_setzero_si512();
    let (mut mm, mut mhi, mut mlo, mut mp, mut or) = (z, z, z, z, z);
    let (la, lb) = (count(k.la), count(k.lb));
    // `x >> (64 − l)` is the high half of `x << l` (a count of 64 gives 0).
    let (ha, hb) = (count(64 - k.la), count(64 - k.lb));
    for (((m8, g8), r8), p8) in m.iter().zip(g).zip(r).zip(p) {
        let (m, g, r) = (load8(m8), load8(g8), load8(r8));
        let abs = |x| _mm512_abs_epi64(x);
        or = _mm512_or_si512(or, _mm512_or_si512(abs(m), _mm512_or_si512(abs(g), abs(r))));
        let [wm, ta, tb] = terms(k, m, g, r);
        // |wm| ≤ 2^61: the absolute value does not overflow.
        mm = _mm512_max_epu64(mm, _mm512_abs_epi64(wm));
        let (lo_a, lo_b) = (_mm512_sll_epi64(ta, la), _mm512_sll_epi64(tb, lb));
        let lo = _mm512_add_epi64(lo_a, lo_b);
        let carry = _mm512_cmplt_epu64_mask(lo, lo_a);
        let hi = _mm512_add_epi64(_mm512_srl_epi64(ta, ha), _mm512_srl_epi64(tb, hb));
        let hi = _mm512_mask_add_epi64(hi, carry, hi, _mm512_set1_epi64(1));
        let gt = _mm512_cmpgt_epu64_mask(hi, mhi)
            | (_mm512_cmpeq_epi64_mask(hi, mhi) & _mm512_cmpgt_epu64_mask(lo, mlo));
        mhi = _mm512_mask_blend_epi64(gt, mhi, hi);
        mlo = _mm512_mask_blend_epi64(gt, mlo, lo);
        mp = _mm512_max_epu64(mp, _mm512_abs_epi64(load8(p8)));
    }
    let (mut his, mut los) = ([0u64; LANES], [0u64; LANES]);
    // SAFETY: both arrays are valid for 64 bytes; `storeu` has no alignment requirement.
    unsafe {
        _mm512_storeu_si512(his.as_mut_ptr().cast(), mhi);
        _mm512_storeu_si512(los.as_mut_ptr().cast(), mlo);
    }
    let mv = his
        .iter()
        .zip(&los)
        .map(|(&h, &l)| ((h as u128) << 64) | l as u128)
        .max()
        .unwrap_or(0);
    (
        _mm512_reduce_max_epu64(mm),
        mv,
        _mm512_reduce_max_epu64(mp) as u32,
        _mm512_reduce_or_epi64(or) as u64,
    )
}

/// Three inputs as groups of 8 elements.
type Groups3<'a> = (&'a [[i32; LANES]], &'a [[i32; LANES]], &'a [[i32; LANES]]);

/// A tail of fewer than 8 elements padded with zeros.
#[inline]
fn pad(t: &[i32]) -> [i32; LANES] {
    let mut a = [0; LANES];
    a[..t.len()].copy_from_slice(t);
    a
}

/// The lanes `0..n` of a group (`n ≤ 8`).
#[inline]
fn lanes_below(n: usize) -> u8 {
    ((1u16 << n) - 1) as u8
}

/// Groups of 8 per block of the vector loops of [`moments`] and [`update`]: the lanes to
/// recompute are recorded per group (one byte each, on the stack) and recomputed after the
/// block's loop, so the loop itself makes no calls and keeps its constants in registers.
const BLOCK_GROUPS: usize = 512;

/// `y` rounded half to even (`|y| < 2^51`) and whether `y` is farther than `margin` from a
/// half-integer: `(y + ROUND_MAGIC) − ROUND_MAGIC`, `off = 0.5 − |y − q|` (exact: `q` is
/// within a half of `y`), `off > margin`, as the scalar code.
#[inline]
#[target_feature(enable = "avx512f")]
fn round_sure(y: __m512d, margin: __m512d) -> (__m512d, __mmask8) {
    let magic = _mm512_set1_pd(ROUND_MAGIC);
    let q = _mm512_sub_pd(_mm512_add_pd(y, magic), magic);
    let off = _mm512_sub_pd(_mm512_set1_pd(0.5), _mm512_abs_pd(_mm512_sub_pd(y, q)));
    (q, _mm512_cmp_pd_mask::<_CMP_GT_OQ>(off, margin))
}

/// Pass 2a of [`super::adamw_narrow`] over one chunk: `m'` (exact integer lanes) and `r'`
/// from the f64 root where the scalar code takes it, `exact_root(r, g)` elsewhere.
/// Writes every element of `m2` and `r2` (as long as `m`).
#[target_feature(enable = "avx512f,avx512dq")]
fn moments<S: Slot, F: Fn(i32, i32) -> i32>(
    k: &MomentConsts,
    c: &RootConsts,
    (m, g, r): (&[i32], &[i32], &[i32]),
    m2: &mut [S],
    r2: &mut [S],
    exact_root: &F,
) {
    let mut unsure = [0u8; BLOCK_GROUPS];
    let (mc, mt) = m.as_chunks::<LANES>();
    let (gc, gt) = g.as_chunks::<LANES>();
    let (rc, rt) = r.as_chunks::<LANES>();
    let (m2c, m2t) = m2.as_chunks_mut::<LANES>();
    let (r2c, r2t) = r2.as_chunks_mut::<LANES>();
    let blocks = mc
        .chunks(BLOCK_GROUPS)
        .zip(gc.chunks(BLOCK_GROUPS))
        .zip(rc.chunks(BLOCK_GROUPS));
    let outs = m2c
        .chunks_mut(BLOCK_GROUPS)
        .zip(r2c.chunks_mut(BLOCK_GROUPS));
    for (((mb, gb), rb), (m2b, r2b)) in blocks.zip(outs) {
        let masks = &mut unsure[..mb.len()];
        if moments_groups(k, c, (mb, gb, rb), m2b, r2b, u8::MAX, masks) {
            for (((&mask, g8), r8), ro) in masks.iter().zip(gb).zip(rb).zip(r2b.iter_mut()) {
                fix_roots(mask, g8, r8, ro, exact_root);
            }
        }
    }
    let n = mt.len();
    if n > 0 {
        let (mut mo, mut ro) = ([[0; LANES]], [[0; LANES]]);
        let ins = (&[pad(mt)][..], &[pad(gt)][..], &[pad(rt)][..]);
        let masks = &mut unsure[..1];
        moments_groups(k, c, ins, &mut mo, &mut ro, lanes_below(n), masks);
        fix_roots(masks[0], gt, rt, &mut ro[0], exact_root);
        for ((md, rd), (&mv, &rv)) in m2t
            .iter_mut()
            .zip(r2t.iter_mut())
            .zip(mo[0].iter().zip(&ro[0]))
        {
            md.put(mv);
            rd.put(rv);
        }
    }
}

/// The roots of the lanes in `mask` by `exact_root(r, g)`.
fn fix_roots<S: Slot, F: Fn(i32, i32) -> i32>(
    mask: u8,
    g: &[i32],
    r: &[i32],
    ro: &mut [S],
    exact_root: &F,
) {
    for (i, ((o, &gv), &rv)) in ro.iter_mut().zip(g).zip(r).enumerate() {
        if mask >> i & 1 == 1 {
            o.put(exact_root(rv, gv));
        }
    }
}

/// [`moments`] of whole groups of 8: `unsure[i]` gets the lanes of group `i` (within `valid`)
/// whose root is not vouched for; returns whether there are any.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn moments_groups<S: Slot>(
    k: &MomentConsts,
    c: &RootConsts,
    (m, g, r): Groups3<'_>,
    m2: &mut [[S; LANES]],
    r2: &mut [[S; LANES]],
    valid: u8,
    unsure: &mut [u8],
) -> bool {
    let (fa, fb) = (_mm512_set1_pd(c.fa), _mm512_set1_pd(c.fb));
    let scale_r = _mm512_set1_pd(c.scale_r);
    let root_margin = _mm512_set1_pd(ROOT_EST_MARGIN);
    let mut any = 0u8;
    let ins = m.iter().zip(g).zip(r);
    let outs = m2.iter_mut().zip(r2.iter_mut()).zip(unsure.iter_mut());
    for (((m8, g8), r8), ((mo, ro), un)) in ins.zip(outs) {
        let [wm, ta, tb] = terms(k, load8(m8), load8(g8), load8(r8));
        store8(mo, rhe(wm, c.k_m));
        // The scalar `(ta as f64 * fa + tb as f64 * fb).sqrt() * scale_r` (ta, tb < 2^60).
        let sum = _mm512_add_pd(
            _mm512_mul_pd(_mm512_cvtepi64_pd(ta), fa),
            _mm512_mul_pd(_mm512_cvtepi64_pd(tb), fb),
        );
        let y = _mm512_mul_pd(_mm512_sqrt_pd(sum), scale_r);
        let margin = _mm512_add_pd(_mm512_mul_pd(y, root_margin), scale_r);
        let (q, sure) = round_sure(y, margin);
        // Vouched-for roots are rounded r' ≤ 32767: the conversion is exact.
        store8(ro, _mm512_cvtpd_epi64(q));
        *un = !sure & valid;
        any |= *un;
    }
    any != 0
}

/// `AdamUpdate::round_chunk` with the estimates of 8 elements at a time: the quotient
/// `u = rhe(m'·2^30 / (r' + 1))` as the scalar code estimates it, then `a = rhe(alpha·u, sh)`
/// from `y = u·alpha·2^−sh` in f64 (one rounding of an exact product: `|y − Y| ≤ |Y|·2^−53`,
/// no subnormals, see [`UpdateConsts::new`]), vouched for like the quotient when farther than
/// `|y|·DIV_EST_MARGIN` (over 16 times the error) from a half-integer and below `2^50`; the
/// decay `rhe(decay·p, 24)` and `p' = (p << 16) − d − a` in exact integer lanes
/// (`|p'| < 2^39 + 2^39 + 2^50`, so it fits in i64), rounded by `k` (at most 41, the shift of
/// a value below `2^63`). Lanes not vouched for go through `wide` (the scalar
/// `AdamUpdate::wide`), for just that element.
/// Writes every element of `out` (as long as `p`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512dq")]
fn update<S: Slot, F: Fn(i32, i32, i32) -> i128>(
    u: &UpdateConsts,
    m2: &[i32],
    r2: &[i32],
    p: &[i32],
    out: &mut [S],
    k: u32,
    wide: &F,
) -> (u64, bool) {
    let rh = crate::numerics::fixed::Rhe::new(k);
    let mut mx = 0u64;
    let mut fits = true;
    // The scalar `round_chunk` for the lanes in `mask` of one group.
    let mut fix = |mask: u8, m8: &[i32], r8: &[i32], p8: &[i32], o: &mut [S]| {
        for (i, o) in o.iter_mut().enumerate() {
            if mask >> i & 1 == 1 {
                match i64::try_from(wide(m8[i], r8[i], p8[i])) {
                    Ok(v) => {
                        o.put(rh.round(v) as i32);
                        mx = mx.max(v.unsigned_abs());
                    }
                    Err(_) => fits = false,
                }
            }
        }
    };
    let mut unsure = [0u8; BLOCK_GROUPS];
    let (mc, mt) = m2.as_chunks::<LANES>();
    let (rc, rt) = r2.as_chunks::<LANES>();
    let (pc, pt) = p.as_chunks::<LANES>();
    let (oc, ot) = out.as_chunks_mut::<LANES>();
    let blocks = mc
        .chunks(BLOCK_GROUPS)
        .zip(rc.chunks(BLOCK_GROUPS))
        .zip(pc.chunks(BLOCK_GROUPS));
    let mut vec_mx = 0u64;
    for (((mb, rb), pb), ob) in blocks.zip(oc.chunks_mut(BLOCK_GROUPS)) {
        let masks = &mut unsure[..mb.len()];
        let (bmx, any) = update_groups(u, (mb, rb, pb), ob, k, u8::MAX, masks);
        vec_mx = vec_mx.max(bmx);
        if any {
            for ((((&mask, m8), r8), p8), o) in
                masks.iter().zip(mb).zip(rb).zip(pb).zip(ob.iter_mut())
            {
                if mask != 0 {
                    fix(mask, m8, r8, p8, o);
                }
            }
        }
    }
    let n = mt.len();
    if n > 0 {
        let mut o = [[0; LANES]];
        let ins = (&[pad(mt)][..], &[pad(rt)][..], &[pad(pt)][..]);
        let masks = &mut unsure[..1];
        let (bmx, _) = update_groups(u, ins, &mut o, k, lanes_below(n), masks);
        vec_mx = vec_mx.max(bmx);
        for (d, &v) in ot.iter_mut().zip(&o[0]) {
            d.put(v);
        }
        fix(masks[0], mt, rt, pt, ot);
    }
    (vec_mx.max(mx), fits)
}

/// [`update`] of whole groups of 8: the largest `|p'|` of the vouched-for lanes within
/// `valid`, with `unsure[i]` the other lanes of group `i` within `valid`, and whether there
/// are any.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn update_groups<S: Slot>(
    u: &UpdateConsts,
    (m2, r2, p): Groups3<'_>,
    out: &mut [[S; LANES]],
    k: u32,
    valid: u8,
    unsure: &mut [u8],
) -> (u64, bool) {
    let div_margin = _mm512_set1_pd(DIV_EST_MARGIN);
    let q30 = _mm512_set1_pd((1u64 << 30) as f64);
    let one = _mm512_set1_epi64(1);
    let alpha = _mm512_set1_pd(u.alpha_scaled);
    let decay = _mm512_set1_epi64(u.decay_q40);
    let est_max = _mm512_set1_pd(UPDATE_EST_MAX);
    let mut mx = _mm512_setzero_si512();
    let mut any = 0u8;
    let ins = m2.iter().zip(r2).zip(p);
    for (((m8, r8), p8), (o, un)) in ins.zip(out.iter_mut().zip(unsure.iter_mut())) {
        let (mm, rm, pm) = (load8(m8), load8(r8), load8(p8));
        // The scalar `(m' << 30) as f64 / (r' + 1) as f64`: both exact (below 2^45, 2^16).
        let num = _mm512_mul_pd(_mm512_cvtepi64_pd(mm), q30);
        let den = _mm512_cvtepi64_pd(_mm512_add_epi64(rm, one));
        let y = _mm512_div_pd(num, den);
        let (uq, sure_u) = round_sure(y, _mm512_mul_pd(_mm512_abs_pd(y), div_margin));
        let ya = _mm512_mul_pd(uq, alpha);
        let abs_a = _mm512_abs_pd(ya);
        let (aq, sure_a) = round_sure(ya, _mm512_mul_pd(abs_a, div_margin));
        let small = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(abs_a, est_max);
        let sure = sure_u & sure_a & small & valid;
        // |decay| < 2^40, |p| < 2^23: the product fits in i64.
        let d = rhe(_mm512_mullo_epi64(decay, pm), 24);
        let a = _mm512_cvtpd_epi64(aq);
        let w = _mm512_sub_epi64(_mm512_sub_epi64(_mm512_slli_epi64::<16>(pm), d), a);
        store8(o, rhe(w, k));
        mx = _mm512_mask_max_epu64(mx, sure, mx, _mm512_abs_epi64(w));
        *un = !sure & valid;
        any |= *un;
    }
    (_mm512_reduce_max_epu64(mx), any != 0)
}
