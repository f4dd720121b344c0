//! The bidder's round loop (`specs/market.md` §8.2): once every lease of a clearing is co-signed,
//! the bidder's node runs the job. Per DiLoCo round it derives each worker's shard spec, stores
//! the start state as a blob, asks the shard's provider (and, for the secretly replicated
//! shards, a second one) to run it, polls, proposes a receipt, compares replicas, asks the job's
//! referee to judge every shard, and merges the deltas of the shards whose claims agree (fetched
//! by the result's delta commitment) with the outer optimizer; a mismatched shard is left out of
//! the outer step rather than holding the round up. The round's evaluation runs while the next
//! round's shards do. A provider that does not finish within
//! its timeout, or that fails, loses the shard, which goes to the next provider with lease
//! quota left. After the last round the bidder waits for the referee's verdicts and pays, by
//! co-signed settlements, exactly the units the referee accepted at the lease's price.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leam_compute::model::data::STREAM_EVAL_VAL;
use leam_compute::model::train::{params_blob, TrainState};
use leam_compute::numerics::fixed::B24_MANT_MAX;
use leam_compute::numerics::kernels::Kernels;
use leam_compute::verify::diloco::{
    fresh_start_state, outer_step, OuterOptimizer, OuterState, ParamDelta,
};
use leam_compute::verify::replay::ModelRunner;
use leam_compute::verify::shard::{ShardResult, ShardSpec};
use leam_ledger::entry::{
    Body, Clearing, Digest32, Entry, PublicKey, ReceiptTerms, SettlementTerms, Terms as _, Verdict,
};
use leam_market::clearing::lease_terms;
use leam_market::job::Job;
use leam_market::settle::owed_cents;
use leam_net::core::Fact;
use leam_net::work::{Claim, WorkRequest, WorkResponse};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::blobs::Blobs;
use crate::link::{short, Link, LinkError};
use crate::plan::{self, Slot};

/// How often the bidder polls its providers (a poll is one small request per running shard;
/// a round ends at most this long after its last run finished).
pub const POLL_MS: u64 = 20;
/// How often the bidder looks for the referee's verdicts in the logs its node holds while the
/// job waits for them before settling (each look decodes the node's copies of the logs).
pub const VERDICT_POLL_MS: u64 = 50;
/// Longest wait for the referee's verdicts after the last round.
pub const VERDICT_WAIT_MS: u64 = 120_000;
/// How long a referee that took a judgment may stay silent (no verdict in its log) before the
/// bidder asks the job's next referee too: a referee that cannot check a claim writes nothing
/// (`specs/market.md` §8.3), and one replay is at most one shard of compute.
pub const REFEREE_SILENCE_MS: u64 = 30_000;
/// Times one shard may be leased again before the job gives it up.
pub const RELEASES_PER_SHARD_MAX: u32 = 4;
/// File name suffix of a job's progress in `DIR/jobs/`.
pub const PROGRESS_SUFFIX: &str = ".progress.json";
/// File name suffix of a job's resume record in `DIR/jobs/` ([`Resume`]).
pub const RESUME_SUFFIX: &str = ".resume.json";
/// Largest resume record read back.
pub const RESUME_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Longest wait for the leases of a re-clearing to be co-signed (the node's market task
/// proposes them); providers that have not co-signed by then get no runs.
pub const RECLEARING_LEASE_WAIT_MS: u64 = 60_000;
/// Longest wait, when a provider leaves the job, for the referees' verdicts on its receipts of
/// the job: a run they reject delivered nothing, and its shard is bought again with the
/// unfinished ones (`specs/market.md` §3.6).
pub const LEAVE_VERDICT_WAIT_MS: u64 = 10_000;

/// What a bidder restarted mid-job resumes from, written atomically after every round: the
/// progress so far and, per finished round, the parameter delta (blob SHA-256, hex: the
/// result's delta commitment) merged for each worker, or none. Everything else is derived
/// again: the shard specs are a pure function of the job and the global state, and replaying
/// the outer steps on the stored deltas gives the same global state bit for bit, so a resumed
/// job continues exactly where it stood.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resume {
    /// The progress as of the last finished round.
    pub progress: Progress,
    /// Per finished round, per worker: the merged delta's hash.
    pub merged: Vec<Vec<Option<String>>>,
}

/// Errors that stop a job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The node stopped or refused an append.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The job cannot be set up.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// Training or verification on the bidder's side failed.
    #[error("{0}")]
    Compute(String),
    /// A shard found no provider.
    #[error("shard {shard}: {reason}")]
    Unserved {
        /// Shard index.
        shard: u32,
        /// Why.
        reason: String,
    },
}

/// One round's progress, as `leam jobs` and the dashboard show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundProgress {
    /// Round index.
    pub round: u32,
    /// Shards of the round.
    pub shards: u32,
    /// Runs that finished (primaries and replicas).
    pub runs: u32,
    /// Replicated shards of the round.
    pub replicated: u32,
    /// Replicated shards whose two results differed.
    pub mismatched: u32,
    /// Shards whose delta entered the outer step.
    pub merged: u32,
    /// Runs taken from one provider and leased to another (timeout, failure).
    pub released: u32,
    /// Runs of the round the referee accepted so far (its verdicts arrive after the round).
    #[serde(default)]
    pub verified: u32,
    /// Runs of the round the referee rejected so far.
    #[serde(default)]
    pub rejected: u32,
    /// Validation loss after the outer step.
    pub val_loss: Option<f64>,
    /// Wall time of the round, milliseconds.
    pub wall_ms: u64,
}

/// A job's progress and its measured figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Job id (hex).
    pub job: String,
    /// `running`, `settling`, `done` or `failed: …`.
    pub state: String,
    /// Validation loss before training.
    pub val_loss_start: Option<f64>,
    /// Rounds so far.
    pub rounds: Vec<RoundProgress>,
    /// Device time each provider reported for its runs, milliseconds (by key hex).
    pub device_ms: BTreeMap<String, u64>,
    /// Compute units of primary runs.
    pub primary_units: u64,
    /// Compute units of replica runs (the verification overhead).
    pub replica_units: u64,
    /// Bytes moved per outer step per worker, mean over the merged shards: the start
    /// parameters to the provider (the params blob's length) and the parameter delta back (as
    /// the link counted it).
    pub bytes_per_worker_round: u64,
    /// Bytes of parameter deltas fetched from providers, as the link counted them.
    pub delta_bytes_fetched: u64,
    /// Bytes of start parameters the merged shards' providers needed (params blob lengths).
    pub params_bytes_served: u64,
    /// Shards merged so far (the worker-rounds the two byte counts cover).
    pub worker_rounds: u64,
    /// What plain data parallelism would move per worker for the same inner steps
    /// (`leam_compute::verify::diloco::data_parallel_bytes`).
    pub data_parallel_bytes_per_worker_round: u64,
    /// Job wall time from the first run request to the last outer step, milliseconds.
    pub wall_ms: u64,
    /// The bidder's settlements (provider key hex → cents; the public pool pays the subsidy
    /// share by its own settlements).
    pub paid_cents: BTreeMap<String, u64>,
    /// Verdicts by the referee: accepted, rejected.
    pub verdicts: (u64, u64),
    /// Re-clearings: the shards providers left unfinished, bought again
    /// (`specs/market.md` §3.6).
    #[serde(default)]
    pub reclearings: Vec<Replacement>,
}

