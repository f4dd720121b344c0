//! The referee's decision (`leam_jobs::referee::decide`) against each adversary of
//! `specs/market.md` §8.3, on a real (tiny) model on the CPU kernels: a wrong result, a lazy
//! provider that returns its start state, a provider that lies only about its delta
//! commitment, a provider whose step hashes contradict its own commitment. Every case gets a
//! verdict for every claim.

use leam_compute::bisect::StepHashSource;
use leam_compute::commit::StepLog;
use leam_compute::kernels::CpuKernels;
use leam_compute::replay::{run_shard, ModelRunner, ShardRun, StepRunner};
use leam_compute::shard::{ShardResult, ShardSpec};
use leam_compute::train::TrainState;
use leam_jobs::provider::Tampered;
use leam_jobs::referee::decide;
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
    let tampered = Tampered {
        inner: &runner,
        fault_at: s.spec.global_step(3),
    };
    let wrong = run_shard(&tampered, &s.spec, &s.start).unwrap();
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
        assert!(!w.accepted && h.accepted, "{v:?}");
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
    assert!(!v[0].accepted && v[1].accepted, "{v:?}");
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
    assert!(v[0].accepted && !v[1].accepted, "{v:?}");
    assert_eq!(v[1].evidence.as_ref().unwrap().method, "replay");
}

#[test]
fn step_hashes_that_contradict_the_commitment_lose() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let tampered = Tampered {
        inner: &runner,
        fault_at: s.spec.global_step(1),
    };
    let wrong = run_shard(&tampered, &s.spec, &s.start).unwrap();
    // The cheat serves the honest step hashes, which do not prove against its own root.
    let v = judge(
        &runner,
        &s,
        &[wrong.result.clone(), s.honest.result.clone()],
        &mut [s.honest.log.clone(), s.honest.log.clone()],
    );
    assert!(!v[0].accepted && v[1].accepted, "{v:?}");
    assert!(v[0].reason.contains("side A"), "{}", v[0].reason);
}

#[test]
fn single_and_equal_claims_are_accepted_without_compute() {
    let corpus = corpus();
    let runner = ModelRunner::new(&CpuKernels, &corpus).unwrap();
    let s = setup(&runner, &corpus);
    let one = judge(&runner, &s, std::slice::from_ref(&s.honest.result), &mut []);
    assert_eq!(one.len(), 1);
    assert!(one[0].accepted);
    let two = judge(
        &runner,
        &s,
        &[s.honest.result.clone(), s.honest.result.clone()],
        &mut [],
    );
    assert!(two.iter().all(|j| j.accepted && j.evidence.is_none()));
    // A claim that answers another spec is rejected on its face.
    let mut other = s.honest.result.clone();
    other.shard_id[0] ^= 1;
    let v = judge(&runner, &s, &[other, s.honest.result.clone()], &mut []);
    assert!(!v[0].accepted && v[1].accepted, "{v:?}");
}
