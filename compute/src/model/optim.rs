//! AdamW in fixed point (nanoGPT's optimizer setup): cosine learning-rate schedule with linear
//! warm-up, global gradient-norm clipping, decoupled weight decay on 2-D tensors only, Adam's
//! second moment kept as its square root.
//!
//! Float hyperparameters are converted ONCE by [`Hyper::to_fixed`] (round half to even of
//! `x · 2^F`, see [`crate::numerics::fixed::to_fixed`]); everything after that is integer arithmetic.

use crate::model::transformer::ParamSpec;
use crate::numerics::fixed::{cos_pi_q56, div_rhe, isqrt, rhe, to_fixed};
use crate::numerics::kernels::{AdamStep, KernelError};
use crate::numerics::tensor::{Exec, Scalar, Tensor};
use rayon::prelude::*;
use std::borrow::Cow;

/// Exponent given to all-zero Adam moments at initialization.
pub const MOMENT_INIT_EXP: i32 = -64;
/// Largest accepted learning rate (and minimum learning rate).
pub const LEARNING_RATE_MAX: f64 = 1.0;
/// Largest accepted weight decay.
pub const WEIGHT_DECAY_MAX: f64 = 10.0;

/// Optimizer hyperparameters as given on the command line (nanoGPT names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hyper {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Learning rate at and after `lr_decay_iters`.
    pub min_lr: f64,
    /// Linear warm-up iterations.
    pub warmup_iters: u64,
    /// Iteration at which the cosine decay reaches `min_lr`.
    pub lr_decay_iters: u64,
    /// Decoupled weight decay (2-D tensors).
    pub weight_decay: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
}

impl Hyper {
    /// nanoGPT's `train_shakespeare_char` CPU settings: lr 1e-3 → 1e-4 over 2000 iterations,
    /// 100 warm-up, wd 0.1, β1 0.9, β2 0.99, clip 1.0 (`crate::model::preset::NANOGPT_CPU`).
    pub const NANOGPT_CPU: Hyper = Hyper {
        learning_rate: 1e-3,
        min_lr: 1e-4,
        warmup_iters: 100,
        lr_decay_iters: 2000,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        grad_clip: 1.0,
    };

    /// [`Hyper::NANOGPT_CPU`].
    pub const fn nanogpt_cpu() -> Self {
        Self::NANOGPT_CPU
    }

    /// The one conversion to integers: rates in Q40, decay, betas and clip in Q30.
    pub fn to_fixed(&self) -> Result<HyperQ, OptimError> {
        let range = |name: &'static str, v: f64, lo: f64, hi: f64| {
            if !(v >= lo && v <= hi) {
                return Err(OptimError::Hyper {
                    name,
                    value: v.to_string(),
                    expected: format!("a number in [{lo}, {hi}]"),
                });
            }
            Ok(())
        };
        range("learning_rate", self.learning_rate, 0.0, LEARNING_RATE_MAX)?;
        range("min_lr", self.min_lr, 0.0, LEARNING_RATE_MAX)?;
        range("weight_decay", self.weight_decay, 0.0, WEIGHT_DECAY_MAX)?;
        range("beta1", self.beta1, 0.0, 0.999_999)?;
        range("beta2", self.beta2, 0.0, 0.999_999)?;
        range("grad_clip", self.grad_clip, 0.0, 1e6)?;
        Ok(HyperQ {
            lr_q40: to_fixed(self.learning_rate, 40),
            min_lr_q40: to_fixed(self.min_lr, 40),
            warmup_iters: self.warmup_iters,
            lr_decay_iters: self.lr_decay_iters,
            weight_decay_q30: to_fixed(self.weight_decay, 30),
            beta1_q30: to_fixed(self.beta1, 30),
            beta2_q30: to_fixed(self.beta2, 30),
            grad_clip_q30: to_fixed(self.grad_clip, 30),
        })
    }
}

