//! The market on a running node: the provider's lease policy and the bidder's market task
//! (both only execute `leam_market::flow`), and the commands `leam deposit`, `leam offer` and
//! `leam bid`, which sign entries with the node key and submit them to the running node's web
//! API (`POST /api/deposits|offers|jobs|bids`, authenticated by the node's control token).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use leam_ledger::entry::{Bid, Body, Deposit, Entry, Money, PublicKey};
use leam_ledger::identity::Identity;
use leam_ledger::log::KEY_FILE_NAME;
use leam_market::flow::{bidder_steps, check_lease, Step};
use leam_market::job::{seed_commitment, Job, JobFile};
use leam_net::core::{Fact, Policy};
use leam_net::shell::Command as NodeCommand;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::cli::{self, CodeExt as _};

/// How often the market task looks for bids to clear and leases to propose.
pub const MARKET_TICK_MS: u64 = 1_000;
/// Longest wait for a provider's answer to one lease proposal.
pub const PROPOSAL_TIMEOUT_MS: u64 = 10_000;
/// Attempts to submit one entry when another append took the sequence number first.
pub const SUBMIT_ATTEMPTS_MAX: u32 = 5;
/// Folder in the node directory that keeps bidders' secret replication seeds (mode 0600).
pub const JOBS_DIR_NAME: &str = "jobs";

/// The node's policy on co-signed facts others propose: a lease only if a clearing in the
/// bidder's log reproduces on this node's copies of the logs and implies exactly its terms
/// (`specs/market.md` §3.4); a receipt only if it states exactly a run this node finished
/// (`leam_jobs::provider::Provider::check_receipt`); a settlement only if it pays this node.
pub fn policy(me: PublicKey, provider: leam_jobs::provider::Provider) -> Policy {
    Box::new(move |fact, core| match fact {
        Fact::Lease(terms) => {
            let logs = core.decoded_logs().map_err(|e| e.to_string())?;
            check_lease(&me, terms, &logs)
        }
        Fact::Receipt(terms) => {
            let own = core.own_entries().map_err(|e| e.to_string())?;
            provider.check_receipt(terms, &own)
        }
        Fact::Settlement(t) if t.payee == me => Ok(()),
        Fact::Settlement(_) => {
            Err("this node pays settlements it proposes itself, never on request".into())
        }
    })
}

/// What the market task needs to run the jobs this node bids for.
#[derive(Clone)]
pub struct JobsContext {
    /// Node directory (blobs, seeds, progress files).
    pub dir: PathBuf,
    /// The node's compute backend (evaluation and the referee's replays).
    pub kernels: std::sync::Arc<dyn leam_compute::numerics::kernels::Kernels>,
    /// Sectors of the members known at start (the founders and admitted members).
    pub sectors: std::collections::BTreeMap<PublicKey, leam_ledger::entry::Sector>,
    /// The genesis subsidy rate, percent.
    pub subsidy_percent: u8,
}

/// If this node is the federation's public pool, propose the subsidy settlements it owes
/// (`leam_market::settle::subsidy_due`); whether any is still open.
async fn pay_subsidies(
    me: &PublicKey,
    logs: &std::collections::BTreeMap<PublicKey, Vec<Entry>>,
    ctx: &JobsContext,
    commands: &mpsc::Sender<NodeCommand>,
) -> bool {
    if leam_market::settle::public_pool(logs, &ctx.sectors) != Some(*me) {
        return false;
    }
    let due = leam_market::settle::subsidy_due(logs, &ctx.sectors, me, ctx.subsidy_percent);
    let mut open = false;
    let link = leam_jobs::link::Link::new(commands.clone());
    for t in due {
        let (payee, cents) = (hex::encode(&t.payee[..8]), t.credits_cents);
        match link.propose(Fact::Settlement(t)).await {
            Ok(i) => tracing::info!(%payee, cents, entry = i, "public subsidy paid"),
            Err(e) => {
                open = true;
                tracing::info!(%payee, error = %e, "public subsidy not co-signed yet")
            }
        }
    }
    open
}

