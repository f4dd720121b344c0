//! The referee of a job (`specs/market.md` §8.3). The bidder sends every shard's claims: one
//! for a shard that was not replicated, two for a replicated one. The referee writes one
//! verdict per claim into its own log; only a referee the job names may, and the ledger counts
//! nobody else's.
//!
//! [`decide`] is the one decision: it always returns a verdict for every claim. Equal
//! commitments are accepted. Different ones are bisected over the network to the first
//! divergent step (each provider serves its step hashes with proofs against its own step
//! root), and the referee replays that one step from the agreed state. A provider whose
//! answers are inconsistent with its own commitment, or who does not answer, is judged wrong;
//! where bisection cannot separate the claims (equal step roots with different delta
//! commitments, equal final states with different roots) the referee replays the whole shard
//! and accepts exactly the claims that match the replay.

use std::sync::Arc;

use leam_compute::model::train::TrainState;
use leam_compute::numerics::kernels::Kernels;
use leam_compute::verify::bisect::{
    bisect, referee, BisectError, Divergence, RefereeVerdict, Side, StepHashSource,
};
use leam_compute::verify::commit::StepHashProof;
use leam_compute::verify::replay::{run_shard, ModelRunner, StepRunner};
use leam_compute::verify::shard::{ShardResult, ShardSpec};
use leam_ledger::entry::{Body, Digest32, Evidence, EvidenceKind, PublicKey, Verdict};
use leam_market::flow::published_jobs;
use leam_net::work::{self, Claim, WorkRequest, WorkResponse};
use serde::Serialize;

use crate::blobs::Blobs;
use crate::link::{short, Link};

/// Largest evidence a referee records (`leam/wrong-shard-result/v1`, hex-encoded spec, result
/// and proofs: a few KiB).
pub const EVIDENCE_BYTES_MAX: usize = 16 * 1024;

/// Wrong-result evidence (`specs/market.md` §8.4): what a referee found against a provider's
/// result, with everything an auditor needs to re-check it (the agreed start state is named by
/// the spec and proven by the agreed step hash; replaying the divergent step from it gives
/// `recomputed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WrongResult {
    /// `leam/wrong-shard-result/v1`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Job id (hex).
    pub job: String,
    /// Shard index.
    pub shard: u32,
    /// The shard spec's canonical encoding (hex).
    pub shard_spec: String,
    /// The accused result's canonical encoding (hex).
    pub claimed_result: String,
    /// How it was decided: `bisection` (the divergent step replayed from the agreed state) or
    /// `replay` (the whole shard).
    pub method: &'static str,
    /// First divergent inner step (bisection only).
    pub divergent_step: Option<u64>,
    /// State hash before that step, agreed by both claims (hex; the spec's start state for
    /// step 0).
    pub agreed_before: Option<String>,
    /// The accused's state hash after the step (hex), proven against its step root by
    /// `claimed_proof`.
    pub claimed_after: Option<String>,
    /// Inclusion proof of `claimed_after` (hex hashes).
    pub claimed_proof: Vec<String>,
    /// What the referee's replay gave (hex): the state hash after the divergent step, or the
    /// replayed step root.
    pub recomputed: String,
}

/// Why a claim was judged as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// Whether the claim is accepted; `None` when the referee could not check it (its own
    /// replay failed): it then writes no verdict, and the bidder asks the job's next referee.
    pub verdict: Option<bool>,
    /// Evidence against it, when rejected.
    pub evidence: Option<WrongResult>,
    /// One line on how it was decided.
    pub reason: String,
}

impl Judged {
    /// An accepting verdict, for `reason`.
    fn accept(reason: &str) -> Self {
        Judged {
            verdict: Some(true),
            evidence: None,
            reason: reason.into(),
        }
    }

    /// Whether the referee checked the claim and accepts it.
    pub fn accepted(&self) -> bool {
        self.verdict == Some(true)
    }

    /// Whether the referee checked the claim and rejects it.
    pub fn rejected(&self) -> bool {
        self.verdict == Some(false)
    }
}

/// A provider's step hashes, asked over the network (bisection runs on a blocking thread and
/// waits for each answer).
struct NetSource {
    link: Link,
    handle: tokio::runtime::Handle,
    provider: PublicKey,
    spec_id: Digest32,
}