/// Integer hyperparameters: the only form that enters training and the state hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HyperQ {
    /// Peak learning rate, Q40.
    pub lr_q40: i64,
    /// Final learning rate, Q40.
    pub min_lr_q40: i64,
    /// Warm-up iterations.
    pub warmup_iters: u64,
    /// End of the cosine decay.
    pub lr_decay_iters: u64,
    /// Weight decay, Q30.
    pub weight_decay_q30: i64,
    /// β1, Q30.
    pub beta1_q30: i64,
    /// β2, Q30.
    pub beta2_q30: i64,
    /// Gradient-norm clip, Q30 (0: no clipping).
    pub grad_clip_q30: i64,
}

/// Why an optimizer step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptimError {
    /// A kernel failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// A hyperparameter is out of range.
    #[error("hyperparameter `{name}` = {value}: expected {expected}")]
    Hyper {
        /// Name.
        name: &'static str,
        /// Value given.
        value: String,
        /// What was expected.
        expected: String,
    },
}

/// nanoGPT's `get_lr(it)` in Q40: `lr·(it+1)/(warmup+1)` during warm-up, `min_lr` after
/// `lr_decay_iters`, else `min + rhe(coeff · (lr − min), 40)` with
/// `coeff = rhe(2^56 + cos_pi_q56(it − warmup, decay − warmup), 17)` (Q40 of ½(1 + cos)).
pub fn lr_q40(h: &HyperQ, it: u64) -> i64 {
    if it < h.warmup_iters {
        return div_rhe(
            h.lr_q40 as i128 * (it as i128 + 1),
            h.warmup_iters as i128 + 1,
        ) as i64;
    }
    if it > h.lr_decay_iters || h.lr_decay_iters <= h.warmup_iters {
        return h.min_lr_q40;
    }
    let coeff = rhe(
        (1i128 << 56) + cos_pi_q56(it - h.warmup_iters, h.lr_decay_iters - h.warmup_iters),
        17,
    );
    h.min_lr_q40 + rhe(coeff * (h.lr_q40 - h.min_lr_q40) as i128, 40) as i64
}

/// `β^t` in Q60 by square-and-multiply, each product rounded half to even.
fn pow_q60(beta_q30: i64, mut t: u64) -> i128 {
    let mut base = (beta_q30 as i128) << 30;
    let mut acc = 1i128 << 60;
    while t > 0 {
        if t & 1 == 1 {
            acc = rhe(acc * base, 60);
        }
        base = rhe(base * base, 60);
        t >>= 1;
    }
    acc
}

/// The scalars of Adam step `t = it + 1`: `alpha_q40 = div_rhe(lr · isqrt(2^60 − β2^t) · 2^30,
/// 2^60 − β1^t)` (Q40 of `lr·sqrt(1 − β2^t)/(1 − β1^t)`) and `decay_q40 = rhe(lr · wd, 30)`
/// for decayed tensors.
pub fn adam_step(h: &HyperQ, it: u64, decay: bool) -> AdamStep {
    let lr = lr_q40(h, it) as i128;
    let t = it + 1;
    let bc1 = (1i128 << 60) - pow_q60(h.beta1_q30, t);
    let bc2 = (1i128 << 60) - pow_q60(h.beta2_q30, t);
    let sq = isqrt(bc2.max(0) as u128) as i128; // Q30
    let alpha = if bc1 > 0 {
        div_rhe((lr * sq) << 30, bc1)
    } else {
        0
    };
    AdamStep {
        beta1_q30: h.beta1_q30,
        beta2_q30: h.beta2_q30,
        alpha_q40: alpha as i64,
        decay_q40: if decay {
            rhe(lr * h.weight_decay_q30 as i128, 30) as i64
        } else {
            0
        },
    }
}

