//! `leam demo`: a local federation of four partners, end to end, with the parts built so far.
//!
//! What runs for real: four node identities and ledgers (ed25519 keys with mode 0600, sled stores,
//! signed entries, RFC 6962 logs with signed checkpoints), membership admissions, a funding
//! deposit, measured capacity offers, a job description, a bid, the market's clearing rule
//! (`leam_market`) and the co-signed leases it implies, DiLoCo training rounds whose shards run on
//! two providers on the chosen compute backend, verification of every shard by a third partner
//! that replays it, bisection to the first divergent step and a referee replay of that single
//! step when a provider returns a wrong result, co-signed receipts and settlements, verdicts and
//! misbehaviour evidence, witness cosignatures after consistency proofs, and a full audit with the
//! per-sector report.
//!
//! What is not built yet, and said so when the demo runs: the libp2p network (the four nodes
//! live in one process and hand each other bytes in memory), secret replication on a second
//! provider; the dashboard serves the finished logs (read-only copies), not the live nodes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use leam_compute::bisect::{bisect, referee, RefereeVerdict};
use leam_compute::commit::Hash32;
use leam_compute::data::{Corpus, STREAM_EVAL_VAL};
use leam_compute::diloco::{next_start_state, outer_step, OuterOptimizer, OuterState, ParamDelta};
use leam_compute::fixed::B24_MANT_MAX;
use leam_compute::kernels::Kernels;
use leam_compute::replay::{
    replay_shard, run_shard, ModelRunner, RunnerError, ShardRun, ShardVerdict, StepRunner,
};
use leam_compute::shard::ShardSpec;
use leam_compute::train::TrainState;
use leam_ledger::account::Membership;
use leam_ledger::audit::{audit_dirs, AuditOptions};
use leam_ledger::entry::{
    Admission, Assignment, Bid, Body, CoSigned, Deposit, Entry, Evidence, EvidenceKind, LogView,
    Money, Offer, PublicKey, ReceiptTerms, Sector, SettlementTerms, Terms, Verdict,
};
use leam_ledger::genesis::{Founder, Genesis, SignedGenesis};
use leam_ledger::identity::Identity;
use leam_ledger::log::Log;
use leam_market::clearing::{lease_terms, shards_bought, Request};
use leam_market::job::{seed_commitment, Job, ModelSpec};
use leam_market::settle::{owed_cents, split};
use rand_core::OsRng;
use sha2::{Digest as _, Sha256};

use crate::cli::{self, Backend, Preset, TrainSettings, EXIT_INPUT};

/// Largest number of DiLoCo rounds the demo runs.
const ROUNDS_MAX: u32 = 50;
/// Largest number of inner steps per shard the demo runs.
const STEPS_MAX: u32 = 2_000;
/// The demo federation's public subsidy rate, percent.
const DEMO_SUBSIDY_PERCENT: u8 = 30;
/// Votes that admit a new member in the demo federation.
const DEMO_THRESHOLD: u16 = 2;
/// Witness cosignatures every node's checkpoint must carry before the demo audits.
const DEMO_COSIGNATURES: usize = 2;
/// Longest wait for the demo federation to replicate and cosign.
const DEMO_FEDERATE_S_MAX: u64 = 60;
/// The startup's highest price, credits (EUR cents) per 1,000 compute units.
const DEMO_MAX_PRICE: u64 = 60;
/// The startup's private deposit, EUR cents.
const DEMO_PRIVATE_DEPOSIT_CENTS: u64 = 100_000;
/// The public research centre's public funding (the subsidy pool), EUR cents.
const DEMO_PUBLIC_DEPOSIT_CENTS: u64 = 50_000;
/// Inner steps of the providers' benchmark shard that measures their throughput.
const BENCH_STEPS: u32 = 4;
/// Bytes of portable evidence the demo records for a wrong shard result.
const EVIDENCE_BYTES_MAX: usize = 16 * 1024;

