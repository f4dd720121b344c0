//! Every matmul path against `matmul_naive` (index-order i64 loops) and against each other, bit
//! for bit, including the extremes of the hi/lo split and of the K blocks.

use super::{matmul_with, requantize, Path, K_BLOCK_MAX, SUM_ABS_BITS_MAX};
use crate::numerics::fixed::{hash3, rhe64, B16_MANT_MAX};
use crate::numerics::kernels::{matmul_naive, Bfp, KernelError, MatmulShape};
use proptest::prelude::*;

/// The paths this CPU runs; says loudly which it skips, so a missing path is never silent.
fn runnable() -> Vec<Path> {
    Path::ALL
        .into_iter()
        .filter(|p| {
            let ok = p.available();
            if !ok {
                eprintln!("SKIPPED: matmul path {p:?} is not available on this CPU");
            }
            ok
        })
        .collect()
}

/// Every runnable path gives exactly `matmul_naive`'s result (or error), and so the result of
/// the previous implementation, f64 dgemm, kept as [`Path::Dgemm`] (compared directly too).
fn check_all(a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<(), TestCaseError> {
    let want = matmul_naive(a, b, s);
    let old = matmul_with(Path::Dgemm, a, b, s);
    prop_assert_eq!(&old, &want, "dgemm, shape {:?}", s);
    for p in runnable() {
        prop_assert_eq!(
            &matmul_with(p, a, b, s),
            &want,
            "path {:?}, shape {:?}",
            p,
            s
        );
    }
    Ok(())
}

fn shape(batch: usize, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> MatmulShape {
    MatmulShape {
        batch,
        m,
        k,
        n,
        trans_a: ta,
        trans_b: tb,
    }
}

/// Mantissas of one operand: uniform in `±lim`, or (`mode`) all `+lim`, all `−lim`, or
/// alternating, to hit the largest hi/lo block sums of either sign.
fn gen(seed: u64, len: usize, lim: i32, mode: u8) -> Vec<i32> {
    (0..len as u64)
        .map(|j| match mode {
            0 => (hash3(seed, 7, j) % (2 * lim as u64 + 1)) as i32 - lim,
            1 => lim,
            2 => -lim,
            _ => {
                if j % 2 == 0 {
                    lim
                } else {
                    -lim
                }
            }
        })
        .collect()
}

fn case(
    s: MatmulShape,
    lim: i32,
    (ma, mb): (u8, u8),
    seed: u64,
    (ea, eb): (i32, i32),
) -> (Bfp, Bfp) {
    (
        Bfp::new(gen(seed, s.batch * s.m * s.k, lim, ma), ea),
        Bfp::new(gen(seed ^ 0x9e37, s.batch * s.k * s.n, lim, mb), eb),
    )
}

#[test]
fn worst_case_block_sums_are_exact() {
    // −32767·−32767 and 32767·−32767 in every term, K around the block size and its multiples:
    // the hi/lo i32 block sums reach their proven bounds; every transpose combination.
    for k in [
        1,
        2,
        3,
        255,
        256,
        257,
        511,
        K_BLOCK_MAX,
        K_BLOCK_MAX + 1,
        1024,
        1025,
    ] {
        for (ma, mb) in [(2, 2), (1, 2), (1, 1), (3, 3)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let s = shape(1, 7, k, 33, ta, tb);
                let (a, b) = case(s, B16_MANT_MAX, (ma, mb), k as u64, (-3, 4));
                check_all(&a, &b, s).unwrap();
            }
        }
    }
}

#[test]
fn row_tasks_panels_and_edges_are_exact() {
    // Unbatched products split A in parallel parts (rows of a plain A, k-pairs of `Aᵀ`, with
    // padding rows) and pack B per column panel (a partial last panel: 1, 33 and 65 columns);
    // batched ones split and pack per batch. K around the pair and block boundaries; extreme
    // and random mantissas.
    let mut case_no = 0u64;
    for batch in [1, 3] {
        for m in [1, 4, 5, 16, 17, 33, 65] {
            for k in [1, 32, 33, 511, K_BLOCK_MAX, K_BLOCK_MAX + 1] {
                for n in [1, 33, 65] {
                    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                        case_no += 1;
                        let s = shape(batch, m, k, n, ta, tb);
                        let modes = [(0, 0), (2, 2), (1, 2), (3, 3)][case_no as usize % 4];
                        let (a, b) = case(s, B16_MANT_MAX, modes, case_no, (2, -7));
                        check_all(&a, &b, s).unwrap();
                    }
                }
            }
        }
    }
}

