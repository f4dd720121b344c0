//! leam-compute: bit-exact integer training shards.
//!
//! Compute never touches the network or the ledger. See `specs/compute.md` and `specs/shard.md`.

// Numerics, kernels (CPU reference), model and single-node training.
pub mod backend;
pub mod checkpoint;
mod cpu_ops;
pub mod data;
pub mod fixed;
mod gemm;
pub mod kernels;
pub mod model;
pub mod optim;
pub mod preset;
pub mod sample;
pub mod train;

// WGPU backend: WGSL kernels bit-identical to the CPU reference.
pub mod gpu;

// Shards, commitments, replay, bisection, DiLoCo outer step.
pub mod bisect;
pub mod commit;
pub mod diloco;
pub mod replay;
pub mod shard;
