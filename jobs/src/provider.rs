//! The provider side of a job (`specs/market.md` §8.2): take a shard run under a co-signed
//! lease, fetch its corpus and start parameters by hash from the bidder and build the start
//! state, run it on this node's backend (one run at a time, on a thread of its own, so the
//! network never waits on compute), keep the result, its step hashes and the parameter delta
//! for the bidder's polls and fetches and the referee's bisection, and agree to a receipt only
//! if it states exactly what this node ran.
//!
//! Finished runs are written to `DIR/runs/<spec id hex>.json`, so a provider killed and
//! restarted still answers for them; a run that was going on when the process died is gone
//! (the bidder hears `Unknown` and asks again, and the run starts over).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use leam_compute::model::train::TrainState;
use leam_compute::numerics::kernels::Kernels;
use leam_compute::verify::commit::{Hash32, StepLog};
use leam_compute::verify::diloco::{fresh_start_for_spec, ParamDelta};
use leam_compute::verify::replay::{run_shard, ModelRunner, RunnerError, ShardRun, StepRunner};
use leam_compute::verify::shard::{ShardResult, ShardSpec};
use leam_ledger::entry::{Body, Digest32, Entry, PublicKey, ReceiptTerms, Terms as _};
use leam_net::work::{self, WorkResponse};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::blobs::Blobs;
use crate::link::{short, Link};

/// Folder of finished runs in a node directory.
pub const RUNS_DIR_NAME: &str = "runs";
/// Runs waiting for the compute thread at most; more are refused.
pub const RUN_QUEUE_MAX: usize = 16;
/// Runs a provider keeps in memory at most (finished ones are also on disk).
pub const RUNS_MAX: usize = 4096;

/// How a run stands.
#[derive(Debug, Clone)]
pub enum RunState {
    /// Fetching its inputs or waiting for the compute thread.
    Waiting,
    /// On the compute thread.
    Running,
    /// Finished.
    Done(Box<Finished>),
    /// Could not run; the reason.
    Failed(String),
}

/// A finished run, as kept on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    /// The bidder it ran for.
    #[serde(with = "hex::serde")]
    pub bidder: PublicKey,
    /// Job id.
    #[serde(with = "hex::serde")]
    pub job_id: Digest32,
    /// Shard index.
    pub shard: u32,
    /// The result's canonical encoding (hex on disk).
    #[serde(with = "hex::serde")]
    pub result: Vec<u8>,
    /// Device time of the run, milliseconds.
    pub device_ms: u64,
    /// State hash after every inner step (hex on disk).
    pub step_hashes: Vec<String>,
}

impl Finished {
    fn log(&self) -> Result<StepLog, String> {
        let mut log = StepLog::new();
        for h in &self.step_hashes {
            let mut b = [0u8; 32];
            hex::decode_to_slice(h, &mut b).map_err(|e| format!("step hash {h}: {e}"))?;
            log.push(b);
        }
        Ok(log)
    }

    /// The decoded result.
    pub fn result(&self) -> Result<ShardResult, String> {
        ShardResult::decode(&self.result).map_err(|e| e.to_string())
    }
}

/// One run a provider took.
#[derive(Debug, Clone)]
pub struct Run {
    /// The bidder.
    pub bidder: PublicKey,
    /// Job id.
    pub job_id: Digest32,
    /// Shard index.
    pub shard: u32,
    /// How it stands.
    pub state: RunState,
}

/// Deliberate faults, for the demo's and the tests' adversaries: a provider built with one
/// returns wrong results (never set on a real node; `leam node` takes it from a hidden flag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Flip one parameter bit halfway through the run with this index (0 = the first run this
    /// process finishes), so its result is wrong from that step on.
    pub falsify_run: Option<u32>,
    /// Compute nothing for the run with this index in the order the compute thread takes them
    /// (0 = the first): hand back the result of a run finished earlier (a lazy provider
    /// replaying an old result), if there is one.
    pub lazy_run: Option<u32>,
}

struct Task {
    spec: ShardSpec,
    spec_id: Digest32,
    falsify: bool,
    /// The start state where the network task built it (from the params blob), so that the
    /// compute thread does not read and decode it again.
    start: Option<TrainState>,
}

