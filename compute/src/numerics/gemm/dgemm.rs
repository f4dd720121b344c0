//! The exact f64 dgemm path of the CPU matmul, for CPUs without an integer SIMD kernel: every
//! product and partial sum is an integer below `2^53`, so dgemm's sums are exact whatever its
//! order or blocking.

use super::{MATMUL_PAR_MIN, MATMUL_SCRATCH_KEEP_MAX};
use crate::numerics::fixed::{requant_shift, rhe64, B16_MANT_MAX};
use crate::numerics::kernels::{checked_exp, Bfp, KernelError, MatmulShape};
use ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

/// View of one stored block as the logical `rows×cols` operand (transposed view if `trans`).
fn operand_view(data: &[f64], rows: usize, cols: usize, trans: bool) -> ArrayView2<'_, f64> {
    if trans {
        // Stored cols×rows row-major: element (r, c) at c·rows + r.
        ArrayView2::from_shape((rows, cols).strides((1, rows)), data)
            .expect("length checked by check_matmul")
    } else {
        ArrayView2::from_shape((rows, cols), data).expect("length checked by check_matmul")
    }
}

/// Exact product of one block through f64 dgemm, written to `out` (`m×n` row-major). Every
/// input is an integer with `|x| < 2^15`, every product `< 2^30` and every partial sum `< 2^52`,
/// all exactly representable in f64, so whatever order, blocking or FMA use dgemm chooses, each
/// addition is exact and the result is the exact integer sum (proof in specs/compute.md).
fn block_dgemm(a: &[f64], b: &[f64], s: MatmulShape, out: &mut [f64]) {
    let av = operand_view(a, s.m, s.k, s.trans_a);
    let bv = operand_view(b, s.k, s.n, s.trans_b);
    let mut c =
        ArrayViewMut2::from_shape((s.m, s.n), out).expect("output length is m·n by construction");
    // beta = 0: the previous contents of `out` are not read.
    general_mat_mul(1.0, &av, &bv, 0.0, &mut c);
}

thread_local! {
    /// f64 scratch of `matmul` (operand A, operand B, sums), reused by the next call on the same
    /// thread: a fresh multi-megabyte buffer costs page faults and zeroing on every call.
    static MATMUL_SCRATCH: std::cell::RefCell<[Vec<f64>; 3]> =
        std::cell::RefCell::new(Default::default());
}

/// Mantissas as f64 (exact), converted in parallel into `buf`.
fn to_f64_into(mant: &[i32], buf: &mut Vec<f64>) {
    buf.clear();
    buf.par_extend(
        mant.par_iter()
            .with_min_len(MATMUL_PAR_MIN)
            .map(|&x| x as f64),
    );
}

/// The product of [`CpuKernels::matmul`] through exact f64 dgemm (the path for CPUs without an
/// integer SIMD kernel), after `matmul_with`'s checks, for `len = batch·m·n > 0` and `k > 0`.
pub(super) fn matmul_dgemm(
    a: &Bfp,
    b: &Bfp,
    s: MatmulShape,
    base_exp: i64,
) -> Result<Bfp, KernelError> {
    const OP: &str = "matmul";
    let len = s.batch * s.m * s.n;
    // Taken out of the thread-local (left empty), so a nested call cannot alias it.
    let [mut af, mut bf, mut sums_buf] =
        MATMUL_SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
    to_f64_into(&a.mant, &mut af);
    to_f64_into(&b.mant, &mut bf);
    let (sa, sb, sc) = (s.m * s.k, s.k * s.n, s.m * s.n);
    if sums_buf.len() < len {
        sums_buf.resize(len, 0.0);
    }
    // dgemm overwrites every sum (beta = 0); stale values of a previous call are not read.
    let sums = &mut sums_buf[..len];
    if s.batch == 1 {
        block_dgemm(&af, &bf, s, sums);
    } else {
        sums.par_chunks_mut(sc)
            .zip(af.par_chunks(sa))
            .zip(bf.par_chunks(sb))
            .for_each(|((out, ab), bb)| block_dgemm(ab, bb, s, out));
    }
    // The sums are exact integers below 2^52, so the f64 maximum of |s| and the casts to
    // i64 are exact; requantization then follows `requantize_b16` step for step.
    let mx = sums
        .par_iter()
        .with_min_len(MATMUL_PAR_MIN)
        .map(|v| v.abs())
        .reduce(|| 0.0, f64::max);
    let k = requant_shift(mx as u64 as u128, B16_MANT_MAX);
    let mant = sums
        .par_iter()
        .with_min_len(MATMUL_PAR_MIN)
        .map(|&v| rhe64(v as i64, k) as i32)
        .collect();
    MATMUL_SCRATCH.with(|c| {
        let kept = [af, bf, sums_buf].map(|v| {
            if v.capacity() <= MATMUL_SCRATCH_KEEP_MAX {
                v
            } else {
                Vec::new()
            }
        });
        *c.borrow_mut() = kept;
    });
    Ok(Bfp {
        mant,
        exp: checked_exp(OP, base_exp, k as i64)?,
    })
}
