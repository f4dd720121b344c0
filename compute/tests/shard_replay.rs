//! Shards of the real model on a tiny config: two runs of a shard give the same result
//! commitments, a shard equals the same steps of single-node training, replaying step k from its
//! committed state reproduces step hash k, a single flipped parameter bit mid-shard is found by
//! bisection and convicted by the referee, and a DiLoCo round merges real deltas
//! deterministically. Also pins the shard's compute units and hyperparameters to the model's.

mod gpu_common;

use leam_compute::model::data::Corpus;
use leam_compute::model::optim::Hyper;
use leam_compute::model::train::TrainState;
use leam_compute::model::transformer::Config;
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::fixed::B24_MANT_MAX;
use leam_compute::numerics::kernels::Kernels;
use leam_compute::verify::bisect::{bisect, ceil_log2, referee, RefereeVerdict};
use leam_compute::verify::commit::Hash32;
use leam_compute::verify::diloco::{
    next_start_state, outer_step, OuterOptimizer, OuterState, ParamDelta,
};
use leam_compute::verify::replay::{
    replay_shard, replay_step, run_shard, ModelRunner, ReplayError, RunnerError, ShardVerdict,
    StepRunner,
};
use leam_compute::verify::shard::{nanogpt_cpu_spec, step_macs, ModelShape, ShardSpec};

/// Bytes of the demo corpus used.
const CORPUS_BYTES: usize = 20_000;
/// Inner steps of the test shards.
const STEPS: u32 = 6;

fn corpus_bytes() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
    let text = std::fs::read(path).expect("demo corpus present");
    text[..CORPUS_BYTES].to_vec()
}

fn tiny_state(vocab: usize) -> TrainState {
    let cfg = Config {
        vocab,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        block_size: 8,
    };
    let hyper = Hyper::nanogpt_cpu()
        .to_fixed()
        .expect("valid hyperparameters");
    TrainState::new(cfg, hyper, 2, 1337).expect("tiny config is valid")
}

/// The honest runner, with one parameter's lowest bit flipped after global step `fault_at`.
struct Faulty<'a> {
    inner: &'a ModelRunner<'a>,
    fault_at: u64,
}

impl StepRunner for Faulty<'_> {
    type State = TrainState;
    fn decode_state(&self, spec: &ShardSpec, bytes: &[u8]) -> Result<TrainState, RunnerError> {
        self.inner.decode_state(spec, bytes)
    }
    fn state_hash(&self, s: &TrainState) -> Hash32 {
        self.inner.state_hash(s)
    }
    fn step(&self, spec: &ShardSpec, s: &mut TrainState, g: u64) -> Result<(), RunnerError> {
        self.inner.step(spec, s, g)?;
        if g == self.fault_at {
            let m = &mut s.params[1].mant[0];
            *m += if *m > 0 { -1 } else { 1 };
        }
        Ok(())
    }
    fn delta_commitment(&self, a: &TrainState, b: &TrainState) -> Result<Hash32, RunnerError> {
        self.inner.delta_commitment(a, b)
    }
    fn fingerprint(&self) -> String {
        "faulty".into()
    }
}

#[test]
fn shard_runs_agree_equal_single_node_training_and_replay_step_by_step() {
    let bytes = corpus_bytes();
    let kernels = CpuKernels;
    let runner = ModelRunner::new(&kernels, &bytes).unwrap();
    let start = tiny_state(runner.vocab_size());
    let train_end = (CORPUS_BYTES * 9 / 10) as u64;
    let spec = runner.spec_for(&start, 0, train_end, STEPS).unwrap();
    let a = run_shard(&runner, &spec, &start).unwrap();
    let b = run_shard(&runner, &spec, &start).unwrap();
    assert_eq!(a.result, b.result);
    a.result.check_against(&spec).unwrap();
    assert_eq!(
        replay_shard(&runner, &spec, &start, &a.result).unwrap().0,
        ShardVerdict::Match
    );

    // The same steps of single-node training (as `leam train` runs them) give the same states.
    let corpus = Corpus::from_bytes(&bytes, "head").unwrap();
    let mut st = start.clone();
    let mut before = Vec::new();
    for i in 0..u64::from(STEPS) {
        before.push(st.encode());
        let batch = st.batch_for(&corpus.train, i).unwrap();
        st.step(&kernels, &batch).unwrap();
        assert_eq!(Some(st.state_hash()), a.log.state_hash(i), "step {i}");
    }
    assert_eq!(st, a.final_state);

    // Replaying step k from the committed state before it reproduces step hash k.
    for k in 0..u64::from(STEPS) {
        let proof = (k > 0).then(|| a.log.prove(k - 1).unwrap());
        let rep = replay_step(
            &runner,
            &spec,
            &a.result,
            k,
            &before[k as usize],
            proof.as_ref(),
        )
        .unwrap();
        assert_eq!(Some(rep.recomputed), a.log.state_hash(k), "step {k}");
    }
    // The state before step 3 offered for step 2 is refused with a precise error.
    let bad = replay_step(
        &runner,
        &spec,
        &a.result,
        2,
        &before[3],
        Some(&a.log.prove(1).unwrap()),
    );
    assert!(
        matches!(bad, Err(ReplayError::StateMismatch { .. })),
        "{bad:?}"
    );
}

