//! The referee's decision (`leam_jobs::referee::decide`) against each adversary of
//! `specs/market.md` §8.3, on a real (tiny) model on the CPU kernels: a wrong result, a lazy
//! provider that returns its start state, a provider that lies only about its delta
//! commitment, a provider whose step hashes contradict its own commitment. Every case gets a
//! verdict for every claim.

use leam_compute::model::train::TrainState;
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::verify::bisect::StepHashSource;
use leam_compute::verify::commit::StepLog;
use leam_compute::verify::replay::{run_shard, ModelRunner, ShardRun, StepRunner};
use leam_compute::verify::shard::{ShardResult, ShardSpec};
use leam_jobs::provider::Tampered;
use leam_jobs::referee::{decide, decide_without_compute};
use leam_market::job::{Job, ModelSpec};

const STEPS: u32 = 6;

fn corpus() -> Vec<u8> {
    let all = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/tinyshakespeare.txt"
    ))
    .expect("the demo corpus is in the repository");
    all[..20_000].to_vec()
}

fn job(corpus: &[u8]) -> Job {
    use sha2::Digest as _;
    Job {
        name: "referee test".into(),
        model: ModelSpec {
            n_layer: 1,
            n_head: 2,
            n_embd: 16,
            block_size: 16,
            batch: 4,
            init_seed: 7,
        },
        corpus_sha256: sha2::Sha256::digest(corpus).into(),
        corpus_bytes: corpus.len() as u64,
        rounds: 1,
        shards_per_round: 1,
        inner_steps: STEPS,
        replication_ppm: 1_000_000,
        seed_commitment: [0; 32],
        referees: vec![[9; 32]],
        deadline_ms: 1,
        max_price_cents_per_kilo_unit: 1,
        shard_timeout_ms: None,
    }
}

struct Setup {
    spec: ShardSpec,
    start: TrainState,
    honest: ShardRun<TrainState>,
}

fn setup(runner: &ModelRunner<'_>, corpus: &[u8]) -> Setup {
    let j = job(corpus);
    let start = leam_jobs::plan::initial_state(&j, runner.vocab_size()).unwrap();
    let (lo, hi) = leam_jobs::plan::worker_ranges(corpus, 1).unwrap()[0];
    let spec = runner.spec_for(&start, lo, hi, STEPS).unwrap();
    let honest = run_shard(runner, &spec, &start).unwrap();
    Setup {
        spec,
        start,
        honest,
    }
}

/// A run that flips a parameter bit at inner step `step` (the provider's `--falsify-run`).
fn wrong_at(runner: &ModelRunner<'_>, s: &Setup, step: u32) -> ShardRun<TrainState> {
    let tampered = Tampered {
        inner: runner,
        fault_at: s.spec.global_step(step),
    };
    run_shard(&tampered, &s.spec, &s.start).unwrap()
}

fn judge(
    runner: &ModelRunner<'_>,
    s: &Setup,
    claims: &[ShardResult],
    logs: &mut [StepLog],
) -> Vec<leam_jobs::referee::Judged> {
    let mut sources: Vec<&mut dyn StepHashSource> = logs
        .iter_mut()
        .map(|l| l as &mut dyn StepHashSource)
        .collect();
    decide(runner, &[1; 32], 0, &s.spec, &s.start, claims, &mut sources)
}

#[test]
fn a_wrong_result_is_found_by_bisection_and_one_step_replay() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let wrong = wrong_at(&runner, &s, 3);
    assert!(!wrong.result.same_commitments(&s.honest.result));
    // Either order: the verdict follows the claim, not its position.
    for flip in [false, true] {
        let (mut claims, mut logs) = (
            vec![wrong.result.clone(), s.honest.result.clone()],
            vec![wrong.log.clone(), s.honest.log.clone()],
        );
        if flip {
            claims.reverse();
            logs.reverse();
        }
        let v = judge(&runner, &s, &claims, &mut logs);
        let (w, h) = if flip { (&v[1], &v[0]) } else { (&v[0], &v[1]) };
        assert!(w.rejected() && h.accepted(), "{v:?}");
        let ev = w
            .evidence
            .as_ref()
            .expect("evidence against the wrong result");
        assert_eq!(ev.method, "bisection");
        assert_eq!(ev.divergent_step, Some(3));
        assert_eq!(ev.claimed_result, hex::encode(wrong.result.encode()));
        assert!(h.evidence.is_none());
    }
}

