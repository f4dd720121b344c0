//! The model and single-node training, on any [`Kernels`](crate::numerics::kernels::Kernels)
//! backend.
//!
//! - [`transformer`]: the GPT-2 style transformer with the one set of model limits;
//! - [`optim`]: AdamW and the learning-rate schedule in fixed point;
//! - [`data`]: character-level corpora and batch sampling;
//! - [`train`]: the training state, its canonical encoding and the training loop;
//! - [`checkpoint`]: checkpoints (vocabulary and training state) on disk;
//! - [`sample`]: text generation from a checkpoint;
//! - [`preset`]: the one nanoGPT CPU preset.

pub mod checkpoint;
pub mod data;
pub mod optim;
pub mod preset;
pub mod sample;
pub mod train;
pub mod transformer;
