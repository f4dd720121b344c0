//! The federation commands: `leam init`, `leam genesis create|sign|verify`, `leam node`,
//! `leam peers`, `leam admit`. They handle files, flags and exit codes; the network is
//! `leam-net`, the genesis and membership rule are `leam-ledger`.
//!
//! Exit codes: 0 success; 1 the data is wrong (a genesis signature missing or invalid, this key
//! not a member); 2 unreadable or malformed input; 3 an environment problem (port in use, no
//! running node, store locked).

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use leam_ledger::account::Membership;
use leam_ledger::entry::{Admission, Body, Entry, PublicKey, Sector};
use leam_ledger::genesis::{Founder, Genesis, SignedGenesis, GENESIS_BYTES_MAX};
use leam_ledger::identity::Identity;
use leam_ledger::log::{Log, KEY_FILE_NAME};
use leam_net::core::Core;
use leam_net::shell::{peer_id_of, NetConfig, Node, PeerInfo};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The node's configuration file in its directory.
pub const NODE_TOML: &str = "node.toml";
/// The member file a founder sends to the others.
pub const MEMBER_TOML: &str = "member.toml";
/// The secret token file authenticating the operator's commands to the running node.
pub const TOKEN_FILE: &str = "control.token";
/// Written by a running node: its HTTP address (web app, API and control).
pub const HTTP_ADDR_FILE: &str = "http.addr";
/// Written by a running node: its libp2p listen addresses with `/p2p/<PeerId>`, one a line.
pub const LISTEN_ADDRS_FILE: &str = "listen.addrs";
/// Largest config, member or token file read.
pub const CONFIG_BYTES_MAX: u64 = 64 * 1024;
/// `leam admit` signs its vote for the next index of the node's log; when another write took
/// that index meanwhile (409 naming the expected index), it signs again, at most this often.
pub const ADMIT_ATTEMPTS_MAX: u32 = 5;
/// After SIGINT/SIGTERM the node exits within this time, whatever is in flight.
pub const SHUTDOWN_MS_MAX: u64 = 10_000;
/// Timeout of a control API call from the CLI.
pub const CONTROL_TIMEOUT_MS: u64 = 10_000;
/// Default HTTP address: loopback, any free port (written to `DIR/http.addr`).
pub const HTTP_DEFAULT: &str = "127.0.0.1:0";

/// Exit code: the data is wrong.
const EXIT_INVALID: u8 = 1;
/// Exit code: unreadable or malformed input.
const EXIT_INPUT: u8 = 2;
/// Exit code: environment problem.
const EXIT_ENV: u8 = 3;

/// An error with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

pub(crate) fn fail(code: u8, error: anyhow::Error) -> Failure {
    Failure { code, error }
}

type Res<T> = Result<T, Failure>;

trait Code<T> {
    fn code(self, code: u8) -> Res<T>;
}
impl<T, E: Into<anyhow::Error>> Code<T> for Result<T, E> {
    fn code(self, code: u8) -> Res<T> {
        self.map_err(|e| fail(code, e.into()))
    }
}

/// Run a federation command and map its failure to the exit code convention.
pub fn exit(result: Res<ExitCode>) -> ExitCode {
    match result {
        Ok(c) => c,
        Err(f) if crate::cli::is_stdout_closed(&f.error) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

/// Print one JSON document on stdout (`--json`; specs/cli.md §2.1).
fn print_json(v: &serde_json::Value) -> Res<()> {
    crate::cli::print_json(v).code(EXIT_ENV)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn read_small(path: &Path) -> Res<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))
        .code(EXIT_INPUT)?;
    if meta.len() > CONFIG_BYTES_MAX {
        return Err(fail(
            EXIT_INPUT,
            anyhow!(
                "{}: {} bytes, more than {CONFIG_BYTES_MAX}",
                path.display(),
                meta.len()
            ),
        ));
    }
    std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))
        .code(EXIT_INPUT)
}

/// Write a file atomically (temporary file, fsync, rename) with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Files

/// `DIR/member.toml`: the public facts a founding member sends to the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    /// Organisation.
    pub organisation: String,
    /// Sector (public, private, science, startup).
    pub sector: String,
    /// Node key (ed25519), hex.
    pub key: String,
    /// libp2p PeerId of the same key.
    pub peer_id: String,
}

impl MemberFile {
    fn founder(&self, path: &Path) -> Res<Founder> {
        let sector: Sector = self
            .sector
            .parse()
            .map_err(|e: String| anyhow!("{}: field sector: {e}", path.display()))
            .code(EXIT_INPUT)?;
        let mut key: PublicKey = [0; 32];
        hex::decode_to_slice(&self.key, &mut key)
            .map_err(|e| {
                anyhow!(
                    "{}: field key: expected 64 hex digits, found {:?} ({e})",
                    path.display(),
                    self.key
                )
            })
            .code(EXIT_INPUT)?;
        let pid = peer_id_of(&key)
            .ok_or_else(|| anyhow!("{}: field key: not an ed25519 public key", path.display()))
            .code(EXIT_INPUT)?;
        if pid.to_string() != self.peer_id {
            return Err(fail(
                EXIT_INPUT,
                anyhow!(
                    "{}: field peer_id is {}, but the key's PeerId is {pid}",
                    path.display(),
                    self.peer_id
                ),
            ));
        }
        Ok(Founder {
            organisation: self.organisation.clone(),
            sector,
            key,
        })
    }
}