/// One re-clearing, as the progress document shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Replacement {
    /// The providers that left (key hex).
    pub replaces: Vec<String>,
    /// Shards bought again.
    pub shards: u64,
    /// The providers that took them (key hex) and how many each.
    pub providers: BTreeMap<String, u32>,
    /// The re-clearing's uniform price, credits per 1,000 units (0: no offer could take them).
    pub price_cents_per_kilo_unit: u64,
}

/// A validation loss being computed on a blocking thread.
type Evaluation = tokio::task::JoinHandle<Result<f64, JobError>>;

/// The loss an [`Evaluation`] computed.
async fn evaluated(eval: Evaluation) -> Result<f64, JobError> {
    eval.await
        .map_err(|e| JobError::Compute(format!("evaluation: {e}")))?
}

/// A running job, as the bidder holds it.
pub struct Bidder<'k> {
    link: Link,
    blobs: Blobs,
    runner: ModelRunner<'k>,
    /// The corpus (read once) and its validation tokens (tokenised once, evaluated every round).
    corpus: Vec<u8>,
    val: Arc<Vec<u32>>,
    kernels: SharedKernels,
    me: PublicKey,
    job: Job,
    job_id: Digest32,
    clearing: Clearing,
    slots: Vec<Slot>,
    units_per_hour: BTreeMap<PublicKey, u64>,
    money: Money,
    seed: [u8; 32],
    progress_path: PathBuf,
    progress: Progress,
    /// Finished rounds' merged deltas (see [`Resume`]).
    merged: Vec<Vec<Option<String>>>,
    /// Judgments asked for and not yet seen in a referee's log (at most two per shard of the
    /// job: its claims, and a lazy provider's result).
    judging: std::sync::Mutex<Vec<Judging>>,
    /// Providers that lost a run (timed out, unreachable, failed): they get no new runs.
    gone: BTreeSet<PublicKey>,
    /// Runs each re-clearing's provider may still take (its leased shards not yet placed).
    spare: BTreeMap<PublicKey, u64>,
    /// The fact id of each provider's lease of the job (its receipts name it), as the clearing
    /// and the re-clearings imply it.
    lease_ids: BTreeMap<PublicKey, Digest32>,
}

/// Who pays what of a settlement: the bidder's sector and the federation's subsidy rate (a
/// startup pays `100 − rate` percent, the public pool the rest, `specs/market.md` §5).
#[derive(Debug, Clone, Copy)]
pub struct Money {
    /// The bidder's sector.
    pub sector: leam_ledger::entry::Sector,
    /// The genesis subsidy rate, percent.
    pub subsidy_percent: u8,
}

impl std::fmt::Debug for Bidder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bidder")
            .field("job", &short(&self.job_id))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Primary,
    Replica,
}

#[derive(Debug)]
struct Track {
    worker: usize,
    role: Role,
    provider: PublicKey,
    sent: Option<Instant>,
    /// The first run request to the current provider that was not answered (unreachable).
    unanswered: Option<Instant>,
    released: u32,
    tried: Vec<PublicKey>,
    done: Option<(ShardResult, u64)>,
    receipt: bool,
}