/// Start the job of every clearing in `me`'s log whose leases are all co-signed, once per
/// process. A job an earlier process left running (its progress file says `running` or
/// `settling`) resumes from its resume record; a finished or failed one is not started again.
fn start_jobs(
    me: &PublicKey,
    logs: &std::collections::BTreeMap<PublicKey, Vec<Entry>>,
    ctx: &JobsContext,
    commands: &mpsc::Sender<NodeCommand>,
    started: &mut std::collections::BTreeSet<leam_ledger::entry::Digest32>,
) {
    let own = logs.get(me).map_or(&[][..], Vec::as_slice);
    let jobs = leam_market::flow::published_jobs(own);
    for e in own {
        let Body::Clearing(c) = &e.body else { continue };
        if started.contains(&c.job_id) || c.assignments.is_empty() {
            continue;
        }
        let leased = c.assignments.iter().all(|a| {
            own.iter().any(|x| {
                matches!(&x.body, Body::Lease(l) if l.terms.job_id == c.job_id && l.terms.provider == a.provider)
            })
        });
        let Some((_, job)) = jobs.get(&c.job_id) else {
            continue;
        };
        if !leased {
            continue;
        }
        started.insert(c.job_id);
        let progress = leam_jobs::bidder::progress_path(&ctx.dir, &c.job_id);
        if let Ok(bytes) = std::fs::read(&progress) {
            let state = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["state"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if state != "running" && state != "settling" {
                tracing::warn!(job = %hex::encode(&c.job_id[..8]), state, "job ran in an earlier process; not started again");
                continue;
            }
        }
        let seed_path = ctx
            .dir
            .join(JOBS_DIR_NAME)
            .join(format!("{}.seed", hex::encode(c.job_id)));
        let mut seed = [0u8; 32];
        let ok = std::fs::read_to_string(&seed_path)
            .ok()
            .is_some_and(|t| hex::decode_to_slice(t.trim(), &mut seed).is_ok());
        if !ok {
            tracing::warn!(file = %seed_path.display(), "no secret seed for a cleared job; not run");
            continue;
        }
        let units_per_hour = c
            .assignments
            .iter()
            .filter_map(|a| {
                leam_jobs::bidder::offered_units_per_hour(logs, &a.provider, a.offer_id)
                    .map(|u| (a.provider, u))
            })
            .collect();
        let (job, clearing, ctx, me) = (job.clone(), c.clone(), ctx.clone(), *me);
        let link = leam_jobs::link::Link::new(commands.clone());
        tokio::spawn(async move {
            let kernels = ctx.kernels.clone();
            let id = hex::encode(&clearing.job_id[..8]);
            let mut bidder = match leam_jobs::bidder::Bidder::new(
                link,
                &ctx.dir,
                &kernels,
                me,
                job,
                clearing,
                &seed,
                units_per_hour,
                leam_jobs::bidder::Money {
                    sector: ctx
                        .sectors
                        .get(&me)
                        .copied()
                        .unwrap_or(leam_ledger::entry::Sector::Private),
                    subsidy_percent: ctx.subsidy_percent,
                },
            ) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "job not started");
                    return;
                }
            };
            match bidder.resume_from_disk() {
                Ok(true) => tracing::info!(job = %id, "job resumed after a restart"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "job not resumed");
                    return;
                }
            }
            tracing::info!(job = %id, "job started: shards go to the providers");
            match bidder.run().await {
                Ok(p) => {
                    tracing::info!(job = %id, rounds = p.rounds.len(), paid = ?p.paid_cents, "job done")
                }
                Err(e) => tracing::error!(job = %id, error = %e, "job failed"),
            }
        });
    }
}

async fn ask<T>(
    commands: &mpsc::Sender<NodeCommand>,
    make: impl FnOnce(oneshot::Sender<T>) -> NodeCommand,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    commands.send(make(tx)).await.ok()?;
    rx.await.ok()
}

