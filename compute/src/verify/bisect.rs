//! Bisection of two disagreeing shard results to the first divergent step, and the referee's
//! single-step verdict.
//!
//! Both results answer the same spec, so both start from the committed start state. If their
//! final states differ, a binary search over the per-step state hashes finds an index `k` where
//! they agree on the state before step `k` (the start state for `k = 0`) and disagree after it.
//! Each probe fetches one step hash per side with an inclusion proof against that side's
//! committed step root, so a side cannot answer inconsistently with its commitment. The search
//! fetches at most ⌈log2 steps⌉ + 1 hashes per side (the last leaf, to tie the claimed final state
//! to the step root, then one per halving). A referee then replays the single step `k` from the
//! agreed state on any backend ([`referee`]); integer-exact kernels make the verdict certain.

use crate::verify::commit::{Hash32, StepHashProof};
use crate::verify::replay::{replay_step_from, ReplayError, StepRunner};
use crate::verify::shard::{ShardError, ShardResult, ShardSpec};

/// Where step hashes of one side's result come from (the network layer implements this by asking
/// the provider; tests serve them from a [`crate::verify::commit::StepLog`]).
pub trait StepHashSource {
    /// The state hash after inner step `step`, with its inclusion proof against the side's
    /// committed step root.
    fn step_hash(
        &mut self,
        step: u64,
    ) -> Result<StepHashProof, Box<dyn std::error::Error + Send + Sync>>;
}

impl StepHashSource for crate::verify::commit::StepLog {
    fn step_hash(
        &mut self,
        step: u64,
    ) -> Result<StepHashProof, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.prove(step)?)
    }
}

/// The two sides of a dispute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first result.
    A,
    /// The second result.
    B,
}

/// Errors of bisection.
#[derive(Debug, thiserror::Error)]
pub enum BisectError {
    /// A result does not answer the spec.
    #[error("result {side:?}: {source}")]
    Shard {
        /// Which side.
        side: Side,
        /// Why.
        #[source]
        source: ShardError,
    },
    /// The two results commit to the same step hashes: nothing to bisect.
    #[error("the results have the same step root: no divergence")]
    NoDivergence,
    /// The results disagree only on intermediate step hashes, not on the final state. A binary
    /// search needs a divergent end; the referee replays the whole shard instead.
    #[error("the final states agree but the step roots differ: replay the whole shard")]
    FinalStatesAgree,
    /// The source failed to answer.
    #[error("side {side:?} failed to serve step {step}: {source}")]
    Source {
        /// Which side.
        side: Side,
        /// Requested step.
        step: u64,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The side answered with something its own commitment refutes: that side is at fault.
    #[error("side {side:?} answered step {step} inconsistently with its commitment: {reason}")]
    Inconsistent {
        /// The side at fault.
        side: Side,
        /// Requested step.
        step: u64,
        /// What was wrong.
        reason: String,
    },
}

/// The first divergent step and the evidence the referee needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// First inner step whose resulting state hashes differ.
    pub step: u64,
    /// State hash both sides agree on before `step` (the spec's start state for step 0).
    pub agreed_before: Hash32,
    /// Proof of `agreed_before` against side A's root (`None` for step 0).
    pub agreed_proof: Option<StepHashProof>,
    /// Side A's claim for the state after `step`, with proof against A's root.
    pub claim_a: StepHashProof,
    /// Side B's claim for the state after `step`, with proof against B's root.
    pub claim_b: StepHashProof,
    /// Step hashes fetched from side A.
    pub fetches_a: u32,
    /// Step hashes fetched from side B.
    pub fetches_b: u32,
}

fn fetch(
    side: Side,
    src: &mut dyn StepHashSource,
    result: &ShardResult,
    step: u64,
    count: &mut u32,
) -> Result<StepHashProof, BisectError> {
    *count += 1;
    let p = src
        .step_hash(step)
        .map_err(|source| BisectError::Source { side, step, source })?;
    if p.step != step {
        return Err(BisectError::Inconsistent {
            side,
            step,
            reason: format!("served step {} instead", p.step),
        });
    }
    p.verify(result.steps.into(), &result.step_root)
        .map_err(|e| BisectError::Inconsistent {
            side,
            step,
            reason: e.to_string(),
        })?;
    Ok(p)
}

