//! Tests of [`CpuKernels`] through the [`Kernels`] trait: matmul against `matmul_naive` on
//! every shape, the table paths of GELU against their definition, and properties of the other
//! kernels (rows of softmax sum to one, layernorm normalizes, float comparisons).

use super::CpuKernels;
use crate::numerics::fixed::{rhe, B16_MANT_MAX};
use crate::numerics::kernels::{
    matmul_naive, requant_wide, Bfp, KernelError, Kernels, MatmulShape, MATMUL_K_MAX,
};

mod matmul_tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_case() -> impl Strategy<Value = (Bfp, Bfp, MatmulShape)> {
        (
            1usize..4,
            0usize..9,
            0usize..70,
            0usize..9,
            any::<bool>(),
            any::<bool>(),
            -20i32..20,
            -20i32..20,
            0u32..16,
        )
            .prop_flat_map(|(batch, m, k, n, ta, tb, ea, eb, bits)| {
                let s = MatmulShape {
                    batch,
                    m,
                    k,
                    n,
                    trans_a: ta,
                    trans_b: tb,
                };
                let lim = (1i32 << bits) - 1;
                let lim = lim.min(B16_MANT_MAX);
                (
                    proptest::collection::vec(-lim..=lim, batch * m * k),
                    proptest::collection::vec(-lim..=lim, batch * k * n),
                )
                    .prop_map(move |(am, bm)| (Bfp::new(am, ea), Bfp::new(bm, eb), s))
            })
    }

    #[test]
    fn cpu_matmul_equals_naive_large_with_reused_scratch() {
        // Outputs above MATMUL_PAR_MIN (parallel passes), in an order that leaves stale sums of
        // a larger call in the thread's scratch; full-range and small mantissas (k > 0 and 0).
        let cases = [
            (1, 200, 300, 150, false, false, 32_767),
            (3, 64, 128, 100, true, false, 32_767),
            (1, 90, 512, 70, false, true, 7),
            (2, 130, 40, 90, true, true, 32_767),
            (1, 1, 3, 1, false, false, 3),
        ];
        for (i, &(batch, m, k, n, trans_a, trans_b, lim)) in cases.iter().enumerate() {
            let s = MatmulShape {
                batch,
                m,
                k,
                n,
                trans_a,
                trans_b,
            };
            let gen = |stream: u64, len: usize| -> Vec<i32> {
                (0..len as u64)
                    .map(|j| {
                        (crate::numerics::fixed::hash3(i as u64, stream, j) % (2 * lim + 1)) as i32
                    })
                    .map(|x| x - lim as i32)
                    .collect()
            };
            let a = Bfp::new(gen(1, batch * m * k), -3);
            let b = Bfp::new(gen(2, batch * k * n), 5);
            let fast = CpuKernels.matmul(&a, &b, s).unwrap();
            assert_eq!(fast, matmul_naive(&a, &b, s).unwrap(), "case {i}");
        }
    }

    proptest! {
        #[test]
        fn cpu_matmul_equals_naive((a, b, s) in arb_case()) {
            let fast = CpuKernels.matmul(&a, &b, s).unwrap();
            let slow = matmul_naive(&a, &b, s).unwrap();
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn naive_matches_i128_rational((a, b, s) in arb_case()) {
            let out = matmul_naive(&a, &b, s).unwrap();
            let k = (out.exp - a.exp - b.exp) as u32;
            // Recompute each sum in i128 and check the requantization rule directly.
            let mut mx = 0u128;
            let mut sums = Vec::new();
            for bt in 0..s.batch { for i in 0..s.m { for j in 0..s.n {
                let mut acc = 0i128;
                for p in 0..s.k {
                    let x = if s.trans_a { a.mant[bt*s.m*s.k + p*s.m + i] } else { a.mant[bt*s.m*s.k + i*s.k + p] };
                    let y = if s.trans_b { b.mant[bt*s.k*s.n + j*s.k + p] } else { b.mant[bt*s.k*s.n + p*s.n + j] };
                    acc += x as i128 * y as i128;
                }
                mx = mx.max(acc.unsigned_abs());
                sums.push(acc);
            }}}
            for (q, sum) in out.mant.iter().zip(&sums) {
                prop_assert_eq!(*q as i128, rhe(*sum, k));
            }
            prop_assert!(out.mant.iter().all(|q| q.unsigned_abs() <= 32_767));
            if k > 0 { prop_assert!(rhe(mx as i128, k - 1) > 32_767); }
        }
    }

    #[test]
    fn extreme_values_stay_exact() {
        // K = 4096 products of 32767·32767: sum = 4096·(2^15−1)^2 ≈ 2^42, must be exact.
        let k = 4096;
        let a = Bfp::new(vec![B16_MANT_MAX; k], 0);
        let b = Bfp::new(vec![-B16_MANT_MAX; k], 0);
        let s = MatmulShape::new(1, k, 1);
        let out = CpuKernels.matmul(&a, &b, s).unwrap();
        assert_eq!(out, matmul_naive(&a, &b, s).unwrap());
        let exact = -(k as i128) * (B16_MANT_MAX as i128).pow(2);
        let sh = (out.exp) as u32;
        assert_eq!(out.mant[0] as i128, rhe(exact, sh));
    }

    #[test]
    fn bad_input_is_precise() {
        let s = MatmulShape::new(2, 3, 2);
        let a = Bfp::new(vec![0; 6], 0);
        let b = Bfp::new(vec![0; 5], 0);
        assert_eq!(
            CpuKernels.matmul(&a, &b, s),
            Err(KernelError::Shape {
                op: "matmul",
                operand: "b",
                expected: 6,
                found: 5
            })
        );
        let mut b = Bfp::new(vec![0; 6], 0);
        b.mant[4] = -32_768;
        assert_eq!(
            CpuKernels.matmul(&a, &b, s),
            Err(KernelError::MantissaRange {
                op: "matmul",
                operand: "b",
                index: 4,
                found: -32_768,
                max: 32_767
            })
        );
        let big = MatmulShape::new(1, MATMUL_K_MAX + 1, 1);
        assert!(matches!(
            CpuKernels.matmul(&a, &b, big),
            Err(KernelError::Limit { .. })
        ));
    }
}

