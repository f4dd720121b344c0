//! Text generation from a checkpoint, in integers: the last position's logits go through the
//! integer softmax ([`Kernels::softmax`], scale 1), and the token is drawn from the
//! counter-based hash of `(seed, STREAM_SAMPLE, i)`, so the same seed gives the same text on
//! every backend.

use crate::model::checkpoint::Checkpoint;
use crate::model::data::DataError;
use crate::model::transformer::{forward_backward, ModelError};
use crate::numerics::fixed::hash3;
use crate::numerics::kernels::Kernels;

/// Hash stream of sampling draws.
pub const STREAM_SAMPLE: u64 = 4;
/// Largest number of tokens one call generates.
pub const SAMPLE_TOKENS_MAX: usize = 1 << 20;

/// Why sampling failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// The prompt has characters outside the vocabulary.
    #[error("prompt: {0}")]
    Prompt(#[from] DataError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Too many tokens requested.
    #[error("{requested} tokens requested, the maximum is {max}")]
    TooMany {
        /// Requested.
        requested: usize,
        /// Limit.
        max: usize,
    },
}

/// Generates `tokens` characters after `prompt` (an empty prompt starts from `"\n"` if the
/// vocabulary has it, else from its first character). Draw `i`: with integer probabilities
/// `p` (B16 mantissas), `u = (hash3(seed, STREAM_SAMPLE, i) · Σp) >> 64`, and the token is the
/// first `j` with `p_0 + … + p_j > u`.
pub fn generate(
    kernels: &dyn Kernels,
    ckpt: &Checkpoint,
    prompt: &str,
    tokens: usize,
    seed: u64,
) -> Result<String, SampleError> {
    if tokens > SAMPLE_TOKENS_MAX {
        return Err(SampleError::TooMany {
            requested: tokens,
            max: SAMPLE_TOKENS_MAX,
        });
    }
    let st = &ckpt.state;
    let v = st.model.vocab;
    let mut ctx = if prompt.is_empty() {
        vec![ckpt.vocab.chars.binary_search(&'\n').unwrap_or(0) as u32]
    } else {
        ckpt.vocab.encode(prompt)?
    };
    for i in 0..tokens {
        let from = ctx.len().saturating_sub(st.model.block_size);
        let window = &ctx[from..];
        let (_, logits) = forward_backward(
            kernels,
            &st.model,
            &st.params,
            window,
            None,
            1,
            window.len(),
            false,
        )?;
        let last = crate::numerics::kernels::Bfp::new(
            logits.mant[(window.len() - 1) * v..window.len() * v].to_vec(),
            logits.exp,
        );
        let p = kernels
            .softmax(&last, 1, v, false, 1 << 16)
            .map_err(ModelError::from)?;
        let total: u128 = p.mant.iter().map(|&x| x.max(0) as u128).sum();
        let u = (hash3(seed, STREAM_SAMPLE, i as u64) as u128 * total) >> 64;
        let mut acc = 0u128;
        let mut pick = v - 1;
        for (j, &x) in p.mant.iter().enumerate() {
            acc += x.max(0) as u128;
            if acc > u {
                pick = j;
                break;
            }
        }
        ctx.push(pick as u32);
    }
    let out = if prompt.is_empty() {
        &ctx[1..]
    } else {
        &ctx[..]
    };
    Ok(ckpt.vocab.decode(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::data::Vocab;
    use crate::model::optim::Hyper;
    use crate::model::train::TrainState;
    use crate::model::transformer::Config;
    use crate::numerics::cpu::CpuKernels;

    #[test]
    fn sampling_is_deterministic_and_checks_the_prompt() {
        let cfg = Config {
            vocab: 4,
            n_layer: 1,
            n_head: 1,
            n_embd: 4,
            block_size: 5,
        };
        let state = TrainState::new(cfg, Hyper::nanogpt_cpu().to_fixed().unwrap(), 1, 2).unwrap();
        let ck = Checkpoint {
            vocab: Vocab {
                chars: vec!['\n', 'a', 'b', 'c'],
            },
            state,
        };
        let a = generate(&CpuKernels, &ck, "ab", 12, 7).unwrap();
        assert_eq!(a, generate(&CpuKernels, &ck, "ab", 12, 7).unwrap());
        assert_eq!(a.chars().count(), 14);
        assert!(a.starts_with("ab"));
        assert_eq!(
            generate(&CpuKernels, &ck, "", 3, 1)
                .unwrap()
                .chars()
                .count(),
            3
        );
        assert!(matches!(
            generate(&CpuKernels, &ck, "xyz", 1, 1),
            Err(SampleError::Prompt(DataError::UnknownChar {
                ch: 'x',
                offset: 0
            }))
        ));
    }
}
