//! Server-rendered pages (maud): `/` federation overview, `/ledger` explorer, `/market`,
//! `/report` funder report. No JavaScript; one vendored stylesheet served with immutable cache
//! headers; charts are server-side SVG, deterministic for the same ledger. Every figure cell
//! carries `data-field`/`data-value` attributes so tools (and browser tests) can read the
//! exact integers.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use leam_ledger::account::{Membership, Totals};
use leam_ledger::entry::{Body, Entry, Kind, PublicKey, Sector};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;

use crate::api::{cosigners, of_kind, LIMIT_DEFAULT};
use crate::{members, parse_key, AppError, AppShared, LogEntries};

/// The stylesheet, vendored into the binary.
pub const CSS: &str = include_str!("../assets/leam.css");
/// Versioned path of the stylesheet (a new version gets a new path, so it may be cached
/// forever).
pub const CSS_PATH: &str = "/static/leam.v2.css";
/// Bar chart width in SVG units.
const CHART_WIDTH: u32 = 640;
/// Width kept right of the longest bar for its value label.
const VALUE_LABEL_W: u32 = 160;
/// Height of one bar row.
const BAR_HEIGHT: u32 = 22;

fn num(v: impl Into<i128>) -> String {
    let v: i128 = v.into();
    let s = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        format!("−{out}")
    } else {
        out
    }
}

fn eur(cents: impl Into<i128>) -> String {
    let c: i128 = cents.into();
    format!("€{}.{:02}", num(c / 100), (c % 100).abs())
}

fn short(k: &PublicKey) -> String {
    hex::encode(&k[..8])
}

fn page(title: &str, current: &str, body: Markup) -> Response {
    let nav = [
        ("/", "Federation"),
        ("/ledger", "Ledger"),
        ("/market", "Market"),
        ("/report", "Funder report"),
        ("/api/openapi.json", "API"),
    ];
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · leam" }
                link rel="stylesheet" href=(CSS_PATH);
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header { nav aria-label="Main" { ul {
                    @for (href, label) in nav {
                        li { a href=(href) aria-current=[(href == current).then_some("page")] { (label) } }
                    }
                } } }
                main #main { h1 { (title) } (body) }
                footer { p { "leam: a federation sharing compute. Every figure here is computed from signed, witnessed ledger entries; the logs themselves are at " code { "/tlog/<log key>/" } " for any C2SP tlog-tiles client." } }
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

/// A horizontal bar chart: one row per (label, value), scaled to the largest value.
fn bar_chart(id: &str, title: &str, unit: &str, rows: &[(String, i128)]) -> Markup {
    let label_w = 170u32;
    let max = rows.iter().map(|r| r.1.max(0)).max().unwrap_or(0).max(1);
    let height = BAR_HEIGHT * rows.len().max(1) as u32 + 10;
    // Room right of the longest bar for its value label ("1,234,500 cents" at the chart's
    // font size is about 110 units).
    let span = i128::from(CHART_WIDTH - label_w - VALUE_LABEL_W);
    html! {
        figure {
            svg.chart #(id) role="img" aria-labelledby=(format!("{id}-t")) viewBox=(format!("0 0 {CHART_WIDTH} {height}")) width=(CHART_WIDTH) height=(height) xmlns="http://www.w3.org/2000/svg" {
                title id=(format!("{id}-t")) { (title) }
                @for (i, (label, v)) in rows.iter().enumerate() {
                    @let y = 5 + BAR_HEIGHT * i as u32;
                    @let w = (v.max(&0) * span / max) as u32;
                    text x="0" y=(y + 15) { (label) }
                    rect x=(label_w) y=(y + 3) width=(w) height=(BAR_HEIGHT - 6) fill="#0b5394" {}
                    text x=(label_w + w + 6) y=(y + 15) { (num(*v)) " " (unit) }
                }
            }
            figcaption { (title) }
        }
    }
}

fn sector_rows(
    sectors: &BTreeMap<Sector, Totals>,
    f: impl Fn(&Totals) -> i128,
) -> Vec<(String, i128)> {
    sectors
        .iter()
        .map(|(s, t)| (s.name().to_owned(), f(t)))
        .collect()
}

fn org_of(m: &BTreeMap<PublicKey, Membership>, k: &PublicKey) -> String {
    m.get(k)
        .map(|x| x.organisation.clone())
        .unwrap_or_else(|| format!("non-member {}", short(k)))
}

