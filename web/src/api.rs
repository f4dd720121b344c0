//! The JSON API under `/api/`, with its OpenAPI 3 document generated from these handlers
//! (utoipa) and served at `/api/openapi.json`.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use leam_ledger::account::{Membership, Report, Totals};
use leam_ledger::entry::{Entry, Kind, PublicKey};
use leam_ledger::identity;
use leam_ledger::merkle;
use leam_ledger::note::Note;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::progress::JobProgress;
use crate::view::{LogHashes, LogInfo, Peer};
use crate::{members, parse_key, AppError, AppShared, LogEntries};

/// Default page size of entry lists.
pub const LIMIT_DEFAULT: u64 = 50;
/// Largest page size of entry lists.
pub const LIMIT_MAX: u64 = 500;
/// Most entries one filtered page request examines before answering with what it found (the
/// answer's `next` says where to continue).
pub const SCAN_ENTRIES_MAX: u64 = 100_000;

/// Every entry kind, for parsing `kind=` filters.
pub const KINDS: [Kind; 14] = [
    Kind::Admission,
    Kind::Deposit,
    Kind::Offer,
    Kind::Bid,
    Kind::Lease,
    Kind::Receipt,
    Kind::Verdict,
    Kind::Settlement,
    Kind::Evidence,
    Kind::Job,
    Kind::Clearing,
    Kind::Reveal,
    Kind::Data,
    Kind::Reclearing,
];

/// An error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorJson {
    /// What was wrong: what was expected and what was found.
    pub error: String,
    /// The HTTP status code.
    pub status: u16,
}

/// Any JSON value (for the ledger's own types, documented in `specs/ledger.md`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct AnyJson(pub serde_json::Value);

/// A member of the federation.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberJson {
    /// Ledger key, hex.
    pub key: String,
    /// Organisation.
    pub organisation: String,
    /// Sector: public, private, science or startup.
    pub sector: String,
    /// Whether the genesis names this member as a founder.
    pub founder: bool,
    /// Whether the serving node holds this member's log.
    pub log_held: bool,
}

/// The federation's genesis parameters.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenesisJson {
    /// Federation id: SHA-256 of the genesis body, hex.
    pub id: String,
    /// Subsidy parameter, percent.
    pub subsidy_percent: u8,
    /// Admission votes needed to admit a new member.
    pub threshold: u16,
}

/// The federation: genesis (when known) and members.
#[derive(Debug, Serialize, ToSchema)]
pub struct FederationJson {
    /// The genesis, or null when serving without one (then members are every admitted key).
    pub genesis: Option<GenesisJson>,
    /// Members by key.
    pub members: Vec<MemberJson>,
}

/// A signature line on a checkpoint other than the log's own.
#[derive(Debug, Serialize, ToSchema)]
pub struct CosignerJson {
    /// Key name on the signature line.
    pub name: String,
    /// Key ID, hex.
    pub key_id: String,
    /// The member whose witness key this is, when it is one (its organisation).
    pub organisation: Option<String>,
    /// The member's key, hex, when the name is a member's witness name.
    pub member_key: Option<String>,
    /// Whether the cosignature verified with that member's witness key.
    pub verified: bool,
    /// Cosignature time (POSIX seconds), when verified.
    pub timestamp: Option<u64>,
}

/// A held log and its checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogJson {
    /// Owner key, hex.
    pub key: String,
    /// Checkpoint origin.
    pub origin: String,
    /// C2SP verifier key of the log.
    pub verifier_key: String,
    /// Owner's organisation, when a member.
    pub organisation: Option<String>,
    /// Whether it is the serving node's own log (false for replicas and copies).
    pub own: bool,
    /// Entries.
    pub size: u64,
    /// Root hash, hex.
    pub root: String,
    /// The checkpoint note with its cosignatures.
    pub checkpoint: String,
    /// Cosignature lines on the checkpoint.
    pub cosigners: Vec<CosignerJson>,
    /// tlog-tiles base URL path of this log.
    pub tlog: String,
}