/// Read a member: a `member.toml` or a node directory holding one.
fn read_member(path: &Path) -> Res<Founder> {
    let file = if path.is_dir() {
        path.join(MEMBER_TOML)
    } else {
        path.to_owned()
    };
    let text = String::from_utf8(read_small(&file)?)
        .map_err(|_| anyhow!("{}: not UTF-8", file.display()))
        .code(EXIT_INPUT)?;
    let m: MemberFile = toml::from_str(&text)
        .map_err(|e| anyhow!("{}: {e}", file.display()))
        .code(EXIT_INPUT)?;
    m.founder(&file)
}

/// `DIR/node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// libp2p listen addresses.
    pub listen: Vec<String>,
    /// Members dialled at start.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Genesis document path (relative paths are relative to the node directory).
    #[serde(default)]
    pub genesis: Option<String>,
    /// Control and web API address.
    #[serde(default = "http_default")]
    pub http: String,
}

fn http_default() -> String {
    HTTP_DEFAULT.to_string()
}

fn node_toml(listen: &[String], http: &str) -> String {
    let q = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "# leam node configuration, written by `leam init`; flags of `leam node` override it.\n\
         \n\
         # libp2p listen addresses (multiaddrs): TCP (Noise, Yamux) and QUIC. Port 0 picks a free\n\
         # port; the bound addresses are written to {LISTEN_ADDRS_FILE} when the node starts.\n\
         # Use /ip4/0.0.0.0/... to accept members from other machines.\n\
         listen = [{}]\n\
         \n\
         # Members dialled at start, e.g. \"/ip4/192.0.2.1/tcp/7700/p2p/12D3Koo...\".\n\
         bootstrap = []\n\
         \n\
         # The federation's genesis document (leam genesis create/sign). Relative to this folder.\n\
         # genesis = \"federation.genesis\"\n\
         \n\
         # Local control and web API (127.0.0.1 only unless you mean otherwise; port 0 picks a\n\
         # free port, written to {HTTP_ADDR_FILE}).\n\
         http = {http:?}\n\
         \n\
         # Limits (compiled in, listed for reference): connections {} total, {} per peer;\n\
         # gossip messages {} bytes; requests {} bytes, responses {} bytes; {} entries per request.\n",
        q(listen),
        leam_net::shell::CONNECTIONS_MAX,
        leam_net::shell::CONNECTIONS_PER_PEER_MAX,
        leam_net::wire::GOSSIP_BYTES_MAX,
        leam_net::wire::REQUEST_BYTES_MAX,
        leam_net::wire::RESPONSE_BYTES_MAX,
        leam_net::wire::ENTRIES_PER_REQUEST_MAX,
    )
}

fn read_node_file(dir: &Path) -> Res<NodeFile> {
    let path = dir.join(NODE_TOML);
    let text = String::from_utf8(read_small(&path)?)
        .map_err(|_| anyhow!("{}: not UTF-8", path.display()))
        .code(EXIT_INPUT)?;
    toml::from_str(&text)
        .map_err(|e| anyhow!("{}: {e}", path.display()))
        .code(EXIT_INPUT)
}

fn parse_addrs(what: &str, v: &[String]) -> Res<Vec<Multiaddr>> {
    v.iter()
        .map(|s| {
            s.parse::<Multiaddr>()
                .map_err(|e| anyhow!("{what}: {s:?} is not a multiaddr: {e}"))
                .code(EXIT_INPUT)
        })
        .collect()
}

fn read_genesis(path: &Path) -> Res<SignedGenesis> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading genesis {}", path.display()))
        .code(EXIT_INPUT)?;
    if meta.len() > GENESIS_BYTES_MAX as u64 {
        return Err(fail(
            EXIT_INPUT,
            anyhow!("{}: more than {GENESIS_BYTES_MAX} bytes", path.display()),
        ));
    }
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading genesis {}", path.display()))
        .code(EXIT_INPUT)?;
    SignedGenesis::parse(&bytes)
        .with_context(|| format!("genesis {}", path.display()))
        .code(EXIT_INPUT)
}

fn complete_genesis(path: &Path) -> Res<Genesis> {
    let signed = read_genesis(path)?;
    let g = signed
        .verify_complete()
        .with_context(|| format!("genesis {}", path.display()))
        .code(EXIT_INVALID)?;
    Ok(g.clone())
}

