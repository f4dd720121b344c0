//! Every wgpu kernel, on every adapter present, bit for bit against `CpuKernels` on random
//! shapes including edge sizes (1, non-multiples of the 16-wide tile, sums beyond 2^32).

mod gpu_common;

use std::sync::OnceLock;

use leam_compute::gpu::GpuKernels;
use leam_compute::kernels::{Bfp, CpuKernels, KernelError, Kernels, MatmulShape};
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
            leam_compute::gpu::shaders::SHADERS.len()
        );
        assert_eq!(f.digest_hex(), f.clone().digest_hex());
    }
}