#[test]
fn a_flipped_parameter_bit_is_bisected_and_convicted() {
    let bytes = corpus_bytes();
    let kernels = CpuKernels;
    let runner = ModelRunner::new(&kernels, &bytes).unwrap();
    let start = tiny_state(runner.vocab_size());
    let spec = runner
        .spec_for(&start, 0, (CORPUS_BYTES * 9 / 10) as u64, STEPS)
        .unwrap();
    let honest = run_shard(&runner, &spec, &start).unwrap();
    let fault_at = 3;
    let faulty = Faulty {
        inner: &runner,
        fault_at,
    };
    let bad = run_shard(&faulty, &spec, &start).unwrap();
    assert_ne!(honest.result.final_state, bad.result.final_state);
    let (mut la, mut lb) = (bad.log.clone(), honest.log.clone());
    let d = bisect(&spec, &bad.result, &mut la, &honest.result, &mut lb).unwrap();
    assert_eq!(d.step, fault_at);
    let bound = ceil_log2(STEPS.into()) + 1;
    assert!(d.fetches_a <= bound && d.fetches_b <= bound);
    // The referee replays the single step from the agreed state (fetched from either side).
    let mut st = start.clone();
    let corpus = Corpus::from_bytes(&bytes, "head").unwrap();
    for i in 0..fault_at {
        let batch = st.batch_for(&corpus.train, i).unwrap();
        st.step(&kernels, &batch).unwrap();
    }
    assert_eq!(st.state_hash(), d.agreed_before);
    let verdict = referee(&runner, &spec, &d, &st.encode()).unwrap();
    assert_eq!(verdict, RefereeVerdict::BIsRight);
}

#[test]
fn diloco_round_on_real_deltas_is_order_independent() {
    let bytes = corpus_bytes();
    let kernels = CpuKernels;
    let runner = ModelRunner::new(&kernels, &bytes).unwrap();
    let start = tiny_state(runner.vocab_size());
    let train_end = (CORPUS_BYTES * 9 / 10) as u64;
    // Two workers on disjoint halves of the training range, same start state.
    let specs = [
        runner.spec_for(&start, 0, train_end / 2, STEPS).unwrap(),
        runner
            .spec_for(&start, train_end / 2, train_end, STEPS)
            .unwrap(),
    ];
    let mut deltas = Vec::new();
    for spec in &specs {
        let run = run_shard(&runner, spec, &start).unwrap();
        let delta = ParamDelta::between(&start.params, &run.final_state.params).unwrap();
        assert_eq!(delta.commitment(), run.result.delta_commitment);
        let widths: Vec<usize> = delta
            .tensors
            .iter()
            .map(|t| {
                let e = ParamDelta {
                    tensors: vec![t.clone()],
                }
                .encode();
                (e.len() - 18) / t.values.len().max(1)
            })
            .collect();
        eprintln!("delta value widths per tensor (bytes): {widths:?}");
        deltas.push((spec.id(), delta));
    }
    let global = OuterState::new(start.params.clone(), OuterOptimizer::DILOCO);
    let ab = outer_step(&global, &deltas, OuterOptimizer::DILOCO, B24_MANT_MAX).unwrap();
    deltas.reverse();
    let ba = outer_step(&global, &deltas, OuterOptimizer::DILOCO, B24_MANT_MAX).unwrap();
    assert_eq!(ab.commitment(), ba.commitment());
    assert_ne!(ab.params, start.params);
    // One shard with plain averaging lands on that shard's parameters (same values).
    let one = outer_step(
        &OuterState::new(start.params.clone(), OuterOptimizer::Average),
        &deltas[..1],
        OuterOptimizer::Average,
        B24_MANT_MAX,
    )
    .unwrap();
    let run = run_shard(&runner, &specs[1], &start).unwrap();
    for (x, y) in one.params.iter().zip(&run.final_state.params) {
        assert_eq!(x.to_f64(), y.to_f64());
    }
    // Round two: the worker continues from its own state rebased on the global parameters.
    let next = next_start_state(&run.final_state, &ab).unwrap();
    assert_eq!(next.step, u64::from(STEPS));
    let spec2 = runner
        .spec_for(&next, train_end / 2, train_end, STEPS)
        .unwrap();
    let r2 = run_shard(&runner, &spec2, &next).unwrap();
    assert_eq!(r2.final_state.step, 2 * u64::from(STEPS));
}

