//! Numerics: block floating point and every kernel the model calls.
//!
//! - [`fixed`]: fixed-point helpers (rounding half to even, exp2 and log2 tables, hashing);
//! - [`kernels`]: the [`Kernels`](kernels::Kernels) trait every backend implements, its tensor
//!   type and limits, the input checks every backend shares and the naive reference matmul;
//! - [`cpu`]: [`CpuKernels`](cpu::CpuKernels), the bit-exact reference, one file per operation;
//! - `gemm`: the CPU matrix product (exact integer SIMD paths, exact f64 dgemm);
//! - [`gpu`]: the WGPU backend, WGSL kernels bit-identical to the CPU reference;
//! - [`tensor`]: tensors where the backend keeps them (host or device) and the kernels on them;
//! - [`backend`]: choosing a backend by name.

pub mod backend;
pub mod cpu;
pub mod fixed;
mod gemm;
pub mod gpu;
pub mod kernels;
pub mod tensor;
