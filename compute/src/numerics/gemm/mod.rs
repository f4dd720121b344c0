//! The matrix product of `CpuKernels::matmul`: [`matmul_with`] computes the exact i64 sums
//! `Σ_p A[i,p]·B[p,j]` of B16 mantissas through i16 multiply-add SIMD instructions, or through
//! exact f64 dgemm (`dgemm`) on CPUs without them, and requantizes them.
//!
//! # Why the sums are exact
//!
//! `vpdpwssd` (AVX-512 VNNI) and `vpmaddwd` (AVX2) multiply two pairs of i16 and add both
//! products to an i32 lane. One product of two B16 mantissas (`|x| ≤ 32767`) needs 30 bits, so an
//! i32 accumulator would overflow after two. The A operand is therefore split, when packed, as
//! `a = 256·hi + lo` with `hi = (a + 128) >> 8 ∈ [−128, 128]` and `lo = a − 256·hi ∈ [−128, 127]`
//! (both bounds from `|a| ≤ 32767`: `a + 128 ∈ [−32639, 32895]`). The kernels accumulate
//! `H = Σ hi·b` and `L = Σ lo·b` in separate i32 lanes. Each term has magnitude at most
//! `128 · 32767 = 4 194 176`, so a block of at most [`K_BLOCK_MAX`] = 512 terms gives
//! `|H|, |L| ≤ 512 · 4 194 176 = 2 147 418 112 < 2^31`: the true block sums fit i32. The
//! instructions add modulo 2^32 (no saturation), and reduction modulo 2^32 is a ring
//! homomorphism, so the i32 lanes hold the true sums whatever the order of additions. After each
//! block the kernel folds `256·H + L` (the exact block sum, `|·| < 2^39`) into i64; the i64
//! totals are bounded by `MATMUL_K_MAX · 32767² < 2^52`, so they never overflow either.
//! Zero padding (odd K, edge rows and columns) adds exact zeros.
//!
//! Requantization of the sums is [`matmul_with`]'s, by the rule of `Kernels::matmul`.

// Elsewhere only the f64 dgemm path exists: the integer machinery below is unused there.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

mod dgemm;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::numerics::fixed::{requant_shift, Rhe, B16_MANT_MAX};
use crate::numerics::kernels::{
    check_matmul, checked_exp, matmul_limits, Bfp, KernelError, MatmulShape,
};
use dgemm::matmul_dgemm;
use rayon::prelude::*;
use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Largest number of K terms (products per output) accumulated in i32 between two folds into
/// i64: `512 · 128 · 32767 = 2 147 418 112 ≤ i32::MAX` (module docs).
pub(crate) const K_BLOCK_MAX: usize = 512;
/// [`K_BLOCK_MAX`] in k-pairs (one i16 pair per i32 lane).
const K_BLOCK_PAIRS_MAX: usize = K_BLOCK_MAX / 2;
/// Smallest number of multiply-accumulates per rayon task: smaller products are not split,
/// so they do not pay fork/join (a few µs) for a few µs of work.
const TASK_MACS_MIN: usize = 1 << 17;
/// Smallest number of operand elements split or packed per rayon task, for the same reason.
const PACK_ELEMS_MIN: usize = 1 << 14;

/// A SIMD implementation of the exact product, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// `vpdpwssd` on 512-bit vectors (AVX-512 F/BW + VNNI).
    Avx512Vnni,
    /// `vpmaddwd` + `vpaddd` on 256-bit vectors (AVX2).
    Avx2,
    /// No integer SIMD path: the caller uses exact f64 dgemm.
    Dgemm,
}

impl Path {
    /// Every path, fastest first.
    pub(crate) const ALL: [Path; 3] = [Path::Avx512Vnni, Path::Avx2, Path::Dgemm];

    /// Whether this CPU can run the path (feature detection is cached by std).
    pub(crate) fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Path::Avx512Vnni => x86::Avx512Vnni::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => x86::Avx2::new().is_some(),
            #[cfg(not(target_arch = "x86_64"))]
            Path::Avx512Vnni | Path::Avx2 => false,
            Path::Dgemm => true,
        }
    }

    /// The fastest path this CPU supports, detected once.
    pub(crate) fn detected() -> Path {
        static DETECTED: std::sync::OnceLock<Path> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            Path::ALL
                .into_iter()
                .find(|p| p.available())
                .unwrap_or(Path::Dgemm)
        })
    }
}

