//! `leam demo`: a federation of four partners on loopback, one `leam node` process each, driven
//! through exactly the commands a user runs (`init`, `genesis create|sign`, `node`, `offer`,
//! `deposit`, `bid`, `jobs`, `audit`): measured offers, deposits of public and private money, a
//! startup's bid cleared by the market rule, co-signed leases, DiLoCo training whose shards travel
//! to the providers over `/leam/shard/1.0.0` (secret replication on a second provider; the
//! industry partner falsifies its first shard unless `--honest`), the referee's bisection,
//! verdicts and evidence, co-signed settlements with the public pool's subsidy, the seed reveal,
//! and an audit over the live nodes' tlog-tiles interface. The demo itself holds no key and
//! writes no log: it only runs `leam` commands, so what it shows is what the nodes do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

use crate::cli::{self, Backend, Preset, TrainSettings, EXIT_ENV, EXIT_INPUT};

/// A narration line: on stdout, or on stderr when stdout carries the JSON result.
macro_rules! say {
    ($json:expr, $($t:tt)*) => {
        if $json {
            eprintln!($($t)*)
        } else {
            println!($($t)*)
        }
    };
}

/// Largest number of DiLoCo rounds the demo runs.
const ROUNDS_MAX: u32 = 50;
/// Largest number of inner steps per shard the demo runs.
const STEPS_MAX: u32 = 2_000;
/// The demo federation's public subsidy rate, percent.
const DEMO_SUBSIDY_PERCENT: u8 = 30;
/// Votes that admit a new member in the demo federation.
const DEMO_THRESHOLD: u16 = 2;
/// The startup's highest price, credits (EUR cents) per 1,000 compute units.
const DEMO_MAX_PRICE: u64 = 60;
/// The startup's private deposit, EUR cents.
const DEMO_PRIVATE_DEPOSIT_CENTS: u64 = 100_000;
/// The public research centre's public funding (the subsidy pool), EUR cents.
const DEMO_PUBLIC_DEPOSIT_CENTS: u64 = 500_000;
/// Longest wait for the nodes to start, connect and replicate each other's logs.
const START_S_MAX: u64 = 60;
/// Longest wait for the job (all rounds, verdicts, settlements).
const JOB_S_MAX: u64 = 1_800;
/// How often the demo looks at the job's progress.
const POLL_MS: u64 = 300;

/// Arguments of `leam demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Directory for the node directories, the genesis document and the job file; must
    /// not exist yet. Default: a new directory `leam-demo-<unix ms>` in the system's temporary
    /// directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Compute backend of every node (shards, the referee's replays, evaluation).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// The job's model and batch (the definitions of `leam train --preset`).
    #[arg(long, value_enum, default_value_t = Preset::Demo)]
    pub preset: Preset,
    /// DiLoCo outer rounds of the job (each: two shards on the providers).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Inner training steps per shard.
    #[arg(long, value_name = "STEPS", default_value_t = 30)]
    pub steps: u32,
    /// Every provider runs honestly. Default: the industry partner falsifies the first shard it
    /// runs (one flipped parameter bit), to show replication, bisection, the referee and
    /// misbehaviour evidence.
    #[arg(long)]
    pub honest: bool,
    /// Training corpus (UTF-8 text). Default: tinyshakespeare.txt next to the binary (or in
    /// data/ there), else data/tinyshakespeare.txt in the working folder.
    #[arg(long, value_name = "FILE")]
    pub corpus: Option<PathBuf>,
    /// Where the public research centre's node serves the dashboard and API (the other nodes
    /// take free ports). Default: 127.0.0.1:8080, or a free port with `--exit-when-done`.
    #[arg(long)]
    pub http: Option<std::net::SocketAddr>,
    /// Share of the job's shards secretly replicated on a second provider, percent (1..=100;
    /// the falsified shard is caught only if replicated, so the default replicates half).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub replication_percent: u32,
    /// Stop the nodes and exit after the audit instead of serving the dashboard until Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
    /// Number of partners, one `leam node` process each (4..=16): the four above, then
    /// further providers (public, science and private in turn) whose offers stand as spare
    /// capacity above the industry partner's price.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(4..=DEMO_NODES_MAX as i64))]
    pub nodes: u32,
    /// Print one JSON document on stdout once the audit is done (`dir`, `genesis`,
    /// `federation`, `job`, `dashboards`, `progress` as `leam jobs --json` shows it, `audit` as
    /// `leam audit --json` prints it); the narration goes to stderr.
    #[arg(long)]
    pub json: bool,
}