#[test]
fn runner_refuses_foreign_corpus_and_bad_ranges() {
    let bytes = corpus_bytes();
    let kernels = CpuKernels;
    let runner = ModelRunner::new(&kernels, &bytes).unwrap();
    let start = tiny_state(runner.vocab_size());
    let mut spec = runner.spec_for(&start, 0, 1000, 2).unwrap();
    spec.corpus_sha256[0] ^= 1;
    let e = run_shard(&runner, &spec, &start).unwrap_err();
    assert!(e.to_string().contains("corpus SHA-256"), "{e}");
    let spec = runner
        .spec_for(&start, 0, CORPUS_BYTES as u64 + 1, 2)
        .unwrap();
    let e = run_shard(&runner, &spec, &start).unwrap_err();
    assert!(e.to_string().contains("ends past the corpus"), "{e}");
    // A spec whose seed disagrees with the start state is refused before any step.
    let mut spec = runner.spec_for(&start, 0, 1000, 2).unwrap();
    spec.seed += 1;
    let e = run_shard(&runner, &spec, &start).unwrap_err();
    assert!(e.to_string().contains("`seed`"), "{e}");
    assert!(ModelRunner::new(&kernels, b"").is_err());
    assert!(ModelRunner::new(&kernels, b"ab\xffcd").is_err());
}

#[test]
fn compute_units_and_hyperparameters_match_the_model() {
    for (vocab, n_layer, n_head, n_embd, block_size, batch) in [
        (65, 4, 4, 128, 64, 12),
        (3, 1, 1, 1, 1, 1),
        (300, 3, 2, 48, 17, 5),
    ] {
        let cfg = Config {
            vocab,
            n_layer,
            n_head,
            n_embd,
            block_size,
        };
        let shape = ModelShape {
            vocab_size: vocab as u32,
            n_layer: n_layer as u32,
            n_head: n_head as u32,
            n_embd: n_embd as u32,
            block_size: block_size as u32,
            batch_size: batch as u32,
        };
        assert_eq!(step_macs(&shape), u128::from(cfg.train_macs(batch)));
    }
    let h = Hyper::nanogpt_cpu().to_fixed().unwrap();
    let s = nanogpt_cpu_spec([0; 32], [0; 32], 1_115_394, 1337, 0, 1).hyper;
    assert_eq!(
        (
            s.lr_q40,
            s.min_lr_q40,
            s.warmup_iters as u64,
            s.lr_decay_iters as u64
        ),
        (h.lr_q40, h.min_lr_q40, h.warmup_iters, h.lr_decay_iters)
    );
    assert_eq!(
        (
            s.weight_decay_q30,
            s.beta1_q30,
            s.beta2_q30,
            s.grad_clip_q30
        ),
        (
            h.weight_decay_q30,
            h.beta1_q30,
            h.beta2_q30,
            h.grad_clip_q30
        )
    );
    // nanoGPT's parameter count used for the communication numbers in specs/shard.md.
    let cfg = Config {
        vocab: 65,
        n_layer: 4,
        n_head: 4,
        n_embd: 128,
        block_size: 64,
    };
    assert_eq!(cfg.n_params(), 804_096);
    assert_eq!(cfg.param_specs().len(), 27);
}

#[test]
fn a_cpu_shard_replays_bit_identically_on_every_wgpu_adapter() {
    let bytes = corpus_bytes();
    let cpu = CpuKernels;
    let runner = ModelRunner::new(&cpu, &bytes).unwrap();
    let start = tiny_state(runner.vocab_size());
    let spec = runner
        .spec_for(&start, 0, (CORPUS_BYTES * 9 / 10) as u64, 3)
        .unwrap();
    let claimed = run_shard(&runner, &spec, &start).unwrap().result;
    for gpu in gpu_common::adapters("shard_replay") {
        let k = leam_compute::numerics::gpu::WithCpuFallback::new(gpu);
        let on_gpu = ModelRunner::new(&k, &bytes).unwrap();
        let (verdict, _) = replay_shard(&on_gpu, &spec, &start, &claimed).unwrap();
        assert_eq!(verdict, ShardVerdict::Match, "{}", k.name());
        eprintln!("{}: 3-step shard replayed bit-identically", k.name());
    }
}