fn summary(e: &Entry, m: &BTreeMap<PublicKey, Membership>) -> String {
    match &e.body {
        Body::Admission(a) => format!(
            "admits {} ({}) as {}",
            a.organisation,
            a.sector.name(),
            short(&a.member)
        ),
        Body::Deposit(d) => format!(
            "deposits {} of {} money, reference {}",
            eur(d.eur_cents),
            if matches!(d.money, leam_ledger::entry::Money::Public) {
                "public"
            } else {
                "private"
            },
            d.reference
        ),
        Body::Offer(o) => format!(
            "offers {} units/hour at {} per 1,000 units (offer {})",
            num(o.compute_units_per_hour),
            eur(o.price_cents_per_kilo_unit),
            o.offer_id
        ),
        Body::Bid(b) => format!(
            "bids for {} units of job {} at most {} per 1,000 units",
            num(b.compute_units),
            &hex::encode(b.job_id)[..12],
            eur(b.max_price_cents_per_kilo_unit)
        ),
        Body::Lease(c) => format!(
            "lease: {} computes {} units for {} at {}",
            org_of(m, &c.terms.provider),
            num(c.terms.compute_units),
            org_of(m, &c.terms.bidder),
            eur(c.terms.price_cents)
        ),
        Body::Receipt(c) => format!(
            "receipt: {} computed shard {} ({} units, {} GPU-ms) for {}",
            org_of(m, &c.terms.provider),
            c.terms.shard,
            num(c.terms.compute_units),
            num(c.terms.gpu_ms),
            org_of(m, &c.terms.bidder)
        ),
        Body::Verdict(v) => format!(
            "verdict on shard {} by {}: {}",
            v.shard,
            org_of(m, &v.provider),
            if v.accepted { "accepted" } else { "rejected" }
        ),
        Body::Settlement(c) => format!(
            "settlement: {} pays {} {}",
            org_of(m, &c.terms.payer),
            org_of(m, &c.terms.payee),
            eur(c.terms.credits_cents)
        ),
        Body::Evidence(ev) => format!("evidence against {}: {:?}", org_of(m, &ev.accused), ev.kind),
        Body::Job(j) => format!(
            "publishes job {} ({} bytes of job description)",
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&j.description))[..12],
            j.description.len()
        ),
        Body::Clearing(c) => format!(
            "clears job {}: {} provider(s) at {} per 1,000 units",
            &hex::encode(c.job_id)[..12],
            c.assignments.len(),
            eur(c.price_cents_per_kilo_unit)
        ),
        Body::Reveal(r) => format!(
            "reveals the replication seed of job {}",
            &hex::encode(r.job_id)[..12]
        ),
        Body::Data(d) => format!(
            "publishes data pool {} ({} bytes, licence {}, from {})",
            &hex::encode(d.sha256)[..12],
            d.bytes,
            d.licence,
            d.source
        ),
    }
}

fn load(s: &AppShared) -> Result<(Vec<LogEntries>, BTreeMap<PublicKey, Membership>), AppError> {
    let logs = s.snapshot()?;
    let m = members(s.view.genesis().as_ref(), &logs);
    Ok((logs, m))
}

async fn overview(State(s): State<AppShared>) -> Result<Response, AppError> {
    let (logs, m) = load(&s)?;
    let peers = s.view.peers();
    let capacity: u64 = of_kind(&logs, Kind::Offer)
        .iter()
        .filter_map(|e| match &e.body {
            Body::Offer(o) => Some(o.compute_units_per_hour),
            _ => None,
        })
        .fold(0u64, u64::saturating_add);
    let genesis = s.view.genesis();
    Ok(page(
        "Federation",
        "/",
        html! {
            p.explain { "The members of this federation share compute. Each member's node keeps a signed, append-only log of what it offered, bought, computed and paid; other members replicate and witness these logs." }
            @if let Some(g) = &genesis {
                p { "Federation " code { (hex::encode(&g.id()[..8])) } ": " (g.members.len()) " founders, " (g.threshold) " votes admit a new member, subsidy parameter " (g.subsidy_percent) " %." }
            }
            h2 { "Members by sector" }
            @for sector in Sector::ALL {
                @let list: Vec<_> = m.iter().filter(|(_, x)| x.sector == sector).collect();
                @if !list.is_empty() {
                    h3 { (sector.name()) " (" (list.len()) ")" }
                    ul { @for (k, x) in list { li { (x.organisation) " " span.key { (short(k)) } } } }
                }
            }
            h2 { "Capacity on offer" }
            p { strong data-field="capacity_units_per_hour" data-value=(capacity) { (num(capacity)) } " compute units per hour in all offers held." }
            h2 { "Logs and their witnesses" }
            div.table-wrap { table {
                thead { tr { th { "Log owner" } th.num { "Entries" } th { "Cosigned by" } } }
                tbody { @for l in &logs {
                    @let origin = leam_ledger::identity::origin_of(&l.info.key);
                    tr {
                        td { a href=(format!("/ledger?log={}", hex::encode(l.info.key))) { (org_of(&m, &l.info.key)) } }
                        td.num data-field="size" data-value=(l.info.size) { (num(l.info.size)) }
                        td { @for c in cosigners(&l.info.checkpoint, &origin, &m) {
                            (c.organisation.clone().unwrap_or(c.name.clone())) @if c.verified { " ✓" } @else { span.warn { " (not verified)" } } " "
                        } }
                    }
                } }
            } }
            h2 { "Peers online" }
            @if peers.is_empty() { p { "No peers connected (or this server serves copies of logs)." } }
            @else { ul { @for p in &peers { li { (p.organisation) " (" (p.sector) ")" @if let Some(r) = p.rtt_ms { ", " (format!("{r:.1}")) " ms" } } } } }
        },
    ))
}