/// The bidder's market task: every [`MARKET_TICK_MS`], run `leam_market::flow::bidder_steps`
/// on the logs the node holds and execute its steps (append a clearing, propose a lease), until
/// `stop` is cancelled.
pub async fn run(
    me: PublicKey,
    commands: mpsc::Sender<NodeCommand>,
    stop: tokio_util::sync::CancellationToken,
    jobs: JobsContext,
) {
    let mut started = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(MARKET_TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Decoding every held log is the expensive part: skip a tick when no log grew since the
    // last one and that tick left nothing to retry (a proposal waits on the provider's copies,
    // which this node's sizes do not show).
    let mut seen: Vec<(String, u64)> = Vec::new();
    let mut retry = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let Some(status) = ask(&commands, NodeCommand::Status).await else {
            return;
        };
        let sizes: Vec<(String, u64)> = status.logs.into_iter().map(|l| (l.key, l.size)).collect();
        if sizes == seen && !retry {
            continue;
        }
        seen = sizes;
        let Some(Ok(logs)) = ask(&commands, NodeCommand::Logs).await else {
            continue;
        };
        let (steps, _waiting) = bidder_steps(&me, &logs, crate::cli_fed::now_ms());
        retry = !steps.is_empty();
        start_jobs(&me, &logs, &jobs, &commands, &mut started);
        retry |= pay_subsidies(&me, &logs, &jobs, &commands).await;
        for step in steps {
            match step {
                Step::Clear(c) => {
                    let job = hex::encode(&c.job_id[..8]);
                    let n = c.assignments.len();
                    let price = c.price_cents_per_kilo_unit;
                    match ask(&commands, |reply| NodeCommand::Append {
                        body: Box::new(Body::Clearing(c)),
                        reply,
                    })
                    .await
                    {
                        Some(Ok(i)) => {
                            tracing::info!(%job, providers = n, price, entry = i, "cleared a bid")
                        }
                        Some(Err(e)) => {
                            tracing::warn!(%job, error = %e, "clearing refused by the log")
                        }
                        None => return,
                    }
                }
                Step::ProposeLease(t) => {
                    let provider = hex::encode(&t.provider[..8]);
                    let answer = tokio::time::timeout(
                        Duration::from_millis(PROPOSAL_TIMEOUT_MS),
                        ask(&commands, |reply| NodeCommand::Propose {
                            fact: Box::new(Fact::Lease(t)),
                            reply,
                        }),
                    )
                    .await;
                    match answer {
                        Ok(Some(Ok(i))) => tracing::info!(%provider, entry = i, "lease co-signed"),
                        Ok(Some(Err(e))) => {
                            tracing::info!(%provider, reason = %e, "lease not agreed yet")
                        }
                        Ok(None) => return,
                        Err(_) => tracing::info!(%provider, "no answer to the lease proposal yet"),
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients: sign with the node key, submit to the running node.

/// The node key of a node directory.
fn identity(dir: &Path) -> anyhow::Result<Identity> {
    Identity::load(&dir.join(KEY_FILE_NAME))
        .with_context(|| format!("reading the node key in {}", dir.display()))
        .code(cli::EXIT_INPUT)
}

/// The running node's base URL and control token.
fn endpoint(dir: &Path) -> anyhow::Result<(String, String)> {
    let url = crate::cli_fed::control_url(dir, "").map_err(|f| cli::fail(f.code, f.error))?;
    let token = crate::cli_fed::read_token(dir).map_err(|f| cli::fail(f.code, f.error))?;
    Ok((url, token))
}

/// The own log's size as the running node reports it (`GET /api/status`).
fn own_size(base: &str, key: &PublicKey) -> anyhow::Result<u64> {
    let url = format!("{base}/api/status");
    let mut resp = crate::cli_fed::agent()
        .get(&url)
        .call()
        .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("asking the node at {url}: {e}")))?;
    let status: serde_json::Value = resp
        .body_mut()
        .read_json()
        .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("{url}: {e}")))?;
    let hex_key = hex::encode(key);
    status["logs"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["key"] == hex_key.as_str()))
        .and_then(|l| l["size"].as_u64())
        .ok_or_else(|| {
            cli::fail(
                cli::EXIT_ENV,
                anyhow!("{url} does not list this node's own log"),
            )
        })
}

/// Sign `body` as the next entry of the node's log and submit it on `route`; retries when
/// another append took the index first. Returns the entry's index.
fn submit(dir: &Path, route: &str, body: Body) -> anyhow::Result<u64> {
    let id = identity(dir)?;
    let key = id.public_key();
    let (base, token) = endpoint(dir)?;
    let url = format!("{base}{route}");
    let mut last = String::new();
    for _ in 0..SUBMIT_ATTEMPTS_MAX {
        let seq = own_size(&base, &key)?;
        let entry = Entry::sign(
            id.signing_key(),
            seq,
            crate::cli_fed::now_ms(),
            body.clone(),
        );
        let mut resp = crate::cli_fed::agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(serde_json::json!({ "entry_hex": hex::encode(entry.encode()) }))
            .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("posting to {url}: {e}")))?;
        let status = resp.status().as_u16();
        let answer: serde_json::Value = resp.body_mut().read_json().unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(answer["index"].as_u64().unwrap_or(seq));
        }
        last = format!(
            "{status}: {}",
            answer["error"].as_str().unwrap_or("(no error text)")
        );
        if status != 409 {
            break;
        }
    }
    Err(cli::fail(
        cli::EXIT_ENV,
        anyhow!("the node at {url} refused the entry ({last})"),
    ))
}