/// The provider side of a node.
#[derive(Clone)]
pub struct Provider {
    me: PublicKey,
    blobs: Blobs,
    dir: PathBuf,
    runs: Arc<Mutex<HashMap<Digest32, Run>>>,
    queue: std::sync::mpsc::SyncSender<Task>,
    faults: Faults,
    taken: Arc<Mutex<u32>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("me", &short(&self.me))
            .finish_non_exhaustive()
    }
}

/// The honest runner, except that after global step `fault_at` it flips the lowest bit of one
/// parameter: the simplest wrong result a lazy or faulty provider could return.
#[derive(Debug)]
pub struct Tampered<'r, 'k> {
    /// The honest runner.
    pub inner: &'r ModelRunner<'k>,
    /// Global step after which the state is tampered with.
    pub fault_at: u64,
}

impl StepRunner for Tampered<'_, '_> {
    type State = TrainState;
    fn decode_state(&self, spec: &ShardSpec, bytes: &[u8]) -> Result<TrainState, RunnerError> {
        self.inner.decode_state(spec, bytes)
    }
    fn state_hash(&self, state: &TrainState) -> Hash32 {
        self.inner.state_hash(state)
    }
    fn step(&self, spec: &ShardSpec, state: &mut TrainState, g: u64) -> Result<(), RunnerError> {
        self.inner.step(spec, state, g)?;
        if g == self.fault_at {
            if let Some(m) = state.params.first_mut().and_then(|t| t.mant.first_mut()) {
                *m ^= 1;
            }
        }
        Ok(())
    }
    fn delta_commitment(&self, a: &TrainState, b: &TrainState) -> Result<Hash32, RunnerError> {
        self.inner.delta_commitment(a, b)
    }
    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }
}

impl Provider {
    /// The provider of the node in `dir` with key `me`, computing on `kernels`. Finished runs
    /// of an earlier process are loaded from disk.
    pub fn new(dir: &Path, me: PublicKey, kernels: Arc<dyn Kernels>, faults: Faults) -> Self {
        let blobs = Blobs::new(dir);
        let runs: Arc<Mutex<HashMap<Digest32, Run>>> = Arc::new(Mutex::new(load_runs(dir)));
        let (queue, rx) = std::sync::mpsc::sync_channel::<Task>(RUN_QUEUE_MAX);
        let t_runs = runs.clone();
        let t_blobs = blobs.clone();
        let t_dir = dir.to_owned();
        std::thread::Builder::new()
            .name("leam-shards".into())
            .spawn(move || compute_thread(rx, kernels, t_blobs, t_runs, t_dir, faults.lazy_run))
            .expect("spawning the compute thread");
        Self {
            me,
            blobs,
            dir: dir.to_owned(),
            runs,
            queue,
            faults,
            taken: Arc::new(Mutex::new(0)),
        }
    }

    /// The blob store.
    pub fn blobs(&self) -> &Blobs {
        &self.blobs
    }