/// Query of the ledger page.
#[derive(Debug, Deserialize)]
pub struct LedgerQuery {
    /// Log key, hex.
    pub log: Option<String>,
    /// First entry shown.
    pub start: Option<u64>,
}

async fn ledger(
    State(s): State<AppShared>,
    q: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = q.map_err(|e| AppError::BadRequest(format!("query: {}", e.body_text())))?;
    let (logs, m) = load(&s)?;
    let selected = match &q.log {
        Some(k) => Some(parse_key(k)?),
        None => logs.first().map(|l| l.info.key),
    };
    let log = selected.and_then(|k| logs.iter().find(|l| l.info.key == k));
    let start = q.start.unwrap_or(0);
    let evidence = of_kind(&logs, Kind::Evidence);
    Ok(page(
        "Ledger explorer",
        "/ledger",
        html! {
            p.explain { "Each member's log is a Merkle tree of signed entries. The checkpoint commits to all entries; witnesses cosign it after checking the log only grew. Proofs and the raw tiles are in the API." }
            div.table-wrap { table {
                thead { tr { th { "Log" } th.num { "Entries" } th { "Root" } th { "Checkpoint cosigned by" } } }
                tbody { @for l in &logs {
                    @let origin = leam_ledger::identity::origin_of(&l.info.key);
                    tr {
                        td { a href=(format!("/ledger?log={}", hex::encode(l.info.key))) { (org_of(&m, &l.info.key)) } }
                        td.num { (num(l.info.size)) }
                        td.key { (&hex::encode(l.info.root)[..16]) "…" }
                        td { @for c in cosigners(&l.info.checkpoint, &origin, &m) { (c.organisation.clone().unwrap_or(c.name.clone())) @if c.verified { " ✓ " } @else { " (unverified) " } } }
                    }
                } }
            } }
            @if let Some(l) = log {
                h2 { "Entries of " (org_of(&m, &l.info.key)) }
                div.table-wrap { table {
                    thead { tr { th.num { "#" } th { "Kind" } th { "What it says" } } }
                    tbody { @for e in l.entries.iter().skip(start as usize).take(LIMIT_DEFAULT as usize) {
                        tr { td.num { (e.seq) } td { (e.kind().name()) } td { (summary(e, &m)) } }
                    } }
                } }
                nav aria-label="Entry pages" {
                    @if start > 0 { a href=(format!("/ledger?log={}&start={}", hex::encode(l.info.key), start.saturating_sub(LIMIT_DEFAULT))) { "← earlier" } " " }
                    @if start + LIMIT_DEFAULT < l.entries.len() as u64 { a href=(format!("/ledger?log={}&start={}", hex::encode(l.info.key), start + LIMIT_DEFAULT)) { "later →" } }
                }
            }
            h2 { "Evidence of misbehaviour" }
            @if evidence.is_empty() { p { "None recorded." } }
            @else { ul { @for e in &evidence { li { (org_of(&m, &e.author)) " (entry " (e.seq) "): " (summary(e, &m)) } } } }
        },
    ))
}