/// Money kind of a deposit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MoneyArg {
    /// Public funding.
    Public,
    /// Private money.
    Private,
}

/// Arguments of `leam deposit`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Example:\n  leam deposit --dir nodes/startup --eur-cents 100000 --money private --reference 'seed round'"
)]
pub struct DepositArgs {
    /// Node directory of the running node.
    #[arg(long)]
    pub dir: PathBuf,
    /// Amount, EUR cents (`--eur` is the same flag).
    #[arg(long, visible_alias = "eur")]
    pub eur_cents: u64,
    /// Public funding or private money (kept apart in the report).
    #[arg(long, value_enum)]
    pub money: MoneyArg,
    /// Payment reference that auditors match against bank records.
    #[arg(long)]
    pub reference: String,
}

/// Runs `leam deposit`.
pub fn deposit(a: DepositArgs) -> anyhow::Result<ExitCode> {
    let key = identity(&a.dir)?.public_key();
    if !leam_ledger::entry::valid_text(&a.reference) {
        bail!(cli::fail(
            cli::EXIT_INPUT,
            anyhow!("--reference must be non-empty text without control characters")
        ));
    }
    let i = submit(
        &a.dir,
        "/api/deposits",
        Body::Deposit(Deposit {
            member: key,
            eur_cents: a.eur_cents,
            money: match a.money {
                MoneyArg::Public => Money::Public,
                MoneyArg::Private => Money::Private,
            },
            reference: a.reference,
        }),
    )?;
    println!("deposit recorded as entry {i} of this node's log");
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `leam offer`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Example:\n  leam offer --dir nodes/a --price 40 --minutes 120\n  leam offer --dir nodes/a --until 2026-12-24T18:00:00Z\n\nAsks the running node to measure its own backend (kernel self-test, then a benchmark shard) and publishes the offer with that throughput. Without --price the node's last offer's price stands."
)]
pub struct OfferArgs {
    /// Node directory of the running node.
    #[arg(long)]
    pub dir: PathBuf,
    /// Asked price, credits (EUR cents) per 1,000 compute units. Default: the price of this
    /// node's last offer.
    #[arg(long)]
    pub price: Option<u64>,
    /// Minutes from now the offer stands (its availability window).
    #[arg(long, default_value_t = 60, conflicts_with = "until")]
    pub minutes: u64,
    /// End of the availability window as an RFC 3339 time (`2026-12-24T18:00:00Z`,
    /// `2026-12-24T19:00:00+01:00`); instead of `--minutes`. Must lie in the future.
    #[arg(long, value_parser = parse_until)]
    pub until: Option<u64>,
}

/// Longest wait for the node's measurement (a GPU self-test compiles every kernel).
pub const MEASURE_TIMEOUT_MS: u64 = 300_000;