/// One batch's A operand split and paired for the tile kernels: for (zero-padded) row `r` and
/// k-pair `p`, `hi[r·rs + p·ps]` holds the i16 pair `(hi(A[r][2p]), hi(A[r][2p+1]))` and `lo` the
/// same of the lo parts (see [`split`] and [`pair`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitA<'a> {
    /// Hi pairs.
    pub(crate) hi: &'a [i32],
    /// Lo pairs.
    pub(crate) lo: &'a [i32],
    /// Distance between rows.
    pub(crate) rs: usize,
    /// Distance between k-pairs.
    pub(crate) ps: usize,
}

/// Where a tile's sums go: `rows×cols` (at most `MR×NR`) of a row-major matrix with row stride
/// `ld`, starting at `out[0]`.
#[derive(Debug)]
pub(crate) struct Dst<'a> {
    /// The matrix from the tile's first element on.
    pub(crate) out: &'a mut [i64],
    /// Row stride of `out`.
    pub(crate) ld: usize,
    /// Valid rows.
    pub(crate) rows: usize,
    /// Valid columns.
    pub(crate) cols: usize,
}

/// Copies the valid part of a full `MR×NR` tile of sums to `dst`; returns the tile's
/// `max |sum|`.
#[inline(always)]
pub(crate) fn store_tile<const MR: usize, const NR: usize>(
    tile: &[[i64; NR]; MR],
    dst: Dst<'_>,
) -> u64 {
    let mut mx = 0u64;
    for row in tile {
        for v in row {
            mx = mx.max(v.unsigned_abs());
        }
    }
    for (r, row) in tile.iter().enumerate().take(dst.rows) {
        dst.out[r * dst.ld..][..dst.cols].copy_from_slice(&row[..dst.cols]);
    }
    mx
}

/// A SIMD implementation with an `MR×NR` register tile. Implementations exist only once their
/// CPU features are detected. Every method but `tile` runs one of this module's plain Rust
/// functions inlined into a function compiled with the CPU features, so that those loops
/// (splitting, packing, copy-out, maximum, requantization) are vectorized for them too: the
/// crate itself is built for baseline x86-64.
pub(crate) trait Tile<const MR: usize, const NR: usize>: Copy + Send + Sync {
    /// For rows `row0 .. row0 + MR` of `a` and a packed B panel (`pairs` groups of `NR` i32:
    /// lane `j` holds `B[2p][j]` in its low and `B[2p+1][j]` in its high i16), writes the exact
    /// sums `Σ_p (256·hi + lo)(row0 + r, p) · b(p, j)` to the window `dst` and returns their
    /// `max |sum|` (rows and columns past the window are sums of zero padding: 0).
    fn tile(self, a: SplitA<'_>, row0: usize, b: &[i32], dst: Dst<'_>) -> u64;

    /// [`split_part`] compiled for the path.
    fn split_part(
        self,
        a: &[i32],
        s: MatmulShape,
        part: Range<usize>,
        hi: &mut [i32],
        lo: &mut [i32],
    ) -> bool;

    /// [`pack_panel`] compiled for the path.
    fn pack_panel(self, b: &[i32], s: MatmulShape, c: usize, panel: &mut [i32]) -> bool;

