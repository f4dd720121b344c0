//! Backend selection: `cpu` (the reference), `wgpu` (any adapter) or `auto`.
//!
//! `auto` takes the wgpu adapter only if it is a hardware GPU (not a software rasterizer such as
//! llvmpipe, which is slower than the CPU backend) and passes [`probe`]: every kernel the model
//! uses, run on small inputs, must return the CPU reference's bits. Otherwise it takes `cpu`.

use crate::numerics::cpu::CpuKernels;
use crate::numerics::fixed::B16_MANT_MAX;
use crate::numerics::kernels::{AdamStep, Bfp, KernelError, Kernels, MatmulShape};

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

/// A backend as [`select`] opened it.
pub struct Selected {
    /// The kernels.
    pub kernels: Box<dyn Kernels>,
    /// What `auto` must tell its user: a GPU that gives wrong bits (naming the kernel), so a
    /// partner learns that its GPU is not used instead of finding a slow CPU run.
    pub warning: Option<String>,
}

impl std::fmt::Debug for Selected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selected")
            .field("kernels", &self.kernels.name())
            .field("warning", &self.warning)
            .finish()
    }
}

/// `auto`'s decision about an opened wgpu adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoDecision {
    /// Use it: a hardware GPU whose kernels give the CPU reference's bits.
    Gpu,
    /// Use the CPU backend; `warning` when the GPU gave wrong bits.
    Cpu {
        /// Why not the adapter.
        reason: String,
        /// The loud part: set when a hardware GPU failed the kernel probe.
        warning: Option<String>,
    },
}

/// `auto` on adapter `name` of wgpu device type `device_type`: a software rasterizer (device
/// type `Cpu`, e.g. llvmpipe) is slower than the CPU backend and is not taken (nor probed); a
/// hardware GPU is taken only when `probe` finds every kernel matching, and a mismatch is a
/// warning that names the kernel.
pub fn decide_auto(
    name: &str,
    device_type: &str,
    probe: impl FnOnce() -> Result<(), KernelError>,
) -> AutoDecision {
    if device_type == "Cpu" {
        return AutoDecision::Cpu {
            reason: format!("adapter {name} is a software rasterizer, slower than the cpu backend"),
            warning: None,
        };
    }
    match probe() {
        Ok(()) => AutoDecision::Gpu,
        Err(e) => {
            let kernel = match &e {
                KernelError::Device { op, .. } => (*op).to_string(),
                other => format!("(probe error: {other})"),
            };
            AutoDecision::Cpu {
                reason: format!("adapter {name} failed the kernel probe"),
                warning: Some(format!(
                    "GPU {name} gives wrong bits in kernel `{kernel}` ({e}): it is NOT used, the cpu backend runs instead; `leam compute selftest` checks every kernel"
                )),
            }
        }
    }
}

/// Opens the best wgpu adapter (if any) and decides `auto` on it; the adapter comes back only
/// when the decision is to use it.
fn open_auto() -> (Option<crate::numerics::gpu::GpuKernels>, AutoDecision) {
    let g = match crate::numerics::gpu::GpuKernels::new() {
        Ok(g) => g,
        Err(e) => {
            let reason = format!("no wgpu adapter opens: {e}");
            return (
                None,
                AutoDecision::Cpu {
                    reason,
                    warning: None,
                },
            );
        }
    };
    let f = g.fingerprint();
    match decide_auto(&g.name(), &f.adapter.device_type, || probe(&g)) {
        AutoDecision::Gpu => (Some(g), AutoDecision::Gpu),
        cpu => (None, cpu),
    }
}

/// `auto`'s decision on this machine, with the adapter closed again: what a parent process asks
/// a short-lived child (`leam compute probe`), so that a node which ends up on the CPU never
/// keeps a GPU driver (Mesa maps ~45 MiB of LLVM) in its own memory.
pub fn decide_auto_here() -> AutoDecision {
    open_auto().1
}

/// Opens the backend that `decision` (from [`decide_auto_here`], possibly in another process)
/// names: the same adapter `auto` chooses, or the CPU reference with the decision's warning.
pub fn open_decided(decision: AutoDecision) -> Result<Selected, BackendError> {
    match decision {
        AutoDecision::Gpu => select("wgpu"),
        AutoDecision::Cpu { warning, .. } => Ok(cpu(warning)),
    }
}

/// The CPU reference, with what `auto` must say about a GPU it passed over.
fn cpu(warning: Option<String>) -> Selected {
    Selected {
        kernels: Box::new(CpuKernels::new()),
        warning,
    }
}