fn new_token() -> String {
    use rand_core::RngCore as _;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

pub(crate) fn read_token(dir: &Path) -> Res<String> {
    let path = dir.join(TOKEN_FILE);
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("reading the control token {}", path.display()))
        .code(EXIT_ENV)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(fail(
            EXIT_ENV,
            anyhow!(
                "{} has mode {:o}; the control token must be private (chmod 600)",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let t = String::from_utf8(read_small(&path)?).unwrap_or_default();
    Ok(t.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// leam init

/// Arguments of `leam init`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Example:\n  leam init --dir nodes/nord --org 'Rechenzentrum Nord' --sector public --listen /ip4/0.0.0.0/tcp/7700"
)]
pub struct InitArgs {
    /// Node directory to create (must not hold a node yet).
    #[arg(long)]
    pub dir: PathBuf,
    /// Organisation running this node.
    #[arg(long)]
    pub org: String,
    /// Sector of the organisation.
    #[arg(long, value_enum)]
    pub sector: crate::cli::SectorArg,
    /// libp2p listen address (repeatable). Default: /ip4/127.0.0.1/tcp/0 and
    /// /ip4/127.0.0.1/udp/0/quic-v1 (loopback, free ports).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Control and web API address.
    #[arg(long, default_value = HTTP_DEFAULT)]
    pub http: String,
    /// Print a JSON object (`dir`, `peer_id`, `member_key`, `verifier_key`, `organisation`,
    /// `sector`) instead of the PeerId.
    #[arg(long)]
    pub json: bool,
}

/// Runs `leam init`.
pub fn init(a: InitArgs) -> Res<ExitCode> {
    let sector = Sector::from(a.sector);
    let listen = if a.listen.is_empty() {
        vec![
            "/ip4/127.0.0.1/tcp/0".to_string(),
            "/ip4/127.0.0.1/udp/0/quic-v1".to_string(),
        ]
    } else {
        a.listen.clone()
    };
    parse_addrs("--listen", &listen)?;
    a.http
        .parse::<SocketAddr>()
        .map_err(|e| anyhow!("--http {:?}: {e}", a.http))
        .code(EXIT_INPUT)?;
    if a.dir.join(KEY_FILE_NAME).exists() || a.dir.join(NODE_TOML).exists() {
        return Err(fail(
            EXIT_INPUT,
            anyhow!(
                "{} already holds a node; refusing to overwrite it",
                a.dir.display()
            ),
        ));
    }
    let identity = Identity::generate(&mut rand_core::OsRng);
    let key = identity.public_key();
    let verifier_key = identity.verifier_key();
    let membership = Membership {
        organisation: a.org.clone(),
        sector,
    };
    Log::create(&a.dir, identity, &membership, now_ms())
        .with_context(|| format!("creating the node in {}", a.dir.display()))
        .code(EXIT_INPUT)?;
    let pid = peer_id_of(&key)
        .ok_or_else(|| anyhow!("key"))
        .code(EXIT_INPUT)?;
    let member = MemberFile {
        organisation: a.org.clone(),
        sector: sector.name().to_string(),
        key: hex::encode(key),
        peer_id: pid.to_string(),
    };
    let io = |e: std::io::Error| fail(EXIT_ENV, anyhow!("writing in {}: {e}", a.dir.display()));
    write_atomic(
        &a.dir.join(MEMBER_TOML),
        format!(
            "# Public facts of this member: send this file to the other founders.\n{}",
            toml::to_string(&member).map_err(|e| fail(EXIT_INPUT, e.into()))?
        )
        .as_bytes(),
        0o644,
    )
    .map_err(io)?;
    write_atomic(
        &a.dir.join(NODE_TOML),
        node_toml(&listen, &a.http).as_bytes(),
        0o644,
    )
    .map_err(io)?;
    write_atomic(&a.dir.join(TOKEN_FILE), new_token().as_bytes(), 0o600).map_err(io)?;
    if a.json {
        print_json(&serde_json::json!({
            "dir": a.dir.display().to_string(),
            "peer_id": member.peer_id,
            "member_key": member.key,
            "verifier_key": verifier_key,
            "organisation": member.organisation,
            "sector": member.sector,
        }))?;
    } else {
        println!("{pid}");
    }
    eprintln!(
        "created node {} for {} ({}); send {} to the other founders",
        a.dir.display(),
        a.org,
        sector.name(),
        a.dir.join(MEMBER_TOML).display()
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// leam genesis

/// `leam genesis` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum GenesisCmd {
    /// Create the federation's genesis document from the founders' member files.
    #[command(
        after_long_help = "Example:\n  leam genesis create --out fed.genesis --subsidy-percent 30 --threshold 2 nodes/a nodes/b/member.toml nodes/c"
    )]
    Create(GenesisCreateArgs),
    /// Add this node's signature to a genesis document (in place).
    #[command(after_long_help = "Example:\n  leam genesis sign --dir nodes/a fed.genesis")]
    Sign(GenesisSignArgs),
    /// Check a genesis document: every founder signed, every signature valid (exit 1 if not).
    #[command(after_long_help = "Example:\n  leam genesis verify fed.genesis")]
    Verify(GenesisVerifyArgs),
}

/// Arguments of `leam genesis create`.
#[derive(Debug, clap::Args)]
pub struct GenesisCreateArgs {
    /// Output file (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Share of a startup's leases paid from the public funding pool, percent (0–100).
    #[arg(long)]
    pub subsidy_percent: u8,
    /// Votes of distinct members needed to admit a new member.
    #[arg(long)]
    pub threshold: u16,
    /// Founding members: `member.toml` files or node directories.
    #[arg(required = true)]
    pub members: Vec<PathBuf>,
    /// Print a JSON object (`federation`, `file`, `subsidy_percent`, `threshold`, `members`
    /// as in `genesis verify --json`) instead of the federation id.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `leam genesis sign`.
#[derive(Debug, clap::Args)]
pub struct GenesisSignArgs {
    /// Node directory whose key signs.
    #[arg(long)]
    pub dir: PathBuf,
    /// Genesis document.
    pub genesis: PathBuf,
    /// Print a JSON object (`federation`, `file`, `signed_by`, `signatures`,
    /// `subsidy_percent`, `threshold`, `members` as in `genesis verify --json`).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `leam genesis verify`.
#[derive(Debug, clap::Args)]
pub struct GenesisVerifyArgs {
    /// Genesis document.
    pub genesis: PathBuf,
    /// Print the result as JSON (`federation`, `subsidy_percent`, `threshold`, `members`
    /// with `organisation`, `sector`, `key`, `signed`).
    #[arg(long)]
    pub json: bool,
}

/// The JSON form of a genesis document shared by `genesis create|sign|verify --json`:
/// `federation`, `subsidy_percent`, `threshold`, `members` (each `organisation`, `sector`,
/// `key`, `signed`).
fn genesis_json(doc: &SignedGenesis) -> serde_json::Value {
    let signed = doc.signed_by();
    let members: Vec<_> = doc
        .genesis
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "organisation": m.organisation,
                "sector": m.sector.name(),
                "key": hex::encode(m.key),
                "signed": signed.contains(&m.key),
            })
        })
        .collect();
    serde_json::json!({
        "federation": hex::encode(doc.genesis.id()),
        "subsidy_percent": doc.genesis.subsidy_percent,
        "threshold": doc.genesis.threshold,
        "members": members,
    })
}

