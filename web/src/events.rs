//! Server-sent events at `/api/events`: one `logs` event with every held log's size when the
//! stream opens, then one `entry` event per entry appended to any held log (found by polling
//! the view every [`EVENTS_POLL_MS`]). Streams end when the state's shutdown token is
//! cancelled, so they never hold up a graceful shutdown.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use leam_ledger::entry::{Entry, PublicKey};

use crate::{AppError, AppShared};

/// How often a stream looks for new entries, milliseconds.
pub const EVENTS_POLL_MS: u64 = 1000;
/// Most `entry` events one poll emits per log; a log that grew by more gets one `gap` event
/// for the rest (fetch them from `/api/logs/{key}/entries`).
pub const EVENTS_PER_POLL_MAX: u64 = 256;
/// Most event streams open at once.
pub const EVENT_STREAMS_MAX: usize = 64;

static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

struct StreamGuard;
impl Drop for StreamGuard {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Poller {
    s: AppShared,
    sizes: BTreeMap<PublicKey, u64>,
    pending: VecDeque<Event>,
    _guard: StreamGuard,
}

fn json_event(name: &str, v: serde_json::Value) -> Event {
    Event::default().event(name).data(v.to_string())
}

impl Poller {
    fn poll(&mut self) {
        for info in self.s.view.logs() {
            let seen = self.sizes.get(&info.key).copied().unwrap_or(0);
            if info.size <= seen {
                continue;
            }
            let end = info.size.min(seen + EVENTS_PER_POLL_MAX);
            if let Ok(list) = self.s.view.entries(&info.key, seen, end) {
                for (i, bytes) in list.iter().enumerate() {
                    let kind = Entry::decode(bytes)
                        .map(|e| e.kind().name())
                        .unwrap_or("undecodable");
                    self.pending.push_back(json_event(
                        "entry",
                        serde_json::json!({
                            "log": hex::encode(info.key),
                            "index": seen + i as u64,
                            "kind": kind,
                        }),
                    ));
                }
            }
            if end < info.size {
                self.pending.push_back(json_event(
                    "gap",
                    serde_json::json!({ "log": hex::encode(info.key), "from": end, "to": info.size }),
                ));
            }
            self.sizes.insert(info.key, info.size);
        }
    }
}

async fn events(State(s): State<AppShared>) -> Result<Response, AppError> {
    if OPEN_STREAMS.fetch_add(1, Ordering::SeqCst) >= EVENT_STREAMS_MAX {
        OPEN_STREAMS.fetch_sub(1, Ordering::SeqCst);
        return Err(AppError::TooManyRequests(format!(
            "at most {EVENT_STREAMS_MAX} event streams are served at once"
        )));
    }
    let guard = StreamGuard;
    let logs = s.view.logs();
    let sizes: BTreeMap<PublicKey, u64> = logs.iter().map(|l| (l.key, l.size)).collect();
    let hello = json_event(
        "logs",
        serde_json::json!(logs
            .iter()
            .map(|l| serde_json::json!({ "log": hex::encode(l.key), "size": l.size }))
            .collect::<Vec<_>>()),
    );
    let shutdown = s.shutdown.clone();
    let poller = Poller {
        s: Arc::clone(&s),
        sizes,
        pending: VecDeque::from([hello]),
        _guard: guard,
    };
    let stream = futures::stream::unfold(poller, move |mut p| {
        let shutdown = shutdown.clone();
        async move {
            loop {
                if shutdown.is_cancelled() {
                    return None;
                }
                if let Some(ev) = p.pending.pop_front() {
                    return Some((Ok::<Event, Infallible>(ev), p));
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(EVENTS_POLL_MS)) => {}
                }
                p.poll();
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

pub(crate) fn router() -> Router<AppShared> {
    Router::new().route("/api/events", get(events))
}