impl<'k> Bidder<'k> {
    /// Set up the job `job` (id `job_id`) cleared by `clearing`, with the secret `seed`, on the
    /// corpus stored as a blob in `dir`. `units_per_hour` are the providers' offered
    /// throughputs (they set the shard timeouts).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        link: Link,
        dir: &Path,
        kernels: &'k SharedKernels,
        me: PublicKey,
        job: Job,
        clearing: Clearing,
        seed: &[u8; 32],
        units_per_hour: BTreeMap<PublicKey, u64>,
        money: Money,
    ) -> Result<Self, JobError> {
        let blobs = Blobs::new(dir);
        let job_id = clearing.job_id;
        let corpus = blobs
            .get(&job.corpus_sha256)
            .map_err(LinkError::from)?
            .ok_or_else(|| {
                JobError::Compute(format!(
                    "the corpus {} is not in this node's blob store (leam bid puts it there)",
                    short(&job.corpus_sha256)
                ))
            })?;
        let runner = ModelRunner::new(kernels.as_ref(), &corpus)
            .map_err(|e| JobError::Compute(e.to_string()))?;
        let val = leam_compute::model::data::Corpus::from_bytes(&corpus, "job corpus")
            .map_err(|e| JobError::Compute(e.to_string()))?
            .val;
        let slots = plan::plan(&job, &job_id, &clearing.assignments, seed);
        let lease_ids = lease_ids(&clearing, &job, me);
        let progress_path = dir
            .join(crate::JOBS_DIR_NAME)
            .join(format!("{}{PROGRESS_SUFFIX}", hex::encode(job_id)));
        Ok(Self {
            link,
            blobs,
            runner,
            corpus,
            val: Arc::new(val),
            kernels: kernels.clone(),
            me,
            progress: Progress {
                job: hex::encode(job_id),
                state: "running".into(),
                ..Progress::default()
            },
            job,
            job_id,
            clearing,
            slots,
            units_per_hour,
            money,
            seed: *seed,
            progress_path,
            merged: Vec::new(),
            judging: std::sync::Mutex::new(Vec::new()),
            gone: BTreeSet::new(),
            spare: BTreeMap::new(),
            lease_ids,
        })
    }

    /// Ask a referee of the job to judge a shard's claims: the first of the job's referees
    /// that is neither party and takes the request (an unreachable or refusing one is passed
    /// over); see [`Bidder::retry_judges`] for one that stays silent.
    async fn send_judge(&self, request: WorkRequest) {
        let WorkRequest::Judge { claims, .. } = &request else {
            return;
        };
        let parties: Vec<PublicKey> = claims.iter().map(|c| c.provider).collect();
        let j = Judging {
            referees: eligible_referees(&self.job.referees, &parties),
            request,
            taken: None,
            next: 0,
        };
        let j = self.ask_referee(j).await;
        self.judging.lock().expect("judging lock").push(j);
    }

    /// Offer `j` to its referees in the job's order from `j.next`, each at most once, until one
    /// takes it.
    async fn ask_referee(&self, mut j: Judging) -> Judging {
        let n = j.referees.len();
        for _ in 0..n {
            let r = j.referees[j.next % n];
            j.next += 1;
            match self.link.work(r, j.request.clone()).await {
                Ok(_) => {
                    j.taken = Some(Instant::now());
                    return j;
                }
                Err(e) => {
                    tracing::warn!(referee = %short(&r), error = %e, "a referee did not take a shard; asking the job's next")
                }
            }
        }
        if n == 0 {
            tracing::warn!(job = %short(&self.job_id), "no referee of the job is neither party: the shard stays unjudged and unpaid");
        }
        j.taken = None;
        j
    }

    /// Drop the judgments whose verdicts `logs` hold; ask again those no referee took; ask the
    /// next referee for those the last one took but has not judged for
    /// [`REFEREE_SILENCE_MS`] (while any referee is left that was not asked).
    async fn retry_judges(&self, logs: &BTreeMap<PublicKey, Vec<Entry>>) {
        let pending = std::mem::take(&mut *self.judging.lock().expect("judging lock"));
        let mut keep = Vec::with_capacity(pending.len());
        for j in pending {
            let WorkRequest::Judge { shard, claims, .. } = &j.request else {
                continue;
            };
            let judged = claims.iter().all(|c| {
                let id: Digest32 = Sha256::digest(&c.result).into();
                self.judged(logs, *shard, &c.provider, &id)
            });
            let silent = j.taken.is_some_and(|t| {
                t.elapsed() >= Duration::from_millis(REFEREE_SILENCE_MS)
                    && j.next < j.referees.len()
            });
            keep.push(match () {
                _ if judged => continue,
                _ if j.taken.is_none() || silent => self.ask_referee(j).await,
                _ => j,
            });
        }
        self.judging.lock().expect("judging lock").extend(keep);
    }

    /// Continue from the resume record in `DIR/jobs/` if an earlier process left one; whether
    /// it did. A record that does not read back is an error (the job is not silently restarted
    /// from scratch, which would propose receipts and pay twice).
    pub fn resume_from_disk(&mut self) -> Result<bool, JobError> {
        let path = self.resume_path();
        let bytes = match std::fs::metadata(&path) {
            Err(_) => return Ok(false),
            Ok(m) if m.len() > RESUME_BYTES_MAX => {
                return Err(JobError::Compute(format!(
                    "{}: {} bytes, more than RESUME_BYTES_MAX = {RESUME_BYTES_MAX}",
                    path.display(),
                    m.len()
                )))
            }
            Ok(_) => std::fs::read(&path)
                .map_err(|e| JobError::Compute(format!("{}: {e}", path.display())))?,
        };
        let r: Resume = serde_json::from_slice(&bytes)
            .map_err(|e| JobError::Compute(format!("{}: {e}", path.display())))?;
        if r.merged.len() != r.progress.rounds.len()
            || r.merged.len() > self.job.rounds as usize
            || r.merged
                .iter()
                .any(|m| m.len() != self.job.shards_per_round as usize)
        {
            return Err(JobError::Compute(format!(
                "{}: {} rounds recorded, {} in the progress, for a job of {} rounds × {} shards",
                path.display(),
                r.merged.len(),
                r.progress.rounds.len(),
                self.job.rounds,
                self.job.shards_per_round
            )));
        }
        self.progress = r.progress;
        self.progress.state = "running".into();
        self.merged = r.merged;
        Ok(true)
    }

    fn resume_path(&self) -> PathBuf {
        self.progress_path
            .with_file_name(format!("{}{RESUME_SUFFIX}", hex::encode(self.job_id)))
    }

    fn save_resume(&self) {
        let r = Resume {
            progress: self.progress.clone(),
            merged: self.merged.clone(),
        };
        let path = self.resume_path();
        let tmp = path.with_extension("tmp");
        if let Ok(b) = serde_json::to_vec(&r) {
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }

    fn save(&self) {
        if let Some(d) = self.progress_path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let tmp = self.progress_path.with_extension("tmp");
        if let Ok(b) = serde_json::to_vec_pretty(&self.progress) {
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(&tmp, &self.progress_path);
            }
        }
    }

    /// The validation loss of `state`, computed on a blocking thread: a round's evaluation
    /// runs while the next round's shards do, so the providers do not wait for it.
    fn eval(&self, state: TrainState) -> Evaluation {
        let (kernels, val) = (self.kernels.clone(), self.val.clone());
        tokio::task::spawn_blocking(move || {
            state
                .evaluate(
                    kernels.as_ref(),
                    &val,
                    "validation",
                    STREAM_EVAL_VAL,
                    plan::EVAL_BATCHES,
                )
                .map_err(|e| JobError::Compute(e.to_string()))
        })
    }

    /// Waits for the evaluation of round `index` of the progress and records its loss.
    async fn record_eval(&mut self, pending: Option<(usize, Evaluation)>) -> Result<(), JobError> {
        let Some((index, eval)) = pending else {
            return Ok(());
        };
        let loss = evaluated(eval).await?;
        if let Some(rp) = self.progress.rounds.get_mut(index) {
            rp.val_loss = Some(loss);
            tracing::info!(job = %short(&self.job_id), round = rp.round, val_loss = loss, "round evaluated");
        }
        self.save();
        Ok(())
    }

    /// Run every round, then settle. Progress is written to `DIR/jobs/<job id>.progress.json`
    /// after every round.
    pub async fn run(mut self) -> Result<Progress, JobError> {
        let r = self.rounds().await;
        match r {
            Ok(()) => {
                self.progress.state = "settling".into();
                self.save();
                // The replication seed is public from now on: every auditor re-computes which
                // shards were checked (once: a resumed job may have revealed it already).
                let revealed = self.link.logs().await?.get(&self.me).is_some_and(|own| {
                    own.iter()
                        .any(|e| matches!(&e.body, Body::Reveal(r) if r.job_id == self.job_id))
                });
                if !revealed {
                    self.link
                        .append(Body::Reveal(leam_ledger::entry::Reveal {
                            job_id: self.job_id,
                            seed: self.seed,
                        }))
                        .await?;
                }
                self.settle().await?;
                self.progress.state = "done".into();
                self.save();
                Ok(self.progress)
            }
            Err(e) => {
                self.progress.state = format!("failed: {e}");
                self.save();
                Err(e)
            }
        }
    }

    async fn rounds(&mut self) -> Result<(), JobError> {
        let ranges = plan::worker_ranges(&self.corpus, self.job.shards_per_round)?;
        let start = plan::initial_state(&self.job, self.runner.vocab_size())?;
        let logs = self.link.logs().await?;
        self.restore_reclearings(&logs);
        drop(logs);
        let resumed = self.merged.len() as u32;
        if resumed == 0 {
            self.progress.val_loss_start = Some(evaluated(self.eval(start.clone())).await?);
        } else {
            tracing::info!(job = %short(&self.job_id), rounds = resumed, "resuming: replaying the recorded outer steps");
        }
        self.save();
        // Every worker starts a round from this one state (`fresh_start_state`).
        let mut round_start = start.clone();
        let mut global = OuterState::new(start.params.clone(), OuterOptimizer::DILOCO);
        self.progress.data_parallel_bytes_per_worker_round =
            leam_compute::verify::diloco::data_parallel_bytes(
                start.params.iter().map(|p| p.mant.len() as u64).sum(),
                u64::from(self.job.inner_steps),
            );
        let job_started = Instant::now();
        let wall_before_ms = self.progress.wall_ms;
        // The evaluation of the last merged round (its index in `progress.rounds`), running.
        let mut evaluating: Option<(usize, Evaluation)> = None;
        for round in 0..self.job.rounds {
            if round < resumed {
                // A round an earlier process finished: the same outer step on the deltas it
                // merged, read back from the blob store by hash.
                let mut deltas: Vec<(Digest32, ParamDelta)> = Vec::new();
                for (w, range) in ranges.iter().enumerate() {
                    let Some(h) = self.merged[round as usize].get(w).cloned().flatten() else {
                        continue;
                    };
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(&h, &mut hash).map_err(|e| {
                        JobError::Compute(format!("resume record, round {round}: {h}: {e}"))
                    })?;
                    let bytes =
                        self.blobs
                            .get(&hash)
                            .map_err(LinkError::from)?
                            .ok_or_else(|| {
                                JobError::Compute(format!(
                                "resume record, round {round}: delta {h} is not in the blob store"
                            ))
                            })?;
                    let delta =
                        ParamDelta::decode(&bytes).map_err(|e| JobError::Compute(e.to_string()))?;
                    let spec = self
                        .runner
                        .spec_for(&round_start, range.0, range.1, self.job.inner_steps)
                        .map_err(|e| JobError::Compute(e.to_string()))?;
                    deltas.push((spec.id(), delta));
                }
                let merged = merge(
                    &mut global,
                    &mut round_start,
                    &deltas,
                    &start,
                    self.job.inner_steps,
                )?;
                // The earlier process may have stopped while this round was being evaluated.
                let unevaluated = self
                    .progress
                    .rounds
                    .iter()
                    .position(|r| r.round == round && r.val_loss.is_none());
                if let Some(index) = unevaluated.filter(|_| merged) {
                    let eval = self.eval(round_start.clone());
                    self.record_eval(Some((index, eval))).await?;
                }
                continue;
            }
            let t = Instant::now();
            let slots: Vec<Slot> = self
                .slots
                .iter()
                .filter(|s| s.round == round)
                .cloned()
                .collect();
            if slots.is_empty() {
                break;
            }
            // Every worker starts the round from the same fresh state (the global parameters,
            // fresh moments): its params blob is all a provider fetches to build it.
            // The whole state is stored once for the referee (and any provider that asks
            // without `start_params`).
            let params = params_blob(&round_start.model, &round_start.params);
            let params_bytes = params.len() as u64;
            let start_params = self.blobs.put(&params).map_err(LinkError::from)?;
            let start_hash = self
                .blobs
                .put(&round_start.encode())
                .map_err(LinkError::from)?;
            let mut specs: Vec<ShardSpec> = Vec::new();
            for range in &ranges {
                let spec = self
                    .runner
                    .spec_for(&round_start, range.0, range.1, self.job.inner_steps)
                    .map_err(|e| JobError::Compute(e.to_string()))?;
                debug_assert_eq!(start_hash, spec.start_state);
                specs.push(spec);
            }
            let mut tracks: Vec<Track> = Vec::new();
            for s in &slots {
                for (role, p) in [(Role::Primary, Some(s.primary)), (Role::Replica, s.replica)] {
                    if let Some(provider) = p {
                        tracks.push(Track {
                            worker: s.worker as usize,
                            role,
                            provider,
                            sent: None,
                            unanswered: None,
                            released: 0,
                            tried: vec![provider],
                            done: None,
                            receipt: false,
                        });
                    }
                }
            }
            // The runs of providers that left go to a re-clearing's providers where one has runs
            // to spare (never the provider of the shard's other run).
            for i in 0..tracks.len() {
                if !self.gone.contains(&tracks[i].provider) {
                    continue;
                }
                let siblings = siblings_of(&tracks, i);
                if let Some(p) = self.take_spare(&siblings) {
                    tracks[i].provider = p;
                    tracks[i].tried.push(p);
                }
            }
            let mut rp = RoundProgress {
                round,
                shards: slots.len() as u32,
                replicated: slots.iter().filter(|s| s.replica.is_some()).count() as u32,
                ..RoundProgress::default()
            };
            self.drive(&slots, &specs, start_params, &mut tracks, &mut rp)
                .await?;
            let t_runs = t.elapsed();
            // Compare replicas, ask the referee, merge what is accepted.
            let mut deltas: Vec<(Digest32, ParamDelta)> = Vec::new();
            let mut merged: Vec<Option<String>> = vec![None; ranges.len()];
            for s in &slots {
                let w = s.worker as usize;
                let claims: Vec<&Track> = tracks
                    .iter()
                    .filter(|t| t.worker == w && t.done.is_some())
                    .collect();
                let results: Vec<&ShardResult> = claims
                    .iter()
                    .filter_map(|t| t.done.as_ref().map(|d| &d.0))
                    .collect();
                let agree = results.windows(2).all(|p| p[0].same_commitments(p[1]));
                if !agree {
                    rp.mismatched += 1;
                }
                let judge = WorkRequest::Judge {
                    job_id: self.job_id,
                    shard: s.shard,
                    spec: specs[w].encode(),
                    claims: claims
                        .iter()
                        .filter_map(|t| {
                            t.done.as_ref().map(|d| Claim {
                                provider: t.provider,
                                result: d.0.encode(),
                            })
                        })
                        .collect(),
                };
                self.send_judge(judge).await;
                // A mismatched shard is not merged: the round goes on without it, and the
                // referee's verdicts decide later who is paid and who is accused (waiting would
                // idle every provider for the bisection and the referee's recomputation).
                if !agree {
                    tracing::info!(job = %short(&self.job_id), round, shard = s.shard, "replicas disagree: the shard is not merged; the referee judges it");
                    continue;
                }
                let Some(win) = claims
                    .iter()
                    .find(|t| t.role == Role::Primary)
                    .or(claims.first())
                    .copied()
                else {
                    continue;
                };
                let result = &win.done.as_ref().expect("claims are done").0;
                // The delta, by the commitment the verified result carries (the blob store
                // checks the bytes against it).
                let (bytes, fetched) = self
                    .link
                    .blob(&self.blobs, win.provider, result.delta_commitment)
                    .await?;
                let delta =
                    ParamDelta::decode(&bytes).map_err(|e| JobError::Compute(e.to_string()))?;
                deltas.push((specs[w].id(), delta));
                merged[w] = Some(hex::encode(result.delta_commitment));
                rp.merged += 1;
                self.progress.delta_bytes_fetched += fetched;
                self.progress.params_bytes_served += params_bytes;
                self.progress.worker_rounds += 1;
            }
            if let Some(n) = std::num::NonZeroU64::new(self.progress.worker_rounds) {
                self.progress.bytes_per_worker_round = (self.progress.delta_bytes_fetched
                    + self.progress.params_bytes_served)
                    / n.get();
            }
            let t_collect = t.elapsed();
            self.record_eval(evaluating.take()).await?;
            if merge(
                &mut global,
                &mut round_start,
                &deltas,
                &start,
                self.job.inner_steps,
            )? {
                evaluating = Some((self.progress.rounds.len(), self.eval(round_start.clone())));
            }
            rp.wall_ms = t.elapsed().as_millis() as u64;
            tracing::info!(
                job = %short(&self.job_id),
                round,
                merged = rp.merged,
                mismatched = rp.mismatched,
                runs_ms = t_runs.as_millis() as u64,
                collect_ms = (t_collect - t_runs).as_millis() as u64,
                merge_ms = (t.elapsed() - t_collect).as_millis() as u64,
                "round done"
            );
            self.progress.rounds.push(rp);
            if let Ok(logs) = self.link.logs().await {
                self.count_verdicts(&logs);
            }
            self.progress.wall_ms = wall_before_ms + job_started.elapsed().as_millis() as u64;
            self.merged.push(merged);
            self.save_resume();
            self.save();
        }
        self.record_eval(evaluating).await
    }

    /// Send, poll, re-lease and collect every run of a round, proposing each receipt.
    async fn drive(
        &mut self,
        slots: &[Slot],
        specs: &[ShardSpec],
        start_params: Digest32,
        tracks: &mut [Track],
        rp: &mut RoundProgress,
    ) -> Result<(), JobError> {
        let shard_units = specs
            .first()
            .map_or(0, leam_compute::verify::shard::compute_units);
        let providers: Vec<PublicKey> = self
            .clearing
            .assignments
            .iter()
            .map(|a| a.provider)
            .collect();
        loop {
            for i in 0..tracks.len() {
                // A replica never goes to the provider of its shard's other run.
                let siblings = siblings_of(tracks, i);
                let t = &mut tracks[i];
                if t.done.is_some() {
                    if !t.receipt {
                        t.receipt = self.receipt(slots, specs, t).await;
                    }
                    continue;
                }
                let spec = &specs[t.worker];
                let shard = slots
                    .iter()
                    .find(|s| s.worker as usize == t.worker)
                    .map_or(0, |s| s.shard);
                let Some(sent) = t.sent else {
                    let req = WorkRequest::Run {
                        job_id: self.job_id,
                        shard,
                        spec: spec.encode(),
                        start_params: Some(serde_bytes::ByteArray::new(start_params)),
                    };
                    match self.link.work(t.provider, req).await {
                        Ok(WorkResponse::Accepted) => {
                            t.sent = Some(Instant::now());
                            t.unanswered = None;
                        }
                        Ok(other) => tracing::warn!(?other, "unexpected answer to a run request"),
                        // Refused (no lease room, a bad spec): it will not be taken.
                        Err(e @ LinkError::Declined { .. }) => {
                            tracing::info!(shard, provider = %short(&t.provider), error = %e, "run not taken");
                            self.relocate(t, &providers, &siblings, rp, shard).await?;
                        }
                        // Unreachable: asked again until the shard timeout has passed.
                        Err(e) => {
                            let first = *t.unanswered.get_or_insert_with(Instant::now);
                            let timeout = self.shard_timeout_ms(shard_units, &t.provider);
                            if first.elapsed() > Duration::from_millis(timeout) {
                                tracing::warn!(shard, provider = %short(&t.provider), error = %e, "provider unreachable: leasing the shard again");
                                self.relocate(t, &providers, &siblings, rp, shard).await?;
                            }
                        }
                    }
                    continue;
                };
                match self
                    .link
                    .work(t.provider, WorkRequest::Poll { spec_id: spec.id() })
                    .await
                {
                    Ok(WorkResponse::Done { result, device_ms }) => {
                        match ShardResult::decode(&result)
                            .map_err(|e| e.to_string())
                            .and_then(|r| {
                                r.check_against(spec).map(|()| r).map_err(|e| e.to_string())
                            }) {
                            Ok(r) => {
                                *self
                                    .progress
                                    .device_ms
                                    .entry(hex::encode(t.provider))
                                    .or_default() += device_ms;
                                if t.role == Role::Primary {
                                    self.progress.primary_units += r.compute_units;
                                } else {
                                    self.progress.replica_units += r.compute_units;
                                }
                                rp.runs += 1;
                                t.done = Some((r, device_ms));
                                // The receipt at once: the round ends when every run has one.
                                t.receipt = self.receipt(slots, specs, t).await;
                            }
                            Err(e) => {
                                tracing::warn!(shard, provider = %short(&t.provider), error = %e, "a result that does not answer its spec");
                                // One that decodes (a lazy provider replaying an old result) is
                                // receipted if its provider signs for it, and judged: the
                                // referee's rejection and evidence go on record, and it is paid
                                // nothing. The shard goes to another provider either way.
                                if let Ok(r) = ShardResult::decode(&result) {
                                    let (w, p) = (t.worker, t.provider);
                                    if self
                                        .propose_receipt(slots, specs, w, p, &r, device_ms)
                                        .await
                                    {
                                        let judge = WorkRequest::Judge {
                                            job_id: self.job_id,
                                            shard,
                                            spec: spec.encode(),
                                            claims: vec![Claim {
                                                provider: p,
                                                result: r.encode(),
                                            }],
                                        };
                                        self.send_judge(judge).await;
                                    }
                                }
                                self.relocate(t, &providers, &siblings, rp, shard).await?;
                            }
                        }
                    }
                    Ok(WorkResponse::Running { .. }) => {
                        let timeout = self.shard_timeout_ms(shard_units, &t.provider);
                        if sent.elapsed() > Duration::from_millis(timeout) {
                            tracing::warn!(shard, provider = %short(&t.provider), timeout, "shard timed out: leasing it again");
                            self.relocate(t, &providers, &siblings, rp, shard).await?;
                        }
                    }
                    // The provider restarted and lost the run: ask again.
                    Ok(WorkResponse::Unknown) => t.sent = None,
                    Ok(other) => tracing::warn!(?other, "unexpected answer to a poll"),
                    // The run failed on the provider's side: lease it again now.
                    Err(e @ LinkError::Declined { .. }) => {
                        tracing::warn!(shard, provider = %short(&t.provider), error = %e, "run failed: leasing the shard again");
                        self.relocate(t, &providers, &siblings, rp, shard).await?;
                    }
                    Err(e) => {
                        let timeout = self.shard_timeout_ms(shard_units, &t.provider);
                        if sent.elapsed() > Duration::from_millis(timeout) {
                            tracing::warn!(shard, provider = %short(&t.provider), error = %e, "provider gone: leasing the shard again");
                            self.relocate(t, &providers, &siblings, rp, shard).await?;
                        }
                    }
                }
            }
            if tracks.iter().all(|t| t.done.is_some() && t.receipt) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// Take a run from its provider, which leaves the job ([`Bidder::leave`]), and give it to
    /// a re-clearing's provider with runs to spare, else to the next provider of the clearing
    /// ([`release`]).
    async fn relocate(
        &mut self,
        t: &mut Track,
        providers: &[PublicKey],
        siblings: &[PublicKey],
        rp: &mut RoundProgress,
        shard: u32,
    ) -> Result<(), JobError> {
        self.leave(t.provider).await;
        if t.released < RELEASES_PER_SHARD_MAX {
            if let Some(p) = self.take_spare(siblings) {
                t.provider = p;
                t.tried.push(p);
                t.released += 1;
                t.sent = None;
                t.unanswered = None;
                rp.released += 1;
                return Ok(());
            }
        }
        t.unanswered = None;
        release(t, providers, siblings, rp, shard)
    }

    /// A re-clearing's provider with runs to spare that runs none of `siblings`; one of its
    /// runs is taken.
    fn take_spare(&mut self, siblings: &[PublicKey]) -> Option<PublicKey> {
        let p = self
            .spare
            .iter()
            .find(|(p, n)| **n > 0 && !siblings.contains(p) && !self.gone.contains(*p))
            .map(|(p, _)| *p)?;
        *self.spare.get_mut(&p)? -= 1;
        Some(p)
    }

    /// `provider` lost a run: it gets no new runs of this job. The first time, if it leaves
    /// leased shards unfinished, they are bought again (`leam_market::reclear`, a re-clearing
    /// in this node's log) and the new providers' leases awaited; their shards become runs to
    /// spare.
    async fn leave(&mut self, provider: PublicKey) {
        if !self.gone.insert(provider) {
            return;
        }
        let until = Instant::now() + Duration::from_millis(LEAVE_VERDICT_WAIT_MS);
        let logs = loop {
            let logs = match self.link.logs().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "no logs: no re-clearing");
                    return;
                }
            };
            let own = logs.get(&self.me).map_or(&[][..], Vec::as_slice);
            let unjudged = own.iter().any(|e| match &e.body {
                Body::Receipt(c)
                    if c.terms.job_id == self.job_id && c.terms.provider == provider =>
                {
                    !self.judged(&logs, c.terms.shard, &provider, &c.terms.output_commitment)
                }
                _ => false,
            });
            if !unjudged || Instant::now() >= until {
                break logs;
            }
            tokio::time::sleep(Duration::from_millis(VERDICT_POLL_MS)).await;
        };
        let standing = self.standing(&logs);
        if standing.replaced.contains_key(&provider) || standing.unfinished(&provider) == 0 {
            return;
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let r = match leam_market::reclear::reclear(
            &self.me,
            &self.job,
            &self.job_id,
            &BTreeSet::from([provider]),
            &logs,
            now_ms,
        ) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(provider = %short(&provider), error = %e, "no re-clearing");
                return;
            }
        };
        let assignments = r.clearing.assignments.clone();
        self.lease_ids
            .extend(lease_ids(&r.clearing, &self.job, self.me));
        self.progress.reclearings.push(Replacement {
            replaces: vec![hex::encode(provider)],
            shards: r.shards,
            providers: assignments
                .iter()
                .map(|a| (hex::encode(a.provider), a.shards))
                .collect(),
            price_cents_per_kilo_unit: r.clearing.price_cents_per_kilo_unit,
        });
        match self.link.append(Body::Reclearing(r.clone())).await {
            Ok(seq) => tracing::info!(
                provider = %short(&provider),
                shards = r.shards,
                to = assignments.len(),
                price = r.clearing.price_cents_per_kilo_unit,
                entry = seq,
                "a provider left the job: its unfinished shards re-cleared"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "re-clearing refused by the log");
                return;
            }
        }
        self.save();
        if assignments.is_empty() {
            tracing::warn!(provider = %short(&provider), "no offer can take the shards it left");
            return;
        }
        let until = Instant::now() + Duration::from_millis(RECLEARING_LEASE_WAIT_MS);
        loop {
            let Ok(logs) = self.link.logs().await else {
                break;
            };
            let own = logs.get(&self.me).map_or(&[][..], Vec::as_slice);
            let leased: Vec<&leam_ledger::entry::Assignment> = assignments
                .iter()
                .filter(|a| {
                    let t = lease_terms(&r.clearing, &self.job, self.me, a);
                    own.iter()
                        .any(|e| matches!(&e.body, Body::Lease(l) if l.terms == t))
                })
                .collect();
            if leased.len() == assignments.len() || Instant::now() >= until {
                for a in leased {
                    *self.spare.entry(a.provider).or_default() += u64::from(a.shards);
                    if let Some(u) = offered_units_per_hour(&logs, &a.provider, a.offer_id) {
                        self.units_per_hour.insert(a.provider, u);
                    }
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(VERDICT_POLL_MS)).await;
        }
    }

    /// After a restart: the providers that left and the runs to spare, from the re-clearings
    /// and leases in this node's log (each re-clearing's provider may take its leased shards
    /// less those it has receipts for).
    fn restore_reclearings(&mut self, logs: &BTreeMap<PublicKey, Vec<Entry>>) {
        let own = logs.get(&self.me).map_or(&[][..], Vec::as_slice);
        let standing = self.standing(logs);
        for e in own {
            let Body::Reclearing(r) = &e.body else {
                continue;
            };
            if r.clearing.job_id != self.job_id {
                continue;
            }
            self.lease_ids
                .extend(lease_ids(&r.clearing, &self.job, self.me));
            for a in &r.clearing.assignments {
                if standing.leased.contains_key(&a.provider)
                    && !self.spare.contains_key(&a.provider)
                {
                    self.spare
                        .insert(a.provider, standing.unfinished(&a.provider));
                    if let Some(u) = offered_units_per_hour(logs, &a.provider, a.offer_id) {
                        self.units_per_hour.insert(a.provider, u);
                    }
                }
            }
        }
        self.gone.extend(standing.replaced.keys().copied());
    }

    /// The job's standing in this node's log, with the referees' rejections in the logs it
    /// holds (as [`leam_market::reclear::reclear`] reads them).
    fn standing(&self, logs: &BTreeMap<PublicKey, Vec<Entry>>) -> leam_market::reclear::Standing {
        let own = logs.get(&self.me).map_or(&[][..], Vec::as_slice);
        let views = leam_market::clearing::views_except(logs, &self.me);
        let rejected = leam_market::reclear::rejected_runs(
            logs,
            &self.job,
            &self.job_id,
            &views,
            (&self.me, own.len() as u64),
        );
        leam_market::reclear::standing(own, &self.job_id, own.len() as u64, &rejected)
    }

    /// How long `provider` may take for a shard: the job's own timeout if it sets one, else what
    /// the provider's offered throughput promises ([`plan::shard_timeout_ms`]).
    fn shard_timeout_ms(&self, shard_units: u64, provider: &PublicKey) -> u64 {
        self.job.shard_timeout_ms.unwrap_or_else(|| {
            plan::shard_timeout_ms(
                shard_units,
                self.units_per_hour.get(provider).copied().unwrap_or(0),
            )
        })
    }

    /// Propose the receipt of a finished run; whether it is recorded.
    async fn receipt(&self, slots: &[Slot], specs: &[ShardSpec], t: &Track) -> bool {
        let Some((r, device_ms)) = &t.done else {
            return false;
        };
        self.propose_receipt(slots, specs, t.worker, t.provider, r, *device_ms)
            .await
    }

    /// Propose the receipt of `provider`'s result `r` for `worker`'s shard; whether it is
    /// recorded (the provider co-signs only what it ran).
    async fn propose_receipt(
        &self,
        slots: &[Slot],
        specs: &[ShardSpec],
        worker: usize,
        provider: PublicKey,
        r: &ShardResult,
        device_ms: u64,
    ) -> bool {
        let shard = slots
            .iter()
            .find(|s| s.worker as usize == worker)
            .map_or(0, |s| s.shard);
        let Some(lease) = self.lease_ids.get(&provider).copied() else {
            tracing::warn!(shard, provider = %short(&provider), "no lease of the job with this provider: no receipt");
            return false;
        };
        let terms = ReceiptTerms {
            job_id: self.job_id,
            shard,
            bidder: self.me,
            provider,
            lease,
            input_commitment: specs[worker].id(),
            output_commitment: r.id(),
            compute_units: r.compute_units,
            gpu_ms: device_ms,
            device_fingerprint: Sha256::digest(r.fingerprint.as_bytes()).into(),
        };
        match self.link.propose(Fact::Receipt(terms)).await {
            Ok(_) => true,
            Err(e) => {
                tracing::info!(shard, provider = %short(&provider), error = %e, "receipt not co-signed yet");
                false
            }
        }
    }

    /// Per round, the runs the job's referee accepted and rejected, as this node's copy of its
    /// log shows them (one verdict per shard, provider and result).
    fn count_verdicts(&mut self, logs: &BTreeMap<PublicKey, Vec<Entry>>) {
        let per_round = self.job.shards_per_round.max(1);
        let mut seen = BTreeSet::new();
        let mut counts: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for v in self.job_verdicts(logs) {
            if !seen.insert((v.shard, v.provider, v.output_commitment)) {
                continue;
            }
            let c = counts.entry(v.shard / per_round).or_default();
            if v.accepted {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
        for rp in &mut self.progress.rounds {
            (rp.verified, rp.rejected) = counts.get(&rp.round).copied().unwrap_or_default();
        }
    }

    /// The verdicts on this job that count, as this node's copies of the logs show them: by
    /// any of the job's referees, never on its own result (as the ledger fold and the market
    /// audit count them).
    fn job_verdicts<'l>(
        &'l self,
        logs: &'l BTreeMap<PublicKey, Vec<Entry>>,
    ) -> impl Iterator<Item = &'l Verdict> + 'l {
        self.job.referees.iter().flat_map(move |r| {
            logs.get(r)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .filter_map(move |e| match &e.body {
                    Body::Verdict(v) if v.job_id == self.job_id && v.provider != *r => Some(v),
                    _ => None,
                })
        })
    }

    /// Whether a counted verdict on `provider`'s result `output` for `shard` is in `logs`.
    fn judged(
        &self,
        logs: &BTreeMap<PublicKey, Vec<Entry>>,
        shard: u32,
        provider: &PublicKey,
        output: &Digest32,
    ) -> bool {
        self.job_verdicts(logs)
            .any(|v| v.shard == shard && v.provider == *provider && v.output_commitment == *output)
    }

    /// The counted verdicts on `shard`: (provider, output commitment, accepted).
    fn verdicts(
        &self,
        logs: &BTreeMap<PublicKey, Vec<Entry>>,
        shard: u32,
    ) -> Vec<(PublicKey, Digest32, bool)> {
        self.job_verdicts(logs)
            .filter(|v| v.shard == shard)
            .map(|v| (v.provider, v.output_commitment, v.accepted))
            .collect()
    }

    /// Wait for the verdicts on every receipt, then pay each provider the accepted units at the
    /// lease's price (never more than the lease's total).
    async fn settle(&mut self) -> Result<(), JobError> {
        if self.job.referees.is_empty() {
            return Ok(());
        }
        let until = Instant::now() + Duration::from_millis(VERDICT_WAIT_MS);
        let logs = loop {
            let logs = self.link.logs().await?;
            self.retry_judges(&logs).await;
            let own = logs.get(&self.me).map_or(&[][..], Vec::as_slice);
            let receipts: Vec<&ReceiptTerms> = own
                .iter()
                .filter_map(|e| match &e.body {
                    Body::Receipt(c) if c.terms.job_id == self.job_id => Some(&c.terms),
                    _ => None,
                })
                .collect();
            let missing = receipts
                .iter()
                .filter(|r| !self.judged(&logs, r.shard, &r.provider, &r.output_commitment))
                .count();
            if missing == 0 || Instant::now() >= until {
                if missing > 0 {
                    tracing::warn!(
                        missing,
                        "settling without every verdict: unjudged receipts are not paid"
                    );
                }
                break logs;
            }
            tokio::time::sleep(Duration::from_millis(VERDICT_POLL_MS)).await;
        };
        let own = logs.get(&self.me).map_or(&[][..], Vec::as_slice);
        // Per provider, its accepted receipts: (fact id, units).
        let mut verified: BTreeMap<PublicKey, Vec<(Digest32, u64)>> = BTreeMap::new();
        let (mut acc, mut rej) = (0u64, 0u64);
        let mut seen = std::collections::BTreeSet::new();
        for e in own {
            let Body::Receipt(c) = &e.body else { continue };
            let r = &c.terms;
            if r.job_id != self.job_id || !seen.insert((r.shard, r.provider, r.output_commitment)) {
                continue;
            }
            let v = self.verdicts(&logs, r.shard);
            let mine: Vec<bool> = v
                .iter()
                .filter(|(p, o, _)| p == &r.provider && o == &r.output_commitment)
                .map(|x| x.2)
                .collect();
            if !mine.is_empty() && mine.iter().all(|ok| *ok) {
                acc += 1;
                if let Some(fact) = e.body.cosigned() {
                    verified
                        .entry(r.provider)
                        .or_default()
                        .push((fact.fact_id, r.compute_units));
                }
            } else if mine.iter().any(|ok| !ok) {
                rej += 1;
            }
        }
        self.progress.verdicts = (acc, rej);
        self.count_verdicts(&logs);
        // Every provider holds one lease of the job: from the clearing or a re-clearing.
        let parts: Vec<(&Clearing, &leam_ledger::entry::Assignment)> = own
            .iter()
            .filter_map(|e| leam_market::reclear::clearing_record(&e.body))
            .filter(|c| c.job_id == self.job_id)
            .flat_map(|c| c.assignments.iter().map(move |a| (c, a)))
            .collect();
        for (c, a) in parts {
            let lease = lease_terms(c, &self.job, self.me, a);
            if !own
                .iter()
                .any(|e| matches!(&e.body, Body::Lease(l) if l.terms == lease))
            {
                continue;
            }
            // The provider's accepted receipts, paid by settlements of at most
            // SETTLEMENT_RECEIPTS_MAX receipts each, each for what its receipts are worth (the
            // lease's total never exceeded).
            let mut receipts = verified.remove(&a.provider).unwrap_or_default();
            receipts.sort_unstable();
            let mut left = lease.price_cents;
            for chunk in receipts.chunks(leam_ledger::entry::SETTLEMENT_RECEIPTS_MAX) {
                let units = chunk.iter().fold(0u64, |n, (_, u)| n.saturating_add(*u));
                let worth =
                    owed_cents(units, c.price_cents_per_kilo_unit, lease.price_cents).min(left);
                left -= worth;
                let share = leam_market::settle::split(
                    worth,
                    self.money.sector,
                    self.money.subsidy_percent,
                )
                .bidder_cents;
                if share == 0 {
                    continue;
                }
                // Paid settlements are in the log before the next is chosen: each one's money
                // is chosen on the balances left.
                let paid = self.link.logs().await?;
                let money = leam_market::settle::paying_money(
                    paid.get(&self.me).map_or(&[][..], Vec::as_slice),
                    &self.me,
                    share,
                );
                let terms = SettlementTerms {
                    job_id: self.job_id,
                    payer: self.me,
                    payee: a.provider,
                    credits_cents: share,
                    money,
                    receipts: chunk.iter().map(|(id, _)| *id).collect(),
                };
                match self.link.propose(Fact::Settlement(terms)).await {
                    Ok(_) => {
                        *self
                            .progress
                            .paid_cents
                            .entry(hex::encode(a.provider))
                            .or_default() += share;
                    }
                    Err(e) => {
                        tracing::warn!(provider = %short(&a.provider), error = %e, "settlement not co-signed")
                    }
                }
            }
        }
        Ok(())
    }
}