/// Arguments of `leam demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the four nodes' ledgers, witness state and auditor state; must not exist
    /// yet. Default: a new directory `leam-demo-<unix ms>` in the system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Compute backend of the shards.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// The shards' model, batch, optimizer, seed and evaluation batches (the definitions of
    /// `leam train --preset`; warm-up and decay are fitted to rounds × steps).
    #[arg(long, value_enum, default_value_t = Preset::Demo)]
    pub preset: Preset,
    /// DiLoCo outer rounds (each: two shards, each replayed by a verifier).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Inner training steps per shard.
    #[arg(long, value_name = "STEPS", default_value_t = 30)]
    pub steps: u32,
    /// Run every shard honestly. Default: in the last round one provider returns a result with
    /// one flipped parameter bit, to show bisection, the referee and misbehaviour evidence.
    #[arg(long)]
    pub honest: bool,
    /// Training corpus (UTF-8 text). Default: tinyshakespeare.txt next to the binary (or in
    /// data/ there), else data/tinyshakespeare.txt in the working folder.
    #[arg(long, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Where the dashboard and API are served after the run, until Ctrl-C.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,
    /// Exit after the audit instead of serving the dashboard.
    #[arg(long)]
    pub exit_when_done: bool,
}

/// One partner node of the demo.
struct Node {
    organisation: &'static str,
    sector: Sector,
    dir: PathBuf,
    log: Log,
    key: PublicKey,
}

impl Node {
    fn membership(&self) -> Membership {
        Membership {
            organisation: self.organisation.to_string(),
            sector: self.sector,
        }
    }
}

/// The demo's nodes by role.
const PUBLIC_CENTRE: usize = 0;
const INDUSTRY: usize = 1;
const UNIVERSITY: usize = 2;
const STARTUP: usize = 3;
/// The two providers that offer compute, and their asks (credit cents per 1,000 units).
const PROVIDERS: [(usize, u64); 2] = [(PUBLIC_CENTRE, 40), (INDUSTRY, 55)];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn short(h: &[u8]) -> String {
    hex::encode(&h[..6])
}

/// Append one body to a node's log, signed now.
fn append(node: &mut Node, body: Body) -> anyhow::Result<u64> {
    let entry = node.log.sign_next(0, now_ms(), body);
    node.log
        .append(entry)
        .with_context(|| format!("appending to the log of {}", node.organisation))
}

/// Record a fact two parties agree on in both parties' logs, each copy co-signed by the other.
fn record_both<T: Terms + Clone>(
    nodes: &mut [Node],
    a: usize,
    b: usize,
    terms: T,
    wrap: fn(CoSigned<T>) -> Body,
) -> anyhow::Result<()> {
    let key_a = nodes[a].log.identity().signing_key().clone();
    let key_b = nodes[b].log.identity().signing_key().clone();
    append(&mut nodes[a], wrap(terms.clone().cosign(&key_b)))?;
    append(&mut nodes[b], wrap(terms.cosign(&key_a)))?;
    Ok(())
}

/// Every node's log, decoded, by key (the clearing rule's and the market audit's input).
fn decoded_logs(nodes: &[Node]) -> anyhow::Result<BTreeMap<PublicKey, Vec<Entry>>> {
    let mut out = BTreeMap::new();
    for n in nodes {
        let raw = n.log.reader().entries(0, n.log.size())?;
        let entries = raw
            .iter()
            .map(|b| Entry::decode(b))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(n.key, entries);
    }
    Ok(out)
}

/// Deal shards round-robin over the assignments' quotas: the provider of each shard in order.
fn deal(assignments: &[Assignment]) -> Vec<PublicKey> {
    let mut left: Vec<u32> = assignments.iter().map(|a| a.shards).collect();
    let mut out = Vec::new();
    while left.iter().any(|l| *l > 0) {
        for (a, l) in assignments.iter().zip(left.iter_mut()) {
            if *l > 0 {
                *l -= 1;
                out.push(a.provider);
            }
        }
    }
    out
}

/// The honest runner, except that after global step `fault_at` it flips the lowest bit of one
/// parameter: the simplest wrong result a lazy or faulty provider could return.
struct Tampered<'a> {
    inner: &'a ModelRunner<'a>,
    fault_at: u64,
}

impl StepRunner for Tampered<'_> {
    type State = TrainState;
    fn decode_state(&self, spec: &ShardSpec, bytes: &[u8]) -> Result<TrainState, RunnerError> {
        self.inner.decode_state(spec, bytes)
    }
    fn state_hash(&self, state: &TrainState) -> Hash32 {
        self.inner.state_hash(state)
    }
    fn step(&self, spec: &ShardSpec, state: &mut TrainState, g: u64) -> Result<(), RunnerError> {
        self.inner.step(spec, state, g)?;
        if g == self.fault_at {
            if let Some(m) = state.params.get_mut(1).and_then(|p| p.mant.first_mut()) {
                *m ^= 1;
            }
        }
        Ok(())
    }
    fn delta_commitment(&self, a: &TrainState, b: &TrainState) -> Result<Hash32, RunnerError> {
        self.inner.delta_commitment(a, b)
    }
    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }
}

