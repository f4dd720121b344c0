//! `leam sim`: many federation nodes in one process, each a real libp2p swarm on loopback TCP
//! with its own sled ledger and replicas, driven by the same `leam-net` code as `leam node`.
//! Prints the numbers the federation is judged by: time until every member is connected,
//! gossip propagation of a signed checkpoint to every node (p50, p99), and replication
//! throughput between two nodes against the local audit rate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use leam_ledger::account::Membership;
use leam_ledger::audit::{audit_dirs, AuditOptions};
use leam_ledger::entry::{Body, Deposit, Money, PublicKey, Sector};
use leam_ledger::genesis::{Founder, Genesis};
use leam_ledger::identity::Identity;
use leam_ledger::log::Log;
use leam_net::core::Core;
use leam_net::shell::{Command as NodeCommand, NetConfig, Node, Observed};
use tokio::sync::{mpsc, oneshot};

/// Most nodes a simulation runs.
pub const SIM_NODES_MAX: usize = 256;
/// Most messages whose propagation is timed.
pub const SIM_MESSAGES_MAX: usize = 1_000;
/// Longest wait for replication to converge.
const CONVERGE_S_MAX: u64 = 300;
/// Longest pause between timed messages.
pub const SIM_INTERVAL_MS_MAX: u64 = 60_000;
/// Most entries of the replication measurement.
pub const SIM_ENTRIES_MAX: u64 = 1_000_000;

/// Arguments of `leam sim`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Example:\n  leam sim --nodes 64 --messages 50 --entries 20000")]
pub struct SimArgs {
    /// Nodes in the simulated federation.
    #[arg(long, default_value_t = 64)]
    pub nodes: usize,
    /// Signed checkpoints whose propagation to every node is timed.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
    /// Pause between two timed messages, milliseconds (the replication and witnessing each
    /// message triggers settle before the next is timed).
    #[arg(long, default_value_t = 1_000)]
    pub interval_ms: u64,
    /// Entries of the log replicated between two nodes for the throughput measurement
    /// (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    pub entries: u64,
    /// Directory for the nodes' ledgers (default: a new temporary directory, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print the results as JSON (`connect_ms`, `propagation_ms_p50`, `propagation_ms_p99`,
    /// `replication_entries_per_s`, `audit_entries_per_s`, `replication_over_audit`).
    #[arg(long)]
    pub json: bool,
    /// Connect the simulated nodes over libp2p's in-process memory transport (the same Noise
    /// and yamux upgrades, no kernel sockets) instead of loopback TCP. The replication
    /// measurement stays on TCP.
    #[arg(long)]
    pub memory: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct SimNode {
    key: PublicKey,
    commands: mpsc::Sender<NodeCommand>,
}

/// A node directory and its key seed.
type NodeDir = (PathBuf, [u8; 32]);

/// Create `n` node directories and the genesis naming them all.
fn create(root: &Path, n: usize, threshold: u16) -> anyhow::Result<(Genesis, Vec<NodeDir>)> {
    let mut founders = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("node-{i:03}"));
        let id = Identity::generate(&mut rand_core::OsRng);
        let seed = id.signing_key().to_bytes();
        let sector = Sector::ALL[i % 4];
        let organisation = format!("Partner {i:03}");
        founders.push(Founder {
            organisation: organisation.clone(),
            sector,
            key: id.public_key(),
        });
        Log::create(
            &dir,
            id,
            &Membership {
                organisation,
                sector,
            },
            now_ms(),
        )?;
        nodes.push((dir, seed));
    }
    Ok((Genesis::new(20, threshold, founders)?, nodes))
}

