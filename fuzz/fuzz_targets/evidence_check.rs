//! Fuzzes the audit's reading of wrong-result evidence (`specs/market.md` §8.4): any bytes in
//! an evidence entry must give an outcome, never a panic, and with no receipt on record
//! nothing may hold against the accused.
#![no_main]

use leam_compute::numerics::cpu::CpuKernels;
use leam_jobs::evidence::{check_wrong_result, Outcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let none = |_: &[u8; 32]| -> Option<Vec<u8>> { None };
    let o = check_wrong_result(&CpuKernels, &none, &[], &[5; 32], data);
    assert!(!matches!(o, Outcome::Holds(_)), "{o:?}");
});
