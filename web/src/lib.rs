//! leam-web: the audit API, the C2SP tlog-tiles interface, metrics, live events and the
//! server-rendered pages for funders, bidders and operators.
//!
//! The entry point is [`app`], which builds an `axum::Router` over an [`AppState`]. The state
//! holds a read-only [`View`] of what a node holds (its own log, replicas, genesis, peers) and,
//! for nodes that accept writes, a [`Submit`] channel and the node's control token. web never
//! opens a store a node holds and never appends to one itself: the node implements [`View`]
//! on its own handles, and [`dir::DirView`] serves copies for `leam serve`.
//!
//! Routes: JSON under `/api/` (OpenAPI 3 at `/api/openapi.json`), tlog-tiles under
//! `/tlog/<log key hex>/` (`specs/tlog.md` §8), `/metrics` (Prometheus text), server-sent
//! events at `/api/events`, pages at `/`, `/ledger`, `/market`, `/jobs`, `/report`. Jobs'
//! progress (`/api/jobs/progress`, `/jobs`) comes from the files a bidder's node writes
//! ([`progress`], [`View::job_progress`]), not from the ledger.

// `DirError` wraps the ledger's `AuditError`/`LogError`, which name the directory, entry,
// expected and found values and so exceed clippy's `result_large_err` bound (as in the ledger);
// they are returned on cold paths only.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::Router;
use leam_ledger::account::{Membership, Report};
use leam_ledger::entry::{Body, Entry, PublicKey};
use leam_ledger::genesis::{self, Genesis};
use leam_ledger::note::{Algorithm, Verifier};
use prometheus_client::collector::Collector;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

pub mod api;
pub mod dir;
pub mod error;
pub mod events;
pub mod metrics;
pub mod pages;
pub mod progress;
pub mod tiles;
pub mod view;
pub mod writes;

pub use error::AppError;
pub use progress::{JobProgress, Replacement, RoundProgress};
pub use view::{Accepted, LogInfo, Peer, Submit, View, ViewError};

/// Largest request body accepted anywhere, bytes (a signed entry is at most 64 KiB; hex doubles
/// it).
pub const REQUEST_BODY_BYTES_MAX: usize = 160 * 1024;
/// Requests taking longer are answered 408.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Entries read from a view in one call when filling the decode cache.
pub const READ_CHUNK_ENTRIES: u64 = 4096;
/// Most decoded entries the server keeps in memory over all logs; filters and pages over
/// larger federations see the first entries of each log and say so (`complete: false`).
pub const CACHE_ENTRIES_MAX: usize = 4 * 1024 * 1024;

/// What [`app`] serves and how: build with [`AppState::new`], then the `with_*` methods.
pub struct AppState {
    view: Arc<dyn View>,
    writes: Option<(String, Arc<dyn Submit>)>,
    shutdown: CancellationToken,
    collectors: Vec<Box<dyn Collector>>,
    write_limit: writes::RateLimit,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("writes", &self.writes.is_some())
            .field("collectors", &self.collectors.len())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// A read-only server over `view`: writes are answered 403 "this server is read-only".
    pub fn new(view: Arc<dyn View>) -> AppState {
        AppState {
            view,
            writes: None,
            shutdown: CancellationToken::new(),
            collectors: Vec::new(),
            write_limit: writes::RateLimit::default(),
        }
    }
    /// Accept signed entries on the write routes from clients presenting `token` (the node's
    /// control token) as `Authorization: Bearer <token>`, handing them to `submit`.
    pub fn with_writes(mut self, token: String, submit: Arc<dyn Submit>) -> AppState {
        self.writes = Some((token, submit));
        self
    }
    /// End server-sent event streams when `token` is cancelled (at shutdown; open streams
    /// would otherwise block a graceful shutdown).
    pub fn with_shutdown(mut self, token: CancellationToken) -> AppState {
        self.shutdown = token;
        self
    }
    /// Add the node's own metrics (gossip, replication lag, shards, …) to `/metrics`.
    pub fn with_collector(mut self, collector: Box<dyn Collector>) -> AppState {
        self.collectors.push(collector);
        self
    }
    /// Per-client limit of write requests (default [`writes::RateLimit::default`]).
    pub fn with_write_limit(mut self, limit: writes::RateLimit) -> AppState {
        self.write_limit = limit;
        self
    }
}