#[test]
fn a_lazy_provider_returning_its_start_state_is_rejected_at_step_0() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let h0 = runner.state_hash(&s.start);
    let mut lazy_log = StepLog::new();
    for _ in 0..STEPS {
        lazy_log.push(h0);
    }
    let lazy = ShardResult {
        final_state: h0,
        delta_commitment: runner.delta_commitment(&s.start, &s.start).unwrap(),
        step_root: lazy_log.root(),
        ..s.honest.result.clone()
    };
    let v = judge(
        &runner,
        &s,
        &[lazy, s.honest.result.clone()],
        &mut [lazy_log, s.honest.log.clone()],
    );
    assert!(v[0].rejected() && v[1].accepted(), "{v:?}");
    assert_eq!(v[0].evidence.as_ref().unwrap().divergent_step, Some(0));
}

#[test]
fn a_lie_about_the_delta_commitment_alone_is_decided_by_a_full_replay() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let mut liar = s.honest.result.clone();
    liar.delta_commitment[0] ^= 1;
    let v = judge(
        &runner,
        &s,
        &[s.honest.result.clone(), liar],
        &mut [s.honest.log.clone(), s.honest.log.clone()],
    );
    assert!(v[0].accepted() && v[1].rejected(), "{v:?}");
    assert_eq!(v[1].evidence.as_ref().unwrap().method, "replay");
}

#[test]
fn step_hashes_that_contradict_the_commitment_lose() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let wrong = wrong_at(&runner, &s, 1);
    // The cheat serves the honest step hashes, which do not prove against its own root.
    let v = judge(
        &runner,
        &s,
        &[wrong.result.clone(), s.honest.result.clone()],
        &mut [s.honest.log.clone(), s.honest.log.clone()],
    );
    assert!(v[0].rejected() && v[1].accepted(), "{v:?}");
    assert!(v[0].reason.contains("side A"), "{}", v[0].reason);
}

#[test]
fn single_and_equal_claims_are_accepted_without_compute() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let one = judge(&runner, &s, std::slice::from_ref(&s.honest.result), &mut []);
    assert_eq!(one.len(), 1);
    assert!(one[0].accepted());
    let two = judge(
        &runner,
        &s,
        &[s.honest.result.clone(), s.honest.result.clone()],
        &mut [],
    );
    assert!(two.iter().all(|j| j.accepted() && j.evidence.is_none()));
    // A claim that answers another spec is rejected on its face.
    let mut other = s.honest.result.clone();
    other.shard_id[0] ^= 1;
    let v = judge(
        &runner,
        &s,
        &[other.clone(), s.honest.result.clone()],
        &mut [],
    );
    assert!(v[0].rejected() && v[1].accepted(), "{v:?}");
    // The referee decides these without the shard's inputs, and a lone claim of another spec
    // (a lazy provider's old result) is rejected, not accepted unchallenged.
    let alone = decide_without_compute(&[1; 32], 0, &s.spec, std::slice::from_ref(&other))
        .expect("decided without compute");
    assert!(
        alone[0].rejected() && alone[0].evidence.is_some(),
        "{alone:?}"
    );
    assert_eq!(
        decide_without_compute(&[1; 32], 0, &s.spec, std::slice::from_ref(&s.honest.result))
            .map(|v| v[0].accepted()),
        Some(true)
    );
    let wrong = wrong_at(&runner, &s, 3);
    assert_eq!(
        decide_without_compute(
            &[1; 32],
            0,
            &s.spec,
            &[wrong.result, s.honest.result.clone()]
        ),
        None,
        "different commitments need the bisection"
    );
}

/// A referee whose own backend fails at every step (its device lost, say).
struct Broken<'r, 'k>(&'r ModelRunner<'k>);

impl StepRunner for Broken<'_, '_> {
    type State = TrainState;
    fn decode_state(
        &self,
        spec: &ShardSpec,
        bytes: &[u8],
    ) -> Result<TrainState, leam_compute::verify::replay::RunnerError> {
        self.0.decode_state(spec, bytes)
    }
    fn state_hash(&self, state: &TrainState) -> [u8; 32] {
        self.0.state_hash(state)
    }
    fn step(
        &self,
        _: &ShardSpec,
        _: &mut TrainState,
        g: u64,
    ) -> Result<(), leam_compute::verify::replay::RunnerError> {
        Err(format!("device lost at step {g}").into())
    }
    fn delta_commitment(
        &self,
        a: &TrainState,
        b: &TrainState,
    ) -> Result<[u8; 32], leam_compute::verify::replay::RunnerError> {
        self.0.delta_commitment(a, b)
    }
    fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }
}