    /// [`panels`] compiled for the path.
    fn panels(self, a: SplitA<'_>, b: &[i32], s: MatmulShape, row0: usize, out: &mut [i64]) -> u64;

    /// [`requant_into`] compiled for the path.
    fn requant(self, out: &mut [MaybeUninit<i32>], sums: &[i64], k: u32);
}

/// Exact sums of every product of `s` into `out` (`batch·m·n`, row-major per batch) through
/// `path`, returning `Some(max |sum|)`, or `None` if some mantissa of `a` or `b` is out of the
/// B16 range (the contents of `out` are then unspecified, and the caller reports the offender);
/// `None` (outer) if the path is [`Path::Dgemm`] or not available here. `a` and `b` must have
/// the lengths `check_matmul` verifies.
pub(crate) fn exact_sums(
    path: Path,
    a: &[i32],
    b: &[i32],
    s: MatmulShape,
    out: &mut [i64],
) -> Option<Option<u64>> {
    match path {
        #[cfg(target_arch = "x86_64")]
        Path::Avx512Vnni => x86::Avx512Vnni::new().map(|t| run(t, a, b, s, out)),
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 => x86::Avx2::new().map(|t| run(t, a, b, s, out)),
        _ => None,
    }
}

/// `rhe64(v, k)` of every sum as a B16 mantissa (`k` from `requant_shift` of the maximum, so
/// every result fits), in parallel chunks of `par_min`, vectorized for `path` where available.
pub(crate) fn requantize(path: Path, sums: &[i64], k: u32, par_min: usize) -> Vec<i32> {
    #[cfg(target_arch = "x86_64")]
    {
        x86::requantize(path, sums, k, par_min)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = path;
        let rh = Rhe::new(k);
        let mut mant = vec![0i32; sums.len()];
        mant.par_chunks_mut(par_min)
            .zip(sums.par_chunks(par_min))
            .for_each(|(o, s)| {
                for (o, &v) in o.iter_mut().zip(s) {
                    *o = rh.round(v) as i32;
                }
            });
        mant
    }
}

/// Bits of the largest `|sum|` of an exact product: `MATMUL_K_MAX · 32767² < 2^52` (module docs).
pub(crate) const SUM_ABS_BITS_MAX: u32 = 52;

/// `out[i] = rhe64(sums[i], k)` for every `i` (`out` and `sums` have equal lengths: every element
/// of `out` is written), the shift's constants hoisted out of the loop so that it vectorizes.
/// The sums are exact products' (`|v| < 2^SUM_ABS_BITS_MAX`), which allows one add fewer than
/// [`Rhe::round`]: with `q = v >> k` (floor) and `r = v − q·2^k ∈ [0, 2^k)`, `Rhe` computes
/// `q + ((r + bias + (q & 1)) >> k)`, which equals `(v + bias + (q & 1)) >> k` because
/// `q·2^k` is a multiple of `2^k` (floor division of `q·2^k + x` by `2^k` is `q + ⌊x/2^k⌋`);
/// no overflow, as `|v| + bias + 1 < 2^52 + 2^60 + 1 < 2^63` for `k ≤` [`Rhe::INLINE_K_MAX`].
/// Other shifts (0, none in practice beyond 38 for such sums) go through [`Rhe`] itself.
#[inline(always)]
fn requant_into(out: &mut [MaybeUninit<i32>], sums: &[i64], k: u32) {
    // Soundness of `x86::requantize` rests on every element of `out` being written.
    assert_eq!(out.len(), sums.len(), "one output per sum");
    if k == 0 || k > Rhe::INLINE_K_MAX {
        let rh = Rhe::new(k);
        for (o, &v) in out.iter_mut().zip(sums) {
            o.write(rh.round(v) as i32);
        }
    } else {
        let bias = (1i64 << (k - 1)) - 1;
        for (o, &v) in out.iter_mut().zip(sums) {
            debug_assert!(v.unsigned_abs() < 1 << SUM_ABS_BITS_MAX);
            o.write(((v + bias + ((v >> k) & 1)) >> k) as i32);
        }
    }
}

/// i16 pair `(x0, x1)` as one i32 lane: `x0` in the low half, `x1` in the high half.
#[inline(always)]
fn pair(x0: i32, x1: i32) -> i32 {
    ((x0 as u16 as u32) | ((x1 as u16 as u32) << 16)) as i32
}

/// `a = 256·hi + lo` with `hi ∈ [−128, 128]`, `lo ∈ [−128, 127]` for `|a| ≤ 32767`. Wrapping
/// arithmetic: an out-of-range `a` (flagged by [`out_of_range`], its products discarded) must
/// not panic.
#[inline(always)]
fn split(a: i32) -> (i32, i32) {
    let hi = a.wrapping_add(128) >> 8;
    (hi, a.wrapping_sub(hi.wrapping_shl(8)))
}

/// Whether `x` is not a B16 mantissa (`|x| > 32767`): the range check of `check_matmul`, done
/// by the packing loops, which read every operand element anyway, instead of by a separate
/// serial pass over both operands.
#[inline(always)]
fn out_of_range(x: i32) -> bool {
    x.unsigned_abs() > B16_MANT_MAX as u32
}

/// `v` with length `len`, contents unspecified (the caller overwrites every element): a
/// reused buffer is not zeroed again.
#[inline(always)]
fn sized(v: &mut Vec<i32>, len: usize) -> &mut [i32] {
    if v.len() < len {
        v.resize(len, 0);
    }
    &mut v[..len]
}

/// Sets every element of `x` to 0. The padding this clears is empty for most shapes: the test
/// saves a `memset` call per k-pair (a measurable share of the packing loops).
#[inline(always)]
fn zero(x: &mut [i32]) {
    if !x.is_empty() {
        x.fill(0);
    }
}

/// Packs column panel `c` of one batch's B (`k×n`, or `n×k` if `trans_b`) into `panel`
/// (`k.div_ceil(2)·NR` i32: columns `c·NR ..`, as k-pairs), zero-padded to `NR` columns and an
/// even K; writes every element of `panel`. Returns true if some element read is
/// [`out_of_range`]; every element of `b` is read by exactly one panel.
#[inline(always)]
fn pack_panel<const NR: usize>(b: &[i32], s: MatmulShape, c: usize, panel: &mut [i32]) -> bool {
    let (k, n) = (s.k, s.n);
    let mut bad = false;
    let pairs = k.div_ceil(2);
    debug_assert_eq!(panel.len(), pairs * NR);
    let j0 = c * NR;
    let cols = NR.min(n - j0);
    if s.trans_b {
        // Stored n×k: column j of op(B) is stored row j, its k-pairs adjacent. The pairs of
        // a row are formed `TB_PAIRS` at a time in a small array (contiguous loads: vectorized),
        // which is then stored down the lane (stride `NR`).
        const TB_PAIRS: usize = 16;
        for (jj, lane) in (0..NR).zip(0..) {
            if jj >= cols {
                for p in 0..pairs {
                    panel[p * NR + lane] = 0;
                }
                continue;
            }
            let row = &b[(j0 + jj) * k..][..k];
            let (whole, odd) = row.as_chunks::<2>();
            let (blocks, rest) = whole.as_chunks::<TB_PAIRS>();
            for (blk, dst) in blocks.iter().zip(panel.chunks_exact_mut(TB_PAIRS * NR)) {
                let mut buf = [0i32; TB_PAIRS];
                for (o, &[x0, x1]) in buf.iter_mut().zip(blk) {
                    bad |= out_of_range(x0) | out_of_range(x1);
                    *o = pair(x0, x1);
                }
                for (&v, d) in buf.iter().zip(dst.chunks_exact_mut(NR)) {
                    d[lane] = v;
                }
            }
            let p0 = blocks.len() * TB_PAIRS;
            for (p, &[x0, x1]) in (p0..).zip(rest) {
                bad |= out_of_range(x0) | out_of_range(x1);
                panel[p * NR + lane] = pair(x0, x1);
            }
            if let [x0] = *odd {
                bad |= out_of_range(x0);
                panel[whole.len() * NR + lane] = pair(x0, 0);
            }
        }
    } else {
        // Row-major B: two contiguous row segments per k-pair.
        for (p, lanes) in panel.chunks_exact_mut(NR).enumerate() {
            let (lanes, pad) = lanes.split_at_mut(cols);
            zero(pad);
            let r0 = &b[2 * p * n + j0..][..cols];
            if 2 * p + 1 < k {
                let r1 = &b[(2 * p + 1) * n + j0..][..cols];
                for ((l, &x0), &x1) in lanes.iter_mut().zip(r0).zip(r1) {
                    bad |= out_of_range(x0) | out_of_range(x1);
                    *l = pair(x0, x1);
                }
            } else {
                for (l, &x0) in lanes.iter_mut().zip(r0) {
                    bad |= out_of_range(x0);
                    *l = pair(x0, 0);
                }
            }
        }
    }
    bad
}

/// Packs all of one batch's B into `NR`-column panels ([`pack_panel`]) in `dst`, panels in
/// parallel tasks of at least [`PACK_ELEMS_MIN`] elements if `par`; writes every element of
/// the result. The flag is true if some element of `b` is [`out_of_range`].
fn pack_b<'a, const MR: usize, const NR: usize, T: Tile<MR, NR>>(
    t: T,
    b: &[i32],
    s: MatmulShape,
    dst: &'a mut Vec<i32>,
    par: bool,
) -> (&'a [i32], bool) {
    let panel_len = s.k.div_ceil(2) * NR;
    let dst = sized(dst, s.n.div_ceil(NR) * panel_len);
    let bad = if par {
        dst.par_chunks_mut(panel_len)
            .enumerate()
            .with_min_len(PACK_ELEMS_MIN.div_ceil(2 * panel_len))
            .map(|(c, panel)| t.pack_panel(b, s, c, panel))
            .reduce(|| false, |x, y| x | y)
    } else {
        dst.chunks_exact_mut(panel_len)
            .enumerate()
            .fold(false, |bad, (c, panel)| bad | t.pack_panel(b, s, c, panel))
    };
    (dst, bad)
}

