//! Server-rendered pages (maud): `/` federation overview, `/ledger` explorer, `/market`,
//! `/jobs` jobs' progress (loss curves, shards computed / checked / re-leased, verdicts,
//! device time, bytes moved, payments), `/report` funder report. No JavaScript; one vendored stylesheet served with immutable cache
//! headers; charts are server-side SVG, deterministic for the same ledger. Every figure cell
//! carries `data-field`/`data-value` attributes so tools (and browser tests) can read the
//! exact integers.

use std::collections::{BTreeMap, BTreeSet};

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
use crate::progress::JobProgress;
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

/// Where a page's figures come from, for its footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Signed, witnessed ledger entries.
    Ledger,
    /// Bidders' progress files (`/jobs`).
    Progress,
}

fn page(title: &str, current: &str, body: Markup) -> Response {
    page_from(title, current, Source::Ledger, body)
}

fn page_from(title: &str, current: &str, source: Source, body: Markup) -> Response {
    let nav = [
        ("/", "Federation"),
        ("/ledger", "Ledger"),
        ("/market", "Market"),
        ("/jobs", "Jobs"),
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
                footer { p {
                    "leam: a federation sharing compute. "
                    @match source {
                        Source::Ledger => { "Every figure here is computed from signed, witnessed ledger entries" },
                        Source::Progress => { "The figures here are the bidders' own progress records; the leases, receipts, verdicts and payments behind them are signed, witnessed ledger entries" },
                    }
                    "; the logs themselves are at " code { "/tlog/<log key>/" } " for any C2SP tlog-tiles client."
                } }
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
            "offers {} units/hour ({} MiB memory) at {} per 1,000 units (offer {})",
            num(o.compute_units_per_hour),
            num(o.memory_bytes >> 20),
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
        Body::Reclearing(r) => format!(
            "re-clears job {}: {} unfinished shard(s) of {} to {} provider(s) at {} per 1,000 units",
            &hex::encode(r.clearing.job_id)[..12],
            r.shards,
            r.replaces
                .iter()
                .map(|k| hex::encode(&k[..6]))
                .collect::<Vec<_>>()
                .join(", "),
            r.clearing.assignments.len(),
            eur(r.clearing.price_cents_per_kilo_unit)
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
                thead { tr { th { "Provider" } th.num { "Units / hour" } th.num { "Memory (MiB)" } th.num { "Price / 1,000" } } }
                tbody { @for o in offers.iter().take(LIMIT_DEFAULT as usize) { @if let Body::Offer(x) = &o.body {
                    tr { td { (org_of(&m, &o.author)) } td.num { (num(x.compute_units_per_hour)) } td.num { (num(x.memory_bytes >> 20)) } td.num { (eur(x.price_cents_per_kilo_unit)) } }
                } } }
            } }
            @if offers.len() as u64 > LIMIT_DEFAULT { p { "First " (LIMIT_DEFAULT) " shown; all are at " a href="/api/offers?limit=500" { "/api/offers" } "." } }
        },
    ))
}

/// Loss chart width, SVG units.
const LOSS_CHART_W: f64 = 640.0;
/// Loss chart height.
const LOSS_CHART_H: f64 = 260.0;
/// Room left of the plot for the loss labels.
const LOSS_LEFT: f64 = 64.0;
/// Room right of the plot.
const LOSS_RIGHT: f64 = 20.0;
/// Room above the plot.
const LOSS_TOP: f64 = 14.0;
/// Room below the plot for the round labels and the axis title.
const LOSS_BOTTOM: f64 = 46.0;
/// Most labelled points on the loss chart's round axis (every k-th point is labelled).
const LOSS_X_LABELS_MAX: usize = 12;
/// About this many steps between the loss labels (horizontal grid lines) of the loss chart.
const LOSS_Y_STEPS: u32 = 4;
/// Most decimals of a loss label.
const LOSS_LABEL_DECIMALS_MAX: i32 = 9;

