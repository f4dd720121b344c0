//! Fuzzes the store's entry-segment decoder (`specs/ledger.md` §4) with arbitrary bytes: it
//! may not panic, and what decodes must re-encode to exactly the input bytes.
#![no_main]

use leam_ledger::store::{parse_segment, segments};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = parse_segment(data) {
        let owned: Vec<Vec<u8>> = entries.iter().map(|e| e.to_vec()).collect();
        let again: Vec<u8> = segments(0, &owned).flat_map(|(_, v)| v).collect();
        assert_eq!(again, data, "segment re-encoding differs");
    }
});