/// One decoded entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryJson {
    /// Log (author) key, hex.
    pub log: String,
    /// Index in the log.
    pub index: u64,
    /// Kind name.
    pub kind: String,
    /// RFC 6962 leaf hash of the entry's bytes, hex.
    pub leaf_hash: String,
    /// Author's organisation, when a member.
    pub organisation: Option<String>,
    /// The decoded entry (`specs/ledger.md`: author, seq, timestamp_ms, body with its kind,
    /// signature).
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
}

/// A page of a log's entries.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryPage {
    /// Log key, hex.
    pub log: String,
    /// Log size.
    pub size: u64,
    /// First index examined.
    pub start: u64,
    /// Where the next page starts, if entries remain.
    pub next: Option<u64>,
    /// The entries that matched.
    pub entries: Vec<EntryJson>,
}

/// Entries of one kind over every held log.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntryList {
    /// The entries (co-signed facts once, from the lowest log key).
    pub entries: Vec<EntryJson>,
    /// False when more entries matched than `limit` or the decode cache holds only a prefix of
    /// some log.
    pub complete: bool,
}

/// A checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointJson {
    /// Log key, hex.
    pub key: String,
    /// Tree size.
    pub size: u64,
    /// Root, hex.
    pub root: String,
    /// The note with its cosignatures.
    pub checkpoint: String,
    /// Cosignature lines.
    pub cosigners: Vec<CosignerJson>,
}

/// An inclusion proof (RFC 9162 §2.1.3).
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionJson {
    /// Entry index.
    pub index: u64,
    /// Tree size.
    pub size: u64,
    /// Root of the tree of that size, hex.
    pub root: String,
    /// Leaf hash of the entry, hex.
    pub leaf_hash: String,
    /// Proof hashes, leaf's sibling first, hex.
    pub proof: Vec<String>,
}

/// A consistency proof (RFC 9162 §2.1.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyJson {
    /// Old size.
    pub from: u64,
    /// New size.
    pub to: u64,
    /// Root of the old tree, hex.
    pub from_root: String,
    /// Root of the new tree, hex.
    pub to_root: String,
    /// Proof hashes, hex.
    pub proof: Vec<String>,
}

/// Query of `/api/logs/{key}/entries`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntriesQuery {
    /// First index (default 0).
    pub start: Option<u64>,
    /// Entries per page, 1..=500 (default 50).
    pub limit: Option<u64>,
    /// Only entries of this kind (admission, deposit, offer, bid, lease, receipt, verdict,
    /// settlement, evidence, job, clearing).
    pub kind: Option<String>,
    /// Only entries that involve this organisation (as author or party).
    pub organisation: Option<String>,
}

/// Query of the kind lists (`/api/offers`, …).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most entries returned, 1..=500 (default 50).
    pub limit: Option<u64>,
    /// Only entries that involve this organisation.
    pub organisation: Option<String>,
}

/// Query of an inclusion proof.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// Entry index.
    pub index: u64,
    /// Tree size (default: the checkpoint's).
    pub size: Option<u64>,
}

/// Query of a consistency proof.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// Old size (at least 1).
    pub from: u64,
    /// New size (default: the checkpoint's).
    pub to: Option<u64>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AppError> {
    q.map(|Query(t)| t)
        .map_err(|e| AppError::BadRequest(format!("query: {}", e.body_text())))
}

fn path_key(p: Result<Path<String>, PathRejection>) -> Result<PublicKey, AppError> {
    let Path(s) = p.map_err(|e| AppError::BadRequest(format!("path: {}", e.body_text())))?;
    parse_key(&s)
}

fn limit(l: Option<u64>) -> Result<u64, AppError> {
    let l = l.unwrap_or(LIMIT_DEFAULT);
    if !(1..=LIMIT_MAX).contains(&l) {
        return Err(AppError::BadRequest(format!(
            "limit: expected 1..={LIMIT_MAX}, found {l}"
        )));
    }
    Ok(l)
}