/// Finds the first divergent step between two results for `spec`, fetching at most
/// ⌈log2 steps⌉ + 1 proven step hashes from each side.
pub fn bisect(
    spec: &ShardSpec,
    a: &ShardResult,
    src_a: &mut dyn StepHashSource,
    b: &ShardResult,
    src_b: &mut dyn StepHashSource,
) -> Result<Divergence, BisectError> {
    a.check_against(spec).map_err(|source| BisectError::Shard {
        side: Side::A,
        source,
    })?;
    b.check_against(spec).map_err(|source| BisectError::Shard {
        side: Side::B,
        source,
    })?;
    if a.step_root == b.step_root {
        return Err(BisectError::NoDivergence);
    }
    let (mut na, mut nb) = (0u32, 0u32);
    let last = u64::from(spec.steps) - 1;
    // Tie each claimed final state to its step root.
    let fa = fetch(Side::A, src_a, a, last, &mut na)?;
    let fb = fetch(Side::B, src_b, b, last, &mut nb)?;
    for (side, r, f) in [(Side::A, a, &fa), (Side::B, b, &fb)] {
        if f.state_hash != r.final_state {
            return Err(BisectError::Inconsistent {
                side,
                step: last,
                reason: "last step hash differs from the claimed final state".into(),
            });
        }
    }
    if fa.state_hash == fb.state_hash {
        return Err(BisectError::FinalStatesAgree);
    }
    // Invariant: the sides agree after step `lo` (lo = None: the start state) and disagree
    // after step `hi`.
    let mut lo: Option<StepHashProof> = None;
    let (mut hi_a, mut hi_b) = (fa, fb);
    loop {
        let lo_next = lo.as_ref().map_or(0, |p| p.step + 1);
        if lo_next == hi_a.step {
            break;
        }
        let mid = lo_next + (hi_a.step - lo_next) / 2;
        let pa = fetch(Side::A, src_a, a, mid, &mut na)?;
        let pb = fetch(Side::B, src_b, b, mid, &mut nb)?;
        if pa.state_hash == pb.state_hash {
            lo = Some(pa);
        } else {
            hi_a = pa;
            hi_b = pb;
        }
    }
    Ok(Divergence {
        step: hi_a.step,
        agreed_before: lo.as_ref().map_or(spec.start_state, |p| p.state_hash),
        agreed_proof: lo,
        claim_a: hi_a,
        claim_b: hi_b,
        fetches_a: na,
        fetches_b: nb,
    })
}

/// The referee's verdict on a divergence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefereeVerdict {
    /// Side A's claimed step hash is the correct one; B is at fault.
    AIsRight,
    /// Side B's claimed step hash is the correct one; A is at fault.
    BIsRight,
    /// Neither claim matches the replay; both are at fault.
    NeitherIsRight {
        /// The correct state hash after the step.
        recomputed: Hash32,
    },
}

/// The referee's job: replay the single divergent step from the agreed state (`before_bytes`,
/// fetched from either side and checked against `divergence.agreed_before`) and compare.
pub fn referee<R: StepRunner>(
    runner: &R,
    spec: &ShardSpec,
    divergence: &Divergence,
    before_bytes: &[u8],
) -> Result<RefereeVerdict, ReplayError> {
    let replay = replay_step_from(
        runner,
        spec,
        divergence.step,
        before_bytes,
        &divergence.agreed_before,
    )?;
    Ok(if replay.recomputed == divergence.claim_a.state_hash {
        RefereeVerdict::AIsRight
    } else if replay.recomputed == divergence.claim_b.state_hash {
        RefereeVerdict::BIsRight
    } else {
        RefereeVerdict::NeitherIsRight {
            recomputed: replay.recomputed,
        }
    })
}

/// ⌈log2 n⌉ for n ≥ 1: the bound on halvings in [`bisect`].
pub fn ceil_log2(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros()
    }
}
