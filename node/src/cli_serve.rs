//! `leam serve`: the web API, tlog-tiles and dashboards over copies of logs (node directories,
//! their replicas, exported logs), read-only, for an auditor or funder without a node; the
//! jobs' progress files in a node directory's `jobs/` folder are shown on `/jobs`. The
//! demo serves its federation's directories the same way once its nodes have stopped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use leam_ledger::genesis::{Genesis, SignedGenesis};
use tokio_util::sync::CancellationToken;

/// Arguments of `leam serve`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Example:\n  leam serve --genesis fed.genesis --http 127.0.0.1:8080 nodes/a nodes/b\n  leam serve --dir nodes/a --dir nodes/b\n\nThen open http://127.0.0.1:8080/report (funder report), /jobs (the jobs' progress files in DIR/jobs/) or /api/openapi.json."
)]
pub struct ServeArgs {
    /// Log directories to serve (node directories with their replicas and jobs' progress files,
    /// or exported logs).
    #[arg(required_unless_present = "dir")]
    pub dirs: Vec<PathBuf>,
    /// A log directory to serve, as a flag (repeatable; `leam serve --dir A --dir B` is
    /// `leam serve A B`).
    #[arg(long, value_name = "DIR")]
    pub dir: Vec<PathBuf>,
    /// The federation's genesis document: with it, every checkpoint must carry the members'
    /// witness cosignatures and the report counts members only.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// Address to serve HTTP on (default: loopback, a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub http: SocketAddr,
}

/// Read and check a complete genesis document.
pub fn read_genesis(path: &std::path::Path) -> anyhow::Result<Genesis> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading genesis {}", path.display()))?;
    let doc =
        SignedGenesis::parse(&bytes).with_context(|| format!("genesis {}", path.display()))?;
    doc.verify_complete()
        .with_context(|| format!("genesis {}", path.display()))?;
    Ok(doc.genesis)
}

/// Audit `dirs`, then serve them read-only on `addr` until SIGINT/SIGTERM; `ready` gets the
/// bound address.
pub fn serve_dirs(
    dirs: &[PathBuf],
    genesis: Option<Genesis>,
    addr: SocketAddr,
    ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let checker = leam_ledger::audit::Checker(std::sync::Arc::new(
        crate::cli_ledger::evidence_checker(dirs),
    ));
    let view = leam_web::dir::DirView::open(dirs, genesis, Some(checker))
        .context("auditing the logs to serve")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        ready(listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let state = leam_web::AppState::new(Arc::new(view)).with_shutdown(shutdown.clone());
        let app = leam_web::app(state).into_make_service_with_connect_info::<SocketAddr>();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let signal = crate::cli_fed::shutdown_signal().await;
            eprintln!("{signal}: stopping the server");
            stop.cancel();
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("serving HTTP")
    })
}

/// Runs `leam serve`.
pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let genesis = a.genesis.as_deref().map(read_genesis).transpose()?;
    let dirs: Vec<PathBuf> = a.dir.iter().chain(&a.dirs).cloned().collect();
    serve_dirs(&dirs, genesis, a.http, |addr| {
        println!("serving {} log directories read-only at http://{addr}/ (report: http://{addr}/report); Ctrl-C stops", dirs.len());
    })?;
    Ok(ExitCode::SUCCESS)
}