mod op_tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_b16(n: std::ops::Range<usize>) -> impl Strategy<Value = Bfp> {
        (
            proptest::collection::vec(-B16_MANT_MAX..=B16_MANT_MAX, n),
            -30i32..10,
        )
            .prop_map(|(m, e)| Bfp::new(m, e))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4))]
        #[test]
        fn gelu_table_path_equals_direct_path(e in -30i32..5, seed in any::<u64>()) {
            // Large enough to use the table; compare with the per-element definition.
            let n = 4 * (2 * B16_MANT_MAX as usize + 1);
            let m: Vec<i32> = (0..n as u64)
                .map(|i| (crate::numerics::fixed::hash3(seed, 9, i) % 65_535) as i32 - B16_MANT_MAX)
                .collect();
            let x = Bfp::new(m, e);
            let y = CpuKernels.gelu(&x).unwrap();
            let wide: Vec<i128> = x.mant.iter().map(|&v| v as i128 * crate::numerics::cpu::reference::gelu_sigma(v, e).1 as i128).collect();
            prop_assert_eq!(y, requant_wide("gelu", &wide, e as i64 - 31, B16_MANT_MAX).unwrap());
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn softmax_rows_sum_to_one(x in arb_b16(1..200), cols in 1usize..20, causal in any::<bool>()) {
            let rows = x.len() / cols;
            prop_assume!(rows > 0);
            let x = Bfp::new(x.mant[..rows * cols].to_vec(), x.exp);
            let p = CpuKernels.softmax(&x, rows, cols, causal, 1 << 16).unwrap();
            for (r, row) in p.to_f64().chunks(cols).enumerate() {
                let s: f64 = row.iter().sum();
                prop_assert!((s - 1.0).abs() < cols as f64 * 2f64.powi(p.exp) + 1e-9, "row {} sums to {}", r, s);
                if causal {
                    prop_assert!(row[r % cols + 1..].iter().all(|&v| v == 0.0));
                }
                // Matches float softmax to the B16 grid (plus the table's relative error).
                let used = if causal { r % cols + 1 } else { cols };
                let xs: Vec<f64> = x.to_f64()[r * cols..r * cols + used].to_vec();
                let mx = xs.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = xs.iter().map(|v| (v - mx).exp()).sum();
                for j in 0..used {
                    let want = (xs[j] - mx).exp() / z;
                    prop_assert!((row[j] - want).abs() < 2f64.powi(p.exp) + 1e-6, "p[{}][{}] {} vs {}", r, j, row[j], want);
                }
            }
        }

        #[test]
        fn layernorm_normalizes(x in arb_b16(8..64)) {
            let cols = 8;
            let rows = x.len() / cols;
            let x = Bfp::new(x.mant[..rows * cols].to_vec(), x.exp);
            let (h, r) = CpuKernels.layernorm(&x, rows, cols).unwrap();
            for (i, row) in h.to_f64().chunks(cols).enumerate() {
                if r[i] == 0 { prop_assert!(row.iter().all(|&v| v == 0.0)); continue; }
                let mean: f64 = row.iter().sum::<f64>() / cols as f64;
                let var: f64 = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
                prop_assert!(mean.abs() < 1e-3, "mean {}", mean);
                prop_assert!((var - 1.0).abs() < 2e-3, "var {}", var);
            }
        }

        #[test]
        fn add_is_exact_when_it_fits(a in arb_b16(1..50), shift in 0i32..10) {
            let b = Bfp::new(a.mant.iter().map(|v| v / 2).collect(), a.exp + shift);
            let s = CpuKernels.add(&a, &b).unwrap();
            for i in 0..a.len() {
                let exact = a.value(i) + b.value(i);
                prop_assert!((s.value(i) - exact).abs() <= 2f64.powi(s.exp - 1));
            }
        }

        #[test]
        fn gelu_matches_float(x in arb_b16(1..100)) {
            let y = CpuKernels.gelu(&x).unwrap();
            for i in 0..x.len() {
                let v = x.value(i);
                let want = v / (1.0 + (-1.702 * v).exp());
                prop_assert!((y.value(i) - want).abs() <= 2f64.powi(y.exp) + 1e-6 * v.abs());
            }
        }
    }
}