#[test]
fn model_shapes_are_exact() {
    // The shapes of the nanoGPT CPU preset (forward, both backward transposes, batched
    // attention, the 65-column head), full-range random mantissas.
    let shapes = [
        shape(1, 768, 128, 384, false, false),
        shape(1, 768, 384, 128, false, true),
        shape(1, 128, 768, 384, true, false),
        shape(1, 768, 512, 128, false, false),
        shape(1, 512, 768, 128, true, false),
        shape(48, 64, 32, 64, false, true),
        shape(48, 64, 64, 32, false, false),
        shape(48, 64, 64, 32, true, false),
        shape(1, 768, 128, 65, false, false),
        shape(1, 768, 65, 128, false, true),
        shape(1, 768, 128, 65, false, true),
        shape(1, 65, 768, 128, true, false),
        shape(1, 128, 768, 512, true, false),
        shape(48, 64, 64, 32, true, true),
    ];
    for (i, s) in shapes.into_iter().enumerate() {
        let (a, b) = case(s, B16_MANT_MAX, (0, 0), i as u64, (-12, -13));
        check_all(&a, &b, s).unwrap();
    }
}

#[test]
fn errors_are_identical_on_every_path() {
    let s = MatmulShape::new(2, 3, 2);
    let a = Bfp::new(vec![0; 6], 0);
    let mut b = Bfp::new(vec![0; 6], 0);
    b.mant[4] = -32_768;
    for p in runnable() {
        assert_eq!(
            matmul_with(p, &a, &b, s),
            Err(KernelError::MantissaRange {
                op: "matmul",
                operand: "b",
                index: 4,
                found: -32_768,
                max: 32_767
            })
        );
        assert_eq!(
            matmul_with(p, &a, &Bfp::new(vec![0; 5], 0), s),
            matmul_naive(&a, &Bfp::new(vec![0; 5], 0), s)
        );
    }
    // Exponent overflow of the result is reported the same way too.
    let a = Bfp::new(vec![32_767; 4], 1 << 23);
    let b = Bfp::new(vec![32_767; 4], 1 << 23);
    let s = MatmulShape::new(2, 2, 2);
    check_all(&a, &b, s).unwrap();
}

fn arb_case() -> impl Strategy<Value = (Bfp, Bfp, MatmulShape)> {
    (
        1usize..4,
        0usize..80,
        prop_oneof![0usize..40, 240usize..280, 500usize..530, 0usize..1000],
        0usize..80,
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(B16_MANT_MAX), 0i32..=B16_MANT_MAX],
        (0u8..4, 0u8..4),
        any::<u64>(),
        (-30i32..30, -30i32..30),
    )
        .prop_map(|(batch, m, k, n, ta, tb, lim, modes, seed, exps)| {
            // Keep the naive reference affordable: at most ~4M multiply-adds.
            let m = if batch * m * k * n > 1 << 22 {
                m.min(9)
            } else {
                m
            };
            let s = shape(batch, m, k, n, ta, tb);
            let (a, b) = case(s, lim, modes, seed, exps);
            (a, b, s)
        })
}