/// One log with its decoded entries (a prefix when the cache is full).
#[derive(Debug, Clone)]
pub(crate) struct LogEntries {
    pub info: LogInfo,
    pub entries: Arc<Vec<Entry>>,
}

impl LogEntries {
    pub fn complete(&self) -> bool {
        self.entries.len() as u64 == self.info.size
    }
}

/// The report with the log sizes it was computed for.
type ReportCache = (Vec<(PublicKey, u64)>, Arc<Report>);

/// State shared by the handlers.
pub(crate) struct Shared {
    pub view: Arc<dyn View>,
    pub writes: Option<(String, Arc<dyn Submit>)>,
    pub shutdown: CancellationToken,
    pub metrics: metrics::Metrics,
    pub limiter: writes::Limiter,
    pub openapi: String,
    decoded: Mutex<HashMap<PublicKey, Arc<Vec<Entry>>>>,
    report: Mutex<Option<ReportCache>>,
}

pub(crate) type AppShared = Arc<Shared>;

impl Shared {
    /// Every log with its decoded entries, filling the cache for entries appended since.
    pub fn snapshot(&self) -> Result<Vec<LogEntries>, AppError> {
        let logs = self.view.logs();
        let mut cache = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: usize = cache.values().map(|v| v.len()).sum();
        let mut out = Vec::with_capacity(logs.len());
        for info in logs {
            let slot = cache.entry(info.key).or_default();
            let have = slot.len() as u64;
            if have < info.size && total < CACHE_ENTRIES_MAX {
                let room = (CACHE_ENTRIES_MAX - total) as u64;
                let end = info.size.min(have + room);
                let list = Arc::make_mut(slot);
                let mut start = have;
                while start < end {
                    let stop = (start + READ_CHUNK_ENTRIES).min(end);
                    for (i, bytes) in self
                        .view
                        .entries(&info.key, start, stop)?
                        .iter()
                        .enumerate()
                    {
                        let e = Entry::decode(bytes).map_err(|e| {
                            AppError::Unavailable(format!(
                                "log {} entry {}: {e}",
                                hex::encode(info.key),
                                start + i as u64
                            ))
                        })?;
                        list.push(e);
                    }
                    start = stop;
                }
                total += (end - have) as usize;
            }
            out.push(LogEntries {
                info,
                entries: slot.clone(),
            });
        }
        Ok(out)
    }

    /// The accounting report, recomputed only when a log's size changed.
    pub fn report(&self) -> Result<Arc<Report>, AppError> {
        let sizes: Vec<(PublicKey, u64)> =
            self.view.logs().iter().map(|l| (l.key, l.size)).collect();
        let mut cached = self.report.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, r)) = cached.as_ref() {
            if *s == sizes {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(self.view.report()?);
        *cached = Some((sizes, r.clone()));
        Ok(r)
    }

    /// The jobs' progress documents ([`View::job_progress`]), read on the blocking pool: the
    /// view reads files, which must not hold up the async workers (the node's swarm among
    /// them).
    pub async fn job_progress(&self) -> Result<Vec<JobProgress>, AppError> {
        let view = self.view.clone();
        tokio::task::spawn_blocking(move || view.job_progress())
            .await
            .map_err(|e| AppError::Unavailable(format!("reading the jobs' progress: {e}")))
    }

    /// The log with this key, if held.
    pub fn log(&self, key: &PublicKey) -> Result<LogInfo, AppError> {
        self.view
            .logs()
            .into_iter()
            .find(|l| l.key == *key)
            .ok_or_else(|| {
                AppError::NotFound(format!(
                    "no log with key {} is served here",
                    hex::encode(key)
                ))
            })
    }
}

