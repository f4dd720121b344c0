//! [`WithCpuFallback`]: the wgpu backend for kernels it has ported, the CPU reference for the
//! rest. Both give the reference's bits, so the mixture does too; this is what lets
//! `leam train --backend wgpu` run while kernels are ported one by one. The backend name and
//! [`WithCpuFallback::fallback_counts`] say which ops ran on the CPU, so nothing is hidden.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::GpuKernels;
use crate::numerics::cpu::CpuKernels;
use crate::numerics::kernels::{AdamStep, Bfp, KernelError, Kernels, MatmulShape};

/// A [`GpuKernels`] whose `Unsupported` ops run on [`CpuKernels`] instead.
#[derive(Debug)]
pub struct WithCpuFallback {
    gpu: GpuKernels,
    cpu: CpuKernels,
    fallbacks: Mutex<BTreeMap<&'static str, u64>>,
}

impl WithCpuFallback {
    /// Wraps an opened adapter.
    pub fn new(gpu: GpuKernels) -> Self {
        WithCpuFallback {
            gpu,
            cpu: CpuKernels::new(),
            fallbacks: Mutex::new(BTreeMap::new()),
        }
    }

    /// The wrapped GPU backend.
    pub fn gpu(&self) -> &GpuKernels {
        &self.gpu
    }

    /// How many calls of each op ran on the CPU reference so far.
    pub fn fallback_counts(&self) -> BTreeMap<&'static str, u64> {
        self.fallbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn either<T>(
        &self,
        op: &'static str,
        on_gpu: impl FnOnce(&GpuKernels) -> Result<T, KernelError>,
        on_cpu: impl FnOnce(&CpuKernels) -> Result<T, KernelError>,
    ) -> Result<T, KernelError> {
        match on_gpu(&self.gpu) {
            Err(KernelError::Unsupported { .. }) => {
                *self
                    .fallbacks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(op)
                    .or_insert(0) += 1;
                on_cpu(&self.cpu)
            }
            other => other,
        }
    }
}

impl Kernels for WithCpuFallback {
    fn name(&self) -> String {
        format!("{}+cpu-fallback", self.gpu.name())
    }

    fn traffic(&self) -> crate::numerics::kernels::Traffic {
        self.gpu.traffic()
    }

    fn device(&self) -> String {
        self.gpu.device()
    }

    fn memory_bytes(&self) -> u64 {
        self.gpu.memory_bytes()
    }

    fn device_backend(&self) -> Option<&dyn std::any::Any> {
        self.gpu.device_backend()
    }

    fn matmul(&self, a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<Bfp, KernelError> {
        self.either("matmul", |k| k.matmul(a, b, s), |k| k.matmul(a, b, s))
    }

    fn add(&self, a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
        self.either("add", |k| k.add(a, b), |k| k.add(a, b))
    }

    fn requant(&self, x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
        self.either(
            "requant",
            |k| k.requant(x, mant_max),
            |k| k.requant(x, mant_max),
        )
    }

    fn rescale(&self, x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
        self.either("rescale", |k| k.rescale(x, exp), |k| k.rescale(x, exp))
    }

    fn mul_cols(&self, x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        self.either(
            "mul_cols",
            |k| k.mul_cols(x, w, rows, cols),
            |k| k.mul_cols(x, w, rows, cols),
        )
    }

    fn col_dot(&self, a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        self.either(
            "col_dot",
            |k| k.col_dot(a, b, rows, cols),
            |k| k.col_dot(a, b, rows, cols),
        )
    }

    fn layernorm(&self, x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
        self.either(
            "layernorm",
            |k| k.layernorm(x, rows, cols),
            |k| k.layernorm(x, rows, cols),
        )
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
        self.either(
            "layernorm_bwd",
            |k| k.layernorm_bwd(dxhat, xhat, r, x_exp, rows, cols),
            |k| k.layernorm_bwd(dxhat, xhat, r, x_exp, rows, cols),
        )
    }

    fn softmax(
        &self,
        x: &Bfp,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        self.either(
            "softmax",
            |k| k.softmax(x, rows, cols, causal, scale_q16),
            |k| k.softmax(x, rows, cols, causal, scale_q16),
        )
    }

    fn softmax_bwd(
        &self,
        p: &Bfp,
        dp: &Bfp,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        self.either(
            "softmax_bwd",
            |k| k.softmax_bwd(p, dp, rows, cols, scale_q16),
            |k| k.softmax_bwd(p, dp, rows, cols, scale_q16),
        )
    }

    fn cross_entropy(
        &self,
        logits: &Bfp,
        targets: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<(i64, Bfp), KernelError> {
        self.either(
            "cross_entropy",
            |k| k.cross_entropy(logits, targets, rows, cols),
            |k| k.cross_entropy(logits, targets, rows, cols),
        )
    }

    fn gelu(&self, x: &Bfp) -> Result<Bfp, KernelError> {
        self.either("gelu", |k| k.gelu(x), |k| k.gelu(x))
    }

    fn gelu_bwd(&self, x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
        self.either("gelu_bwd", |k| k.gelu_bwd(x, dy), |k| k.gelu_bwd(x, dy))
    }

    fn scatter_add_rows(
        &self,
        src: &Bfp,
        idx: &[u32],
        out_rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        self.either(
            "scatter_add_rows",
            |k| k.scatter_add_rows(src, idx, out_rows, cols),
            |k| k.scatter_add_rows(src, idx, out_rows, cols),
        )
    }

    fn sum_squares(&self, x: &Bfp) -> Result<u128, KernelError> {
        self.either("sum_squares", |k| k.sum_squares(x), |k| k.sum_squares(x))
    }

    fn scale(&self, x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
        self.either("scale", |k| k.scale(x, c_q30), |k| k.scale(x, c_q30))
    }

    fn adamw(
        &self,
        p: &Bfp,
        g: &Bfp,
        m: &Bfp,
        r: &Bfp,
        step: &AdamStep,
    ) -> Result<(Bfp, Bfp, Bfp), KernelError> {
        self.either(
            "adamw",
            |k| k.adamw(p, g, m, r, step),
            |k| k.adamw(p, g, m, r, step),
        )
    }
}