#[test]
fn a_referee_whose_replay_fails_decides_nothing_it_did_not_check() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let wrong = wrong_at(&runner, &s, 3);
    let broken = Broken(&runner);
    let mut sources: Vec<&mut dyn StepHashSource> = Vec::new();
    let (mut lw, mut lh) = (wrong.log.clone(), s.honest.log.clone());
    sources.push(&mut lw);
    sources.push(&mut lh);
    let claims = [wrong.result.clone(), s.honest.result.clone()];
    let v = decide(
        &broken,
        &[1; 32],
        0,
        &s.spec,
        &s.start,
        &claims,
        &mut sources,
    );
    // Neither the falsifier (which would then be paid) nor the honest provider is judged.
    assert_eq!(v.len(), 2);
    for j in &v {
        assert_eq!(j.verdict, None, "{v:?}");
        assert!(
            j.evidence.is_none() && j.reason.contains("undecided"),
            "{v:?}"
        );
    }
    // Claims that need no compute are still decided.
    let one = decide(
        &broken,
        &[1; 32],
        0,
        &s.spec,
        &s.start,
        &claims[1..],
        &mut [],
    );
    assert!(one[0].accepted(), "{one:?}");
}

// ---- The audit's re-check of the referee's evidence (`leam_jobs::evidence`) ----

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use leam_jobs::evidence::{check_wrong_result, Checker, Outcome};
use leam_jobs::referee::WrongResult;
use leam_ledger::account::{fold_with, LogView};
use leam_ledger::entry::{
    Admission, Body, Entry, Evidence, EvidenceKind, ReceiptTerms, Sector, Terms as _,
};

const BIDDER: [u8; 32] = [11; 32];
const PROVIDER: [u8; 32] = [12; 32];

/// The bidder's log: a receipt for `claimed`, co-signed by the provider.
fn receipt_log(spec: &ShardSpec, claimed: &ShardResult) -> Vec<Entry> {
    let (bidder, provider) = (
        SigningKey::from_bytes(&BIDDER),
        SigningKey::from_bytes(&PROVIDER),
    );
    let terms = ReceiptTerms {
        job_id: [1; 32],
        shard: 0,
        bidder: bidder.verifying_key().to_bytes(),
        provider: provider.verifying_key().to_bytes(),
        lease: [0x44; 32],
        input_commitment: spec.id(),
        output_commitment: claimed.id(),
        compute_units: claimed.compute_units,
        gpu_ms: 5,
        device_fingerprint: [3; 32],
    };
    vec![Entry::sign(
        &bidder,
        0,
        1,
        Body::Receipt(terms.cosign(&provider)),
    )]
}

fn accused() -> [u8; 32] {
    SigningKey::from_bytes(&PROVIDER).verifying_key().to_bytes()
}

fn inputs(corpus: &[u8], s: &Setup) -> Arc<leam_jobs::evidence::Inputs> {
    let blobs: Vec<Vec<u8>> = vec![corpus.to_vec(), s.start.encode()];
    Arc::new(move |h: &[u8; 32]| {
        use sha2::Digest as _;
        blobs
            .iter()
            .find(|b| <[u8; 32]>::from(sha2::Sha256::digest(b)) == *h)
            .cloned()
    })
}

fn check(corpus: &[u8], s: &Setup, log: &[Entry], ev: &WrongResult) -> Outcome {
    let bytes = serde_json::to_vec(ev).unwrap();
    let logs = [LogView {
        owner: SigningKey::from_bytes(&BIDDER).verifying_key().to_bytes(),
        entries: log,
    }];
    check_wrong_result(
        &CpuKernels,
        inputs(corpus, s).as_ref(),
        &logs,
        &accused(),
        &bytes,
    )
}

