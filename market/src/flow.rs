//! The market's steps on a running node, as pure functions of the logs it holds
//! (`specs/market.md` §3.4 and §7): what a bidder does next, and whether a provider agrees to a
//! proposed lease. The node only executes the steps (append, propose) and answers proposals.

use std::collections::BTreeMap;

use leam_ledger::entry::{Body, Clearing, Digest32, Entry, LeaseTerms, PublicKey};
use sha2::{Digest as _, Sha256};

use crate::clearing::{self, lease_terms, Request};
use crate::job::Job;
use crate::reclear::clearing_record;

/// The next thing a bidder's node does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Append this clearing record for the bid it names.
    Clear(Clearing),
    /// Propose this lease (implied by a clearing in the bidder's log) to its provider.
    ProposeLease(LeaseTerms),
}

/// A bid that has no clearing yet and why (shown to the bidder, e.g. by `leam jobs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    /// Job id hex.
    pub job: String,
    /// Why no clearing was written yet.
    pub reason: String,
}

/// The jobs a log publishes, by id, with the entry index.
pub fn published_jobs(entries: &[Entry]) -> BTreeMap<Digest32, (u64, Job)> {
    entries
        .iter()
        .filter_map(|e| match &e.body {
            Body::Job(j) => Job::decode(&j.description)
                .ok()
                .map(|job| (Sha256::digest(&j.description).into(), (e.seq, job))),
            _ => None,
        })
        .collect()
}

/// The lease terms a log records.
fn leases(entries: &[Entry]) -> Vec<&LeaseTerms> {
    entries
        .iter()
        .filter_map(|e| match &e.body {
            Body::Lease(c) => Some(&c.terms),
            _ => None,
        })
        .collect()
}

/// The bidder's next steps at `now_ms`, from the logs its node holds (its own log under
/// `bidder`). One shard's compute units are the bid's units over the shards it buys (the
/// bidder counted them from the job's tensor shapes). Each bid is cleared once (at the first time some offer can serve it); each assignment of a
/// clearing leads to one lease proposal until the lease is in the bidder's log.
pub fn bidder_steps(
    bidder: &PublicKey,
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    now_ms: u64,
) -> (Vec<Step>, Vec<Waiting>) {
    let Some(own) = logs.get(bidder) else {
        return (Vec::new(), Vec::new());
    };
    let jobs = published_jobs(own);
    let cleared: Vec<&Clearing> = own
        .iter()
        .filter_map(|e| match &e.body {
            Body::Clearing(c) => Some(c),
            _ => None,
        })
        .collect();
    let leased = leases(own);
    let mut steps = Vec::new();
    let mut waiting = Vec::new();
    for e in own {
        let Body::Bid(bid) = &e.body else { continue };
        if cleared.iter().any(|c| c.bid_seq == e.seq) {
            continue;
        }
        let job_hex = hex::encode(bid.job_id);
        let Some((_, job)) = jobs.get(&bid.job_id) else {
            waiting.push(Waiting {
                job: job_hex,
                reason: "the job description is not published in this log".into(),
            });
            continue;
        };
        if now_ms >= job.deadline_ms {
            waiting.push(Waiting {
                job: job_hex,
                reason: "the deadline has passed".into(),
            });
            continue;
        }
        let bought = clearing::shards_bought(job);
        if bid.compute_units == 0 || bid.compute_units % bought != 0 {
            waiting.push(Waiting {
                job: job_hex,
                reason: format!(
                    "the bid's {} compute units are not a whole number of units for each of the {bought} shards it buys",
                    bid.compute_units
                ),
            });
            continue;
        }
        let views = clearing::views_except(logs, bidder);
        let req = Request {
            job,
            job_id: bid.job_id,
            bidder: *bidder,
            bid_seq: e.seq,
            clearing_ms: now_ms.max(e.timestamp_ms),
            shard_units: bid.compute_units / bought,
            views,
        };
        match clearing::run(&req, logs) {
            Ok((c, _)) if !c.assignments.is_empty() => steps.push(Step::Clear(c)),
            Ok(_) => waiting.push(Waiting {
                job: job_hex,
                reason: format!(
                    "no offer at or under {} cents per 1,000 units can finish a shard before the deadline",
                    job.max_price_cents_per_kilo_unit
                ),
            }),
            Err(err) => waiting.push(Waiting {
                job: job_hex,
                reason: err.to_string(),
            }),
        }
    }
    for c in own.iter().filter_map(|e| clearing_record(&e.body)) {
        let Some((_, job)) = jobs.get(&c.job_id) else {
            continue;
        };
        for a in &c.assignments {
            let t = lease_terms(c, job, *bidder, a);
            if !leased.iter().any(|l| **l == t) {
                steps.push(Step::ProposeLease(t));
            }
        }
    }
    (steps, waiting)
}

