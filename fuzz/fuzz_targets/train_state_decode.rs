//! Fuzzes the training-state and model-checkpoint decoders of leam-compute. The input is used
//! twice: as a raw `TrainState` encoding, and as the body of a checkpoint file whose SHA-256
//! trailer the target appends itself (otherwise almost every input would stop at the checksum
//! and the field parsers behind it would never be reached). Nothing may panic, and whatever
//! decodes must re-encode to exactly the bytes it came from (one encoding per value).
#![no_main]

use leam_compute::model::checkpoint::Checkpoint;
use leam_compute::model::train::TrainState;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = TrainState::decode(data) {
        assert_eq!(state.encode(), data, "train state re-encoding differs");
    }
    let mut file = data.to_vec();
    let trailer = Sha256::digest(&file);
    file.extend_from_slice(&trailer);
    if let Ok(ckpt) = Checkpoint::decode(&file) {
        assert_eq!(ckpt.encode(), file, "checkpoint re-encoding differs");
    }
});
