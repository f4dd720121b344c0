//! `leam compute selftest`, `leam compute bench`. (Placeholder until the kernels land.)
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum ComputeCmd {}

pub fn run(cmd: ComputeCmd) -> anyhow::Result<ExitCode> {
    match cmd {}
}