/// Runs `leam offer`: the running node measures its backend (`POST /api/measure`), and the
/// offer carries what it measured.
pub fn offer(a: OfferArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = a.until.filter(|t| *t <= crate::cli_fed::now_ms()) {
        cli::usage!("--until {} is not in the future", rfc3339(t));
    }
    let (base, token) = endpoint(&a.dir)?;
    let price = match a.price {
        Some(p) => p,
        None => match last_offer_price(&base, &identity(&a.dir)?.public_key())? {
            Some(p) => p,
            None => cli::usage!("this node has published no offer yet: pass --price"),
        },
    };
    let url = format!("{base}/api/measure");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(MEASURE_TIMEOUT_MS)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_empty()
        .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("posting to {url}: {e}")))?;
    let status = resp.status().as_u16();
    let answer: serde_json::Value = resp.body_mut().read_json().unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(cli::fail(
            cli::EXIT_ENV,
            anyhow!(
                "the node measured nothing ({status}): {}",
                answer["error"].as_str().unwrap_or("(no error text)")
            ),
        ));
    }
    let m: leam_jobs::offer::Measurement = serde_json::from_value(answer)
        .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("the node's measurement: {e}")))?;
    let now = crate::cli_fed::now_ms();
    let until = a
        .until
        .unwrap_or_else(|| now + a.minutes.saturating_mul(60_000));
    let i = submit(
        &a.dir,
        "/api/offers",
        Body::Offer(leam_jobs::offer::offer(&m, now, price, until)),
    )?;
    println!(
        "offer recorded as entry {i}: {} units/hour measured by the node on {} ({} units in {} ms{}), {price} cents per 1,000 units, until {}",
        m.units_per_hour,
        m.backend,
        m.units,
        m.ms,
        if m.selftest_kernels > 0 {
            format!("; self-test passed on {} kernels", m.selftest_kernels)
        } else {
            String::new()
        },
        rfc3339(until)
    );
    Ok(ExitCode::SUCCESS)
}

/// The price of the latest offer in the log of `key`, as the node serves its offers.
fn last_offer_price(base: &str, key: &PublicKey) -> anyhow::Result<Option<u64>> {
    let url = format!("{base}/api/offers?limit=500");
    let list: serde_json::Value = crate::cli_fed::agent()
        .get(&url)
        .call()
        .and_then(|mut r| r.body_mut().read_json())
        .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("reading {url}: {e}")))?;
    let own = hex::encode(key);
    Ok(list["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["log"] == own.as_str())
        .max_by_key(|e| e["index"].as_u64())
        .and_then(|e| e["entry"]["body"]["price_cents_per_kilo_unit"].as_u64()))
}

/// `--until`: an RFC 3339 time, as Unix milliseconds.
fn parse_until(s: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-12-24T18:00:00Z: {e}"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("{s} is before 1970"))
}

/// Unix milliseconds as RFC 3339 (UTC).
fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Arguments of `leam bid`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Example:\n  leam bid --dir nodes/startup --job job.toml\n\nPublishes the job description and the bid; the node clears it by the market rule and proposes the leases. Prints the job id."
)]
pub struct BidArgs {
    /// Node directory of the running node (the bidder).
    #[arg(long)]
    pub dir: PathBuf,
    /// The job file (TOML, `specs/market.md` §2).
    #[arg(long)]
    pub job: PathBuf,
    /// Override the job file's maximum price, credits per 1,000 compute units.
    #[arg(long)]
    pub max_price: Option<u64>,
}