fn arb_big() -> impl Strategy<Value = (Bfp, Bfp, MatmulShape)> {
    (
        1usize..3,
        100usize..300,
        1usize..300,
        100usize..300,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(batch, m, k, n, ta, tb, seed)| {
            let s = shape(batch, m, k, n, ta, tb);
            let (a, b) = case(s, B16_MANT_MAX, (0, 0), seed, (-5, 3));
            (a, b, s)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_path_equals_naive((a, b, s) in arb_case()) {
        check_all(&a, &b, s)?;
    }

    #[test]
    fn every_path_equals_naive_large((a, b, s) in arb_big()) {
        // Large enough for the parallel split (several rayon tasks) and many panels.
        check_all(&a, &b, s)?;
    }
}

proptest! {
    #[test]
    fn check_mant_reports_the_first_offender(
        len in 0usize..5000,
        bad in proptest::collection::vec((0usize..5000, prop_oneof![Just(i32::MIN), Just(-32_768), Just(32_768), Just(i32::MAX)]), 0..4),
        seed in any::<u64>(),
    ) {
        let mut mant = gen(seed, len, B16_MANT_MAX, 0);
        for &(i, v) in &bad {
            if i < len {
                mant[i] = v;
            }
        }
        // The previous implementation: `position` of the first element out of range.
        let want = match mant.iter().position(|x| x.unsigned_abs() > B16_MANT_MAX as u32) {
            Some(index) => Err(KernelError::MantissaRange {
                op: "matmul",
                operand: "a",
                index,
                found: mant[index] as i64,
                max: B16_MANT_MAX as i64,
            }),
            None => Ok(()),
        };
        prop_assert_eq!(crate::numerics::kernels::check_mant("matmul", "a", &mant, B16_MANT_MAX), want);
    }
}

/// The previous `matmul_with` checks: `check_matmul` (limits, then per operand its length and
/// its mantissas) before any arithmetic.
fn old_checks(a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<(), KernelError> {
    crate::numerics::kernels::check_matmul(a, b, s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The integer paths check the mantissa range while packing: every path reports exactly
    /// the error of the checks that used to run first (first offender of `a`, then of `b`; a's
    /// mantissas before b's length), whatever the shape, transposes, batch and offender values.
    #[test]
    fn out_of_range_mantissas_give_the_old_error(
        (mut a, mut b, s) in arb_case(),
        bad_a in proptest::collection::vec((any::<usize>(), prop_oneof![Just(i32::MIN), Just(-32_768), Just(32_768), Just(i32::MAX), Just(1 << 20)]), 0..3),
        bad_b in proptest::collection::vec((any::<usize>(), prop_oneof![Just(i32::MIN), Just(-32_768), Just(32_768), Just(i32::MAX)]), 0..3),
        b_len_delta in prop_oneof![4 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)],
    ) {
        for (t, bad) in [(&mut a, &bad_a), (&mut b, &bad_b)] {
            let len = t.mant.len();
            for &(i, v) in bad {
                if len > 0 {
                    t.mant[i % len] = v;
                }
            }
        }
        match b_len_delta {
            -1 => { b.mant.pop(); }
            1 => b.mant.push(0),
            _ => {}
        }
        let want = matmul_naive(&a, &b, s);
        if let Err(e) = old_checks(&a, &b, s) {
            prop_assert_eq!(&want, &Err(e));
        }
        prop_assert_eq!(&matmul_with(Path::Dgemm, &a, &b, s), &want);
        for p in runnable() {
            prop_assert_eq!(&matmul_with(p, &a, &b, s), &want, "path {:?}, shape {:?}", p, s);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The requantization of the sums (its own rounding formula, vectorized per path) is
    /// `rhe64` bit for bit, over the whole range of exact sums `|v| < 2^52` and every shift,
    /// including the largest sums, halfway ties of either parity and lengths around the
    /// parallel chunk size.
    #[test]
    fn requantize_is_rhe64(
        k in prop_oneof![0u32..=40, 41u32..=70],
        len in 0usize..40,
        seed in any::<u64>(),
        par_min in 1usize..9,
    ) {
        let lim = (1i64 << SUM_ABS_BITS_MAX) - 1;
        let sums: Vec<i64> = (0..len as u64)
            .map(|j| {
                let h = hash3(seed, 11, j);
                let half = if (1..=62).contains(&k) { 1i64 << (k - 1) } else { 0 };
                match h % 8 {
                    0 => lim,
                    1 => -lim,
                    2 => 0,
                    // A halfway tie `(2q + 1)·2^(k−1)` (q of either parity), either sign.
                    3 => ((h >> 8) as i64 % (lim >> k.min(62)).max(1)) * 2 * half + half,
                    4 => -(((h >> 8) as i64 % (lim >> k.min(62)).max(1)) * 2 * half + half),
                    _ => (h >> 8) as i64 % (lim + 1) * if h & 16 == 0 { 1 } else { -1 },
                }
                .clamp(-lim, lim)
            })
            .collect();
        let want: Vec<i32> = sums.iter().map(|&v| rhe64(v, k) as i32).collect();
        for p in Path::ALL {
            prop_assert_eq!(&requantize(p, &sums, k, par_min), &want, "path {:?}, k {}", p, k);
        }
    }
}