#[allow(clippy::too_many_arguments)]
async fn spawn(
    dir: &Path,
    seed: &[u8; 32],
    genesis: &Genesis,
    bootstrap: Vec<libp2p::Multiaddr>,
    observed: mpsc::UnboundedSender<(usize, Observed)>,
    index: usize,
    stop: tokio::sync::watch::Receiver<bool>,
    memory: bool,
) -> anyhow::Result<(SimNode, libp2p::Multiaddr, tokio::task::JoinHandle<()>)> {
    let core = Core::open(dir, genesis.clone())?;
    let key = core.key();
    let listen = if memory {
        "/memory/0"
    } else {
        "/ip4/127.0.0.1/tcp/0"
    };
    let config = NetConfig {
        listen: vec![listen.parse()?],
        bootstrap,
        // All nodes share this process: the per-node limit times the node count.
        process_memory_bytes_max: SIM_NODES_MAX * leam_net::shell::PROCESS_MEMORY_BYTES_MAX,
    };
    let mut node = Node::new(core, seed, &config)?;
    let addrs = node.listening(1).await?;
    let addr = addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(node.peer_id()));
    let (otx, mut orx) = mpsc::unbounded_channel();
    node.observe(otx);
    tokio::spawn(async move {
        while let Some(o) = orx.recv().await {
            if observed.send((index, o)).is_err() {
                break;
            }
        }
    });
    let (tx, rx) = mpsc::channel(leam_net::shell::COMMAND_QUEUE_MAX);
    let mut stop = stop;
    let handle = tokio::spawn(async move {
        if let Err(e) = node
            .run(rx, async move {
                let _ = stop.changed().await;
            })
            .await
        {
            eprintln!("node {index}: {e}");
        }
    });
    Ok((SimNode { key, commands: tx }, addr, handle))
}

async fn status(n: &SimNode) -> anyhow::Result<leam_net::shell::Status> {
    let (tx, rx) = oneshot::channel();
    n.commands.send(NodeCommand::Status(tx)).await?;
    Ok(rx.await?)
}

async fn statuses(nodes: &[SimNode]) -> anyhow::Result<Vec<leam_net::shell::Status>> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        out.push(status(n).await?);
    }
    Ok(out)
}

/// Pairs (node, other member's log) where the node does not hold the log at the size its
/// owner reports (each status lists the node's own log first).
fn replicas_behind(statuses: &[leam_net::shell::Status]) -> usize {
    let own: BTreeMap<&str, u64> = statuses
        .iter()
        .map(|s| (s.logs[0].key.as_str(), s.logs[0].size))
        .collect();
    statuses
        .iter()
        .map(|s| {
            own.iter()
                .filter(|(k, size)| !s.logs.iter().any(|l| l.key == **k && l.size == **size))
                .count()
        })
        .sum()
}

async fn peers(n: &SimNode) -> anyhow::Result<usize> {
    let (tx, rx) = oneshot::channel();
    n.commands.send(NodeCommand::Peers(tx)).await?;
    Ok(rx.await?.len())
}