/// A round step for the labels of an axis spanning `range` (> 0) in about `parts` steps:
/// 1, 2 or 5 × 10^e, with the decimals its labels need. Only IEEE basic operations, so the
/// same figures give the same chart everywhere.
fn nice_step(range: f64, parts: u32) -> (f64, usize) {
    let raw = range / f64::from(parts);
    let (mut mag, mut e) = (1.0f64, 0i32);
    while mag * 10.0 <= raw && mag * 10.0 < f64::MAX {
        mag *= 10.0;
        e += 1;
    }
    while mag > raw && mag > f64::MIN_POSITIVE {
        mag /= 10.0;
        e -= 1;
    }
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|f| f * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let e = if step >= 10.0 * mag { e + 1 } else { e };
    (step, (-e).clamp(0, LOSS_LABEL_DECIMALS_MAX) as usize)
}

/// A job's validation loss, point by point: "start" (before the first round), then after each
/// round; `None` where none was measured (or the value is not finite).
fn loss_series(p: &JobProgress) -> Vec<(String, Option<f64>)> {
    std::iter::once(("start".to_owned(), p.val_loss_start))
        .chain(p.rounds.iter().map(|r| (r.round.to_string(), r.val_loss)))
        .map(|(label, v)| (label, v.filter(|v| v.is_finite())))
        .collect()
}

fn at_point(label: &str) -> String {
    if label == "start" {
        "at the start".to_owned()
    } else {
        format!("after round {label}")
    }
}

/// The short form of a job id: its first 12 characters.
fn short_job(job: &str) -> String {
    job.chars().take(12).collect()
}