/// `o` is of the outcome `kind` (`Holds`, `Fails`, `Unchecked`) and its reason says `needle`.
fn expect(o: &Outcome, kind: &str, needle: &str) {
    let (k, r) = match o {
        Outcome::Holds(r) => ("Holds", r),
        Outcome::Fails(r) => ("Fails", r),
        Outcome::Unchecked(r) => ("Unchecked", r),
    };
    assert!(
        k == kind && r.contains(needle),
        "expected {kind} with {needle:?}: {o:?}"
    );
}

fn evidence_against(
    runner: &ModelRunner<'_>,
    s: &Setup,
    wrong: &ShardRun<TrainState>,
) -> WrongResult {
    let v = judge(
        runner,
        s,
        &[wrong.result.clone(), s.honest.result.clone()],
        &mut [wrong.log.clone(), s.honest.log.clone()],
    );
    v[0].evidence
        .clone()
        .expect("evidence against the wrong result")
}

#[test]
fn bisection_evidence_holds_for_the_auditor_and_fails_when_forged() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let wrong = wrong_at(&runner, &s, 3);
    let ev = evidence_against(&runner, &s, &wrong);
    let log = receipt_log(&s.spec, &wrong.result);
    let o = check(&corpus, &s, &log, &ev);
    expect(&o, "Holds", "step 3");

    // Without the accused's receipt for that result, the evidence puts words in its mouth.
    let honest_log = receipt_log(&s.spec, &s.honest.result);
    let o = check(&corpus, &s, &honest_log, &ev);
    expect(&o, "Fails", "no receipt co-signed");

    // Evidence against an honest result (a referee accusing the right claim) does not hold:
    // the honest step hash at step 3, proven against the honest root, is what the replay gives.
    let v = judge(
        &runner,
        &s,
        &[wrong.result.clone(), s.honest.result.clone()],
        &mut [wrong.log.clone(), s.honest.log.clone()],
    );
    let mut forged = v[0].evidence.clone().unwrap();
    let proof = s.honest.log.prove(3).unwrap();
    forged.claimed_result = hex::encode(s.honest.result.encode());
    forged.claimed_after = Some(hex::encode(proof.state_hash));
    forged.claimed_proof = proof.proof.iter().map(hex::encode).collect();
    let o = check(&corpus, &s, &honest_log, &forged);
    expect(&o, "Fails", "gives the claimed state hash");

    // A proof that does not fit the claimed root, a wrong agreed state, a bad field: each fails
    // and says which field.
    let mut bad = ev.clone();
    bad.claimed_proof.reverse();
    bad.claimed_proof.push(hex::encode([0u8; 32]));
    let o = check(&corpus, &s, &log, &bad);
    expect(&o, "Fails", "claimed_proof");
    let mut bad = ev.clone();
    bad.agreed_before = Some(hex::encode([7u8; 32]));
    let o = check(&corpus, &s, &log, &bad);
    expect(&o, "Fails", "agreed_before");
    let mut bad = serde_json::to_value(&ev).unwrap();
    bad["job"] = "zz".into();
    let o = check_wrong_result(
        &CpuKernels,
        inputs(&corpus, &s).as_ref(),
        &[],
        &accused(),
        &serde_json::to_vec(&bad).unwrap(),
    );
    expect(&o, "Fails", "`job`");

    // Without the inputs, nothing is decided.
    let none: Arc<leam_jobs::evidence::Inputs> = Arc::new(|_: &[u8; 32]| None);
    let logs = [LogView {
        owner: SigningKey::from_bytes(&BIDDER).verifying_key().to_bytes(),
        entries: &log,
    }];
    let o = check_wrong_result(
        &CpuKernels,
        none.as_ref(),
        &logs,
        &accused(),
        &serde_json::to_vec(&ev).unwrap(),
    );
    expect(&o, "Unchecked", "not available");
}

#[test]
fn replay_evidence_against_a_delta_liar_holds() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let mut liar = s.honest.result.clone();
    liar.delta_commitment[0] ^= 1;
    let v = judge(
        &runner,
        &s,
        &[s.honest.result.clone(), liar.clone()],
        &mut [s.honest.log.clone(), s.honest.log.clone()],
    );
    let ev = v[1].evidence.clone().unwrap();
    let o = check(&corpus, &s, &receipt_log(&s.spec, &liar), &ev);
    expect(&o, "Holds", "full replay");
    // The same document naming the honest result does not hold.
    let mut forged = ev.clone();
    forged.claimed_result = hex::encode(s.honest.result.encode());
    let o = check(
        &corpus,
        &s,
        &receipt_log(&s.spec, &s.honest.result),
        &forged,
    );
    expect(&o, "Fails", "full replay gives the claimed");
}

