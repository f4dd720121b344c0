//! `leam keygen`, `leam ledger …`, `leam audit`: the ledger's command line.
//!
//! A node directory holds `node.key` (identity, mode 0600), `ledger.sled/` (the store) and
//! `checkpoint` (latest checkpoint note); see `specs/ledger.md`. Output formats (export JSON
//! lines, proofs, audit report) are specified there too: funders' scripts depend on them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use ed25519_dalek::{Signature, SigningKey, Verifier as _};
use leam_ledger::account::Membership;
use leam_ledger::audit::{audit_dirs, AuditError, AuditOptions, AuditReport};
use leam_ledger::entry::{self, *};
use leam_ledger::identity::{self, Identity};
use leam_ledger::log::{Log, LogReader, BATCH_ENTRIES_MAX};
use leam_ledger::merkle;
use rayon::prelude::*;

use crate::cli::{self, CodeExt as _, SectorArg, EXIT_ENV, EXIT_INPUT};

/// Default entries per append batch in `leam ledger bench`.
pub const BENCH_BATCH_DEFAULT: usize = 4096;
/// Signatures verified one by one to measure the raw single-verification rate.
pub const BENCH_RAW_VERIFICATIONS_MAX: usize = 20_000;
/// Inclusion proofs generated and verified in `leam ledger bench`.
pub const BENCH_PROOFS: u64 = 1_000;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the key file (created with mode 0600; never overwritten).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print `{"key_file", "verifier_key"}` as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum LedgerCmd {
    /// Create a node directory: key (DIR/node.key), store, and entry 0, the node's admission.
    #[command(
        after_long_help = "Example:\n  leam ledger init --dir nodes/a --org 'Rechenzentrum Nord' --sector public"
    )]
    Init(InitArgs),
    /// Print every entry as one JSON line: index, leaf_hash, entry (base64), kind, author, body.
    #[command(after_long_help = "Example:\n  leam ledger export --dir nodes/a > a.jsonl")]
    Export(DirArgs),
    /// Print the latest checkpoint note exactly as signed, with its cosignatures.
    #[command(after_long_help = "Example:\n  leam ledger checkpoint --dir nodes/a")]
    Checkpoint(DirJsonArgs),
    /// Print the log's verifier key (name+hex(keyID)+base64(0x01‖pubkey)).
    #[command(after_long_help = "Example:\n  leam ledger vkey --dir nodes/a")]
    Vkey(DirJsonArgs),
    /// Print an inclusion proof (--index [--size]) or a consistency proof (--from --to).
    #[command(
        after_long_help = "Example:\n  leam ledger prove --dir nodes/a --index 7 --json\n  leam ledger prove --dir nodes/a --from 10 --to 62"
    )]
    Prove(ProveArgs),
    /// Fill a fresh log with synthetic signed entries, audit it, and print throughput; the last
    /// line is the ratio of audited entries/s to raw single-signature verifications/s.
    #[command(
        after_long_help = "Example:\n  leam ledger bench --dir /tmp/leam-bench --entries 100000 --json"
    )]
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Node directory to create.
    #[arg(long)]
    pub dir: PathBuf,
    /// Organisation running this node (`--name` is an old spelling of it).
    #[arg(long = "org", alias = "name", value_name = "NAME")]
    pub org: String,
    /// Sector of the organisation.
    #[arg(long, value_enum)]
    pub sector: SectorArg,
    /// Use this existing key file instead of generating a key (it is copied to DIR/node.key).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Print `{"dir", "organisation", "sector", "verifier_key"}` as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DirArgs {
    /// Node directory.
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DirJsonArgs {
    /// Node directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Print JSON (fields in specs/cli.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ProveArgs {
    /// Node directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Entry to prove included.
    #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
    pub index: Option<u64>,
    /// Tree size for the inclusion proof (default: the latest checkpoint's size).
    #[arg(long, requires = "index")]
    pub size: Option<u64>,
    /// Older tree size of a consistency proof.
    #[arg(long, requires = "to")]
    pub from: Option<u64>,
    /// Newer tree size of a consistency proof.
    #[arg(long, requires = "from")]
    pub to: Option<u64>,
    /// Print JSON (with sizes, leaf hash and roots) instead of one hex hash per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Directory for the fresh log (must not exist or be empty).
    #[arg(long)]
    pub dir: PathBuf,
    /// Number of entries (besides the node's admission).
    #[arg(long)]
    pub entries: u64,
    /// Entries per durable append batch.
    #[arg(long, value_name = "ENTRIES", default_value_t = BENCH_BATCH_DEFAULT)]
    pub batch: usize,
    /// Print the rates as one JSON document (fields in specs/cli.md); the human lines go to
    /// stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Node directories to audit, or URLs of servers (`leam serve`, a node's HTTP address):
    /// a base URL audits every log it lists, `…/tlog/<key>/` one log, fetched over the C2SP
    /// tlog-tiles interface and verified before the audit.
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
    /// Skip the market audit (for ledgers that are not a market, such as `leam ledger bench`
    /// workloads, whose leases and verdicts name no published job). By default every clearing,
    /// lease, receipt, verdict and settlement is checked and any finding fails the audit.
    #[arg(long)]
    pub no_market: bool,
    /// Auditor state file: checkpoints seen in earlier runs (JSON, updated atomically when
    /// everything verifies). Default: $XDG_STATE_HOME/leam/audit-state.json, else
    /// $HOME/.local/state/leam/audit-state.json (the folder is created).
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Do not read or write an auditor state file.
    #[arg(long, conflicts_with = "state")]
    pub no_state: bool,
    /// Verifier key of a trusted witness; its cosignatures must verify where present
    /// (repeatable; default: none).
    #[arg(long = "witness", value_name = "VKEY")]
    pub witnesses: Vec<String>,
    /// Print the report as JSON (fields in specs/ledger.md and specs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// Entries fetched, verified and stored per batch when auditing a URL (1..=65536): the
    /// memory a fetch needs is one batch, whatever the log's size.
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::tlog_client::FETCH_BATCH_ENTRIES_DEFAULT,
        value_parser = clap::value_parser!(u64).range(1..=crate::tlog_client::FETCH_BATCH_ENTRIES_MAX)
    )]
    pub batch_entries: u64,
    /// The federation's genesis document: entries by keys that are neither founders nor
    /// admitted by its vote threshold are reported and not counted. With it, a node directory
    /// is audited together with the replicas it holds (`DIR/replicas/*`), except replicas of
    /// logs whose own directory is also given.
    #[arg(long, value_name = "FILE")]
    pub genesis: Option<PathBuf>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let id = Identity::generate(&mut rand_core::OsRng);
    id.write_new(&args.out)?;
    if args.json {
        cli::print_json(&serde_json::json!({
            "key_file": args.out.display().to_string(),
            "verifier_key": id.verifier_key().to_string(),
        }))?;
    } else {
        println!("wrote {} (mode 0600)", args.out.display());
        println!("verifier key: {}", id.verifier_key());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(cmd: LedgerCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LedgerCmd::Init(a) => init(a),
        LedgerCmd::Export(a) => export(&a.dir),
        LedgerCmd::Checkpoint(a) => {
            let r = LogReader::open(&a.dir)?;
            let head = r.head();
            if a.json {
                cli::print_json(&serde_json::json!({
                    "size": head.size,
                    "root": hex::encode(head.root),
                    "note": String::from_utf8_lossy(&head.note),
                }))?;
            } else {
                print!("{}", String::from_utf8_lossy(&head.note));
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCmd::Vkey(a) => {
            let vkey = LogReader::open(&a.dir)?.verifier_key().to_string();
            if a.json {
                cli::print_json(&serde_json::json!({ "verifier_key": vkey }))?;
            } else {
                println!("{vkey}");
            }
            Ok(ExitCode::SUCCESS)
        }
        LedgerCmd::Prove(a) => prove(a),
        LedgerCmd::Bench(a) => bench(a),
    }
}

fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let id = match &a.key {
        Some(k) => Identity::load(k)?,
        None => Identity::generate(&mut rand_core::OsRng),
    };
    let sector: Sector = a.sector.into();
    let membership = Membership {
        organisation: a.org.clone(),
        sector,
    };
    let log = Log::create(&a.dir, id, &membership, now_ms())?;
    let vkey = log.reader().verifier_key().to_string();
    if a.json {
        cli::print_json(&serde_json::json!({
            "dir": a.dir.display().to_string(),
            "organisation": a.org,
            "sector": sector.name(),
            "verifier_key": vkey,
        }))?;
    } else {
        println!(
            "created {} for {} ({})",
            a.dir.display(),
            a.org,
            sector.name()
        );
        println!("verifier key: {vkey}");
    }
    Ok(ExitCode::SUCCESS)
}

/// One export line.
fn export_line(index: u64, bytes: &[u8]) -> anyhow::Result<serde_json::Value> {
    let e = Entry::decode(bytes).with_context(|| format!("entry {index}"))?;
    Ok(serde_json::json!({
        "index": index,
        "leaf_hash": hex::encode(merkle::leaf_hash(bytes)),
        "entry": base64::engine::general_purpose::STANDARD.encode(bytes),
        "kind": e.kind().name(),
        "author": identity::verifier_key_of(&e.author),
        "seq": e.seq,
        "timestamp_ms": e.timestamp_ms,
        "body": e.body,
    }))
}

fn export(dir: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let r = LogReader::open(dir)?;
    let size = r.head().size;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut start = 0;
    let mut line = Vec::new();
    while start < size {
        let end = (start + leam_ledger::store::READ_CHUNK_ENTRIES).min(size);
        for (i, b) in r.entries(start, end)?.iter().enumerate() {
            // Serialised apart from the writing: an error writing (a reader that stopped
            // early, `| head`) is then an I/O error of stdout, not a JSON one.
            line.clear();
            serde_json::to_writer(&mut line, &export_line(start + i as u64, b)?)?;
            line.push(b'\n');
            out.write_all(&line).map_err(cli::stdout_error)?;
        }
        start = end;
    }
    out.flush().map_err(cli::stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

fn prove(a: ProveArgs) -> anyhow::Result<ExitCode> {
    let r = LogReader::open(&a.dir)?;
    let latest = r.head().size;
    let (json, proof) = if let Some(index) = a.index {
        let size = a.size.unwrap_or(latest);
        let proof = r.prove_inclusion(index, size).code(EXIT_INPUT)?;
        let leaf = merkle::leaf_hash(&r.entries(index, index + 1)?[0]);
        let root = r.root_at(size)?;
        merkle::check_record(&proof, size, &root, index, &leaf)
            .context("the proof just generated does not verify")?;
        (
            serde_json::json!({
                "type": "inclusion", "index": index, "size": size,
                "leaf_hash": hex::encode(leaf), "root": hex::encode(root),
                "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
            }),
            proof,
        )
    } else {
        let (from, to) = (
            a.from.context("--from is required")?,
            a.to.context("--to is required")?,
        );
        let proof = r.prove_consistency(from, to).code(EXIT_INPUT)?;
        let (old, new) = (r.root_at(from)?, r.root_at(to)?);
        merkle::check_tree(&proof, to, &new, from, &old)
            .context("the proof just generated does not verify")?;
        (
            serde_json::json!({
                "type": "consistency", "from": from, "to": to,
                "from_root": hex::encode(old), "to_root": hex::encode(new),
                "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
            }),
            proof,
        )
    };
    if a.json {
        println!("{json}");
    } else {
        for h in proof {
            println!("{}", hex::encode(h));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let genesis = match &args.genesis {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading genesis {}", path.display()))
                .code(EXIT_INPUT)?;
            let doc = leam_ledger::genesis::SignedGenesis::parse(&bytes)
                .with_context(|| format!("genesis {}", path.display()))
                .code(EXIT_INPUT)?;
            Some(
                doc.verify_complete()
                    .with_context(|| format!("genesis {}", path.display()))
                    .code(cli::EXIT_INVALID)?
                    .clone(),
            )
        }
        None => None,
    };
    // Logs behind URLs are fetched into verified replicas in a temporary folder first.
    let fetched = tempfile::tempdir().code(cli::EXIT_ENV)?;
    let mut given = Vec::new();
    let mut servers = Vec::new();
    for d in &args.dirs {
        if crate::tlog_client::is_url(d) {
            let url = d.to_str().expect("URLs are UTF-8");
            servers.push(server_base(url));
            let into = fetched.path().join(given.len().to_string());
            given.extend(crate::tlog_client::fetch(url, &into, args.batch_entries)?);
        } else {
            given.push(d.clone());
        }
    }
    let dirs = if genesis.is_some() {
        leam_web::dir::with_replicas(&given)
    } else {
        given
    };
    let state = match (&args.state, args.no_state) {
        (_, true) => None,
        (Some(s), false) => Some(s.clone()),
        (None, false) => {
            let dir = cli::state_dir()?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))
                .code(EXIT_ENV)?;
            Some(dir.join(cli::AUDIT_STATE_FILE))
        }
    };
    if let Some(s) = &state {
        eprintln!("auditor state: {}", s.display());
    }
    let options = AuditOptions {
        evidence: Some(leam_ledger::audit::Checker(Arc::new(
            evidence_checker_from(&dirs, servers),
        ))),
        state,
        witnesses: args.witnesses.clone(),
        genesis,
    };
    match audit_dirs(&dirs, &options) {
        Ok(report) => {
            // The market audit re-runs the clearing rule over the verified logs.
            let market = if args.no_market {
                None
            } else {
                Some(leam_market::audit::audit(&decoded_dirs(&dirs)?))
            };
            if args.json {
                let mut v = serde_json::to_value(&report)?;
                if let Some(m) = &market {
                    v["market"] = serde_json::to_value(m)?;
                }
                cli::print_json(&v)?;
            } else {
                print_report(&report);
                if let Some(m) = &market {
                    print_market(m);
                }
            }
            if let Some(market) = market.filter(|m| !m.clean()) {
                eprintln!(
                    "audit FAILED: {} market finding(s) (records the clearing rule, a lease or a referee does not back)",
                    market.findings.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            let err = anyhow::Error::new(err);
            let code = cli::exit_code(&err);
            if code != cli::EXIT_INVALID {
                // Not a verdict on the data: the logs could not be read (locked, missing).
                return Err(err);
            }
            let Some(err) = err.downcast_ref::<AuditError>() else {
                return Err(err);
            };
            eprintln!("audit FAILED: {err}");
            if let AuditError::Inconsistent { evidence, .. } = &err {
                eprintln!("equivocation evidence (portable, leam-equivocation/v1):");
                println!("{}", evidence.encode());
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The server a URL argument of `leam audit` names: everything before `/tlog/`, else the URL
/// without a trailing slash.
fn server_base(url: &str) -> String {
    match url.find("/tlog/") {
        Some(i) => url[..i].to_string(),
        None => url.trim_end_matches('/').to_string(),
    }
}

/// The evidence checker of an audit of node directories: it replays shards on the CPU kernels
/// (bit-exact with every backend) with the inputs held in `DIR/blobs/` of `dirs`.
pub(crate) fn evidence_checker(dirs: &[PathBuf]) -> leam_jobs::evidence::Checker {
    evidence_checker_from(dirs, Vec::new())
}

/// [`evidence_checker`], also fetching inputs from `GET /api/blobs/{sha256}` of `servers`.
fn evidence_checker_from(dirs: &[PathBuf], servers: Vec<String>) -> leam_jobs::evidence::Checker {
    let stores: Vec<leam_jobs::blobs::Blobs> = dirs
        .iter()
        .map(|d| leam_jobs::blobs::Blobs::new(d))
        .collect();
    let inputs = move |hash: &Digest32| -> Option<Vec<u8>> {
        if let Some(b) = stores.iter().find_map(|s| s.get(hash).ok().flatten()) {
            return Some(b);
        }
        servers.iter().find_map(|s| {
            let url = format!("{s}/api/blobs/{}", hex::encode(hash));
            let mut resp = crate::cli_fed::agent().get(&url).call().ok()?;
            if resp.status().as_u16() != 200 {
                return None;
            }
            resp.body_mut()
                .with_config()
                .limit(leam_web::view::BLOB_SERVE_BYTES_MAX)
                .read_to_vec()
                .ok()
        })
    };
    leam_jobs::evidence::Checker::new(
        Arc::new(leam_compute::numerics::cpu::CpuKernels::new()),
        Arc::new(inputs),
    )
}

/// The logs of audited directories, decoded, by key (the market audit's input).
pub(crate) fn decoded_dirs(
    dirs: &[PathBuf],
) -> anyhow::Result<
    std::collections::BTreeMap<leam_ledger::entry::PublicKey, Vec<leam_ledger::entry::Entry>>,
> {
    let mut out = std::collections::BTreeMap::new();
    for d in dirs {
        let r = leam_ledger::log::LogReader::open(d)?;
        let raw = r.entries(0, r.head().size)?;
        let entries = raw
            .iter()
            .map(|b| leam_ledger::entry::Entry::decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(r.key(), entries);
    }
    Ok(out)
}

/// One line for the market audit, then its findings.
pub(crate) fn print_market(m: &leam_market::audit::MarketAudit) {
    println!(
        "market: {} clearing(s) re-run and reproduced {}/{}, leases implied by them {}/{}, {} referee verdict(s) counted, {} ignored, {} finding(s)",
        m.clearings,
        m.clearings_reproduced,
        m.clearings,
        m.leases_matching,
        m.leases,
        m.verdicts_counted,
        m.verdicts_ignored,
        m.findings.len()
    );
    if m.reclearings > 0 {
        println!(
            "market: {} re-clearing(s) of shards a provider left unfinished, {} holding",
            m.reclearings, m.reclearings_reproduced
        );
    }
    for f in &m.findings {
        println!(
            "finding: log {} entry {} ({}): {}",
            &f.log[..16],
            f.seq,
            f.kind,
            f.detail
        );
    }
    for f in &m.flags {
        println!(
            "flag: log {} entry {} ({}): {}",
            &f.log[..16],
            f.seq,
            f.kind,
            f.detail
        );
    }
}

pub(crate) fn print_report(report: &AuditReport) {
    for l in &report.logs {
        print!(
            "ok {}: {} entries, {} signatures, root {}",
            l.dir.display(),
            l.size,
            l.signatures_verified,
            l.root
        );
        if !l.cosigned_by.is_empty() {
            print!(", cosigned by {}", l.cosigned_by.join(", "));
        }
        if let Some(s) = l.consistent_with_size {
            print!(", consistent with the size-{s} checkpoint seen earlier");
        }
        println!("\n   {}", l.verifier_key);
    }
    let a = &report.accounting;
    println!(
        "\n{} logs, {} entries, {} co-signed facts, {} verdict(s) ignored (job not published or author not its referee)",
        a.logs, a.entries, a.facts, a.verdicts_ignored
    );
    println!(
        "{:<28} {:>14} {:>12} {:>14} {:>12} {:>12} {:>19} {:>19} {:>9}",
        "sector / organisation",
        "contrib units",
        "contrib dev-s",
        "consumed units",
        "consumed dev-s",
        "unverified",
        "credits pub/priv EUR",
        "funding pub/priv EUR",
        "evidence"
    );
    let line = |name: &str, t: &leam_ledger::account::Totals| {
        println!(
            "{:<28} {:>14} {:>12.1} {:>14} {:>12.1} {:>12} {:>9.2}/{:<9.2} {:>9.2}/{:<9.2} {:>9}",
            name,
            t.compute_contributed_units,
            t.compute_contributed_gpu_ms as f64 / 1e3,
            t.compute_consumed_units,
            t.compute_consumed_gpu_ms as f64 / 1e3,
            t.compute_unverified_units,
            t.credit_public_cents as f64 / 100.0,
            t.credit_private_cents as f64 / 100.0,
            t.funding_public_eur_cents as f64 / 100.0,
            t.funding_private_eur_cents as f64 / 100.0,
            t.evidence_against
        );
    };
    for (sector, t) in &a.sectors {
        line(sector.name(), t);
        for (org, o) in a.organisations.iter().filter(|(_, o)| o.sector == *sector) {
            line(&format!("  {org}"), &o.totals);
        }
    }
    println!(
        "evidence: counted only where it checks (equivocations; wrong results replayed from the shard's inputs): {} not counted",
        a.evidence_not_counted.len()
    );
    for n in &a.evidence_not_counted {
        println!(
            "evidence not counted: log {} entry {} ({} against {}): {}",
            &n.log[..16],
            n.seq,
            n.evidence_kind.name(),
            &n.accused[..16],
            n.reason
        );
    }
}

/// The synthetic body number `i` of the bench: a mix of every kind, valid under the log rules
/// (the counterparty is admitted first; deposits precede settlements).
fn bench_body(i: u64, me: &SigningKey, other: &SigningKey) -> Body {
    let (a, o) = (
        me.verifying_key().to_bytes(),
        other.verifying_key().to_bytes(),
    );
    let mut job = [0u8; 32];
    job[..8].copy_from_slice(&i.to_be_bytes());
    match i % 10 {
        0 => Body::Deposit(Deposit {
            member: a,
            eur_cents: 1_000,
            money: if (i / 10) & 1 == 0 {
                Money::Public
            } else {
                Money::Private
            },
            reference: format!("bench deposit {i}"),
        }),
        1 | 2 => Body::Offer(Offer {
            offer_id: i,
            device_fingerprint: [7; 32],
            compute_units_per_hour: 1_000_000,
            memory_bytes: 1 << 30,
            price_cents_per_kilo_unit: 2,
            valid_until_ms: 2_000_000_000_000,
        }),
        3 => Body::Bid(Bid {
            job_id: job,
            compute_units: 10_000,
            max_price_cents_per_kilo_unit: 3,
            deadline_ms: 2_000_000_000_000,
        }),
        4 => Body::Lease(
            LeaseTerms {
                job_id: job,
                bidder: o,
                provider: a,
                offer_id: i,
                compute_units: 10_000,
                price_cents: 20,
                expires_ms: 2_000_000_000_000,
            }
            .cosign(other),
        ),
        5 | 6 => Body::Receipt(
            ReceiptTerms {
                job_id: job,
                shard: (i % 1000) as u32,
                bidder: a,
                provider: o,
                lease: [4; 32],
                input_commitment: [1; 32],
                output_commitment: job,
                compute_units: 10_000,
                gpu_ms: 1_500,
                device_fingerprint: [3; 32],
            }
            .cosign(other),
        ),
        7 => {
            // Judges the receipt written two entries earlier.
            let mut judged = [0u8; 32];
            judged[..8].copy_from_slice(&(i - 2).to_be_bytes());
            Body::Verdict(Verdict {
                job_id: judged,
                shard: ((i - 2) % 1000) as u32,
                provider: o,
                output_commitment: judged,
                accepted: i % 100 != 7,
            })
        }
        8 => Body::Settlement(
            SettlementTerms {
                job_id: job,
                payer: a,
                payee: o,
                credits_cents: 100,
                // The money this decade's deposit (body 0) brought in.
                money: if (i / 10) & 1 == 0 {
                    Money::Public
                } else {
                    Money::Private
                },
                receipts: vec![],
            }
            .cosign(other),
        ),
        _ => Body::Evidence(Evidence {
            accused: o,
            kind: EvidenceKind::BrokenAgreement,
            bytes: job.to_vec(),
        }),
    }
}

/// CPU seconds (user + system, all threads) this process has used so far, from
/// `/proc/self/stat` (fields 14 and 15, in USER_HZ = 100 ticks per second, fixed by the Linux
/// ABI). `None` where it cannot be read. On a shared machine this shows how much of the wall
/// time the process actually ran.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn cpu_since(before: Option<f64>) -> Option<f64> {
    Some(cpu_seconds()? - before?).filter(|d| *d > 0.0)
}

fn cpu_note(used: Option<f64>) -> String {
    used.map(|d| format!(" [{d:.2} CPU-s]")).unwrap_or_default()
}

fn rate(n: u64, secs: f64) -> f64 {
    n as f64 / secs.max(1e-9)
}

fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let usage = |m: String| Err(cli::fail(EXIT_INPUT, anyhow::anyhow!(m)));
    if a.entries < 1 {
        return usage(format!("--entries must be at least 1, found {}", a.entries));
    }
    if !(1..=BATCH_ENTRIES_MAX).contains(&a.batch) {
        return usage(format!(
            "--batch must be in 1..={BATCH_ENTRIES_MAX}, found {}",
            a.batch
        ));
    }
    if a.dir.exists() && std::fs::read_dir(&a.dir)?.next().is_some() {
        return usage(format!(
            "{} is not empty; bench needs a fresh directory",
            a.dir.display()
        ));
    }
    let json = a.json;
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let threads = rayon::current_num_threads();
    let id = Identity::generate(&mut rand_core::OsRng);
    let me = id.signing_key().clone();
    let other = SigningKey::generate(&mut rand_core::OsRng);
    let t0 = 1_767_225_600_000u64;
    let membership = Membership {
        organisation: "Bench Node".into(),
        sector: Sector::Science,
    };
    let mut log = Log::create(&a.dir, id, &membership, t0)?;
    log.append(log.sign_next(
        0,
        t0,
        Body::Admission(Admission {
            organisation: "Bench Counterparty".into(),
            sector: Sector::Private,
            member: other.verifying_key().to_bytes(),
        }),
    ))?;
    let first = log.size();

    let start = Instant::now();
    let entries: Vec<Entry> = (0..a.entries)
        .into_par_iter()
        .map(|i| Entry::sign(&me, first + i, t0 + i, bench_body(i, &me, &other)))
        .collect();
    say(format!(
        "bench: {} synthetic entries of 8 kinds (deposit, offer, bid, lease, receipt, verdict, settlement, evidence; co-signed where required), signed before timing in {:.1} s; {threads} threads",
        a.entries,
        start.elapsed().as_secs_f64()
    ));

    let cpu = cpu_seconds();
    let start = Instant::now();
    let mut batches = 0u64;
    let mut it = entries.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<Entry> = it.by_ref().take(a.batch).collect();
        log.append_batch(batch)?;
        batches += 1;
    }
    let append_s = start.elapsed().as_secs_f64();
    let append_cpu = cpu_since(cpu);
    say(format!(
        "append: {} entries in {batches} durable batches of up to {} in {append_s:.2} s{}: {:.0} durable appends/s (validated, hashed, checkpoint signed, fsynced)",
        a.entries,
        a.batch,
        cpu_note(append_cpu),
        rate(a.entries, append_s)
    ));

    let size = log.size();
    let root = log.reader().head().root;
    // A fixed linear congruential sequence picks the proved indexes (reproducible; the clock
    // and randomness stay out of the measured loop).
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |bound: u64| {
        rng_state = rng_state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng_state >> 11) % bound
    };
    let start = Instant::now();
    for _ in 0..BENCH_PROOFS {
        let index = next(size);
        let proof = log.prove_inclusion(index, size)?;
        let leaf = merkle::leaf_hash(&log.reader().entries(index, index + 1)?[0]);
        merkle::check_record(&proof, size, &root, index, &leaf)?;
    }
    let inclusion_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..BENCH_PROOFS {
        let from = 1 + next(size); // 1..=size
        let proof = log.prove_consistency(from, size)?;
        let old = log.reader().root_at(from)?;
        merkle::check_tree(&proof, size, &root, from, &old)?;
    }
    let consistency_s = start.elapsed().as_secs_f64();
    say(format!(
        "proofs at size {size} on the sled store: inclusion {:.1} us, consistency {:.1} us (each generated and verified; consistency includes computing the old root)",
        inclusion_s * 1e6 / BENCH_PROOFS as f64,
        consistency_s * 1e6 / BENCH_PROOFS as f64
    ));
    let dir = a.dir.clone();
    drop(log);

    let cpu = cpu_seconds();
    let start = Instant::now();
    let report = audit_dirs(std::slice::from_ref(&dir), &AuditOptions::default())?;
    let audit_s = start.elapsed().as_secs_f64();
    let audit_cpu = cpu_since(cpu);
    let sigs = report.logs[0].signatures_verified;
    let audit_rate = rate(size, audit_s);
    say(format!(
        "audit: {size} entries ({sigs} signatures, batch-verified on {threads} threads; tree recomputed; rules and accounting folded) in {audit_s:.2} s{}: {audit_rate:.0} audited entries/s",
        cpu_note(audit_cpu)
    ));

    // Raw single-signature verification of the same entries, one thread.
    let n_raw = (size as usize).min(BENCH_RAW_VERIFICATIONS_MAX) as u64;
    let reader = LogReader::open(&dir)?;
    let raw_entries = reader.entries(size - n_raw, size)?;
    let key = me.verifying_key();
    let prepared: Vec<(Vec<u8>, Signature)> = raw_entries
        .iter()
        .map(|b| {
            let (m, s) = entry::split_signed(b).expect("stored entries hold a signature");
            (m, Signature::from_bytes(&s))
        })
        .collect();
    let cpu = cpu_seconds();
    let start = Instant::now();
    for (m, s) in &prepared {
        key.verify(m, s)
            .context("a stored signature does not verify")?;
    }
    let raw_s = start.elapsed().as_secs_f64();
    let raw_cpu = cpu_since(cpu);
    let raw_rate = rate(n_raw, raw_s);
    say(format!(
        "raw: {n_raw} single ed25519-dalek signature verifications (1 thread) in {raw_s:.2} s{}: {raw_rate:.0} verifications/s",
        cpu_note(raw_cpu)
    ));
    say(format!(
        "per core: audit {:.0} entries/s/core on {threads} threads vs raw {raw_rate:.0}/s/core",
        audit_rate / threads as f64
    ));
    if let (Some(ac), Some(rc), Some(pc)) = (audit_cpu, raw_cpu, append_cpu) {
        say(format!(
            "per CPU-second (independent of other load on a shared machine): append {:.0} entries, audit {:.0} entries, raw {:.0} verifications; audit/raw {:.2}",
            a.entries as f64 / pc,
            size as f64 / ac,
            n_raw as f64 / rc,
            (size as f64 / ac) / (n_raw as f64 / rc)
        ));
    }
    if json {
        cli::print_json(&serde_json::json!({
            "entries": a.entries,
            "batch": a.batch,
            "threads": threads,
            "append_entries_per_s": rate(a.entries, append_s),
            "inclusion_proof_us": inclusion_s * 1e6 / BENCH_PROOFS as f64,
            "consistency_proof_us": consistency_s * 1e6 / BENCH_PROOFS as f64,
            "audit_entries_per_s": audit_rate,
            "raw_verifications_per_s": raw_rate,
            "ratio": audit_rate / raw_rate,
        }))?;
    } else {
        println!("ratio {:.2}", audit_rate / raw_rate);
    }
    Ok(ExitCode::SUCCESS)
}
