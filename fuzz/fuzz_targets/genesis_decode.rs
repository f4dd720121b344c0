//! Fuzzes the genesis document parser (`specs/federation.md` §1) with arbitrary bytes. It must
//! never panic; whatever parses must re-encode to exactly the input bytes (one encoding per
//! document), carry only founders' signatures, and answer `verify_complete` and the membership
//! rule without panicking.
#![no_main]

use leam_ledger::genesis::{self, SignedGenesis, GENESIS_BYTES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SignedGenesis::parse(data) {
        assert!(
            data.len() <= GENESIS_BYTES_MAX,
            "parsed an over-long document"
        );
        assert_eq!(s.encode().as_bytes(), data, "genesis re-encoding differs");
        assert!(
            s.genesis.body().len() < data.len(),
            "no blank line after the body"
        );
        for key in s.signed_by() {
            assert!(
                s.genesis.founder(&key).is_some(),
                "signature by a non-founder"
            );
        }
        assert_eq!(
            s.signed_by().len() + s.missing_signatures().len(),
            s.genesis.members.len()
        );
        assert_eq!(
            s.verify_complete().is_ok(),
            s.missing_signatures().is_empty()
        );
        let members = genesis::members(&s.genesis, std::iter::empty());
        assert_eq!(members.len(), s.genesis.members.len());
    }
});
