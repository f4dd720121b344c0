//! The `wgpu` backend: WGSL compute kernels bit-identical to the CPU reference.
//!
//! Every value a kernel produces is computed with integer arithmetic (WGSL integers are exact
//! and wrap by spec); 64-bit sums are emulated with explicit carries (`int64.wgsl`). Each kernel
//! implements the exact integer semantics stated on its [`Kernels`] method; `specs/compute.md`
//! has the contract, and `compute/tests/gpu_kernels.rs` checks every kernel bit for bit against
//! [`crate::kernels::CpuKernels`] on every adapter present.

mod device;
mod matmul;
pub mod shaders;

pub use device::{
    list_adapters, AdapterChoice, AdapterSummary, DeviceFingerprint, GpuError, ADAPTER_ENV,
    OP_TIMEOUT_S,
};

use crate::kernels::{check_matmul, checked_exp, Bfp, KernelError, Kernels, MatmulShape};
use device::Gpu;

/// The wgpu backend on one adapter.
#[derive(Debug)]
pub struct GpuKernels {
    gpu: Gpu,
}

impl GpuKernels {
    /// Opens the adapter named by [`ADAPTER_ENV`], or the best one when it is unset.
    pub fn new() -> Result<Self, GpuError> {
        Self::with_adapter(&AdapterChoice::from_env())
    }

    /// Opens a specific adapter.
    pub fn with_adapter(choice: &AdapterChoice) -> Result<Self, GpuError> {
        Ok(GpuKernels {
            gpu: Gpu::open(choice)?,
        })
    }

    /// The adapter and shader fingerprint.
    pub fn fingerprint(&self) -> &DeviceFingerprint {
        &self.gpu.fingerprint
    }

    /// The device's limits (the adapter's own; the device is created with them).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.gpu.limits
    }
}

/// Maps a backend failure of operation `op` to the trait's error.
fn kernel_error(op: &'static str, e: GpuError) -> KernelError {
    match e {
        GpuError::Limit {
            what,
            requested,
            max,
        } => KernelError::Limit {
            what,
            requested,
            max,
        },
        other => KernelError::Device {
            op,
            detail: other.to_string(),
        },
    }
}

impl Kernels for GpuKernels {
    fn name(&self) -> String {
        let a = &self.gpu.fingerprint.adapter;
        format!("wgpu/{}/{}", a.backend, a.name)
    }

    fn matmul(&self, a: &Bfp, b: &Bfp, shape: MatmulShape) -> Result<Bfp, KernelError> {
        const OP: &str = "matmul";
        check_matmul(a, b, shape)?;
        let r = matmul::matmul_b16(&self.gpu, &a.mant, &b.mant, shape)
            .map_err(|e| kernel_error(OP, e))?;
        Ok(Bfp {
            mant: r.mant,
            exp: checked_exp(OP, a.exp as i64 + b.exp as i64, r.shift as i64)?,
        })
    }
}
