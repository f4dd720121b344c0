//! `leam train`, `leam sample`. (Placeholder until compute lands.)
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {}

#[derive(Debug, clap::Args)]
pub struct SampleArgs {}

pub fn train(_args: TrainArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("train is not built yet")
}
pub fn sample(_args: SampleArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("sample is not built yet")
}