/// Runs `leam bid`.
pub fn bid(a: BidArgs) -> anyhow::Result<ExitCode> {
    let input = |e: anyhow::Error| cli::fail(cli::EXIT_INPUT, e);
    let text = std::fs::read_to_string(&a.job)
        .with_context(|| format!("reading {}", a.job.display()))
        .map_err(input)?;
    let file = JobFile::parse(&text)
        .with_context(|| format!("job file {}", a.job.display()))
        .map_err(input)?;
    let corpus_path = a.job.parent().unwrap_or(Path::new(".")).join(&file.corpus);
    let corpus = std::fs::read(&corpus_path)
        .with_context(|| format!("reading the corpus {}", corpus_path.display()))
        .map_err(input)?;
    let model = file.model().map_err(|e| input(e.into()))?;
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let job = Job {
        name: file.name.clone(),
        model,
        corpus_sha256: Sha256::digest(&corpus).into(),
        corpus_bytes: corpus.len() as u64,
        rounds: file.rounds,
        shards_per_round: file.shards_per_round,
        inner_steps: file.inner_steps,
        replication_ppm: file.replication_ppm().map_err(|e| input(e.into()))?,
        seed_commitment: seed_commitment(&seed),
        referees: file.referee_keys().map_err(|e| input(e.into()))?,
        deadline_ms: crate::cli_fed::now_ms() + file.deadline_minutes.saturating_mul(60_000),
        max_price_cents_per_kilo_unit: a.max_price.unwrap_or(file.max_price_cents_per_kilo_unit),
        shard_timeout_ms: file.shard_timeout_seconds.map(|s| s.saturating_mul(1000)),
    };
    job.check().map_err(|e| input(e.into()))?;
    // One shard's compute units, from the tensor shapes (char-level vocabulary of the corpus).
    let text = String::from_utf8_lossy(&corpus);
    let shape = leam_compute::verify::shard::ModelShape {
        vocab_size: leam_compute::model::data::Vocab::of_text(&text).len() as u32,
        n_layer: model.n_layer,
        n_head: model.n_head,
        n_embd: model.n_embd,
        block_size: model.block_size,
        batch_size: model.batch,
    };
    let macs = leam_compute::verify::shard::step_macs(&shape) * u128::from(job.inner_steps);
    let shard_units =
        u64::try_from(macs.div_ceil(leam_compute::verify::shard::MACS_PER_COMPUTE_UNIT))
            .unwrap_or(u64::MAX);
    let bought = leam_market::clearing::shards_bought(&job);
    let job_id = job.id();
    // The providers fetch the corpus from this node by its hash.
    leam_jobs::blobs::Blobs::new(&a.dir)
        .put(&corpus)
        .code(cli::EXIT_ENV)?;
    // The secret seed stays with the bidder until the reveal.
    let jobs = a.dir.join(JOBS_DIR_NAME);
    std::fs::create_dir_all(&jobs).code(cli::EXIT_ENV)?;
    let seed_path = jobs.join(format!("{}.seed", hex::encode(job_id)));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&seed_path)
            .with_context(|| format!("writing {}", seed_path.display()))
            .code(cli::EXIT_ENV)?;
        f.write_all(hex::encode(seed).as_bytes())
            .code(cli::EXIT_ENV)?;
    }
    submit(
        &a.dir,
        "/api/jobs",
        Body::Job(leam_ledger::entry::Job {
            description: job.encode(),
        }),
    )?;
    let i = submit(
        &a.dir,
        "/api/bids",
        Body::Bid(Bid {
            job_id,
            compute_units: bought.saturating_mul(shard_units),
            max_price_cents_per_kilo_unit: job.max_price_cents_per_kilo_unit,
            deadline_ms: job.deadline_ms,
        }),
    )?;
    eprintln!(
        "bid recorded as entry {i}: {bought} shards of {shard_units} units at most {} cents per 1,000 units; the node clears it and proposes the leases",
        job.max_price_cents_per_kilo_unit
    );
    println!("{}", hex::encode(job_id));
    Ok(ExitCode::SUCCESS)
}

/// `leam data` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DataCmd {
    /// Publish a dataset as a data pool: store it by hash in the node directory (the node serves
    /// it to providers by hash) and record its hash, size, licence and provenance in the
    /// running node's log. Prints the SHA-256.
    #[command(
        after_long_help = "Example:\n  leam data add --dir nodes/startup data/tinyshakespeare.txt --licence LicenseRef-public-domain --source 'karpathy/char-rnn tinyshakespeare'"
    )]
    Add(DataAddArgs),
}

/// Arguments of `leam data add`.
#[derive(Debug, clap::Args)]
pub struct DataAddArgs {
    /// Node directory of the running node.
    #[arg(long)]
    pub dir: PathBuf,
    /// The dataset file.
    pub file: PathBuf,
    /// Its licence, an SPDX expression (e.g. CC0-1.0, CC-BY-4.0, LicenseRef-public-domain).
    #[arg(long)]
    pub licence: String,
    /// Where it comes from (provenance), free text.
    #[arg(long)]
    pub source: String,
    /// Print `{"sha256", "bytes", "index"}` instead of the hash alone.
    #[arg(long)]
    pub json: bool,
}