/// Global gradient-norm clipping coefficient in Q30, or `None` when the norm is within the
/// clip (or clipping is off). Per tensor `ss = sum_squares(g)` (value `ss · 2^(2·g.exp)`);
/// `E0 = max(2·g.exp + bitlen(ss)) − 100` (made even); `total = Σ ss · 2^(2·g.exp − E0)`
/// (left shift, or `rhe` for negative shifts); `n = isqrt(total)` so that the norm is
/// `n · 2^(E0/2)`; the coefficient is `clip / norm` by `div_rhe`, applied only if `< 2^30`.
pub fn clip_coeff_q30(
    ex: &Exec<'_>,
    h: &HyperQ,
    grads: &[Tensor],
) -> Result<Option<i64>, KernelError> {
    if h.grad_clip_q30 == 0 {
        return Ok(None);
    }
    // Errors are taken in tensor order, as a sequential loop would report them.
    let sums = ex.sum_squares_all(grads);
    let mut terms = Vec::new();
    for (g, ss) in grads.iter().zip(sums) {
        let (ss, exp) = (ss?, ex.exp(g)?);
        if ss > 0 {
            terms.push((ss, 2 * exp as i64));
        }
    }
    let Some(top) = terms
        .iter()
        .map(|&(ss, e)| e + crate::numerics::fixed::bitlen(ss) as i64)
        .max()
    else {
        return Ok(None);
    };
    let mut e0 = top - 100;
    if e0 % 2 != 0 {
        e0 -= 1;
    }
    let total: u128 = terms
        .iter()
        .map(|&(ss, e)| {
            let sh = e - e0;
            if sh >= 0 {
                ss << sh
            } else {
                rhe(ss as i128, (-sh).min(127) as u32) as u128
            }
        })
        .sum();
    let n = isqrt(total) as i128;
    let half = e0 / 2;
    let clip = h.grad_clip_q30 as i128;
    // coefficient = clip · 2^−30 / (n · 2^half), in Q30: clip · 2^−half / n.
    let c = if half <= 0 {
        let sh = (-half) as u32;
        if sh > 60 {
            return Ok(None); // the norm is below 2^−60 · clip: no clipping
        }
        div_rhe(clip << sh, n)
    } else {
        if half > 60 {
            return Ok(Some(0));
        }
        div_rhe(clip, n << half)
    };
    Ok(if c < (1 << 30) { Some(c as i64) } else { None })
}

