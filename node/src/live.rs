//! The running node's web server: `leam_web::app` over the node's own handles
//! (`leam_net::live::Live`, never a second open of its stores), with signed writes handed to
//! the swarm task as `Command::Submit` under the node's control token, the node's network
//! metrics on `/metrics`, and `/api/status`. Jobs' progress (`/api/jobs/progress`, `/jobs`)
//! is read from the node directory's `jobs/` folder, as `leam serve` reads it.

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use leam_ledger::account::Report;
use leam_ledger::entry::{Entry, PublicKey};
use leam_ledger::genesis::Genesis;
use leam_ledger::merkle::Hash;
use leam_net::live::{Live, LiveError};
use leam_net::shell::{Command as NodeCommand, Status, COMMAND_QUEUE_MAX};
use leam_web::{Accepted, JobProgress, LogInfo, Peer, Submit, View, ViewError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// [`View`] over a running node's logs, peers, report and jobs' progress.
#[derive(Debug)]
pub struct LiveView {
    live: Live,
    genesis: Genesis,
    dir: PathBuf,
    evidence: Arc<leam_jobs::evidence::Checker>,
}

impl LiveView {
    /// The view of the node publishing to `live`, in the federation `genesis`, whose node
    /// directory is `dir` (its jobs' progress files are in `dir/jobs/`, its blobs in
    /// `dir/blobs/`). The report re-checks wrong-result evidence by replay on the CPU kernels
    /// (bit-exact with every backend), with the shard inputs this node holds.
    pub fn new(live: Live, genesis: Genesis, dir: PathBuf) -> LiveView {
        let evidence = Arc::new(crate::cli_ledger::evidence_checker(std::slice::from_ref(
            &dir,
        )));
        LiveView {
            live,
            genesis,
            dir,
            evidence,
        }
    }
}

fn view_error(e: LiveError) -> ViewError {
    match e {
        LiveError::UnknownLog { key } => ViewError::UnknownLog { key },
        LiveError::Range(r) => ViewError::Range(r),
        LiveError::Store(s) | LiveError::Account(s) => ViewError::Store(s),
    }
}

impl View for LiveView {
    fn genesis(&self) -> Option<Genesis> {
        Some(self.genesis.clone())
    }

    fn logs(&self) -> Vec<LogInfo> {
        self.live
            .logs()
            .into_iter()
            .map(|h| LogInfo {
                key: h.key,
                size: h.size,
                root: h.root,
                checkpoint: h.checkpoint,
                own: h.own,
            })
            .collect()
    }

    fn entries(&self, key: &PublicKey, start: u64, end: u64) -> Result<Vec<Vec<u8>>, ViewError> {
        self.live.entries(key, start, end).map_err(view_error)
    }

    fn hashes(&self, key: &PublicKey, indexes: &[u64]) -> Result<Vec<Hash>, ViewError> {
        self.live.hashes(key, indexes).map_err(view_error)
    }

    fn peers(&self) -> Vec<Peer> {
        self.live
            .peers()
            .into_iter()
            .map(|p| Peer {
                peer_id: p.peer_id,
                member_key: p.member_key,
                organisation: p.organisation,
                sector: p.sector,
                addresses: p.addresses,
                rtt_ms: p.rtt_ms,
            })
            .collect()
    }

    fn report(&self) -> Result<Report, ViewError> {
        let run = || {
            self.live
                .report(Some(&self.genesis), self.evidence.as_ref())
                .map_err(view_error)
        };
        // The fold reads every entry: on the node's multi-threaded runtime, hand this worker's
        // other tasks (the swarm among them) to another worker meanwhile.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        }
    }

    /// The progress files the bidder side of this node writes (`leam_jobs::bidder`), read
    /// with web's bounds.
    fn job_progress(&self) -> Vec<JobProgress> {
        leam_web::progress::read_progress(std::slice::from_ref(&self.dir))
    }

    fn blob(&self, sha256: &[u8; 32]) -> Option<Vec<u8>> {
        // The node's own blob store, which checks every blob against its name.
        leam_jobs::blobs::Blobs::new(&self.dir)
            .get(sha256)
            .ok()
            .flatten()
    }
}

/// [`Submit`] into the running node's own log through its command channel.
#[derive(Debug, Clone)]
pub struct NodeSubmit {
    commands: mpsc::Sender<NodeCommand>,
}

impl NodeSubmit {
    /// Submissions sent to the node listening on `commands`.
    pub fn new(commands: mpsc::Sender<NodeCommand>) -> NodeSubmit {
        NodeSubmit { commands }
    }
}

impl Submit for NodeSubmit {
    fn submit(
        &self,
        entry: Entry,
        _bytes: Vec<u8>,
    ) -> BoxFuture<'static, Result<Accepted, String>> {
        let log = hex::encode(entry.author);
        let (reply, answer) = oneshot::channel();
        let sent = self
            .commands
            .try_send(NodeCommand::Submit {
                entry: Box::new(entry),
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    format!("the node has {COMMAND_QUEUE_MAX} commands queued already; try again")
                }
                mpsc::error::TrySendError::Closed(_) => "the node is stopping".to_string(),
            });
        Box::pin(async move {
            sent?;
            let index = answer
                .await
                .map_err(|_| "the node is stopping".to_string())??;
            Ok(Accepted { log, index })
        })
    }
}