/// A line chart of the validation loss per round; deterministic for the same figures
/// (coordinates to one decimal). A gap in the line marks a round without a measurement.
fn loss_chart(id: &str, job: &str, series: &[(String, Option<f64>)]) -> Markup {
    let measured: Vec<(usize, &str, f64)> = series
        .iter()
        .enumerate()
        .filter_map(|(i, (l, v))| v.map(|v| (i, l.as_str(), v)))
        .collect();
    let (Some(first), Some(last)) = (measured.first(), measured.last()) else {
        return html! { p { "No validation loss measured yet." } };
    };
    let lowest = measured.iter().map(|m| m.2).fold(f64::INFINITY, f64::min);
    let highest = measured
        .iter()
        .map(|m| m.2)
        .fold(f64::NEG_INFINITY, f64::max);
    let range = highest - lowest;
    let (step, decimals) = nice_step(if range > 1e-9 { range } else { 1.0 }, LOSS_Y_STEPS);
    let lo = (lowest / step).floor() * step;
    let mut hi = (highest / step).ceil() * step;
    if hi - lo < step {
        hi = lo + step;
    }
    let ticks = ((hi - lo) / step).round();
    if !(lo.is_finite() && hi.is_finite() && ticks.is_finite()) || ticks > 100.0 {
        return html! { p { "The validation loss is out of the range this chart draws." } };
    }
    let ticks = ticks as u32;
    let plot_w = LOSS_CHART_W - LOSS_LEFT - LOSS_RIGHT;
    let plot_h = LOSS_CHART_H - LOSS_TOP - LOSS_BOTTOM;
    let n = series.len();
    let x = |i: usize| {
        if n <= 1 {
            LOSS_LEFT + plot_w / 2.0
        } else {
            LOSS_LEFT + plot_w * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| LOSS_TOP + plot_h * (hi - v) / (hi - lo);
    // One polyline per run of consecutive measurements.
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for (i, (_, v)) in series.iter().enumerate() {
        match v {
            Some(v) => {
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(&format!("{:.1},{:.1}", x(i), y(*v)));
            }
            None if !line.is_empty() => lines.push(std::mem::take(&mut line)),
            None => {}
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    let every = n.div_ceil(LOSS_X_LABELS_MAX).max(1);
    let bottom = LOSS_TOP + plot_h;
    let label = format!(
        "Validation loss of job {}, lower is better: {:.3} {}, {:.3} {}; lowest {:.3}.",
        short_job(job),
        first.2,
        at_point(first.1),
        last.2,
        at_point(last.1),
        lowest
    );
    html! {
        figure {
            svg.chart #(id) role="img" aria-label=(label) viewBox=(format!("0 0 {LOSS_CHART_W} {LOSS_CHART_H}")) width=(LOSS_CHART_W) height=(LOSS_CHART_H) xmlns="http://www.w3.org/2000/svg" {
                title { (label) }
                @for t in 0..=ticks {
                    @let v = lo + step * f64::from(t);
                    @let yy = format!("{:.1}", y(v));
                    line x1=(LOSS_LEFT) x2=(LOSS_CHART_W - LOSS_RIGHT) y1=(yy) y2=(yy) stroke="#ddd" {}
                    text x=(LOSS_LEFT - 6.0) y=(format!("{:.1}", y(v) + 4.0)) text-anchor="end" { (format!("{v:.decimals$}")) }
                }
                line x1=(LOSS_LEFT) x2=(LOSS_LEFT) y1=(LOSS_TOP) y2=(bottom) stroke="#555" {}
                line x1=(LOSS_LEFT) x2=(LOSS_CHART_W - LOSS_RIGHT) y1=(bottom) y2=(bottom) stroke="#555" {}
                @for (i, (l, _)) in series.iter().enumerate() {
                    @if i % every == 0 {
                        text x=(format!("{:.1}", x(i))) y=(bottom + 16.0) text-anchor="middle" { (l) }
                    }
                }
                text x=(format!("{:.1}", LOSS_LEFT + plot_w / 2.0)) y=(LOSS_CHART_H - 6.0) text-anchor="middle" { "round" }
                @for pts in lines.iter().filter(|l| l.contains(' ')) {
                    polyline points=(pts) fill="none" stroke="#0b5394" stroke-width="2" {}
                }
                @for (i, l, v) in &measured {
                    circle cx=(format!("{:.1}", x(*i))) cy=(format!("{:.1}", y(*v))) r="3" fill="#0b5394" {
                        title { "validation loss " (at_point(l)) ": " (format!("{v:.4}")) }
                    }
                }
            }
            figcaption { "Validation loss of job " (short_job(job)) "… per round (lower is better; \"start\" is the model before the first round; a gap is a round that merged no result, so measured nothing)." }
        }
    }
}

/// A byte count for people: B, KiB, MiB or GiB.
fn bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    UNITS
        .iter()
        .find(|(_, size)| b >= *size)
        .map(|(unit, size)| format!("{:.1} {unit}", b as f64 / *size as f64))
        .unwrap_or_else(|| format!("{} bytes", num(b)))
}

fn seconds(ms: u64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

/// A job's state in words.
fn state_text(state: &str) -> String {
    match state {
        "running" => "running: rounds are being computed".to_owned(),
        "settling" => "settling: every round is computed; the bidder waits for the referee's verdicts and pays the providers".to_owned(),
        "done" => "done: every round computed, verdicts in, providers paid".to_owned(),
        other => other.to_owned(),
    }
}

/// The organisation of a provider named by key hex in a progress document.
fn provider_name(m: &BTreeMap<PublicKey, Membership>, key_hex: &str) -> String {
    let mut k = [0u8; 32];
    if key_hex.len() == 64 && hex::decode_to_slice(key_hex, &mut k).is_ok() {
        org_of(m, &k)
    } else {
        format!("key {}", key_hex.chars().take(64).collect::<String>())
    }
}

/// A figure cell of a job's round.
fn round_cell(job: &str, round: u32, field: &str, v: u32) -> Markup {
    html! { td.num data-job=(job) data-round=(round) data-field=(field) data-value=(v) { (num(v)) } }
}

fn job_section(i: usize, p: &JobProgress, m: &BTreeMap<PublicKey, Membership>) -> Markup {
    let job = p.job.as_str();
    let short = short_job(job);
    let [accepted, rejected] = p.verdicts;
    let providers: BTreeSet<&String> = p.device_ms.keys().chain(p.paid_cents.keys()).collect();
    let device_total = p.device_ms.values().fold(0u64, |a, b| a.saturating_add(*b));
    let paid_total = p
        .paid_cents
        .values()
        .fold(0u64, |a, b| a.saturating_add(*b));
    let heading = format!("job-{i}");
    html! {
        section aria-labelledby=(heading) {
            h2 #(heading) { "Job " code { (short) "…" } }
            p { "Job id " code.key data-field="job" { (job) } ". State: " strong data-job=(job) data-field="state" { (state_text(&p.state)) } "." }
            (loss_chart(&format!("loss-{i}"), job, &loss_series(p)))
            @if let Some(v) = p.val_loss_start.filter(|v| v.is_finite()) {
                p { "Validation loss before the first round: " strong data-job=(job) data-field="val_loss_start" data-value=(v) { (format!("{v:.4}")) } "." }
            }
            div.table-wrap { table {
                caption { "Rounds of job " (short) "…: shards computed, checked, merged and re-leased" }
                thead { tr {
                    th scope="col" { "Round" }
                    th.num scope="col" { "Shards" }
                    th.num scope="col" { "Runs" }
                    th.num scope="col" { "Replicated" }
                    th.num scope="col" { "Mismatched" }
                    th.num scope="col" { "Merged" }
                    th.num scope="col" { "Re-leased" }
                    th.num scope="col" { "Accepted" }
                    th.num scope="col" { "Rejected" }
                    th.num scope="col" { "Validation loss" }
                    th.num scope="col" { "Seconds" }
                } }
                tbody { @for r in &p.rounds {
                    tr data-job=(job) data-round=(r.round) {
                        th scope="row" { (r.round) }
                        (round_cell(job, r.round, "shards", r.shards))
                        (round_cell(job, r.round, "runs", r.runs))
                        (round_cell(job, r.round, "replicated", r.replicated))
                        (round_cell(job, r.round, "mismatched", r.mismatched))
                        (round_cell(job, r.round, "merged", r.merged))
                        (round_cell(job, r.round, "released", r.released))
                        (round_cell(job, r.round, "verified", r.verified))
                        (round_cell(job, r.round, "rejected", r.rejected))
                        @match r.val_loss.filter(|v| v.is_finite()) {
                            Some(v) => td.num data-job=(job) data-round=(r.round) data-field="val_loss" data-value=(v) { (format!("{v:.4}")) },
                            None if r.merged == 0 => td.num { "nothing merged" },
                            // The bidder evaluates a round while the next one runs.
                            None => td.num { "not measured yet" },
                        }
                        td.num data-job=(job) data-round=(r.round) data-field="wall_ms" data-value=(r.wall_ms) { (seconds(r.wall_ms)) }
                    }
                } }
            } }
            @if p.rounds.is_empty() { p { "No round has finished yet." } }
            p {
                "Referee verdicts on the job's runs: "
                strong data-job=(job) data-field="verdicts_accepted" data-value=(accepted) { (num(accepted)) " accepted" }
                ", "
                strong data-job=(job) data-field="verdicts_rejected" data-value=(rejected) { (num(rejected)) " rejected" }
                "."
                @if accepted + rejected == 0 && p.state != "done" { " (The referee's verdicts arrive while the job settles.)" }
            }
            p {
                "Compute: " span data-job=(job) data-field="primary_units" data-value=(p.primary_units) { (num(p.primary_units)) } " units of first runs, "
                span data-job=(job) data-field="replica_units" data-value=(p.replica_units) { (num(p.replica_units)) } " units of replicas"
                @if p.primary_units > 0 { " (checking cost " (format!("{:.0}", 100.0 * p.replica_units as f64 / p.primary_units as f64)) " % on top)" }
                "; " (seconds(p.wall_ms)) " s wall time."
            }
            p {
                "Data moved per worker and round: "
                strong data-job=(job) data-field="bytes_per_worker_round" data-value=(p.bytes_per_worker_round) { (bytes(p.bytes_per_worker_round)) }
                " (the model state sent to the provider and the trained state fetched back). Plain data-parallel training would move "
                strong data-job=(job) data-field="data_parallel_bytes_per_worker_round" data-value=(p.data_parallel_bytes_per_worker_round) { (bytes(p.data_parallel_bytes_per_worker_round)) }
                " per worker for the same training steps"
                @if p.bytes_per_worker_round > 0 && p.data_parallel_bytes_per_worker_round > 0 {
                    ", " (format!("{:.1}", p.data_parallel_bytes_per_worker_round as f64 / p.bytes_per_worker_round as f64)) " times as much"
                }
                "."
            }
            @for r in &p.reclearings {
                p data-job=(job) data-field="reclearing" {
                    "Provider(s) " (r.replaces.iter().map(|k| provider_name(m, k)).collect::<Vec<_>>().join(", "))
                    " left the job with " strong data-job=(job) data-field="reclearing_shards" data-value=(r.shards) { (num(r.shards)) }
                    " leased shard(s) unfinished. "
                    @if r.providers.is_empty() { "No other offer could take them: the job's other providers keep its runs." }
                    @else {
                        "They were bought again at " (eur(r.price_cents_per_kilo_unit)) " per 1,000 units from "
                        (r.providers.iter().map(|(k, n)| format!("{} ({n})", provider_name(m, k))).collect::<Vec<_>>().join(", "))
                        " (a re-clearing in the bidder's log, which the audit re-checks)."
                    }
                }
            }
            @if providers.is_empty() { p { "No provider has reported device time or been paid yet." } }
            @else { div.table-wrap { table {
                caption { "Providers of job " (short) "…: device time they reported and what the bidder paid them" }
                thead { tr { th scope="col" { "Provider" } th.num scope="col" { "Device time (s)" } th.num scope="col" { "Paid" } } }
                tbody { @for k in &providers {
                    @let ms = p.device_ms.get(*k).copied().unwrap_or(0);
                    @let cents = p.paid_cents.get(*k).copied().unwrap_or(0);
                    tr {
                        th scope="row" { (provider_name(m, k)) }
                        td.num data-job=(job) data-provider=(k) data-field="device_ms" data-value=(ms) { (seconds(ms)) }
                        td.num data-job=(job) data-provider=(k) data-field="paid_cents" data-value=(cents) { (eur(cents)) }
                    }
                } }
                tfoot { tr {
                    th scope="row" { "All providers" }
                    td.num data-job=(job) data-field="device_ms_total" data-value=(device_total) { (seconds(device_total)) }
                    td.num data-job=(job) data-field="paid_cents_total" data-value=(paid_total) { (eur(paid_total)) }
                } }
            } } }
        }
    }
}

async fn jobs(State(s): State<AppShared>) -> Result<Response, AppError> {
    let (_, m) = load(&s)?;
    let progress = s.job_progress().await?;
    Ok(page_from(
        "Jobs",
        "/jobs",
        Source::Progress,
        html! {
            p.explain { "A job trains a machine-learning model for one member (the bidder) on compute leased from other members (the providers). It runs in rounds: each round the training data is split into shards, a provider trains the current model on each shard for a number of steps and sends the result back, and the bidder merges the results into the model. After each round the bidder measures the validation loss: how badly the model predicts text it never trained on. Lower is better." }
            p.explain { "These figures are the bidder's node's own progress records (" code { "DIR/jobs/<job id>.progress.json" } ", also at " a href="/api/jobs/progress" { "/api/jobs/progress" } "), not signed ledger entries; the leases, receipts, verdicts and payments behind them are in the " a href="/ledger" { "ledger" } "." }
            h2 { "What the columns mean" }
            dl {
                dt { "Runs" } dd { "Shard computations that finished, including the second copies of replicated shards." }
                dt { "Replicated" } dd { "Shards given to two different providers, so that each result checks the other. No provider knows which of its shards are replicated: a secret seed decides, and is published only after the job." }
                dt { "Mismatched" } dd { "Replicated shards whose two results differed. The job's referee (a member named in the job) then finds the first training step where the two differ and recomputes that step itself: the result that matches is accepted, the other is rejected. A rejected result is not paid, and the referee records evidence against its provider in the ledger." }
                dt { "Merged" } dd { "Shards whose result went into the model. A mismatched shard is left out of its round rather than holding every provider up while the referee decides." }
                dt { "Re-leased" } dd { "Runs taken away from a provider that failed or did not finish in time (four times what its offer promised, at least a minute) and given to another provider of the job. This is not an accusation (machines stop), but only finished, accepted runs are paid." }
                dt { "Accepted, rejected" } dd { "The referee's verdicts on the round's runs so far: they arrive while the next round runs." }
                dt { "Verdicts" } dd { "The referee's decision on every finished run: accepted runs are paid at the lease's price, rejected ones are not." }
                dt { "Data moved" } dd { "Providers exchange the model once per round instead of gradients at every training step (DiLoCo), so jobs can run across organisations over ordinary internet links." }
            }
            @if progress.is_empty() {
                p { "No job progress is held here. A bidder's node writes it while it runs a job; a server of copies (" code { "leam serve" } ") shows that of the node directories it serves." }
            }
            @for (i, p) in progress.iter().enumerate() {
                (job_section(i, p, &m))
            }
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
    // Subsidy: settlements of a job paid by someone other than the job's bidder (the public
    // pool's share, specs/market.md §5); the bidder of a job is the author of its job entry.
    let bidders: std::collections::BTreeMap<[u8; 32], [u8; 32]> = of_kind(&logs, Kind::Job)
        .iter()
        .filter_map(|e| match &e.body {
            Body::Job(j) => Some((j.id(), e.author)),
            _ => None,
        })
        .collect();
    let subsidy: u64 = of_kind(&logs, Kind::Settlement)
        .iter()
        .filter_map(|e| match &e.body {
            Body::Settlement(c) if bidders.get(&c.terms.job_id) != Some(&c.terms.payer) => {
                Some(c.terms.credits_cents)
            }
            _ => None,
        })
        .fold(0u64, u64::saturating_add);
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
            p { "Public funding deposited: " strong data-field="funding_public_eur_cents" data-value=(public) { (eur(public)) } "; paid out as subsidy: " strong data-field="subsidy_paid_cents" data-value=(subsidy) { (eur(subsidy)) } "; remaining: " strong data-field="subsidy_remaining_cents" data-value=(public.saturating_sub(subsidy)) { (eur(public.saturating_sub(subsidy))) } "." @if let Some(g) = &genesis { " The federation's genesis fixes the subsidy rate at " (g.subsidy_percent) " %: for a startup's job the public pool pays that share of what the referee verified, by settlements of its own (a job's settlements paid by anyone but its bidder)." } }
            h2 { "Work: processed, verified, rejected and paid, kept apart" }
            p.explain { "Processed but unverified work has a receipt but no referee verdict yet; rejected work failed verification and earns nothing; verified work passed; paid is what bidders actually settled in credits. These are never added together." }
            div.table-wrap { table {
                thead { tr { th { "Organisation" } th { "Sector" } th.num { "Verified units" } th.num { "Unverified units" } th.num { "Rejected units" } th.num { "Consumed units" } th.num { "Device time contributed (ms)" } th.num { "Public funding" } th.num { "Private money" } th.num { "Credit balance" } th.num { "of it public" } th.num { "of it private" } th.num { "Evidence against" } } }
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
                        (cell(name, "credit_public_cents", t.credit_public_cents, true))
                        (cell(name, "credit_private_cents", t.credit_private_cents, true))
                        (cell(name, "evidence_against", t.evidence_against, false))
                    }
                } }
            } }
            p { "Paid: " strong data-field="settled_cents" data-value=(paid) { (eur(paid)) } " settled in credits over " (r.facts) " co-signed facts, from " (num(r.entries)) " entries in " (r.logs) " logs." }
            h2 { "Evidence of misbehaviour" }
            p.explain { "Signed accusations with their proof: a referee's rejected shard, a broken agreement, or two checkpoints of one log that cannot both be true. An accusation counts against a member only if this node could check its proof (for a rejected shard: by replaying the divergent step from the shard's inputs)." }
            @if evidence.is_empty() { p { "None recorded." } }
            @else { ul { @for e in &evidence {
                @let author = hex::encode(e.author);
                @let not_counted = r.evidence_not_counted.iter().find(|n| n.log == author && n.seq == e.seq);
                li data-counted=(not_counted.is_none()) {
                    (summary(e, &m)) " — filed by " (org_of(&m, &e.author)) ", " a href=(format!("/api/logs/{author}/entries?start={}&limit=1", e.seq)) { "entry " (e.seq) }
                    @match not_counted { Some(n) => { " — " strong { "not counted" } ": " (n.reason) }, None => { " — checked and counted" } }
                }
            } } }
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
        .route("/jobs", get(jobs))
        .route("/report", get(report))
        .route(CSS_PATH, get(css))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_labels_use_round_steps() {
        assert_eq!(nice_step(1.6725, 4), (0.5, 1));
        assert_eq!(nice_step(1.0, 4), (0.5, 1));
        assert_eq!(nice_step(0.04, 4), (0.01, 2));
        assert_eq!(nice_step(300.0, 4), (100.0, 0));
        assert_eq!(nice_step(7.0, 4), (2.0, 0));
    }

    #[test]
    fn loss_charts_draw_any_figures_without_failing() {
        let p = |start: Option<f64>, losses: &[Option<f64>]| JobProgress {
            job: "ab".repeat(32),
            state: "running".into(),
            val_loss_start: start,
            rounds: losses
                .iter()
                .enumerate()
                .map(|(i, v)| crate::progress::RoundProgress {
                    round: i as u32,
                    val_loss: *v,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let chart = |j: &JobProgress| loss_chart("c", &j.job, &loss_series(j)).into_string();
        assert!(chart(&p(None, &[])).contains("No validation loss measured yet"));
        assert!(chart(&p(Some(f64::NAN), &[None])).contains("No validation loss measured yet"));
        let one = chart(&p(Some(3.0), &[]));
        assert!(one.contains("<svg") && one.contains("<circle ") && !one.contains("<polyline"));
        let flat = chart(&p(Some(2.0), &[Some(2.0), Some(2.0)]));
        assert_eq!(flat.matches("<polyline ").count(), 1, "{flat}");
        assert!(!flat.contains("NaN") && !flat.contains("inf"), "{flat}");
        let huge = chart(&p(Some(-1e308), &[Some(1e308)]));
        assert!(huge.contains("out of the range"), "{huge}");
        let many: Vec<Option<f64>> = (0..1000)
            .map(|i| Some(5.0 - f64::from(i) / 300.0))
            .collect();
        let long = chart(&p(Some(5.0), &many));
        assert!(long.matches("text-anchor=\"middle\"").count() <= LOSS_X_LABELS_MAX + 2);
        assert_eq!(long, chart(&p(Some(5.0), &many)), "deterministic");
    }
}
