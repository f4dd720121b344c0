//! The nanoGPT CPU preset: `train_shakespeare_char` as nanoGPT's README runs it on a CPU (4
//! layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations, seed 1337, evaluation every
//! 250 iterations on 20 batches), with the optimizer settings of [`Hyper::NANOGPT_CPU`]. The one
//! definition: `leam train --preset nanogpt-cpu`, the reference shard spec
//! (`verify::shard::nanogpt_cpu_spec`) and the job preset of `leam-market` (which cannot depend
//! on compute and mirrors it; `leam-jobs` tests that the two agree) all take it.

use crate::model::optim::Hyper;

/// A training preset: the model's shape, the batch and the run's length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// Transformer layers.
    pub n_layer: usize,
    /// Attention heads per layer.
    pub n_head: usize,
    /// Embedding width.
    pub n_embd: usize,
    /// Context length, tokens.
    pub block_size: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Training steps.
    pub max_iters: u64,
    /// Seed of initialisation and sampling.
    pub seed: u64,
    /// Steps between evaluations.
    pub eval_interval: u64,
    /// Batches per evaluation.
    pub eval_iters: usize,
    /// Optimizer settings (the decay runs over `max_iters`).
    pub hyper: Hyper,
}

/// nanoGPT's CPU run of `train_shakespeare_char`.
pub const NANOGPT_CPU: Preset = Preset {
    n_layer: 4,
    n_head: 4,
    n_embd: 128,
    block_size: 64,
    batch_size: 12,
    max_iters: 2000,
    seed: 1337,
    eval_interval: 250,
    eval_iters: 20,
    hyper: Hyper::NANOGPT_CPU,
};
