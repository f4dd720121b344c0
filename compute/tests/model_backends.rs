//! The same training steps on every wgpu adapter present give the cpu reference's state hash,
//! bit for bit. Under `CI=true` the absence of any adapter fails the test instead of skipping.

use leam_compute::model::data::Corpus;
use leam_compute::model::optim::Hyper;
use leam_compute::model::train::TrainState;
use leam_compute::model::transformer::Config;
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::gpu::{list_adapters, AdapterChoice, GpuKernels};
use leam_compute::numerics::kernels::Kernels;
use std::io::Write as _;

fn train(k: &dyn Kernels, corpus: &Corpus) -> Vec<[u8; 32]> {
    let cfg = Config {
        vocab: corpus.vocab.len(),
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        block_size: 12,
    };
    let mut st = TrainState::new(cfg, Hyper::nanogpt_cpu().to_fixed().unwrap(), 3, 9).unwrap();
    let mut hashes = Vec::new();
    for _ in 0..3 {
        let b = st.batch_for(&corpus.train, st.step).unwrap();
        st.step(k, &b).unwrap();
        hashes.push(st.state_hash());
    }
    hashes
}

#[test]
fn every_adapter_trains_bit_identically_to_cpu() {
    let text =
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n";
    let corpus = Corpus::from_bytes(text.repeat(4).as_bytes(), "t").unwrap();
    let want = train(&CpuKernels, &corpus);
    let adapters = list_adapters();
    if adapters.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no wgpu adapter is present"
        );
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no wgpu adapter present; set CI=true to make this a failure"
        );
        return;
    }
    for a in adapters {
        let k = GpuKernels::with_adapter(&AdapterChoice::Index(a.index))
            .unwrap_or_else(|e| panic!("opening adapter {a}: {e}"));
        assert_eq!(train(&k, &corpus), want, "adapter {a}");
        eprintln!("adapter {a}: 3 steps bit-identical to cpu");
    }
}
