//! The thin async shell: a libp2p swarm (TCP + Noise + Yamux, QUIC; identify, ping, Kademlia,
//! gossipsub, request-response, allow/block lists, connection and memory limits) that feeds
//! network events into [`Core`] and carries out its [`Action`]s. Membership is enforced at the
//! connection by the allow-list: a peer whose key is not a member is dropped right after the
//! handshake, before any protocol runs.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use leam_ledger::entry::{PublicKey, Sector};
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, identify, kad, memory_connection_limits, noise, ping, tcp,
    yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::core::{Acceptance, Action, Core, CoreError, LogStatus, Stats};
use crate::live::Live;
use crate::wire::{
    self, Request, Response, CONCURRENT_STREAMS_MAX, GOSSIP_BYTES_MAX, REQUEST_BYTES_MAX,
    REQUEST_TIMEOUT_MS, RESPONSE_BYTES_MAX,
};
use crate::work::{
    self, Inbound, WorkRequest, WorkResponse, WORK_OUTBOUND_MAX, WORK_REQUEST_BYTES_MAX,
    WORK_REQUEST_TIMEOUT_MS, WORK_RESPONSE_BYTES_MAX,
};

/// Established connections a node keeps at most (all peers together).
pub const CONNECTIONS_MAX: u32 = 512;
/// Established connections per peer.
pub const CONNECTIONS_PER_PEER_MAX: u32 = 2;
/// Connections being set up at once, each direction.
pub const PENDING_CONNECTIONS_MAX: u32 = 128;
/// New connections are refused once the process uses this much memory.
pub const PROCESS_MEMORY_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Idle connections between members stay open this long.
pub const IDLE_CONNECTION_TIMEOUT_MS: u64 = 300_000;
/// A node given bootstrap members stops with [`NetError::Bootstrap`] if none of them is
/// reachable this long after start (a node that awaits its admission keeps trying).
pub const BOOTSTRAP_TIMEOUT_MS: u64 = 10_000;
/// Period of [`Core::tick`] and of re-dialling members that are not connected.
pub const TICK_MS: u64 = 1_000;
/// Proposals awaiting a countersignature at most.
pub const PROPOSALS_MAX: usize = 256;
/// Operator commands queued at most.
pub const COMMAND_QUEUE_MAX: usize = 64;
/// A member that is not connected is looked up in the DHT at most this often.
pub const LOOKUP_INTERVAL_MS: u64 = 2_000;
/// DHT lookups started per tick at most.
pub const LOOKUPS_PER_TICK_MAX: usize = 16;
/// Gossipsub heartbeat.
pub const GOSSIP_HEARTBEAT_MS: u64 = 700;
/// Gossipsub mesh degree (D): peers a node forwards each message to.
pub const GOSSIP_MESH_N: usize = 2;
/// Below this many mesh peers the heartbeat grafts more (D_low).
pub const GOSSIP_MESH_N_LOW: usize = 1;
/// Above this many mesh peers the heartbeat prunes (D_high).
pub const GOSSIP_MESH_N_HIGH: usize = 4;
/// Outbound mesh peers kept at least (D_out, below D_low and at most D/2).
pub const GOSSIP_MESH_OUTBOUND_MIN: usize = 1;
/// Peers outside the mesh told of recent messages at each heartbeat (D_lazy).
pub const GOSSIP_LAZY: usize = 4;

/// Errors of building and running the swarm.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The core.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A listen address could not be bound (port in use, bad address).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// Address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// libp2p set-up.
    #[error("network set-up: {0}")]
    Setup(String),
    /// No bootstrap member could be reached in time.
    #[error(
        "no bootstrap member reachable within {waited_ms} ms ({addrs}); last error: {last_error}"
    )]
    Bootstrap {
        /// The bootstrap addresses.
        addrs: String,
        /// How long the node tried.
        waited_ms: u64,
        /// The last dial error.
        last_error: String,
    },
}

