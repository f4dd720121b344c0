//! Device-resident tensors (`numerics::tensor` on wgpu) against the host path: the model's data
//! movement kernels (row gathers, head layouts) move exactly what the host code moves, resident
//! kernels give the CPU reference's bits, and an input a shader cannot take falls back to the
//! host with the same result, counted.

mod gpu_common;

use std::sync::OnceLock;

use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::gpu::{GpuKernels, WithCpuFallback};
use leam_compute::numerics::kernels::{Bfp, Kernels, MatmulShape};
use leam_compute::numerics::tensor::{layout, Exec, Tensor};
use proptest::prelude::*;

fn gpus() -> &'static [GpuKernels] {
    static GPUS: OnceLock<Vec<GpuKernels>> = OnceLock::new();
    GPUS.get_or_init(|| gpu_common::adapters("gpu_resident"))
}

fn b16(len: usize, seed: u64) -> Bfp {
    let mut x = seed | 1;
    let mant = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 65_535) as i32 - 32_767
        })
        .collect();
    Bfp::new(mant, -12)
}

fn resident(ex: &Exec<'_>, x: &Bfp) -> Tensor {
    let t = ex.put(x.clone()).expect("upload");
    assert!(
        matches!(t, Tensor::Dev(_)),
        "wgpu keeps tensors on the device"
    );
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn head_layouts_and_gathers_move_what_the_host_moves(
        b in 1usize..4, t in 1usize..9, h in 1usize..4, hs in 1usize..6, seed: u64,
    ) {
        let c = h * hs;
        let shape = (b, t, h, hs);
        let qkv = b16(b * t * 3 * c, seed);
        let ids: Vec<u32> = (0..b * t).map(|i| ((i as u64 * 7 + seed) % 5) as u32).collect();
        let table = b16(5 * c, seed ^ 1);
        for g in gpus() {
            let ex = Exec::new(g);
            let dq = resident(&ex, &qkv);
            let mut parts = Vec::new();
            for part in 0..3 {
                let got = ex.split_heads(&dq, shape, 3 * c, part).unwrap();
                prop_assert_eq!(
                    ex.get(&got).unwrap().into_owned(),
                    layout::split_heads(&qkv, shape, 3 * c, part)
                );
                parts.push(got);
            }
            let merged = ex.merge_heads(&[&parts[0], &parts[1], &parts[2]], shape).unwrap();
            prop_assert_eq!(ex.get(&merged).unwrap().into_owned(), qkv.clone());
            let dt = resident(&ex, &table);
            let got = ex.gather_rows(&dt, c, &ex.ids(&ids).unwrap()).unwrap();
            let want = layout::gather_rows(&table, c, ids.iter().map(|&i| i as usize));
            prop_assert_eq!(ex.get(&got).unwrap().into_owned(), want);
            let got = ex.gather_positions(&dt, c, t.min(5), b * t).unwrap();
            let want = layout::gather_rows(&table, c, (0..b * t).map(|r| r % t.min(5)));
            prop_assert_eq!(ex.get(&got).unwrap().into_owned(), want);
            prop_assert_eq!(ex.fallbacks(), 0);
        }
    }

    #[test]
    fn resident_kernels_chain_to_the_cpu_references_bits(
        m in 1usize..40, k in 1usize..40, n in 1usize..40, seed: u64,
    ) {
        let (a, w) = (b16(m * k, seed), b16(n * k, seed ^ 7));
        let shape = MatmulShape::new(m, k, n).tb();
        let cpu = CpuKernels;
        let p = cpu.matmul(&a, &w, shape).unwrap();
        let want = cpu.gelu(&cpu.add(&p, &p).unwrap()).unwrap();
        for g in gpus() {
            let ex = Exec::new(g);
            let p = ex.matmul(&resident(&ex, &a), &resident(&ex, &w), shape).unwrap();
            let got = ex.gelu(&ex.add(&p, &p).unwrap()).unwrap();
            prop_assert!(matches!(got, Tensor::Dev(_)));
            prop_assert_eq!(ex.take(got).unwrap(), want.clone());
            prop_assert_eq!(ex.fallbacks(), 0);
        }
    }
}

/// Rows wider than the GPU layernorm takes (256) run on the host interface from resident
/// inputs: the CPU reference's bits, the result back on the device, one counted fallback.
#[test]
fn an_input_beyond_a_shader_falls_back_to_the_host_with_the_same_bits() {
    let (rows, cols) = (3, 300);
    let x = b16(rows * cols, 42);
    let (want, want_r) = CpuKernels.layernorm(&x, rows, cols).unwrap();
    for g in gpu_common::adapters("gpu_resident fallback") {
        // The host interface of plain `GpuKernels` refuses such rows too; the wrapper the
        // training commands use runs them on the CPU reference.
        let g = WithCpuFallback::new(g);
        let ex = Exec::new(&g);
        let (y, _r) = ex.layernorm(&resident(&ex, &x), rows, cols).unwrap();
        assert!(
            matches!(y, Tensor::Dev(_)),
            "{}: result placed like its input",
            g.name()
        );
        assert_eq!(ex.take(y).unwrap(), want, "{}", g.name());
        assert_eq!(
            ex.fallbacks(),
            1,
            "{}: one kernel ran off the device",
            g.name()
        );
        assert!(!want_r.is_empty());
    }
}