/// Parse an entry kind name.
pub fn parse_kind(s: &str) -> Result<Kind, AppError> {
    KINDS.into_iter().find(|k| k.name() == s).ok_or_else(|| {
        let names: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
        AppError::BadRequest(format!(
            "kind: expected one of {}, found {s:?}",
            names.join(", ")
        ))
    })
}

/// The cosignature lines of a checkpoint note, checked against the members' witness keys.
pub(crate) fn cosigners(
    note: &[u8],
    origin: &str,
    members: &BTreeMap<PublicKey, Membership>,
) -> Vec<CosignerJson> {
    let Ok(parsed) = Note::parse(note) else {
        return Vec::new();
    };
    let witnesses: Vec<(PublicKey, leam_ledger::note::Verifier)> = members
        .keys()
        .filter_map(|k| crate::witness_verifier(k).map(|v| (*k, v)))
        .collect();
    parsed
        .sigs
        .iter()
        .filter(|s| s.name != origin)
        .map(|s| {
            let w = witnesses
                .iter()
                .find(|(_, v)| v.name() == s.name && v.key_id() == s.key_id);
            let timestamp =
                w.and_then(|(_, v)| leam_ledger::checkpoint::verify_cosignature(&parsed, v).ok());
            CosignerJson {
                name: s.name.clone(),
                key_id: hex::encode(s.key_id),
                organisation: w.and_then(|(k, _)| members.get(k).map(|m| m.organisation.clone())),
                member_key: w.map(|(k, _)| hex::encode(k)),
                verified: timestamp.is_some(),
                timestamp,
            }
        })
        .collect()
}

pub(crate) fn log_json(info: &LogInfo, members: &BTreeMap<PublicKey, Membership>) -> LogJson {
    let origin = identity::origin_of(&info.key);
    LogJson {
        key: hex::encode(info.key),
        verifier_key: identity::verifier_key_of(&info.key),
        organisation: members.get(&info.key).map(|m| m.organisation.clone()),
        own: info.own,
        size: info.size,
        root: hex::encode(info.root),
        checkpoint: String::from_utf8_lossy(&info.checkpoint).into_owned(),
        cosigners: cosigners(&info.checkpoint, &origin, members),
        tlog: format!("/tlog/{}/", hex::encode(info.key)),
        origin,
    }
}

pub(crate) fn entry_json(e: &Entry, members: &BTreeMap<PublicKey, Membership>) -> EntryJson {
    EntryJson {
        log: hex::encode(e.author),
        index: e.seq,
        kind: e.kind().name().to_owned(),
        leaf_hash: hex::encode(merkle::leaf_hash(&e.encode())),
        organisation: members.get(&e.author).map(|m| m.organisation.clone()),
        entry: serde_json::to_value(e).unwrap_or(serde_json::Value::Null),
    }
}

/// Whether `e` involves `organisation` (as author or as a referenced party).
pub(crate) fn involves(
    e: &Entry,
    organisation: &str,
    members: &BTreeMap<PublicKey, Membership>,
) -> bool {
    std::iter::once(e.author)
        .chain(e.referenced_keys())
        .any(|k| {
            members
                .get(&k)
                .is_some_and(|m| m.organisation == organisation)
        })
}

/// Entries of `kind` over all logs, co-signed facts once.
pub(crate) fn of_kind(logs: &[LogEntries], kind: Kind) -> Vec<&Entry> {
    let mut ordered: Vec<&LogEntries> = logs.iter().collect();
    ordered.sort_by_key(|l| l.info.key);
    let mut facts = BTreeSet::new();
    let mut out = Vec::new();
    for l in ordered {
        for e in l.entries.iter().filter(|e| e.kind() == kind) {
            if let Some(v) = e.body.cosigned() {
                if !facts.insert(v.fact_id) {
                    continue;
                }
            }
            out.push(e);
        }
    }
    out
}

#[utoipa::path(get, path = "/api/federation", tag = "federation",
    responses((status = 200, description = "Genesis parameters and members", body = FederationJson)))]