/// Splits and pairs `part` of one batch's op(A) (`a` is stored `m×k`, or `k×m` if `trans_a`)
/// into `hi` and `lo`, the part's window of the whole split layout (see [`SplitA`]): rows
/// zero-padded to a multiple of `MR`, K to an even length. The layout follows the stored one so
/// that both loops run over contiguous memory: row-major pairs (`rs = pairs`, `ps = 1`) for a
/// plain A, where `part` is a range of (padded) rows; pair-major (`rs = 1`, `ps = padded rows`)
/// for `Aᵀ`, where `part` is a range of k-pairs. Writes every element of `hi` and `lo`; returns
/// true if some element read is [`out_of_range`] (each element of `a` is read by exactly one
/// part of a partition).
#[inline(always)]
fn split_part<const MR: usize>(
    a: &[i32],
    s: MatmulShape,
    part: Range<usize>,
    hi: &mut [i32],
    lo: &mut [i32],
) -> bool {
    let mut bad = false;
    let (m, k) = (s.m, s.k);
    let pairs = k.div_ceil(2);
    let rows = m.div_ceil(MR) * MR;
    let one = |h: &mut i32, l: &mut i32, x0: i32, x1: i32| {
        let ((h0, l0), (h1, l1)) = (split(x0), split(x1));
        *h = pair(h0, h1);
        *l = pair(l0, l1);
        out_of_range(x0) | out_of_range(x1)
    };
    if s.trans_a {
        debug_assert_eq!(hi.len(), part.len() * rows);
        for (p, (h, l)) in part.zip(hi.chunks_exact_mut(rows).zip(lo.chunks_exact_mut(rows))) {
            let (h, hpad) = h.split_at_mut(m);
            let (l, lpad) = l.split_at_mut(m);
            zero(hpad);
            zero(lpad);
            let r0 = &a[2 * p * m..][..m];
            if 2 * p + 1 < k {
                let r1 = &a[(2 * p + 1) * m..][..m];
                for (((h, l), &x0), &x1) in h.iter_mut().zip(l.iter_mut()).zip(r0).zip(r1) {
                    bad |= one(h, l, x0, x1);
                }
            } else {
                for ((h, l), &x0) in h.iter_mut().zip(l.iter_mut()).zip(r0) {
                    bad |= one(h, l, x0, 0);
                }
            }
        }
    } else {
        debug_assert_eq!(hi.len(), part.len() * pairs);
        // Rows `part.start .. m.min(part.end)` of A; padding rows after them.
        let real = part.start.min(m)..part.end.min(m);
        let (h, hpad) = hi.split_at_mut(real.len() * pairs);
        let (l, lpad) = lo.split_at_mut(real.len() * pairs);
        zero(hpad);
        zero(lpad);
        for ((h, l), row) in h
            .chunks_exact_mut(pairs)
            .zip(l.chunks_exact_mut(pairs))
            .zip(a[real.start * k..real.end * k].chunks_exact(k))
        {
            let (whole, odd) = row.as_chunks::<2>();
            for ((h, l), &[x0, x1]) in h.iter_mut().zip(l.iter_mut()).zip(whole) {
                bad |= one(h, l, x0, x1);
            }
            if let [x0] = *odd {
                bad |= one(&mut h[pairs - 1], &mut l[pairs - 1], x0, 0);
            }
        }
    }
    bad
}

