//! Backend selection: `cpu` (the reference), `wgpu` (any adapter) or `auto`.
//!
//! `auto` takes the wgpu adapter only if it is a hardware GPU (not a software rasterizer such as
//! llvmpipe, which is slower than the CPU backend) and passes [`probe`]: every kernel the model
//! uses, run on small inputs, must return the CPU reference's bits. Otherwise it takes `cpu`.

use crate::fixed::B16_MANT_MAX;
use crate::kernels::{AdamStep, Bfp, CpuKernels, KernelError, Kernels, MatmulShape};

/// Backend names accepted by [`select`].
pub const BACKEND_NAMES: [&str; 3] = ["auto", "cpu", "wgpu"];

/// Why no backend could be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Unknown name.
    #[error("unknown backend `{name}`: expected one of auto, cpu, wgpu")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// The wgpu backend could not be opened.
    #[error("wgpu backend not available: {reason}")]
    Gpu {
        /// Why.
        reason: String,
    },
}

/// Opens the backend named `name` (`auto`, `cpu`, `wgpu`).
pub fn select(name: &str) -> Result<Box<dyn Kernels>, BackendError> {
    match name {
        "cpu" => Ok(Box::new(CpuKernels::new())),
        "wgpu" => {
            let g = crate::gpu::GpuKernels::new().map_err(|e| BackendError::Gpu {
                reason: e.to_string(),
            })?;
            Ok(Box::new(g))
        }
        "auto" => {
            if let Ok(g) = crate::gpu::GpuKernels::new() {
                if g.fingerprint().adapter.device_type != "Cpu" && probe(&g).is_ok() {
                    return Ok(Box::new(g));
                }
            }
            Ok(Box::new(CpuKernels::new()))
        }
        other => Err(BackendError::Unknown { name: other.into() }),
    }
}

/// Runs every kernel the model uses on small deterministic inputs and compares with
/// [`CpuKernels`]; the first difference or failure is returned as an error.
pub fn probe(k: &dyn Kernels) -> Result<(), KernelError> {
    let cpu = CpuKernels::new();
    let v = |n: usize, s: u64| -> Bfp {
        let mant = (0..n as u64)
            .map(|i| {
                (crate::fixed::hash3(s, 0, i) % (2 * B16_MANT_MAX as u64 + 1)) as i32 - B16_MANT_MAX
            })
            .collect();
        Bfp::new(mant, -12)
    };
    let mismatch = |op: &'static str| KernelError::Device {
        op,
        detail: "result differs from the CPU reference".into(),
    };
    let (rows, cols) = (6, 8);
    let (a, b, w) = (v(rows * cols, 1), v(rows * cols, 2), v(cols, 3));
    let shape = MatmulShape::new(rows, cols, rows).tb();
    if k.matmul(&a, &b, shape)? != cpu.matmul(&a, &b, shape)? {
        return Err(mismatch("matmul"));
    }
    macro_rules! same {
        ($op:literal, $call:expr) => {{
            let (x, y) = ($call(k)?, $call(&cpu as &dyn Kernels)?);
            if x != y {
                return Err(mismatch($op));
            }
        }};
    }
    same!("add", |k: &dyn Kernels| k.add(&a, &b));
    same!("mul_cols", |k: &dyn Kernels| k.mul_cols(&a, &w, rows, cols));
    same!("col_dot", |k: &dyn Kernels| k.col_dot(&a, &b, rows, cols));
    same!("layernorm", |k: &dyn Kernels| k.layernorm(&a, rows, cols));
    let (h, r) = cpu.layernorm(&a, rows, cols)?;
    same!("layernorm_bwd", |k: &dyn Kernels| k
        .layernorm_bwd(&b, &h, &r, a.exp, rows, cols));
    same!("softmax", |k: &dyn Kernels| k
        .softmax(&a, 6, 8, true, 11_585));
    let p = cpu.softmax(&a, 6, 8, false, 65_536)?;
    same!("softmax_bwd", |k: &dyn Kernels| k
        .softmax_bwd(&p, &b, 6, 8, 11_585));
    let t: Vec<u32> = (0..rows as u32).map(|i| i % cols as u32).collect();
    same!("cross_entropy", |k: &dyn Kernels| k
        .cross_entropy(&a, &t, rows, cols));
    same!("gelu", |k: &dyn Kernels| k.gelu(&a));
    same!("gelu_bwd", |k: &dyn Kernels| k.gelu_bwd(&a, &b));
    same!("scatter_add_rows", |k: &dyn Kernels| k
        .scatter_add_rows(&a, &t, cols, cols));
    same!("sum_squares", |k: &dyn Kernels| k.sum_squares(&a));
    same!("scale", |k: &dyn Kernels| k.scale(&a, 700_000_000));
    same!("requant", |k: &dyn Kernels| k.requant(&a, 255));
    same!("rescale", |k: &dyn Kernels| k.rescale(&a, -9));
    let st = AdamStep {
        beta1_q30: 966_367_642,
        beta2_q30: 1_063_004_406,
        alpha_q40: 1_099_511_628,
        decay_q40: 109_951_163,
    };
    let pm = Bfp::new(a.mant.iter().map(|&x| x * 200).collect(), -20);
    let rm = Bfp::new(b.mant.iter().map(|x| x.abs()).collect(), -14);
    same!("adamw", |k: &dyn Kernels| k.adamw(&pm, &a, &b, &rm, &st));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_passes_its_own_probe_and_names_are_checked() {
        probe(&CpuKernels).unwrap();
        assert_eq!(select("cpu").unwrap().name(), "cpu");
        assert!(matches!(
            select("tpu"),
            Err(BackendError::Unknown { name }) if name == "tpu"
        ));
    }
}