fn corpus_bytes(path: Option<&Path>) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let p = cli::find_corpus(path)?;
    let bytes = std::fs::read(&p)
        .with_context(|| format!("reading {}", p.display()))
        .map_err(|e| cli::fail(EXIT_INPUT, e))?;
    Ok((p, bytes))
}

/// Largest character boundary of `text` at or below `at`.
fn char_floor(text: &[u8], mut at: usize) -> usize {
    // `from_utf8` was checked by the corpus loader; a UTF-8 continuation byte is 0b10xxxxxx.
    while at > 0 && at < text.len() && (text[at] & 0xC0) == 0x80 {
        at -= 1;
    }
    at.min(text.len())
}

fn create_nodes(root: &Path) -> anyhow::Result<Vec<Node>> {
    let partners: [(&str, &str, Sector); 4] = [
        ("rechenzentrum-nord", "Rechenzentrum Nord", Sector::Public),
        ("industrie-compute", "Industrie Compute AG", Sector::Private),
        ("universitaet-sued", "Universitaet Sued", Sector::Science),
        (
            "sprachwerk-startup",
            "Sprachwerk Startup GmbH",
            Sector::Startup,
        ),
    ];
    let mut nodes = Vec::new();
    for (slug, organisation, sector) in partners {
        let dir = root.join(slug);
        let identity = Identity::generate(&mut OsRng);
        let key = identity.public_key();
        let membership = Membership {
            organisation: organisation.to_string(),
            sector,
        };
        let log = Log::create(&dir, identity, &membership, now_ms())
            .with_context(|| format!("creating the log of {organisation}"))?;
        println!(
            "  {organisation:<24} {:<8} {}  log {}",
            sector.name(),
            dir.display(),
            log.reader().verifier_key()
        );
        nodes.push(Node {
            organisation,
            sector,
            dir,
            log,
            key,
        });
    }
    // Every node admits the other members into its own log: entries may name only admitted keys.
    let members: Vec<(PublicKey, Membership)> =
        nodes.iter().map(|n| (n.key, n.membership())).collect();
    for node in nodes.iter_mut() {
        let ts = now_ms();
        let batch: Vec<_> = members
            .iter()
            .filter(|(k, _)| *k != node.key)
            .enumerate()
            .map(|(i, (k, m))| {
                node.log.sign_next(
                    i as u64,
                    ts,
                    Body::Admission(Admission {
                        organisation: m.organisation.clone(),
                        sector: m.sector,
                        member: *k,
                    }),
                )
            })
            .collect();
        node.log.append_batch(batch)?;
    }
    Ok(nodes)
}

/// A shard as one provider ran it, with what the verifier found.
struct Checked {
    provider: usize,
    spec: ShardSpec,
    claimed: ShardRun<TrainState>,
    device_ms: u64,
    accepted: bool,
    evidence: Option<Vec<u8>>,
}

