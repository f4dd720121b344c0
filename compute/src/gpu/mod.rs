//! The `wgpu` backend: WGSL compute kernels bit-identical to the CPU reference.
//!
//! Every value a kernel produces is computed with integer arithmetic (WGSL integers are exact
//! and wrap by spec); 64-bit sums are emulated with explicit carries (`int64.wgsl`). See
//! `specs/compute.md` for the numeric contract each kernel implements.

mod device;
pub mod matmul;
pub mod shaders;

pub use device::{
    list_adapters, AdapterChoice, AdapterSummary, DeviceFingerprint, GpuError, ADAPTER_ENV,
    OP_TIMEOUT_S,
};

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