/// One AdamW step over all tensors: clip the gradients, then [`Kernels::adamw`](crate::numerics::kernels::Kernels::adamw) per tensor
/// with the scalars of [`adam_step`]. Updates `params`, `m`, `r` (tensors where the executor
/// keeps them) in place; returns 1 if the gradients were clipped, else 0 (on the device until
/// the step's batch runs, when the coefficient was computed there: read it with
/// [`Exec::value`]).
#[allow(clippy::too_many_arguments)] // the three state vectors are updated in place
pub fn step(
    ex: &Exec<'_>,
    h: &HyperQ,
    it: u64,
    specs: &[ParamSpec],
    params: &mut [Tensor],
    m: &mut [Tensor],
    r: &mut [Tensor],
    grads: &[Tensor],
) -> Result<Scalar, KernelError> {
    let with_decay = adam_step(h, it, true);
    let without = adam_step(h, it, false);
    let steps: Vec<&AdamStep> = specs
        .iter()
        .map(|s| if s.decay { &with_decay } else { &without })
        .collect();
    // Resident gradients are clipped on the device (the same integers, no round trip); else
    // the coefficient is computed here and the gradients scaled (borrowed when not clipped:
    // no copy), in parallel; the first error in tensor order ends the step after the tensors
    // before it, as a sequential loop would.
    type Scaled<'g> = Vec<Result<Cow<'g, Tensor>, KernelError>>;
    let device = match h.grad_clip_q30 {
        0 => None,
        c => ex.clip_resident(grads, c),
    };
    let (scaled, clipped): (Scaled<'_>, Scalar) = match device {
        Some(res) => {
            let (gs, flag) = res?;
            (gs.into_iter().map(|g| Ok(Cow::Owned(g))).collect(), flag)
        }
        None => {
            let clip = clip_coeff_q30(ex, h, grads)?;
            let scaled = grads
                .par_iter()
                .map(|g| match clip {
                    Some(c) => ex.scale(g, c).map(Cow::Owned),
                    None => Ok(Cow::Borrowed(g)),
                })
                .collect();
            (scaled, Scalar::Host(i64::from(clip.is_some())))
        }
    };
    let first_err = scaled.iter().position(Result::is_err);
    let n = first_err.unwrap_or(params.len());
    let gs: Vec<&Tensor> = scaled[..n]
        .iter()
        .filter_map(|g| g.as_ref().ok().map(|c| c.as_ref()))
        .collect();
    // New tensors replace the old ones in tensor order up to the first error: the state after
    // an error is the one a sequential loop leaves.
    let updates = ex.adamw_all(&params[..n], &gs, &m[..n], &r[..n], &steps[..n]);
    for (i, update) in updates.into_iter().enumerate() {
        let (p2, m2, r2) = update?;
        params[i] = p2;
        m[i] = m2;
        r[i] = r2;
    }
    if let Some(i) = first_err {
        if let Some(Err(e)) = scaled.into_iter().nth(i) {
            return Err(e);
        }
    }
    Ok(clipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::kernels::Bfp;

    #[test]
    fn schedule_matches_nanogpt() {
        let h = Hyper::nanogpt_cpu().to_fixed().unwrap();
        let f = |it| lr_q40(&h, it) as f64 / (40f64).exp2();
        let nano = |it: u64| {
            if it < 100 {
                1e-3 * (it + 1) as f64 / 101.0
            } else if it > 2000 {
                1e-4
            } else {
                let ratio = (it - 100) as f64 / 1900.0;
                1e-4 + 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos()) * 9e-4
            }
        };
        for it in [0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000, 2001, 5000] {
            assert!(
                (f(it) - nano(it)).abs() < 1e-11,
                "it {it}: {} vs {}",
                f(it),
                nano(it)
            );
        }
    }

    #[test]
    fn bias_correction_matches_float() {
        let h = Hyper::nanogpt_cpu().to_fixed().unwrap();
        for it in [0u64, 1, 10, 500, 1999] {
            let st = adam_step(&h, it, true);
            let lr = lr_q40(&h, it) as f64 / (40f64).exp2();
            let t = (it + 1) as i32;
            let want = lr * (1.0 - 0.99f64.powi(t)).sqrt() / (1.0 - 0.9f64.powi(t));
            let got = st.alpha_q40 as f64 / (40f64).exp2();
            assert!(
                (got - want).abs() <= 1e-7 * want.max(1e-6),
                "it {it}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn clipping_scales_to_unit_norm() {
        let h = Hyper::nanogpt_cpu().to_fixed().unwrap();
        // Two tensors, norm = sqrt(3² + 4²)·2^−3 = 0.625 → no clip; ·2^2 → 10 → clip 0.1.
        let a = Bfp::new(vec![3, 0], -3);
        let b = Bfp::new(vec![4], -3);
        let k = crate::numerics::cpu::CpuKernels;
        let ex = Exec::new(&k);
        let host = |v: [Bfp; 2]| v.map(Tensor::Host);
        assert_eq!(clip_coeff_q30(&ex, &h, &host([a, b])).unwrap(), None);
        let a = Bfp::new(vec![3, 0], 1);
        let b = Bfp::new(vec![4], 1);
        let c = clip_coeff_q30(&ex, &h, &host([a, b])).unwrap().unwrap();
        assert!((c as f64 / (30f64).exp2() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn bad_hyperparameters_are_named() {
        let mut h = Hyper::nanogpt_cpu();
        h.beta2 = 1.5;
        let err = h.to_fixed().unwrap_err().to_string();
        assert!(err.contains("beta2") && err.contains("1.5"), "{err}");
        h.beta2 = f64::NAN;
        assert!(h.to_fixed().is_err());
    }
}
