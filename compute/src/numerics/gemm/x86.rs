//! The x86-64 tile kernels of [`super`]: AVX-512 VNNI (`vpdpwssd`) and AVX2 (`vpmaddwd`).
//!
//! This is the crate's only `unsafe` code, for two reasons without a safe alternative that
//! performs: calling a `#[target_feature]` function from code compiled without the feature, and
//! SIMD loads/stores through pointers (std has no safe `[i32; 16] ↔ __m512i` conversion; a
//! scalar copy loop would cost more than the multiply-adds it feeds). Safety rests on two
//! invariants, checked where they are established:
//! - the kernel types ([`Avx512Vnni`], [`Avx2`]) can only be built by `new`, which returns
//!   `None` unless the CPU reports every feature their kernels are compiled for;
//! - every load/store goes through a reference to a fixed-size array (`&[i32; 16]`,
//!   `&mut [i64; 8]`, …) obtained by checked slicing or `as_chunks`, so the pointer is valid for
//!   exactly the bytes accessed (unaligned access instructions are used).
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::{store_tile, Dst, MatmulShape, Path, SplitA, Tile, K_BLOCK_PAIRS_MAX};

/// Implements [`Tile`] for the proof type `$t` with the tile kernel `$tile`: each other method
/// calls the generic function of `super` of the same name through a `#[target_feature]`
/// trampoline enabling `$feat`, into which that `#[inline(always)]` function is inlined and
/// so compiled (vectorized) for the features.
macro_rules! multiversion {
    ($t:ty, $mr:expr, $nr:expr, $feat:literal, $tile:ident, $split_a:ident, $pack_b:ident, $panels:ident,
     $requant:ident) => {
        impl Tile<$mr, $nr> for $t {
            fn tile(self, a: SplitA<'_>, row0: usize, b: &[i32], dst: Dst<'_>) -> u64 {
                // SAFETY: `self` exists only if `new` detected every feature `$tile` enables.
                unsafe { $tile(a, row0, b, dst) }
            }

            fn split_part(
                self,
                a: &[i32],
                s: MatmulShape,
                part: Range<usize>,
                hi: &mut [i32],
                lo: &mut [i32],
            ) -> bool {
                // SAFETY: as for `tile`.
                unsafe { $split_a(a, s, part, hi, lo) }
            }

            fn pack_panel(self, b: &[i32], s: MatmulShape, c: usize, panel: &mut [i32]) -> bool {
                // SAFETY: as for `tile`.
                unsafe { $pack_b(b, s, c, panel) }
            }

            fn panels(
                self,
                a: SplitA<'_>,
                b: &[i32],
                s: MatmulShape,
                row0: usize,
                out: &mut [i64],
            ) -> u64 {
                // SAFETY: as for `tile`.
                unsafe { $panels(self, a, b, s, row0, out) }
            }

            fn requant(self, out: &mut [MaybeUninit<i32>], sums: &[i64], k: u32) {
                // SAFETY: as for `tile`.
                unsafe { $requant(out, sums, k) }
            }
        }

        #[target_feature(enable = $feat)]
        fn $split_a(
            a: &[i32],
            s: MatmulShape,
            part: Range<usize>,
            hi: &mut [i32],
            lo: &mut [i32],
        ) -> bool {
            super::split_part::<$mr>(a, s, part, hi, lo)
        }

        #[target_feature(enable = $feat)]
        fn $pack_b(b: &[i32], s: MatmulShape, c: usize, panel: &mut [i32]) -> bool {
            super::pack_panel::<$nr>(b, s, c, panel)
        }

        #[target_feature(enable = $feat)]
        fn $panels(
            t: $t,
            a: SplitA<'_>,
            b: &[i32],
            s: MatmulShape,
            row0: usize,
            out: &mut [i64],
        ) -> u64 {
            super::panels::<$mr, $nr, $t>(t, a, b, s, row0, out)
        }

        #[target_feature(enable = $feat)]
        fn $requant(out: &mut [MaybeUninit<i32>], sums: &[i64], k: u32) {
            super::requant_into(out, sums, k)
        }
    };
}

/// [`super::requantize`]: the mantissas are written straight into the result's spare capacity,
/// in parallel chunks of `par_min` through the tile kernel of `path` (the plain loop if `path`
/// is not available), instead of into a zeroed vector: zeroing cost a full extra pass over
/// the output (a memset of up to megabytes per product).
pub(super) fn requantize(path: Path, sums: &[i64], k: u32, par_min: usize) -> Vec<i32> {
    let len = sums.len();
    let mut mant = Vec::with_capacity(len);
    let out = &mut mant.spare_capacity_mut()[..len];
    let chunks = out.par_chunks_mut(par_min).zip(sums.par_chunks(par_min));
    match path {
        Path::Avx512Vnni if let Some(t) = Avx512Vnni::new() => {
            chunks.for_each(|(o, s)| t.requant(o, s, k))
        }
        Path::Avx2 if let Some(t) = Avx2::new() => chunks.for_each(|(o, s)| t.requant(o, s, k)),
        _ => chunks.for_each(|(o, s)| super::requant_into(o, s, k)),
    }
    // SAFETY: `out` is the first `len` elements of the capacity; its chunks and those of `sums`
    // (also `len` long, same chunk size) pair up one to one and cover both, and `requant_into`
    // writes every element of its output chunk (a loop over equally long zipped slices), so all
    // `len` elements are initialized.
    unsafe { mant.set_len(len) };
    mant
}