impl StepHashSource for NetSource {
    fn step_hash(
        &mut self,
        step: u64,
    ) -> Result<StepHashProof, Box<dyn std::error::Error + Send + Sync>> {
        let r = self.handle.block_on(self.link.work(
            self.provider,
            WorkRequest::StepHash {
                spec_id: self.spec_id,
                step,
            },
        ))?;
        match r {
            WorkResponse::StepHash {
                step,
                state_hash,
                proof,
            } => Ok(StepHashProof {
                step,
                state_hash,
                proof: proof.into_iter().map(|h| h.into_array()).collect(),
            }),
            other => Err(format!("answered {other:?} to a step-hash request").into()),
        }
    }
}

/// Decide every claim on a shard. `sources` serve each claim's step hashes; `start` is the
/// spec's start state. Never fails: what cannot be decided by bisection is decided by a full
/// replay on `runner`. A runner error on the referee's own side decides nothing it would have
/// decided (`verdict: None`, with the reason): a claim is never accepted unchecked because the
/// referee failed, and never rejected for it either.
pub fn decide<R: StepRunner<State = TrainState>>(
    runner: &R,
    job_id: &Digest32,
    shard: u32,
    spec: &ShardSpec,
    start: &TrainState,
    claims: &[ShardResult],
    sources: &mut [&mut dyn StepHashSource],
) -> Vec<Judged> {
    let accept = Judged::accept;
    if let Some(j) = decide_without_compute(job_id, shard, spec, claims) {
        return j;
    }
    let evidence = |claim: &ShardResult, method, d: Option<&Divergence>, side, recomputed| {
        wrong_result(job_id, shard, spec, claim, method, d, side, recomputed)
    };
    // A full replay decides every claim by its commitments.
    let replay_all = |why: String| -> Vec<Judged> {
        match run_shard(runner, spec, start) {
            Ok(run) => claims
                .iter()
                .map(|c| {
                    if c.same_commitments(&run.result) {
                        accept(&format!("{why}; the full replay matches"))
                    } else {
                        Judged {
                            verdict: Some(false),
                            evidence: Some(evidence(
                                c,
                                "replay",
                                None,
                                Side::A,
                                run.result.step_root,
                            )),
                            reason: format!("{why}; the full replay differs"),
                        }
                    }
                })
                .collect(),
            Err(e) => claims
                .iter()
                .map(|_| Judged {
                    verdict: None,
                    evidence: None,
                    reason: format!("{why}; the referee could not replay ({e}): undecided"),
                })
                .collect(),
        }
    };
    match claims {
        [a, b] => {
            let [src_a, src_b] = sources else {
                return replay_all("no step-hash sources".into());
            };
            match bisect(spec, a, &mut **src_a, b, &mut **src_b) {
                Ok(d) => {
                    // The agreed state before the divergent step: recomputed from the start.
                    let mut before = start.clone();
                    for inner in 0..d.step {
                        if let Err(e) =
                            runner.step(spec, &mut before, spec.global_step(inner as u32))
                        {
                            return replay_all(format!("recomputing step {inner} failed: {e}"));
                        }
                    }
                    match referee(runner, spec, &d, &before.encode()) {
                        Ok(v) => {
                            let how = format!(
                                "bisection to step {} ({}+{} step hashes); agreed state recomputed over {} steps, step {} replayed",
                                d.step, d.fetches_a, d.fetches_b, d.step, d.step
                            );
                            let (ra, rb, rec) = match v {
                                RefereeVerdict::AIsRight => (true, false, d.claim_a.state_hash),
                                RefereeVerdict::BIsRight => (false, true, d.claim_b.state_hash),
                                RefereeVerdict::NeitherIsRight { recomputed } => {
                                    (false, false, recomputed)
                                }
                            };
                            let j = |ok: bool, c: &ShardResult, side| Judged {
                                verdict: Some(ok),
                                evidence: (!ok)
                                    .then(|| evidence(c, "bisection", Some(&d), side, rec)),
                                reason: how.clone(),
                            };
                            vec![j(ra, a, Side::A), j(rb, b, Side::B)]
                        }
                        Err(e) => replay_all(format!("the single-step replay failed: {e}")),
                    }
                }
                Err(BisectError::Inconsistent { side, step, reason }) => judged_side(
                    replay_all(format!("bisection: side {side:?} step {step}: {reason}")),
                    side,
                ),
                Err(BisectError::Source { side, step, source }) => judged_side(
                    replay_all(format!(
                        "bisection: side {side:?} did not serve step {step}: {source}"
                    )),
                    side,
                ),
                Err(e) => replay_all(format!("bisection cannot separate the claims ({e})")),
            }
        }
        _ => replay_all("more than two claims".into()),
    }
}