/// The node's network counters on `/metrics` (as of the node's last tick).
#[derive(Debug)]
pub struct NodeMetrics {
    live: Live,
}

impl NodeMetrics {
    /// Metrics of the node publishing to `live`.
    pub fn new(live: Live) -> NodeMetrics {
        NodeMetrics { live }
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn counters_by(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &std::collections::BTreeMap<String, u64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (k, v) in values {
        let labels = [(label.to_string(), k.clone())];
        ConstCounter::new(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges_by_log(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (PublicKey, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (k, v) in values {
        let labels = [("log".to_string(), hex::encode(k))];
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for NodeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(s) = self.live.status() else {
            return Ok(());
        };
        let e = &mut encoder;
        let st = &s.stats;
        counter(
            e,
            "node_gossip_accepted",
            "Gossip messages accepted",
            st.gossip_accepted,
        )?;
        counters_by(
            e,
            "node_gossip_rejected",
            "Gossip messages rejected, by reason",
            "reason",
            &st.gossip_rejected,
        )?;
        counters_by(
            e,
            "node_gossip_ignored",
            "Gossip messages ignored (valid, not forwarded), by reason",
            "reason",
            &st.gossip_ignored,
        )?;
        counter(
            e,
            "node_entries_replicated",
            "Entries verified and stored in replicas",
            st.entries_replicated,
        )?;
        counters_by(
            e,
            "node_replica_refused",
            "Replica updates refused, by reason",
            "reason",
            &st.replica_refused,
        )?;
        counter(
            e,
            "node_cosignatures_given",
            "Witness cosignatures this node gave",
            st.cosignatures_given,
        )?;
        counter(
            e,
            "node_cosignatures_received",
            "Witness cosignatures stored on this node's checkpoints",
            st.cosignatures_received,
        )?;
        counter(
            e,
            "node_evidence_recorded",
            "Equivocation evidence entries this node recorded",
            st.evidence_recorded,
        )?;
        counter(
            e,
            "node_requests_served",
            "Log requests served to members",
            st.requests_served,
        )?;
        counters_by(
            e,
            "node_requests_refused",
            "Log requests refused, by reason",
            "reason",
            &st.requests_refused,
        )?;
        counter(
            e,
            "node_refused_non_members",
            "Connections refused because the peer is not a member",
            s.refused_non_members,
        )?;
        let members = ConstGauge::new(s.members as i64);
        members.encode(e.encode_descriptor(
            "node_members",
            "Federation members known (founders and admitted)",
            None,
            members.metric_type(),
        )?)?;
        let lag = self.live.lag();
        gauges_by_log(
            e,
            "node_replica_entries",
            "Entries held in each replica, by log key",
            lag.iter().map(|(k, (held, _))| (*k, *held as i64)),
        )?;
        gauges_by_log(
            e,
            "node_replication_lag_entries",
            "Entries of each member's log that this node knows exist (a verified newer checkpoint) but does not hold yet",
            lag.iter().map(|(k, (held, known))| (*k, known.saturating_sub(*held) as i64)),
        )?;
        Ok(())
    }
}

/// Everything the node's HTTP server needs.
pub struct Server {
    /// The node's read handles.
    pub live: Live,
    /// The federation.
    pub genesis: Genesis,
    /// The control token (`DIR/control.token`) writes must present.
    pub token: String,
    /// The node's command channel.
    pub commands: mpsc::Sender<NodeCommand>,
    /// Cancelled at shutdown: ends event streams.
    pub shutdown: CancellationToken,
    /// The node directory (jobs' progress files in `jobs/`).
    pub dir: PathBuf,
    /// The node's compute backend (measured for offers by `POST /api/measure`).
    pub kernels: Arc<dyn leam_compute::numerics::kernels::Kernels>,
}

/// What `POST /api/measure` needs.
#[derive(Clone)]
struct Measure {
    token: Arc<str>,
    kernels: Arc<dyn leam_compute::numerics::kernels::Kernels>,
    dir: PathBuf,
    /// One measurement at a time (two would slow each other down).
    busy: Arc<tokio::sync::Mutex<()>>,
}

/// The node's HTTP app: `leam_web::app` with writes and node metrics, plus `/api/status`.
pub fn app(s: Server) -> axum::Router {
    let measure = Measure {
        token: Arc::from(s.token.as_str()),
        kernels: s.kernels,
        dir: s.dir.clone(),
        busy: Arc::default(),
    };
    let state = leam_web::AppState::new(Arc::new(LiveView::new(s.live.clone(), s.genesis, s.dir)))
        .with_writes(s.token, Arc::new(NodeSubmit::new(s.commands.clone())))
        .with_shutdown(s.shutdown)
        .with_collector(Box::new(NodeMetrics::new(s.live)));
    leam_web::app(state)
        .merge(
            axum::Router::new()
                .route("/api/status", axum::routing::get(api_status))
                .route("/api/market/jobs", axum::routing::get(api_jobs))
                .with_state(s.commands),
        )
        .merge(
            axum::Router::new()
                .route("/api/measure", axum::routing::post(api_measure))
                .with_state(measure),
        )
}

/// `POST /api/measure` (control token): the kernel self-test and a benchmark shard on the node's
/// own backend ([`leam_jobs::offer::measure`]), saved to `DIR/measurement.json` and returned;
/// `leam offer` signs its offer with the figure.
async fn api_measure(
    axum::extract::State(m): axum::extract::State<Measure>,
    headers: axum::http::HeaderMap,
) -> Result<axum::Json<leam_jobs::offer::Measurement>, leam_web::error::AppError> {
    use leam_web::error::AppError;
    leam_web::writes::authorize(&headers, &m.token)?;
    let _one = m.busy.lock().await;
    let (kernels, dir) = (m.kernels.clone(), m.dir.clone());
    let measured = tokio::task::spawn_blocking(move || {
        leam_jobs::offer::measure_into(&dir, kernels.as_ref(), crate::cli_fed::now_ms())
    })
    .await
    .map_err(|e| AppError::Unavailable(format!("the measurement stopped: {e}")))?;
    measured
        .map(axum::Json)
        .map_err(|e| AppError::Conflict(e.to_string()))
}

type ApiError = (axum::http::StatusCode, axum::Json<serde_json::Value>);

fn unavailable(msg: &str) -> ApiError {
    let status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    (
        status,
        axum::Json(serde_json::json!({ "error": msg, "status": status.as_u16() })),
    )
}

/// `GET /api/market/jobs`: this node's jobs as a bidder and where each stands
/// (`leam_market::flow::job_statuses` over the logs the node holds).
async fn api_jobs(
    axum::extract::State(commands): axum::extract::State<mpsc::Sender<NodeCommand>>,
) -> Result<axum::Json<Vec<leam_market::flow::JobStatus>>, ApiError> {
    let (tx, rx) = oneshot::channel();
    commands
        .try_send(NodeCommand::Status(tx))
        .map_err(|_| unavailable("the node is stopping or its command queue is full"))?;
    let status = rx.await.map_err(|_| unavailable("the node is stopping"))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(&status.member_key, &mut key)
        .map_err(|_| unavailable("the node reported no key"))?;
    let (tx, rx) = oneshot::channel();
    commands
        .try_send(NodeCommand::Logs(tx))
        .map_err(|_| unavailable("the node is stopping or its command queue is full"))?;
    let logs = rx
        .await
        .map_err(|_| unavailable("the node is stopping"))?
        .map_err(|e| unavailable(&e))?;
    Ok(axum::Json(leam_market::flow::job_statuses(
        &key,
        &logs,
        crate::cli_fed::now_ms(),
    )))
}

/// `GET /api/status`: the node's status, asked of the swarm task (fresh, unlike `/metrics`).
async fn api_status(
    axum::extract::State(commands): axum::extract::State<mpsc::Sender<NodeCommand>>,
) -> Result<axum::Json<Status>, ApiError> {
    let (tx, rx) = oneshot::channel();
    commands
        .try_send(NodeCommand::Status(tx))
        .map_err(|_| unavailable("the node is stopping or its command queue is full"))?;
    rx.await
        .map(axum::Json)
        .map_err(|_| unavailable("the node is stopping"))
}
