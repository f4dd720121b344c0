//! Matmul timing shared by `leam compute bench` and the criterion benches: a backend's
//! [`Kernels::matmul`] against `matrixmultiply`'s sgemm (through ndarray's `general_mat_mul`,
//! which calls it; the raw `sgemm` entry point is `unsafe` and the workspace forbids `unsafe`)
//! on the same shapes, in the same process.

use std::time::Instant;

use ndarray::{linalg::general_mat_mul, Array2};

use super::selftest::seeded_mant;
use crate::fixed::B16_MANT_MAX;
use crate::kernels::{Bfp, KernelError, Kernels, MatmulShape};

/// The model's matmul shapes at nanoGPT's CPU configuration (batch 12 × context 64 = 768
/// rows, width 128, MLP 512, QKV 384) plus a square 512³.
pub const BENCH_SHAPES: [(usize, usize, usize); 4] = [
    (768, 128, 384),
    (768, 128, 512),
    (768, 512, 128),
    (512, 512, 512),
];

/// Timing of one shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Seconds per call (best of the repetitions).
    pub secs: f64,
    /// Integer (or float) operations per second, counting a multiply-add as 2, in 10^9.
    pub gops: f64,
}

fn timing(ops: f64, secs: f64) -> Timing {
    Timing {
        secs,
        gops: ops / secs / 1e9,
    }
}

/// Seeded B16 operands for `s`.
pub fn operands(s: MatmulShape) -> (Bfp, Bfp) {
    (
        Bfp::new(seeded_mant(101, s.batch * s.m * s.k, B16_MANT_MAX), -12),
        Bfp::new(seeded_mant(102, s.batch * s.k * s.n, B16_MANT_MAX), -12),
    )
}

/// Best-of-`reps` time of `backend.matmul` on `s` (after one warm-up call).
pub fn time_kernels(
    backend: &dyn Kernels,
    s: MatmulShape,
    reps: usize,
) -> Result<Timing, KernelError> {
    let (a, b) = operands(s);
    backend.matmul(&a, &b, s)?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let out = backend.matmul(&a, &b, s)?;
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(out);
    }
    Ok(timing(2.0 * s.macs() as f64, best))
}

/// Best-of-`reps` time of f32 sgemm (`matrixmultiply`) on the same shape and values.
pub fn time_sgemm(s: MatmulShape, reps: usize) -> Timing {
    let (a, b) = operands(s);
    let to_f32 = |v: &[i32], r: usize, c: usize| {
        Array2::from_shape_vec((r, c), v.iter().map(|&x| x as f32 / 32768.0).collect())
            .expect("operand length is r·c by construction")
    };
    let a = to_f32(&a.mant[..s.m * s.k], s.m, s.k);
    let b = to_f32(&b.mant[..s.k * s.n], s.k, s.n);
    let mut c = Array2::<f32>::zeros((s.m, s.n));
    general_mat_mul(1.0, &a, &b, 0.0, &mut c);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        general_mat_mul(1.0, &a, &b, 0.0, &mut c);
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&c);
    }
    timing(2.0 * (s.m * s.k * s.n) as f64, best)
}