/// Most partners `--nodes` starts.
const DEMO_NODES_MAX: u32 = 16;

/// The first four partners: directory name, organisation, sector.
const PARTNERS: [(&str, &str, &str); 4] = [
    ("rechenzentrum-nord", "Rechenzentrum Nord", "public"),
    ("industrie-compute", "Industrie Compute AG", "private"),
    ("universitaet-sued", "Universitaet Sued", "science"),
    ("sprachwerk-startup", "Sprachwerk GmbH", "startup"),
];
/// The partners of a demo with `n` nodes: [`PARTNERS`], then spare providers
/// (`partner-5`, …), public, science and private in turn.
fn partners(n: u32) -> Vec<(String, String, &'static str)> {
    let mut out: Vec<(String, String, &'static str)> = PARTNERS
        .iter()
        .map(|(d, o, s)| (d.to_string(), o.to_string(), *s))
        .collect();
    for i in PARTNERS.len() as u32..n {
        let (sector, kind) = [
            ("public", "Rechenzentrum"),
            ("science", "Hochschule"),
            ("private", "Compute GmbH"),
        ][(i as usize - PARTNERS.len()) % 3];
        out.push((
            format!("partner-{}", i + 1),
            format!("Partner {} {kind}", i + 1),
            sector,
        ));
    }
    out
}

/// The ask of spare provider `i` (index ≥ 4): above the industry partner's 55, at most the
/// job's maximum.
fn spare_price(i: usize) -> u64 {
    (56 + (i - PARTNERS.len()) as u64 % 4).min(DEMO_MAX_PRICE)
}

const PUBLIC_CENTRE: usize = 0;
const INDUSTRY: usize = 1;
const UNIVERSITY: usize = 2;
const STARTUP: usize = 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or("")
}

