//! End-to-end training on the cpu backend: loss falls, runs are bit-reproducible, state and
//! checkpoints round-trip, and sampling from a checkpoint is deterministic.

use leam_compute::model::checkpoint::Checkpoint;
use leam_compute::model::data::Corpus;
use leam_compute::model::optim::Hyper;
use leam_compute::model::sample::generate;
use leam_compute::model::train::{run, LoopOptions, TrainState};
use leam_compute::model::transformer::Config;
use leam_compute::numerics::cpu::CpuKernels;

const TEXT: &str = "to be or not to be, that is the question: whether 'tis nobler in the mind \
to suffer the slings and arrows of outrageous fortune, or to take arms against a sea of \
troubles and by opposing end them. to die, to sleep; no more; and by a sleep to say we end \
the heart-ache and the thousand natural shocks that flesh is heir to.";

fn setup(seed: u64) -> (Corpus, TrainState) {
    let corpus = Corpus::from_bytes(TEXT.as_bytes(), "hamlet").unwrap();
    let cfg = Config {
        vocab: corpus.vocab.len(),
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        block_size: 16,
    };
    let mut h = Hyper::nanogpt_cpu();
    h.learning_rate = 1e-2;
    h.min_lr = 1e-3;
    h.warmup_iters = 5;
    h.lr_decay_iters = 60;
    let state = TrainState::new(cfg, h.to_fixed().unwrap(), 4, seed).unwrap();
    (corpus, state)
}

#[test]
fn training_learns_and_is_bit_reproducible() {
    let opts = LoopOptions {
        max_iters: 60,
        eval_interval: 30,
        eval_iters: 4,
        progress: false,
    };
    let (corpus, mut a) = setup(5);
    let curve = run(&CpuKernels, &mut a, &corpus, &opts, &mut |_| {}).unwrap();
    assert_eq!(curve.len(), 3);
    let (first, last) = (&curve[0], &curve[2]);
    assert!(
        last.train_loss < first.train_loss - 0.4,
        "train loss {} -> {}",
        first.train_loss,
        last.train_loss
    );
    let (_, mut b) = setup(5);
    run(&CpuKernels, &mut b, &corpus, &opts, &mut |_| {}).unwrap();
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a.params_commitment(), b.params_commitment());
    let (_, mut c) = setup(6);
    run(&CpuKernels, &mut c, &corpus, &opts, &mut |_| {}).unwrap();
    assert_ne!(a.params_commitment(), c.params_commitment());

    // Resume from an encoded mid-run state gives the same end state as an uninterrupted run.
    let (_, mut d) = setup(5);
    let half = LoopOptions {
        max_iters: 25,
        eval_iters: 0,
        ..opts.clone()
    };
    run(&CpuKernels, &mut d, &corpus, &half, &mut |_| {}).unwrap();
    let mut e = TrainState::decode(&d.encode()).unwrap();
    let rest = LoopOptions {
        eval_iters: 0,
        ..opts.clone()
    };
    run(&CpuKernels, &mut e, &corpus, &rest, &mut |_| {}).unwrap();
    assert_eq!(e.state_hash(), a.state_hash());

    // Checkpoint and sample.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.ckpt");
    let ck = Checkpoint {
        vocab: corpus.vocab.clone(),
        state: a.clone(),
    };
    ck.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back, ck);
    let s1 = generate(&CpuKernels, &back, "to be", 40, 3).unwrap();
    let s2 = generate(&CpuKernels, &back, "to be", 40, 3).unwrap();
    assert_eq!(s1, s2);
    assert_eq!(s1.chars().count(), 45);
}
