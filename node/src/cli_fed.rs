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
use leam_ledger::entry::{Entry, Kind, PublicKey, Sector};
use leam_ledger::genesis::{Founder, Genesis, SignedGenesis, GENESIS_BYTES_MAX};
use leam_ledger::identity::Identity;
use leam_ledger::log::{Log, KEY_FILE_NAME};
use leam_net::core::Core;
use leam_net::shell::{peer_id_of, Command as NodeCommand, NetConfig, Node, PeerInfo};
use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The node's configuration file in its directory.
pub const NODE_TOML: &str = "node.toml";
/// The member file a founder sends to the others.
pub const MEMBER_TOML: &str = "member.toml";
/// The secret token file authenticating the operator's commands to the running node.
pub const TOKEN_FILE: &str = "control.token";
/// Written by a running node: its control API address.
pub const HTTP_ADDR_FILE: &str = "http.addr";
/// Written by a running node: its libp2p listen addresses with `/p2p/<PeerId>`, one a line.
pub const LISTEN_ADDRS_FILE: &str = "listen.addrs";
/// Largest config, member or token file read.
pub const CONFIG_BYTES_MAX: u64 = 64 * 1024;
/// Largest control request body.
pub const CONTROL_BODY_BYTES_MAX: usize = 16 * 1024;
/// After SIGINT/SIGTERM the node exits within this time, whatever is in flight.
pub const SHUTDOWN_MS_MAX: u64 = 10_000;
/// Timeout of a control API call from the CLI.
pub const CONTROL_TIMEOUT_MS: u64 = 10_000;
/// Default control API address: loopback, any free port (written to `DIR/http.addr`).
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
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
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
    #[arg(long, value_parser = ["public", "private", "science", "startup"])]
    pub sector: String,
    /// libp2p listen address (repeatable). Default: /ip4/127.0.0.1/tcp/0 and
    /// /ip4/127.0.0.1/udp/0/quic-v1 (loopback, free ports).
    #[arg(long)]
    pub listen: Vec<String>,
    /// Control and web API address.
    #[arg(long, default_value = HTTP_DEFAULT)]
    pub http: String,
}

/// Runs `leam init`.
pub fn init(a: InitArgs) -> Res<ExitCode> {
    let sector: Sector = a
        .sector
        .parse()
        .map_err(|e: String| anyhow!(e))
        .code(EXIT_INPUT)?;
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
    println!("{pid}");
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
}