/// Opens the backend named `name` (`auto`, `cpu`, `wgpu`).
pub fn select(name: &str) -> Result<Selected, BackendError> {
    match name {
        "cpu" => Ok(cpu(None)),
        "wgpu" => {
            let g = crate::numerics::gpu::GpuKernels::new().map_err(|e| BackendError::Gpu {
                reason: e.to_string(),
            })?;
            Ok(Selected {
                kernels: Box::new(g),
                warning: None,
            })
        }
        "auto" => match open_auto() {
            (Some(g), _) => Ok(Selected {
                kernels: Box::new(g),
                warning: None,
            }),
            (None, decision) => open_decided(decision),
        },
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
                (crate::numerics::fixed::hash3(s, 0, i) % (2 * B16_MANT_MAX as u64 + 1)) as i32
                    - B16_MANT_MAX
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
        let cpu = select("cpu").unwrap();
        assert_eq!(cpu.kernels.name(), "cpu");
        assert_eq!(cpu.warning, None);
        assert!(matches!(
            select("tpu"),
            Err(BackendError::Unknown { name }) if name == "tpu"
        ));
    }

    /// `auto` takes a hardware GPU only when its kernels match; a mismatch is not a silent
    /// fallback but a warning that names the kernel.
    #[test]
    fn auto_names_the_kernel_a_gpu_gets_wrong() {
        assert_eq!(
            decide_auto("H200", "DiscreteGpu", || Ok(())),
            AutoDecision::Gpu
        );
        let wrong = decide_auto("H200", "DiscreteGpu", || {
            Err(KernelError::Device {
                op: "gelu",
                detail: "result differs from the CPU reference".into(),
            })
        });
        let AutoDecision::Cpu {
            warning: Some(w), ..
        } = wrong
        else {
            panic!("expected the cpu with a warning, got {wrong:?}")
        };
        assert!(
            w.contains("GPU H200 gives wrong bits in kernel `gelu`"),
            "{w}"
        );
        assert!(w.contains("NOT used"), "{w}");
        // A software rasterizer is passed over quietly: it is slower, not wrong.
        assert!(matches!(
            decide_auto("llvmpipe", "Cpu", || panic!(
                "a software rasterizer is not probed"
            )),
            AutoDecision::Cpu { warning: None, .. }
        ));
    }
}

/// A decorator that accumulates the wall time spent in each kernel method (for profiling;
/// it forwards every call unchanged, so results are the inner backend's bits).
#[derive(Debug)]
pub struct Timed<K> {
    inner: K,
    times: std::sync::Mutex<std::collections::BTreeMap<&'static str, (u64, std::time::Duration)>>,
}

impl<K: Kernels> Timed<K> {
    /// Wraps `inner`.
    pub fn new(inner: K) -> Self {
        Self {
            inner,
            times: Default::default(),
        }
    }

    /// `(op, calls, total time)` sorted by time, largest first.
    pub fn report(&self) -> Vec<(&'static str, u64, std::time::Duration)> {
        let t = self.times.lock().map(|t| t.clone()).unwrap_or_default();
        let mut v: Vec<_> = t.into_iter().map(|(k, (n, d))| (k, n, d)).collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.2));
        v
    }

    fn time<T>(&self, op: &'static str, f: impl FnOnce(&K) -> T) -> T {
        let start = std::time::Instant::now();
        let out = f(&self.inner);
        let d = start.elapsed();
        if let Ok(mut t) = self.times.lock() {
            let e = t.entry(op).or_default();
            e.0 += 1;
            e.1 += d;
        }
        out
    }
}

impl<K: Kernels> Kernels for Timed<K> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn device(&self) -> String {
        self.inner.device()
    }
    fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes()
    }
    fn traffic(&self) -> crate::numerics::kernels::Traffic {
        self.inner.traffic()
    }
    fn device_backend(&self) -> Option<&dyn std::any::Any> {
        self.inner.device_backend()
    }
    fn matmul(&self, a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<Bfp, KernelError> {
        self.time("matmul", |k| k.matmul(a, b, s))
    }
    fn add(&self, a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
        self.time("add", |k| k.add(a, b))
    }
    fn requant(&self, x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
        self.time("requant", |k| k.requant(x, mant_max))
    }
    fn rescale(&self, x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
        self.time("rescale", |k| k.rescale(x, exp))
    }
    fn mul_cols(&self, x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        self.time("mul_cols", |k| k.mul_cols(x, w, rows, cols))
    }
    fn col_dot(&self, a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        self.time("col_dot", |k| k.col_dot(a, b, rows, cols))
    }
    fn layernorm(&self, x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
        self.time("layernorm", |k| k.layernorm(x, rows, cols))
    }
    fn layernorm_bwd(
        &self,
        dxhat: &Bfp,
        xhat: &Bfp,
        r: &[u64],
        x_exp: i32,
        rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        self.time("layernorm_bwd", |k| {
            k.layernorm_bwd(dxhat, xhat, r, x_exp, rows, cols)
        })
    }
    fn softmax(
        &self,
        x: &Bfp,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        self.time("softmax", |k| k.softmax(x, rows, cols, causal, scale_q16))
    }
    fn softmax_bwd(
        &self,
        p: &Bfp,
        dp: &Bfp,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        self.time("softmax_bwd", |k| {
            k.softmax_bwd(p, dp, rows, cols, scale_q16)
        })
    }
    fn cross_entropy(
        &self,
        logits: &Bfp,
        targets: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<(i64, Bfp), KernelError> {
        self.time("cross_entropy", |k| {
            k.cross_entropy(logits, targets, rows, cols)
        })
    }
    fn gelu(&self, x: &Bfp) -> Result<Bfp, KernelError> {
        self.time("gelu", |k| k.gelu(x))
    }
    fn gelu_bwd(&self, x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
        self.time("gelu_bwd", |k| k.gelu_bwd(x, dy))
    }
    fn scatter_add_rows(
        &self,
        src: &Bfp,
        idx: &[u32],
        out_rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        self.time("scatter_add_rows", |k| {
            k.scatter_add_rows(src, idx, out_rows, cols)
        })
    }
    fn sum_squares(&self, x: &Bfp) -> Result<u128, KernelError> {
        self.time("sum_squares", |k| k.sum_squares(x))
    }
    fn scale(&self, x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
        self.time("scale", |k| k.scale(x, c_q30))
    }
    fn adamw(
        &self,
        p: &Bfp,
        g: &Bfp,
        m: &Bfp,
        r: &Bfp,
        step: &AdamStep,
    ) -> Result<(Bfp, Bfp, Bfp), KernelError> {
        self.time("adamw", |k| k.adamw(p, g, m, r, step))
    }
}