/// Proof that the CPU supports AVX-512 F/BW/VL/VNNI (see module docs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx512Vnni(());

impl Avx512Vnni {
    /// `Some` only if the running CPU has AVX-512 F, BW, VL and VNNI.
    pub(super) fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(Self(()))
    }
}

/// Rows of the AVX-512 register tile.
const MR512: usize = 4;
/// Columns of the AVX-512 register tile: two zmm of 16 i32 lanes.
const NR512: usize = 32;

multiversion!(
    Avx512Vnni,
    MR512,
    NR512,
    "avx512f,avx512bw,avx512vl,avx512vnni",
    tile_avx512,
    split_a_avx512,
    pack_b_avx512,
    panels_avx512,
    requant_avx512
);

/// `&[i32; 16]` as a zmm vector.
#[inline]
#[target_feature(enable = "avx512f")]
fn load512(x: &[i32; 16]) -> __m512i {
    // SAFETY: `x` is valid for 64 bytes; `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }
}

/// The exact block sums `256·h + l` of 16 i32 lanes as two vectors of 8 i64.
#[inline]
#[target_feature(enable = "avx512f")]
fn widen512(h: __m512i, l: __m512i) -> [__m512i; 2] {
    let sum = |h8, l8| {
        _mm512_add_epi64(
            _mm512_slli_epi64::<8>(_mm512_cvtepi32_epi64(h8)),
            _mm512_cvtepi32_epi64(l8),
        )
    };
    [
        sum(_mm512_castsi512_si256(h), _mm512_castsi512_si256(l)),
        sum(
            _mm512_extracti64x4_epi64::<1>(h),
            _mm512_extracti64x4_epi64::<1>(l),
        ),
    ]
}

/// i32 accumulators of one K block of the AVX-512 tile: `[hi v0, hi v1, lo v0, lo v1]` per row
/// (`v` = columns `16v .. 16v + 16`).
type Acc512 = [[__m512i; 4]; MR512];

/// One row of a tile as four vectors of 8 i64.
type Row512 = [__m512i; 4];

/// The `4×32` AVX-512 VNNI tile: K blocks of at most [`K_BLOCK_PAIRS_MAX`] k-pairs through
/// [`block_avx512`], widened to i64 and summed, then stored straight into a full window (or
/// through [`store_tile`] into a partial one), with the maximum taken in registers.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn tile_avx512(a: SplitA<'_>, row0: usize, b: &[i32], dst: Dst<'_>) -> u64 {
    let (b, b_rest) = b.as_chunks::<NR512>();
    debug_assert!(b_rest.is_empty());
    let z = _mm512_setzero_si512();
    let widen = |acc: &Acc512| -> [Row512; MR512] {
        acc.map(|[h0, h1, l0, l1]| {
            let [s0, s1] = widen512(h0, l0);
            let [s2, s3] = widen512(h1, l1);
            [s0, s1, s2, s3]
        })
    };
    let sums = if b.len() <= K_BLOCK_PAIRS_MAX {
        // One K block (every K ≤ K_BLOCK_MAX): no i64 accumulation.
        widen(&block_avx512(a, row0, 0, b))
    } else {
        let mut sums: [Row512; MR512] = [[z; 4]; MR512];
        for (blk, bb) in b.chunks(K_BLOCK_PAIRS_MAX).enumerate() {
            let acc = block_avx512(a, row0, blk * K_BLOCK_PAIRS_MAX, bb);
            for (sum, w) in sums.iter_mut().zip(widen(&acc)) {
                for (x, s) in sum.iter_mut().zip(w) {
                    *x = _mm512_add_epi64(*x, s);
                }
            }
        }
        sums
    };
    let mut mx = z;
    for row in &sums {
        for &v in row {
            mx = _mm512_max_epu64(mx, _mm512_abs_epi64(v));
        }
    }
    let mx = _mm512_reduce_max_epu64(mx);
    if dst.rows == MR512 && dst.cols == NR512 {
        for (r, row) in sums.iter().enumerate() {
            let (out, _) = dst.out[r * dst.ld..][..NR512].as_chunks_mut::<8>();
            for (o, &v) in out.iter_mut().zip(row) {
                store512(o, v);
            }
        }
    } else {
        let mut tile = [[0i64; NR512]; MR512];
        for (t, row) in tile.iter_mut().zip(&sums) {
            for (o, &v) in t.as_chunks_mut::<8>().0.iter_mut().zip(row) {
                store512(o, v);
            }
        }
        store_tile(&tile, dst);
    }
    mx
}

/// Stores 8 i64 lanes to `o`.
#[inline]
#[target_feature(enable = "avx512f")]
fn store512(o: &mut [i64; 8], v: __m512i) {
    // SAFETY: `o` is valid for 64 bytes; `storeu` has no alignment requirement.
    unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), v) }
}

