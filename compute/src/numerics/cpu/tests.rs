//! Bit-exactness proofs: every fast op against its verbatim old body in `reference`, on random
//! inputs biased towards the extremes (±32767 and ±(2^23 − 1) mantissas, zeros, exponent
//! differences around the 40-bit alignment limit, huge shifts, empty and one-column tensors,
//! tensors large enough for the parallel paths), including the error cases.

use super::adamw::*;
use super::elementwise::*;
use super::gelu::*;
use super::layernorm::*;
use super::reference as old;
use super::rounding::*;
use super::softmax::*;
use crate::numerics::fixed::{
    bitlen, div_rhe, exp2_tables, isqrt, requant_shift, rhe, rhe64, Rhe, B16_MANT_MAX, B24_MANT_MAX,
};
use crate::numerics::kernels::{AdamStep, Bfp, EXP_ABS_MAX, WIDE_MANT_MAX};
use proptest::prelude::*;

/// A mantissa bounded by `lim`, often exactly an extreme.
fn mant(lim: i32) -> impl Strategy<Value = i32> {
    prop_oneof![
        3 => -lim..=lim,
        1 => Just(lim),
        1 => Just(-lim),
        1 => Just(0),
        1 => -3..=3,
    ]
}

/// `len` mantissas bounded by `lim`; sometimes all of one extreme value or all zero.
fn mants(lim: i32, len: usize) -> impl Strategy<Value = Vec<i32>> {
    prop_oneof![
        6 => proptest::collection::vec(mant(lim), len),
        1 => Just(vec![0; len]),
        1 => Just(vec![lim; len]),
        1 => Just(vec![-lim; len]),
    ]
}

/// A tensor length: mostly small (0, 1, odd), sometimes above the parallel threshold.
fn len() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..40,
        1 => Just(1usize),
        1 => 4000usize..9000,
    ]
}

/// An exponent: ordinary, or near the ±EXP_ABS_MAX limit.
fn exp() -> impl Strategy<Value = i32> {
    let lim = EXP_ABS_MAX as i32;
    prop_oneof![
        6 => -40i32..40,
        1 => Just(lim),
        1 => Just(-lim),
        1 => (lim - 50)..=lim,
        1 => -lim..=(-lim + 50),
    ]
}

/// An exponent difference around the interesting alignment limits.
fn delta() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(-1),
        Just(39),
        Just(40),
        Just(41),
        Just(-39),
        Just(-40),
        Just(-41),
        Just(60),
        Just(-60),
        Just(1000),
        Just(-1000),
        -70i32..70,
    ]
}

/// Sets element `at % len` to `bad` (an out-of-range mantissa) when `bad` is `Some`.
fn poison(mut v: Vec<i32>, bad: Option<(usize, i32)>) -> Vec<i32> {
    if let Some((at, x)) = bad {
        if !v.is_empty() {
            let i = at % v.len();
            v[i] = x;
        }
    }
    v
}

/// An out-of-range mantissa for bound `lim`, or none (most of the time).
fn bad(lim: i32) -> impl Strategy<Value = Option<(usize, i32)>> {
    prop_oneof![
        6 => Just(None),
        1 => any::<usize>().prop_map(move |i| Some((i, lim + 1))),
        1 => any::<usize>().prop_map(move |i| Some((i, -lim - 1))),
        1 => any::<usize>().prop_map(|i| Some((i, i32::MIN))),
    ]
}