/// Runs `leam data add`.
pub fn data_add(a: DataAddArgs) -> anyhow::Result<ExitCode> {
    use leam_ledger::entry::{Data, LICENCE_BYTES_MAX, SOURCE_BYTES_MAX};
    let input = |e: anyhow::Error| cli::fail(cli::EXIT_INPUT, e);
    let licence_ok = !a.licence.is_empty()
        && a.licence.len() <= LICENCE_BYTES_MAX
        && a.licence
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+:() ".contains(&b));
    if !licence_ok {
        return Err(input(anyhow!(
            "--licence: expected an SPDX expression of at most {LICENCE_BYTES_MAX} characters (letters, digits, . - + : ( ) and spaces), found {:?}",
            a.licence
        )));
    }
    if !leam_ledger::entry::valid_text(&a.source) || a.source.len() > SOURCE_BYTES_MAX {
        return Err(input(anyhow!(
            "--source: expected non-empty text of at most {SOURCE_BYTES_MAX} bytes without control characters"
        )));
    }
    let bytes = std::fs::read(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))
        .map_err(input)?;
    if bytes.is_empty() {
        return Err(input(anyhow!("{} is empty", a.file.display())));
    }
    let sha256 = leam_jobs::blobs::Blobs::new(&a.dir)
        .put(&bytes)
        .map_err(|e| cli::fail(cli::EXIT_ENV, e.into()))?;
    let i = submit(
        &a.dir,
        "/api/data",
        Body::Data(Data {
            sha256,
            bytes: bytes.len() as u64,
            licence: a.licence.clone(),
            source: a.source.clone(),
        }),
    )?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "sha256": hex::encode(sha256), "bytes": bytes.len(), "index": i })
        );
    } else {
        eprintln!(
            "data pool recorded as entry {i}: {} bytes, licence {}; the node serves it by hash",
            bytes.len(),
            a.licence
        );
        println!("{}", hex::encode(sha256));
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `leam jobs`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Example:\n  leam jobs --dir nodes/startup --json\n  leam jobs --dir nodes/startup --wait 3f2a\n\nA job waits (with the reason no provider serves it yet), is being leased, or is leased."
)]
pub struct JobsArgs {
    /// Node directory of the running node (the bidder).
    #[arg(long)]
    pub dir: PathBuf,
    /// Print a JSON array of jobs with `job`, `name`, `state`, `reason`, `shards`,
    /// `price_cents_per_kilo_unit`, `parts` (each `provider`, `shards`, `compute_units`,
    /// `price_cents`, `leased`) and `progress` (the run's progress file, or null).
    #[arg(long)]
    pub json: bool,
    /// Wait until this job (id hex, or a prefix of it) is done, printing each finished round
    /// on stderr, then report as usual; exits 1 if the job failed.
    #[arg(long, value_name = "JOB")]
    pub wait: Option<String>,
    /// Longest wait with `--wait`, seconds (then exit 3).
    #[arg(long, default_value_t = 3_600)]
    pub wait_s: u64,
}

/// How often `leam jobs --wait` looks at the job's progress.
pub const JOBS_WAIT_POLL_MS: u64 = 500;

/// Whether a round of a job's progress document has its validation loss: the bidder evaluates
/// a round while the next one runs; a round that merged nothing has none.
pub(crate) fn round_evaluated(r: &serde_json::Value) -> bool {
    r["val_loss"].is_f64() || r["merged"] == 0
}

/// A round's validation loss as printed.
pub(crate) fn round_loss(r: &serde_json::Value) -> String {
    match r["val_loss"].as_f64() {
        Some(v) => format!("{v:.4}"),
        None if r["merged"] == 0 => "none (nothing merged)".into(),
        None => "being evaluated".into(),
    }
}