/// Federation membership as the ledger defines it: with a genesis,
/// `leam_ledger::genesis::members` over every admission held; without, each key's first
/// admission (log keys in order), as the accounting fold attributes them.
pub(crate) fn members(
    genesis: Option<&Genesis>,
    logs: &[LogEntries],
) -> BTreeMap<PublicKey, Membership> {
    match genesis {
        Some(g) => genesis::members(g, logs.iter().flat_map(|l| l.entries.iter())),
        None => {
            let mut out = BTreeMap::new();
            let mut ordered: Vec<&LogEntries> = logs.iter().collect();
            ordered.sort_by_key(|l| l.info.key);
            for l in ordered {
                for e in l.entries.iter() {
                    if let Body::Admission(a) = &e.body {
                        out.entry(a.member).or_insert_with(|| Membership {
                            organisation: a.organisation.clone(),
                            sector: a.sector,
                        });
                    }
                }
            }
            out
        }
    }
}

/// The name under which a member cosigns checkpoints as a witness (`specs/wire.md` §4:
/// `leam.witness/<hex of the first 8 key bytes>`).
pub fn witness_name(key: &PublicKey) -> String {
    format!("leam.witness/{}", hex::encode(&key[..8]))
}

/// The member's witness verifier (C2SP cosignature/v1), if the key is a valid point.
pub fn witness_verifier(key: &PublicKey) -> Option<Verifier> {
    let vk = ed25519_dalek_key(key)?;
    Verifier::new(&witness_name(key), Algorithm::CosignatureV1, vk).ok()
}

/// The member's witness verifier key string.
pub fn witness_vkey(key: &PublicKey) -> Option<String> {
    witness_verifier(key).map(|v| v.to_string())
}

fn ed25519_dalek_key(key: &PublicKey) -> Option<ed25519_dalek::VerifyingKey> {
    leam_ledger::entry::verifying_key("witness", key).ok()
}

/// Build the router: every route of the crate with its layers (see the crate documentation).
pub fn app(state: AppState) -> Router {
    let (api_router, openapi) = api::router();
    let openapi_json = openapi.to_pretty_json().unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("OpenAPI document: {e}") }).to_string()
    });
    let metrics = metrics::Metrics::new(state.collectors);
    let shared: AppShared = Arc::new(Shared {
        view: state.view,
        writes: state.writes,
        shutdown: state.shutdown,
        metrics,
        limiter: writes::Limiter::new(state.write_limit),
        openapi: openapi_json,
        decoded: Mutex::new(HashMap::new()),
        report: Mutex::new(None),
    });
    let cors = CorsLayer::new()
        .allow_methods([Method::GET])
        .allow_origin(tower_http::cors::AllowOrigin::list([]));
    api_router
        .merge(tiles::router())
        .merge(events::router())
        .merge(pages::router())
        .merge(metrics::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            metrics::count_requests,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(REQUEST_TIMEOUT_MS),
        ))
        .layer(RequestBodyLimitLayer::new(REQUEST_BODY_BYTES_MAX))
        .layer(cors)
        .with_state(shared)
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!(
        "no route for {}; see /api/openapi.json for the API, /tlog/<log key hex>/checkpoint for the logs",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut r = AppError::BadRequest(format!("method {method} is not allowed on {}", uri.path()))
        .into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// Parse a log key from 64 hex digits.
pub(crate) fn parse_key(s: &str) -> Result<PublicKey, AppError> {
    let mut key = [0u8; 32];
    if s.len() != 64 || hex::decode_to_slice(s, &mut key).is_err() {
        return Err(AppError::BadRequest(format!(
            "log key: expected 64 hex digits, found {s:?}"
        )));
    }
    Ok(key)
}