async fn federation(State(s): State<AppShared>) -> Result<Json<FederationJson>, AppError> {
    let logs = s.snapshot()?;
    let genesis = s.view.genesis();
    let m = members(genesis.as_ref(), &logs);
    let held: BTreeSet<PublicKey> = logs.iter().map(|l| l.info.key).collect();
    Ok(Json(FederationJson {
        members: m
            .iter()
            .map(|(k, mm)| MemberJson {
                key: hex::encode(k),
                organisation: mm.organisation.clone(),
                sector: mm.sector.name().to_owned(),
                founder: genesis.as_ref().is_some_and(|g| g.founder(k).is_some()),
                log_held: held.contains(k),
            })
            .collect(),
        genesis: genesis.map(|g| GenesisJson {
            id: hex::encode(g.id()),
            subsidy_percent: g.subsidy_percent,
            threshold: g.threshold,
        }),
    }))
}

#[utoipa::path(get, path = "/api/logs", tag = "ledger",
    responses((status = 200, description = "Every held log with its checkpoint and cosigners", body = [LogJson])))]
async fn logs(State(s): State<AppShared>) -> Result<Json<Vec<LogJson>>, AppError> {
    let logs = s.snapshot()?;
    let m = members(s.view.genesis().as_ref(), &logs);
    Ok(Json(logs.iter().map(|l| log_json(&l.info, &m)).collect()))
}

#[utoipa::path(get, path = "/api/logs/{key}/entries", tag = "ledger",
    params(("key" = String, Path, description = "Log key, 64 hex digits"), EntriesQuery),
    responses((status = 200, description = "A page of decoded entries", body = EntryPage),
              (status = 400, description = "Bad key, kind or limit", body = ErrorJson),
              (status = 404, description = "No such log", body = ErrorJson)))]
async fn entries(
    State(s): State<AppShared>,
    key: Result<Path<String>, PathRejection>,
    q: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Json<EntryPage>, AppError> {
    let key = path_key(key)?;
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let kind = q.kind.as_deref().map(parse_kind).transpose()?;
    let logs = s.snapshot()?;
    let m = members(s.view.genesis().as_ref(), &logs);
    let log = logs.iter().find(|l| l.info.key == key).ok_or_else(|| {
        AppError::NotFound(format!(
            "no log with key {} is served here",
            hex::encode(key)
        ))
    })?;
    let size = log.info.size;
    let start = q.start.unwrap_or(0);
    if start > size {
        return Err(AppError::BadRequest(format!(
            "start: expected 0..={size} (the log's size), found {start}"
        )));
    }
    let cached = log.entries.len() as u64;
    let mut out = Vec::new();
    let mut i = start;
    let scan_end = size.min(start.saturating_add(SCAN_ENTRIES_MAX));
    while i < scan_end && (out.len() as u64) < limit {
        let e = if i < cached {
            log.entries[i as usize].clone()
        } else {
            let bytes = s.view.entries(&key, i, i + 1)?;
            Entry::decode(&bytes[0])
                .map_err(|e| AppError::Unavailable(format!("entry {i}: {e}")))?
        };
        i += 1;
        if kind.is_some_and(|k| e.kind() != k) {
            continue;
        }
        if q.organisation
            .as_deref()
            .is_some_and(|o| !involves(&e, o, &m))
        {
            continue;
        }
        out.push(entry_json(&e, &m));
    }
    Ok(Json(EntryPage {
        log: hex::encode(key),
        size,
        start,
        next: (i < size).then_some(i),
        entries: out,
    }))
}

#[utoipa::path(get, path = "/api/logs/{key}/checkpoint", tag = "ledger",
    params(("key" = String, Path, description = "Log key, 64 hex digits")),
    responses((status = 200, description = "The held checkpoint with its cosigners", body = CheckpointJson),
              (status = 404, description = "No such log", body = ErrorJson)))]