/// Why a bid is or is not served.
pub(crate) fn bid_status(bid: &Entry, logs: &[LogEntries]) -> String {
    let Body::Bid(b) = &bid.body else {
        return String::new();
    };
    let leased: u64 = of_kind(logs, Kind::Lease)
        .iter()
        .filter_map(|e| match &e.body {
            Body::Lease(c) if c.terms.job_id == b.job_id && c.terms.bidder == bid.author => {
                Some(c.terms.compute_units)
            }
            _ => None,
        })
        .fold(0u64, u64::saturating_add);
    if leased > 0 {
        return format!(
            "served: {} of {} units leased",
            num(leased),
            num(b.compute_units)
        );
    }
    let valid: Vec<u64> = of_kind(logs, Kind::Offer)
        .iter()
        .filter_map(|e| match &e.body {
            Body::Offer(o) if e.author != bid.author && o.valid_until_ms >= bid.timestamp_ms => {
                Some(o.price_cents_per_kilo_unit)
            }
            _ => None,
        })
        .collect();
    match valid.iter().min() {
        None => "not served: no other member has a valid offer".to_owned(),
        Some(&cheapest) if cheapest > b.max_price_cents_per_kilo_unit => format!(
            "not served: no offer at or below its max price of {} per 1,000 units (cheapest valid offer: {})",
            eur(b.max_price_cents_per_kilo_unit), eur(cheapest)
        ),
        Some(&cheapest) => format!(
            "waiting: offers at or below its max price exist (cheapest {}), but no provider has co-signed a lease yet",
            eur(cheapest)
        ),
    }
}

async fn market(State(s): State<AppShared>) -> Result<Response, AppError> {
    let (logs, m) = load(&s)?;
    let offers = of_kind(&logs, Kind::Offer);
    let bids = of_kind(&logs, Kind::Bid);
    let leases = of_kind(&logs, Kind::Lease);
    Ok(page(
        "Market",
        "/market",
        html! {
            p.explain { "Providers offer compute at a price per 1,000 compute units; bidders ask for units at a maximum price. A lease is a contract co-signed by both. For each bid this page says whether it is served, and if not, why." }
            h2 { "Bids" }
            div.table-wrap { table {
                thead { tr { th { "Bidder" } th { "Job" } th.num { "Units" } th.num { "Max price / 1,000" } th { "Status" } } }
                tbody { @for b in &bids { @if let Body::Bid(x) = &b.body {
                    tr { td { (org_of(&m, &b.author)) } td.key { (&hex::encode(x.job_id)[..12]) } td.num { (num(x.compute_units)) } td.num { (eur(x.max_price_cents_per_kilo_unit)) } td data-field="bid_status" { (bid_status(b, &logs)) } }
                } } }
            } }
            h2 { "Leases" }
            div.table-wrap { table {
                thead { tr { th { "Provider" } th { "Bidder" } th.num { "Units" } th.num { "Price" } } }
                tbody { @for l in &leases { @if let Body::Lease(c) = &l.body {
                    tr { td { (org_of(&m, &c.terms.provider)) } td { (org_of(&m, &c.terms.bidder)) } td.num { (num(c.terms.compute_units)) } td.num { (eur(c.terms.price_cents)) } }
                } } }
            } }
            h2 { "Offers (" (offers.len()) ")" }
            div.table-wrap { table {
                thead { tr { th { "Provider" } th.num { "Units / hour" } th.num { "Price / 1,000" } } }
                tbody { @for o in offers.iter().take(LIMIT_DEFAULT as usize) { @if let Body::Offer(x) = &o.body {
                    tr { td { (org_of(&m, &o.author)) } td.num { (num(x.compute_units_per_hour)) } td.num { (eur(x.price_cents_per_kilo_unit)) } }
                } } }
            } }
            @if offers.len() as u64 > LIMIT_DEFAULT { p { "First " (LIMIT_DEFAULT) " shown; all are at " a href="/api/offers?limit=500" { "/api/offers" } "." } }
        },
    ))
}

fn cell(org: &str, field: &str, v: impl Into<i128> + Copy, money: bool) -> Markup {
    let value: i128 = v.into();
    html! { td.num data-org=(org) data-field=(field) data-value=(value) { @if money { (eur(value)) } @else { (num(value)) } } }
}

