//! `leam demo`: a local federation end to end, limited to what is built.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    println!("leam demo: nothing is built yet");
    Ok(ExitCode::SUCCESS)
}
