//! Fuzzes the params blob a worker builds its fresh start state from
//! (`decode_params_blob`, `specs/shard.md` §6). The input is used after the
//! blob's magic and a fixed small model's header (which the target writes itself, so the fuzzer
//! reaches the tensors): nothing may panic, and a blob that is accepted must be exactly the
//! params blob of the tensors it decoded (one encoding per value).
#![no_main]

use leam_compute::model::train::{decode_params_blob, params_blob, PARAMS_BLOB_MAGIC};
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
    let mut blob = params_blob(&cfg, &[]);
    assert!(blob.starts_with(PARAMS_BLOB_MAGIC));
    blob.extend_from_slice(data);
    if let Ok(params) = decode_params_blob(&cfg, &blob) {
        assert_eq!(params_blob(&cfg, &params), blob, "params blob re-encoding differs");
    }
    let _ = decode_params_blob(&cfg, data);
});
