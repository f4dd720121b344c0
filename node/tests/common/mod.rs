//! Helpers shared by the command-line tests: run the `leam` binary and check its result.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Command, Output};

/// Run `leam` with `args`.
pub fn leam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(args)
        .output()
        .expect("the leam binary runs")
}

/// Run `leam`, require success, return its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = leam(args);
    assert!(
        out.status.success(),
        "leam {args:?} failed ({:?}): {}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}
pub mod fed;
