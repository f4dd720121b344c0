//! `leam`: the command line of a leam partner node.
//!
//! The binary is thin: each command group lives in its own module and calls into the library
//! crates (`leam-ledger`, `leam-compute`, `leam-web`).

mod cli;
mod cli_compute;
mod cli_fed;
mod cli_kernels;
mod cli_ledger;
mod cli_market;
mod cli_serve;
mod demo;
mod live;
mod sim;
mod tlog_client;

use clap::{CommandFactory as _, Parser, Subcommand};

/// mimalloc instead of glibc's malloc: training frees and reallocates megabyte tensors every
/// step, which glibc returns to the kernel and faults back in (the preset's run: 18 s of system
/// time and 97.8 s wall with glibc, 10.8 s and 89.3 s with mimalloc; specs/compute.md §6).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// leam: federated compute sharing for the consortium's open foundation models.
///
/// Exit codes: 0 success; 1 the data is wrong (tampered, forged, inconsistent, fraud found);
/// 2 a usage error or unreadable input; 3 an environment problem (no adapter where one is
/// required, port in use, store locked by a running node). See specs/cli.md.
#[derive(Debug, Parser)]
#[command(
    name = "leam",
    version,
    long_version = cli::LONG_VERSION,
    about,
    after_long_help = "Example:\n  leam demo\n  leam audit --genesis fed.genesis nodes/a"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node directory: key (0600), ledger, commented node.toml, member.toml; prints
    /// the PeerId.
    Init(cli_fed::InitArgs),
    /// Create, sign and verify the federation's genesis document.
    #[command(
        after_long_help = "Example:\n  leam genesis create --out fed.genesis --subsidy-percent 30 --threshold 2 a b c"
    )]
    Genesis {
        #[command(subcommand)]
        cmd: cli_fed::GenesisCmd,
    },
    /// Run a federation node until SIGINT or SIGTERM.
    Node(cli_fed::NodeArgs),
    /// List the members connected to a running node.
    Peers(cli_fed::PeersArgs),
    /// Vote, on a running node, to admit a new member.
    Admit(cli_fed::AdmitArgs),
    /// Simulate a federation of many nodes in one process and print gossip, connection and
    /// replication figures.
    Sim(sim::SimArgs),
    /// Generate a node identity key (ed25519), written with mode 0600.
    #[command(after_long_help = "Example:\n  leam keygen --out node.key")]
    Keygen(cli_ledger::KeygenArgs),
    /// Inspect and benchmark a node's signed ledger.
    #[command(after_long_help = "Example:\n  leam ledger export --dir nodes/a")]
    Ledger {
        #[command(subcommand)]
        cmd: cli_ledger::LedgerCmd,
    },
    /// Verify ledgers end to end and print the per-sector contribution report.
    #[command(
        after_long_help = "Example:\n  leam audit --genesis fed.genesis nodes/a\n  leam audit --state audit.json --json nodes/a nodes/b"
    )]
    Audit(cli_ledger::AuditArgs),
    /// Train the bit-exact transformer language model on one node.
    #[command(
        after_long_help = "Example:\n  leam train --preset nanogpt-cpu --out shakespeare.ckpt\n  leam train --preset demo --backend cpu --max-iters 20 --quiet"
    )]
    Train(cli_compute::TrainArgs),
    /// Generate text from a training checkpoint.
    #[command(
        after_long_help = "Example:\n  leam sample --checkpoint shakespeare.ckpt --prompt ROMEO: --tokens 200"
    )]
    Sample(cli_compute::SampleArgs),
    /// Re-measure a checkpoint's train and validation loss.
    #[command(
        after_long_help = "Example:\n  leam eval --checkpoint shakespeare.ckpt --preset nanogpt-cpu --json"
    )]
    Eval(cli_compute::EvalArgs),
    /// Kernel self-test and benchmarks of the compute backends.
    #[command(
        after_long_help = "Example:\n  leam compute selftest\n  leam compute bench --backend wgpu --kernels"
    )]
    Compute {
        #[command(subcommand)]
        cmd: cli_kernels::ComputeCmd,
    },
    /// Record a funding deposit in a running node's log.
    Deposit(cli_market::DepositArgs),
    /// Measure this machine's throughput and publish a capacity offer from a running node.
    Offer(cli_market::OfferArgs),
    /// Publish a job and bid for it from a running node; prints the job id.
    Bid(cli_market::BidArgs),
    /// A running bidder node's jobs: waiting (and why), being leased, or leased.
    Jobs(cli_market::JobsArgs),
    /// Data pools: publish a dataset (by hash, with licence and provenance) from a running node.
    #[command(
        after_long_help = "Example:\n  leam data add --dir nodes/startup data/tinyshakespeare.txt --licence LicenseRef-public-domain --source 'karpathy/char-rnn tinyshakespeare'"
    )]
    Data {
        #[command(subcommand)]
        cmd: cli_market::DataCmd,
    },
    /// Serve copies of logs read-only: the web API, tlog-tiles and the dashboards.
    Serve(cli_serve::ServeArgs),
    /// Run a local federation end to end: four `leam node` processes, a job trained, verified
    /// and settled over the network, an audit, the dashboards.
    #[command(after_long_help = "Example:\n  leam demo --rounds 2 --steps 4 --honest")]
    Demo(demo::DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(
        after_long_help = "Example:\n  leam completions bash > ~/.local/share/bash-completion/completions/leam\n  leam completions zsh > ~/.zfunc/_leam"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page leam(1) to stdout, or write a page per command into a folder.
    #[command(
        after_long_help = "Example:\n  leam man | man -l -\n  leam man --out share/man/man1"
    )]
    Man {
        /// Write leam.1 and leam-<command>.1 for every command into this folder (created)
        /// instead of printing leam.1.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
}