/// Splits all of one batch's op(A) ([`split_part`]) into `hi` and `lo`, in parallel parts of at
/// least [`PACK_ELEMS_MIN`] elements of `a` if `par`. The flag is true if some element of `a` is
/// [`out_of_range`].
fn split_a<'a, const MR: usize, const NR: usize, T: Tile<MR, NR>>(
    t: T,
    a: &[i32],
    s: MatmulShape,
    hi: &'a mut Vec<i32>,
    lo: &'a mut Vec<i32>,
    par: bool,
) -> (SplitA<'a>, bool) {
    let pairs = s.k.div_ceil(2);
    let rows = s.m.div_ceil(MR) * MR;
    let (hi, lo) = (sized(hi, rows * pairs), sized(lo, rows * pairs));
    // Parts: rows of a plain A (`pairs` split pairs, `k` elements each), k-pairs of `Aᵀ`
    // (`rows` split pairs, `2·m` elements each).
    let (rs, ps, unit, unit_elems, units) = if s.trans_a {
        (1, rows, rows, 2 * s.m, pairs)
    } else {
        (pairs, 1, pairs, s.k, rows)
    };
    let per_job = PACK_ELEMS_MIN.div_ceil(unit_elems);
    let bad = if par && units > per_job {
        hi.par_chunks_mut(per_job * unit)
            .zip(lo.par_chunks_mut(per_job * unit))
            .enumerate()
            .map(|(i, (h, l))| {
                let u0 = i * per_job;
                t.split_part(a, s, u0..u0 + h.len() / unit, h, l)
            })
            .reduce(|| false, |x, y| x | y)
    } else {
        t.split_part(a, s, 0..units, hi, lo)
    };
    (SplitA { hi, lo, rs, ps }, bad)
}

