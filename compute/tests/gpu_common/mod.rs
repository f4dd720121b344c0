//! Shared by the GPU test binaries: one `GpuKernels` per adapter present, with the CI gate.
#![allow(dead_code)]

use std::io::Write;

use leam_compute::numerics::gpu::{list_adapters, AdapterChoice, GpuKernels};

/// Every adapter on this machine that can run compute shaders, opened. With no adapter the
/// caller is told to skip (a loud line on stderr); under `CI=true` that is a failure instead.
pub fn adapters(test: &str) -> Vec<GpuKernels> {
    let listed = list_adapters();
    let mut out = Vec::new();
    for a in &listed {
        match GpuKernels::with_adapter(&AdapterChoice::Index(a.index)) {
            Ok(k) => out.push(k),
            Err(e) => eprintln!("{test}: adapter {a} not usable: {e}"),
        }
    }
    if out.is_empty() {
        let ci = std::env::var("CI").map(|v| v == "true").unwrap_or(false);
        assert!(
            !ci,
            "{test}: no usable wgpu adapter and CI=true (adapters listed: {listed:?})"
        );
        // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no wgpu adapter ({test}); set CI=true to make this a failure"
        );
    }
    out
}
