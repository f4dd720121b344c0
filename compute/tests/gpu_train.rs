//! Training through the wgpu backend gives the same bits as the CPU reference: a tiny model
//! (1 layer, width 32, context 16, batch 4) trained for a few steps on each adapter present,
//! every kernel on the GPU (plain `GpuKernels`, no CPU fallback), must reach the same state
//! hash and parameter commitment as `CpuKernels` after every step.

mod gpu_common;

use leam_compute::model::data::Corpus;
use leam_compute::model::optim::Hyper;
use leam_compute::model::train::TrainState;
use leam_compute::model::transformer::Config;
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::kernels::Kernels;
use leam_compute::numerics::tensor::Exec;

/// Steps trained per backend (each step is a full forward, backward and AdamW update).
const STEPS: u64 = 3;
/// Bytes of the demo corpus used (enough for every character class of the tiny model).
const CORPUS_BYTES: usize = 20_000;

fn tiny_state(corpus: &Corpus) -> TrainState {
    let cfg = Config {
        vocab: corpus.vocab.len(),
        n_layer: 1,
        n_head: 2,
        n_embd: 32,
        block_size: 16,
    };
    let hyper = Hyper::nanogpt_cpu()
        .to_fixed()
        .expect("nanoGPT hyperparameters are valid");
    TrainState::new(cfg, hyper, 4, 1337).expect("tiny config is valid")
}

fn train(k: &dyn Kernels, corpus: &Corpus) -> Vec<([u8; 32], [u8; 32])> {
    let mut st = tiny_state(corpus);
    (0..STEPS)
        .map(|step| {
            let batch = st
                .batch_for(&corpus.train, step)
                .expect("corpus is long enough");
            st.step(k, &batch)
                .unwrap_or_else(|e| panic!("{}: step {step}: {e}", k.name()));
            (st.state_hash(), st.params_commitment())
        })
        .collect()
}

#[test]
fn wgpu_training_steps_match_the_cpu_reference_bit_for_bit() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
    let text = std::fs::read(path).expect("demo corpus present");
    let corpus = Corpus::from_bytes(&text[..CORPUS_BYTES], "tinyshakespeare head")
        .expect("valid UTF-8 prefix");
    let want = train(&CpuKernels, &corpus);
    for k in gpu_common::adapters("gpu_train") {
        let got = train(&k, &corpus);
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g,
                w,
                "{}: state after step {step} differs from the cpu reference",
                k.name()
            );
        }
        eprintln!("{}: {STEPS} steps bit-identical", k.name());
    }
}

/// A run of steps in one session keeps the state on the device: the same bits as the CPU
/// reference after the run, no kernel off the device, each step reads back less than a tenth
/// of the parameters' bytes (keys and the loss, not tensors), and a step is one submission
/// (the host path submits once per kernel).
#[test]
fn a_resident_session_trains_on_the_device_with_the_cpu_references_bits() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
    let text = std::fs::read(path).expect("demo corpus present");
    let corpus = Corpus::from_bytes(&text[..CORPUS_BYTES], "tinyshakespeare head")
        .expect("valid UTF-8 prefix");
    let mut want = tiny_state(&corpus);
    for step in 0..STEPS {
        let b = want
            .batch_for(&corpus.train, step)
            .expect("corpus long enough");
        want.step(&CpuKernels, &b).expect("cpu step");
    }
    let first = want
        .batch_for(&corpus.train, 0)
        .expect("corpus long enough");
    for k in gpu_common::adapters("gpu_train resident") {
        let mut st = tiny_state(&corpus);
        let param_bytes = 4 * st.model.n_params() as u64;
        let mut s = st.session(&k).expect("session opens");
        assert!(s.exec().is_resident(), "{}: wgpu keeps tensors", k.name());
        let mut submissions = Vec::new();
        for _ in 0..STEPS {
            let b = s
                .state_ref()
                .batch_for(&corpus.train, s.step_number())
                .expect("corpus long enough");
            let before = k.traffic();
            s.step(&b)
                .unwrap_or_else(|e| panic!("{}: resident step: {e}", k.name()));
            let d = k.traffic().since(&before);
            assert!(
                d.downloaded_bytes < param_bytes / 10,
                "{}: a resident step read back {} bytes (parameters: {param_bytes})",
                k.name(),
                d.downloaded_bytes
            );
            submissions.push(d.submissions);
        }
        assert_eq!(
            s.exec().fallbacks(),
            0,
            "{}: kernels ran off the device",
            k.name()
        );
        // Exponents, shifts and the clipping coefficient are computed on the device: the
        // only submission of a step is the one that reads its loss.
        assert_eq!(
            submissions,
            vec![1; STEPS as usize],
            "{}: submissions per resident step",
            k.name()
        );
        assert_eq!(
            s.exec().replays(),
            0,
            "{}: a deferred range check failed",
            k.name()
        );
        s.finish().expect("state read back");
        assert_eq!(st.step, STEPS);
        assert_eq!(
            st.state_hash(),
            want.state_hash(),
            "{}: state after a resident run differs from the cpu reference",
            k.name()
        );
        let mut host = tiny_state(&corpus);
        let mut hs = host.session_on(Exec::host_only(&k)).expect("session opens");
        let before = k.traffic();
        hs.step(&first).expect("host-tensor step");
        let per_kernel = k.traffic().since(&before).submissions;
        assert!(
            2 * submissions[0] < per_kernel,
            "{}: {} submissions in a resident step, {per_kernel} with one per kernel",
            k.name(),
            submissions[0]
        );
    }
}