/// One K block (k-pairs `p0 .. p0 + b.len()`): per k-pair, two B vectors, eight broadcasts of
/// A pairs and 16 `vpdpwssd` into 16 i32 accumulators; with the two B vectors and the
/// broadcasts (which LLVM hoists), 26 of the 32 zmm registers: nothing spills (a `6×32` tile,
/// 24 accumulators, spilled six of them on every k-pair). Kept out of line: inlined next to
/// the widening, LLVM rotates the accumulators through registers on every k-pair.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn block_avx512(a: SplitA<'_>, row0: usize, p0: usize, b: &[[i32; NR512]]) -> Acc512 {
    let mut acc = [[_mm512_setzero_si512(); 4]; MR512];
    let base = row0 * a.rs + p0 * a.ps;
    for (i, bp) in b.iter().enumerate() {
        let [b0, b1] = bp.as_chunks::<16>().0 else {
            unreachable!("32 = 2·16")
        };
        let (b0, b1) = (load512(b0), load512(b1));
        let at = base + i * a.ps;
        for (r, [h0, h1, l0, l1]) in acc.iter_mut().enumerate() {
            let h = _mm512_set1_epi32(a.hi[at + r * a.rs]);
            *h0 = _mm512_dpwssd_epi32(*h0, h, b0);
            *h1 = _mm512_dpwssd_epi32(*h1, h, b1);
            let l = _mm512_set1_epi32(a.lo[at + r * a.rs]);
            *l0 = _mm512_dpwssd_epi32(*l0, l, b0);
            *l1 = _mm512_dpwssd_epi32(*l1, l, b1);
        }
    }
    acc
}

/// Proof that the CPU supports AVX2 (see module docs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Avx2(());

impl Avx2 {
    /// `Some` only if the running CPU has AVX2.
    pub(super) fn new() -> Option<Self> {
        is_x86_feature_detected!("avx2").then_some(Self(()))
    }
}

/// Rows of the AVX2 register tile.
const MR256: usize = 4;
/// Columns of the AVX2 register tile: one ymm of 8 i32 lanes.
const NR256: usize = 8;

multiversion!(
    Avx2,
    MR256,
    NR256,
    "avx2",
    tile_avx2,
    split_a_avx2,
    pack_b_avx2,
    panels_avx2,
    requant_avx2
);

/// The `4×8` AVX2 tile: per k-pair, one B vector, eight broadcasts of A pairs, eight `vpmaddwd`
/// (each exact: `|x0·y0 + x1·y1| ≤ 2·128·32767 < 2^31`) added into eight i32 accumulators;
/// after each K block the i64 sums are accumulated in memory, then stored by [`store_tile`].
#[target_feature(enable = "avx2")]
fn tile_avx2(a: SplitA<'_>, row0: usize, b: &[i32], dst: Dst<'_>) -> u64 {
    let (b, b_rest) = b.as_chunks::<NR256>();
    debug_assert!(b_rest.is_empty());
    let mut tile = [[0i64; NR256]; MR256];
    for (blk, bb) in b.chunks(K_BLOCK_PAIRS_MAX).enumerate() {
        let zero = _mm256_setzero_si256();
        let mut hi = [zero; MR256];
        let mut lo = [zero; MR256];
        let base = row0 * a.rs + blk * K_BLOCK_PAIRS_MAX * a.ps;
        for (i, bp) in bb.iter().enumerate() {
            // SAFETY: `bp` is a `[i32; 8]`, valid for 32 bytes; `loadu` is unaligned.
            let bv = unsafe { _mm256_loadu_si256(bp.as_ptr().cast()) };
            let at = base + i * a.ps;
            for r in 0..MR256 {
                let h = _mm256_set1_epi32(a.hi[at + r * a.rs]);
                let l = _mm256_set1_epi32(a.lo[at + r * a.rs]);
                hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(h, bv));
                lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(l, bv));
            }
        }
        for (t, (h, l)) in tile.iter_mut().zip(hi.into_iter().zip(lo)) {
            for (half, d) in t.as_chunks_mut::<4>().0.iter_mut().enumerate() {
                let (h4, l4) = if half == 0 {
                    (_mm256_castsi256_si128(h), _mm256_castsi256_si128(l))
                } else {
                    (
                        _mm256_extracti128_si256::<1>(h),
                        _mm256_extracti128_si256::<1>(l),
                    )
                };
                let s = _mm256_add_epi64(
                    _mm256_slli_epi64::<8>(_mm256_cvtepi32_epi64(h4)),
                    _mm256_cvtepi32_epi64(l4),
                );
                // SAFETY: `d` is a `[i64; 4]`, valid for 32 bytes; `loadu`/`storeu` are unaligned.
                unsafe {
                    let p = d.as_mut_ptr().cast::<__m256i>();
                    _mm256_storeu_si256(p, _mm256_add_epi64(_mm256_loadu_si256(p), s));
                }
            }
        }
    }
    store_tile(&tile, dst)
}
