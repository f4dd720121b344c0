//! `leam compute selftest`: every kernel of a backend against the CPU reference, on fixed
//! seeded inputs (counter-based hash, so every machine uses the same inputs).

use crate::numerics::cpu::CpuKernels;
use crate::numerics::fixed::{hash3, B16_MANT_MAX, B24_MANT_MAX};
use crate::numerics::kernels::{AdamStep, Bfp, KernelError, Kernels, MatmulShape};

/// Seed of the self-test inputs (fixed: the self-test is reproducible everywhere).
pub const SELFTEST_SEED: u64 = 0x1ea7_5e1f_7e57;

/// Outcome of one kernel check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Bit-identical to the CPU reference on every case.
    Pass,
    /// Different bits or an error; the text says which case and what differed.
    Fail(String),
    /// The backend does not implement this kernel.
    Unsupported,
}

/// One line of the self-test report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Kernel (trait method) name.
    pub kernel: &'static str,
    /// Number of cases compared.
    pub cases: usize,
    /// What happened.
    pub outcome: Outcome,
}

/// `len` B16 mantissas from the counter-based hash of (`SELFTEST_SEED`, `stream`, index),
/// bounded by `max`.
pub fn seeded_mant(stream: u64, len: usize, max: i32) -> Vec<i32> {
    let span = 2 * max as u64 + 1;
    (0..len)
        .map(|i| ((hash3(SELFTEST_SEED, stream, i as u64) % span) as i64 - max as i64) as i32)
        .collect()
}

/// The matmul shapes checked: the model's own, transposes, batches, edge sizes and K large
/// enough that sums exceed 2^32.
pub fn matmul_cases() -> Vec<MatmulShape> {
    vec![
        MatmulShape::new(1, 1, 1),
        MatmulShape::new(17, 33, 5),
        MatmulShape::new(64, 128, 96).ta(),
        MatmulShape::new(48, 80, 40).tb(),
        MatmulShape::new(16, 32, 16).ta().tb(),
        MatmulShape::new(64, 32, 64).tb().batched(8),
        MatmulShape::new(64, 64, 32).batched(8),
        MatmulShape::new(3, 4099, 2),
        MatmulShape::new(768, 128, 384),
    ]
}

/// A labelled self-test case: runs one kernel call on a backend.
type Case<'a, T> = (
    String,
    Box<dyn Fn(&dyn Kernels) -> Result<T, KernelError> + 'a>,
);

fn one<'a, T>(
    label: &str,
    f: impl Fn(&dyn Kernels) -> Result<T, KernelError> + 'a,
) -> Vec<Case<'a, T>> {
    vec![(label.to_string(), Box::new(f))]
}

fn compare<T: PartialEq + std::fmt::Debug>(
    kernel: &'static str,
    backend: &dyn Kernels,
    cases: Vec<Case<'_, T>>,
) -> Check {
    let n = cases.len();
    for (label, run) in &cases {
        let want = run(&CpuKernels);
        let got = run(backend);
        match (&want, &got) {
            (_, Err(KernelError::Unsupported { .. })) => {
                return Check {
                    kernel,
                    cases: n,
                    outcome: Outcome::Unsupported,
                }
            }
            _ if want == got => {}
            (Ok(_), Ok(_)) => {
                return Check {
                    kernel,
                    cases: n,
                    outcome: Outcome::Fail(format!("{label}: bits differ from the CPU reference")),
                }
            }
            _ => {
                return Check {
                    kernel,
                    cases: n,
                    outcome: Outcome::Fail(format!(
                        "{label}: cpu {:?}, {} {:?}",
                        want.as_ref().err(),
                        backend.name(),
                        got.as_ref().err()
                    )),
                }
            }
        }
    }
    Check {
        kernel,
        cases: n,
        outcome: Outcome::Pass,
    }
}

