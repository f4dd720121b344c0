//! Fuzzes the params blob a worker builds its fresh start state from
//! (`TrainState::fresh_with_params_blob`, `specs/shard.md` §6). The input is used after the
//! blob's magic and a fixed small model's header (which the target writes itself, so the fuzzer
//! reaches the tensors): nothing may panic, and a blob that is accepted must be exactly the
//! params blob of the state it built (one encoding per value).
#![no_main]

use leam_compute::model::optim::Hyper;
use leam_compute::model::train::{params_blob, TrainState, PARAMS_BLOB_MAGIC};
use leam_compute::model::transformer::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        vocab: 5,
        n_layer: 1,
        n_head: 1,
        n_embd: 4,
        block_size: 2,
    };
    let hyper = Hyper::nanogpt_cpu().to_fixed().expect("nanoGPT's hyperparameters");
    let template = TrainState::new(cfg, hyper, 1, 1).expect("a valid small model");
    let mut blob = params_blob(&cfg, &[]);
    assert!(blob.starts_with(PARAMS_BLOB_MAGIC));
    blob.extend_from_slice(data);
    if let Ok(state) = template.fresh_with_params_blob(&blob, 3) {
        assert_eq!(params_blob(&cfg, &state.params), blob, "params blob re-encoding differs");
    }
    let _ = template.fresh_with_params_blob(data, 3);
});