/// The row panels `row0 ..` in `out` (whole rows of one batch's `m×n` result, starting at row
/// `row0`, a multiple of `MR`): every `MR×NR` tile against packed B (`b`, all column panels),
/// written to `out`; returns their `max |sum|`.
#[inline(always)]
fn panels<const MR: usize, const NR: usize, T: Tile<MR, NR>>(
    t: T,
    a: SplitA<'_>,
    b: &[i32],
    s: MatmulShape,
    row0: usize,
    out: &mut [i64],
) -> u64 {
    let pairs = s.k.div_ceil(2);
    let mut mx = 0u64;
    for (i, rows_out) in out.chunks_mut(MR * s.n).enumerate() {
        let rows = rows_out.len() / s.n;
        for (c, bp) in b.chunks_exact(pairs * NR).enumerate() {
            let j0 = c * NR;
            let dst = Dst {
                out: &mut rows_out[j0..],
                ld: s.n,
                rows,
                cols: NR.min(s.n - j0),
            };
            mx = mx.max(t.tile(a, row0 + i * MR, bp, dst));
        }
    }
    mx
}

thread_local! {
    /// Buffers of one product (A hi pairs, A lo pairs, packed B), reused by the next call on the
    /// same thread: fresh buffers would cost page faults and zeroing on every call.
    static SCRATCH: RefCell<[Vec<i32>; 3]> = RefCell::new(Default::default());
}

/// Largest buffer (elements) kept in [`SCRATCH`] for the next call: the model's operands are far
/// smaller; a one-off huge product does not pin its buffers to the thread for good.
const SCRATCH_KEEP_MAX: usize = 1 << 21;

/// Runs `f` with this thread's buffers (taken out, so a nested call cannot alias them).
fn with_scratch<R>(f: impl FnOnce(&mut [Vec<i32>; 3]) -> R) -> R {
    let mut bufs = SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let r = f(&mut bufs);
    for v in &mut bufs {
        if v.capacity() > SCRATCH_KEEP_MAX {
            *v = Vec::new();
        }
    }
    SCRATCH.with(|c| *c.borrow_mut() = bufs);
    r
}