/// A judgment the bidder asked for, and which of the job's referees have it.
#[derive(Debug)]
struct Judging {
    request: WorkRequest,
    /// The job's referees that may judge it, in the job's order.
    referees: Vec<PublicKey>,
    /// When a referee last took it; `None` while none has.
    taken: Option<Instant>,
    /// Referees asked so far (the next to ask is `referees[next % len]`).
    next: usize,
}

/// The fact ids of the leases `clearing` implies between `bidder` and each assigned provider.
fn lease_ids(clearing: &Clearing, job: &Job, bidder: PublicKey) -> BTreeMap<PublicKey, Digest32> {
    clearing
        .assignments
        .iter()
        .map(|a| (a.provider, lease_terms(clearing, job, bidder, a).fact_id()))
        .collect()
}

/// The referees of a job that may judge claims of `parties`: those that are neither party (a
/// referee never judges its own result), in the job's order.
pub fn eligible_referees(referees: &[PublicKey], parties: &[PublicKey]) -> Vec<PublicKey> {
    referees
        .iter()
        .filter(|r| !parties.contains(r))
        .copied()
        .collect()
}

/// The outer step over a round's merged `deltas`, then the next round's start state (every
/// worker's): the global parameters with fresh moments at the next round's first step
/// ([`fresh_start_state`] of the job's initial state); whether there was anything to merge.
fn merge(
    global: &mut OuterState,
    round_start: &mut TrainState,
    deltas: &[(Digest32, ParamDelta)],
    template: &TrainState,
    inner_steps: u32,
) -> Result<bool, JobError> {
    if deltas.is_empty() {
        return Ok(false);
    }
    *global = tokio::task::block_in_place(|| {
        outer_step(global, deltas, OuterOptimizer::DILOCO, B24_MANT_MAX)
    })
    .map_err(|e| JobError::Compute(e.to_string()))?;
    let step = template.step + global.round * u64::from(inner_steps);
    *round_start = fresh_start_state(template, &global.params, step)
        .map_err(|e| JobError::Compute(e.to_string()))?;
    Ok(true)
}