    /// A run request from `bidder`: checked against this node's leases, then its inputs are
    /// fetched and it is queued. Idempotent: a spec already taken is `Accepted` again. With
    /// `start_params` (the SHA-256 of the start state's params blob) a start state this node
    /// does not hold is built from that blob (4 bytes per parameter) rather than fetched whole.
    pub async fn on_run(
        &self,
        link: &Link,
        bidder: PublicKey,
        job_id: Digest32,
        shard: u32,
        spec_bytes: &[u8],
        start_params: Option<Digest32>,
    ) -> WorkResponse {
        let spec = match ShardSpec::decode(spec_bytes).and_then(|s| s.validate().map(|()| s)) {
            Ok(s) => s,
            Err(e) => return work::refused(format!("shard spec: {e}")),
        };
        let spec_id = spec.id();
        {
            let runs = self.runs.lock().expect("runs lock");
            if let Some(r) = runs.get(&spec_id) {
                if !matches!(r.state, RunState::Failed(_)) {
                    return WorkResponse::Accepted;
                }
            }
            if runs.len() >= RUNS_MAX {
                return work::refused(format!("{RUNS_MAX} runs held; none more taken"));
            }
        }
        let logs = match link.logs().await {
            Ok(l) => l,
            Err(e) => return work::refused(e.to_string()),
        };
        let own = logs.get(&self.me).map_or(&[][..], Vec::as_slice);
        let units = leam_compute::verify::shard::compute_units(&spec);
        let leased: u64 = own
            .iter()
            .filter_map(|e| match &e.body {
                Body::Lease(c)
                    if c.terms.job_id == job_id
                        && c.terms.bidder == bidder
                        && c.terms.provider == self.me =>
                {
                    Some(c.terms.compute_units)
                }
                _ => None,
            })
            .sum();
        let used: u64 = {
            let runs = self.runs.lock().expect("runs lock");
            runs.values()
                .filter(|r| r.job_id == job_id && r.bidder == bidder)
                .filter(|r| !matches!(r.state, RunState::Failed(_)))
                .count() as u64
        };
        if leased == 0 {
            return work::refused(format!(
                "no lease of job {} with bidder {} in this node's log",
                short(&job_id),
                short(&bidder)
            ));
        }
        if (used + 1).saturating_mul(units) > leased {
            return work::refused(format!(
                "the leases of job {} cover {leased} units; {used} runs of {units} units are taken",
                short(&job_id)
            ));
        }
        self.runs.lock().expect("runs lock").insert(
            spec_id,
            Run {
                bidder,
                job_id,
                shard,
                state: RunState::Waiting,
            },
        );
        let falsify = {
            let mut t = self.taken.lock().expect("taken lock");
            let f = self.faults.falsify_run == Some(*t);
            *t += 1;
            f
        };
        let this = self.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let fail = |reason: String| {
                tracing::warn!(spec = %short(&spec_id), %reason, "shard run failed");
                if let Some(r) = this.runs.lock().expect("runs lock").get_mut(&spec_id) {
                    r.state = RunState::Failed(reason);
                }
            };
            if let Err(e) = link.blob(&this.blobs, bidder, spec.corpus_sha256).await {
                let h = short(&spec.corpus_sha256);
                return fail(format!("fetching the corpus {h}: {e}"));
            }
            let start = match this.fetch_start(&link, bidder, &spec, start_params).await {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            if let Err(e) = this.queue.try_send(Task {
                spec,
                spec_id,
                falsify,
                start,
            }) {
                fail(format!("the compute queue is full or stopped: {e}"));
            }
        });
        WorkResponse::Accepted
    }

    /// Puts the spec's start state into the blob store: already there, built from the params
    /// blob `start_params` names (fetched from `bidder`, checked against the spec's
    /// `start_state` by [`fresh_start_for_spec`]; then also returned), or fetched whole.
    async fn fetch_start(
        &self,
        link: &Link,
        bidder: PublicKey,
        spec: &ShardSpec,
        start_params: Option<Digest32>,
    ) -> Result<Option<TrainState>, String> {
        let h = spec.start_state;
        if self.blobs.get(&h).map_err(|e| e.to_string())?.is_some() {
            return Ok(None);
        }
        if let Some(p) = start_params {
            let (blob, _) = link
                .blob(&self.blobs, bidder, p)
                .await
                .map_err(|e| format!("fetching the start parameters {}: {e}", short(&p)))?;
            let state = tokio::task::block_in_place(|| fresh_start_for_spec(spec, &blob))
                .map_err(|e| format!("start state of spec {}: {e}", short(&spec.id())))?;
            let put = self.blobs.put(&state.encode()).map_err(|e| e.to_string())?;
            debug_assert_eq!(put, h, "fresh_start_for_spec checked the hash");
            return Ok(Some(state));
        }
        link.blob(&self.blobs, bidder, h)
            .await
            .map(|_| None)
            .map_err(|e| format!("fetching the start state {}: {e}", short(&h)))
    }

    /// How the run of `spec_id` stands.
    pub fn on_poll(&self, spec_id: &Digest32) -> WorkResponse {
        match self
            .runs
            .lock()
            .expect("runs lock")
            .get(spec_id)
            .map(|r| &r.state)
        {
            None => WorkResponse::Unknown,
            Some(RunState::Waiting | RunState::Running) => WorkResponse::Running { steps_done: 0 },
            Some(RunState::Done(f)) => WorkResponse::Done {
                result: f.result.clone(),
                device_ms: f.device_ms,
            },
            Some(RunState::Failed(reason)) => work::refused(reason.clone()),
        }
    }

    /// The step hash after `step` of a finished run, with its proof.
    pub fn on_step_hash(&self, spec_id: &Digest32, step: u64) -> WorkResponse {
        let runs = self.runs.lock().expect("runs lock");
        let Some(RunState::Done(f)) = runs.get(spec_id).map(|r| &r.state) else {
            return work::refused(format!("no finished run of spec {}", short(spec_id)));
        };
        match f
            .log()
            .and_then(|l| l.prove(step).map_err(|e| e.to_string()))
        {
            Ok(p) => WorkResponse::StepHash {
                step: p.step,
                state_hash: p.state_hash,
                proof: p
                    .proof
                    .into_iter()
                    .map(serde_bytes::ByteArray::new)
                    .collect(),
            },
            Err(e) => work::refused(format!("step {step}: {e}")),
        }
    }

    /// Whether this node agrees to a receipt: it finished the run the receipt names, for that
    /// bidder, job and shard, under the lease the receipt names (a lease in `own`, this node's
    /// log, of that job with that bidder), and the receipt states exactly its result, units and
    /// device time.
    pub fn check_receipt(&self, t: &ReceiptTerms, own: &[Entry]) -> Result<(), String> {
        if t.provider != self.me {
            return Err("the receipt names another provider".into());
        }
        let lease = own.iter().find_map(|e| match &e.body {
            Body::Lease(l) if l.terms.fact_id() == t.lease => Some(&l.terms),
            _ => None,
        });
        match lease {
            Some(l) if l.job_id == t.job_id && l.bidder == t.bidder && l.provider == self.me => {}
            Some(_) => {
                return Err(format!(
                    "lease {} is of another job or bidder",
                    short(&t.lease)
                ))
            }
            None => {
                return Err(format!(
                    "this node's log holds no lease {}",
                    short(&t.lease)
                ))
            }
        }
        let runs = self.runs.lock().expect("runs lock");
        let Some(run) = runs.get(&t.input_commitment) else {
            return Err(format!(
                "this node ran no shard spec {}",
                short(&t.input_commitment)
            ));
        };
        let RunState::Done(f) = &run.state else {
            return Err(format!(
                "the run of spec {} is not finished",
                short(&t.input_commitment)
            ));
        };
        let r = f.result()?;
        let fp: Digest32 = Sha256::digest(r.fingerprint.as_bytes()).into();
        let expected = ReceiptTerms {
            job_id: run.job_id,
            shard: run.shard,
            bidder: run.bidder,
            provider: self.me,
            lease: t.lease,
            input_commitment: t.input_commitment,
            output_commitment: r.id(),
            compute_units: r.compute_units,
            gpu_ms: f.device_ms,
            device_fingerprint: fp,
        };
        if &expected != t {
            return Err(format!(
                "the receipt differs from this node's run: expected {expected:?}, found {t:?}"
            ));
        }
        Ok(())
    }

    /// Runs held and how many are finished (for status pages).
    pub fn counts(&self) -> (usize, usize) {
        let runs = self.runs.lock().expect("runs lock");
        let done = runs
            .values()
            .filter(|r| matches!(r.state, RunState::Done(_)))
            .count();
        (runs.len(), done)
    }

    /// The node directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Entries of `log` that are receipts naming `provider` (used by tests and status).