async fn append(n: &SimNode, body: Body) -> anyhow::Result<u64> {
    let (tx, rx) = oneshot::channel();
    n.commands
        .send(NodeCommand::Append {
            body: Box::new(body),
            reply: tx,
        })
        .await?;
    rx.await?.map_err(anyhow::Error::msg)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `leam sim`.
pub fn run(a: SimArgs) -> anyhow::Result<ExitCode> {
    if a.nodes < 2 || a.nodes > SIM_NODES_MAX {
        crate::cli::usage!("--nodes must be in 2..={SIM_NODES_MAX}, found {}", a.nodes);
    }
    if a.interval_ms > SIM_INTERVAL_MS_MAX {
        crate::cli::usage!("--interval-ms must be at most {SIM_INTERVAL_MS_MAX}");
    }
    if a.messages > SIM_MESSAGES_MAX {
        crate::cli::usage!("--messages must be at most {SIM_MESSAGES_MAX}");
    }
    if a.entries > SIM_ENTRIES_MAX {
        crate::cli::usage!("--entries must be at most {SIM_ENTRIES_MAX}");
    }
    let tmp;
    let root = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_owned()
        }
    };
    // One worker thread per core (tokio's default), as for a real node: with all nodes in one
    // process on few cores the simulation is CPU-bound, and more threads only add switching
    // (measured: p50 24.6 ms with 16 threads against 19.6 ms with 2, 64 nodes on 2 cores).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Not converging in time is the machine's (too slow, too loaded): exit 3.
    let result = rt
        .block_on(simulate(&root, &a))
        .map_err(|e| crate::cli::fail(crate::cli::EXIT_ENV, e))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        for (k, v) in &result {
            println!("{k} {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn simulate(root: &Path, a: &SimArgs) -> anyhow::Result<BTreeMap<String, serde_json::Value>> {
    let mut out = BTreeMap::new();
    let (genesis, dirs) = create(&root.join("federation"), a.nodes, 2)?;
    let (otx, mut orx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut nodes = Vec::new();
    let mut addrs: Vec<libp2p::Multiaddr> = Vec::new();
    let mut handles = Vec::new();
    let t0 = Instant::now();
    for (i, (dir, seed)) in dirs.iter().enumerate() {
        // Each node knows up to three earlier nodes; Kademlia finds the rest.
        let boot: Vec<_> = addrs.iter().rev().take(3).cloned().collect();
        let (n, addr, h) = spawn(
            dir,
            seed,
            &genesis,
            boot,
            otx.clone(),
            i,
            stop_rx.clone(),
            a.memory,
        )
        .await?;
        nodes.push(n);
        addrs.push(addr);
        handles.push(h);
    }
    eprintln!("{} nodes started in {:?}", a.nodes, t0.elapsed());
    // Until every node is connected to every other member.
    let connect_limit = Duration::from_secs(120);
    loop {
        let mut all = true;
        for n in &nodes {
            if peers(n).await? < a.nodes - 1 {
                all = false;
                break;
            }
        }
        if all {
            break;
        }
        if t0.elapsed() > connect_limit {
            let counts: Vec<usize> = futures::future::try_join_all(nodes.iter().map(peers)).await?;
            bail!("not all members connected within {connect_limit:?}: peers per node {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "all {} members connected to each other after {connect_ms:.0} ms",
        a.nodes
    );
    out.insert("nodes".into(), a.nodes.into());
    out.insert("connect_ms".into(), connect_ms.round().into());
    // Until replication converged: every node holds every log at its owner's size.
    let t1 = Instant::now();
    loop {
        let statuses = statuses(&nodes).await?;
        let missing = replicas_behind(&statuses);
        if missing == 0 {
            break;
        }
        if t1.elapsed() > Duration::from_secs(CONVERGE_S_MAX) {
            let mut refused: BTreeMap<String, u64> = BTreeMap::new();
            for s in &statuses {
                for (k, v) in &s.stats.replica_refused {
                    *refused.entry(k.clone()).or_insert(0) += v;
                }
            }
            bail!(
                "replication did not converge within {CONVERGE_S_MAX} s: {missing} of {} replicas behind; refusals {refused:?}",
                nodes.len() * (nodes.len() - 1)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converge_ms = t1.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "replication of all {} logs converged {converge_ms:.0} ms later",
        a.nodes
    );
    out.insert(
        "replication_converged_ms".into(),
        converge_ms.round().into(),
    );
    while orx.try_recv().is_ok() {}
    // Gossip propagation: a node appends an entry and publishes the signed checkpoint that
    // announces it; time from that publish until every other node accepted the checkpoint
    // (the anchor's definition: publish to receipt). The append before it (a durable sled
    // flush and a signature) is timed apart.
    let mut latencies = Vec::new();
    let mut from_append = Vec::new();
    let mut append_ms = Vec::new();
    let mut per_node = Vec::new();
    for m in 0..a.messages {
        let who = (m * 7) % nodes.len();
        let body = Body::Deposit(Deposit {
            member: nodes[who].key,
            eur_cents: 100,
            money: Money::Private,
            reference: format!("sim-{m}"),
        });
        let sent = Instant::now();
        let index = append(&nodes[who], body).await?;
        let size = index + 1;
        let mut seen: Vec<Option<Instant>> = vec![None; nodes.len()];
        let mut published: Option<Instant> = None;
        let deadline = sent + Duration::from_secs(10);
        while published.is_none()
            || seen
                .iter()
                .enumerate()
                .any(|(i, s)| i != who && s.is_none())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, orx.recv()).await {
                Ok(Some((i, Observed::Checkpoint { log, size: s, at }))) => {
                    if log == nodes[who].key && s >= size && seen[i].is_none() {
                        seen[i] = Some(at);
                    }
                }
                Ok(Some((i, Observed::Published { log, size: s, at }))) => {
                    if i == who && log == nodes[who].key && s >= size && published.is_none() {
                        published = Some(at);
                    }
                }
                Ok(Some(_)) => {}
                _ => bail!(
                    "message {m}: {} of {} nodes did not receive the checkpoint within 10 s{}",
                    seen.iter()
                        .enumerate()
                        .filter(|(i, s)| *i != who && s.is_none())
                        .count(),
                    nodes.len() - 1,
                    if published.is_none() {
                        " (it was not published)"
                    } else {
                        ""
                    }
                ),
            }
        }
        let published = published.expect("loop ends only once published");
        let last = seen.iter().flatten().max().copied().unwrap_or(published);
        for at in seen.iter().flatten() {
            per_node.push(ms(at.saturating_duration_since(published)));
        }
        latencies.push(ms(last.saturating_duration_since(published)));
        from_append.push(ms(last.saturating_duration_since(sent)));
        append_ms.push(ms(published.saturating_duration_since(sent)));
        tokio::time::sleep(Duration::from_millis(a.interval_ms)).await;
    }
    for v in [
        &mut latencies,
        &mut from_append,
        &mut append_ms,
        &mut per_node,
    ] {
        v.sort_by(|x, y| x.total_cmp(y));
    }
    out.insert("messages".into(), a.messages.into());
    let r = |x: f64| (x * 100.0).round() / 100.0;
    for (name, v) in [
        ("propagation_ms", &latencies),
        ("append_to_all_ms", &from_append),
        ("append_to_publish_ms", &append_ms),
    ] {
        out.insert(format!("{name}_p50"), r(percentile(v, 0.5)).into());
        out.insert(format!("{name}_p99"), r(percentile(v, 0.99)).into());
    }
    out.insert(
        "propagation_ms_max".into(),
        r(percentile(&latencies, 1.0)).into(),
    );
    out.insert(
        "delivery_ms_p50_per_node".into(),
        r(percentile(&per_node, 0.5)).into(),
    );
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    drop(nodes);
    if a.entries > 0 {
        let (rep, audit, ratio) = replication(root, a.entries).await?;
        out.insert("replication_entries".into(), a.entries.into());
        out.insert("replication_entries_per_s".into(), rep.round().into());
        out.insert("audit_entries_per_s".into(), audit.round().into());
        out.insert("replication_over_audit".into(), r(ratio).into());
    }
    Ok(out)
}

/// Two nodes: A holds a log of `entries` entries; B replicates it. Returns B's verified
/// entries/s, the local audit rate of A's directory, and their ratio.
async fn replication(root: &Path, entries: u64) -> anyhow::Result<(f64, f64, f64)> {
    let (genesis, dirs) = create(&root.join("pair"), 2, 1)?;
    {
        let mut log = Log::open(&dirs[0].0)?;
        let key = log.identity().public_key();
        let ts = now_ms();
        let mut left = entries;
        while left > 0 {
            let n = left.min(10_000);
            let batch = (0..n)
                .map(|i| {
                    log.sign_next(
                        i,
                        ts,
                        Body::Deposit(Deposit {
                            member: key,
                            eur_cents: 1,
                            money: Money::Public,
                            reference: format!("grant-{}", log.size() + i),
                        }),
                    )
                })
                .collect();
            log.append_batch(batch)?;
            left -= n;
        }
    }
    let t = Instant::now();
    let report = audit_dirs(std::slice::from_ref(&dirs[0].0), &AuditOptions::default())
        .context("auditing the source log")?;
    let audit_s = t.elapsed().as_secs_f64();
    let size = report.logs[0].size;
    let audit_rate = size as f64 / audit_s;
    let (otx, mut orx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (_a, addr, ha) = spawn(
        &dirs[0].0,
        &dirs[0].1,
        &genesis,
        vec![],
        otx.clone(),
        0,
        stop_rx.clone(),
        false,
    )
    .await?;
    let t = Instant::now();
    let (b, _, hb) = spawn(
        &dirs[1].0,
        &dirs[1].1,
        &genesis,
        vec![addr],
        otx,
        1,
        stop_rx,
        false,
    )
    .await?;
    let mut started: Option<Instant> = None;
    let done = loop {
        match tokio::time::timeout(Duration::from_secs(120), orx.recv()).await {
            Ok(Some((1, Observed::Checkpoint { log, at, .. }))) if log != b.key => {
                started.get_or_insert(at);
            }
            Ok(Some((1, Observed::Replicated { size: s, at, .. }))) if s >= size => break at,
            Ok(Some(_)) => {}
            _ => bail!("replication of {size} entries did not finish within 120 s"),
        }
    };
    let from = started.unwrap_or(t);
    let rep_s = done.saturating_duration_since(from).as_secs_f64();
    let rep_rate = size as f64 / rep_s;
    eprintln!(
        "replicated {size} entries in {rep_s:.3} s ({rep_rate:.0}/s); local audit {audit_s:.3} s ({audit_rate:.0}/s)"
    );
    let _ = stop_tx.send(true);
    let _ = ha.await;
    let _ = hb.await;
    Ok((rep_rate, audit_rate, rep_rate / audit_rate))
}