mod gelu_bwd_tests {
    use super::*;

    #[test]
    fn gelu_bwd_table_path_equals_direct_path() {
        let n = 3 * (2 * B16_MANT_MAX as usize + 1);
        for e in [-20, -12, -3, 2] {
            let m: Vec<i32> = (0..n as u64)
                .map(|i| (crate::numerics::fixed::hash3(4, 9, i) % 65_535) as i32 - B16_MANT_MAX)
                .collect();
            let d: Vec<i32> = (0..n as u64)
                .map(|i| (crate::numerics::fixed::hash3(5, 9, i) % 65_535) as i32 - B16_MANT_MAX)
                .collect();
            let (x, dy) = (Bfp::new(m, e), Bfp::new(d, -30));
            let got = CpuKernels.gelu_bwd(&x, &dy).unwrap();
            let wide: Vec<i128> = x
                .mant
                .iter()
                .zip(&dy.mant)
                .map(|(&v, &g)| {
                    let (z, s) = crate::numerics::cpu::reference::gelu_sigma(v, e);
                    let s = s as i128;
                    let t = rhe(s * ((1i128 << 31) - s), 31);
                    g as i128 * (s + rhe(z * t, 16))
                })
                .collect();
            assert_eq!(
                got,
                requant_wide("gelu_bwd", &wide, -61, B16_MANT_MAX).unwrap()
            );
        }
    }
}