/// Arguments of `leam genesis sign`.
#[derive(Debug, clap::Args)]
pub struct GenesisSignArgs {
    /// Node directory whose key signs.
    #[arg(long)]
    pub dir: PathBuf,
    /// Genesis document.
    pub genesis: PathBuf,
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
            println!("{}", hex::encode(g.id()));
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
            let missing = doc.missing_signatures();
            eprintln!(
                "signed; {} of {} founders have signed",
                doc.genesis.members.len() - missing.len(),
                doc.genesis.members.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        GenesisCmd::Verify(a) => {
            let doc = read_genesis(&a.genesis)?;
            let signed = doc.signed_by();
            if a.json {
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
                println!(
                    "{}",
                    serde_json::json!({
                        "federation": hex::encode(doc.genesis.id()),
                        "subsidy_percent": doc.genesis.subsidy_percent,
                        "threshold": doc.genesis.threshold,
                        "members": members,
                    })
                );
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
}

#[derive(Clone)]
struct Control {
    commands: mpsc::Sender<NodeCommand>,
    token: std::sync::Arc<String>,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .code(EXIT_ENV)?;
    let dir = a.dir.clone();
    rt.block_on(async move {
        let config = NetConfig {
            listen: listen.clone(),
            bootstrap,
            process_memory_bytes_max: leam_net::shell::PROCESS_MEMORY_BYTES_MAX,
        };
        let me = core.key();
        let mut core = core;
        core.set_policy(crate::cli_market::policy(me));
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
            .map_err(|e| fail(EXIT_ENV, anyhow!("control API on {http}: {e}")))?;
        let http_bound = listener
            .local_addr()
            .map_err(|e| fail(EXIT_ENV, e.into()))?;
        write_atomic(
            &dir.join(HTTP_ADDR_FILE),
            http_bound.to_string().as_bytes(),
            0o644,
        )
        .map_err(|e| fail(EXIT_ENV, e.into()))?;
        let (tx, rx) = mpsc::channel(leam_net::shell::COMMAND_QUEUE_MAX);
        let control = Control {
            commands: tx,
            token: std::sync::Arc::new(token),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(crate::cli_market::run(
            me,
            control.commands.clone(),
            stop_rx.clone(),
        ));
        let app = control_router(control);
        let mut stop_http = stop_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_http.changed().await;
                })
                .await
        });
        eprintln!(
            "leam node {pid} listening on {}; control API http://{http_bound}",
            bound
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut stop_node = stop_rx;
        let mut node_task = tokio::spawn(node.run(rx, async move {
            let _ = stop_node.changed().await;
        }));
        // The node stops by itself only on an error (no bootstrap member reachable).
        let early = tokio::select! {
            signal = shutdown_signal() => {
                eprintln!("{signal}: stopping (no new work; the log is durable)");
                None
            }
            ended = &mut node_task => Some(ended),
        };
        let _ = stop_tx.send(true);
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
// The control API (read: peers, status; write with the token: admissions)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdmitRequest {
    member: String,
    organisation: String,
    sector: String,
}

fn control_router(control: Control) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/api/peers", get(api_peers))
        .route("/api/status", get(api_status))
        .route("/api/admissions", post(api_admit))
        .route("/api/market/jobs", get(api_jobs))
        .route("/api/deposits", post(api_submit))
        .route("/api/offers", post(api_submit))
        .route("/api/jobs", post(api_submit))
        .route("/api/bids", post(api_submit))
        .layer(axum::extract::DefaultBodyLimit::max(CONTROL_BODY_BYTES_MAX))
        .with_state(control)
}

type ApiError = (axum::http::StatusCode, axum::Json<serde_json::Value>);

fn api_error(status: axum::http::StatusCode, msg: impl Into<String>) -> ApiError {
    (
        status,
        axum::Json(serde_json::json!({ "error": msg.into() })),
    )
}

async fn ask<T>(
    c: &Control,
    make: impl FnOnce(oneshot::Sender<T>) -> NodeCommand,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    c.commands.send(make(tx)).await.map_err(|_| {
        api_error(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "node is stopping",
        )
    })?;
    rx.await.map_err(|_| {
        api_error(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "node is stopping",
        )
    })
}

async fn api_peers(
    axum::extract::State(c): axum::extract::State<Control>,
) -> Result<axum::Json<Vec<PeerInfo>>, ApiError> {
    Ok(axum::Json(ask(&c, NodeCommand::Peers).await?))
}

async fn api_status(
    axum::extract::State(c): axum::extract::State<Control>,
) -> Result<axum::Json<leam_net::shell::Status>, ApiError> {
    Ok(axum::Json(ask(&c, NodeCommand::Status).await?))
}

/// Compare secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /api/deposits|offers|jobs|bids` on the control API: `{"entry_hex": ...}`, an entry
/// signed with this node's key (proof the caller holds it, besides the token) whose kind
/// matches the route; the node appends its body as its next entry (the node assigns index and
/// time, so concurrent writers never race for an index).
async fn api_submit(
    axum::extract::State(c): axum::extract::State<Control>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    use axum::http::StatusCode;
    authorize(&c, &headers)?;
    let expected = match uri.path() {
        "/api/deposits" => Kind::Deposit,
        "/api/offers" => Kind::Offer,
        "/api/jobs" => Kind::Job,
        _ => Kind::Bid,
    };
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SubmitRequest {
        entry_hex: String,
    }
    let req: SubmitRequest = serde_json::from_slice(&body)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let bytes = hex::decode(req.entry_hex.trim())
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("entry_hex: {e}")))?;
    let entry = Entry::decode(&bytes)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("entry: {e}")))?;
    if entry.kind() != expected {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            format!(
                "{} takes {} entries, found a {} entry",
                uri.path(),
                expected.name(),
                entry.kind().name()
            ),
        ));
    }
    entry
        .verify()
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("signature: {e}")))?;
    let me = ask(&c, NodeCommand::Status).await?.member_key;
    if hex::encode(entry.author) != me {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "the entry must be signed with this node's key",
        ));
    }
    let result = ask(&c, |reply| NodeCommand::Append {
        body: Box::new(entry.body),
        reply,
    })
    .await?;
    match result {
        Ok(index) => Ok(axum::Json(serde_json::json!({ "log": me, "index": index }))),
        Err(e) => Err(api_error(StatusCode::CONFLICT, e)),
    }
}

