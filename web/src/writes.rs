//! Writes: `POST /api/jobs`, `/api/bids`, `/api/offers`, `/api/deposits`, `/api/admissions` and
//! `/api/data`, each carrying one signed ledger entry.
//!
//! A write is accepted only when, in this order: the client is within its rate limit; the
//! server accepts writes at all (a node with a control token; `leam serve` is read-only: 403);
//! `Authorization: Bearer <token>` is present (else 401) and equals the node's control token,
//! compared in constant time (else 403); the body is at most [`WRITE_BODY_BYTES_MAX`] bytes
//! (413) of JSON `{"entry_hex": "..."}` or `{"entry_base64": "..."}` (400); the bytes decode
//! as a canonical entry (400) of the route's kind (400) whose author signature and any
//! co-signature verify (400); and the author is a federation member (403). Only then is it
//! handed to the node's [`crate::Submit`], whose refusal (log rules) is a 409.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Extension;
use axum::Json;
use base64::Engine as _;
use leam_ledger::entry::{Entry, Kind};
use serde::Deserialize;
use subtle::ConstantTimeEq as _;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::ErrorJson;
use crate::view::Accepted;
use crate::{members, AppError, AppShared};

/// Largest write body, bytes: a 64 KiB entry in hex plus the JSON around it.
pub const WRITE_BODY_BYTES_MAX: usize = 2 * leam_ledger::entry::ENTRY_BYTES_MAX + 1024;
/// Most clients the rate limiter tracks at once; beyond, idle clients are forgotten first.
pub const RATE_CLIENTS_MAX: usize = 10_000;

/// A per-client token bucket: `burst` writes at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Writes a client may send at once.
    pub burst: u32,
    /// Writes per minute a client may sustain.
    pub per_minute: u32,
}

impl Default for RateLimit {
    /// 30 at once, 120 per minute.
    fn default() -> Self {
        RateLimit {
            burst: 30,
            per_minute: 120,
        }
    }
}

/// Token buckets keyed by client address (one shared bucket for clients without one, as in
/// tests without a socket).
pub(crate) struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<Option<IpAddr>, (f64, Instant)>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        Limiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let rate = f64::from(self.limit.per_minute) / 60.0;
        (tokens + now.duration_since(since).as_secs_f64() * rate).min(f64::from(self.limit.burst))
    }

    /// Take one token for `client`, or say how long to wait.
    pub fn take(&self, client: Option<IpAddr>) -> Result<(), AppError> {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !b.contains_key(&client) && b.len() >= RATE_CLIENTS_MAX {
            let burst = f64::from(self.limit.burst);
            b.retain(|_, (t, at)| self.refill(*t, *at, now) < burst);
            if b.len() >= RATE_CLIENTS_MAX {
                return Err(AppError::TooManyRequests(format!(
                    "more than {RATE_CLIENTS_MAX} clients are writing; try again later"
                )));
            }
        }
        let (tokens, at) = b
            .entry(client)
            .or_insert((f64::from(self.limit.burst), now));
        let t = self.refill(*tokens, *at, now);
        if t < 1.0 {
            return Err(AppError::TooManyRequests(format!(
                "rate limit: at most {} writes at once and {} per minute per client",
                self.limit.burst, self.limit.per_minute
            )));
        }
        *tokens = t - 1.0;
        *at = now;
        Ok(())
    }
}

/// Body of a write: one signed entry's canonical bytes, in hex or in base64 (exactly one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJson {
    /// The entry's canonical encoding (`specs/ledger.md`), lowercase or uppercase hex.
    pub entry_hex: Option<String>,
    /// The entry's canonical encoding, standard base64 with padding.
    pub entry_base64: Option<String>,
}

/// The route a write came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/api/bids`.
    Bids,
    /// `/api/offers`.
    Offers,
    /// `/api/deposits`.
    Deposits,
    /// `/api/admissions`.
    Admissions,
    /// `/api/data`.
    Data,
    /// `/api/jobs` (a job description a bidder publishes before its bid).
    Jobs,
}

impl Route {
    /// The entry kind the route accepts.
    pub fn kind(self) -> Kind {
        match self {
            Route::Bids => Kind::Bid,
            Route::Offers => Kind::Offer,
            Route::Deposits => Kind::Deposit,
            Route::Admissions => Kind::Admission,
            Route::Data => Kind::Data,
            Route::Jobs => Kind::Job,
        }
    }
    fn path(self) -> &'static str {
        match self {
            Route::Bids => "/api/bids",
            Route::Offers => "/api/offers",
            Route::Deposits => "/api/deposits",
            Route::Admissions => "/api/admissions",
            Route::Data => "/api/data",
            Route::Jobs => "/api/jobs",
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, AppError> {
    let v = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        AppError::Unauthorized(
            "missing `Authorization: Bearer <token>` (the token is the node's control.token)"
                .into(),
        )
    })?;
    v.to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            AppError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
        })
}

/// Requires `Authorization: Bearer <token>` equal to the node's control `token` (compared in
/// constant time): 401 without it, 403 with another.
pub fn authorize(headers: &HeaderMap, token: &str) -> Result<(), AppError> {
    let given = bearer(headers)?;
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return Err(AppError::Forbidden("wrong control token".into()));
    }
    Ok(())
}