/// The verifier replays a claimed shard; on a mismatch it bisects to the first divergent step
/// and acts as referee for that single step.
fn verify_shard(
    runner: &ModelRunner<'_>,
    spec: &ShardSpec,
    start: &TrainState,
    claimed: &ShardRun<TrainState>,
) -> anyhow::Result<(bool, Option<Vec<u8>>)> {
    let (verdict, mut replay_log) = replay_shard(runner, spec, start, &claimed.result)?;
    match verdict {
        ShardVerdict::Match => Ok((true, None)),
        ShardVerdict::Mismatch { fields, replayed } => {
            let mut claimed_log = claimed.log.clone();
            let d = bisect(
                spec,
                &claimed.result,
                &mut claimed_log,
                &replayed,
                &mut replay_log,
            )?;
            // The agreed state before the divergent step: the verifier recomputes it.
            let mut before = start.clone();
            for inner in 0..d.step {
                runner
                    .step(spec, &mut before, spec.global_step(inner as u32))
                    .map_err(anyhow::Error::msg)?;
            }
            let verdict = referee(runner, spec, &d, &before.encode())?;
            println!(
                "      replay differs in {}; bisection: first divergent inner step {} after {}+{} \
                 proven step-hash fetches; referee replayed that one step: {}",
                fields.join(", "),
                d.step,
                d.fetches_a,
                d.fetches_b,
                match verdict {
                    RefereeVerdict::AIsRight => "the provider is right",
                    RefereeVerdict::BIsRight => "the provider is wrong",
                    RefereeVerdict::NeitherIsRight { .. } => "both sides are wrong",
                }
            );
            let provider_right = verdict == RefereeVerdict::AIsRight;
            let evidence = serde_json::json!({
                "type": "leam/wrong-shard-result/v1",
                "shard_spec": hex::encode(spec.encode()),
                "claimed_result": hex::encode(claimed.result.encode()),
                "divergent_step": d.step,
                "agreed_before": hex::encode(d.agreed_before),
                "claimed_after": hex::encode(d.claim_a.state_hash),
                "replayed_after": hex::encode(d.claim_b.state_hash),
            })
            .to_string()
            .into_bytes();
            if evidence.len() > EVIDENCE_BYTES_MAX {
                bail!(
                    "evidence of {} bytes exceeds the demo's limit",
                    evidence.len()
                );
            }
            Ok((provider_right, (!provider_right).then_some(evidence)))
        }
    }
}

