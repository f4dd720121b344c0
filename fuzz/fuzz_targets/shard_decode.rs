//! Fuzzes the shard decoders of leam-compute with arbitrary bytes: shard specs, shard results
//! and parameter deltas. None may panic, and whatever decodes must re-encode to exactly the
//! input bytes (one encoding per value), and a decoded spec must verify under its own id.
#![no_main]

use leam_compute::verify::diloco::ParamDelta;
use leam_compute::verify::shard::{ShardResult, ShardSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = ShardSpec::decode(data) {
        assert_eq!(spec.encode(), data, "shard spec re-encoding differs");
        let id = spec.id();
        assert_eq!(ShardSpec::decode_verified(data, &id).as_ref(), Ok(&spec));
        let mut other = id;
        other[0] ^= 1;
        assert!(ShardSpec::decode_verified(data, &other).is_err());
        // Compute units are a pure, total function of a valid spec.
        let _ = leam_compute::verify::shard::compute_units(&spec);
    }
    if let Ok(result) = ShardResult::decode(data) {
        assert_eq!(result.encode(), data, "shard result re-encoding differs");
    }
    if let Ok(delta) = ParamDelta::decode(data) {
        assert_eq!(delta.encode(), data, "param delta re-encoding differs");
    }
});