async fn report(State(s): State<AppShared>) -> Result<Response, AppError> {
    let (logs, m) = load(&s)?;
    let r = s.report()?;
    let genesis = s.view.genesis();
    let paid: u64 = of_kind(&logs, Kind::Settlement)
        .iter()
        .filter_map(|e| match &e.body {
            Body::Settlement(c) => Some(c.terms.credits_cents),
            _ => None,
        })
        .fold(0u64, u64::saturating_add);
    let public: u64 = r
        .sectors
        .values()
        .map(|t| t.funding_public_eur_cents)
        .fold(0, u64::saturating_add);
    let evidence = of_kind(&logs, Kind::Evidence);
    Ok(page(
        "Funder report",
        "/report",
        html! {
            p.explain { "This report is computed from the federation's ledger: every member signs what it does, the other members keep copies and cosign them, so no single member can change these figures afterwards. Compute is counted in compute units (work measured from the model's tensor shapes, not from time); money in euros." }
            p { a href="/api/report.csv" download { "Download as CSV" } " · " a href="/api/report" { "as JSON" } " (the same figures as " code { "leam audit --json" } ")." }
            h2 { "Compute contributed and consumed, by sector" }
            p.explain { "Contributed: work a member's nodes computed for others that a referee checked and accepted. Consumed: accepted work others computed for the member. Only verified work counts here." }
            (bar_chart("contributed", "Compute contributed (verified units) by sector", "units", &sector_rows(&r.sectors, |t| t.compute_contributed_units.into())))
            (bar_chart("consumed", "Compute consumed (verified units) by sector", "units", &sector_rows(&r.sectors, |t| t.compute_consumed_units.into())))
            h2 { "Money deposited, by sector" }
            p.explain { "Deposits are kept apart by origin: public funding (grants, agencies) and private money. Deposits become credits that pay for compute." }
            (bar_chart("public-money", "Public funding deposited by sector (euro cents)", "cents", &sector_rows(&r.sectors, |t| t.funding_public_eur_cents.into())))
            (bar_chart("private-money", "Private money deposited by sector (euro cents)", "cents", &sector_rows(&r.sectors, |t| t.funding_private_eur_cents.into())))
            h2 { "Public subsidy" }
            p { "Public funding deposited: " strong data-field="funding_public_eur_cents" data-value=(public) { (eur(public)) } "." @if let Some(g) = &genesis { " The federation's subsidy parameter is " (g.subsidy_percent) " %: it is recorded in the genesis for the market rules; the ledger does not yet record subsidy payments, so paid and remaining subsidy are not shown." } }
            h2 { "Work: processed, verified, rejected and paid, kept apart" }
            p.explain { "Processed but unverified work has a receipt but no referee verdict yet; rejected work failed verification and earns nothing; verified work passed; paid is what bidders actually settled in credits. These are never added together." }
            div.table-wrap { table {
                thead { tr { th { "Organisation" } th { "Sector" } th.num { "Verified units" } th.num { "Unverified units" } th.num { "Rejected units" } th.num { "Consumed units" } th.num { "GPU time contributed (ms)" } th.num { "Public funding" } th.num { "Private money" } th.num { "Credit balance" } th.num { "Evidence against" } } }
                tbody { @for (name, o) in &r.organisations {
                    @let t = &o.totals;
                    tr {
                        th scope="row" { (name) } td { (o.sector.name()) }
                        (cell(name, "compute_contributed_units", t.compute_contributed_units, false))
                        (cell(name, "compute_unverified_units", t.compute_unverified_units, false))
                        (cell(name, "compute_rejected_units", t.compute_rejected_units, false))
                        (cell(name, "compute_consumed_units", t.compute_consumed_units, false))
                        (cell(name, "compute_contributed_gpu_ms", t.compute_contributed_gpu_ms, false))
                        (cell(name, "funding_public_eur_cents", t.funding_public_eur_cents, true))
                        (cell(name, "funding_private_eur_cents", t.funding_private_eur_cents, true))
                        (cell(name, "credit_balance_cents", t.credit_balance_cents, true))
                        (cell(name, "evidence_against", t.evidence_against, false))
                    }
                } }
            } }
            p { "Paid: " strong data-field="settled_cents" data-value=(paid) { (eur(paid)) } " settled in credits over " (r.facts) " co-signed facts, from " (num(r.entries)) " entries in " (r.logs) " logs." }
            h2 { "Evidence of misbehaviour" }
            p.explain { "Signed accusations with their proof: a referee's rejected shard, a broken agreement, or two checkpoints of one log that cannot both be true." }
            @if evidence.is_empty() { p { "None recorded." } }
            @else { ul { @for e in &evidence { li { (summary(e, &m)) " — filed by " (org_of(&m, &e.author)) ", " a href=(format!("/api/logs/{}/entries?start={}&limit=1", hex::encode(e.author), e.seq)) { "entry " (e.seq) } } } } }
            (PreEscaped(""))
        },
    ))
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, crate::tiles::TILE_CACHE_CONTROL),
        ],
        CSS,
    )
        .into_response()
}

pub(crate) fn router() -> Router<AppShared> {
    Router::new()
        .route("/", get(overview))
        .route("/ledger", get(ledger))
        .route("/market", get(market))
        .route("/report", get(report))
        .route(CSS_PATH, get(css))
}