/// The decisions that need no compute, or `None` when the claims must be bisected or replayed:
/// a claim that does not answer the spec is rejected on its face (with evidence; the others
/// are accepted), a single claim is accepted unchallenged, equal commitments are accepted.
pub fn decide_without_compute(
    job_id: &Digest32,
    shard: u32,
    spec: &ShardSpec,
    claims: &[ShardResult],
) -> Option<Vec<Judged>> {
    let accept = Judged::accept;
    if let Some(e) = claims.iter().find_map(|c| c.check_against(spec).err()) {
        return Some(
            claims
                .iter()
                .map(|x| {
                    if x.check_against(spec).is_err() {
                        Judged {
                            verdict: Some(false),
                            evidence: Some(wrong_result(
                                job_id,
                                shard,
                                spec,
                                x,
                                "replay",
                                None,
                                Side::A,
                                [0; 32],
                            )),
                            reason: format!("the result does not answer the spec: {e}"),
                        }
                    } else {
                        accept("the other claim does not answer the spec")
                    }
                })
                .collect(),
        );
    }
    match claims {
        [] => Some(vec![]),
        [_] => Some(vec![accept("not replicated: unchallenged")]),
        [a, b] if a.same_commitments(b) => Some(vec![accept("replicated: equal commitments"); 2]),
        _ => None,
    }
}

/// The wrong-result evidence against `claim` (`specs/market.md` §8.4): decided by `method`,
/// at divergence `d` (bisection, the claim on `side`), where the referee recomputed
/// `recomputed`.
#[allow(clippy::too_many_arguments)]
fn wrong_result(
    job_id: &Digest32,
    shard: u32,
    spec: &ShardSpec,
    claim: &ShardResult,
    method: &'static str,
    d: Option<&Divergence>,
    side: Side,
    recomputed: [u8; 32],
) -> WrongResult {
    let claimed = d.map(|d| {
        if side == Side::A {
            &d.claim_a
        } else {
            &d.claim_b
        }
    });
    WrongResult {
        kind: "leam/wrong-shard-result/v1",
        job: hex::encode(job_id),
        shard,
        shard_spec: hex::encode(spec.encode()),
        claimed_result: hex::encode(claim.encode()),
        method,
        divergent_step: d.map(|d| d.step),
        agreed_before: d.map(|d| hex::encode(d.agreed_before)),
        claimed_after: claimed.map(|c| hex::encode(c.state_hash)),
        claimed_proof: claimed.map_or(vec![], |c| c.proof.iter().map(hex::encode).collect()),
        recomputed: hex::encode(recomputed),
    }
}

/// After a full replay, a side whose answers contradicted its own commitment is rejected even
/// if its commitments happen to match (or the replay failed: its own answers convict it).
fn judged_side(mut v: Vec<Judged>, side: Side) -> Vec<Judged> {
    let i = if side == Side::A { 0 } else { 1 };
    if let Some(j) = v.get_mut(i) {
        if !j.rejected() {
            j.verdict = Some(false);
            j.reason = format!(
                "{}; but its step hashes contradicted its commitment",
                j.reason
            );
        }
    }
    v
}

/// The referee side of a node.
#[derive(Clone)]
pub struct Referee {
    me: PublicKey,
    blobs: Blobs,
    kernels: Arc<dyn Kernels>,
}

impl std::fmt::Debug for Referee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Referee")
            .field("me", &short(&self.me))
            .finish_non_exhaustive()
    }
}

impl Referee {
    /// The referee of the node with key `me`.
    pub fn new(me: PublicKey, blobs: Blobs, kernels: Arc<dyn Kernels>) -> Self {
        Self { me, blobs, kernels }
    }

    /// A judge request from `bidder`: taken only if the bidder's log publishes the job and the
    /// job names this node a referee; the verdicts are appended to this node's log later.
    pub async fn on_judge(
        &self,
        link: &Link,
        bidder: PublicKey,
        job_id: Digest32,
        shard: u32,
        spec_bytes: Vec<u8>,
        claims: Vec<Claim>,
    ) -> WorkResponse {
        let logs = match link.logs().await {
            Ok(l) => l,
            Err(e) => return work::refused(e.to_string()),
        };
        let jobs = published_jobs(logs.get(&bidder).map_or(&[][..], Vec::as_slice));
        let Some((_, job)) = jobs.get(&job_id) else {
            return work::refused(format!(
                "this node's copy of {}'s log publishes no job {}",
                short(&bidder),
                short(&job_id)
            ));
        };
        if !job.referees.contains(&self.me) {
            return work::refused(format!(
                "job {} does not name this node a referee",
                short(&job_id)
            ));
        }
        let spec = match ShardSpec::decode(&spec_bytes) {
            Ok(s) => s,
            Err(e) => return work::refused(format!("shard spec: {e}")),
        };
        let mut results = Vec::new();
        for c in &claims {
            match ShardResult::decode(&c.result) {
                Ok(r) => results.push((c.provider, r)),
                Err(e) => return work::refused(format!("result of {}: {e}", short(&c.provider))),
            }
        }
        if results.iter().any(|(p, _)| *p == self.me) {
            return work::refused("a referee does not judge its own results".to_string());
        }
        if results.len() == 2 && results[0].0 == results[1].0 {
            return work::refused("both claims name the same provider".to_string());
        }
        let this = self.clone();
        let link = link.clone();
        tokio::spawn(async move {
            let verdicts = this
                .judge(&link, bidder, job_id, shard, spec, results)
                .await;
            for body in verdicts {
                if let Err(e) = link.append(body).await {
                    tracing::warn!(error = %e, "recording a verdict failed");
                }
            }
        });
        WorkResponse::Accepted
    }

