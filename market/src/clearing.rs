//! The clearing rule (`specs/market.md` §3): a reverse auction per job with a uniform price at
//! the first rejected ask, capped at the bid's maximum.
//!
//! Pure and integer-only: the same inputs give the same output on every machine, so the
//! bidder's node, every provider (before it co-signs a lease) and every auditor (from the logs)
//! compute the same assignments and price.

use std::collections::{BTreeMap, BTreeSet};

use leam_ledger::entry::{
    Assignment, Body, Clearing, Digest32, Entry, LeaseTerms, LogView, Offer, PublicKey,
    CLEARING_ASSIGNMENTS_MAX, CLEARING_VIEWS_MAX,
};
use sha2::{Digest as _, Sha256};

use crate::job::{Job, PPM};

/// Milliseconds per hour (offers state throughput per hour).
pub const MS_PER_HOUR: u128 = 3_600_000;
/// Domain separator of the tie-break hash.
pub const TIE_BREAK_CONTEXT: &[u8] = b"leam/clearing-tie/v1\0";

/// One provider's ask at the clearing point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// The provider.
    pub provider: PublicKey,
    /// The offer.
    pub offer_id: u64,
    /// Asked price, credits (EUR cents) per 1,000 compute units.
    pub price_cents_per_kilo_unit: u64,
    /// Shards the provider can finish before the deadline at its measured throughput.
    pub capacity_shards: u64,
}

/// The rule's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Uniform price, credits per 1,000 compute units.
    pub price_cents_per_kilo_unit: u64,
    /// Shards per provider, in the rule's order (cheapest first).
    pub assignments: Vec<Assignment>,
    /// Shards no eligible offer could take.
    pub unserved_shards: u64,
}

/// Why a clearing cannot be computed from the given logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClearError {
    /// The views are not strictly ascending by key, or too many.
    #[error("the clearing's log views must be strictly ascending by key and at most {CLEARING_VIEWS_MAX}")]
    Views,
    /// A view names a log the caller does not hold, or more entries than it holds.
    #[error("view of log {log} at size {size}: only {held} entries are held here")]
    ViewBeyondHeld {
        /// Log key hex.
        log: String,
        /// Size the clearing names.
        size: u64,
        /// Entries held.
        held: u64,
    },
    /// More providers than a clearing record holds.
    #[error("{found} providers would be assigned, more than the {CLEARING_ASSIGNMENTS_MAX} a clearing holds")]
    TooManyAssignments {
        /// Providers found.
        found: usize,
    },
}

/// Shards an offer can deliver between `clearing_ms` and the earlier of its expiry and the
/// job's deadline: ⌊units/hour × window_ms / 3,600,000 / shard_units⌋, saturating.
pub fn capacity_shards(offer: &Offer, clearing_ms: u64, deadline_ms: u64, shard_units: u64) -> u64 {
    let end = offer.valid_until_ms.min(deadline_ms);
    if end <= clearing_ms || shard_units == 0 {
        return 0;
    }
    let units =
        u128::from(offer.compute_units_per_hour) * u128::from(end - clearing_ms) / MS_PER_HOUR;
    u64::try_from(units / u128::from(shard_units)).unwrap_or(u64::MAX)
}

/// The tie-break of asks at equal price: SHA-256 of the context, job id, provider and offer id.
pub fn tie_break(job_id: &Digest32, provider: &PublicKey, offer_id: u64) -> Digest32 {
    let mut h = Sha256::new();
    h.update(TIE_BREAK_CONTEXT);
    h.update(job_id);
    h.update(provider);
    h.update(offer_id.to_be_bytes());
    h.finalize().into()
}

/// The rule itself. Asks are ordered by (price, tie-break); shards go to the cheapest asks
/// up to their capacity; every assigned provider is paid the price of the first unsold unit
/// (the cheapest ask with capacity left, including asks above the maximum), capped at
/// `max_price`; when no unit is left unsold the price is `max_price`. Asks with no capacity and
/// asks of the bidder itself take no part.
pub fn clear(
    job_id: &Digest32,
    bidder: &PublicKey,
    shards: u64,
    max_price: u64,
    asks: &[Ask],
) -> Outcome {
    let mut order: Vec<(u64, Digest32, &Ask)> = asks
        .iter()
        .filter(|a| a.capacity_shards > 0 && a.provider != *bidder)
        .map(|a| {
            (
                a.price_cents_per_kilo_unit,
                tie_break(job_id, &a.provider, a.offer_id),
                a,
            )
        })
        .collect();
    order.sort_unstable_by_key(|x| (x.0, x.1));
    let mut remaining = shards;
    let mut assignments = Vec::new();
    let mut first_unsold: Option<u64> = None;
    for (price, _, ask) in &order {
        if remaining == 0 || *price > max_price {
            first_unsold.get_or_insert(*price);
            continue;
        }
        let take = remaining.min(ask.capacity_shards).min(u64::from(u32::MAX));
        remaining -= take;
        assignments.push(Assignment {
            provider: ask.provider,
            offer_id: ask.offer_id,
            shards: take as u32,
        });
        if take < ask.capacity_shards {
            first_unsold.get_or_insert(*price);
        }
    }
    let price = first_unsold.map_or(max_price, |p| p.min(max_price));
    Outcome {
        price_cents_per_kilo_unit: if assignments.is_empty() { 0 } else { price },
        assignments,
        unserved_shards: remaining,
    }
}

/// Shards a job buys: its shards plus ⌈shards × replication⌉ replicas, so the replica count is
/// public while which shards are replicated stays secret until the seed is revealed.
pub fn shards_bought(job: &Job) -> u64 {
    job.shards() + replica_count(job)
}