/// Whether `provider` agrees to a proposed lease: a clearing in the bidder's log (as this node
/// holds it) reproduces under the rule on this node's copies of the logs and implies exactly
/// these terms. `Err` says what does not hold (e.g. the bidder's log is not replicated this far
/// yet: the bidder proposes again later).
pub fn check_lease(
    provider: &PublicKey,
    terms: &LeaseTerms,
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
) -> Result<(), String> {
    if terms.provider != *provider {
        return Err("the lease names another provider".into());
    }
    let bidder_log = logs
        .get(&terms.bidder)
        .ok_or("this node holds no copy of the bidder's log yet")?;
    let jobs = published_jobs(bidder_log);
    let (_, job) = jobs
        .get(&terms.job_id)
        .ok_or("the job is not (yet) in this node's copy of the bidder's log")?;
    let mut last = String::from("no clearing of this job in this node's copy of the bidder's log");
    for e in bidder_log {
        let Some(c) = clearing_record(&e.body) else {
            continue;
        };
        if c.job_id != terms.job_id {
            continue;
        }
        let Some(a) = c
            .assignments
            .iter()
            .find(|a| a.provider == *provider && a.offer_id == terms.offer_id)
        else {
            continue;
        };
        if lease_terms(c, job, terms.bidder, a) != *terms {
            last = "the terms differ from what the clearing implies".into();
            continue;
        }
        if let Body::Reclearing(r) = &e.body {
            match crate::reclear::check(logs, job, &terms.bidder, e.seq, e.timestamp_ms, r) {
                Ok(()) => return Ok(()),
                Err(err) => {
                    last = format!("the re-clearing does not hold here: {err}");
                    continue;
                }
            }
        }
        let req = Request {
            job,
            job_id: c.job_id,
            bidder: terms.bidder,
            bid_seq: c.bid_seq,
            clearing_ms: c.clearing_ms,
            shard_units: c.shard_units,
            views: c.views.clone(),
        };
        match clearing::run(&req, logs) {
            Ok((again, _)) if again == *c => return Ok(()),
            Ok(_) => last = "the clearing does not reproduce under the rule".into(),
            Err(err) => last = format!("the clearing cannot be re-run here: {err}"),
        }
    }
    Err(last)
}

/// One provider's part of a cleared job, as the bidder sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Part {
    /// Provider key hex.
    pub provider: String,
    /// Shards assigned.
    pub shards: u32,
    /// Compute units of the lease.
    pub compute_units: u64,
    /// Credits (EUR cents) of the lease.
    pub price_cents: u64,
    /// Whether the co-signed lease is in the bidder's log.
    pub leased: bool,
}

/// A bidder's job and where it stands (`leam jobs`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobStatus {
    /// Job id hex.
    pub job: String,
    /// Job name.
    pub name: String,
    /// `waiting` (no clearing yet), `clearing` (leases pending) or `leased` (every
    /// assignment co-signed).
    pub state: &'static str,
    /// Why the job waits, when it does (the reason no provider serves it yet).
    pub reason: Option<String>,
    /// Shards bought (with replicas).
    pub shards: u64,
    /// The clearing price, credits per 1,000 units, once cleared.
    pub price_cents_per_kilo_unit: Option<u64>,
    /// Providers and their leases, once cleared.
    pub parts: Vec<Part>,
}

/// The bidder's jobs at `now_ms`, from the logs its node holds.
pub fn job_statuses(
    bidder: &PublicKey,
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    now_ms: u64,
) -> Vec<JobStatus> {
    let Some(own) = logs.get(bidder) else {
        return Vec::new();
    };
    let jobs = published_jobs(own);
    let (_, waiting) = bidder_steps(bidder, logs, now_ms);
    let leased = leases(own);
    let mut out = Vec::new();
    for e in own {
        let Body::Bid(bid) = &e.body else { continue };
        let job_hex = hex::encode(bid.job_id);
        let Some((_, job)) = jobs.get(&bid.job_id) else {
            continue;
        };
        let clearing = own.iter().find_map(|x| match &x.body {
            Body::Clearing(c) if c.bid_seq == e.seq => Some(c),
            _ => None,
        });
        // The clearing's parts, then the re-clearings' (same bid).
        let parts: Vec<Part> = own
            .iter()
            .filter_map(|x| clearing_record(&x.body))
            .filter(|c| c.bid_seq == e.seq)
            .flat_map(|c| {
                let leased = &leased;
                c.assignments
                    .iter()
                    .map(move |a| {
                        let t = lease_terms(c, job, *bidder, a);
                        Part {
                            provider: hex::encode(a.provider),
                            shards: a.shards,
                            compute_units: t.compute_units,
                            price_cents: t.price_cents,
                            leased: leased.iter().any(|l| **l == t),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let state = match clearing {
            None => "waiting",
            Some(_) if parts.iter().all(|p| p.leased) => "leased",
            Some(_) => "clearing",
        };
        out.push(JobStatus {
            reason: waiting
                .iter()
                .find(|w| w.job == job_hex)
                .map(|w| w.reason.clone()),
            job: job_hex,
            name: job.name.clone(),
            state,
            shards: clearing::shards_bought(job),
            price_cents_per_kilo_unit: clearing.map(|c| c.price_cents_per_kilo_unit),
            parts,
        });
    }
    out
}
