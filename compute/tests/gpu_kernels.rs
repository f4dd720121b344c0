//! Every wgpu kernel, on every adapter present, bit for bit against `CpuKernels` on random
//! shapes including edge sizes (1, non-multiples of the 16-wide tile, sums beyond 2^32).

mod gpu_common;

use std::sync::OnceLock;

use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::gpu::GpuKernels;
use leam_compute::numerics::kernels::{Bfp, KernelError, Kernels, MatmulShape};
use proptest::prelude::*;

fn gpus() -> &'static [GpuKernels] {
    static GPUS: OnceLock<Vec<GpuKernels>> = OnceLock::new();
    GPUS.get_or_init(|| gpu_common::adapters("gpu_kernels"))
}

/// Asserts that every adapter returns exactly what the CPU reference returns (errors included).
fn same_on_all<T: PartialEq + std::fmt::Debug>(
    what: &str,
    run: impl Fn(&dyn Kernels) -> Result<T, KernelError>,
) -> Result<(), TestCaseError> {
    let want = run(&CpuKernels);
    for g in gpus() {
        let got = run(g);
        prop_assert!(
            got == want,
            "{what} on {}: got {:?}, CPU reference {:?}",
            g.name(),
            got.as_ref().map(|_| "(value)"),
            want.as_ref().map(|_| "(value)")
        );
    }
    Ok(())
}

/// Like [`same_on_all`], but a backend may also answer `Unsupported` (ops that hand rare
/// extreme inputs to the CPU reference); then `supported` must be false.
fn same_or_unsupported<T: PartialEq + std::fmt::Debug>(
    what: &str,
    supported: bool,
    run: impl Fn(&dyn Kernels) -> Result<T, KernelError>,
) -> Result<(), TestCaseError> {
    let want = run(&CpuKernels);
    for g in gpus() {
        match run(g) {
            Err(KernelError::Unsupported { .. }) => {
                prop_assert!(!supported, "{what} on {}: Unsupported", g.name())
            }
            got => prop_assert!(got == want, "{what} on {}: differs from the CPU", g.name()),
        }
    }
    Ok(())
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), 1usize..40, Just(16), Just(17), Just(33)]
}

