//! Matmul timing shared by `leam compute bench` and the criterion benches: a backend's
//! [`Kernels::matmul`] against `matrixmultiply`'s sgemm (through ndarray's `general_mat_mul`,
//! which calls it; the raw `sgemm` entry point is `unsafe` and the workspace forbids `unsafe`)
//! on the same shapes, in the same process.

use std::time::Instant;

use ndarray::{linalg::general_mat_mul, Array2};

use super::selftest::seeded_mant;
use crate::numerics::fixed::B16_MANT_MAX;
use crate::numerics::kernels::{Bfp, KernelError, Kernels, MatmulShape};

/// The model's matmul shapes at nanoGPT's CPU configuration (batch 12 × context 64 = 768
/// rows, width 128, MLP 512, QKV 384) plus a square 512³.
pub const BENCH_SHAPES: [(usize, usize, usize); 4] = [
    (768, 128, 384),
    (768, 128, 512),
    (768, 512, 128),
    (512, 512, 512),
];

/// The other products of one nanoGPT CPU training step, beyond [`BENCH_SHAPES`]: the backward
/// forms with a transposed operand (K up to 768), batched attention (48 heads·batches of
/// 64×32·32×64 and 64×64·64×32) and the 65-token head, forward and backward.
pub const BENCH_MODEL_SHAPES: [MatmulShape; 9] = [
    shape(1, 768, 384, 128, false, true),
    shape(1, 128, 768, 384, true, false),
    shape(1, 512, 768, 128, true, false),
    shape(1, 768, 128, 128, false, false),
    shape(48, 64, 32, 64, false, true),
    shape(48, 64, 64, 32, false, false),
    shape(48, 64, 64, 32, true, false),
    shape(1, 768, 128, 65, false, false),
    shape(1, 768, 65, 128, false, true),
];

const fn shape(
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
) -> MatmulShape {
    MatmulShape {
        batch,
        m,
        k,
        n,
        trans_a,
        trans_b,
    }
}

/// Shortest measurement: one measurement repeats the call until it lasts this long (and
/// divides), so timer resolution, cache warm-up and fork/join jitter average out, while a
/// preemption by another process spoils one measurement, which best-of then drops.
pub const MEASURE_SECS_MIN: f64 = 0.025;
/// Warm-up before measuring: page faults, lazy initialisation, frequency ramp.
const WARMUP_SECS_MIN: f64 = 0.01;

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

/// A call under measurement: warmed up, then timed in runs of `calls` calls.
struct Timed<F> {
    f: F,
    calls: usize,
    best: f64,
}

impl<T, F: FnMut() -> Result<T, KernelError>> Timed<F> {
    /// Warms `f` up for at least [`WARMUP_SECS_MIN`] (and 2 calls) and sizes one measurement
    /// to at least [`MEASURE_SECS_MIN`].
    fn new(mut f: F) -> Result<Self, KernelError> {
        let t = Instant::now();
        let mut n = 0usize;
        while n < 2 || t.elapsed().as_secs_f64() < WARMUP_SECS_MIN {
            std::hint::black_box(f()?);
            n += 1;
        }
        let per_call = t.elapsed().as_secs_f64() / n as f64;
        let calls = (MEASURE_SECS_MIN / per_call.max(1e-9)).ceil().max(1.0) as usize;
        Ok(Self {
            f,
            calls,
            best: f64::INFINITY,
        })
    }

    /// One measurement; keeps the best seconds per call.
    fn measure(&mut self) -> Result<(), KernelError> {
        let t = Instant::now();
        for _ in 0..self.calls {
            std::hint::black_box((self.f)()?);
        }
        self.best = self.best.min(t.elapsed().as_secs_f64() / self.calls as f64);
        Ok(())
    }
}

/// `backend.matmul` on `s`: best of `reps` measurements of at least [`MEASURE_SECS_MIN`] each,
/// after a warm-up.
pub fn time_kernels(
    backend: &dyn Kernels,
    s: MatmulShape,
    reps: usize,
) -> Result<Timing, KernelError> {
    let (a, b) = operands(s);
    let mut t = Timed::new(|| backend.matmul(&a, &b, s))?;
    for _ in 0..reps.max(1) {
        t.measure()?;
    }
    Ok(timing(2.0 * s.macs() as f64, t.best))
}

/// f32 sgemm (`matrixmultiply`) of every batch of `s` on the same values (scaled to ±1) and
/// layouts (transposes as strided views, as the integer kernels see them).
fn sgemm_call(s: MatmulShape) -> impl FnMut() -> Result<(), KernelError> {
    let (a, b) = operands(s);
    let to_f32 = |v: &[i32], r: usize, c: usize| {
        Array2::from_shape_vec((r, c), v.iter().map(|&x| x as f32 / 32768.0).collect())
            .expect("operand length is r·c by construction")
    };
    let stored = |v: &[i32], rows: usize, cols: usize, trans: bool, len: usize| {
        v.chunks_exact(len)
            .map(|blk| {
                if trans {
                    to_f32(blk, cols, rows)
                } else {
                    to_f32(blk, rows, cols)
                }
            })
            .collect::<Vec<_>>()
    };
    let a = stored(&a.mant, s.m, s.k, s.trans_a, s.m * s.k);
    let b = stored(&b.mant, s.k, s.n, s.trans_b, s.k * s.n);
    let mut c: Vec<_> = (0..s.batch)
        .map(|_| Array2::<f32>::zeros((s.m, s.n)))
        .collect();
    move || {
        for ((a, b), c) in a.iter().zip(&b).zip(&mut c) {
            let (av, bv) = (a.view(), b.view());
            let av = if s.trans_a { av.reversed_axes() } else { av };
            let bv = if s.trans_b { bv.reversed_axes() } else { bv };
            general_mat_mul(1.0, &av, &bv, 0.0, c);
        }
        std::hint::black_box(&c);
        Ok(())
    }
}