/// Runs `leam demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.rounds == 0 || args.rounds > ROUNDS_MAX {
        return Err(cli::fail(
            EXIT_INPUT,
            anyhow::anyhow!(
                "--rounds must be in 1..={ROUNDS_MAX}, found {}",
                args.rounds
            ),
        ));
    }
    if args.steps < 2 || args.steps > STEPS_MAX {
        return Err(cli::fail(
            EXIT_INPUT,
            anyhow::anyhow!("--steps must be in 2..={STEPS_MAX}, found {}", args.steps),
        ));
    }
    let root = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("leam-demo-{}", now_ms())),
    };
    // The corpus first: a missing one is refused before anything is created.
    let (corpus_path, bytes) = corpus_bytes(args.corpus.as_deref())?;
    if root.exists() {
        return Err(cli::fail(
            EXIT_INPUT,
            anyhow::anyhow!(
                "{} exists; the demo creates a fresh federation (pass a new --dir)",
                root.display()
            ),
        ));
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let started = Instant::now();

    println!("leam demo: a local federation of four partners");
    println!("  not built yet (later issues), so not shown: leases and shards over the network (steps 3-5 hand");
    println!("  bytes over in memory; step 6 runs the federation on libp2p), secret replication on a second");
    println!("  provider (the referee replays every shard); the dashboard serves the logs after the run.\n");

    println!(
        "1. identities and ledgers (ed25519 keys, mode 0600; sled stores; signed checkpoints)"
    );
    let mut nodes = create_nodes(&root)?;
    println!("   every node admitted the others in its own log");

    println!("\n2. compute backend and model");
    let kernels: Box<dyn Kernels> = args.backend.open()?;
    let fingerprint = kernels.name();
    println!("   backend {fingerprint}");
    let runner = ModelRunner::new(kernels.as_ref(), &bytes)?;
    let corpus = Corpus::from_bytes(&bytes, &corpus_path.display().to_string())?;
    let settings = TrainSettings::of(Some(args.preset));
    let eval_batches = settings.eval_iters;
    let cfg = settings.model(runner.vocab_size());
    let total_steps = u64::from(args.rounds) * u64::from(args.steps);
    let hyper = TrainSettings {
        warmup_iters: settings.warmup_iters.min(total_steps / 4),
        lr_decay_iters: Some(total_steps),
        ..settings
    }
    .hyper()
    .to_fixed()?;
    let start = TrainState::new(cfg, hyper, settings.batch_size, settings.seed)?;
    let val0 = start.evaluate(
        kernels.as_ref(),
        &corpus.val,
        "validation",
        STREAM_EVAL_VAL,
        eval_batches,
    )?;
    println!(
        "   corpus {} ({} bytes), model {} layers x {} wide, context {}, batch {}; val loss at start {val0:.4}",
        corpus_path.display(),
        bytes.len(),
        cfg.n_layer,
        cfg.n_embd,
        cfg.block_size,
        start.batch_size
    );

    // The job: what the startup buys, as a canonical job description (specs/market.md §2).
    let probe_spec = runner.spec_for(&start, 0, 1024.min(bytes.len() as u64), args.steps)?;
    let shard_units = leam_compute::shard::compute_units(&probe_spec);
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut seed);
    let deadline_ms = now_ms() + 3_600_000;
    let job = Job {
        name: "leam demo: char-level Shakespeare".into(),
        model: ModelSpec {
            n_layer: cfg.n_layer as u32,
            n_head: cfg.n_head as u32,
            n_embd: cfg.n_embd as u32,
            block_size: cfg.block_size as u32,
            batch: start.batch_size as u32,
            init_seed: 1337,
        },
        corpus_sha256: runner.corpus_sha256(),
        corpus_bytes: bytes.len() as u64,
        rounds: args.rounds,
        shards_per_round: PROVIDERS.len() as u32,
        inner_steps: args.steps,
        // The demo's referee replays every shard itself (below); secret replication on a
        // second provider runs with the network market (specs/market.md §7).
        replication_ppm: 0,
        seed_commitment: seed_commitment(&seed),
        referees: vec![nodes[UNIVERSITY].key],
        deadline_ms,
        max_price_cents_per_kilo_unit: DEMO_MAX_PRICE,
    };
    let job_id = job.id();

    println!(
        "\n3. market: measured offers, a bid, the clearing rule (uniform price at the first rejected ask)"
    );
    let startup_key = nodes[STARTUP].key;
    let public_key = nodes[PUBLIC_CENTRE].key;
    append(
        &mut nodes[STARTUP],
        Body::Deposit(Deposit {
            member: startup_key,
            eur_cents: DEMO_PRIVATE_DEPOSIT_CENTS,
            money: Money::Private,
            reference: "demo seed round".into(),
        }),
    )?;
    append(
        &mut nodes[PUBLIC_CENTRE],
        Body::Deposit(Deposit {
            member: public_key,
            eur_cents: DEMO_PUBLIC_DEPOSIT_CENTS,
            money: Money::Public,
            reference: "demo public funding pool".into(),
        }),
    )?;
    println!(
        "   deposits: {} {:.2} EUR private money, {} {:.2} EUR public funding (the subsidy pool)",
        nodes[STARTUP].organisation,
        DEMO_PRIVATE_DEPOSIT_CENTS as f64 / 100.0,
        nodes[PUBLIC_CENTRE].organisation,
        DEMO_PUBLIC_DEPOSIT_CENTS as f64 / 100.0
    );
    // Each provider measures its throughput with a benchmark shard on its backend.
    let bench_spec = runner.spec_for(&start, 0, 1024.min(bytes.len() as u64), BENCH_STEPS)?;
    let bench_units = leam_compute::shard::compute_units(&bench_spec);
    let t = Instant::now();
    run_shard(&runner, &bench_spec, &start)?;
    let bench_ms = (t.elapsed().as_millis() as u64).max(1);
    let units_per_hour = bench_units.saturating_mul(3_600_000) / bench_ms;
    let shard_ms = shard_units
        .saturating_mul(3_600_000)
        .div_ceil(units_per_hour.max(1));
    println!(
        "   benchmark shard ({BENCH_STEPS} steps on {fingerprint}): {bench_units} units in {bench_ms} ms = {units_per_hour} units/hour; one job shard is {shard_units} units (~{shard_ms} ms)"
    );
    let offered_ms = now_ms();
    for (i, (p, price)) in PROVIDERS.iter().enumerate() {
        // The public centre is available for about half the job's shards, the industry
        // partner for the whole hour: capacity, not only price, decides the assignment.
        let window_ms = if i == 0 {
            (2 * u64::from(args.rounds) + 1) * shard_ms / 2
        } else {
            3_600_000
        };
        append(
            &mut nodes[*p],
            Body::Offer(Offer {
                offer_id: 1,
                device_fingerprint: sha256(fingerprint.as_bytes()),
                compute_units_per_hour: units_per_hour,
                price_cents_per_kilo_unit: *price,
                valid_until_ms: offered_ms + window_ms,
            }),
        )?;
        println!(
            "   offer: {:<24} {price} cents/1000 units, {units_per_hour} units/hour, available {:.1} s",
            nodes[*p].organisation,
            window_ms as f64 / 1e3
        );
    }
    append(
        &mut nodes[STARTUP],
        Body::Job(leam_ledger::entry::Job {
            description: job.encode(),
        }),
    )?;
    let bought = shards_bought(&job);
    let bid_seq = append(
        &mut nodes[STARTUP],
        Body::Bid(Bid {
            job_id,
            compute_units: bought * shard_units,
            max_price_cents_per_kilo_unit: job.max_price_cents_per_kilo_unit,
            deadline_ms,
        }),
    )?;
    println!(
        "   bid: {} wants {bought} shards of job {} at most {} cents/1000 units",
        nodes[STARTUP].organisation,
        short(&job_id),
        job.max_price_cents_per_kilo_unit
    );
    // The startup clears on the logs it holds (here: the other nodes' logs as they are now).
    let clearing_ms = now_ms().max(offered_ms);
    let logs = decoded_logs(&nodes)?;
    let mut views: Vec<LogView> = nodes
        .iter()
        .filter(|n| n.key != startup_key)
        .map(|n| LogView {
            log: n.key,
            size: n.log.size(),
        })
        .collect();
    views.sort_unstable_by_key(|v| v.log);
    let request = Request {
        job: &job,
        job_id,
        bidder: startup_key,
        bid_seq,
        clearing_ms,
        shard_units,
        views,
    };
    let (clearing, outcome) = leam_market::clearing::run(&request, &logs)?;
    if outcome.unserved_shards > 0 {
        bail!(
            "the clearing left {} of {bought} shards unserved (offers below the maximum price could not take them before the deadline)",
            outcome.unserved_shards
        );
    }
    append(&mut nodes[STARTUP], Body::Clearing(clearing.clone()))?;
    let keys: Vec<PublicKey> = nodes.iter().map(|n| n.key).collect();
    let by_key = |k: &PublicKey| keys.iter().position(|n| n == k);
    for a in &clearing.assignments {
        let p = by_key(&a.provider).context("an assigned provider is a demo node")?;
        let terms = lease_terms(&clearing, &job, startup_key, a);
        println!(
            "   lease: {} computes {} shards ({} units) for {} at the clearing price {} cents/1000 units = {:.2} EUR (co-signed, in both logs)",
            nodes[p].organisation,
            a.shards,
            terms.compute_units,
            nodes[STARTUP].organisation,
            clearing.price_cents_per_kilo_unit,
            terms.price_cents as f64 / 100.0
        );
        record_both(&mut nodes, STARTUP, p, terms, Body::Lease)?;
    }
    // Shards are dealt round-robin over the assignments, so each round's two shards go to
    // different providers while both have shards left.
    let schedule: Vec<usize> = deal(&clearing.assignments)
        .iter()
        .map(|k| by_key(k).expect("assigned providers are demo nodes"))
        .collect();

    println!(
        "\n4. training: DiLoCo, {} rounds; each round two providers train {} inner steps on disjoint halves \
         of the training split; {} replays every shard",
        args.rounds, args.steps, nodes[UNIVERSITY].organisation
    );
    let train_end = char_floor(&bytes, bytes.len() * 9 / 10);
    let half = char_floor(&bytes, train_end / 2);
    let ranges = [(0u64, half as u64), (half as u64, train_end as u64)];
    let mut global = OuterState::new(start.params.clone(), OuterOptimizer::DILOCO);
    let mut workers = [start.clone(), start.clone()];
    let mut accepted_units = [0u64; 4];
    let mut shard_no = 0u32;
    let mut cheated = false;
    for round in 0..args.rounds {
        let mut checked = Vec::new();
        for w in 0..PROVIDERS.len() {
            let p = &schedule[shard_no as usize];
            let spec = runner.spec_for(&workers[w], ranges[w].0, ranges[w].1, args.steps)?;
            // One falsified shard: the industry partner's first shard of the last round.
            let cheating = !args.honest && round + 1 == args.rounds && *p == INDUSTRY && !cheated;
            cheated |= cheating;
            let t = Instant::now();
            let claimed = if cheating {
                let tampered = Tampered {
                    inner: &runner,
                    fault_at: spec.global_step(args.steps / 2),
                };
                run_shard(&tampered, &spec, &workers[w])?
            } else {
                run_shard(&runner, &spec, &workers[w])?
            };
            let device_ms = t.elapsed().as_millis() as u64;
            println!(
                "   round {round} shard {shard_no}: {} ran {} steps in {:.2} s, {} units, step root {}{}",
                nodes[*p].organisation,
                args.steps,
                device_ms as f64 / 1e3,
                claimed.result.compute_units,
                short(&claimed.result.step_root),
                if cheating { " (with one flipped parameter bit)" } else { "" }
            );
            let (accepted, evidence) = verify_shard(&runner, &spec, &workers[w], &claimed)?;
            println!(
                "      {} replayed it: {}",
                nodes[UNIVERSITY].organisation,
                if accepted {
                    "commitments match, accepted"
                } else {
                    "rejected"
                }
            );
            checked.push(Checked {
                provider: *p,
                spec,
                claimed,
                device_ms,
                accepted,
                evidence,
            });
            shard_no += 1;
        }
        // Ledger: receipts (co-signed by provider and startup), verdicts, evidence.
        for (i, c) in checked.iter().enumerate() {
            let shard = shard_no - checked.len() as u32 + i as u32;
            let receipt = ReceiptTerms {
                job_id,
                shard,
                bidder: startup_key,
                provider: nodes[c.provider].key,
                input_commitment: c.spec.id(),
                output_commitment: c.claimed.result.step_root,
                compute_units: c.claimed.result.compute_units,
                gpu_ms: c.device_ms,
                device_fingerprint: sha256(c.claimed.result.fingerprint.as_bytes()),
            };
            record_both(&mut nodes, c.provider, STARTUP, receipt, Body::Receipt)?;
            let provider = nodes[c.provider].key;
            append(
                &mut nodes[UNIVERSITY],
                Body::Verdict(Verdict {
                    job_id,
                    shard,
                    provider,
                    output_commitment: c.claimed.result.step_root,
                    accepted: c.accepted,
                }),
            )?;
            if let Some(bytes) = &c.evidence {
                append(
                    &mut nodes[UNIVERSITY],
                    Body::Evidence(Evidence {
                        accused: provider,
                        kind: EvidenceKind::WrongShardResult,
                        bytes: bytes.clone(),
                    }),
                )?;
                println!(
                    "      {} recorded a rejecting verdict and evidence against {}",
                    nodes[UNIVERSITY].organisation, nodes[c.provider].organisation
                );
            }
        }
        // Outer step over the accepted shards only.
        let mut deltas: Vec<(Hash32, ParamDelta)> = Vec::new();
        for (w, c) in checked.iter().enumerate() {
            if c.accepted {
                deltas.push((
                    c.spec.id(),
                    ParamDelta::between(&workers[w].params, &c.claimed.final_state.params)?,
                ));
                accepted_units[c.provider] += c.claimed.result.compute_units;
            }
        }
        if deltas.is_empty() {
            println!("   round {round}: no accepted shard, global state unchanged");
            continue;
        }
        global = outer_step(&global, &deltas, OuterOptimizer::DILOCO, B24_MANT_MAX)?;
        for (w, c) in checked.iter().enumerate() {
            let base = if c.accepted {
                &c.claimed.final_state
            } else {
                &workers[w]
            };
            workers[w] = next_start_state(base, &global)?;
        }
        let val = workers[0].evaluate(
            kernels.as_ref(),
            &corpus.val,
            "validation",
            STREAM_EVAL_VAL,
            eval_batches,
        )?;
        println!(
            "   round {round}: outer step (Nesterov) merged {} shard delta(s); val loss {val:.4}",
            deltas.len()
        );
    }

    println!(
        "\n5. settlement: referee-verified units at the clearing price; {}% of a startup's bill from the public pool",
        DEMO_SUBSIDY_PERCENT
    );
    for a in &clearing.assignments {
        let p = by_key(&a.provider).expect("assigned providers are demo nodes");
        let lease = lease_terms(&clearing, &job, startup_key, a);
        let owed = owed_cents(
            accepted_units[p],
            clearing.price_cents_per_kilo_unit,
            lease.price_cents,
        );
        if owed == 0 {
            println!(
                "   {}: nothing verified, nothing paid",
                nodes[p].organisation
            );
            continue;
        }
        let share = split(owed, nodes[STARTUP].sector, DEMO_SUBSIDY_PERCENT);
        let pay = |nodes: &mut [Node], payer: usize, cents: u64| -> anyhow::Result<()> {
            if cents == 0 || payer == p {
                return Ok(());
            }
            let terms = SettlementTerms {
                job_id,
                payer: nodes[payer].key,
                payee: nodes[p].key,
                credits_cents: cents,
            };
            record_both(nodes, payer, p, terms, Body::Settlement)
        };
        pay(&mut nodes, STARTUP, share.bidder_cents)?;
        pay(&mut nodes, PUBLIC_CENTRE, share.public_cents)?;
        println!(
            "   {} is owed {:.2} EUR for {} verified units: {} pays {:.2} EUR, the public pool {:.2} EUR{}",
            nodes[p].organisation,
            owed as f64 / 100.0,
            accepted_units[p],
            nodes[STARTUP].organisation,
            share.bidder_cents as f64 / 100.0,
            share.public_cents as f64 / 100.0,
            if p == PUBLIC_CENTRE {
                " (the pool is the provider: its share stays with it)"
            } else {
                ""
            }
        );
    }

    println!(
        "\n6. the federation on libp2p: a signed genesis; the nodes connect on loopback, replicate\n   \
         each other's logs (verified against signed checkpoints) and cosign them as witnesses"
    );
    let founders = nodes
        .iter()
        .map(|n| Founder {
            organisation: n.organisation.to_string(),
            sector: n.sector,
            key: n.key,
        })
        .collect();
    let genesis = Genesis::new(DEMO_SUBSIDY_PERCENT, DEMO_THRESHOLD, founders)?;
    let mut doc = SignedGenesis::unsigned(genesis.clone());
    for n in &nodes {
        doc.sign(n.log.identity().signing_key())?;
    }
    let genesis_path = root.join("federation.genesis");
    std::fs::write(&genesis_path, doc.encode())
        .with_context(|| format!("writing {}", genesis_path.display()))?;
    let node_dirs: Vec<(PathBuf, [u8; 32])> = nodes
        .iter()
        .map(|n| (n.dir.clone(), n.log.identity().signing_key().to_bytes()))
        .collect();
    let witnesses: Vec<String> = nodes
        .iter()
        .filter_map(|n| leam_net::core::witness_verifier(&n.key).map(|v| v.to_string()))
        .collect();
    let dirs: Vec<PathBuf> = nodes.iter().map(|n| n.dir.clone()).collect();
    drop(nodes); // the network nodes open the logs themselves
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fed = rt.block_on(crate::sim::federate(
        &node_dirs,
        &genesis,
        DEMO_COSIGNATURES,
        std::time::Duration::from_secs(DEMO_FEDERATE_S_MAX),
    ))?;
    let replicas: usize = fed.statuses.iter().map(|s| s.logs.len() - 1).sum();
    let cosigs: usize = fed.statuses.iter().map(|s| s.logs[0].cosignatures).sum();
    println!(
        "   federation {}: {replicas} verified replicas, {cosigs} witness cosignatures over the network, in {:.1} s",
        &hex::encode(genesis.id())[..16],
        fed.converged.as_secs_f64()
    );

    println!("\n7. audit: every signature, every tree, cosignatures, the accounting fold");
    let state = root.join("auditor-state.json");
    let report = audit_dirs(
        &dirs,
        &AuditOptions {
            state: Some(state.clone()),
            witnesses: witnesses.clone(),
            genesis: Some(genesis.clone()),
        },
    )?;
    crate::cli_ledger::print_report(&report);
    let market = leam_market::audit::audit(&crate::cli_ledger::decoded_dirs(&dirs)?);
    crate::cli_ledger::print_market(&market);

    println!(
        "\nDone in {:.1} s. Re-check it yourself:",
        started.elapsed().as_secs_f64()
    );
    let dir_list = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "  leam audit --state {} --genesis {} {}",
        state.display(),
        genesis_path.display(),
        dirs[PUBLIC_CENTRE].display()
    );
    println!("  leam audit --no-state {dir_list}");
    println!("  leam ledger export --dir {}", dirs[STARTUP].display());
    if !args.exit_when_done {
        crate::cli_serve::serve_dirs(&dirs, Some(genesis), args.http, |addr| {
            println!(
                "\n8. dashboard (read-only copies of the four logs): http://{addr}/ ; funder report http://{addr}/report ; API http://{addr}/api/openapi.json ; Ctrl-C stops"
            );
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