/// Runs `leam genesis …`.
pub fn genesis(cmd: GenesisCmd) -> Res<ExitCode> {
    match cmd {
        GenesisCmd::Create(a) => {
            let members = a
                .members
                .iter()
                .map(|p| read_member(p))
                .collect::<Res<Vec<_>>>()?;
            let g = Genesis::new(a.subsidy_percent, a.threshold, members).code(EXIT_INPUT)?;
            if a.out.exists() {
                return Err(fail(
                    EXIT_INPUT,
                    anyhow!("{} exists; refusing to overwrite it", a.out.display()),
                ));
            }
            let doc = SignedGenesis::unsigned(g.clone());
            write_atomic(&a.out, doc.encode().as_bytes(), 0o644)
                .with_context(|| format!("writing {}", a.out.display()))
                .code(EXIT_ENV)?;
            if a.json {
                let mut v = genesis_json(&doc);
                v["file"] = a.out.display().to_string().into();
                print_json(&v)?;
            } else {
                println!("{}", hex::encode(g.id()));
            }
            eprintln!(
                "wrote {} ({} founders); each founder now runs `leam genesis sign --dir DIR {}`",
                a.out.display(),
                g.members.len(),
                a.out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        GenesisCmd::Sign(a) => {
            let mut doc = read_genesis(&a.genesis)?;
            let id = Identity::load(&a.dir.join(KEY_FILE_NAME))
                .with_context(|| format!("node key in {}", a.dir.display()))
                .code(EXIT_INPUT)?;
            doc.sign(id.signing_key())
                .with_context(|| format!("signing {}", a.genesis.display()))
                .code(EXIT_INVALID)?;
            write_atomic(&a.genesis, doc.encode().as_bytes(), 0o644)
                .with_context(|| format!("writing {}", a.genesis.display()))
                .code(EXIT_ENV)?;
            let signatures = doc.genesis.members.len() - doc.missing_signatures().len();
            if a.json {
                let mut v = genesis_json(&doc);
                v["file"] = a.genesis.display().to_string().into();
                v["signed_by"] = hex::encode(id.public_key()).into();
                v["signatures"] = signatures.into();
                print_json(&v)?;
            }
            eprintln!(
                "signed; {signatures} of {} founders have signed",
                doc.genesis.members.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        GenesisCmd::Verify(a) => {
            let doc = read_genesis(&a.genesis)?;
            let signed = doc.signed_by();
            if a.json {
                print_json(&genesis_json(&doc))?;
            } else {
                println!("federation {}", hex::encode(doc.genesis.id()));
                println!(
                    "subsidy {}%, admission threshold {} votes",
                    doc.genesis.subsidy_percent, doc.genesis.threshold
                );
                for m in &doc.genesis.members {
                    println!(
                        "  {} {:<8} {} {}",
                        if signed.contains(&m.key) {
                            "signed "
                        } else {
                            "MISSING"
                        },
                        m.sector.name(),
                        hex::encode(m.key),
                        m.organisation
                    );
                }
            }
            doc.verify_complete()
                .with_context(|| format!("genesis {}", a.genesis.display()))
                .code(EXIT_INVALID)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// leam node

/// Arguments of `leam node`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Example:\n  leam node --dir nodes/a --genesis fed.genesis --bootstrap /ip4/127.0.0.1/tcp/7700/p2p/12D3Koo..."
)]
pub struct NodeArgs {
    /// Node directory (created by `leam init`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Genesis document of the federation (default: `genesis` in node.toml).
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// Member to dial at start (repeatable; added to node.toml's `bootstrap`).
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// libp2p listen address (repeatable; replaces node.toml's `listen`).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Control and web API address (replaces node.toml's `http`).
    #[arg(long)]
    pub http: Option<String>,
    /// Run although this node's key is neither a founder nor admitted yet: members refuse its
    /// connections until the genesis threshold of them ran `leam admit` for it (without this
    /// flag such a node exits with code 1).
    #[arg(long)]
    pub await_admission: bool,
    /// Print one JSON line on stdout once the node listens and its HTTP server accepts
    /// (`peer_id`, `listen`: the bound addresses with /p2p/<PeerId>, `http`: the bound
    /// address); nothing else goes to stdout.
    #[arg(long)]
    pub json: bool,
    /// Backend that runs leased shards and the referee's replays.
    #[arg(long, value_enum, default_value_t = crate::cli::Backend::Auto)]
    pub backend: crate::cli::Backend,
    /// For adversary tests and the demo only: falsify the result of the N-th shard run this
    /// process takes (0 = the first).
    #[arg(long, hide = true)]
    pub falsify_run: Option<u32>,
    /// For adversary tests only: hand back an earlier run's result for the N-th shard run this
    /// process takes, computing nothing (a lazy provider).
    #[arg(long, hide = true)]
    pub lazy_run: Option<u32>,
    /// Sell compute: once the network is up, measure this node's backend (kernel self-test, then
    /// a benchmark shard) and publish a signed offer at this price, cents per 1,000 compute
    /// units. Without it the node measures and offers nothing until `leam offer` asks.
    #[arg(long)]
    pub offer_price: Option<u64>,
    /// Minutes the start-up offer is valid.
    #[arg(long, default_value_t = 60, requires = "offer_price")]
    pub offer_minutes: u64,
}

/// `leam node --offer-price`: measure this node's backend and publish the offer
/// (`leam_jobs::offer`); a backend that fails its self-test offers nothing, loudly.
async fn offer_measured(
    dir: PathBuf,
    kernels: std::sync::Arc<dyn leam_compute::numerics::kernels::Kernels>,
    link: leam_jobs::link::Link,
    price: u64,
    minutes: u64,
) {
    let measured = tokio::task::spawn_blocking(move || {
        leam_jobs::offer::measure_into(&dir, kernels.as_ref(), now_ms())
    })
    .await;
    let m = match measured {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return tracing::error!(error = %e, "no offer published"),
        Err(e) => return tracing::error!(error = %e, "the measurement stopped; no offer published"),
    };
    let now = now_ms();
    let offer = leam_jobs::offer::offer(&m, now, price, now + minutes.saturating_mul(60_000));
    match link.append(leam_ledger::entry::Body::Offer(offer)).await {
        Ok(index) => tracing::info!(
            index,
            units_per_hour = m.units_per_hour,
            backend = %m.backend,
            price,
            "offer measured and published"
        ),
        Err(e) => tracing::error!(error = %e, "the offer was not recorded"),
    }
}

/// Runs `leam node` until SIGINT or SIGTERM.
pub fn node(a: NodeArgs) -> Res<ExitCode> {
    let file = read_node_file(&a.dir)?;
    let genesis_path = match (&a.genesis, &file.genesis) {
        (Some(g), _) => g.clone(),
        (None, Some(g)) => a.dir.join(g),
        (None, None) => {
            return Err(fail(
                EXIT_INPUT,
                anyhow!("no genesis: pass --genesis FILE or set `genesis` in {NODE_TOML}"),
            ))
        }
    };
    let genesis = complete_genesis(&genesis_path)?;
    let listen = parse_addrs(
        "listen",
        if a.listen.is_empty() {
            &file.listen
        } else {
            &a.listen
        },
    )?;
    let mut bootstrap = parse_addrs("bootstrap", &file.bootstrap)?;
    bootstrap.extend(parse_addrs("--bootstrap", &a.bootstrap)?);
    let http: SocketAddr = a
        .http
        .as_deref()
        .unwrap_or(&file.http)
        .parse()
        .map_err(|e| anyhow!("http address: {e}"))
        .code(EXIT_INPUT)?;
    let identity = Identity::load(&a.dir.join(KEY_FILE_NAME))
        .with_context(|| format!("node key in {}", a.dir.display()))
        .code(EXIT_INPUT)?;
    let seed = identity.signing_key().to_bytes();
    drop(identity);
    let threshold = genesis.threshold;
    let subsidy_percent = genesis.subsidy_percent;
    let served_genesis = genesis.clone();
    let core = match Core::open(&a.dir, genesis) {
        Ok(c) => c,
        Err(e) => {
            let locked = e.is_locked();
            return Err(fail(
                if locked { EXIT_ENV } else { EXIT_INPUT },
                anyhow!("opening {}: {e}", a.dir.display()),
            ));
        }
    };
    if !core.is_member(&core.key()) && !a.await_admission {
        return Err(fail(
            EXIT_INVALID,
            anyhow!(
                "this node's key {} is not in the genesis document {} and not admitted by {threshold} member votes; \
                 send {} to the members, or run with --await-admission to wait for their votes",
                hex::encode(core.key()),
                genesis_path.display(),
                a.dir.join(MEMBER_TOML).display()
            ),
        ));
    }
    if !core.is_member(&core.key()) {
        eprintln!(
            "warning: this node's key {} is not in the genesis document {} nor admitted yet; \
             members refuse its connections until {threshold} of them run `leam admit` for it",
            hex::encode(core.key()),
            genesis_path.display()
        );
    }
    let token = match read_token(&a.dir) {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let t = new_token();
            write_atomic(&a.dir.join(TOKEN_FILE), t.as_bytes(), 0o600)
                .map_err(|e| fail(EXIT_ENV, e.into()))?;
            t
        }
    };
    let kernels: std::sync::Arc<dyn leam_compute::numerics::kernels::Kernels> =
        std::sync::Arc::from(
            a.backend
                .open_isolated()
                .map_err(|e| fail(EXIT_ENV, anyhow!("opening the compute backend: {e:#}")))?,
        );
    let (falsify_run, lazy_run) = (a.falsify_run, a.lazy_run);
    let offer_at_start = a.offer_price.map(|p| (p, a.offer_minutes));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .code(EXIT_ENV)?;
    let dir = a.dir.clone();
    let json = a.json;
    rt.block_on(async move {
        let config = NetConfig {
            listen: listen.clone(),
            bootstrap,
            process_memory_bytes_max: leam_net::shell::PROCESS_MEMORY_BYTES_MAX,
        };
        let me = core.key();
        let sectors: std::collections::BTreeMap<_, _> =
            core.members().iter().map(|(k, m)| (*k, m.sector)).collect();
        let mut core = core;
        let provider = leam_jobs::provider::Provider::new(
            &dir,
            me,
            kernels.clone(),
            leam_jobs::provider::Faults {
                falsify_run,
                lazy_run,
            },
        );
        core.set_policy(crate::cli_market::policy(me, provider.clone()));
        let mut node = Node::new(core, &seed, &config).map_err(|e| match e {
            leam_net::shell::NetError::Listen { .. } => fail(EXIT_ENV, e.into()),
            e => fail(EXIT_INPUT, e.into()),
        })?;
        let bound = node
            .listening(listen.len())
            .await
            .map_err(|e| fail(EXIT_ENV, e.into()))?;
        let pid = node.peer_id();
        let lines: String = bound.iter().map(|a| format!("{a}/p2p/{pid}\n")).collect();
        write_atomic(&dir.join(LISTEN_ADDRS_FILE), lines.as_bytes(), 0o644)
            .map_err(|e| fail(EXIT_ENV, e.into()))?;
        let listener = tokio::net::TcpListener::bind(http)
            .await
            .map_err(|e| fail(EXIT_ENV, anyhow!("HTTP server on {http}: {e}")))?;
        let http_bound = listener
            .local_addr()
            .map_err(|e| fail(EXIT_ENV, e.into()))?;
        let (tx, rx) = mpsc::channel(leam_net::shell::COMMAND_QUEUE_MAX);
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::cli_market::run(
            me,
            tx.clone(),
            shutdown.clone(),
            crate::cli_market::JobsContext {
                dir: dir.clone(),
                kernels: kernels.clone(),
                sectors,
                subsidy_percent,
            },
        ));
        let (work_tx, work_rx) = mpsc::channel(leam_net::work::WORK_INBOUND_QUEUE_MAX);
        node.serve_work(work_tx);
        let blobs = leam_jobs::blobs::Blobs::new(&dir);
        tokio::spawn(leam_jobs::serve::serve(
            work_rx,
            leam_jobs::link::Link::new(tx.clone()),
            blobs.clone(),
            provider,
            leam_jobs::referee::Referee::new(me, blobs, kernels.clone()),
        ));
        let offer_commands = tx.clone();
        let app = crate::live::app(crate::live::Server {
            live: node.live(),
            genesis: served_genesis,
            token,
            commands: tx,
            shutdown: shutdown.clone(),
            dir: dir.clone(),
            kernels: kernels.clone(),
        })
        .into_make_service_with_connect_info::<SocketAddr>();
        let stop_http = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop_http.cancelled().await })
                .await
        });
        // Written once the server is about to accept: clients find it ready.
        write_atomic(
            &dir.join(HTTP_ADDR_FILE),
            http_bound.to_string().as_bytes(),
            0o644,
        )
        .map_err(|e| fail(EXIT_ENV, e.into()))?;
        eprintln!(
            "leam node {pid} listening on {}; web and API http://{http_bound}/ (report: /report)",
            bound
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        if json {
            // One line, so that a supervisor reads it with one `readline`. Stdout failing
            // (its reader gone) does not stop the node: the same facts are in its files.
            let line = serde_json::json!({
                "peer_id": pid.to_string(),
                "listen": lines.lines().collect::<Vec<_>>(),
                "http": http_bound.to_string(),
            });
            if let Err(e) = crate::cli::write_stdout(format!("{line}\n").as_bytes()) {
                if !crate::cli::is_stdout_closed(&e) {
                    eprintln!("warning: the start line was not written: {e:#}");
                }
            }
        }
        let stop_node = shutdown.clone();
        let mut node_task = tokio::spawn(node.run(rx, async move {
            stop_node.cancelled().await;
        }));
        if let Some((price, minutes)) = offer_at_start {
            tokio::spawn(offer_measured(
                dir.clone(),
                kernels.clone(),
                leam_jobs::link::Link::new(offer_commands),
                price,
                minutes,
            ));
        }
        // The node stops by itself only on an error (no bootstrap member reachable).
        let early = tokio::select! {
            signal = shutdown_signal() => {
                eprintln!("{signal}: stopping (no new work; the log is durable)");
                None
            }
            ended = &mut node_task => Some(ended),
        };
        shutdown.cancel();
        if let Some(ended) = early {
            let _ = server.await;
            let _ = std::fs::remove_file(dir.join(HTTP_ADDR_FILE));
            return match ended {
                Ok(Ok(())) => Ok(ExitCode::SUCCESS),
                Ok(Err(e)) => Err(fail(EXIT_ENV, e.into())),
                Err(e) => Err(fail(EXIT_ENV, e.into())),
            };
        }
        let deadline = Duration::from_millis(SHUTDOWN_MS_MAX - 1_000);
        match tokio::time::timeout(deadline, async {
            let n = node_task.await;
            let _ = server.await;
            n
        })
        .await
        {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                let _ = std::fs::remove_file(dir.join(HTTP_ADDR_FILE));
                return Err(fail(EXIT_ENV, e.into()));
            }
            Ok(Err(e)) => return Err(fail(EXIT_ENV, e.into())),
            Err(_) => eprintln!("shutdown took longer than {deadline:?}; exiting anyway"),
        }
        let _ = std::fs::remove_file(dir.join(HTTP_ADDR_FILE));
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

// ---------------------------------------------------------------------------------------------
// leam peers, leam admit (clients of the node's HTTP API)

pub(crate) fn control_url(dir: &Path, path: &str) -> Res<String> {
    let file = dir.join(HTTP_ADDR_FILE);
    let addr = std::fs::read_to_string(&file)
        .map_err(|_| {
            anyhow!(
                "no running node in {}: {} is missing (start it with `leam node --dir {}`)",
                dir.display(),
                file.display(),
                dir.display()
            )
        })
        .code(EXIT_ENV)?;
    Ok(format!("http://{}{path}", addr.trim()))
}

pub(crate) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(CONTROL_TIMEOUT_MS)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// Arguments of `leam peers`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Example:\n  leam peers --dir nodes/a --json")]
pub struct PeersArgs {
    /// Node directory of the running node.
    #[arg(long)]
    pub dir: PathBuf,
    /// Print a JSON array of objects with `peer_id`, `member_key`, `organisation`, `sector`,
    /// `addresses`, `rtt_ms`.
    #[arg(long)]
    pub json: bool,
}

/// Runs `leam peers`.
pub fn peers(a: PeersArgs) -> Res<ExitCode> {
    let url = control_url(&a.dir, "/api/peers")?;
    let mut resp = agent()
        .get(&url)
        .call()
        .map_err(|e| anyhow!("asking the node at {url}: {e}"))
        .code(EXIT_ENV)?;
    let peers: Vec<PeerInfo> = resp
        .body_mut()
        .read_json()
        .map_err(|e| anyhow!("node answered {url} with something else than peers: {e}"))
        .code(EXIT_ENV)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&peers).map_err(|e| fail(EXIT_ENV, e.into()))?
        );
    } else {
        println!("{} members connected", peers.len());
        for p in &peers {
            println!(
                "{}  {:<8} {:<28} rtt {:>7}  {}",
                p.peer_id,
                p.sector,
                p.organisation,
                p.rtt_ms
                    .map(|r| format!("{r:.2} ms"))
                    .unwrap_or_else(|| "-".into()),
                p.addresses.join(" ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `leam admit`.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Example:\n  leam admit --dir nodes/a --genesis fed.genesis nodes/e/member.toml"
)]
pub struct AdmitArgs {
    /// Node directory of the running node that votes.
    #[arg(long)]
    pub dir: PathBuf,
    /// Genesis document of the federation.
    #[arg(long)]
    pub genesis: PathBuf,
    /// The new member: its `member.toml` or node directory.
    pub member: PathBuf,
    /// Print a JSON object (`member`, `organisation`, `index`, `threshold`) instead of the
    /// sentence.
    #[arg(long)]
    pub json: bool,
}

/// Runs `leam admit`.
pub fn admit(a: AdmitArgs) -> Res<ExitCode> {
    let genesis = complete_genesis(&a.genesis)?;
    let m = read_member(&a.member)?;
    if genesis.founder(&m.key).is_some() {
        return Err(fail(
            EXIT_INPUT,
            anyhow!(
                "{} is a founder of this federation already",
                hex::encode(m.key)
            ),
        ));
    }
    let identity = Identity::load(&a.dir.join(KEY_FILE_NAME))
        .with_context(|| format!("node key in {}", a.dir.display()))
        .code(EXIT_INPUT)?;
    let key = identity.public_key();
    let token = read_token(&a.dir)?;
    let url = control_url(&a.dir, "/api/admissions")?;
    let body = Body::Admission(Admission {
        organisation: m.organisation.clone(),
        sector: m.sector,
        member: m.key,
    });
    let (mut next, mut last_ms) = log_tail(&a.dir, &key)?;
    for attempt in 1..=ADMIT_ATTEMPTS_MAX {
        let entry = Entry::sign(
            identity.signing_key(),
            next,
            now_ms().max(last_ms),
            body.clone(),
        );
        let mut resp = agent()
            .post(&url)
            .header("Authorization", &format!("Bearer {token}"))
            .send_json(serde_json::json!({ "entry_hex": hex::encode(entry.encode()) }))
            .map_err(|e| anyhow!("asking the node at {url}: {e}"))
            .code(EXIT_ENV)?;
        let status = resp.status();
        let answer: serde_json::Value = resp.body_mut().read_json().unwrap_or_default();
        let error = answer
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("")
            .to_string();
        if status.is_success() {
            let index = answer.get("index").and_then(|e| e.as_u64()).unwrap_or(next);
            let line = format!(
                "vote recorded as entry {index} of this node's log; {} votes of members admit {}",
                genesis.threshold, m.organisation
            );
            if a.json {
                print_json(&serde_json::json!({
                    "member": hex::encode(m.key),
                    "organisation": m.organisation,
                    "index": index,
                    "threshold": genesis.threshold,
                }))?;
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        // Another write took the index meanwhile: sign again for the one the node expects.
        if status.as_u16() == 409 && expected_index(&error).is_some() {
            tracing::debug!(attempt, %error, "the next index was taken meanwhile; signing again");
            (next, last_ms) = log_tail(&a.dir, &key)?;
            continue;
        }
        return Err(fail(
            if status.as_u16() == 409 {
                EXIT_INVALID
            } else {
                EXIT_ENV
            },
            anyhow!("node refused the vote ({status}): {error}"),
        ));
    }
    Err(fail(
        EXIT_ENV,
        anyhow!("other writes took the next index of the node's log {ADMIT_ATTEMPTS_MAX} times in a row; try again"),
    ))
}

/// The index named by a refusal "…, expected the next index N".
fn expected_index(error: &str) -> Option<u64> {
    error
        .rsplit_once("expected the next index ")
        .and_then(|(_, n)| {
            n.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse().ok())
        })
}

/// The running node's own log, from its API: (its size, the last entry's timestamp in ms).
fn log_tail(dir: &Path, key: &PublicKey) -> Res<(u64, u64)> {
    let page = |start: Option<u64>| -> Res<serde_json::Value> {
        let url = control_url(
            dir,
            &format!(
                "/api/logs/{}/entries?limit=1{}",
                hex::encode(key),
                start.map(|s| format!("&start={s}")).unwrap_or_default()
            ),
        )?;
        let mut resp = agent()
            .get(&url)
            .call()
            .map_err(|e| anyhow!("asking the node at {url}: {e}"))
            .code(EXIT_ENV)?;
        if !resp.status().is_success() {
            return Err(fail(
                EXIT_ENV,
                anyhow!("node answered {url} with {}", resp.status()),
            ));
        }
        resp.body_mut()
            .read_json()
            .map_err(|e| anyhow!("node answered {url} with something else than entries: {e}"))
            .code(EXIT_ENV)
    };
    let size = page(None)?["size"]
        .as_u64()
        .ok_or_else(|| anyhow!("the node's entry page has no size"))
        .code(EXIT_ENV)?;
    if size == 0 {
        return Ok((0, 0));
    }
    let last = page(Some(size - 1))?;
    let ts = last["entries"][0]["entry"]["timestamp_ms"]
        .as_u64()
        .ok_or_else(|| anyhow!("the node's last entry has no timestamp_ms"))
        .code(EXIT_ENV)?;
    Ok((size, ts))
}