/// f32 sgemm (`matrixmultiply`) on the same shape and values: best of `reps` measurements of
/// at least [`MEASURE_SECS_MIN`] each, after a warm-up.
pub fn time_sgemm(s: MatmulShape, reps: usize) -> Timing {
    let run = || -> Result<Timing, KernelError> {
        let mut t = Timed::new(sgemm_call(s))?;
        for _ in 0..reps.max(1) {
            t.measure()?;
        }
        Ok(timing(2.0 * s.macs() as f64, t.best))
    };
    run().expect("sgemm_call never fails")
}

/// `backend.matmul` and f32 sgemm on every shape of `shapes`, as `(backend, sgemm)` per shape:
/// best of `reps` measurements of [`MEASURE_SECS_MIN`] or more each. The measurements go round
/// robin (each repetition measures every shape, backend then sgemm), so that each shape's
/// measurements are spread over the whole run: a burst of load from another process on a shared
/// machine spoils a few measurements of every shape, which best-of drops, instead of every
/// measurement of one shape.
pub fn time_against_sgemm(
    backend: &dyn Kernels,
    shapes: &[MatmulShape],
    reps: usize,
) -> Result<Vec<(Timing, Timing)>, KernelError> {
    type Call<'a> = Box<dyn FnMut() -> Result<(), KernelError> + 'a>;
    let ops: Vec<_> = shapes.iter().map(|&s| operands(s)).collect();
    let mut timed: Vec<(Timed<Call<'_>>, Timed<Call<'_>>)> = Vec::new();
    for (&s, (a, b)) in shapes.iter().zip(&ops) {
        let k: Call<'_> = Box::new(move || backend.matmul(a, b, s).map(drop));
        let g: Call<'_> = Box::new(sgemm_call(s));
        timed.push((Timed::new(k)?, Timed::new(g)?));
    }
    for _ in 0..reps.max(1) {
        for (k, g) in &mut timed {
            k.measure()?;
            g.measure()?;
        }
    }
    Ok(shapes
        .iter()
        .zip(&timed)
        .map(|(s, (k, g))| {
            let ops = 2.0 * s.macs() as f64;
            (timing(ops, k.best), timing(ops, g.best))
        })
        .collect())
}

/// Best-of-`reps` seconds of one call.
fn best_of<T>(
    reps: usize,
    mut f: impl FnMut() -> Result<T, KernelError>,
) -> Result<f64, KernelError> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        std::hint::black_box(f()?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Seconds per call of every kernel on `backend`, on tensors of the nanoGPT CPU configuration
/// (768 rows × 128 columns; attention 48 × 64 × 64), best of `reps`. `Err` for kernels the
/// backend refuses (e.g. `Unsupported`).
pub fn kernel_timings(
    backend: &dyn Kernels,
    reps: usize,
) -> Vec<(&'static str, Result<f64, KernelError>)> {
    use crate::numerics::fixed::B24_MANT_MAX;
    let (rows, cols) = (768, 128);
    let x = Bfp::new(seeded_mant(201, rows * cols, B16_MANT_MAX), -11);
    let y = Bfp::new(seeded_mant(202, rows * cols, B16_MANT_MAX), -9);
    let w = Bfp::new(seeded_mant(203, cols, B16_MANT_MAX), -3);
    let xa = Bfp::new(seeded_mant(204, rows * cols, B24_MANT_MAX), -20);
    let att = Bfp::new(seeded_mant(205, 48 * 64 * 64, B16_MANT_MAX), -10);
    let idx: Vec<u32> = (0..rows as u32).map(|i| i % 65).collect();
    let s = MatmulShape::new(rows, cols, 3 * cols);
    let (a, b) = operands(s);
    let k = backend;
    vec![
        ("matmul", best_of(reps, || k.matmul(&a, &b, s))),
        ("add", best_of(reps, || k.add(&xa, &x))),
        ("requant", best_of(reps, || k.requant(&xa, B16_MANT_MAX))),
        ("rescale", best_of(reps, || k.rescale(&x, x.exp + 3))),
        ("mul_cols", best_of(reps, || k.mul_cols(&x, &w, rows, cols))),
        ("col_dot", best_of(reps, || k.col_dot(&x, &y, rows, cols))),
        ("scale", best_of(reps, || k.scale(&x, 1 << 29))),
        (
            "scatter_add_rows",
            best_of(reps, || k.scatter_add_rows(&x, &idx, 65, cols)),
        ),
        ("sum_squares", best_of(reps, || k.sum_squares(&x))),
        ("gelu", best_of(reps, || k.gelu(&x))),
        ("gelu_bwd", best_of(reps, || k.gelu_bwd(&x, &y))),
        (
            "softmax",
            best_of(reps, || k.softmax(&att, 48 * 64, 64, true, 8192)),
        ),
        ("layernorm", best_of(reps, || k.layernorm(&x, rows, cols))),
    ]
}