/// [`exact_sums`] with a detected tile kernel.
fn run<const MR: usize, const NR: usize, T: Tile<MR, NR>>(
    t: T,
    a: &[i32],
    b: &[i32],
    s: MatmulShape,
    out: &mut [i64],
) -> Option<u64> {
    let (sa, sb, sc) = (s.m * s.k, s.k * s.n, s.m * s.n);
    if sc == 0 || s.k == 0 {
        out.fill(0);
        let bad = a.iter().chain(b).any(|&x| out_of_range(x));
        return (!bad).then_some(0);
    }
    if s.batch == 1 {
        // Split A and pack B, side by side and each in parallel parts (balanced however the
        // two compare in size; linear in the operands), then the row panels in parallel.
        with_scratch(|[ah, al, pb]| {
            let ((sa, bad_a), (pb, bad_b)) = rayon::join(
                || split_a(t, a, s, ah, al, true),
                || pack_b(t, b, s, pb, true),
            );
            (!(bad_a | bad_b)).then(|| {
                out.par_chunks_mut(MR * s.n)
                    .enumerate()
                    .with_min_len(TASK_MACS_MIN.div_ceil(MR * s.k * s.n))
                    .map(|(i, o)| t.panels(sa, pb, s, i * MR, o))
                    .max()
                    .unwrap_or(0)
            })
        })
    } else {
        // Per batch `None` if its operands are out of range (its products are skipped).
        out.par_chunks_mut(sc)
            .zip(a.par_chunks(sa))
            .zip(b.par_chunks(sb))
            .with_min_len(TASK_MACS_MIN.div_ceil(s.m * s.k * s.n))
            .map(|((o, ab), bb)| {
                with_scratch(|[ah, al, pb]| {
                    let ((sa, bad_a), (pb, bad_b)) = (
                        split_a(t, ab, s, ah, al, false),
                        pack_b(t, bb, s, pb, false),
                    );
                    (!(bad_a | bad_b)).then(|| t.panels(sa, pb, s, 0, o))
                })
            })
            .try_reduce(|| 0, |x, y| Some(x.max(y)))
    }
}

/// Smallest number of elements per rayon task in the elementwise passes of `matmul`.
const MATMUL_PAR_MIN: usize = 1 << 13;

/// Largest length of a `matmul` scratch buffer kept for the next call on the same thread.
const MATMUL_SCRATCH_KEEP_MAX: usize = 1 << 21;

thread_local! {
    /// i64 sums of `matmul`'s integer SIMD path, reused by the next call on the same thread.
    static MATMUL_SUMS: std::cell::RefCell<Vec<i64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `CpuKernels::matmul` through a chosen implementation: the exact integer SIMD sums of `path`
/// (module docs), or f64 dgemm for [`Path::Dgemm`] and paths this CPU lacks. Every path gives
/// the same exact sums, requantized by the same rule (`requant_shift` of the max-abs over all
/// batch elements, then `rhe64`), hence the same bits.
pub(crate) fn matmul_with(
    path: Path,
    a: &Bfp,
    b: &Bfp,
    s: MatmulShape,
) -> Result<Bfp, KernelError> {
    const OP: &str = "matmul";
    let (na, nb) = matmul_limits(s)?;
    let path = if path.available() { path } else { Path::Dgemm };
    if (a.mant.len(), b.mant.len()) != (na, nb) || path == Path::Dgemm {
        // Every check in `check_matmul`'s order (a's mantissas before b's length); the integer
        // path below checks the mantissa range itself, while packing the operands.
        check_matmul(a, b, s)?;
    }
    let base_exp = a.exp as i64 + b.exp as i64;
    let len = s.batch * s.m * s.n;
    if path == Path::Dgemm {
        if len == 0 || s.k == 0 {
            // Every sum is 0: mantissas 0, k = 0.
            return Ok(Bfp {
                mant: vec![0; len],
                exp: checked_exp(OP, base_exp, 0)?,
            });
        }
        return matmul_dgemm(a, b, s, base_exp);
    }
    // Taken out of the thread-local (left empty), so a nested call cannot alias it.
    let mut sums_buf = MATMUL_SUMS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if sums_buf.len() < len {
        sums_buf.resize(len, 0);
    }
    // Every sum is overwritten; stale values of a previous call are not read.
    let sums = &mut sums_buf[..len];
    let found = exact_sums(path, &a.mant, &b.mant, s, sums);
    let result = match found {
        Some(Some(mx)) => {
            let k = requant_shift(mx as u128, B16_MANT_MAX);
            let mant = requantize(path, sums, k, MATMUL_PAR_MIN);
            checked_exp(OP, base_exp, k as i64).map(|exp| Bfp { mant, exp })
        }
        // A mantissa out of range (or, impossibly, no integer path after all): `check_matmul`
        // reports the first offender exactly as before; were there none, dgemm.
        _ => check_matmul(a, b, s).and_then(|()| matmul_dgemm(a, b, s, base_exp)),
    };
    if sums_buf.capacity() <= MATMUL_SCRATCH_KEEP_MAX {
        MATMUL_SUMS.with(|c| *c.borrow_mut() = sums_buf);
    }
    result
}

#[cfg(test)]
mod tests;