/// A lazy provider answers with an old result (here: the honest result of the shard before,
/// which ran fewer steps from the same start): even unreplicated, the referee rejects it on
/// its face, and the evidence holds for an auditor with the co-signed receipt of that claim.
#[test]
fn a_lazy_provider_replaying_an_old_result_is_rejected_with_evidence_that_holds() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let old_spec = runner
        .spec_for(&s.start, s.spec.data_start, s.spec.data_end, STEPS - 1)
        .unwrap();
    let old = run_shard(&runner, &old_spec, &s.start).unwrap();
    assert!(old.result.check_against(&s.spec).is_err());
    let v = judge(
        &runner,
        &s,
        std::slice::from_ref(&old.result),
        &mut [old.log.clone()],
    );
    assert!(v[0].rejected(), "{v:?}");
    assert!(v[0].reason.contains("does not answer the spec"), "{v:?}");
    let ev = v[0]
        .evidence
        .clone()
        .expect("evidence against the old result");
    let o = check(&corpus, &s, &receipt_log(&s.spec, &old.result), &ev);
    expect(&o, "Holds", "does not answer its spec");
    // Without the accused's receipt for that claim the document proves nothing.
    let o = check(&corpus, &s, &receipt_log(&s.spec, &s.honest.result), &ev);
    expect(&o, "Fails", "no receipt co-signed by the accused");
}

/// The fold counts checked evidence against the accused and lists the rest with the reason.
#[test]
fn the_accounting_counts_only_evidence_that_checks() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let wrong = wrong_at(&runner, &s, 2);
    let ev = evidence_against(&runner, &s, &wrong);
    let referee = SigningKey::from_bytes(&[13; 32]);
    let bytes = serde_json::to_vec(&ev).unwrap();
    let mut forged = ev.clone();
    forged.agreed_before = Some(hex::encode([7u8; 32]));
    let referee_log = vec![
        Entry::sign(
            &referee,
            0,
            2,
            Body::Evidence(Evidence {
                accused: accused(),
                kind: EvidenceKind::WrongShardResult,
                bytes: bytes.clone(),
            }),
        ),
        Entry::sign(
            &referee,
            1,
            3,
            Body::Evidence(Evidence {
                accused: accused(),
                kind: EvidenceKind::WrongShardResult,
                bytes: serde_json::to_vec(&forged).unwrap(),
            }),
        ),
    ];
    let bidder_log = receipt_log(&s.spec, &wrong.result);
    let keys = [
        (
            "startup",
            SigningKey::from_bytes(&BIDDER).verifying_key().to_bytes(),
        ),
        ("provider", accused()),
        ("referee", referee.verifying_key().to_bytes()),
    ];
    let mut referee_log = referee_log;
    for (i, (org, key)) in keys.iter().enumerate() {
        referee_log.push(Entry::sign(
            &referee,
            2 + i as u64,
            4,
            Body::Admission(Admission {
                organisation: org.to_string(),
                sector: Sector::Science,
                member: *key,
            }),
        ));
    }
    let logs = [
        LogView {
            owner: keys[0].1,
            entries: &bidder_log,
        },
        LogView {
            owner: keys[2].1,
            entries: &referee_log,
        },
    ];
    let checker = Checker::new(Arc::new(CpuKernels), inputs(&corpus, &s));
    let report = fold_with(&logs, &checker).unwrap();
    assert_eq!(report.organisations["provider"].totals.evidence_against, 1);
    assert_eq!(report.evidence_not_counted.len(), 1, "{report:?}");
    let nc = &report.evidence_not_counted[0];
    assert_eq!(
        (nc.seq, nc.evidence_kind),
        (1, EvidenceKind::WrongShardResult)
    );
    assert!(
        nc.reason.contains("does not hold") && nc.reason.contains("agreed_before"),
        "{}",
        nc.reason
    );
    // An auditor that cannot replay counts neither, and says why.
    let blind = leam_ledger::account::fold(&logs).unwrap();
    assert_eq!(blind.organisations["provider"].totals.evidence_against, 0);
    assert_eq!(blind.evidence_not_counted.len(), 2);
    assert!(blind.evidence_not_counted[0]
        .reason
        .contains("needs a shard replay"));
}
