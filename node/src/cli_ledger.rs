//! `leam keygen`, `leam ledger …`, `leam audit`. (Placeholder until the ledger lands.)
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the key file.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum LedgerCmd {}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Ledger directories to audit.
    pub dirs: Vec<std::path::PathBuf>,
}

pub fn keygen(_args: KeygenArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("keygen is not built yet")
}
pub fn run(cmd: LedgerCmd) -> anyhow::Result<ExitCode> {
    match cmd {}
}
pub fn audit(_args: AuditArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("audit is not built yet")
}
