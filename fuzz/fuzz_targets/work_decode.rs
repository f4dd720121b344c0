//! Fuzzes the work protocol's messages (`specs/wire.md` §7, `/leam/shard/1.0.0`) as they arrive
//! off the wire: CBOR through the codec libp2p's request-response uses. Decoding and the limit
//! checks must never panic, and whatever passes the checks re-encodes to a message that decodes
//! to the same value.
#![no_main]

use leam_net::work::{WorkRequest, WorkResponse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = cbor4ii::serde::from_slice::<WorkRequest>(data) {
        if r.check().is_ok() {
            let again = cbor4ii::serde::to_vec(Vec::new(), &r).expect("encodes");
            let back: WorkRequest = cbor4ii::serde::from_slice(&again).expect("decodes");
            assert_eq!(back, r);
        }
    }
    if let Ok(r) = cbor4ii::serde::from_slice::<WorkResponse>(data) {
        if r.check().is_ok() {
            let again = cbor4ii::serde::to_vec(Vec::new(), &r).expect("encodes");
            let back: WorkResponse = cbor4ii::serde::from_slice(&again).expect("decodes");
            assert_eq!(back, r);
        }
    }
});
