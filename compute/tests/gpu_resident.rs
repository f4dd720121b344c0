//! Device-resident tensors (`numerics::tensor` on wgpu) against the host path: the model's data
//! movement kernels (row gathers, head layouts) move exactly what the host code moves, resident
//! kernels give the CPU reference's bits, and an input a shader cannot take falls back to the
//! host with the same result, counted. Deferred stretches (shifts taken from exponents on the
//! device) give the same bits and the same exponents on both sides, and one whose range check
//! fails is reported for replay.

mod gpu_common;

use std::sync::OnceLock;

use leam_compute::model::optim::{clip_coeff_q30, Hyper};
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

/// The exponent of a resident tensor on the device equals the host's.
fn same_exponents(g: &GpuKernels, t: &Tensor) {
    let d = t.as_dev().expect("a resident result");
    let r = g.resident_kernels();
    assert_eq!(
        r.device_exp_and_bound(d).unwrap(),
        r.exp_and_bound(d).unwrap(),
        "{}: device and host exponent arithmetic agree",
        g.name()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// A chain whose shifts depend on exponents the host does not know yet (add, gelu,
    /// softmax, gelu_bwd, rescaling to a common exponent), recorded in one deferred stretch:
    /// the CPU reference's bits, every exponent equal on the device and the host, no replay.
    #[test]
    fn a_deferred_chain_gives_the_cpu_references_bits_and_exponents(
        m in 1usize..24, k in 1usize..24, n in 1usize..24, seed: u64,
    ) {
        let (a, w, v) = (b16(m * k, seed), b16(n * k, seed ^ 7), b16(n * k, seed ^ 9));
        let shape = MatmulShape::new(m, k, n).tb();
        let c = CpuKernels;
        let p = c.matmul(&a, &w, shape).unwrap();
        let q = c.matmul(&a, &v, shape).unwrap();
        let s = c.add(&p, &q).unwrap();
        let y = c.gelu(&s).unwrap();
        let z = c.softmax(&y, m, n, false, 1 << 16).unwrap();
        let d = c.gelu_bwd(&s, &z).unwrap();
        let e = [&p, &z, &d].iter().map(|t| t.exp).max().unwrap();
        let want: Vec<Bfp> = [&p, &z, &d].iter().map(|t| c.rescale(t, e).unwrap()).collect();
        for g in gpus() {
            let ex = Exec::new(g);
            let (ra, rw, rv) = (resident(&ex, &a), resident(&ex, &w), resident(&ex, &v));
            let got = ex
                .deferred(|| {
                    let p = ex.matmul(&ra, &rw, shape)?;
                    let q = ex.matmul(&ra, &rv, shape)?;
                    let s = ex.add(&p, &q)?;
                    let y = ex.gelu(&s)?;
                    let z = ex.softmax(&y, m, n, false, 1 << 16)?;
                    let d = ex.gelu_bwd(&s, &z)?;
                    let al = ex.rescale_to_max(&[&p, &z, &d])?;
                    Ok::<_, leam_compute::numerics::kernels::KernelError>((vec![p, s, y, z, d], al))
                })
                .unwrap()
                .expect("every deferred check holds");
            let (chain, al) = got;
            for t in chain.iter().chain(&al) {
                same_exponents(g, t);
            }
            let got: Vec<Bfp> = al.into_iter().map(|t| ex.take(t).unwrap()).collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(ex.take(chain[2].clone()).unwrap(), y.clone());
            prop_assert_eq!(ex.fallbacks(), 0);
            prop_assert_eq!(ex.replays(), 0);
        }
    }
}

/// An add whose operands' exponents (unknown when it is recorded) lie 40 bits apart with
/// 23-bit mantissas is beyond the shader: the deferred stretch reports it, and the same add
/// run again without deferring falls back to the host with the CPU reference's bits.
#[test]
fn a_failed_deferred_check_is_reported_and_the_replay_gives_the_reference_bits() {
    let wide = Bfp::new(vec![(1 << 22) + 3, -(1 << 22) - 5, 7], 0);
    let small = Bfp::new(b16(3, 5).mant, -40);
    let c = CpuKernels;
    let (wa, sb) = (
        c.requant(&wide, (1 << 23) - 1).unwrap(),
        c.requant(&small, (1 << 15) - 1).unwrap(),
    );
    let want = c.add(&wa, &sb).unwrap();
    for g in gpu_common::adapters("gpu_resident replay") {
        let g = WithCpuFallback::new(g);
        let ex = Exec::new(&g);
        let (a, b) = (resident(&ex, &wide), resident(&ex, &small));
        let out = ex
            .deferred(|| {
                let a = ex.requant(&a, (1 << 23) - 1)?;
                let b = ex.requant(&b, (1 << 15) - 1)?;
                ex.add(&a, &b)
            })
            .unwrap();
        assert_eq!(
            out.err(),
            Some("add"),
            "{}: the add's range check failed",
            g.name()
        );
        assert_eq!(ex.replays(), 1, "{}", g.name());
        let (a, b) = (
            ex.requant(&a, (1 << 23) - 1).unwrap(),
            ex.requant(&b, (1 << 15) - 1).unwrap(),
        );
        let got = ex.add(&a, &b).unwrap();
        assert_eq!(ex.take(got).unwrap(), want, "{}", g.name());
        assert_eq!(
            ex.fallbacks(),
            1,
            "{}: the replayed add ran on the host",
            g.name()
        );
    }
}

/// Two executors on one backend, one stretch inside the other: each stretch's checks are its
/// own, so the inner one (all in range) passes while the outer one (an add beyond the shader)
/// is reported, and neither's result depends on the other.
#[test]
fn executors_sharing_a_backend_keep_their_own_deferred_checks() {
    let wide = Bfp::new(vec![(1 << 22) + 3, -(1 << 22) - 5, 7], 0);
    let small = Bfp::new(b16(3, 5).mant, -40);
    let (x, w) = (b16(6, 11), b16(6, 13));
    let c = CpuKernels;
    let want = c.gelu(&c.add(&x, &w).unwrap()).unwrap();
    for g in gpu_common::adapters("gpu_resident two executors") {
        let g = WithCpuFallback::new(g);
        let (outer, inner) = (Exec::new(&g), Exec::new(&g));
        let (a, b) = (resident(&outer, &wide), resident(&outer, &small));
        let (rx, rw) = (resident(&inner, &x), resident(&inner, &w));
        let out = outer
            .deferred(|| {
                let a = outer.requant(&a, (1 << 23) - 1)?;
                let b = outer.requant(&b, (1 << 15) - 1)?;
                let s = outer.add(&a, &b)?;
                let got = inner
                    .deferred(|| {
                        let p = inner.requant(&rx, (1 << 15) - 1)?;
                        inner.gelu(&inner.add(&p, &rw)?)
                    })
                    .unwrap()
                    .expect("the inner stretch's checks hold");
                assert_eq!(inner.take(got).unwrap(), want, "{}", g.name());
                Ok::<_, leam_compute::numerics::kernels::KernelError>(s)
            })
            .unwrap();
        assert_eq!(out.err(), Some("add"), "{}", g.name());
        assert_eq!((outer.replays(), inner.replays()), (1, 0), "{}", g.name());
        assert_eq!(inner.fallbacks(), 0, "{}", g.name());
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

/// The host's clipping: [`clip_coeff_q30`] on the CPU, then `scale` (or the gradients as
/// they are), and whether it clipped.
fn host_clip(grads: &[Bfp], clip_q30: i64) -> (Vec<Bfp>, bool) {
    let cpu = CpuKernels;
    let ex = Exec::new(&cpu);
    let mut h = Hyper::nanogpt_cpu().to_fixed().unwrap();
    h.grad_clip_q30 = clip_q30;
    let ts: Vec<Tensor> = grads.iter().cloned().map(Tensor::Host).collect();
    match clip_coeff_q30(&ex, &h, &ts).unwrap() {
        Some(c) => (
            grads.iter().map(|g| cpu.scale(g, c).unwrap()).collect(),
            true,
        ),
        None => (grads.to_vec(), false),
    }
}

/// Clips `grads` on the device (in a deferred stretch or not) and checks the host's bits,
/// exponents on both sides, the flag, and that nothing fell back or replayed; returns the
/// flag.
fn check_device_clip(grads: &[Bfp], clip_q30: i64, deferred: bool) -> bool {
    let (want, clipped) = host_clip(grads, clip_q30);
    for g in gpus() {
        let ex = Exec::new(g);
        let dev: Vec<Tensor> = grads.iter().map(|b| resident(&ex, b)).collect();
        let run = || {
            ex.clip_resident(&dev, clip_q30)
                .expect("resident gradients")
        };
        let (got, flag) = if deferred {
            ex.deferred(run).unwrap().expect("no deferred check fails")
        } else {
            run().unwrap()
        };
        assert_eq!(ex.value(&flag).unwrap(), i64::from(clipped), "{}", g.name());
        for t in &got {
            same_exponents(g, t);
        }
        let got: Vec<Bfp> = got.into_iter().map(|t| ex.take(t).unwrap()).collect();
        assert_eq!(got, want, "{}: clipped gradients", g.name());
        assert_eq!((ex.fallbacks(), ex.replays()), (0, 0), "{}", g.name());
    }
    clipped
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// Clipping on the device (`clip.wgsl`: 128-bit sums, integer square root, rounded
    /// division) gives the host's coefficient, bits and exponents, whether the norm is above
    /// the clip or not, for exponents far apart, empty gradients and small mantissas (zeros
    /// among them).
    #[test]
    fn clipping_on_the_device_gives_the_host_coefficients_bits(
        parts in prop::collection::vec((0usize..300, -80i32..40, any::<bool>()), 1..7),
        clip_q30 in 1i64..(1 << 50),
        seed: u64,
        deferred: bool,
    ) {
        let grads: Vec<Bfp> = parts
            .iter()
            .enumerate()
            .map(|(i, &(len, exp, small))| {
                let mut b = b16(len, seed ^ i as u64);
                if small {
                    b.mant.iter_mut().for_each(|m| *m /= 4096);
                }
                Bfp::new(b.mant, exp)
            })
            .collect();
        check_device_clip(&grads, clip_q30, deferred);
    }
}

/// Both branches of clipping, and the far ends of the exponent range the shader clamps.
#[test]
fn clipping_on_the_device_covers_both_branches_and_extreme_norms() {
    let clip = 1 << 30; // 1.0
    let g = |exp: i32| {
        vec![
            Bfp::new(b16(64, 3).mant, exp),
            Bfp::new(b16(5, 4).mant, exp - 7),
        ]
    };
    assert!(
        check_device_clip(&g(-5), clip, true),
        "norm ≈ 2^13: clipped"
    );
    assert!(
        !check_device_clip(&g(-30), clip, true),
        "norm ≈ 2^-12: as it is"
    );
    // Norms beyond 2^60 · clip (coefficient 0) and below 2^−60 · clip (no clipping).
    assert!(check_device_clip(&g(100), clip, false));
    assert!(!check_device_clip(&g(-200), clip, false));
    // All zero: no norm, no clipping.
    assert!(!check_device_clip(&[Bfp::new(vec![0; 9], 3)], clip, true));
}