async fn checkpoint(
    State(s): State<AppShared>,
    key: Result<Path<String>, PathRejection>,
) -> Result<Json<CheckpointJson>, AppError> {
    let key = path_key(key)?;
    let info = s.log(&key)?;
    let logs = s.snapshot()?;
    let m = members(s.view.genesis().as_ref(), &logs);
    let l = log_json(&info, &m);
    Ok(Json(CheckpointJson {
        key: l.key,
        size: l.size,
        root: l.root,
        checkpoint: l.checkpoint,
        cosigners: l.cosigners,
    }))
}

#[utoipa::path(get, path = "/api/logs/{key}/proof/inclusion", tag = "ledger",
    params(("key" = String, Path, description = "Log key, 64 hex digits"), InclusionQuery),
    responses((status = 200, description = "Inclusion proof", body = InclusionJson),
              (status = 400, description = "Index or size out of range", body = ErrorJson)))]
async fn inclusion(
    State(s): State<AppShared>,
    key: Result<Path<String>, PathRejection>,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Json<InclusionJson>, AppError> {
    let key = path_key(key)?;
    let q = query(q)?;
    let info = s.log(&key)?;
    let size = q.size.unwrap_or(info.size);
    if size > info.size || q.index >= size {
        return Err(AppError::BadRequest(format!(
            "expected index < size <= {} (the log's size), found index {} and size {size}",
            info.size, q.index
        )));
    }
    let r = LogHashes {
        view: s.view.as_ref(),
        key,
    };
    let merr = |e: merkle::MerkleError| AppError::Unavailable(e.to_string());
    let proof = merkle::prove_record(size, q.index, &r).map_err(merr)?;
    let root = merkle::tree_hash(size, &r).map_err(merr)?;
    let leaf = s
        .view
        .hashes(&key, &[merkle::stored_hash_index(0, q.index)])?;
    Ok(Json(InclusionJson {
        index: q.index,
        size,
        root: hex::encode(root),
        leaf_hash: hex::encode(leaf[0]),
        proof: proof.iter().map(hex::encode).collect(),
    }))
}

#[utoipa::path(get, path = "/api/logs/{key}/proof/consistency", tag = "ledger",
    params(("key" = String, Path, description = "Log key, 64 hex digits"), ConsistencyQuery),
    responses((status = 200, description = "Consistency proof", body = ConsistencyJson),
              (status = 400, description = "Sizes out of range", body = ErrorJson)))]
async fn consistency(
    State(s): State<AppShared>,
    key: Result<Path<String>, PathRejection>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ConsistencyJson>, AppError> {
    let key = path_key(key)?;
    let q = query(q)?;
    let info = s.log(&key)?;
    let to = q.to.unwrap_or(info.size);
    if q.from == 0 || q.from > to || to > info.size {
        return Err(AppError::BadRequest(format!(
            "expected 1 <= from <= to <= {} (the log's size), found from {} and to {to}",
            info.size, q.from
        )));
    }
    let r = LogHashes {
        view: s.view.as_ref(),
        key,
    };
    let merr = |e: merkle::MerkleError| AppError::Unavailable(e.to_string());
    Ok(Json(ConsistencyJson {
        from: q.from,
        to,
        from_root: hex::encode(merkle::tree_hash(q.from, &r).map_err(merr)?),
        to_root: hex::encode(merkle::tree_hash(to, &r).map_err(merr)?),
        proof: merkle::prove_tree(to, q.from, &r)
            .map_err(merr)?
            .iter()
            .map(hex::encode)
            .collect(),
    }))
}

async fn list(
    s: &AppShared,
    kind: Kind,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EntryList>, AppError> {
    let q = query(q)?;
    let limit = limit(q.limit)? as usize;
    let logs = s.snapshot()?;
    let m = members(s.view.genesis().as_ref(), &logs);
    let all: Vec<&Entry> = of_kind(&logs, kind)
        .into_iter()
        .filter(|e| q.organisation.as_deref().is_none_or(|o| involves(e, o, &m)))
        .collect();
    Ok(Json(EntryList {
        complete: all.len() <= limit && logs.iter().all(LogEntries::complete),
        entries: all.iter().take(limit).map(|e| entry_json(e, &m)).collect(),
    }))
}

#[utoipa::path(get, path = "/api/blobs/{sha256}", tag = "market",
    params(("sha256" = String, Path, description = "SHA-256 of the blob, 64 hex digits")),
    responses((status = 200, description = "The blob's bytes (a corpus or a training state), checked against its hash", content_type = "application/octet-stream"),
              (status = 400, description = "Not 64 hex digits", body = ErrorJson),
              (status = 404, description = "This node holds no such blob", body = ErrorJson)))]