/// A `rows×cols` shape: small, one column, or large enough for parallel row tasks.
fn shape() -> impl Strategy<Value = (usize, usize)> {
    prop_oneof![
        4 => (0usize..12, 1usize..40),
        1 => (0usize..12, Just(1usize)),
        1 => (1usize..4, Just(0usize)),
        1 => (60usize..140, 60usize..140),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn div_rhe_fast_equals_div_rhe(n in any::<i64>(), s in 0u32..64, d in 1i128..(1i128 << 70),
                                   dsmall in 1i128..100_000, nsmall in -(1i64 << 40)..(1i64 << 40)) {
        for (n, d) in [(n, d), (n, dsmall), (nsmall, dsmall), (nsmall, d), (i64::MIN, dsmall),
                       (i64::MAX, 1), (nsmall, 1), (nsmall, u64::MAX as i128)] {
            prop_assert_eq!(DivRhe::new(d, s).div(n), div_rhe((n as i128) << s, d));
        }
        let d64 = (dsmall as i64).max(1);
        prop_assert_eq!(div_rhe_small(nsmall, d64) as i128, div_rhe(nsmall as i128, d64 as i128));
        prop_assert_eq!(div_rhe_small(n, d64) as i128, div_rhe(n as i128, d64 as i128));
        prop_assert_eq!(div_rhe_small(1 << 62, (d64 << 20) + 3) as i128, div_rhe(1 << 62, ((d64 << 20) + 3) as i128));
    }

    #[test]
    fn div_est_is_exact_when_sure(n in any::<i64>(), s in 0u32..64, d in 1i128..(1i128 << 70),
                                  dsmall in 1i128..100_000, nsmall in -(1i64 << 40)..(1i64 << 40),
                                  q in -(1i64 << 30)..(1i64 << 30), half in any::<bool>()) {
        // Also numerators whose quotient is exactly an integer or a tie.
        let tie = |d: i128| -> i64 { (2 * q as i128 * d + if half { d } else { 0 }) as i64 };
        let cases = [(n, d), (n, dsmall), (nsmall, dsmall), (nsmall, d), (i64::MIN, dsmall),
                     (nsmall, 1), (tie(dsmall) >> 1, dsmall), (tie(2 * dsmall), 4 * dsmall)];
        for (n, d) in cases {
            let div = DivRhe::new(d, s);
            let (est, sure) = div.div_est(n);
            if sure {
                prop_assert_eq!(est as i128, div_rhe((n as i128) << s, d), "n {} d {} s {}", n, d, s);
            }
        }
        for (n, d) in [(tie(dsmall), 2 * dsmall), (2 * q + 1, 2)] {
            let (_, sure) = DivRhe::new(d, 0).div_est(n);
            prop_assert!(!sure || (n as i128).rem_euclid(d) * 2 != d, "tie n {} d {} judged sure", n, d);
        }
    }

    #[test]
    fn isqrt_fast_equals_isqrt(x in any::<u128>(), sh in 0u32..128, small in any::<u64>()) {
        for v in [x, x >> sh, small as u128, (small as u128) * (small as u128),
                  ((small as u128) * (small as u128)).saturating_sub(1)] {
            prop_assert_eq!(isqrt_fast(v) as u128, isqrt(v));
        }
    }

    #[test]
    fn add_equals_reference(n in len(), ea in exp(), d in delta(),
                            a in proptest::collection::vec(mant(B24_MANT_MAX), 9000),
                            b in proptest::collection::vec(mant(B24_MANT_MAX), 9000),
                            bad_a in bad(B24_MANT_MAX), bad_b in bad(B24_MANT_MAX), short in any::<bool>()) {
        let a = Bfp::new(poison(a[..n].to_vec(), bad_a), ea);
        let nb = if short && n > 0 { n - 1 } else { n };
        let b = Bfp::new(poison(b[..nb].to_vec(), bad_b), ea.saturating_add(d));
        prop_assert_eq!(add(&a, &b), old::add(&a, &b));
        prop_assert_eq!(add(&b, &a), old::add(&b, &a));
    }

    #[test]
    fn requant_equals_reference(n in len(), e in exp(), x in proptest::collection::vec(any::<i32>(), 9000),
                                small in proptest::collection::vec(mant(B16_MANT_MAX), 9000),
                                mx in prop_oneof![Just(B16_MANT_MAX), Just(WIDE_MANT_MAX), Just(1), Just(0), Just(-1), any::<i32>()]) {
        let a = Bfp::new(x[..n].to_vec(), e);
        prop_assert_eq!(requant(&a, mx), old::requant(&a, mx));
        let b = Bfp::new(small[..n].to_vec(), e);
        prop_assert_eq!(requant(&b, mx), old::requant(&b, mx));
    }

    #[test]
    fn rescale_equals_reference(n in len(), e in exp(), x in proptest::collection::vec(any::<i32>(), 9000),
                                k in prop_oneof![0i32..70, Just(200), Just(-1), Just(1 << 25)]) {
        let a = Bfp::new(poison(x[..n].to_vec(), Some((0, i32::MIN))), e);
        let to = e.saturating_add(k);
        prop_assert_eq!(rescale(&a, to), old::rescale(&a, to));
    }

    #[test]
    fn mul_cols_equals_reference((rows, cols) in shape(), ex in exp(), ew in exp(),
                                 x in mants(B16_MANT_MAX, 140 * 140), w in mants(B16_MANT_MAX, 140),
                                 bad_x in bad(B16_MANT_MAX), bad_w in bad(B16_MANT_MAX)) {
        let x = Bfp::new(poison(x[..rows * cols].to_vec(), bad_x), ex);
        let w = Bfp::new(poison(w[..cols].to_vec(), bad_w), ew);
        prop_assert_eq!(mul_cols(&x, &w, rows, cols), old::mul_cols(&x, &w, rows, cols));
        prop_assert_eq!(mul_cols(&x, &w, rows + 1, cols), old::mul_cols(&x, &w, rows + 1, cols));
    }

    #[test]
    fn col_dot_equals_reference((rows, cols) in shape(), ea in exp(), eb in exp(),
                                a in mants(B16_MANT_MAX, 140 * 140), b in mants(B16_MANT_MAX, 140 * 140),
                                bad_b in bad(B16_MANT_MAX)) {
        let a = Bfp::new(a[..rows * cols].to_vec(), ea);
        let b = Bfp::new(poison(b[..rows * cols].to_vec(), bad_b), eb);
        prop_assert_eq!(col_dot(&a, &b, rows, cols), old::col_dot(&a, &b, rows, cols));
    }

    #[test]
    fn layernorm_equals_reference((rows, cols) in shape(), e in exp(),
                                  x in mants(B16_MANT_MAX, 140 * 140), bad_x in bad(B16_MANT_MAX),
                                  wide_cols in any::<bool>()) {
        let (rows, cols) = if wide_cols { (rows.min(3), cols * 40) } else { (rows, cols) };
        let mut m = x;
        m.resize(rows * cols, 7);
        let x = Bfp::new(poison(m, bad_x), e);
        prop_assert_eq!(layernorm(&x, rows, cols), old::layernorm(&x, rows, cols));
    }

    #[test]
    fn layernorm_bwd_equals_reference((rows, cols) in shape(), eg in exp(), eh in prop_oneof![-20i32..=0, -63i32..=0, Just(1), Just(-65)],
                                      xe in exp(), g in mants(B16_MANT_MAX, 140 * 140),
                                      h in mants(B16_MANT_MAX, 140 * 140),
                                      r in proptest::collection::vec(prop_oneof![Just(0u64), Just(1u64), Just(u64::MAX), any::<u64>(), 1u64..(1 << 40)], 140),
                                      bad_h in bad(B16_MANT_MAX), from_forward in any::<bool>()) {
        let g = Bfp::new(g[..rows * cols].to_vec(), eg);
        let h = Bfp::new(poison(h[..rows * cols].to_vec(), bad_h), eh);
        let r = if from_forward && bad_h.is_none() && cols > 0 {
            old::layernorm(&Bfp::new(h.mant.clone(), 0), rows, cols).unwrap().1
        } else {
            r[..rows].to_vec()
        };
        prop_assert_eq!(layernorm_bwd(&g, &h, &r, xe, rows, cols), old::layernorm_bwd(&g, &h, &r, xe, rows, cols));
        if rows > 0 {
            prop_assert_eq!(layernorm_bwd(&g, &h, &r[1..], xe, rows, cols), old::layernorm_bwd(&g, &h, &r[1..], xe, rows, cols));
        }
    }

    #[test]
    fn softmax_equals_reference((rows, cols) in shape(), e in prop_oneof![exp(), -100i32..100], causal in any::<bool>(),
                                x in mants(B16_MANT_MAX, 140 * 140), bad_x in bad(B16_MANT_MAX),
                                scale in prop_oneof![Just(1u32 << 16), Just(11_585u32), Just(0u32), Just(1u32), Just(u32::MAX), Just(1u32 << 20), any::<u32>()]) {
        let x = Bfp::new(poison(x[..rows * cols].to_vec(), bad_x), e);
        prop_assert_eq!(softmax(&x, rows, cols, causal, scale), old::softmax(&x, rows, cols, causal, scale));
    }

    #[test]
    fn softmax_bwd_equals_reference((rows, cols) in shape(), ep in prop_oneof![-64i32..=0, -20i32..=-10, Just(1), Just(-65)], ed in exp(),
                                    p in mants(B16_MANT_MAX, 140 * 140), dp in mants(B16_MANT_MAX, 140 * 140),
                                    bad_p in bad(B16_MANT_MAX),
                                    scale in prop_oneof![Just(1u32 << 16), Just(11_585u32), Just(0u32), Just(u32::MAX), any::<u32>()]) {
        let p = Bfp::new(poison(p[..rows * cols].to_vec(), bad_p), ep);
        let dp = Bfp::new(dp[..rows * cols].to_vec(), ed);
        prop_assert_eq!(softmax_bwd(&p, &dp, rows, cols, scale), old::softmax_bwd(&p, &dp, rows, cols, scale));
    }

    #[test]
    fn cross_entropy_equals_reference((rows, cols) in shape(), e in prop_oneof![exp(), -100i32..100],
                                      x in mants(B16_MANT_MAX, 140 * 140), bad_x in bad(B16_MANT_MAX),
                                      t in proptest::collection::vec(any::<u32>(), 140), bad_t in any::<bool>()) {
        let x = Bfp::new(poison(x[..rows * cols].to_vec(), bad_x), e);
        let mut t: Vec<u32> = t[..rows].iter().map(|&v| v % cols.max(1) as u32).collect();
        if bad_t && rows > 0 {
            t[rows / 2] = cols as u32;
        }
        prop_assert_eq!(cross_entropy(&x, &t, rows, cols), old::cross_entropy(&x, &t, rows, cols));
    }

    #[test]
    fn gelu_equals_reference(n in len(), e in prop_oneof![exp(), -80i32..50], x in mants(B16_MANT_MAX, 9000),
                             dy in mants(B16_MANT_MAX, 9000), edy in exp(), bad_x in bad(B16_MANT_MAX),
                             short in any::<bool>()) {
        let x = Bfp::new(poison(x[..n].to_vec(), bad_x), e);
        let nd = if short && n > 0 { n - 1 } else { n };
        let dy = Bfp::new(dy[..nd].to_vec(), edy);
        prop_assert_eq!(gelu(&x), old::gelu(&x));
        prop_assert_eq!(gelu_bwd(&x, &dy), old::gelu_bwd(&x, &dy));
    }

    #[test]
    fn scatter_add_rows_equals_reference((rows, cols) in shape(), e in exp(), src in mants(B16_MANT_MAX, 140 * 140),
                                         idx in proptest::collection::vec(any::<u32>(), 140),
                                         out_rows in 1usize..20, bad_idx in any::<bool>()) {
        let src = Bfp::new(src[..rows * cols].to_vec(), e);
        let mut idx: Vec<u32> = idx[..rows].iter().map(|&v| v % out_rows as u32).collect();
        if bad_idx && rows > 0 {
            idx[rows - 1] = out_rows as u32;
        }
        prop_assert_eq!(scatter_add_rows(&src, &idx, out_rows, cols), old::scatter_add_rows(&src, &idx, out_rows, cols));
    }

    #[test]
    fn sum_squares_and_scale_equal_reference(n in len(), e in exp(), x in mants(B16_MANT_MAX, 9000),
                                             bad_x in bad(B16_MANT_MAX),
                                             c in prop_oneof![Just(0i64), Just(1 << 30), Just(-(1 << 30)), Just(1 << 48), Just(-(1 << 48)),
                                                              Just((1 << 48) + 1), Just(i64::MAX), Just(i64::MIN + 1), any::<i64>(), -(1i64 << 31)..(1i64 << 31)]) {
        let x = Bfp::new(poison(x[..n].to_vec(), bad_x), e);
        prop_assert_eq!(sum_squares(&x), old::sum_squares(&x));
        prop_assert_eq!(scale(&x, c), old::scale(&x, c));
    }
}

/// AdamW hyperparameters: realistic values and the ends of their ranges.
fn adam_step() -> impl Strategy<Value = AdamStep> {
    let beta = prop_oneof![
        Just(0i64),
        Just(1 << 30),
        Just((1 << 30) - 1),
        0i64..=(1 << 30),
        Just(966_367_642) // 0.9
    ];
    let alpha = prop_oneof![Just(0i64), Just(1 << 30), 0i64..(1 << 45), Just(1 << 50)];
    let decay = prop_oneof![Just(0i64), Just(1 << 30), 0i64..(1 << 40), Just(1 << 50)];
    (beta.clone(), beta, alpha, decay).prop_map(|(beta1_q30, beta2_q30, alpha_q40, decay_q40)| {
        AdamStep {
            beta1_q30,
            beta2_q30,
            alpha_q40,
            decay_q40,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn adamw_equals_reference(n in len(), ep in exp(), eg in -40i32..40, dm in delta(), dr in delta(),
                              p in mants(B24_MANT_MAX, 9000), g in mants(B16_MANT_MAX, 9000),
                              m in mants(B16_MANT_MAX, 9000), r in mants(B16_MANT_MAX, 9000),
                              st in adam_step(), bad_p in bad(B24_MANT_MAX), bad_r in bad(B16_MANT_MAX),
                              short in any::<bool>()) {
        let p = Bfp::new(poison(p[..n].to_vec(), bad_p), ep);
        let g = Bfp::new(g[..n].to_vec(), eg);
        let m = Bfp::new(m[..n].to_vec(), eg + dm);
        let nr = if short && n > 0 { n - 1 } else { n };
        let r = Bfp::new(poison(r[..nr].to_vec(), bad_r), eg + dr);
        let want = old::adamw(&p, &g, &m, &r, &st);
        prop_assert_eq!(&adamw(&p, &g, &m, &r, &st), &want);
        prop_assert_eq!(&adamw_on(&p, &g, &m, &r, &st, None), &want);
    }

    /// Out-of-range mantissas in any of the four inputs (several at once, with wrong lengths),
    /// which the vector pass 1 detects instead of the up-front scan: the same error.
    #[test]
    fn adamw_errors_equal_reference(n in len(), eg in -40i32..40, dm in delta(), dr in delta(),
                                    p in mants(B24_MANT_MAX, 9000), g in mants(B16_MANT_MAX, 9000),
                                    m in mants(B16_MANT_MAX, 9000), r in mants(B16_MANT_MAX, 9000),
                                    st in adam_step(), bad_p in bad(B24_MANT_MAX), bad_r in bad(B16_MANT_MAX),
                                    bad_g in bad(B16_MANT_MAX), bad_m in bad(B16_MANT_MAX),
                                    short in prop_oneof![4 => Just(None), 1 => (0usize..3).prop_map(Some)]) {
        let cut = |v: &[i32], i| if short == Some(i) && n > 0 { v[..n - 1].to_vec() } else { v[..n].to_vec() };
        let p = Bfp::new(poison(p[..n].to_vec(), bad_p), eg - 4);
        let g = Bfp::new(poison(cut(&g, 0), bad_g), eg);
        let m = Bfp::new(poison(cut(&m, 1), bad_m), eg + dm);
        let r = Bfp::new(poison(cut(&r, 2), bad_r), eg + dr);
        let want = old::adamw(&p, &g, &m, &r, &st);
        prop_assert_eq!(&adamw(&p, &g, &m, &r, &st), &want);
        prop_assert_eq!(&adamw_on(&p, &g, &m, &r, &st, None), &want);
    }
}

/// The i64 GELU `(σ, g)` equals the reference's for every B16 mantissa at exponents from
/// "everything rounds to 0" to "everything saturates".
#[test]
fn gelu_sg_equals_reference_for_every_mantissa() {
    let t = exp2_tables();
    let exps = (-70..=45).chain([-1000, 1000, -(1 << 24), 1 << 24, i32::MIN + 1, i32::MAX]);
    for e in exps {
        for m in -B16_MANT_MAX..=B16_MANT_MAX {
            let (s, g) = gelu_sg(t, m, e);
            let (zo, so) = old::gelu_sigma(m, e);
            assert_eq!(s, so, "σ of m {m} exp {e}");
            let s128 = so as i128;
            let to = rhe(s128 * ((1i128 << 31) - s128), 31);
            assert_eq!(g as i128, s128 + rhe(zo * to, 16), "g of m {m} exp {e}");
        }
    }
}

/// Large tensors (GELU tables built and reused from the cache; parallel passes everywhere),
/// with mantissas spread over the whole B16 range.
#[test]
fn large_tensors_equal_reference() {
    let gen = |seed: u64, len: usize, lim: i32| -> Vec<i32> {
        (0..len as u64)
            .map(|i| {
                (crate::numerics::fixed::hash3(seed, 3, i) % (2 * lim as u64 + 1)) as i32 - lim
            })
            .collect()
    };
    let (rows, cols) = (768, 512);
    for (e, seed) in [(-12, 1u64), (-12, 2), (-3, 3), (0, 4)] {
        let x = Bfp::new(gen(seed, rows * cols, B16_MANT_MAX), e);
        let dy = Bfp::new(gen(seed + 10, rows * cols, B16_MANT_MAX), -30);
        assert_eq!(gelu(&x), old::gelu(&x));
        assert_eq!(gelu_bwd(&x, &dy), old::gelu_bwd(&x, &dy));
        assert_eq!(layernorm(&x, rows, cols), old::layernorm(&x, rows, cols));
        let (h, r) = old::layernorm(&x, rows, cols).unwrap();
        assert_eq!(
            layernorm_bwd(&dy, &h, &r, e, rows, cols),
            old::layernorm_bwd(&dy, &h, &r, e, rows, cols)
        );
        assert_eq!(
            softmax(&x, rows, cols, true, 11_585),
            old::softmax(&x, rows, cols, true, 11_585)
        );
        let p = old::softmax(&x, rows, cols, false, 1 << 16).unwrap();
        assert_eq!(
            softmax_bwd(&p, &dy, rows, cols, 11_585),
            old::softmax_bwd(&p, &dy, rows, cols, 11_585)
        );
        let w = Bfp::new(gen(seed + 20, rows * cols, B24_MANT_MAX), e + 7);
        assert_eq!(add(&x, &w), old::add(&x, &w));
        let st = AdamStep {
            beta1_q30: 966_367_642,
            beta2_q30: 1_072_668_082,
            alpha_q40: 1_099_511_628,
            decay_q40: 109_951_163,
        };
        assert_eq!(
            adamw(&w, &x, &dy, &x, &st),
            old::adamw(&w, &x, &dy, &x, &st)
        );
    }
}

/// AdamW on tensors shaped like training's (moments a few bits finer than the gradient, the
/// first step's all-zero moments at exponent −64), where the f64 root and quotient estimates
/// decide almost every element: bit-identical to the reference.
#[test]
fn adamw_training_like_equals_reference() {
    let gen = |seed: u64, len: usize, lim: u64| -> Vec<i32> {
        (0..len as u64)
            .map(|i| {
                // Mixed magnitudes: a random bit width per element.
                let h = crate::numerics::fixed::hash3(seed, 7, i);
                let bits = (h >> 40) % (lim.ilog2() as u64 + 1);
                let v = ((h & 0xFFFF_FFFF) % ((1u64 << bits).min(lim) + 1)) as i32;
                if h >> 63 == 1 {
                    -v
                } else {
                    v
                }
            })
            .collect()
    };
    for seed in 0..6u64 {
        // Lengths with every remainder mod 8 handled by the vector passes' padded tail.
        let n = (1 << 15) + 3 * seed as usize;
        let eg = -20 - seed as i32;
        let p = Bfp::new(gen(seed, n, B24_MANT_MAX as u64), -26);
        let g = Bfp::new(gen(seed + 100, n, B16_MANT_MAX as u64), eg);
        let (m, r) = if seed == 0 {
            (Bfp::new(vec![0; n], -64), Bfp::new(vec![0; n], -64))
        } else {
            (
                Bfp::new(gen(seed + 200, n, B16_MANT_MAX as u64), eg - 3),
                Bfp::new(
                    gen(seed + 300, n, B16_MANT_MAX as u64)
                        .into_iter()
                        .map(i32::abs)
                        .collect(),
                    eg - 3 - (seed as i32 % 2),
                ),
            )
        };
        let st = AdamStep {
            beta1_q30: 966_367_642,
            beta2_q30: 1_063_004_406,
            alpha_q40: 10_886_254 + seed as i64 * 1_000_003,
            decay_q40: if seed % 3 == 0 { 0 } else { 1_088_625 },
        };
        let want = old::adamw(&p, &g, &m, &r, &st);
        assert_eq!(adamw(&p, &g, &m, &r, &st), want, "seed {seed}");
        assert_eq!(adamw_on(&p, &g, &m, &r, &st, None), want, "seed {seed}");
    }
}

/// AdamW rounds p' by the shift of `p << 16` in the pass that forms it and rounds again when
/// the update moves the largest |p'| across a power of two (up or down): parameters at and
/// next to powers of two, updates of every size and both signs, equal to the reference.
#[test]
fn adamw_rounding_shift_guess_equals_reference() {
    let shapes: [&[i32]; 4] = [
        &[1 << 22, 5, -7],
        &[-(1 << 22), 1 << 21],
        &[B24_MANT_MAX, -3, 0],
        &[(1 << 22) + 1, -((1 << 22) - 1)],
    ];
    for pm in shapes {
        let n = pm.len();
        for sign in [1, -1] {
            for la in 0..52 {
                let p = Bfp::new(pm.to_vec(), -26);
                let g = Bfp::new(vec![sign * B16_MANT_MAX; n], -22);
                let m = Bfp::new(vec![sign * 20_000; n], -23);
                let r = Bfp::new(vec![3; n], -30);
                let st = AdamStep {
                    beta1_q30: 966_367_642,
                    beta2_q30: 1_063_004_406,
                    alpha_q40: 1i64 << la,
                    decay_q40: 1_088_625,
                };
                assert_eq!(
                    adamw(&p, &g, &m, &r, &st),
                    old::adamw(&p, &g, &m, &r, &st),
                    "p {pm:?} sign {sign} alpha 2^{la}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// GELU on tables with the shift taken from the extreme mantissas or, when they do not
    /// decide it, from the full pass: tensors confined to random ranges `[lo, hi]` (negative
    /// lobes alone, tiny positive tails, extremes) at exponents around the lobe's peak.
    #[test]
    fn gelu_table_shift_equals_reference(lo in prop_oneof![-B16_MANT_MAX..=0, Just(-B16_MANT_MAX), Just(0)],
                                         hi in prop_oneof![0..=B16_MANT_MAX, 0..=64, Just(0), Just(B16_MANT_MAX)],
                                         e in prop_oneof![-16i32..2, Just(-12), -80i32..50],
                                         seed in any::<u64>()) {
        let n = GELU_TABLE_BUILD_MIN_LEN + 1000;
        let span = (hi - lo) as u64 + 1;
        let x: Vec<i32> = (0..n as u64)
            .map(|i| lo + (crate::numerics::fixed::hash3(seed, 7, i) % span) as i32)
            .collect();
        let x = Bfp::new(x, e);
        prop_assert_eq!(gelu(&x), old::gelu(&x));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Softmax through its cached table of exponentials (tensors of at least a table's
    /// length build one; smaller ones reuse it for the same exponent and scale).
    #[test]
    fn softmax_table_equals_reference(e in prop_oneof![exp(), -100i32..100, -14i32..-8], causal in any::<bool>(),
                                      scale in prop_oneof![Just(11_585u32), Just(1 << 16), any::<u32>()],
                                      cols in prop_oneof![Just(64usize), 1usize..300], seed in any::<u64>()) {
        let rows = SOFTMAX_TABLE_LEN.div_ceil(cols);
        let x: Vec<i32> = (0..(rows * cols) as u64)
            .map(|i| (crate::numerics::fixed::hash3(seed, 11, i) % (2 * B16_MANT_MAX as u64 + 1)) as i32 - B16_MANT_MAX)
            .collect();
        let x = Bfp::new(x, e);
        prop_assert_eq!(softmax(&x, rows, cols, causal, scale), old::softmax(&x, rows, cols, causal, scale));
        let small = Bfp::new(x.mant[..cols].to_vec(), e);
        prop_assert_eq!(softmax(&small, 1, cols, causal, scale), old::softmax(&small, 1, cols, causal, scale));
    }
}

/// An alignment `(left, right)` of the vector passes' range: a left shift up to 16 or a right
/// shift up to 61.
fn lane_align() -> impl Strategy<Value = (u32, u32)> {
    prop_oneof![
        (0u32..=16).prop_map(|left| (left, 0)),
        Just((16, 0)),
        (1u32..=61).prop_map(|right| (0, right)),
        Just((0, 61)),
    ]
}

/// A rounding or alignment shift of the vector passes: 0, small, or near the 61-bit limit.
fn lane_shift(max: u32) -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(max), 0..=max, 0u32..=3]
}

/// A β of the vector passes: `[0, 2^30]` with its ends.
fn lane_beta() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0i64),
        Just(1 << 30),
        0i64..=(1 << 30),
        Just(966_367_642)
    ]
}

/// Constants of the vector moment passes over their whole accepted range, as
/// `(β1, β2, am, ag, [ar.right, ag2.right, la, lb])`.
type MomentArgs = (i64, i64, (u32, u32), (u32, u32), [u32; 4]);

fn moment_args() -> impl Strategy<Value = MomentArgs> {
    let shifts = (
        lane_shift(61),
        lane_shift(61),
        lane_shift(40),
        lane_shift(40),
    )
        .prop_map(|(a, b, c, d)| [a, b, c, d]);
    (lane_beta(), lane_beta(), lane_align(), lane_align(), shifts)
}

fn moment_consts((b1, b2, am, ag, [ar_right, ag2_right, la, lb]): MomentArgs) -> MomentConsts {
    let one = 1i64 << 30;
    let align = |(left, right)| Align { left, right };
    MomentConsts {
        b1,
        c1: one - b1,
        am: align(am),
        ag: align(ag),
        b2: b2 as u64,
        c2: (one - b2) as u64,
        ar_right,
        ag2_right,
        la,
        lb,
    }
}

/// The exact unrounded first moment and (undoubled) second moment of one element.
fn exact_moments(k: &MomentConsts, a: i32, b: i32, c: i32) -> (i64, u128) {
    let wm = k.b1 * k.am.apply(a as i64) + k.c1 * k.ag.apply(b as i64);
    let sq = |x: i32, right: u32| rhe64(x as i64 * x as i64, right) as u128;
    let wv = ((k.b2 as u128 * sq(c, k.ar_right)) << k.la)
        + ((k.c2 as u128 * sq(b, k.ag2_right)) << k.lb);
    (wm, wv)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The vector pass 1 finds the exact maxima (the 128-bit second moments compared as two
    /// halves, carries included), tails of every length.
    #[test]
    fn adamw_lane_maxima_are_exact(n in len(), k in moment_args(),
                                   m in mants(B16_MANT_MAX, 9000), g in mants(B16_MANT_MAX, 9000),
                                   r in mants(B16_MANT_MAX, 9000), p in mants(B24_MANT_MAX, 9000)) {
        let Some(simd) = AdamSimd::new() else { return Ok(()) };
        let k = moment_consts(k);
        prop_assert!(k.supported());
        let (m, g, r, p) = (&m[..n], &g[..n], &r[..n], &p[..n]);
        let mut want = (0u64, 0u128, 0u32, 0u64);
        for i in 0..n {
            let (wm, wv) = exact_moments(&k, m[i], g[i], r[i]);
            let or = [m[i], g[i], r[i]].iter().fold(want.3, |o, x| o | x.unsigned_abs() as u64);
            want = (want.0.max(wm.unsigned_abs()), want.1.max(wv), want.2.max(p[i].unsigned_abs()), or);
        }
        prop_assert_eq!(simd.maxima(&k, m, g, r, p), want);
    }

    /// The vector moments equal the exact `m'` and `r'` for any root shift `s` and rounding
    /// `k_r` (small ones put lanes the f64 root cannot vouch for next to lanes it can).
    #[test]
    fn adamw_lane_moments_are_exact(n in len(), k in moment_args(), odd in 0u32..=1,
                                    s_frac in 0u32..=4, k_r_less in prop_oneof![Just(0u32), Just(16), 0u32..=16],
                                    m in mants(B16_MANT_MAX, 9000), g in mants(B16_MANT_MAX, 9000),
                                    r in mants(B16_MANT_MAX, 9000)) {
        let Some(simd) = AdamSimd::new() else { return Ok(()) };
        let k = moment_consts(k);
        let (m, g, r) = (&m[..n], &g[..n], &r[..n]);
        let exact: Vec<(i64, u128)> = (0..n).map(|i| exact_moments(&k, m[i], g[i], r[i])).collect();
        let mx_m = exact.iter().map(|e| e.0.unsigned_abs()).max().unwrap_or(0);
        let mx_v = exact.iter().map(|e| e.1 << odd).max().unwrap_or(0);
        let k_m = requant_shift(mx_m as u128, B16_MANT_MAX);
        // As adamw_narrow: the largest shifted value below 2^101; here also smaller shifts.
        let s = ((100i64 - bitlen(mx_v) as i64).max(0) / 2) as u32 * s_frac / 4;
        let k_r = requant_shift(isqrt(mx_v << (2 * s)), B16_MANT_MAX).saturating_sub(k_r_less);
        let pow2 = |e: u32| f64::from_bits((1023 + e as u64) << 52);
        let roots = RootConsts {
            fa: pow2(k.la + odd + 2 * s),
            fb: pow2(k.lb + odd + 2 * s),
            scale_r: f64_scale(k_r),
            k_m,
        };
        let root = |v: u128| rhe(isqrt((v << odd) << (2 * s)) as i128, k_r) as i32;
        let exact_root = |c: i32, b: i32| root(exact_moments(&k, 0, b, c).1);
        let (mut m2, mut r2) = (vec![i32::MIN; n], vec![i32::MIN; n]);
        simd.moments(&k, &roots, (m, g, r), &mut m2, &mut r2, exact_root);
        for i in 0..n {
            prop_assert_eq!(m2[i], rhe64(exact[i].0, k_m) as i32, "m' {}", i);
            prop_assert_eq!(r2[i], root(exact[i].1), "r' {}", i);
        }
    }

    /// The vector parameter update equals the portable `round_chunk` (largest |p'|, whether
    /// every p' fits, and the rounded p' when they do) over the whole accepted range of
    /// α, decay and `sh`, with m' at ±32767 and 0 and r' at 0, small `sh` making exact ties
    /// (lanes left to the scalar code) and huge α making p' overflow i64 (`fits == false`).
    #[test]
    fn adamw_lane_update_equals_portable(n in len(), sh in prop_oneof![Just(0i64), 0i64..64, Just(900), 0i64..=900],
                                         alpha in prop_oneof![Just(0i64), Just(1 << 30), -(1i64 << 53)..=(1 << 53), Just(1 << 53), Just(-(1 << 53))],
                                         decay in prop_oneof![Just(0i64), Just((1 << 40) - 1), Just(1 - (1 << 40)), -(1i64 << 40) + 1..(1 << 40)],
                                         k in prop_oneof![Just(0u32), 0u32..=41],
                                         m2 in mants(B16_MANT_MAX, 9000),
                                         r2 in proptest::collection::vec(prop_oneof![Just(0i32), Just(B16_MANT_MAX), 0..=B16_MANT_MAX, 0i32..4], 9000),
                                         p in mants(B24_MANT_MAX, 9000)) {
        let Some(simd) = AdamSimd::new() else { return Ok(()) };
        let st = AdamStep { beta1_q30: 0, beta2_q30: 0, alpha_q40: alpha, decay_q40: decay };
        let u = UpdateConsts::new(alpha, decay, sh);
        prop_assert!(u.is_some());
        let upd = AdamUpdate::new(&st, sh);
        let (m2, r2, p) = (&m2[..n], &r2[..n], &p[..n]);
        let (mut want, mut got) = (vec![0; n], vec![0; n]);
        let w = upd.round_chunk(&mut want, m2, r2, p, Rhe::new(k));
        let v = simd.update(&u.unwrap(), m2, r2, p, &mut got, k, |mm, rm, pm| upd.wide(mm, rm, pm));
        prop_assert_eq!(v.1, w.1);
        if w.1 {
            prop_assert_eq!(v.0, w.0);
            prop_assert_eq!(got, want);
        }
    }
}

/// The vector update declines what it does not handle exactly (negative `sh`, whose shifts
/// saturate, |α| above `2^53`, |decay| from `2^40`), leaving it to the portable code.
#[test]
fn adamw_lane_update_declines_out_of_range() {
    assert!(UpdateConsts::new(1, 0, -1).is_none());
    assert!(UpdateConsts::new(1, 0, 901).is_none());
    assert!(UpdateConsts::new((1 << 53) + 1, 0, 10).is_none());
    assert!(UpdateConsts::new(0, 1 << 40, 10).is_none());
    assert!(UpdateConsts::new(1 << 53, (1 << 40) - 1, 900).is_some());
}