    async fn judge(
        &self,
        link: &Link,
        bidder: PublicKey,
        job_id: Digest32,
        shard: u32,
        spec: ShardSpec,
        results: Vec<(PublicKey, ShardResult)>,
    ) -> Vec<Body> {
        let claims: Vec<ShardResult> = results.iter().map(|(_, r)| r.clone()).collect();
        let judged: Vec<Judged> = if let Some(j) =
            decide_without_compute(&job_id, shard, &spec, &claims)
        {
            j
        } else {
            let mut inputs = Vec::new();
            for hash in [spec.corpus_sha256, spec.start_state] {
                match link.blob(&self.blobs, bidder, hash).await {
                    Ok((b, _)) => inputs.push(b),
                    Err(e) => {
                        tracing::warn!(error = %e, "the referee cannot fetch the shard's inputs");
                        break;
                    }
                }
            }
            let kernels = self.kernels.clone();
            let link2 = link.clone();
            let handle = tokio::runtime::Handle::current();
            let (spec2, claims2) = (spec.clone(), claims.clone());
            let providers: Vec<PublicKey> = results.iter().map(|(p, _)| *p).collect();
            let r = tokio::task::spawn_blocking(move || -> Result<Vec<Judged>, String> {
                let [corpus, start_bytes] = inputs.as_slice() else {
                    return Err("the shard's inputs could not be fetched".into());
                };
                let runner =
                    ModelRunner::new(kernels.as_ref(), corpus).map_err(|e| e.to_string())?;
                let start = runner
                    .decode_state(&spec2, start_bytes)
                    .map_err(|e| e.to_string())?;
                let spec_id = spec2.id();
                let mut a = NetSource {
                    link: link2.clone(),
                    handle: handle.clone(),
                    provider: providers[0],
                    spec_id,
                };
                let mut b = NetSource {
                    link: link2,
                    handle,
                    provider: providers[1],
                    spec_id,
                };
                let mut sources: [&mut dyn StepHashSource; 2] = [&mut a, &mut b];
                Ok(decide(
                    &runner,
                    &job_id,
                    shard,
                    &spec2,
                    &start,
                    &claims2,
                    &mut sources,
                ))
            })
            .await;
            // The referee's own failure (inputs not fetched, its task lost) judges nobody: no
            // verdict is written, the receipts stay unjudged and unpaid, and nobody is accused.
            match r.map_err(|e| e.to_string()).and_then(|x| x) {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(job = %short(&job_id), shard, error = %e, "the referee could not judge; no verdict written");
                    return Vec::new();
                }
            }
        };
        let mut out = Vec::new();
        for ((provider, r), j) in results.iter().zip(judged) {
            let Some(accepted) = j.verdict else {
                tracing::warn!(job = %short(&job_id), shard, provider = %short(provider), reason = %j.reason, "no verdict: the referee could not check this claim");
                continue;
            };
            tracing::info!(
                job = %short(&job_id),
                shard,
                provider = %short(provider),
                accepted,
                reason = %j.reason,
                "verdict"
            );
            out.push(Body::Verdict(Verdict {
                job_id,
                shard,
                provider: *provider,
                output_commitment: r.id(),
                accepted,
            }));
            if let Some(ev) = j.evidence {
                match serde_json::to_vec(&ev) {
                    Ok(bytes) if bytes.len() <= EVIDENCE_BYTES_MAX => {
                        out.push(Body::Evidence(Evidence {
                            accused: *provider,
                            kind: EvidenceKind::WrongShardResult,
                            bytes,
                        }))
                    }
                    _ => tracing::warn!(
                        "wrong-result evidence over EVIDENCE_BYTES_MAX; verdict only"
                    ),
                }
            }
        }
        out
    }
}