async fn blob(
    State(s): State<AppShared>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, AppError> {
    let Path(text) = p.map_err(|e| AppError::BadRequest(format!("path: {}", e.body_text())))?;
    let hash: [u8; 32] = hex::decode(&text)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            AppError::BadRequest(format!(
                "sha256: expected 64 hex digits, found {:?}",
                text.chars().take(80).collect::<String>()
            ))
        })?;
    let view = s.view.clone();
    let bytes = tokio::task::spawn_blocking(move || view.blob(&hash))
        .await
        .map_err(|e| AppError::Unavailable(format!("reading the blob: {e}")))?
        .ok_or_else(|| AppError::NotFound(format!("no blob {text} held here")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        bytes,
    )
        .into_response())
}

#[utoipa::path(get, path = "/api/data-pools", tag = "market", params(ListQuery),
    responses((status = 200, description = "Data pools (ledger kind 13: dataset hash, size, licence, provenance) of every held log", body = EntryList)))]
async fn data_pools(
    State(s): State<AppShared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EntryList>, AppError> {
    list(&s, Kind::Data, q).await
}

#[utoipa::path(get, path = "/api/offers", tag = "market", params(ListQuery),
    responses((status = 200, description = "Capacity offers of every held log", body = EntryList)))]
async fn offers(
    State(s): State<AppShared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EntryList>, AppError> {
    list(&s, Kind::Offer, q).await
}

#[utoipa::path(get, path = "/api/bids", tag = "market", params(ListQuery),
    responses((status = 200, description = "Bids of every held log", body = EntryList)))]
async fn bids(
    State(s): State<AppShared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EntryList>, AppError> {
    list(&s, Kind::Bid, q).await
}

#[utoipa::path(get, path = "/api/leases", tag = "market", params(ListQuery),
    responses((status = 200, description = "Co-signed leases (each fact once)", body = EntryList)))]
async fn leases(
    State(s): State<AppShared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EntryList>, AppError> {
    list(&s, Kind::Lease, q).await
}

#[utoipa::path(get, path = "/api/evidence", tag = "ledger", params(ListQuery),
    responses((status = 200, description = "Misbehaviour evidence entries", body = EntryList)))]
async fn evidence(
    State(s): State<AppShared>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<EntryList>, AppError> {
    list(&s, Kind::Evidence, q).await
}

#[utoipa::path(get, path = "/api/peers", tag = "federation",
    responses((status = 200, description = "Connected peers (empty when serving copies)", body = [Peer])))]
async fn peers(State(s): State<AppShared>) -> Json<Vec<Peer>> {
    Json(s.view.peers())
}

#[utoipa::path(get, path = "/api/jobs/progress", tag = "jobs",
    responses((status = 200, description = "The progress documents of the jobs the serving node ran or runs as a bidder (`DIR/jobs/<job id>.progress.json`, specs/market.md §8.2): per DiLoCo round runs, replicated, mismatched, merged and re-leased shards, validation loss and wall time; device time and payments by provider key; verdicts [accepted, rejected]. Read from files, not from the ledger; at most 256, malformed or oversized files left out; empty when the server holds none", body = [JobProgress])))]
async fn job_progress(State(s): State<AppShared>) -> Result<Json<Vec<JobProgress>>, AppError> {
    Ok(Json(s.job_progress().await?))
}

