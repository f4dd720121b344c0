//! Running and replaying shards: recompute a whole shard and compare its result commitments, or
//! replay ONE step from a committed state and compare the resulting state hash.
//!
//! The training code is reached through [`StepRunner`], which the model crate implements for its
//! training state on any backend (`cpu`, `wgpu`). Because every kernel is integer-exact, an honest
//! replay on any backend gives the same bits, so a mismatch is proof of a wrong claim.

use crate::commit::{Hash32, MerkleError, StepHashProof, StepLog};
use crate::shard::{bounded_fingerprint, compute_units, ShardError, ShardResult, ShardSpec};

/// Boxed error of a [`StepRunner`].
pub type RunnerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A deterministic training step function and the state it acts on.
pub trait StepRunner {
    /// Full training state (parameters, optimizer moments, step counter).
    type State: Clone;

    /// Decodes a state from its canonical bytes, for this spec's model.
    fn decode_state(&self, spec: &ShardSpec, bytes: &[u8]) -> Result<Self::State, RunnerError>;

    /// The state hash that enters the step commitments.
    fn state_hash(&self, state: &Self::State) -> Hash32;

    /// Runs the inner step with global index `global_step` of `spec` on `state`. The batch and any
    /// randomness are pure functions of (spec seed, data range, global step).
    fn step(
        &self,
        spec: &ShardSpec,
        state: &mut Self::State,
        global_step: u64,
    ) -> Result<(), RunnerError>;

    /// Commitment to the parameter delta from `start` to `end`
    /// ([`crate::diloco::ParamDelta::commitment`]).
    fn delta_commitment(
        &self,
        start: &Self::State,
        end: &Self::State,
    ) -> Result<Hash32, RunnerError>;

    /// Device fingerprint written into results (backend, vendor, device, driver, shader hashes).
    fn fingerprint(&self) -> String;
}

/// Errors of running and replaying shards.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The spec or result is malformed or does not fit.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// A proof does not check against its committed root.
    #[error("{what}: {source}")]
    Proof {
        /// Which proof.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: MerkleError,
    },
    /// The state supplied as a starting point does not hash to its commitment.
    #[error("{what}: state hashes to {computed}, the commitment is {expected}")]
    StateMismatch {
        /// Which state.
        what: &'static str,
        /// Hex of the committed hash.
        expected: String,
        /// Hex of the supplied state's hash.
        computed: String,
    },
    /// The step index is not inside the shard.
    #[error("step {step} is outside a shard of {steps} steps")]
    StepOutOfRange {
        /// Requested inner step.
        step: u64,
        /// Steps of the shard.
        steps: u32,
    },
    /// A proof was supplied for a different step than needed.
    #[error("{what}: proof is for step {found}, expected step {expected}")]
    WrongStep {
        /// Which proof.
        what: &'static str,
        /// Step needed.
        expected: u64,
        /// Step of the proof.
        found: u64,
    },
    /// The training code failed.
    #[error("runner failed at inner step {step}: {source}")]
    Runner {
        /// Inner step (or the step count for the delta commitment).
        step: u64,
        /// What the runner reported.
        #[source]
        source: RunnerError,
    },
}

/// A shard run: the result, the per-step log (to answer bisection queries) and the final state.
#[derive(Debug, Clone)]
pub struct ShardRun<S> {
    /// The result as a provider returns it.
    pub result: ShardResult,
    /// State hash after every inner step.
    pub log: StepLog,
    /// The final training state.
    pub final_state: S,
}

/// Runs all inner steps of `spec` from `start`, whose hash must equal `spec.start_state`.
pub fn run_shard<R: StepRunner>(
    runner: &R,
    spec: &ShardSpec,
    start: &R::State,
) -> Result<ShardRun<R::State>, ReplayError> {
    spec.validate()?;
    check_state(runner, "shard start", start, &spec.start_state)?;
    let mut state = start.clone();
    let mut log = StepLog::new();
    for inner in 0..spec.steps {
        runner
            .step(spec, &mut state, spec.global_step(inner))
            .map_err(|source| ReplayError::Runner {
                step: inner.into(),
                source,
            })?;
        log.push(runner.state_hash(&state));
    }
    let delta_commitment =
        runner
            .delta_commitment(start, &state)
            .map_err(|source| ReplayError::Runner {
                step: spec.steps.into(),
                source,
            })?;
    let result = ShardResult {
        shard_id: spec.id(),
        steps: spec.steps,
        // steps ≥ 1 was validated, so the log is not empty.
        final_state: log.state_hashes()[log.state_hashes().len() - 1],
        delta_commitment,
        step_root: log.root(),
        compute_units: compute_units(spec),
        fingerprint: bounded_fingerprint(&runner.fingerprint()),
    };
    Ok(ShardRun {
        result,
        log,
        final_state: state,
    })
}

fn check_state<R: StepRunner>(
    runner: &R,
    what: &'static str,
    state: &R::State,
    expected: &Hash32,
) -> Result<(), ReplayError> {
    let computed = runner.state_hash(state);
    if &computed != expected {
        return Err(ReplayError::StateMismatch {
            what,
            expected: hex::encode(expected),
            computed: hex::encode(computed),
        });
    }
    Ok(())
}

