//! Numerics: block floating point and every kernel the model calls.
//!
//! - [`fixed`]: fixed-point helpers (rounding half to even, exp2 and log2 tables, hashing);
//! - [`kernels`]: the [`Kernels`](kernels::Kernels) trait every backend implements and
//!   [`CpuKernels`](kernels::CpuKernels), the bit-exact reference;
//! - `cpu`: the fast bodies of the CPU reference's non-matmul kernels;
//! - `gemm`: the CPU matrix product's exact integer SIMD paths;
//! - [`gpu`]: the WGPU backend, WGSL kernels bit-identical to the CPU reference;
//! - [`backend`]: choosing a backend by name.

pub mod backend;
mod cpu;
pub mod fixed;
mod gemm;
pub mod gpu;
pub mod kernels;
