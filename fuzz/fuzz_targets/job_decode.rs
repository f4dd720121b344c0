//! Fuzzes the job description decoder (`specs/market.md` §2) with arbitrary bytes. It must never
//! panic, and whatever decodes must be a checked job whose canonical encoding is exactly the
//! input (one job, one encoding, one id).
#![no_main]

use leam_market::job::Job;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(job) = Job::decode(data) {
        assert!(job.check().is_ok(), "decoded an unchecked job");
        assert_eq!(job.encode(), data, "job re-encoding differs");
    }
});
