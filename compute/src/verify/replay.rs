//! Running and replaying shards: recompute a whole shard and compare its result commitments, or
//! replay ONE step from a committed state and compare the resulting state hash.
//!
//! The training code is reached through [`StepRunner`], which the model crate implements for its
//! training state on any backend (`cpu`, `wgpu`). Because every kernel is integer-exact, an honest
//! replay on any backend gives the same bits, so a mismatch is proof of a wrong claim.

use crate::verify::commit::{Hash32, MerkleError, StepHashProof, StepLog};
use crate::verify::shard::{
    bounded_fingerprint, compute_units, ShardError, ShardResult, ShardSpec,
};

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
    /// ([`crate::verify::diloco::ParamDelta::commitment`]).
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
    /// Replaying step `step > 0` needs the inclusion proof of step `step − 1`.
    #[error("replaying step {step} needs the inclusion proof of step {}", step - 1)]
    MissingProof {
        /// The step to replay.
        step: u64,
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
    let proof = before_proof.ok_or(ReplayError::MissingProof { step })?;
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

/// Errors of the model runner (wrapped into [`ReplayError::Runner`] by the shard functions).
#[derive(Debug, thiserror::Error)]
pub enum ModelRunnerError {
    /// The corpus the runner holds is not the spec's.
    #[error("corpus SHA-256 is {held}, the shard spec names {spec}")]
    Corpus {
        /// Hex of the held corpus hash.
        held: String,
        /// Hex of the spec's corpus hash.
        spec: String,
    },
    /// The spec's data range does not fit the corpus.
    #[error("data range {start}..{end} of a {len}-byte corpus: {reason}")]
    Range {
        /// Range start (bytes).
        start: u64,
        /// Range end (bytes).
        end: u64,
        /// Corpus length (bytes).
        len: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A state field disagrees with the spec.
    #[error("training state field `{field}` is {state}, the shard spec says {spec}")]
    StateVsSpec {
        /// Field name.
        field: &'static str,
        /// Value in the state.
        state: String,
        /// Value in the spec.
        spec: String,
    },
    /// The corpus is not usable (empty, not UTF-8, too large).
    #[error(transparent)]
    Data(#[from] crate::model::data::DataError),
    /// The state bytes do not decode.
    #[error(transparent)]
    Decode(#[from] crate::model::train::DecodeError),
    /// A training step failed.
    #[error(transparent)]
    Train(#[from] crate::model::train::TrainError),
    /// The parameter delta could not be formed.
    #[error(transparent)]
    Delta(#[from] crate::verify::diloco::DilocoError),
}

/// [`StepRunner`] for the real model: [`crate::model::train::TrainState`] stepped through any
/// [`crate::numerics::kernels::Kernels`] backend on a character-level corpus.
///
/// Token ids come from the vocabulary of the WHOLE corpus (as `leam train` does); a shard's
/// training tokens are the characters of its byte range, which must start and end on character
/// boundaries. With `data_start = 0` and `data_end` = 90% of the characters (nanoGPT's split;
/// bytes = characters for ASCII text like tinyshakespeare), a shard run is bit-identical to the
/// same steps of `leam train`.
pub struct ModelRunner<'k> {
    kernels: &'k dyn crate::numerics::kernels::Kernels,
    corpus_sha256: Hash32,
    corpus_len: u64,
    vocab_size: usize,
    /// Token id of every character of the corpus.
    ids: Vec<u32>,
    /// Byte offset of every character, plus the corpus length at the end.
    char_starts: Vec<u64>,
}

impl std::fmt::Debug for ModelRunner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRunner")
            .field("backend", &self.kernels.name())
            .field("corpus_sha256", &hex::encode(self.corpus_sha256))
            .field("corpus_len", &self.corpus_len)
            .finish()
    }
}

impl<'k> ModelRunner<'k> {
    /// A runner over `corpus` (UTF-8 text bytes) on `kernels`.
    pub fn new(
        kernels: &'k dyn crate::numerics::kernels::Kernels,
        corpus: &[u8],
    ) -> Result<Self, ModelRunnerError> {
        use sha2::{Digest, Sha256};
        // Validates (non-empty, UTF-8, size) with the same errors as `leam train`.
        let parsed = crate::model::data::Corpus::from_bytes(corpus, "shard corpus")?;
        // `from_bytes` checked UTF-8, so this cannot fail; map it anyway instead of panicking.
        let text = std::str::from_utf8(corpus).map_err(|_| ModelRunnerError::Range {
            start: 0,
            end: corpus.len() as u64,
            len: corpus.len() as u64,
            reason: "corpus is not UTF-8",
        })?;
        let ids = parsed.vocab.encode(text)?;
        let mut char_starts: Vec<u64> = text.char_indices().map(|(i, _)| i as u64).collect();
        char_starts.push(corpus.len() as u64);
        Ok(Self {
            kernels,
            corpus_sha256: Sha256::digest(corpus).into(),
            corpus_len: corpus.len() as u64,
            vocab_size: parsed.vocab.len(),
            ids,
            char_starts,
        })
    }

    /// SHA-256 of the corpus this runner holds.
    pub fn corpus_sha256(&self) -> Hash32 {
        self.corpus_sha256
    }

    /// Number of distinct characters of the corpus (the model's vocabulary).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The spec of a shard that continues `state` for `steps` steps on the byte range
    /// `data_start..data_end` of this runner's corpus.
    pub fn spec_for(
        &self,
        state: &crate::model::train::TrainState,
        data_start: u64,
        data_end: u64,
        steps: u32,
    ) -> Result<ShardSpec, ReplayError> {
        let m = &state.model;
        let h = &state.hyper;
        let u32f = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let spec = ShardSpec {
            numerics: crate::verify::shard::NUMERICS_B16_V1,
            model: crate::verify::shard::ModelShape {
                vocab_size: u32f(m.vocab),
                n_layer: u32f(m.n_layer),
                n_head: u32f(m.n_head),
                n_embd: u32f(m.n_embd),
                block_size: u32f(m.block_size),
                batch_size: u32f(state.batch_size),
            },
            start_state: state.state_hash(),
            corpus_sha256: self.corpus_sha256,
            data_start,
            data_end,
            seed: state.seed,
            hyper: *h,
            first_step: state.step,
            steps,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The training tokens of the spec's byte range.
    fn tokens(&self, spec: &ShardSpec) -> Result<&[u32], ModelRunnerError> {
        if spec.corpus_sha256 != self.corpus_sha256 {
            return Err(ModelRunnerError::Corpus {
                held: hex::encode(self.corpus_sha256),
                spec: hex::encode(spec.corpus_sha256),
            });
        }
        let range = |reason| ModelRunnerError::Range {
            start: spec.data_start,
            end: spec.data_end,
            len: self.corpus_len,
            reason,
        };
        if spec.data_end > self.corpus_len {
            return Err(range("ends past the corpus"));
        }
        let a = self
            .char_starts
            .binary_search(&spec.data_start)
            .map_err(|_| range("start is not on a character boundary"))?;
        let b = self
            .char_starts
            .binary_search(&spec.data_end)
            .map_err(|_| range("end is not on a character boundary"))?;
        Ok(&self.ids[a..b])
    }

    /// Checks that a decoded state belongs to the spec (shape, batch, seed, hyperparameters).
    pub fn check_state_fits(
        &self,
        spec: &ShardSpec,
        state: &crate::model::train::TrainState,
    ) -> Result<(), ModelRunnerError> {
        let want = self
            .spec_for(state, spec.data_start, spec.data_end, spec.steps)
            .map_err(|e| ModelRunnerError::StateVsSpec {
                field: "spec",
                state: e.to_string(),
                spec: "a valid spec".into(),
            })?;
        // Compared by value; the debug forms only describe a difference.
        let differs: [(&'static str, bool, String, String); 4] = [
            (
                "model",
                want.model != spec.model,
                format!("{:?}", want.model),
                format!("{:?}", spec.model),
            ),
            (
                "seed",
                want.seed != spec.seed,
                want.seed.to_string(),
                spec.seed.to_string(),
            ),
            (
                "hyper",
                want.hyper != spec.hyper,
                format!("{:?}", want.hyper),
                format!("{:?}", spec.hyper),
            ),
            (
                "vocab_size",
                self.vocab_size as u64 != u64::from(spec.model.vocab_size),
                self.vocab_size.to_string(),
                spec.model.vocab_size.to_string(),
            ),
        ];
        for (field, different, state, spec) in differs {
            if different {
                return Err(ModelRunnerError::StateVsSpec { field, state, spec });
            }
        }
        Ok(())
    }
}

impl StepRunner for ModelRunner<'_> {
    type State = crate::model::train::TrainState;

    fn decode_state(&self, spec: &ShardSpec, bytes: &[u8]) -> Result<Self::State, RunnerError> {
        let state =
            crate::model::train::TrainState::decode(bytes).map_err(ModelRunnerError::from)?;
        self.check_state_fits(spec, &state)?;
        Ok(state)
    }

    fn state_hash(&self, state: &Self::State) -> Hash32 {
        state.state_hash()
    }

    fn step(
        &self,
        spec: &ShardSpec,
        state: &mut Self::State,
        global_step: u64,
    ) -> Result<(), RunnerError> {
        if state.step != global_step {
            return Err(ModelRunnerError::StateVsSpec {
                field: "step",
                state: state.step.to_string(),
                spec: global_step.to_string(),
            }
            .into());
        }
        if global_step == spec.first_step {
            self.check_state_fits(spec, state)?;
        }
        let tokens = self.tokens(spec)?;
        let batch = state
            .batch_for(tokens, global_step)
            .map_err(ModelRunnerError::from)?;
        state
            .step(self.kernels, &batch)
            .map_err(ModelRunnerError::from)?;
        Ok(())
    }

    fn delta_commitment(
        &self,
        start: &Self::State,
        end: &Self::State,
    ) -> Result<Hash32, RunnerError> {
        let delta = crate::verify::diloco::ParamDelta::between(&start.params, &end.params)
            .map_err(ModelRunnerError::from)?;
        Ok(delta.commitment())
    }

    fn fingerprint(&self) -> String {
        self.kernels.name()
    }
}