/// Outcome of a whole-shard replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardVerdict {
    /// Every commitment of the claim was reproduced.
    Match,
    /// Some commitments differ; the fields are named (`final_state`, `step_root`,
    /// `delta_commitment`). Bisection then finds the first divergent step.
    Mismatch {
        /// Names of the differing fields.
        fields: Vec<&'static str>,
        /// The replayed result.
        replayed: ShardResult,
    },
}

/// Recomputes a whole shard and compares the commitments of `claimed` (which must answer `spec`).
/// Returns the verdict and the replay's step log (to bisect against the claim).
pub fn replay_shard<R: StepRunner>(
    runner: &R,
    spec: &ShardSpec,
    start: &R::State,
    claimed: &ShardResult,
) -> Result<(ShardVerdict, StepLog), ReplayError> {
    claimed.check_against(spec)?;
    let run = run_shard(runner, spec, start)?;
    let r = &run.result;
    let mut fields = Vec::new();
    if r.final_state != claimed.final_state {
        fields.push("final_state");
    }
    if r.step_root != claimed.step_root {
        fields.push("step_root");
    }
    if r.delta_commitment != claimed.delta_commitment {
        fields.push("delta_commitment");
    }
    let verdict = if fields.is_empty() {
        ShardVerdict::Match
    } else {
        ShardVerdict::Mismatch {
            fields,
            replayed: run.result,
        }
    };
    Ok((verdict, run.log))
}

/// Outcome of a single-step replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReplay {
    /// Inner step replayed.
    pub step: u64,
    /// State hash the replay produced.
    pub recomputed: Hash32,
}

/// Replays inner step `step` of `spec` from the committed state before it and returns the state
/// hash after it.
///
/// `before_bytes` is the state before the step; its hash must be `spec.start_state` for step 0,
/// else the state hash of step `step − 1`, proven by `before_proof` against `claimed.step_root`.
pub fn replay_step<R: StepRunner>(
    runner: &R,
    spec: &ShardSpec,
    claimed: &ShardResult,
    step: u64,
    before_bytes: &[u8],
    before_proof: Option<&StepHashProof>,
) -> Result<StepReplay, ReplayError> {
    claimed.check_against(spec)?;
    let expected = committed_before(spec, claimed, step, before_proof)?;
    replay_step_from(runner, spec, step, before_bytes, &expected)
}

/// The committed hash of the state before inner `step`, checked against the claim.
fn committed_before(
    spec: &ShardSpec,
    claimed: &ShardResult,
    step: u64,
    before_proof: Option<&StepHashProof>,
) -> Result<Hash32, ReplayError> {
    if step >= u64::from(spec.steps) {
        return Err(ReplayError::StepOutOfRange {
            step,
            steps: spec.steps,
        });
    }
    if step == 0 {
        return Ok(spec.start_state);
    }
    const WHAT: &str = "state before the replayed step";
    let proof = before_proof.ok_or(ReplayError::WrongStep {
        what: WHAT,
        expected: step - 1,
        found: step,
    })?;
    if proof.step != step - 1 {
        return Err(ReplayError::WrongStep {
            what: WHAT,
            expected: step - 1,
            found: proof.step,
        });
    }
    proof
        .verify(claimed.steps.into(), &claimed.step_root)
        .map_err(|source| ReplayError::Proof { what: WHAT, source })?;
    Ok(proof.state_hash)
}

/// Replays inner `step` from state bytes that must hash to `expected_before`.
pub fn replay_step_from<R: StepRunner>(
    runner: &R,
    spec: &ShardSpec,
    step: u64,
    before_bytes: &[u8],
    expected_before: &Hash32,
) -> Result<StepReplay, ReplayError> {
    if step >= u64::from(spec.steps) {
        return Err(ReplayError::StepOutOfRange {
            step,
            steps: spec.steps,
        });
    }
    let mut state = runner
        .decode_state(spec, before_bytes)
        .map_err(|source| ReplayError::Runner { step, source })?;
    check_state(
        runner,
        "state before the replayed step",
        &state,
        expected_before,
    )?;
    runner
        .step(spec, &mut state, spec.first_step + step)
        .map_err(|source| ReplayError::Runner { step, source })?;
    Ok(StepReplay {
        step,
        recomputed: runner.state_hash(&state),
    })
}

/// Checks a claimed step hash (with its proof against `claimed.step_root`) against a replay.
pub fn check_step_claim(
    claimed: &ShardResult,
    replay: &StepReplay,
    claim: &StepHashProof,
) -> Result<bool, ReplayError> {
    if claim.step != replay.step {
        return Err(ReplayError::WrongStep {
            what: "claimed step hash",
            expected: replay.step,
            found: claim.step,
        });
    }
    claim
        .verify(claimed.steps.into(), &claimed.step_root)
        .map_err(|source| ReplayError::Proof {
            what: "claimed step hash",
            source,
        })?;
    Ok(claim.state_hash == replay.recomputed)
}
