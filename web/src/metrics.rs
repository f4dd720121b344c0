//! `/metrics` in the Prometheus text exposition format (prometheus-client, an explicit
//! registry per app, no globals): log sizes, peers, entries by kind, and HTTP requests by route
//! and status. The node adds its own metrics (gossip accepted/rejected by reason, replication
//! lag, shards computed/verified/rejected) as `prometheus_client::collector::Collector`s with
//! [`crate::AppState::with_collector`].

use std::sync::Mutex;

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{header, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use leam_ledger::entry::Kind;
use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{AppError, AppShared};

/// Content type of the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Vec<(String, String)>;

/// The server's metrics and their registry.
pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    log_entries: Family<Labels, Gauge>,
    peers: Gauge,
    entries_by_kind: Family<Labels, Gauge>,
    http_requests: Family<Labels, Counter>,
}

impl Metrics {
    /// A fresh registry with the server's metrics and the node's `collectors`.
    pub fn new(collectors: Vec<Box<dyn Collector>>) -> Metrics {
        let mut registry = Registry::with_prefix("leam");
        let log_entries = Family::<Labels, Gauge>::default();
        registry.register(
            "log_entries",
            "Entries in each held log (its checkpoint size), by log key and whether it is the node's own",
            log_entries.clone(),
        );
        let peers = Gauge::default();
        registry.register("peers", "Connected federation peers", peers.clone());
        let entries_by_kind = Family::<Labels, Gauge>::default();
        registry.register(
            "entries_by_kind",
            "Entries over all held logs, by entry kind",
            entries_by_kind.clone(),
        );
        let http_requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template and status code",
            http_requests.clone(),
        );
        for c in collectors {
            registry.register_collector(c);
        }
        Metrics {
            registry: Mutex::new(registry),
            log_entries,
            peers,
            entries_by_kind,
            http_requests,
        }
    }
}

/// Middleware: count every answered request by route template and status.
pub(crate) async fn count_requests(
    State(s): State<AppShared>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "(unmatched)".to_owned());
    let res = next.run(req).await;
    let labels = vec![
        ("route".to_owned(), route),
        ("status".to_owned(), res.status().as_u16().to_string()),
    ];
    s.metrics.http_requests.get_or_create(&labels).inc();
    res
}

async fn scrape(State(s): State<AppShared>) -> Result<Response, AppError> {
    let logs = s.snapshot()?;
    let m = &s.metrics;
    m.log_entries.clear();
    m.entries_by_kind.clear();
    let mut by_kind: std::collections::BTreeMap<Kind, i64> = std::collections::BTreeMap::new();
    for l in &logs {
        let labels = vec![
            ("log".to_owned(), hex::encode(l.info.key)),
            ("own".to_owned(), l.info.own.to_string()),
        ];
        m.log_entries
            .get_or_create(&labels)
            .set(i64::try_from(l.info.size).unwrap_or(i64::MAX));
        for e in l.entries.iter() {
            *by_kind.entry(e.kind()).or_default() += 1;
        }
    }
    for (kind, n) in by_kind {
        m.entries_by_kind
            .get_or_create(&vec![("kind".to_owned(), kind.name().to_owned())])
            .set(n);
    }
    m.peers
        .set(i64::try_from(s.view.peers().len()).unwrap_or(i64::MAX));
    let mut text = String::new();
    {
        let registry = m.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .map_err(|e| AppError::Unavailable(format!("encoding metrics: {e}")))?;
    }
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

pub(crate) fn router() -> Router<AppShared> {
    Router::new().route("/metrics", get(scrape))
}
