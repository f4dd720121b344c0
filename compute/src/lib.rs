//! leam-compute: bit-exact integer training shards.
//!
//! Compute never touches the network or the ledger. See `specs/compute.md` and `specs/shard.md`.
//!
//! Three layers, each using only the ones before it:
//! - [`numerics`]: fixed-point arithmetic, the [`Kernels`](numerics::kernels::Kernels) trait
//!   and its backends (the CPU reference and WGPU);
//! - [`model`]: the transformer, the optimizer, data, single-node training, checkpoints,
//!   sampling and the nanoGPT preset, on any backend;
//! - [`verify`]: shards, per-step commitments, replay, bisection and the referee, and the
//!   DiLoCo outer step.
//!
//! `codec` is the one byte reader the binary formats of `model` and `verify` decode with.

mod codec;
pub mod model;
pub mod numerics;
pub mod verify;