/// Run `leam ARGS` (this binary) to completion; its stdout, or an error with its stderr and
/// its exit code kept.
fn leam(args: &[&str]) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("locating the leam binary")?;
    let out = Command::new(&exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running leam {}", args.join(" ")))?;
    if !out.status.success() {
        let code = out.status.code().unwrap_or(EXIT_ENV as i32);
        return Err(cli::fail(
            u8::try_from(code).unwrap_or(EXIT_ENV),
            anyhow!(
                "leam {} exited with {code}: {}",
                args.first().copied().unwrap_or(""),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The running nodes; stopped with SIGTERM (and waited for) when dropped.
struct Nodes(Vec<(String, Child)>);

impl Nodes {
    fn stop(&mut self) {
        for (_, c) in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for (name, c) in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!("warning: node {name} did not stop in 15 s; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.0.clear();
    }

    /// A node that exited by itself (an error): its name and log.
    fn exited(&mut self) -> Option<String> {
        self.0
            .iter_mut()
            .find_map(|(name, c)| matches!(c.try_wait(), Ok(Some(_))).then(|| name.clone()))
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn get_json(base: &str, path: &str) -> Option<Value> {
    let mut r = crate::cli_fed::agent()
        .get(&format!("{base}{path}"))
        .call()
        .ok()?;
    r.body_mut().read_json().ok()
}

fn base_of(dir: &Path) -> Option<String> {
    let addr = std::fs::read_to_string(dir.join(crate::cli_fed::HTTP_ADDR_FILE)).ok()?;
    Some(format!("http://{}", addr.trim()))
}

/// Size of log `key` as the node in `dir` holds it.
fn size_at(dir: &Path, key: &str) -> Option<u64> {
    get_json(&base_of(dir)?, "/api/status")?["logs"]
        .as_array()?
        .iter()
        .find(|l| l["key"] == key)?["size"]
        .as_u64()
}

fn wait_for(
    what: &str,
    limit: Duration,
    nodes: &mut Nodes,
    root: &Path,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let t = Instant::now();
    while !done() {
        if let Some(name) = nodes.exited() {
            bail!(
                "node {name} stopped while waiting for {what}; its log: {}",
                root.join(format!("{name}.log")).display()
            );
        }
        if t.elapsed() > limit {
            return Err(cli::fail(
                EXIT_ENV,
                anyhow!(
                    "{what} did not happen within {} s (a loaded machine?); node logs are in {}",
                    limit.as_secs(),
                    root.display()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
    Ok(())
}

fn member_key(dir: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(dir.join(crate::cli_fed::MEMBER_TOML)).with_context(|| {
            format!(
                "reading {}",
                dir.join(crate::cli_fed::MEMBER_TOML).display()
            )
        })?;
    let v: toml::Value = toml::from_str(&text)?;
    v["key"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no key in {}", dir.display()))
}

fn eur(cents: u64) -> String {
    format!("{}.{:02} EUR", cents / 100, cents % 100)
}

/// Runs `leam demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    if args.rounds == 0 || args.rounds > ROUNDS_MAX {
        return Err(cli::fail(
            EXIT_INPUT,
            anyhow!(
                "--rounds must be in 1..={ROUNDS_MAX}, found {}",
                args.rounds
            ),
        ));
    }
    if args.steps < 2 || args.steps > STEPS_MAX {
        return Err(cli::fail(
            EXIT_INPUT,
            anyhow!("--steps must be in 2..={STEPS_MAX}, found {}", args.steps),
        ));
    }
    let root = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("leam-demo-{}", now_ms())),
    };
    // The corpus first: a missing one is refused before anything is created.
    let corpus = cli::find_corpus(args.corpus.as_deref())?;
    let corpus = std::fs::canonicalize(&corpus).unwrap_or(corpus);
    if root.exists() {
        return Err(cli::fail(
            EXIT_INPUT,
            anyhow!(
                "{} exists; the demo creates a fresh federation (pass a new --dir)",
                root.display()
            ),
        ));
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let started = Instant::now();
    let backend = args.backend.name();
    let http = args.http.map(|a| a.to_string()).unwrap_or_else(|| {
        if args.exit_when_done {
            "127.0.0.1:0".into()
        } else {
            "127.0.0.1:8080".into()
        }
    });

    say!(
        json,
        "leam demo: a federation of {} partners, one `leam node` process each, on loopback",
        args.nodes
    );
    let partners = partners(args.nodes);
    say!(
        json,
        "  (every step below is a `leam` command a partner would run; node logs: {}/<node>.log)\n",
        root.display()
    );

    say!(
        json,
        "1. identities and the signed genesis (leam init, leam genesis create|sign)"
    );
    let dirs: Vec<PathBuf> = partners.iter().map(|(d, _, _)| root.join(d)).collect();
    let mut keys = Vec::new();
    for ((_, org, sector), dir) in partners.iter().zip(&dirs) {
        leam(&[
            "init",
            "--dir",
            p(dir),
            "--org",
            org,
            "--sector",
            sector,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ])?;
        keys.push(member_key(dir)?);
        say!(
            json,
            "   {org:<22} {sector:<8} key {}…",
            &keys[keys.len() - 1][..16]
        );
    }
    let genesis = root.join("federation.genesis");
    let mut create = vec![
        "genesis".to_string(),
        "create".into(),
        "--out".into(),
        p(&genesis).into(),
        "--subsidy-percent".into(),
        DEMO_SUBSIDY_PERCENT.to_string(),
        "--threshold".into(),
        DEMO_THRESHOLD.to_string(),
    ];
    create.extend(dirs.iter().map(|d| p(d).to_string()));
    let fed = leam(&create.iter().map(String::as_str).collect::<Vec<_>>())?;
    for d in &dirs {
        leam(&["genesis", "sign", "--dir", p(d), p(&genesis)])?;
    }
    say!(json,
        "   federation {}: signed by all {} founders; startups' leases are {DEMO_SUBSIDY_PERCENT}% subsidised from public funding",
        &fed.trim()[..16.min(fed.trim().len())],
        partners.len()
    );

    say!(json, "\n2. {} `leam node` processes on libp2p (members only, replicas of every log, witness cosignatures)", partners.len());
    let exe = std::env::current_exe().context("locating the leam binary")?;
    let mut nodes = Nodes(Vec::new());
    let mut boot: Option<String> = None;
    for (i, dir) in dirs.iter().enumerate() {
        let name = partners[i].0.clone();
        let log = std::fs::File::create(root.join(format!("{name}.log")))?;
        let mut cmd = Command::new(&exe);
        cmd.args(["node", "--dir", p(dir), "--genesis", p(&genesis)])
            .args(["--backend", backend])
            .args([
                "--http",
                if i == PUBLIC_CENTRE {
                    &http
                } else {
                    "127.0.0.1:0"
                },
            ]);
        if let Some(b) = &boot {
            cmd.args(["--bootstrap", b]);
        }
        if i == INDUSTRY && !args.honest {
            cmd.args(["--falsify-run", "0"]);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting leam node")?;
        nodes.0.push((name.clone(), child));
        let listen = dir.join(crate::cli_fed::LISTEN_ADDRS_FILE);
        wait_for(
            &format!("node {name} to listen"),
            Duration::from_secs(START_S_MAX),
            &mut nodes,
            &root,
            || dir.join(crate::cli_fed::HTTP_ADDR_FILE).exists() && listen.exists(),
        )?;
        if boot.is_none() {
            boot = std::fs::read_to_string(&listen)?
                .lines()
                .find(|l| l.contains("/tcp/"))
                .map(str::to_owned);
        }
    }
    let t = Instant::now();
    wait_for(
        "every node to hold every log",
        Duration::from_secs(START_S_MAX),
        &mut nodes,
        &root,
        || {
            dirs.iter()
                .all(|d| keys.iter().all(|k| size_at(d, k).is_some()))
        },
    )?;
    say!(
        json,
        "   connected and replicating in {:.1} s; dashboards: {}",
        t.elapsed().as_secs_f64(),
        dirs.iter()
            .filter_map(|d| base_of(d))
            .collect::<Vec<_>>()
            .join(" ")
    );

    say!(
        json,
        "\n3. the market: measured offers, deposits, a data pool, a job and a bid (leam offer|deposit|data add|bid)"
    );
    let offers: Vec<(usize, u64)> = [(PUBLIC_CENTRE, 40), (INDUSTRY, 55)]
        .into_iter()
        .chain((PARTNERS.len()..partners.len()).map(|i| (i, spare_price(i))))
        .collect();
    for &(i, price) in &offers {
        let price = price.to_string();
        let out = leam(&[
            "offer",
            "--dir",
            p(&dirs[i]),
            "--price",
            &price,
            "--minutes",
            "60",
        ])?;
        say!(json, "   {:<22} {}", partners[i].1, out.trim());
    }
    for (i, cents, money, reference) in [
        (STARTUP, DEMO_PRIVATE_DEPOSIT_CENTS, "private", "seed round"),
        (
            PUBLIC_CENTRE,
            DEMO_PUBLIC_DEPOSIT_CENTS,
            "public",
            "public funding for startups",
        ),
    ] {
        leam(&[
            "deposit",
            "--dir",
            p(&dirs[i]),
            "--eur-cents",
            &cents.to_string(),
            "--money",
            money,
            "--reference",
            reference,
        ])?;
        say!(
            json,
            "   {:<22} deposits {} of {money} money",
            PARTNERS[i].1,
            eur(cents)
        );
    }
    let sha = leam(&[
        "data",
        "add",
        "--dir",
        p(&dirs[STARTUP]),
        p(&corpus),
        "--licence",
        "LicenseRef-public-domain",
        "--source",
        "tinyshakespeare (karpathy/char-rnn), Shakespeare's plays",
    ])?;
    say!(
        json,
        "   {:<22} publishes the corpus as data pool {}… (licence, provenance; served by hash)",
        PARTNERS[STARTUP].1,
        &sha.trim()[..16.min(sha.trim().len())]
    );
    let settings = TrainSettings::of(Some(args.preset));
    let job = root.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"leam demo: char-level Shakespeare\"\n\
             preset = \"nanogpt-cpu\"\n\
             corpus = \"{}\"\n\
             rounds = {}\n\
             shards_per_round = 2\n\
             inner_steps = {}\n\
             replication_percent = {}\n\
             referees = [\"{}\"]\n\
             deadline_minutes = 60\n\
             max_price_cents_per_kilo_unit = {DEMO_MAX_PRICE}\n\
             [model]\n\
             n_layer = {}\n\
             n_head = {}\n\
             n_embd = {}\n\
             block_size = {}\n\
             batch = {}\n",
            corpus.display(),
            args.rounds,
            args.steps,
            args.replication_percent,
            keys[UNIVERSITY],
            settings.n_layer,
            settings.n_head,
            settings.n_embd,
            settings.block_size,
            settings.batch_size,
        ),
    )?;
    // The bidder clears on the logs it holds: wait until both offers reached it.
    let sizes: Vec<u64> = offers
        .iter()
        .map(|&(i, _)| size_at(&dirs[i], &keys[i]).unwrap_or(0))
        .collect();
    wait_for(
        "the offers to reach the startup's node",
        Duration::from_secs(START_S_MAX),
        &mut nodes,
        &root,
        || {
            offers
                .iter()
                .zip(&sizes)
                .all(|(&(i, _), s)| size_at(&dirs[STARTUP], &keys[i]).is_some_and(|x| x >= *s))
        },
    )?;
    let bid_at = Instant::now();
    let job_id = leam(&["bid", "--dir", p(&dirs[STARTUP]), "--job", p(&job)])?
        .trim()
        .to_owned();
    say!(json,
        "   {} bids for job {}… ({} rounds × 2 shards of {} steps, {}% secretly replicated, referee {}, at most {DEMO_MAX_PRICE} cents/1000 units)",
        PARTNERS[STARTUP].1,
        &job_id[..16.min(job_id.len())],
        args.rounds,
        args.steps,
        args.replication_percent,
        PARTNERS[UNIVERSITY].1
    );
    let jobs = |dir: &Path| -> Option<Value> {
        serde_json::from_str::<Value>(&leam(&["jobs", "--dir", p(dir), "--json"]).ok()?)
            .ok()?
            .as_array()?
            .iter()
            .find(|j| j["job"] == job_id.as_str())
            .cloned()
    };
    let mut leased = None;
    wait_for(
        "the clearing and the co-signed leases",
        Duration::from_secs(START_S_MAX),
        &mut nodes,
        &root,
        || {
            leased = jobs(&dirs[STARTUP]).filter(|j| j["state"] == "leased");
            leased.is_some()
        },
    )?;
    let leased = leased.unwrap_or(Value::Null);
    say!(
        json,
        "   cleared by the rule and leased in {:.2} s at the uniform price {} cents/1000 units:",
        bid_at.elapsed().as_secs_f64(),
        leased["price_cents_per_kilo_unit"]
    );
    let name_of = |key: &str| {
        keys.iter()
            .position(|k| k == key)
            .map_or("?", |i| partners[i].1.as_str())
    };
    for part in leased["parts"].as_array().into_iter().flatten() {
        say!(
            json,
            "     {:<22} {} shards, {} units, {} (co-signed lease in both logs)",
            name_of(part["provider"].as_str().unwrap_or("")),
            part["shards"],
            part["compute_units"],
            eur(part["price_cents"].as_u64().unwrap_or(0))
        );
    }

    say!(json,
        "\n4. training over the network: DiLoCo rounds; shards, start states and the corpus travel by hash"
    );
    let progress_path = dirs[STARTUP]
        .join(leam_jobs::JOBS_DIR_NAME)
        .join(format!("{job_id}{}", leam_jobs::bidder::PROGRESS_SUFFIX));
    let mut shown = 0usize;
    let mut progress = Value::Null;
    wait_for(
        "the job",
        Duration::from_secs(JOB_S_MAX),
        &mut nodes,
        &root,
        || {
            progress = std::fs::read(&progress_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            if shown == 0 {
                if let Some(v) = progress["val_loss_start"].as_f64() {
                    say!(json, "   validation loss before training {v:.4}");
                    shown = 1;
                }
            }
            let state = progress["state"].as_str().unwrap_or("");
            let rounds = progress["rounds"].as_array().cloned().unwrap_or_default();
            // A round is shown once evaluated (the bidder evaluates it while the next one runs);
            // a round that merged nothing has no loss.
            for r in rounds
                .iter()
                .skip(shown.saturating_sub(1))
                .take_while(|r| state != "running" || crate::cli_market::round_evaluated(r))
            {
                say!(json,
                    "   round {}: {} runs ({} replicated, {} mismatched), {} deltas merged, {} re-leased, val loss {}, {:.1} s",
                    r["round"],
                    r["runs"],
                    r["replicated"],
                    r["mismatched"],
                    r["merged"],
                    r["released"],
                    crate::cli_market::round_loss(r),
                    r["wall_ms"].as_u64().unwrap_or(0) as f64 / 1e3
                );
                shown += 1;
            }
            state == "done" || state.starts_with("failed")
        },
    )?;
    if let Some(s) = progress["state"]
        .as_str()
        .filter(|s| s.starts_with("failed"))
    {
        return Err(cli::fail(EXIT_ENV, anyhow!("the job {s}")));
    }
    let verdicts = &progress["verdicts"];
    say!(
        json,
        "   referee {}: {} verdicts accepting, {} rejecting{}",
        PARTNERS[UNIVERSITY].1,
        verdicts[0],
        verdicts[1],
        if verdicts[1].as_u64().unwrap_or(0) > 0 {
            format!(
                " (bisection to the first divergent step, the agreed state recomputed and that step replayed; evidence recorded against {})",
                PARTNERS[INDUSTRY].1
            )
        } else {
            String::new()
        }
    );

    say!(json, "\n5. settlement: verified units at the lease price; the public pool pays {DEMO_SUBSIDY_PERCENT}% of the startup's bill");
    for (k, cents) in progress["paid_cents"].as_object().into_iter().flatten() {
        say!(
            json,
            "   {} pays {:<22} {}",
            PARTNERS[STARTUP].1,
            name_of(k),
            eur(cents.as_u64().unwrap_or(0))
        );
    }
    // The pool pays providers other than itself once the startup paid: wait for it in the
    // industry partner's log (lease, receipts, the startup's and the pool's settlements).
    let industry_paid = progress["paid_cents"]
        .as_object()
        .is_some_and(|m| m.contains_key(&keys[INDUSTRY]));
    if industry_paid {
        let pool_paid = || -> Option<(u64, String)> {
            let page = get_json(
                &base_of(&dirs[INDUSTRY])?,
                &format!(
                    "/api/logs/{}/entries?kind=settlement&limit=500",
                    keys[INDUSTRY]
                ),
            )?;
            page["entries"].as_array()?.iter().find_map(|e| {
                let t = &e["entry"]["body"]["terms"];
                (t["payer"] == keys[PUBLIC_CENTRE].as_str())
                    .then(|| {
                        Some((
                            t["credits_cents"].as_u64()?,
                            t["money"].as_str()?.to_owned(),
                        ))
                    })
                    .flatten()
            })
        };
        let mut paid = None;
        wait_for(
            "the public pool's subsidy",
            Duration::from_secs(START_S_MAX),
            &mut nodes,
            &root,
            || {
                paid = pool_paid();
                paid.is_some()
            },
        )?;
        let (cents, money) = paid.unwrap_or_default();
        say!(
            json,
            "   the public pool ({}) pays {:<8} {} (subsidy, in {money} money)",
            PARTNERS[PUBLIC_CENTRE].1,
            PARTNERS[INDUSTRY].1,
            eur(cents)
        );
    }
    say!(json,
        "   the startup revealed the replication seed: anyone can re-check which shards were replicated"
    );
    let device: u64 = progress["device_ms"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_u64())
        .sum();
    let wall = progress["wall_ms"].as_u64().unwrap_or(1).max(1);
    // Utilisation per provider: its device time over the job's wall time. A provider the
    // clearing rule bought little from (a higher ask) is idle by the market's choice, so each
    // provider is shown on its own rather than as one average.
    let per_provider: Vec<String> = progress["device_ms"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let i = keys.iter().position(|x| x == k)?;
            let pct = 100.0 * v.as_f64()? / wall as f64;
            Some(format!("{} {pct:.1}%", partners[i].1))
        })
        .collect();
    say!(json,
        "   measured: providers computed {:.1} s of device time in {:.1} s of job time; utilisation (device time / job time) {}; \
         replicas {:.0}% of primary compute; {} bytes per worker and round (start parameters down, delta up) vs {} for plain data parallelism ({:.0}x less)",
        device as f64 / 1e3,
        wall as f64 / 1e3,
        per_provider.join(", "),
        100.0 * progress["replica_units"].as_f64().unwrap_or(0.0)
            / progress["primary_units"].as_f64().unwrap_or(1.0).max(1.0),
        progress["bytes_per_worker_round"],
        progress["data_parallel_bytes_per_worker_round"],
        progress["data_parallel_bytes_per_worker_round"].as_f64().unwrap_or(0.0)
            / progress["bytes_per_worker_round"].as_f64().unwrap_or(1.0).max(1.0)
    );

    let shards = u64::from(args.rounds) * 2;
    let replicas = (shards * u64::from(args.replication_percent)).div_ceil(100);
    let falsified = shards.div_ceil(20);
    say!(json,
        "   a provider falsifying {falsified} of the job's {shards} shards (5%) is caught with probability {:.1}% ({replicas} secret replicas)",
        leam_market::replicate::catch_probability_ppb(shards, replicas, falsified) as f64 / 1e7
    );

    say!(json, "\n6. audit over the live nodes' tlog-tiles interface (leam audit URL, as a funder runs it)");
    let base = base_of(&dirs[PUBLIC_CENTRE]).context("the public centre's node address")?;
    // Witnesses cosign every checkpoint after a consistency check; wait for the last entries.
    std::thread::sleep(Duration::from_millis(2_500));
    let audit = leam(&["audit", "--no-state", "--genesis", p(&genesis), &base])?;
    for line in audit.lines() {
        say!(json, "   {line}");
    }
    if json {
        let audited: Value = serde_json::from_str(&leam(&[
            "audit",
            "--json",
            "--no-state",
            "--genesis",
            p(&genesis),
            &base,
        ])?)?;
        let doc = serde_json::json!({
            "dir": root.display().to_string(),
            "genesis": genesis.display().to_string(),
            "federation": fed.trim(),
            "job": job_id,
            "dashboards": dirs.iter().filter_map(|d| base_of(d)).collect::<Vec<_>>(),
            "progress": progress,
            "audit": audited,
        });
        crate::cli::write_stdout(format!("{}\n", serde_json::to_string_pretty(&doc)?).as_bytes())?;
    }

    say!(
        json,
        "\nDone in {:.1} s. Re-check it yourself:",
        started.elapsed().as_secs_f64()
    );
    say!(json, "  leam audit --genesis {} {base}", genesis.display());
    if args.exit_when_done {
        nodes.stop();
        say!(
            json,
            "  leam audit --genesis {} {}",
            genesis.display(),
            dirs.iter().map(|d| p(d)).collect::<Vec<_>>().join(" ")
        );
        say!(
            json,
            "  leam ledger export --dir {}",
            dirs[STARTUP].display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    say!(json,
        "\n7. the nodes keep running: funder report {base}/report ; market {base}/market ; API {base}/api/openapi.json ; Ctrl-C stops them"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signal = rt.block_on(crate::cli_fed::shutdown_signal());
    eprintln!("{signal}: stopping the nodes");
    nodes.stop();
    Ok(ExitCode::SUCCESS)
}