#[utoipa::path(get, path = "/api/report", tag = "report",
    responses((status = 200, description = "The accounting report: exactly the `accounting` object of `leam audit --json` (specs/ledger.md, Accounting)", body = AnyJson)))]
async fn report(State(s): State<AppShared>) -> Result<Response, AppError> {
    let r = s.report()?;
    Ok(Json(&*r).into_response())
}

/// CSV columns after scope, name and sector.
pub const CSV_TOTALS: [&str; 12] = [
    "compute_contributed_units",
    "compute_contributed_gpu_ms",
    "compute_consumed_units",
    "compute_consumed_gpu_ms",
    "compute_unverified_units",
    "compute_rejected_units",
    "credit_balance_cents",
    "credit_public_cents",
    "credit_private_cents",
    "funding_public_eur_cents",
    "funding_private_eur_cents",
    "evidence_against",
];

fn totals_row(t: &Totals) -> [String; 12] {
    [
        t.compute_contributed_units.to_string(),
        t.compute_contributed_gpu_ms.to_string(),
        t.compute_consumed_units.to_string(),
        t.compute_consumed_gpu_ms.to_string(),
        t.compute_unverified_units.to_string(),
        t.compute_rejected_units.to_string(),
        t.credit_balance_cents.to_string(),
        t.credit_public_cents.to_string(),
        t.credit_private_cents.to_string(),
        t.funding_public_eur_cents.to_string(),
        t.funding_private_eur_cents.to_string(),
        t.evidence_against.to_string(),
    ]
}

fn csv_field(s: &str) -> String {
    // RFC 4180 quoting; a leading = + - @ is prefixed with ' so spreadsheets do not run it.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The report as CSV: one row per organisation, then one per sector.
pub fn report_csv(r: &Report) -> String {
    let mut out = format!("scope,name,sector,{}\r\n", CSV_TOTALS.join(","));
    for (name, o) in &r.organisations {
        out.push_str(&format!(
            "organisation,{},{},{}\r\n",
            csv_field(name),
            o.sector.name(),
            totals_row(&o.totals).join(",")
        ));
    }
    for (sector, t) in &r.sectors {
        out.push_str(&format!(
            "sector,{},{},{}\r\n",
            sector.name(),
            sector.name(),
            totals_row(t).join(",")
        ));
    }
    out
}

#[utoipa::path(get, path = "/api/report.csv", tag = "report",
    responses((status = 200, description = "The report as CSV (organisations, then sectors)", content_type = "text/csv")))]
async fn report_csv_handler(State(s): State<AppShared>) -> Result<Response, AppError> {
    let r = s.report()?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"leam-report.csv\"",
            ),
        ],
        report_csv(&r),
    )
        .into_response())
}

async fn openapi(State(s): State<AppShared>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.clone(),
    )
        .into_response()
}

/// The API router and its OpenAPI document (the write routes are added to the document here
/// too, from `crate::writes`).
pub(crate) fn router() -> (axum::Router<AppShared>, utoipa::openapi::OpenApi) {
    let (router, mut api) = OpenApiRouter::<AppShared>::new()
        .routes(routes!(federation))
        .routes(routes!(logs))
        .routes(routes!(entries))
        .routes(routes!(checkpoint))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
        .routes(routes!(offers))
        .routes(routes!(data_pools))
        .routes(routes!(blob))
        .routes(routes!(bids))
        .routes(routes!(leases))
        .routes(routes!(evidence))
        .routes(routes!(peers))
        .routes(routes!(job_progress))
        .routes(routes!(report))
        .routes(routes!(report_csv_handler))
        .merge(crate::writes::openapi_router())
        .split_for_parts();
    api.info.title = "leam web API".to_owned();
    api.info.description = Some(
        "Read-only audit API of a leam node (federation, logs, entries, proofs, market, jobs' progress, report) and signed-entry submission. Transparency logs are also served in the C2SP tlog-tiles layout under /tlog/<log key hex>/.".to_owned(),
    );
    (
        router.route("/api/openapi.json", axum::routing::get(openapi)),
        api,
    )
}