pub fn receipts_of<'a>(log: &'a [Entry], provider: &PublicKey) -> Vec<&'a ReceiptTerms> {
    log.iter()
        .filter_map(|e| match &e.body {
            Body::Receipt(c) if &c.terms.provider == provider => Some(&c.terms),
            _ => None,
        })
        .collect()
}

fn load_runs(dir: &Path) -> HashMap<Digest32, Run> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir(dir.join(RUNS_DIR_NAME)) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let mut id = [0u8; 32];
        if hex::decode_to_slice(name, &mut id).is_err() {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Finished>(&b).map_err(|e| e.to_string()))
        {
            Ok(f) => {
                out.insert(
                    id,
                    Run {
                        bidder: f.bidder,
                        job_id: f.job_id,
                        shard: f.shard,
                        state: RunState::Done(Box::new(f)),
                    },
                );
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "ignoring a run record"),
        }
    }
    out
}

fn compute_thread(
    rx: std::sync::mpsc::Receiver<Task>,
    kernels: Arc<dyn Kernels>,
    blobs: Blobs,
    runs: Arc<Mutex<HashMap<Digest32, Run>>>,
    dir: PathBuf,
    lazy_run: Option<u32>,
) {
    let mut processed = 0u32;
    // The runner of the last corpus (parsing a corpus costs more than a short shard's setup).
    let mut runner: Option<ModelRunner<'_>> = None;
    while let Ok(task) = rx.recv() {
        let lazy = lazy_run == Some(processed);
        processed = processed.saturating_add(1);
        let set = |state: RunState| {
            if let Some(r) = runs.lock().expect("runs lock").get_mut(&task.spec_id) {
                r.state = state;
            }
        };
        set(RunState::Running);
        let t_setup = Instant::now();
        let outcome = (|| -> Result<Finished, String> {
            if runner.as_ref().map(ModelRunner::corpus_sha256) != Some(task.spec.corpus_sha256) {
                let bytes = blobs
                    .get(&task.spec.corpus_sha256)
                    .map_err(|e| e.to_string())?
                    .ok_or("the corpus is not stored")?;
                runner =
                    Some(ModelRunner::new(kernels.as_ref(), &bytes).map_err(|e| e.to_string())?);
            }
            let runner = runner.as_ref().expect("set above");
            let start = match task.start {
                Some(s) => {
                    runner
                        .check_state_fits(&task.spec, &s)
                        .map_err(|e| e.to_string())?;
                    s
                }
                None => {
                    let start_bytes = blobs
                        .get(&task.spec.start_state)
                        .map_err(|e| e.to_string())?
                        .ok_or("the start state is not stored")?;
                    runner
                        .decode_state(&task.spec, &start_bytes)
                        .map_err(|e| e.to_string())?
                }
            };
            let setup_ms = t_setup.elapsed().as_millis() as u64;
            let (bidder, job_id, shard) = {
                let r = runs.lock().expect("runs lock");
                let r = r.get(&task.spec_id).ok_or("the run was dropped")?;
                (r.bidder, r.job_id, r.shard)
            };
            let old = runs
                .lock()
                .expect("runs lock")
                .values()
                .find_map(|r| match &r.state {
                    RunState::Done(f) if lazy => Some((f.result.clone(), f.step_hashes.clone())),
                    _ => None,
                });
            let (result, step_hashes, device_ms) = if let Some((result, step_hashes)) = old {
                tracing::warn!(spec = %short(&task.spec_id), "fault injected: replaying an old result");
                (result, step_hashes, 1)
            } else {
                let t = Instant::now();
                let run: ShardRun<TrainState> = if task.falsify {
                    let tampered = Tampered {
                        inner: runner,
                        fault_at: task.spec.global_step(task.spec.steps / 2),
                    };
                    run_shard(&tampered, &task.spec, &start)
                } else {
                    run_shard(runner, &task.spec, &start)
                }
                .map_err(|e| e.to_string())?;
                let device_ms = (t.elapsed().as_millis() as u64).max(1);
                // The parameter delta, named by the result's delta commitment: what the bidder
                // fetches to merge (2 or 4 bytes per parameter instead of a 12-byte-per-parameter
                // state). A falsified run's delta is its own; the referee judges the states.
                let delta = ParamDelta::between(&start.params, &run.final_state.params)
                    .map_err(|e| e.to_string())?;
                blobs.put(&delta.encode()).map_err(|e| e.to_string())?;
                let hashes = run.log.state_hashes().iter().map(hex::encode).collect();
                (run.result.encode(), hashes, device_ms)
            };
            let f = Finished {
                bidder,
                job_id,
                shard,
                result,
                device_ms,
                step_hashes,
            };
            let rdir = dir.join(RUNS_DIR_NAME);
            std::fs::create_dir_all(&rdir).map_err(|e| e.to_string())?;
            let path = rdir.join(format!("{}.json", hex::encode(task.spec_id)));
            let tmp = rdir.join(format!(".{}.tmp", hex::encode(task.spec_id)));
            std::fs::write(&tmp, serde_json::to_vec(&f).map_err(|e| e.to_string())?)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            tracing::info!(
                spec = %short(&task.spec_id),
                shard,
                device_ms,
                setup_ms,
                falsified = task.falsify,
                "shard run finished"
            );
            Ok(f)
        })();
        match outcome {
            Ok(f) => set(RunState::Done(Box::new(f))),
            Err(e) => {
                tracing::warn!(spec = %short(&task.spec_id), error = %e, "shard run failed");
                set(RunState::Failed(e))
            }
        }
    }
}