/// Runs every kernel on `backend` and on the CPU reference and compares the bits.
pub fn run(backend: &dyn Kernels) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut cases: Vec<Case<'_, Bfp>> = Vec::new();
    for (i, s) in matmul_cases().into_iter().enumerate() {
        let a = Bfp::new(
            seeded_mant(2 * i as u64, s.batch * s.m * s.k, B16_MANT_MAX),
            -7,
        );
        let b = Bfp::new(
            seeded_mant(2 * i as u64 + 1, s.batch * s.k * s.n, B16_MANT_MAX),
            3,
        );
        cases.push((
            format!("{s:?}"),
            Box::new(move |k: &dyn Kernels| k.matmul(&a, &b, s)),
        ));
    }
    checks.push(compare("matmul", backend, cases));

    let (rows, cols) = (300, 129);
    let x = Bfp::new(seeded_mant(50, rows * cols, B16_MANT_MAX), -11);
    let y = Bfp::new(seeded_mant(51, rows * cols, B16_MANT_MAX), 4);
    let w = Bfp::new(seeded_mant(52, cols, B16_MANT_MAX), -2);
    let wide = Bfp::new(seeded_mant(53, rows * cols, i32::MAX), -30);
    let idx: Vec<u32> = (0..rows as u64)
        .map(|i| (hash3(SELFTEST_SEED, 54, i) % 65) as u32)
        .collect();
    checks.push(compare(
        "requant",
        backend,
        [
            one("B16", |k: &dyn Kernels| k.requant(&wide, B16_MANT_MAX)),
            one("B24", |k: &dyn Kernels| k.requant(&wide, B24_MANT_MAX)),
        ]
        .into_iter()
        .flatten()
        .collect(),
    ));
    checks.push(compare(
        "rescale",
        backend,
        one("+7", |k: &dyn Kernels| k.rescale(&wide, wide.exp + 7)),
    ));
    checks.push(compare(
        "mul_cols",
        backend,
        one("300x129", |k: &dyn Kernels| k.mul_cols(&x, &w, rows, cols)),
    ));
    checks.push(compare(
        "col_dot",
        backend,
        one("300x129", |k: &dyn Kernels| k.col_dot(&x, &y, rows, cols)),
    ));
    checks.push(compare(
        "scale",
        backend,
        one("c=0.3", |k: &dyn Kernels| k.scale(&x, 322_122_547)),
    ));
    checks.push(compare(
        "scatter_add_rows",
        backend,
        one("300 rows into 65", |k: &dyn Kernels| {
            k.scatter_add_rows(&x, &idx, 65, cols)
        }),
    ));
    checks.push(compare(
        "sum_squares",
        backend,
        one("300x129", |k: &dyn Kernels| k.sum_squares(&x)),
    ));
    let xa = Bfp::new(seeded_mant(55, rows * cols, B24_MANT_MAX), -20);
    let xb = Bfp::new(seeded_mant(56, rows * cols, B24_MANT_MAX), -17);
    checks.push(compare(
        "add",
        backend,
        one("B24+B24", |k: &dyn Kernels| k.add(&xa, &xb)),
    ));
    checks.push(compare(
        "gelu",
        backend,
        one("x·2^-11", |k: &dyn Kernels| k.gelu(&x)),
    ));
    checks.push(compare(
        "gelu_bwd",
        backend,
        one("x·2^-11", |k: &dyn Kernels| k.gelu_bwd(&x, &y)),
    ));
    // Kernels not ported to every backend yet: same inputs, reported UNSUPPORTED until then.
    let probs = CpuKernels.softmax(&x, rows, cols, true, 1 << 16);
    let ln = CpuKernels.layernorm(&x, rows, cols);
    let targets: Vec<u32> = (0..rows as u64)
        .map(|i| (hash3(SELFTEST_SEED, 57, i) % cols as u64) as u32)
        .collect();
    checks.push(compare(
        "layernorm",
        backend,
        one("300x129", |k: &dyn Kernels| k.layernorm(&x, rows, cols)),
    ));
    if let Ok((xhat, r)) = &ln {
        checks.push(compare(
            "layernorm_bwd",
            backend,
            one("300x129", |k: &dyn Kernels| {
                k.layernorm_bwd(&y, xhat, r, x.exp, rows, cols)
            }),
        ));
    }
    checks.push(compare(
        "softmax",
        backend,
        one("causal", |k: &dyn Kernels| {
            k.softmax(&x, rows, cols, true, 1 << 16)
        }),
    ));
    if let Ok(p) = &probs {
        checks.push(compare(
            "softmax_bwd",
            backend,
            one("300x129", |k: &dyn Kernels| {
                k.softmax_bwd(p, &y, rows, cols, 1 << 16)
            }),
        ));
    }
    checks.push(compare(
        "cross_entropy",
        backend,
        one("300x129", |k: &dyn Kernels| {
            k.cross_entropy(&x, &targets, rows, cols)
        }),
    ));
    let step = AdamStep {
        beta1_q30: 966_367_642,
        beta2_q30: 1_063_004_406,
        alpha_q40: 1_099_511_628,
        decay_q40: 109_951_163,
    };
    let zeros = Bfp::zeros(rows * cols, -20);
    checks.push(compare(
        "adamw",
        backend,
        one("first step", |k: &dyn Kernels| {
            k.adamw(&xa, &x, &zeros, &zeros, &step)
        }),
    ));
    checks
}