/// Replicas a job runs: ⌈shards × replication_ppm / 10⁶⌉.
pub fn replica_count(job: &Job) -> u64 {
    (job.shards() * u64::from(job.replication_ppm)).div_ceil(u64::from(PPM))
}

/// The offer `log` stands by at `clearing_ms` within its first `size` entries: its latest offer
/// written at or before `clearing_ms`, if still valid then (a later offer replaces an earlier
/// one; an expired latest offer withdraws it).
pub fn standing_offer(entries: &[Entry], size: u64, clearing_ms: u64) -> Option<Offer> {
    let held = entries
        .len()
        .min(usize::try_from(size).unwrap_or(usize::MAX));
    entries[..held]
        .iter()
        .rev()
        .filter(|e| e.timestamp_ms <= clearing_ms)
        .find_map(|e| match &e.body {
            Body::Offer(o) => Some(o.clone()),
            _ => None,
        })
        .filter(|o| o.valid_until_ms > clearing_ms)
}

/// The views a bidder's node clears on: every log it holds but its own, at the size held.
pub fn views_except(logs: &BTreeMap<PublicKey, Vec<Entry>>, bidder: &PublicKey) -> Vec<LogView> {
    logs.iter()
        .filter(|(k, _)| *k != bidder)
        .map(|(k, v)| LogView {
            log: *k,
            size: v.len() as u64,
        })
        .collect()
}

/// Everything one clearing needs besides the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The job.
    pub job: &'a Job,
    /// Its id.
    pub job_id: Digest32,
    /// The bidder.
    pub bidder: PublicKey,
    /// The bid's index in the bidder's log.
    pub bid_seq: u64,
    /// Clearing time.
    pub clearing_ms: u64,
    /// Compute units of one shard.
    pub shard_units: u64,
    /// The logs the bidder saw.
    pub views: Vec<LogView>,
}

/// Run the rule on the offers standing in `logs` (entries by log key) as the request's views
/// see them, and produce the clearing record the bidder writes.
pub fn run(
    req: &Request<'_>,
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
) -> Result<(Clearing, Outcome), ClearError> {
    run_for(req, shards_bought(req.job), &BTreeSet::new(), logs)
}

/// The rule for `shards` shards, among the offers of every view but the `excluded` providers'
/// (a re-clearing, [`crate::reclear`], buys a job's unfinished shards from providers that
/// hold no lease of it yet).
pub fn run_for(
    req: &Request<'_>,
    shards: u64,
    excluded: &BTreeSet<PublicKey>,
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
) -> Result<(Clearing, Outcome), ClearError> {
    if req.views.len() > CLEARING_VIEWS_MAX || req.views.windows(2).any(|w| w[0].log >= w[1].log) {
        return Err(ClearError::Views);
    }
    let mut asks = Vec::new();
    for v in &req.views {
        // An excluded provider's log is not read: a re-clearing replaces providers that may
        // have vanished, whose last entries other members may never have replicated.
        if excluded.contains(&v.log) {
            continue;
        }
        let entries = logs.get(&v.log).map_or(&[][..], Vec::as_slice);
        if (entries.len() as u64) < v.size {
            return Err(ClearError::ViewBeyondHeld {
                log: hex::encode(v.log),
                size: v.size,
                held: entries.len() as u64,
            });
        }
        if let Some(o) = standing_offer(entries, v.size, req.clearing_ms) {
            let capacity =
                capacity_shards(&o, req.clearing_ms, req.job.deadline_ms, req.shard_units);
            asks.push(Ask {
                provider: v.log,
                offer_id: o.offer_id,
                price_cents_per_kilo_unit: o.price_cents_per_kilo_unit,
                // A replica must run on another provider than its shard: with replication no
                // provider takes more than the job's shards, so the replicas need a second one.
                capacity_shards: if replica_count(req.job) > 0 {
                    capacity.min(req.job.shards())
                } else {
                    capacity
                },
            });
        }
    }
    let outcome = clear(
        &req.job_id,
        &req.bidder,
        shards,
        req.job.max_price_cents_per_kilo_unit,
        &asks,
    );
    if outcome.assignments.len() > CLEARING_ASSIGNMENTS_MAX {
        return Err(ClearError::TooManyAssignments {
            found: outcome.assignments.len(),
        });
    }
    let clearing = Clearing {
        job_id: req.job_id,
        bid_seq: req.bid_seq,
        clearing_ms: req.clearing_ms,
        shard_units: req.shard_units,
        price_cents_per_kilo_unit: outcome.price_cents_per_kilo_unit,
        views: req.views.clone(),
        assignments: outcome.assignments.clone(),
    };
    Ok((clearing, outcome))
}

/// The lease a clearing implies for one of its assignments: units = shards × shard units,
/// price = ⌈units × price / 1000⌉, expiring at the job's deadline.
pub fn lease_terms(
    clearing: &Clearing,
    job: &Job,
    bidder: PublicKey,
    a: &Assignment,
) -> LeaseTerms {
    let units = u64::from(a.shards).saturating_mul(clearing.shard_units);
    LeaseTerms {
        job_id: clearing.job_id,
        bidder,
        provider: a.provider,
        offer_id: a.offer_id,
        compute_units: units,
        price_cents: price_cents(units, clearing.price_cents_per_kilo_unit),
        expires_ms: job.deadline_ms,
    }
}

/// Credits for `units` at `price` per 1,000 units, rounded up to the cent, saturating.
pub fn price_cents(units: u64, price_cents_per_kilo_unit: u64) -> u64 {
    let c = (u128::from(units) * u128::from(price_cents_per_kilo_unit)).div_ceil(1000);
    u64::try_from(c).unwrap_or(u64::MAX)
}