/// Network settings of a node (from `node.toml` and flags).
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0`, `/ip4/127.0.0.1/udp/0/quic-v1`, …).
    pub listen: Vec<Multiaddr>,
    /// Members to dial at start.
    pub bootstrap: Vec<Multiaddr>,
    /// New connections are refused while the process uses more memory than this
    /// ([`PROCESS_MEMORY_BYTES_MAX`] for a node; a simulation of many nodes in one process
    /// raises it).
    pub process_memory_bytes_max: usize,
}

/// A connected member as `leam peers` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerInfo {
    /// libp2p PeerId.
    pub peer_id: String,
    /// Ledger key, hex.
    pub member_key: String,
    /// Organisation.
    pub organisation: String,
    /// Sector.
    pub sector: String,
    /// Addresses: the connected endpoint first, then the listen addresses it announced.
    pub addresses: Vec<String>,
    /// Last ping round trip, milliseconds.
    pub rtt_ms: Option<f64>,
}

/// What the node reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// PeerId.
    pub peer_id: String,
    /// Ledger key hex.
    pub member_key: String,
    /// Federation id hex.
    pub federation: String,
    /// Listen addresses.
    pub listen: Vec<String>,
    /// Members known (founders and admitted).
    pub members: usize,
    /// Logs held.
    pub logs: Vec<LogStatus>,
    /// Counters of the core.
    pub stats: Stats,
    /// Connections refused because the peer is not a member.
    pub refused_non_members: u64,
}

/// An operator command for a running node.
#[derive(Debug)]
pub enum Command {
    /// Connected members.
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// The node's status.
    Status(oneshot::Sender<Status>),
    /// Every log this node holds, decoded, by key ([`crate::core::Core::decoded_logs`]).
    Logs(oneshot::Sender<Result<BTreeMap<PublicKey, Vec<leam_ledger::entry::Entry>>, String>>),
    /// Append a signed entry with this body to the own log and announce it.
    Append {
        /// Body.
        body: Box<leam_ledger::entry::Body>,
        /// Index of the entry, or why not.
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Append an entry signed elsewhere with this node's key (the operator's CLI or a client
    /// of the web API holding the control token) to the own log and announce it; refused
    /// unless it is this node's, the next index, not older than the last entry, validly signed
    /// and allowed by the log rules (`Core::submit`).
    Submit {
        /// The entry.
        entry: Box<leam_ledger::entry::Entry>,
        /// Index of the entry, or why not (naming what was expected and found).
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Propose a co-signed fact (lease, receipt, settlement) to its other party; both record
    /// it once the other party agrees and countersigns.
    Propose {
        /// The fact.
        fact: Box<crate::core::Fact>,
        /// This node's entry index of its copy, or why not.
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Send a work request (`/leam/shard/1.0.0`) to a member and return its answer.
    Work {
        /// The member.
        to: PublicKey,
        /// The request.
        request: Box<WorkRequest>,
        /// The answer (checked against the limits), or why none came.
        reply: oneshot::Sender<Result<WorkResponse, String>>,
    },
    /// Vote to admit a member.
    Admit {
        /// Key.
        member: PublicKey,
        /// Organisation.
        organisation: String,
        /// Sector.
        sector: Sector,
        /// Index of the vote entry, or why not.
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

/// What the shell saw, for simulations and benchmarks.
#[derive(Debug, Clone)]
pub enum Observed {
    /// A gossip checkpoint of `log` with `size` was accepted.
    Checkpoint {
        /// Log owner.
        log: PublicKey,
        /// Size.
        size: u64,
        /// When.
        at: Instant,
    },
    /// This node published its checkpoint of `size` (the start of a propagation measurement).
    Published {
        /// Log owner (this node).
        log: PublicKey,
        /// Size.
        size: u64,
        /// When.
        at: Instant,
    },
    /// A replica of `log` reached `size`.
    Replicated {
        /// Log owner.
        log: PublicKey,
        /// Size.
        size: u64,
        /// When.
        at: Instant,
    },
}

/// The composed behaviour.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    allow: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    block: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    memory: memory_connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    log: request_response::cbor::Behaviour<Request, Response>,
    work: request_response::cbor::Behaviour<WorkRequest, WorkResponse>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Behaviour")
    }
}

/// The PeerId of a ledger key.
pub fn peer_id_of(key: &PublicKey) -> Option<PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// The ledger key of a PeerId, read from the PeerId itself (an ed25519 PeerId is the identity
/// multihash of the protobuf-encoded public key); `None` for any other kind of PeerId.
pub fn key_of_peer(peer: &PeerId) -> Option<PublicKey> {
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(pk.try_into_ed25519().ok()?.to_bytes())
}

/// The libp2p keypair of a ledger seed (the same 32-byte RFC 8032 seed; one key, one identity).
pub fn keypair_of(seed: &[u8; 32]) -> Result<Keypair, NetError> {
    let mut copy = *seed; // ed25519_from_bytes zeroizes its argument
    Keypair::ed25519_from_bytes(&mut copy).map_err(|e| NetError::Setup(e.to_string()))
}

/// Run `f`, a handler that may write the store durably, without holding up the other tasks of
/// this worker thread: `block_in_place` on a multi-threaded runtime (nodes, the simulation);
/// directly on a current-thread runtime (where `block_in_place` panics, e.g. `#[tokio::test]`).
fn off_worker<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn gossip_config() -> Result<gossipsub::Config, NetError> {
    gossipsub::ConfigBuilder::default()
        .validate_messages()
        // Every payload carries its own signature (a checkpoint signed by its log's owner, an
        // entry signed by its author), so the envelope is unsigned, as Ethereum's consensus
        // gossip does (StrictNoSign): no author, no sequence number, and no ed25519
        // verification of every duplicate copy a node receives from its mesh.
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .heartbeat_interval(Duration::from_millis(GOSSIP_HEARTBEAT_MS))
        // The publisher floods every member (`flood_publish`, the default), so the mesh only
        // backs it up (with the pull on connection and the anti-entropy tick): a smaller mesh
        // than gossipsub's default (6, 5..12) cuts the duplicate copies every node encodes and
        // decodes (64 simulated nodes on 2 cores: propagation p50 10.6 ms with D 4 against
        // 12.3 ms with D 6; 7.7–8.2 ms with D 2 against 8.7–10.3 ms with D 4).
        .mesh_n(GOSSIP_MESH_N)
        .mesh_n_low(GOSSIP_MESH_N_LOW)
        .mesh_n_high(GOSSIP_MESH_N_HIGH)
        .mesh_outbound_min(GOSSIP_MESH_OUTBOUND_MIN)
        .gossip_lazy(GOSSIP_LAZY)
        .max_transmit_size(GOSSIP_BYTES_MAX + 1024)
        // Content-addressed ids: the same message published twice (a replay) is a duplicate.
        .message_id_fn(|m: &gossipsub::Message| {
            gossipsub::MessageId::from(Sha256::digest(&m.data).to_vec())
        })
        .build()
        .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))
}

