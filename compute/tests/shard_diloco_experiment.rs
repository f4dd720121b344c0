//! DiLoCo against single-node training on tinyshakespeare, on a small model, run on demand:
//! `LEAM_DILOCO_STEPS=300 cargo test -p leam-compute --test shard_diloco_experiment -- --ignored --nocapture`
//! (`LEAM_DILOCO_H=N`: inner steps per shard, default 50; `LEAM_DILOCO_RESET=1`: every round
//! starts the inner optimizer afresh, Adam moments zero, as a worker that keeps no state between
//! rounds would).
//!
//! Baseline: one node trains `T` steps on the whole training range. DiLoCo: `K = 2` workers on
//! disjoint halves of the training range, `H` inner steps per shard, `T / H` outer rounds merged
//! with Nesterov (lr 0.7, μ 0.9), so each worker runs as many steps as the baseline (same wall
//! time, K× the compute); and synchronous data parallelism of the K workers, i.e. one node with
//! K× the batch (the same compute as DiLoCo). Prints the validation losses and the bytes each worker moved against
//! plain data parallelism. Everything runs through the shard machinery (specs, `run_shard`,
//! deltas, `outer_step`), so every number is reproducible bit for bit.

use leam_compute::model::data::{Corpus, STREAM_EVAL_VAL};
use leam_compute::model::optim::Hyper;
use leam_compute::model::train::TrainState;
use leam_compute::model::transformer::Config;
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::fixed::B24_MANT_MAX;
use leam_compute::verify::diloco::{
    data_parallel_bytes, fresh_start_state, next_start_state, outer_step, params_blob_bytes,
    OuterOptimizer, OuterState, ParamDelta,
};
use leam_compute::verify::replay::{run_shard, ModelRunner};

/// Validation batches averaged for each reported loss.
const EVAL_ITERS: usize = 20;
/// Inner steps per shard unless `LEAM_DILOCO_H` says otherwise.
const H_DEFAULT: u32 = 50;
/// Workers.
const K: u64 = 2;

#[test]
#[ignore = "experiment (minutes); run on demand"]
fn diloco_against_single_node() {
    let total: u32 = std::env::var("LEAM_DILOCO_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let h: u32 = std::env::var("LEAM_DILOCO_H")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(H_DEFAULT);
    let reset = std::env::var("LEAM_DILOCO_RESET").is_ok_and(|v| v == "1");
    let rounds = total / h;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
    let bytes = std::fs::read(path).expect("demo corpus present");
    let corpus = Corpus::from_bytes(&bytes, "tinyshakespeare").unwrap();
    let kernels = CpuKernels;
    let runner = ModelRunner::new(&kernels, &bytes).unwrap();
    let cfg = Config {
        vocab: corpus.vocab.len(),
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        block_size: 32,
    };
    let hyper = Hyper {
        lr_decay_iters: u64::from(total),
        warmup_iters: 20,
        ..Hyper::nanogpt_cpu()
    }
    .to_fixed()
    .unwrap();
    let start = TrainState::new(cfg, hyper, 8, 1337).unwrap();
    let train_end = (bytes.len() * 9 / 10) as u64;
    // Every run is evaluated on the same validation batches (batch 8, seed 1337).
    let val = |s: &TrainState| {
        let mut probe = start.clone();
        probe.params = s.params.clone();
        probe
            .evaluate(&kernels, &corpus.val, "val", STREAM_EVAL_VAL, EVAL_ITERS)
            .unwrap()
    };
    println!(
        "model: {} parameters; T = {total} steps, K = {K} workers, H = {h}, moments reset each round: {reset}",
        cfg.n_params()
    );

    let t = std::time::Instant::now();
    let spec = runner.spec_for(&start, 0, train_end, total).unwrap();
    let single = run_shard(&runner, &spec, &start).unwrap();
    println!(
        "single node: val loss {:.4} after {total} steps ({:.1} s)",
        val(&single.final_state),
        t.elapsed().as_secs_f64()
    );

    // Synchronous data parallelism of K workers is one node with K× the batch: same compute
    // and (in parallel) the same wall time as DiLoCo.
    let t = std::time::Instant::now();
    let dp_start = TrainState::new(cfg, hyper, 8 * K as usize, 1337).unwrap();
    let dp_spec = runner.spec_for(&dp_start, 0, train_end, total).unwrap();
    let dp_run = run_shard(&runner, &dp_spec, &dp_start).unwrap();
    println!(
        "data parallel equivalent (batch {}): val loss {:.4} after {total} steps ({:.1} s)",
        8 * K,
        val(&dp_run.final_state),
        t.elapsed().as_secs_f64()
    );

    let t = std::time::Instant::now();
    let opt = OuterOptimizer::DILOCO;
    let mut global = OuterState::new(start.params.clone(), opt);
    let mut workers: Vec<TrainState> = (0..K).map(|_| start.clone()).collect();
    let mut bytes_moved = 0u64;
    for round in 0..rounds {
        let mut deltas = Vec::new();
        for (w, state) in workers.iter_mut().enumerate() {
            let w = w as u64;
            let range = (train_end * w / K, train_end * (w + 1) / K);
            let spec = runner.spec_for(state, range.0, range.1, h).unwrap();
            let run = run_shard(&runner, &spec, state).unwrap();
            let delta = ParamDelta::between(&state.params, &run.final_state.params).unwrap();
            bytes_moved += delta.encode().len() as u64
                + params_blob_bytes(cfg.n_params() as u64, state.params.len() as u64);
            deltas.push((spec.id(), delta));
            *state = run.final_state;
        }
        global = outer_step(&global, &deltas, opt, B24_MANT_MAX).unwrap();
        for state in workers.iter_mut() {
            *state = if reset {
                fresh_start_state(&start, &global.params, u64::from((round + 1) * h)).unwrap()
            } else {
                next_start_state(state, &global).unwrap()
            };
        }
        println!("round {}: val loss {:.4}", round + 1, val(&workers[0]));
    }
    let per_worker = bytes_moved / K;
    let dp = data_parallel_bytes(cfg.n_params() as u64, u64::from(rounds * h));
    println!(
        "diloco: val loss {:.4} after {rounds} rounds of {h} steps ({:.1} s); bytes per worker {per_worker} vs data parallel {dp} ({:.0}x less)",
        val(&workers[0]),
        t.elapsed().as_secs_f64(),
        dp as f64 / per_worker as f64
    );
}