fn entry_bytes(body: &[u8]) -> Result<Vec<u8>, AppError> {
    let req: SubmitJson = serde_json::from_slice(body).map_err(|e| {
        AppError::BadRequest(format!(
            "body: expected JSON {{\"entry_hex\": \"...\"}} or {{\"entry_base64\": \"...\"}}: {e}"
        ))
    })?;
    match (req.entry_hex, req.entry_base64) {
        (Some(h), None) => hex::decode(h.trim()).map_err(|e| {
            AppError::BadRequest(format!(
                "entry_hex: expected an even number of hex digits: {e}"
            ))
        }),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|e| {
                AppError::BadRequest(format!("entry_base64: expected standard base64: {e}"))
            }),
        (Some(_), Some(_)) => Err(AppError::BadRequest(
            "body: expected exactly one of entry_hex and entry_base64, found both".into(),
        )),
        (None, None) => Err(AppError::BadRequest(
            "body: expected exactly one of entry_hex and entry_base64, found neither".into(),
        )),
    }
}

async fn write(
    s: AppShared,
    route: Route,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), AppError> {
    s.limiter
        .take(client.map(|Extension(ConnectInfo(a))| a.ip()))?;
    let Some((token, submit)) = &s.writes else {
        return Err(AppError::Forbidden(
            "this server is read-only: it serves copies of logs and accepts no writes".into(),
        ));
    };
    authorize(&headers, token)?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge(format!(
                "body: at most {WRITE_BODY_BYTES_MAX} bytes are accepted on {}",
                route.path()
            ))
        } else {
            AppError::BadRequest(format!("body: {}", e.body_text()))
        }
    })?;
    let bytes = entry_bytes(&body)?;
    let entry = Entry::decode(&bytes)
        .map_err(|e| AppError::BadRequest(format!("entry: not a canonical ledger entry: {e}")))?;
    let kind = route.kind();
    if entry.kind() != kind {
        return Err(AppError::BadRequest(format!(
            "entry: {} accepts {} entries, found a {} entry",
            route.path(),
            kind.name(),
            entry.kind().name()
        )));
    }
    entry
        .verify()
        .map_err(|e| AppError::BadRequest(format!("entry: signature: {e}")))?;
    let logs = s.snapshot()?;
    let m = members(s.view.genesis().as_ref(), &logs);
    if !m.contains_key(&entry.author) {
        return Err(AppError::Forbidden(format!(
            "entry: author {} is not a member of the federation",
            hex::encode(entry.author)
        )));
    }
    let accepted = submit
        .submit(entry, bytes)
        .await
        .map_err(|reason| AppError::Conflict(format!("the node refused the entry: {reason}")))?;
    Ok((StatusCode::CREATED, Json(accepted)))
}

type WriteResult = Result<(StatusCode, Json<Accepted>), AppError>;
type Client = Option<Extension<ConnectInfo<SocketAddr>>>;

/// Submit a signed bid.
#[utoipa::path(post, path = "/api/bids", tag = "writes", request_body = SubmitJson,
    security(("bearer" = [])),
    responses((status = 201, description = "Appended", body = Accepted),
              (status = 400, description = "Malformed body, entry, kind or signature", body = ErrorJson),
              (status = 401, description = "No bearer token", body = ErrorJson),
              (status = 403, description = "Read-only server, wrong token, or author not a member", body = ErrorJson),
              (status = 409, description = "The node's log rules refused it", body = ErrorJson),
              (status = 413, description = "Body too large", body = ErrorJson),
              (status = 429, description = "Rate limited", body = ErrorJson)))]
async fn post_bid(
    State(s): State<AppShared>,
    c: Client,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> WriteResult {
    write(s, Route::Bids, c, h, b).await
}

/// Submit a signed capacity offer.
#[utoipa::path(post, path = "/api/offers", tag = "writes", request_body = SubmitJson,
    responses((status = 201, description = "Appended", body = Accepted),
              (status = 400, description = "Refused", body = ErrorJson)))]
async fn post_offer(
    State(s): State<AppShared>,
    c: Client,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> WriteResult {
    write(s, Route::Offers, c, h, b).await
}

/// Submit a signed deposit.
#[utoipa::path(post, path = "/api/deposits", tag = "writes", request_body = SubmitJson,
    responses((status = 201, description = "Appended", body = Accepted),
              (status = 400, description = "Refused", body = ErrorJson)))]
async fn post_deposit(
    State(s): State<AppShared>,
    c: Client,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> WriteResult {
    write(s, Route::Deposits, c, h, b).await
}

/// Submit a signed admission vote.
#[utoipa::path(post, path = "/api/admissions", tag = "writes", request_body = SubmitJson,
    responses((status = 201, description = "Appended", body = Accepted),
              (status = 400, description = "Refused", body = ErrorJson)))]
async fn post_admission(
    State(s): State<AppShared>,
    c: Client,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> WriteResult {
    write(s, Route::Admissions, c, h, b).await
}

/// Data pools: the ledger has no entry kind for them yet; every submission is refused (400).
#[utoipa::path(post, path = "/api/data", tag = "writes", request_body = SubmitJson,
    responses((status = 400, description = "No data-pool entry kind exists yet", body = ErrorJson)))]
async fn post_data(
    State(s): State<AppShared>,
    c: Client,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> WriteResult {
    write(s, Route::Data, c, h, b).await
}

/// Publish a signed job description (`specs/market.md` §2), which a bid then names by its id.
#[utoipa::path(post, path = "/api/jobs", tag = "writes", request_body = SubmitJson,
    responses((status = 201, description = "Appended", body = Accepted),
              (status = 400, description = "Refused", body = ErrorJson)))]
async fn post_job(
    State(s): State<AppShared>,
    c: Client,
    h: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> WriteResult {
    write(s, Route::Jobs, c, h, b).await
}

pub(crate) fn openapi_router() -> OpenApiRouter<AppShared> {
    OpenApiRouter::new()
        .routes(routes!(post_job))
        .routes(routes!(post_bid))
        .routes(routes!(post_offer))
        .routes(routes!(post_deposit))
        .routes(routes!(post_admission))
        .routes(routes!(post_data))
        .layer(DefaultBodyLimit::max(WRITE_BODY_BYTES_MAX))
}