/// `leam man`: the page of `leam`, or every page into `out`.
fn man(out: Option<std::path::PathBuf>) -> anyhow::Result<std::process::ExitCode> {
    use cli::CodeExt as _;
    let cmd = Cli::command();
    match out {
        None => {
            // Rendered in memory first: only writing to stdout can fail, and a reader that
            // stops early (`leam man | head -1`) is no error.
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .code(cli::EXIT_ENV)?;
            cli::write_stdout(&page)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))
                .code(cli::EXIT_ENV)?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| anyhow::anyhow!("writing man pages into {}: {e}", dir.display()))
                .code(cli::EXIT_ENV)?;
            eprintln!("wrote the man pages into {}", dir.display());
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `leam completions SHELL`: generated in memory (clap_complete panics on a write error), then
/// written to stdout, where a reader that stops early is no error.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<std::process::ExitCode> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "leam", &mut script);
    cli::write_stdout(&script)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// mimalloc's option that commits whole arenas eagerly (with transparent huge pages in
/// `madvise` mode, as on Debian, every touched page of an arena then costs 2 MiB). Long-running
/// network commands hold many small stores (one per replica) and little else, so they run
/// without it: an idle `leam node` holding 3 logs uses 21–26 MiB instead of 78 MiB RSS, and
/// `leam sim --nodes 16` 0.48 GiB instead of 1.56 GiB. Training keeps the default it was
/// measured with.
const MIMALLOC_EAGER_COMMIT_ENV: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// mimalloc reads its options when the process starts, before `main`: re-execute the network
/// commands once with the option set (a safe `exec`, no allocator call).
fn lean_allocator_for_network_commands() {
    use std::os::unix::process::CommandExt as _;
    let mut args = std::env::args_os();
    let _ = args.next();
    let network = matches!(
        args.next().and_then(|a| a.into_string().ok()).as_deref(),
        Some("node" | "sim")
    );
    if network && std::env::var_os(MIMALLOC_EAGER_COMMIT_ENV).is_none() {
        if let Ok(exe) = std::env::current_exe() {
            let err = std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env(MIMALLOC_EAGER_COMMIT_ENV, "0")
                .exec();
            eprintln!("warning: could not re-execute with the lean allocator setting: {err}");
        }
    }
}

/// `println!` panics when the reader of stdout went away (`leam peers | head -1`). That is not
/// a failure of the command (what the reader read was complete): exit 0 quietly, as the
/// commands that write through `cli::write_stdout` do. Every other panic keeps the default hook.
fn quiet_exit_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

fn main() -> std::process::ExitCode {
    quiet_exit_on_closed_stdout();
    lean_allocator_for_network_commands();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,libp2p_gossipsub=error")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => return cli_fed::exit(cli_fed::init(args)),
        Command::Genesis { cmd } => return cli_fed::exit(cli_fed::genesis(cmd)),
        Command::Node(args) => return cli_fed::exit(cli_fed::node(args)),
        Command::Peers(args) => return cli_fed::exit(cli_fed::peers(args)),
        Command::Admit(args) => return cli_fed::exit(cli_fed::admit(args)),
        Command::Keygen(args) => cli_ledger::keygen(args),
        Command::Ledger { cmd } => cli_ledger::run(cmd),
        Command::Audit(args) => cli_ledger::audit(args),
        Command::Train(args) => cli_compute::train(args),
        Command::Sample(args) => cli_compute::sample(args),
        Command::Eval(args) => cli_compute::eval(args),
        Command::Compute { cmd } => cli_kernels::run(cmd),
        Command::Demo(args) => demo::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Serve(args) => cli_serve::run(args),
        Command::Deposit(args) => cli_market::deposit(args),
        Command::Offer(args) => cli_market::offer(args),
        Command::Bid(args) => cli_market::bid(args),
        Command::Jobs(args) => cli_market::jobs(args),
        Command::Data { cmd } => match cmd {
            cli_market::DataCmd::Add(args) => cli_market::data_add(args),
        },
        Command::Completions { shell } => completions(shell),
        Command::Man { out } => man(out),
    };
    match result {
        Ok(code) => code,
        // The reader of stdout went away (`leam man | head -1`): what it read was complete.
        Err(err) if cli::is_stdout_closed(&err) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(cli::exit_code(&err))
        }
    }
}