/// `leam jobs --wait`: poll the job's progress file until it is done or failed.
fn wait_job(dir: &Path, prefix: &str, limit_s: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut shown = 0usize;
    loop {
        let found = std::fs::read_dir(dir.join(JOBS_DIR_NAME))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(prefix) && n.ends_with(leam_jobs::bidder::PROGRESS_SUFFIX)
                })
            });
        let progress: Option<serde_json::Value> = found
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(pr) = &progress {
            let running = pr["state"] == "running";
            for r in pr["rounds"]
                .as_array()
                .into_iter()
                .flatten()
                .skip(shown)
                .take_while(|r| !running || round_evaluated(r))
            {
                eprintln!(
                    "round {}: {} runs, {} mismatched, {} merged, {} re-leased, {} accepted and {} rejected by the referee so far, val loss {}",
                    r["round"],
                    r["runs"],
                    r["mismatched"],
                    r["merged"],
                    r["released"],
                    r["verified"],
                    r["rejected"],
                    round_loss(r)
                );
                shown += 1;
            }
            match pr["state"].as_str().unwrap_or("") {
                "done" => return Ok(()),
                s if s.starts_with("failed") => {
                    return Err(cli::fail(cli::EXIT_INVALID, anyhow!("job {prefix}: {s}")))
                }
                _ => {}
            }
        }
        if started.elapsed() > Duration::from_secs(limit_s) {
            return Err(cli::fail(
                cli::EXIT_ENV,
                anyhow!(
                    "job {prefix} is not done after {limit_s} s ({})",
                    if progress.is_some() {
                        "running"
                    } else {
                        "not started on this node"
                    }
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(JOBS_WAIT_POLL_MS));
    }
}

/// Runs `leam jobs`.
pub fn jobs(a: JobsArgs) -> anyhow::Result<ExitCode> {
    if let Some(prefix) = &a.wait {
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(cli::fail(
                cli::EXIT_INPUT,
                anyhow!("--wait: expected a job id in hex (or a prefix of it), found {prefix:?}"),
            ));
        }
        wait_job(&a.dir, &prefix.to_ascii_lowercase(), a.wait_s)?;
    }
    let (base, _) = endpoint(&a.dir)?;
    let url = format!("{base}/api/market/jobs");
    let mut resp = crate::cli_fed::agent()
        .get(&url)
        .call()
        .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("asking the node at {url}: {e}")))?;
    let mut jobs: Vec<serde_json::Value> = resp
        .body_mut()
        .read_json()
        .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("{url}: {e}")))?;
    // A job that runs or ran on this node has a progress file (`specs/market.md` §8.2).
    for j in &mut jobs {
        let id = j["job"].as_str().unwrap_or("").to_owned();
        let path = a
            .dir
            .join(JOBS_DIR_NAME)
            .join(format!("{id}{}", leam_jobs::bidder::PROGRESS_SUFFIX));
        j["progress"] = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} job(s)", jobs.len());
    for j in &jobs {
        println!(
            "{}  {:<8} {} shards  {}  {}",
            &j["job"].as_str().unwrap_or("")[..16.min(j["job"].as_str().unwrap_or("").len())],
            j["state"].as_str().unwrap_or(""),
            j["shards"],
            j["price_cents_per_kilo_unit"]
                .as_u64()
                .map(|p| format!("{p} cents/1000 units"))
                .unwrap_or_else(|| "-".into()),
            j["name"].as_str().unwrap_or("")
        );
        if let Some(r) = j["reason"].as_str() {
            println!("    waiting: {r}");
        }
        let pr = &j["progress"];
        if let Some(state) = pr["state"].as_str() {
            println!(
                "    run: {state}; val loss at start {:.4}",
                pr["val_loss_start"].as_f64().unwrap_or(f64::NAN)
            );
            for r in pr["rounds"].as_array().into_iter().flatten() {
                println!(
                    "      round {}: {} shards, {} runs, {} replicated, {} mismatched, {} merged, {} re-leased, {} accepted, {} rejected, val loss {}",
                    r["round"], r["shards"], r["runs"], r["replicated"], r["mismatched"],
                    r["merged"], r["released"], r["verified"], r["rejected"], round_loss(r)
                );
            }
            if let Some([acc, rej]) = pr["verdicts"].as_array().map(|v| [&v[0], &v[1]]) {
                println!("      referee verdicts: {acc} accepted, {rej} rejected");
            }
        }
        for p in j["parts"].as_array().into_iter().flatten() {
            println!(
                "    {}…  {} shards, {} units, {:.2} EUR, {}",
                &p["provider"].as_str().unwrap_or("")[..16],
                p["shards"],
                p["compute_units"],
                p["price_cents"].as_u64().unwrap_or(0) as f64 / 100.0,
                if p["leased"].as_bool() == Some(true) {
                    "leased"
                } else {
                    "lease pending"
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