fn arb_matmul() -> impl Strategy<Value = (Bfp, Bfp, MatmulShape)> {
    (
        1usize..4,
        dim(),
        prop_oneof![dim(), 300usize..700],
        dim(),
        any::<bool>(),
        any::<bool>(),
        -30i32..30,
        -30i32..30,
        prop_oneof![Just(15u32), 0u32..16],
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
            let lim = ((1i32 << bits) - 1).min(32_767);
            (
                proptest::collection::vec(-lim..=lim, batch * m * k),
                proptest::collection::vec(-lim..=lim, batch * k * n),
            )
                .prop_map(move |(am, bm)| (Bfp::new(am, ea), Bfp::new(bm, eb), s))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matmul_bit_exact((a, b, s) in arb_matmul()) {
        same_on_all("matmul", |k| k.matmul(&a, &b, s))?;
    }
}

#[test]
fn matmul_sums_beyond_2_pow_32_and_rounding_up_to_the_next_shift() {
    // K = 4099 extreme products: |sum| ≈ 2^42 (beyond 32 bits, needs the carries), K not a
    // multiple of the tile; mixed signs make negative sums and ties.
    let k = 4099;
    let a: Vec<i32> = (0..2 * k)
        .map(|i| if i % 3 == 0 { -32_767 } else { 32_767 })
        .collect();
    let b: Vec<i32> = (0..k * 3)
        .map(|i| {
            if i % 5 == 0 {
                32_767
            } else {
                -32_767 + (i as i32 % 7)
            }
        })
        .collect();
    let (a, b) = (Bfp::new(a, -3), Bfp::new(b, 4));
    let s = MatmulShape::new(2, k, 3);
    same_on_all("matmul large K", |kk| kk.matmul(&a, &b, s)).unwrap();
    // max|s| = 65535·2^j exactly rounds up to 2^15 at shift j+1: the bump of the contract.
    let a = Bfp::new(vec![65_535 / 5, 1, 0, -1], 0);
    let b = Bfp::new(vec![5, 0, 0, 0], 0);
    let s = MatmulShape::new(2, 2, 2);
    same_on_all("matmul tie", |kk| kk.matmul(&a, &b, s)).unwrap();
}

#[test]
fn matmul_bad_input_gives_the_same_precise_error() {
    let s = MatmulShape::new(2, 3, 2);
    let a = Bfp::new(vec![0; 6], 0);
    let mut b = Bfp::new(vec![0; 6], 0);
    b.mant[4] = -32_768;
    same_on_all("matmul -32768", |k| k.matmul(&a, &b, s)).unwrap();
    let short = Bfp::new(vec![0; 5], 0);
    same_on_all("matmul short", |k| k.matmul(&a, &short, s)).unwrap();
    for g in gpus() {
        assert!(matches!(
            g.matmul(&a, &short, s),
            Err(KernelError::Shape {
                operand: "b",
                expected: 6,
                found: 5,
                ..
            })
        ));
    }
}

#[test]
fn shape_beyond_the_adapter_limits_is_a_limit_error_not_a_hang() {
    for g in gpus() {
        let max = g.limits().max_compute_workgroups_per_dimension as usize;
        // batch above the per-dimension workgroup bound, each product 1×1×1.
        let batch = max + 1;
        let a = Bfp::new(vec![1; batch], 0);
        let b = Bfp::new(vec![1; batch], 0);
        let s = MatmulShape::new(1, 1, 1).batched(batch);
        match g.matmul(&a, &b, s) {
            Err(KernelError::Limit {
                requested, max: m, ..
            }) => {
                assert_eq!((requested, m), (batch as u64, max as u64))
            }
            other => panic!("{}: expected Limit, got {:?}", g.name(), other.map(|_| ())),
        }
    }
}

#[test]
fn adapters_have_stable_fingerprints() {
    for g in gpus() {
        let f = g.fingerprint();
        let text = f.to_string();
        eprintln!("{text}\nfingerprint {}", f.digest_hex());
        assert!(text.starts_with(&format!("backend {}", f.adapter.backend)));
        assert_eq!(
            f.shader_sha256.len(),
            leam_compute::numerics::gpu::shaders::SHADERS.len()
        );
        assert_eq!(f.digest_hex(), f.clone().digest_hex());
    }
}

fn mant(len: usize, bits: u32) -> impl Strategy<Value = Vec<i32>> {
    let lim = ((1i64 << bits) - 1).min(32_767) as i32;
    proptest::collection::vec(-lim..=lim, len)
}

fn rows_cols() -> impl Strategy<Value = (usize, usize)> {
    (
        prop_oneof![Just(0usize), 1usize..70, Just(300)],
        prop_oneof![Just(1usize), 1usize..40, Just(257)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn requant_bit_exact(
        x in prop_oneof![
            proptest::collection::vec(any::<i32>(), 0..600),
            proptest::collection::vec(-70_000i32..70_000, 0..600),
        ],
        e in -40i32..40,
        wide in any::<bool>(),
    ) {
        let x = Bfp::new(x, e);
        let mm = if wide { (1 << 23) - 1 } else { 32_767 };
        same_on_all("requant", |k| k.requant(&x, mm))?;
    }

    #[test]
    fn rescale_bit_exact(x in proptest::collection::vec(any::<i32>(), 0..600), e in -5i32..5, up in prop_oneof![0i32..40, Just(70), Just(1000)]) {
        let x = Bfp::new(x, e);
        same_on_all("rescale", |k| k.rescale(&x, e + up))?;
        same_on_all("rescale down", |k| k.rescale(&x, e - 1))?;
    }

    #[test]
    fn mul_cols_bit_exact(((rows, cols), bits) in (rows_cols(), 0u32..16), seed in any::<u64>()) {
        let x = Bfp::new(seeded(seed, rows * cols, bits), -9);
        let w = Bfp::new(seeded(seed ^ 1, cols, bits), 2);
        same_on_all("mul_cols", |k| k.mul_cols(&x, &w, rows, cols))?;
    }

    #[test]
    fn col_dot_bit_exact(((rows, cols), bits) in (rows_cols(), 0u32..16), seed in any::<u64>()) {
        let a = Bfp::new(seeded(seed, rows * cols, bits), -9);
        let b = Bfp::new(seeded(seed ^ 2, rows * cols, bits), 5);
        same_on_all("col_dot", |k| k.col_dot(&a, &b, rows, cols))?;
    }

    #[test]
    fn scale_bit_exact(x in mant(300, 15), c in prop_oneof![any::<i32>().prop_map(i64::from), -(1i64 << 47) + 1..(1i64 << 47)]) {
        let x = Bfp::new(x, -3);
        same_on_all("scale", |k| k.scale(&x, c))?;
    }

    #[test]
    fn sum_squares_bit_exact(x in prop_oneof![mant(2000, 15), mant(3, 4)]) {
        let x = Bfp::new(x, 0);
        same_on_all("sum_squares", |k| k.sum_squares(&x))?;
    }

    #[test]
    fn scatter_add_rows_bit_exact(
        (n_src, out_rows, cols) in (0usize..300, 1usize..70, 1usize..40),
        seed in any::<u64>(),
    ) {
        let src = Bfp::new(seeded(seed, n_src * cols, 15), -4);
        let idx: Vec<u32> = (0..n_src)
            .map(|i| (leam_compute::numerics::fixed::hash3(seed, 9, i as u64) % out_rows as u64) as u32)
            .collect();
        same_on_all("scatter_add_rows", |k| k.scatter_add_rows(&src, &idx, out_rows, cols))?;
    }
}

/// Counter-based B-bit mantissas (proptest shrinks the seed, not thousands of elements).
fn seeded(seed: u64, len: usize, bits: u32) -> Vec<i32> {
    let span = 2 * (((1u64 << bits) - 1).min(32_767)) + 1;
    let half = (span / 2) as i32;
    (0..len)
        .map(|i| (leam_compute::numerics::fixed::hash3(seed, 0, i as u64) % span) as i32 - half)
        .collect()
}

#[test]
fn elementwise_bad_input_gives_the_same_precise_error() {
    let x = Bfp::new(vec![1, 2, 40_000, 4], 0);
    let w = Bfp::new(vec![1, 2], 0);
    same_on_all("mul_cols range", |k| k.mul_cols(&x, &w, 2, 2)).unwrap();
    same_on_all("mul_cols shape", |k| k.mul_cols(&x, &w, 3, 2)).unwrap();
    same_on_all("col_dot range", |k| k.col_dot(&x, &x, 2, 2)).unwrap();
    same_on_all("scale range", |k| k.scale(&x, 5)).unwrap();
    same_on_all("sum_squares range", |k| k.sum_squares(&x)).unwrap();
    let ok = Bfp::new(vec![1, 2, 3, 4], 0);
    same_on_all("scatter idx", |k| k.scatter_add_rows(&ok, &[0, 7], 3, 2)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn add_bit_exact(
        len in prop_oneof![Just(0usize), 1usize..600],
        (ea, eb) in (-60i32..60, -60i32..60),
        bits in prop_oneof![Just(23u32), 0u32..24],
        seed in any::<u64>(),
    ) {
        let wide = |s: u64| -> Vec<i32> {
            let lim = (1i64 << bits) - 1;
            (0..len).map(|i| ((leam_compute::numerics::fixed::hash3(seed ^ s, 3, i as u64) % (2 * lim as u64 + 1)) as i64 - lim) as i32).collect()
        };
        let a = Bfp::new(wide(0), ea);
        let b = Bfp::new(wide(1), eb);
        // Exact on the GPU unless a 23-bit mantissa meets a gap of 38+ bits (the sum could
        // then need 64 bits plus sign); those rare inputs are left to the CPU reference.
        let gpu_exact = bits + ((ea - eb).abs().min(40) as u32) <= 61;
        same_or_unsupported("add", gpu_exact, |k| k.add(&a, &b))?;
        same_on_all("add near gap", |k| k.add(&a, &Bfp::new(b.mant.clone(), ea + 3)))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn gelu_and_gelu_bwd_bit_exact(
        len in prop_oneof![Just(0usize), 1usize..700],
        e in prop_oneof![-20i32..-8, -40i32..30, Just(0), Just(-100), Just(100)],
        bits in prop_oneof![Just(15u32), 0u32..16],
        seed in any::<u64>(),
    ) {
        let x = Bfp::new(seeded(seed, len, bits), e);
        let dy = Bfp::new(seeded(seed ^ 7, len, 15), -6);
        same_on_all("gelu", |k| k.gelu(&x))?;
        same_on_all("gelu_bwd", |k| k.gelu_bwd(&x, &dy))?;
    }
}

#[test]
fn gelu_covers_every_mantissa_at_the_model_exponents() {
    // All 65535 B16 mantissas at the exponents activations take in training.
    let all: Vec<i32> = (-32_767..=32_767).collect();
    let dy = Bfp::new(all.iter().map(|v| (v * 7) % 32_767).collect(), -9);
    for e in [-13, -9] {
        let x = Bfp::new(all.clone(), e);
        same_on_all("gelu all", |k| k.gelu(&x)).unwrap();
        same_on_all("gelu_bwd all", |k| k.gelu_bwd(&x, &dy)).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn softmax_bit_exact(
        ((rows, cols), bits) in ((prop_oneof![Just(0usize), 1usize..200], prop_oneof![Just(1usize), 1usize..80]), 0u32..16),
        e in prop_oneof![-20i32..-5, -60i32..60],
        causal in any::<bool>(),
        scale in prop_oneof![Just(1u32 << 16), Just(11_585u32), any::<u32>()],
        seed in any::<u64>(),
    ) {
        let x = Bfp::new(seeded(seed, rows * cols, bits), e);
        same_on_all("softmax", |k| k.softmax(&x, rows, cols, causal, scale))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn layernorm_bit_exact(
        rows in prop_oneof![Just(0usize), 1usize..100],
        cols in prop_oneof![Just(1usize), 1usize..130, Just(256)],
        bits in prop_oneof![Just(15u32), 0u32..16],
        e in -30i32..30,
        seed in any::<u64>(),
    ) {
        let x = Bfp::new(seeded(seed, rows * cols, bits), e);
        same_on_all("layernorm", |k| k.layernorm(&x, rows, cols))?;
    }
}

#[test]
fn layernorm_extremes() {
    // Constant rows (S = 0), alternating extremes (largest d and S) at the widest GPU row.
    let cols = 256;
    let mut m = vec![5; cols];
    m.extend((0..cols).map(|i| if i % 2 == 0 { 32_767 } else { -32_767 }));
    m.extend((0..cols).map(|i| if i == 0 { 32_767 } else { -32_767 }));
    let x = Bfp::new(m, -3);
    same_on_all("layernorm extremes", |k| k.layernorm(&x, 3, cols)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn layernorm_bwd_bit_exact(
        rows in prop_oneof![Just(0usize), 1usize..60],
        cols in prop_oneof![Just(1usize), 2usize..130, Just(256)],
        bits in prop_oneof![Just(15u32), 0u32..16],
        (e, ge) in (-30i32..30, -30i32..10),
        seed in any::<u64>(),
    ) {
        // xhat and R from the forward (as the model calls it), dxhat arbitrary.
        let x = Bfp::new(seeded(seed, rows * cols, bits), e);
        let (xhat, r) = CpuKernels.layernorm(&x, rows, cols).unwrap();
        let g = Bfp::new(seeded(seed ^ 5, rows * cols, 15), ge);
        same_on_all("layernorm_bwd", |k| k.layernorm_bwd(&g, &xhat, &r, x.exp, rows, cols))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn softmax_bwd_bit_exact(
        rows in prop_oneof![Just(0usize), 1usize..100],
        cols in prop_oneof![Just(1usize), 1usize..80],
        (pe, de) in (-30i32..=0, -40i32..10),
        scale in prop_oneof![Just(1u32 << 16), Just(11_585u32), any::<u32>()],
        seed in any::<u64>(),
    ) {
        let p = Bfp::new(seeded(seed, rows * cols, 15), pe);
        let dp = Bfp::new(seeded(seed ^ 3, rows * cols, 15), de);
        same_on_all("softmax_bwd", |k| k.softmax_bwd(&p, &dp, rows, cols, scale))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn cross_entropy_bit_exact(
        rows in prop_oneof![Just(0usize), 1usize..100],
        cols in prop_oneof![Just(1usize), 1usize..80],
        bits in prop_oneof![Just(15u32), 0u32..16],
        e in prop_oneof![-20i32..-5, -70i32..70],
        seed in any::<u64>(),
    ) {
        let x = Bfp::new(seeded(seed, rows * cols, bits), e);
        let targets: Vec<u32> = (0..rows as u64)
            .map(|i| (leam_compute::numerics::fixed::hash3(seed, 11, i) % cols as u64) as u32)
            .collect();
        same_on_all("cross_entropy", |k| k.cross_entropy(&x, &targets, rows, cols))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn adamw_bit_exact(
        len in prop_oneof![Just(0usize), 1usize..600],
        (pe, ge, me, re) in (-35i32..-15, -40i32..-10, -40i32..-10, -40i32..-10),
        it in 0u64..3000,
        decay in any::<bool>(),
        zero_moments in any::<bool>(),
        realistic in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let h = leam_compute::model::optim::Hyper::nanogpt_cpu().to_fixed().unwrap();
        let st = leam_compute::model::optim::adam_step(&h, it, decay);
        let p = Bfp::new(seeded(seed, len, 15).iter().map(|v| v * 200).collect(), pe);
        let g = Bfp::new(seeded(seed ^ 1, len, 15), ge);
        let (m, r) = if zero_moments {
            (Bfp::zeros(len, -30), Bfp::zeros(len, -30))
        } else if realistic {
            // As in training: r (= sqrt v) at least |m| at the same exponent.
            let mm = seeded(seed ^ 2, len, 15);
            let rr = mm.iter().map(|v| v.abs().max(1)).collect();
            (Bfp::new(mm, me), Bfp::new(rr, me))
        } else {
            (
                Bfp::new(seeded(seed ^ 2, len, 15), me),
                Bfp::new(seeded(seed ^ 3, len, 15).iter().map(|v| v.abs()).collect(), re),
            )
        };
        // The GPU takes every update whose magnitude fits 60 bits (always in training, where
        // |m'| is at most about r'); wider ones (|m'| far above r', as random moments can
        // be) are left to the CPU reference. Recompute that bound from the CPU's m', r'.
        let bits = |v: u64| 64 - v.leading_zeros() as i64;
        let supported = match CpuKernels.adamw(&p, &g, &m, &r, &st) {
            Ok((_, m2, r2)) => {
                let m_bits = bits(m2.mant.iter().map(|v| v.unsigned_abs() as u64).max().unwrap_or(0));
                let sh = (p.exp as i64 - 16) - (m2.exp as i64 - r2.exp as i64 - 70);
                m_bits == 0 || bits(st.alpha_q40.unsigned_abs()) + m_bits + 30 - sh <= 60
            }
            Err(_) => true,
        };
        same_or_unsupported("adamw", supported, |k| k.adamw(&p, &g, &m, &r, &st))?;
    }
}

#[test]
fn output_beyond_the_storage_binding_limit_is_a_limit_error() {
    for g in gpus() {
        // 1×1 products whose output (8-byte exact sums) exceeds the largest storage binding.
        let max = g.limits().max_storage_buffer_binding_size;
        let m = 4096usize;
        let n = (max / 8 / m as u64 + 1) as usize;
        let a = Bfp::new(vec![1; m], 0);
        let b = Bfp::new(vec![1; n], 0);
        let s = MatmulShape::new(m, 1, n);
        match g.matmul(&a, &b, s) {
            Err(KernelError::Limit {
                what,
                requested,
                max: lim,
            }) => {
                eprintln!("{}: {what}: requested {requested}, max {lim}", g.name());
                assert!(requested > lim)
            }
            other => panic!("{}: expected Limit, got {:?}", g.name(), other.map(|_| ())),
        }
    }
}
