//! Gossip messages of the federation (`specs/wire.md` §3): no input panics, and whatever
//! decodes re-encodes to exactly the input. (Request-response bodies are CBOR decoded by
//! libp2p's codec under the size limits of `specs/wire.md` §4; the core's checks of the
//! decoded values are tested in `net/tests/core_adversaries.rs`.)
#![no_main]

use leam_net::wire::Gossip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = Gossip::decode(data) {
        assert_eq!(g.encode(), data);
    }
});