/// The providers of the other runs of track `i`'s shard.
fn siblings_of(tracks: &[Track], i: usize) -> Vec<PublicKey> {
    tracks
        .iter()
        .enumerate()
        .filter(|(j, x)| *j != i && x.worker == tracks[i].worker)
        .map(|(_, x)| x.provider)
        .collect()
}

/// The throughput `provider`'s offer `offer_id` states, as `logs` hold it (it sets the
/// provider's shard timeouts).
pub fn offered_units_per_hour(
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    provider: &PublicKey,
    offer_id: u64,
) -> Option<u64> {
    logs.get(provider)?
        .iter()
        .rev()
        .find_map(|e| match &e.body {
            Body::Offer(o) if o.offer_id == offer_id => Some(o.compute_units_per_hour),
            _ => None,
        })
}

/// Take a run from its provider and give it to the next provider of the clearing that has not
/// had it yet and does not run the shard's other run (else to the same provider again).
fn release(
    t: &mut Track,
    providers: &[PublicKey],
    siblings: &[PublicKey],
    rp: &mut RoundProgress,
    shard: u32,
) -> Result<(), JobError> {
    if t.released >= RELEASES_PER_SHARD_MAX {
        return Err(JobError::Unserved {
            shard,
            reason: format!("leased {RELEASES_PER_SHARD_MAX} times without a result"),
        });
    }
    let eligible = |p: &&PublicKey| !siblings.contains(p);
    let next = providers
        .iter()
        .filter(eligible)
        .find(|p| !t.tried.contains(p))
        .or_else(|| {
            providers
                .iter()
                .filter(eligible)
                .find(|p| **p != t.provider)
        })
        .copied();
    if let Some(p) = next {
        if p != t.provider {
            rp.released += 1;
        }
        t.provider = p;
        t.tried.push(p);
    }
    t.released += 1;
    t.sent = None;
    Ok(())
}

/// The progress file of a job in a node directory.
pub fn progress_path(dir: &Path, job_id: &Digest32) -> PathBuf {
    dir.join(crate::JOBS_DIR_NAME)
        .join(format!("{}{PROGRESS_SUFFIX}", hex::encode(job_id)))
}

/// A shared handle for the job task (the runner borrows the kernels).
pub type SharedKernels = Arc<dyn Kernels>;
