//! Fuzzes the ledger entry decoder with arbitrary bytes. It must never panic; whatever decodes
//! must re-encode to exactly the input bytes (one encoding per entry), respect the format limits,
//! and verifying its signatures must return an answer, not panic.
#![no_main]

use leam_ledger::entry::{Entry, ENTRY_BYTES_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Entry::decode(data) {
        assert!(data.len() <= ENTRY_BYTES_MAX, "decoded an over-long entry");
        assert_eq!(e.check_limits(), Ok(()), "decoded entry violates a limit");
        assert_eq!(e.encode(), data, "entry re-encoding differs");
        let _ = e.verify();
        let _ = e.referenced_keys();
        let _ = e.body.cosigned();
    }
});