fn score_params(
    topic: &IdentTopic,
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    // Membership is enforced at the connection, and partners may run several nodes behind one
    // address (or, in tests and simulations, all on loopback): IP colocation says nothing here.
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    let topic_params = gossipsub::TopicScoreParams {
        invalid_message_deliveries_weight: -100.0,
        invalid_message_deliveries_decay: 0.5,
        ..Default::default()
    };
    params.topics.insert(topic.hash(), topic_params);
    (params, gossipsub::PeerScoreThresholds::default())
}

/// A running node: the swarm and the core.
pub struct Node {
    swarm: Swarm<Behaviour>,
    core: Core,
    topic: IdentTopic,
    keys: HashMap<PeerId, PublicKey>,
    rtt: HashMap<PeerId, Duration>,
    endpoints: HashMap<PeerId, Multiaddr>,
    announced: HashMap<PeerId, Vec<Multiaddr>>,
    pending: HashMap<request_response::OutboundRequestId, (PublicKey, Request)>,
    proposals: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<u64, String>>>,
    bootstrap: Vec<Multiaddr>,
    lookups: HashMap<PeerId, Instant>,
    bootstrapped: bool,
    last_dial_error: String,
    refused_non_members: u64,
    observer: Option<mpsc::UnboundedSender<Observed>>,
    live: Option<Live>,
    work_handler: Option<mpsc::Sender<Inbound>>,
    work_pending:
        HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<WorkResponse, String>>>,
    work_replies: futures::stream::FuturesUnordered<
        futures::future::BoxFuture<
            'static,
            (
                request_response::ResponseChannel<WorkResponse>,
                WorkResponse,
            ),
        >,
    >,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Build the swarm for `core` with the node's key seed, and start listening.
    pub fn new(core: Core, seed: &[u8; 32], config: &NetConfig) -> Result<Node, NetError> {
        let keypair = keypair_of(seed)?;
        let topic = IdentTopic::new(wire::topic(&core.federation_id()));
        let fed = hex::encode(core.federation_id());
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| NetError::Setup(e.to_string()))?
            .with_quic()
            // In-process transport (`/memory/<n>`), for simulations of many nodes in one
            // process: the same Noise and yamux upgrades as TCP, without the kernel's sockets.
            // A node listens on it only when its configuration names such an address.
            .with_other_transport(|key| {
                use libp2p::core::upgrade::Version;
                use libp2p::Transport as _;
                Ok(libp2p::core::transport::MemoryTransport::default()
                    .upgrade(Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default()))
            })
            .map_err(|e| NetError::Setup(e.to_string()))?
            .with_behaviour(|key| {
                let peer_id = key.public().to_peer_id();
                let (params, thresholds) = score_params(&topic);
                let mut gossipsub = gossipsub::Behaviour::new(
                    MessageAuthenticity::Anonymous,
                    gossip_config().map_err(|e| e.to_string())?,
                )?;
                gossipsub.with_peer_score(params, thresholds)?;
                let mut kad_config = kad::Config::new(StreamProtocol::new(wire::PROTOCOL_KAD));
                kad_config.set_query_timeout(Duration::from_secs(10));
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    kad_config,
                );
                kad.set_mode(Some(kad::Mode::Server));
                let codec = request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(REQUEST_BYTES_MAX)
                    .set_response_size_maximum(RESPONSE_BYTES_MAX);
                let log = request_response::Behaviour::with_codec(
                    codec,
                    [(
                        StreamProtocol::new(wire::PROTOCOL_LOG),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
                        .with_max_concurrent_streams(CONCURRENT_STREAMS_MAX),
                );
                let work_codec = request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(WORK_REQUEST_BYTES_MAX)
                    .set_response_size_maximum(WORK_RESPONSE_BYTES_MAX);
                let work = request_response::Behaviour::with_codec(
                    work_codec,
                    [(
                        StreamProtocol::new(work::PROTOCOL_SHARD),
                        ProtocolSupport::Full,
                    )],
                    request_response::Config::default()
                        .with_request_timeout(Duration::from_millis(WORK_REQUEST_TIMEOUT_MS))
                        .with_max_concurrent_streams(CONCURRENT_STREAMS_MAX),
                );
                Ok(Behaviour {
                    allow: Default::default(),
                    block: Default::default(),
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(CONNECTIONS_MAX))
                            .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
                            .with_max_pending_incoming(Some(PENDING_CONNECTIONS_MAX))
                            .with_max_pending_outgoing(Some(PENDING_CONNECTIONS_MAX)),
                    ),
                    memory: memory_connection_limits::Behaviour::with_max_bytes(
                        config.process_memory_bytes_max,
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        format!("{}/{fed}", wire::PROTOCOL_VERSION),
                        key.public(),
                    )),
                    ping: ping::Behaviour::new(ping::Config::new()),
                    kad,
                    gossipsub,
                    log,
                    work,
                })
            })
            .map_err(|e| NetError::Setup(e.to_string()))?
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(Duration::from_millis(IDLE_CONNECTION_TIMEOUT_MS))
            })
            .build();
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|e| NetError::Setup(format!("subscribe: {e}")))?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        }
        Ok(Node {
            swarm,
            core,
            topic,
            keys: HashMap::new(),
            rtt: HashMap::new(),
            endpoints: HashMap::new(),
            announced: HashMap::new(),
            pending: HashMap::new(),
            proposals: HashMap::new(),
            bootstrap: config.bootstrap.clone(),
            lookups: HashMap::new(),
            bootstrapped: false,
            last_dial_error: "none".into(),
            refused_non_members: 0,
            observer: None,
            live: None,
            work_handler: None,
            work_pending: HashMap::new(),
            work_replies: futures::stream::FuturesUnordered::new(),
        })
    }

    /// Hand inbound work requests (`/leam/shard/1.0.0`) to `handler`; without one, or while
    /// its queue is full, they are refused with the reason.
    pub fn serve_work(&mut self, handler: mpsc::Sender<Inbound>) {
        self.work_handler = Some(handler);
    }

    /// Report gossip and replication progress to `observer` (simulations, benchmarks).
    pub fn observe(&mut self, observer: mpsc::UnboundedSender<Observed>) {
        self.observer = Some(observer);
    }

    /// Read handles on this node's logs, peers and status for its web server, kept up to date
    /// by the running node from now on (see [`crate::live`]).
    pub fn live(&mut self) -> Live {
        let live = self.live.get_or_insert_with(Live::default).clone();
        self.refresh_live(true);
        live
    }

    /// Publish the logs' heads if they changed, and with `network` also peers, status and lag.
    fn refresh_live(&self, network: bool) {
        let Some(live) = &self.live else {
            return;
        };
        live.refresh_logs(&self.core);
        if network {
            live.refresh_network(self.peers(), self.status(), &self.core);
        }
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Wait until every listen address is bound (or one fails); returns the bound addresses.
    pub async fn listening(&mut self, count: usize) -> Result<Vec<Multiaddr>, NetError> {
        let mut addrs = Vec::new();
        while addrs.len() < count {
            match self.swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => addrs.push(address),
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(NetError::Setup(format!("listener: {error}")))
                }
                SwarmEvent::ListenerClosed {
                    addresses, reason, ..
                } => {
                    return Err(NetError::Listen {
                        addr: addresses.first().cloned().unwrap_or(Multiaddr::empty()),
                        reason: format!("{reason:?}"),
                    })
                }
                other => self.on_swarm_event(other),
            }
        }
        Ok(addrs)
    }

    /// Run until `shutdown` resolves: start the core, dial the bootstrap members, then serve.
    /// On shutdown it stops taking work and returns; every acknowledged append is already
    /// durable (each append is committed before it is acknowledged).
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NetError> {
        let actions = self.core.start(now_ms())?;
        self.apply(actions);
        self.dial_bootstrap();
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tick.tick() => {
                    if !self.bootstrapped && !self.keys.is_empty() {
                        self.bootstrapped = true;
                    }
                    let waited_ms = started.elapsed().as_millis() as u64;
                    if !self.bootstrapped
                        && !self.bootstrap.is_empty()
                        && self.core.is_member(&self.core.key())
                        && waited_ms >= BOOTSTRAP_TIMEOUT_MS
                    {
                        return Err(NetError::Bootstrap {
                            addrs: self
                                .bootstrap
                                .iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                            waited_ms,
                            last_error: self.last_dial_error.clone(),
                        });
                    }
                    let actions = self.core.tick(now_ms());
                    self.apply(actions);
                    self.redial();
                    self.refresh_live(true);
                }
                Some((channel, response)) = self.work_replies.next(), if !self.work_replies.is_empty() => {
                    let _ = self.swarm.behaviour_mut().work.send_response(channel, response);
                }
                ev = self.swarm.select_next_some() => {
                    let connections = matches!(
                        ev,
                        SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. }
                    );
                    self.on_swarm_event(ev);
                    self.refresh_live(connections);
                }
            }
        }
        tracing::info!("shutting down: no new work taken; the log is durable");
        Ok(())
    }

    fn dial_bootstrap(&mut self) {
        for addr in self.bootstrap.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap member");
            }
        }
    }

    fn redial(&mut self) {
        let members: Vec<PublicKey> = self.core.members().keys().copied().collect();
        let connected = self.keys.len();
        if connected == 0 {
            self.dial_bootstrap();
        }
        let mut missing = 0;
        let mut lookups = 0;
        for key in members {
            if key == self.core.key() || !self.core.is_member(&key) {
                continue;
            }
            let Some(pid) = peer_id_of(&key) else {
                continue;
            };
            if !self.swarm.is_connected(&pid) {
                missing += 1;
                // Dials the addresses Kademlia or identify learnt; fails quietly if none.
                let _ = self.swarm.dial(pid);
                // A k-bucket keeps at most 20 peers, so a member may be missing from the
                // routing table: look it up by its PeerId (rate-limited per member).
                let due = self
                    .lookups
                    .get(&pid)
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(LOOKUP_INTERVAL_MS));
                if due && lookups < LOOKUPS_PER_TICK_MAX && connected > 0 {
                    lookups += 1;
                    self.lookups.insert(pid, Instant::now());
                    self.swarm.behaviour_mut().kad.get_closest_peers(pid);
                }
            }
        }
        if missing > 0 && connected > 0 {
            let me = *self.swarm.local_peer_id();
            self.swarm.behaviour_mut().kad.get_closest_peers(me);
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Peers(reply) => {
                let _ = reply.send(self.peers());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Logs(reply) => {
                let _ = reply.send(self.core.decoded_logs().map_err(|e| e.to_string()));
            }
            Command::Append { body, reply } => {
                let result = match self.core.append(*body, now_ms()) {
                    Ok((index, actions)) => {
                        self.apply(actions);
                        Ok(index)
                    }
                    Err(e) => Err(e.to_string()),
                };
                self.refresh_live(false);
                let _ = reply.send(result);
            }
            Command::Submit { entry, reply } => {
                let result = match self.core.submit(*entry, now_ms()) {
                    Ok((index, actions)) => {
                        self.apply(actions);
                        Ok(index)
                    }
                    Err(e) => Err(e.to_string()),
                };
                // Readers see the entry before its author hears it was appended.
                self.refresh_live(false);
                let _ = reply.send(result);
            }
            Command::Propose { fact, reply } => {
                if self.proposals.len() >= PROPOSALS_MAX {
                    let _ = reply.send(Err(format!(
                        "{PROPOSALS_MAX} proposals already await an answer"
                    )));
                    return;
                }
                match self.core.propose(&fact) {
                    Ok(Action::Send { to, request }) => match self.send(to, request) {
                        Some(id) => {
                            self.proposals.insert(id, reply);
                        }
                        None => {
                            let _ = reply.send(Err("counterparty key invalid".into()));
                        }
                    },
                    Ok(_) => {
                        let _ = reply.send(Err("nothing to send".into()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Command::Work { to, request, reply } => {
                if self.work_pending.len() >= WORK_OUTBOUND_MAX {
                    let _ = reply.send(Err(format!(
                        "{WORK_OUTBOUND_MAX} work requests already await an answer"
                    )));
                    return;
                }
                if let Err(reason) = request.check() {
                    let _ = reply.send(Err(reason));
                    return;
                }
                if to == self.core.key() {
                    // A request to this node itself (a bidder that is its own job's referee):
                    // libp2p does not dial itself, so it goes straight to the local handler,
                    // through the same bounded queue as a peer's.
                    match self.enqueue_work(to, *request) {
                        Ok(rx) => {
                            tokio::spawn(async move {
                                let r = rx
                                    .await
                                    .map_err(|_| "the handler dropped the request".to_string());
                                let _ = reply.send(r);
                            });
                        }
                        Err(reason) => {
                            let _ = reply.send(Err(reason));
                        }
                    }
                    return;
                }
                let Some(pid) = peer_id_of(&to) else {
                    let _ = reply.send(Err("member key is not an Ed25519 key".into()));
                    return;
                };
                let id = self.swarm.behaviour_mut().work.send_request(&pid, *request);
                self.work_pending.insert(id, reply);
            }
            Command::Admit {
                member,
                organisation,
                sector,
                reply,
            } => {
                let result = self.core.admit(member, organisation, sector, now_ms());
                let result = match result {
                    Ok((index, actions)) => {
                        self.apply(actions);
                        Ok(index)
                    }
                    Err(e) => Err(e.to_string()),
                };
                self.refresh_live(false);
                let _ = reply.send(result);
            }
        }
    }

    /// Connected members.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .keys
            .iter()
            .map(|(pid, key)| {
                let m = self.core.members().get(key);
                let mut addresses: Vec<String> = self
                    .endpoints
                    .get(pid)
                    .map(|a| a.to_string())
                    .into_iter()
                    .collect();
                for a in self.announced.get(pid).into_iter().flatten() {
                    let s = a.to_string();
                    if !addresses.contains(&s) {
                        addresses.push(s);
                    }
                }
                PeerInfo {
                    peer_id: pid.to_string(),
                    member_key: hex::encode(key),
                    organisation: m.map(|m| m.organisation.clone()).unwrap_or_default(),
                    sector: m.map(|m| m.sector.name().to_string()).unwrap_or_default(),
                    addresses,
                    rtt_ms: self.rtt.get(pid).map(|d| d.as_secs_f64() * 1000.0),
                }
            })
            .collect();
        out.sort_by(|a, b| a.member_key.cmp(&b.member_key));
        out
    }

    /// The node's status.
    pub fn status(&self) -> Status {
        Status {
            peer_id: self.swarm.local_peer_id().to_string(),
            member_key: hex::encode(self.core.key()),
            federation: hex::encode(self.core.federation_id()),
            listen: self.swarm.listeners().map(|a| a.to_string()).collect(),
            members: self.core.members().len(),
            logs: self.core.logs(),
            stats: self.core.stats().clone(),
            refused_non_members: self.refused_non_members,
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Publish(data) => {
                    let published =
                        self.observer
                            .as_ref()
                            .and_then(|_| match wire::Gossip::decode(&data) {
                                Ok(wire::Gossip::Checkpoint(note)) => Some((
                                    crate::core::checkpoint_owner(&note)?,
                                    crate::core::checkpoint_size(&note)?,
                                )),
                                _ => None,
                            });
                    let at = Instant::now();
                    match self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(self.topic.clone(), data)
                    {
                        Ok(_) => {
                            if let (Some(obs), Some((log, size))) = (&self.observer, published) {
                                let _ = obs.send(Observed::Published { log, size, at });
                            }
                        }
                        Err(e) => {
                            // InsufficientPeers before anyone subscribed: the tick publishes again.
                            tracing::debug!(error = %e, "publish");
                            if !matches!(e, gossipsub::PublishError::Duplicate) {
                                self.core.publish_failed();
                            }
                        }
                    }
                }
                Action::Send { to, request } => {
                    self.send(to, request);
                }
                Action::Allow(key) => {
                    if let Some(pid) = peer_id_of(&key) {
                        self.swarm.behaviour_mut().allow.allow_peer(pid);
                    }
                }
                Action::Block { peer, reason } => {
                    if let Some(pid) = peer_id_of(&peer) {
                        tracing::warn!(peer = %pid, %reason, "blocking peer");
                        self.swarm.behaviour_mut().allow.disallow_peer(pid);
                        self.swarm.behaviour_mut().block.block_peer(pid);
                        let _ = self.swarm.disconnect_peer_id(pid);
                    }
                }
            }
        }
    }

    /// Send a request to a member (dialling it if needed) and remember it for its answer.
    fn send(
        &mut self,
        to: PublicKey,
        request: Request,
    ) -> Option<request_response::OutboundRequestId> {
        let pid = peer_id_of(&to)?;
        let id = self
            .swarm
            .behaviour_mut()
            .log
            .send_request(&pid, request.clone());
        self.pending.insert(id, (to, request));
        Some(id)
    }

    /// An inbound work request: checked, then queued for the handler, whose answer goes back
    /// when it comes (a dropped answer is a refusal).
    fn on_work_request(
        &mut self,
        peer: PeerId,
        request: WorkRequest,
        channel: request_response::ResponseChannel<WorkResponse>,
    ) {
        let refuse = |this: &mut Self, channel, reason: String| {
            let _ = this
                .swarm
                .behaviour_mut()
                .work
                .send_response(channel, work::refused(reason));
        };
        let Some(from) = self.key_of(&peer) else {
            return refuse(self, channel, "not a member".into());
        };
        if let Err(reason) = request.check() {
            return refuse(self, channel, reason);
        }
        match self.enqueue_work(from, request) {
            Ok(rx) => self.work_replies.push(Box::pin(async move {
                let response = rx
                    .await
                    .unwrap_or_else(|_| work::refused("the handler dropped the request"));
                (channel, response)
            })),
            Err(reason) => refuse(self, channel, reason),
        }
    }

    /// Queue a checked work request from `from` for the handler: the receiver of its answer,
    /// or why it is refused (no handler, queue full, shutting down). A peer's requests and
    /// this node's requests to itself take this one path.
    fn enqueue_work(
        &self,
        from: PublicKey,
        request: WorkRequest,
    ) -> Result<oneshot::Receiver<WorkResponse>, String> {
        let handler = self
            .work_handler
            .as_ref()
            .ok_or("this node takes no work")?;
        let (tx, rx) = oneshot::channel();
        match handler.try_send(Inbound {
            from,
            request,
            reply: tx,
        }) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(format!(
                "{} work requests already queued; ask again later",
                work::WORK_INBOUND_QUEUE_MAX
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Err("this node is shutting down".into()),
        }
    }

    fn key_of(&self, pid: &PeerId) -> Option<PublicKey> {
        self.keys.get(pid).copied()
    }

    fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                match key_of_peer(&peer_id) {
                    Some(key) if self.core.is_member(&key) => {
                        let addr = match &endpoint {
                            ConnectedPoint::Dialer { address, .. } => address.clone(),
                            ConnectedPoint::Listener { send_back_addr, .. } => {
                                send_back_addr.clone()
                            }
                        };
                        if endpoint.is_dialer() {
                            self.swarm
                                .behaviour_mut()
                                .kad
                                .add_address(&peer_id, addr.clone());
                        }
                        self.endpoints.insert(peer_id, addr);
                        if self.keys.insert(peer_id, key).is_none() {
                            tracing::info!(peer = %peer_id, "member connected");
                        }
                        let actions = self.core.connected(key);
                        self.apply(actions);
                    }
                    _ => {
                        // The allow-list refuses non-members before this point; this is a
                        // second line for keys whose membership was withdrawn meanwhile.
                        self.refused_non_members += 1;
                        let _ = self.swarm.disconnect_peer_id(peer_id);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(key) = self.keys.remove(&peer_id) {
                    self.core.disconnected(&key);
                    self.rtt.remove(&peer_id);
                    self.endpoints.remove(&peer_id);
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                if let ListenError::Denied { cause } = &error {
                    if cause
                        .downcast_ref::<allow_block_list::NotAllowed>()
                        .is_some()
                        || cause.downcast_ref::<allow_block_list::Blocked>().is_some()
                    {
                        self.refused_non_members += 1;
                        tracing::warn!(from = %send_back_addr, "refused a connection: not a member of this federation");
                        return;
                    }
                }
                tracing::debug!(from = %send_back_addr, error = %error, "incoming connection failed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let DialError::Denied { cause } = &error {
                    if cause
                        .downcast_ref::<allow_block_list::NotAllowed>()
                        .is_some()
                    {
                        self.refused_non_members += 1;
                        tracing::warn!(peer = ?peer_id, "dialled a peer that is not a member of this federation: dropped");
                        return;
                    }
                }
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
                self.last_dial_error = error.to_string();
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if self.keys.contains_key(&peer_id) =>
            {
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .take(wire::LISTEN_ADDRS_MAX)
                    .collect();
                for a in &addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, a.clone());
                }
                self.announced.insert(peer_id, addrs);
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                self.rtt.insert(peer, rtt);
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. })
                if !self.swarm.is_connected(&peer)
                    && self.keys.len() < CONNECTIONS_MAX as usize
                    && key_of_peer(&peer).is_some_and(|k| self.core.members().contains_key(&k)) =>
            {
                let _ = self.swarm.dial(peer);
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(Ok(ok)),
                ..
            }) => {
                for p in ok.peers {
                    if p.addrs.is_empty()
                        || self.swarm.is_connected(&p.peer_id)
                        || !key_of_peer(&p.peer_id)
                            .is_some_and(|k| self.core.members().contains_key(&k))
                    {
                        continue;
                    }
                    for a in p.addrs.iter().take(wire::LISTEN_ADDRS_MAX) {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&p.peer_id, a.clone());
                    }
                    let _ = self.swarm.dial(p.peer_id);
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let acceptance = match self.key_of(&propagation_source) {
                    None => (Acceptance::Reject("forwarded by a non-member"), vec![]),
                    Some(source) => self.core.on_gossip(source, &message.data, now_ms()),
                };
                let (acceptance, actions) = acceptance;
                if let (Some(obs), Acceptance::Accept) = (&self.observer, &acceptance) {
                    if let Ok(wire::Gossip::Checkpoint(note)) = wire::Gossip::decode(&message.data)
                    {
                        if let (Some(log), Some(size)) = (
                            crate::core::checkpoint_owner(&note),
                            crate::core::checkpoint_size(&note),
                        ) {
                            let _ = obs.send(Observed::Checkpoint {
                                log,
                                size,
                                at: Instant::now(),
                            });
                        }
                    }
                }
                let verdict = match acceptance {
                    Acceptance::Accept => MessageAcceptance::Accept,
                    Acceptance::Reject(_) => MessageAcceptance::Reject,
                    Acceptance::Ignore(_) => MessageAcceptance::Ignore,
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
                self.apply(actions);
            }
            BehaviourEvent::Log(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let (response, actions) = match self.key_of(&peer) {
                            Some(from) => {
                                off_worker(|| self.core.on_request(from, request, now_ms()))
                            }
                            None => (wire::refused("not a member"), vec![]),
                        };
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .log
                            .send_response(channel, response);
                        self.apply(actions);
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some((to, request)) = self.pending.remove(&request_id) {
                            if let Some(reply) = self.proposals.remove(&request_id) {
                                let (result, actions) =
                                    self.core.on_countersigned(to, &request, response, now_ms());
                                self.refresh_live(false);
                                let _ = reply.send(result);
                                self.apply(actions);
                                return;
                            }
                            if let (Some(obs), Response::Checkpoint { note }) =
                                (&self.observer, &response)
                            {
                                if let (Some(log), Some(size)) = (
                                    crate::core::checkpoint_owner(note),
                                    crate::core::checkpoint_size(note),
                                ) {
                                    let _ = obs.send(Observed::Checkpoint {
                                        log,
                                        size,
                                        at: Instant::now(),
                                    });
                                }
                            }
                            let log = match &request {
                                Request::Entries { log, .. } => Some(*log),
                                _ => None,
                            };
                            let actions = off_worker(|| {
                                self.core.on_response(to, request, response, now_ms())
                            });
                            if let (Some(obs), Some(log)) = (&self.observer, log) {
                                if let Some(r) = self.core.replicas().get(&log) {
                                    let _ = obs.send(Observed::Replicated {
                                        log,
                                        size: r.size(),
                                        at: Instant::now(),
                                    });
                                }
                            }
                            self.apply(actions);
                        }
                    }
                }
            }
            BehaviourEvent::Work(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => self.on_work_request(peer, request, channel),
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some(reply) = self.work_pending.remove(&request_id) {
                            let _ = reply.send(response.check().map(|()| response));
                        }
                    }
                }
            }
            BehaviourEvent::Work(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some(reply) = self.work_pending.remove(&request_id) {
                    let _ = reply.send(Err(format!("no answer: {error}")));
                }
            }
            BehaviourEvent::Log(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some(reply) = self.proposals.remove(&request_id) {
                    let _ = reply.send(Err(format!("no answer from the counterparty: {error}")));
                }
                if let Some((to, request)) = self.pending.remove(&request_id) {
                    tracing::debug!(peer = %hex::encode(to), %error, "request failed");
                    self.core.on_failure(to, request);
                }
            }
            _ => {}
        }
    }
}

/// Logs held per member, for tests: owner → size.
pub fn sizes(status: &Status) -> BTreeMap<String, u64> {
    status
        .logs
        .iter()
        .map(|l| (l.key.clone(), l.size))
        .collect()
}
