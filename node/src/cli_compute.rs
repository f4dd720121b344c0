//! `leam train`, `leam sample`, `leam compute …`. (Placeholder until compute lands.)
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {}

#[derive(Debug, clap::Args)]
pub struct SampleArgs {}

#[derive(Debug, clap::Subcommand)]
pub enum ComputeCmd {}

pub fn train(_args: TrainArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("train is not built yet")
}
pub fn sample(_args: SampleArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("sample is not built yet")
}
pub fn run(cmd: ComputeCmd) -> anyhow::Result<ExitCode> {
    match cmd {}
}