/// `GET /api/market/jobs`: this node's jobs as a bidder and where each stands
/// (`leam_market::flow::job_statuses`).
async fn api_jobs(
    axum::extract::State(c): axum::extract::State<Control>,
) -> Result<axum::Json<Vec<leam_market::flow::JobStatus>>, ApiError> {
    let me = ask(&c, NodeCommand::Status).await?.member_key;
    let mut key: PublicKey = [0; 32];
    hex::decode_to_slice(&me, &mut key).map_err(|_| {
        api_error(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "node key unreadable",
        )
    })?;
    let logs = ask(&c, NodeCommand::Logs)
        .await?
        .map_err(|e| api_error(axum::http::StatusCode::SERVICE_UNAVAILABLE, e))?;
    Ok(axum::Json(leam_market::flow::job_statuses(
        &key,
        &logs,
        now_ms(),
    )))
}

fn authorize(c: &Control, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    use axum::http::StatusCode;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| api_error(StatusCode::UNAUTHORIZED, "missing `Authorization: Bearer <token>` (the token is in the node directory's control.token)"))?;
    if !same_secret(given.as_bytes(), c.token.as_bytes()) {
        return Err(api_error(StatusCode::FORBIDDEN, "wrong control token"));
    }
    Ok(())
}

async fn api_admit(
    axum::extract::State(c): axum::extract::State<Control>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    use axum::http::StatusCode;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| api_error(StatusCode::UNAUTHORIZED, "missing `Authorization: Bearer <token>` (the token is in the node directory's control.token)"))?;
    if !same_secret(given.as_bytes(), c.token.as_bytes()) {
        return Err(api_error(StatusCode::FORBIDDEN, "wrong control token"));
    }
    let req: AdmitRequest = serde_json::from_slice(&body)
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let mut member: PublicKey = [0; 32];
    hex::decode_to_slice(&req.member, &mut member).map_err(|_| {
        api_error(
            StatusCode::BAD_REQUEST,
            format!(
                "field member: expected 64 hex digits, found {:?}",
                req.member
            ),
        )
    })?;
    let sector: Sector = req
        .sector
        .parse()
        .map_err(|e: String| api_error(StatusCode::BAD_REQUEST, format!("field sector: {e}")))?;
    let result = ask(&c, |reply| NodeCommand::Admit {
        member,
        organisation: req.organisation.clone(),
        sector,
        reply,
    })
    .await?;
    match result {
        Ok(index) => Ok(axum::Json(serde_json::json!({ "entry": index }))),
        Err(e) => Err(api_error(StatusCode::CONFLICT, e)),
    }
}

// ---------------------------------------------------------------------------------------------
// leam peers, leam admit (clients of the control API)

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
    let url = control_url(&a.dir, "/api/admissions")?;
    let token = read_token(&a.dir)?;
    let mut resp = agent()
        .post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(serde_json::json!({
            "member": hex::encode(m.key),
            "organisation": m.organisation,
            "sector": m.sector.name(),
        }))
        .map_err(|e| anyhow!("asking the node at {url}: {e}"))
        .code(EXIT_ENV)?;
    let status = resp.status();
    let body: serde_json::Value = resp.body_mut().read_json().unwrap_or_default();
    if !status.is_success() {
        return Err(fail(
            if status.as_u16() == 409 {
                EXIT_INVALID
            } else {
                EXIT_ENV
            },
            anyhow!(
                "node refused the vote ({status}): {}",
                body.get("error").and_then(|e| e.as_str()).unwrap_or("")
            ),
        ));
    }
    println!(
        "vote recorded as entry {} of this node's log; {} votes of members admit {}",
        body.get("entry").and_then(|e| e.as_u64()).unwrap_or(0),
        genesis.threshold,
        m.organisation
    );
    Ok(ExitCode::SUCCESS)
}
