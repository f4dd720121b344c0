//! Re-clearing (`specs/market.md` §3.6): when a leased provider leaves a job unfinished (it
//! vanished, timed out or failed its runs), the bidder buys the shards it left undone again,
//! under the same rule, from providers that hold no lease of the job yet.
//!
//! Every input is in the bidder's log before the re-clearing entry (the job's first clearing,
//! the leases: how many shards each provider leased, and the receipts: which shards each
//! delivered), except the referees' rejections of those receipts, read from the logs at the
//! sizes the record's views name (a rejected run delivered nothing). So the bidder's node (to write it), each new provider (before it co-signs
//! its lease) and every auditor (from the logs) check the same record the same way, and a
//! bidder cannot buy a job's shards twice, nor exclude a cheaper provider that holds no lease.

use std::collections::{BTreeMap, BTreeSet};

use leam_ledger::entry::{
    Body, Clearing, Digest32, Entry, LogView, PublicKey, Reclearing, CLEARING_ASSIGNMENTS_MAX,
};

use crate::clearing::{self, Request};
use crate::job::Job;

/// Why a re-clearing cannot be written or does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReclearError {
    /// The job has no clearing in the bidder's log before this point.
    #[error("job {job} has no clearing in the bidder's log before entry {before}")]
    NoClearing {
        /// Job id hex.
        job: String,
        /// The re-clearing's index (or the log size when writing one).
        before: u64,
    },
    /// The record's bid or shard units differ from the job's first clearing.
    #[error("{field} is {found}, the job's first clearing says {expected}")]
    Differs {
        /// Field.
        field: &'static str,
        /// The first clearing's value.
        expected: u64,
        /// The record's value.
        found: u64,
    },
    /// `replaces` is empty, too long or not strictly ascending.
    #[error("replaces must name 1..={CLEARING_ASSIGNMENTS_MAX} providers, strictly ascending")]
    Replaces,
    /// A replaced provider holds no lease of the job, or has delivered every leased shard.
    #[error("provider {provider} leased {leased} shards of the job and delivered {delivered}: nothing to replace")]
    NothingUnfinished {
        /// Provider key hex.
        provider: String,
        /// Shards its leases cover.
        leased: u64,
        /// Distinct shards it has receipts for.
        delivered: u64,
    },
    /// A provider is replaced at most once per job (its unfinished shards are bought once).
    #[error("provider {provider} was replaced already, by the re-clearing at entry {seq}")]
    AlreadyReplaced {
        /// Provider key hex.
        provider: String,
        /// Index of the earlier re-clearing.
        seq: u64,
    },
    /// More shards are bought again than the replaced providers left unfinished.
    #[error(
        "{found} shards bought again, but the replaced providers left {unfinished} unfinished"
    )]
    TooManyShards {
        /// Shards left unfinished.
        unfinished: u64,
        /// Shards in the record.
        found: u64,
    },
    /// The clearing time is before the job's last clearing or after the entry.
    #[error("clearing time {found} is outside [{from}, {to}]")]
    Time {
        /// The last earlier clearing's time.
        from: u64,
        /// The entry's time.
        to: u64,
        /// The record's clearing time.
        found: u64,
    },
    /// The rule cannot run on these logs.
    #[error("cannot run the rule: {0}")]
    Rule(#[from] clearing::ClearError),
    /// The rule gives another outcome.
    #[error("the rule gives price {price} and {assignments} assignment(s); the record says price {found_price} and {found_assignments}")]
    Outcome {
        /// Price by the rule.
        price: u64,
        /// Assignments by the rule.
        assignments: usize,
        /// Price in the record.
        found_price: u64,
        /// Assignments in the record.
        found_assignments: usize,
    },
}

/// The clearing record of a clearing or a re-clearing entry: the rule's inputs and outputs,
/// whose assignments each imply one lease.
pub fn clearing_record(body: &Body) -> Option<&Clearing> {
    match body {
        Body::Clearing(c) => Some(c),
        Body::Reclearing(r) => Some(&r.clearing),
        _ => None,
    }
}

/// What the bidder's log says of one job up to an index: its first clearing, every earlier
/// clearing's time, and per provider the shards leased and the distinct shards delivered.
#[derive(Debug, Clone, Default)]
pub struct Standing {
    /// The first clearing and its index.
    pub first: Option<(u64, Clearing)>,
    /// Latest clearing time among the job's clearings and re-clearings.
    pub last_clearing_ms: u64,
    /// Shards leased, by provider (lease units over the clearing's shard units).
    pub leased: BTreeMap<PublicKey, u64>,
    /// Distinct shards with a receipt that no referee of the job rejected, by provider.
    pub delivered: BTreeMap<PublicKey, BTreeSet<u32>>,
    /// Providers replaced already, with the index of the re-clearing that replaced them.
    pub replaced: BTreeMap<PublicKey, u64>,
}

impl Standing {
    /// Shards `provider` leased and has not delivered.
    pub fn unfinished(&self, provider: &PublicKey) -> u64 {
        let leased = self.leased.get(provider).copied().unwrap_or(0);
        let done = self.delivered.get(provider).map_or(0, |s| s.len() as u64);
        leased.saturating_sub(done)
    }
}

/// A run a referee rejected: (shard, provider, output commitment).
pub type Rejected = BTreeSet<(u32, PublicKey, Digest32)>;

/// The runs of `job_id` that a referee of `job` rejected (never a verdict on its own result),
/// in the first `size` entries of each log `views` name and the bidder's first `before` (the
/// bidder may be a referee of its own job).
pub fn rejected_runs(
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    job: &Job,
    job_id: &Digest32,
    views: &[LogView],
    (bidder, before): (&PublicKey, u64),
) -> Rejected {
    let own = LogView {
        log: *bidder,
        size: before,
    };
    let mut out = Rejected::new();
    for v in views
        .iter()
        .chain([&own])
        .filter(|v| job.is_referee(&v.log))
    {
        let entries = logs.get(&v.log).map_or(&[][..], Vec::as_slice);
        let end = entries
            .len()
            .min(usize::try_from(v.size).unwrap_or(usize::MAX));
        for e in &entries[..end] {
            if let Body::Verdict(x) = &e.body {
                if x.job_id == *job_id && !x.accepted && x.provider != v.log {
                    out.insert((x.shard, x.provider, x.output_commitment));
                }
            }
        }
    }
    out
}

/// The job's standing in the bidder's log `own`, from its first `before` entries; receipts of
/// `rejected` runs deliver nothing.
pub fn standing(own: &[Entry], job_id: &Digest32, before: u64, rejected: &Rejected) -> Standing {
    let mut s = Standing::default();
    let end = own.len().min(usize::try_from(before).unwrap_or(usize::MAX));
    for e in &own[..end] {
        match &e.body {
            Body::Clearing(c) if c.job_id == *job_id => {
                if s.first.is_none() {
                    s.first = Some((e.seq, c.clone()));
                }
                s.last_clearing_ms = s.last_clearing_ms.max(c.clearing_ms);
            }
            Body::Reclearing(r) if r.clearing.job_id == *job_id => {
                s.last_clearing_ms = s.last_clearing_ms.max(r.clearing.clearing_ms);
                for p in &r.replaces {
                    s.replaced.entry(*p).or_insert(e.seq);
                }
            }
            _ => {}
        }
    }
    let shard_units = s.first.as_ref().map_or(0, |(_, c)| c.shard_units);
    for e in &own[..end] {
        match &e.body {
            Body::Lease(l) if l.terms.job_id == *job_id && shard_units > 0 => {
                *s.leased.entry(l.terms.provider).or_default() +=
                    l.terms.compute_units / shard_units;
            }
            Body::Receipt(r)
                if r.terms.job_id == *job_id
                    && !rejected.contains(&(
                        r.terms.shard,
                        r.terms.provider,
                        r.terms.output_commitment,
                    )) =>
            {
                s.delivered
                    .entry(r.terms.provider)
                    .or_default()
                    .insert(r.terms.shard);
            }
            _ => {}
        }
    }
    s
}

/// The clearing request of a re-clearing: the first clearing's bid and shard units, a new
/// time and views.
fn request<'a>(
    job: &'a Job,
    bidder: &PublicKey,
    first: &Clearing,
    clearing_ms: u64,
    views: Vec<LogView>,
) -> Request<'a> {
    Request {
        job,
        job_id: first.job_id,
        bidder: *bidder,
        bid_seq: first.bid_seq,
        clearing_ms,
        shard_units: first.shard_units,
        views,
    }
}

/// The re-clearing the bidder writes at `now_ms` (its log holds `own.len()` entries) for the
/// shards that `replaces` left unfinished, from the offers in `logs` (views: every log but the
/// bidder's, at the size held). `Err` when the record would not hold (nothing unfinished,
/// no clearing yet). Its assignments may be empty: no offer can take the shards.
pub fn reclear(
    bidder: &PublicKey,
    job: &Job,
    job_id: &Digest32,
    replaces: &BTreeSet<PublicKey>,
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    now_ms: u64,
) -> Result<Reclearing, ReclearError> {
    let own = logs.get(bidder).map_or(&[][..], Vec::as_slice);
    let before = own.len() as u64;
    let views = clearing::views_except(logs, bidder);
    let s = standing(
        own,
        job_id,
        before,
        &rejected_runs(logs, job, job_id, &views, (bidder, before)),
    );
    let Some((_, first)) = &s.first else {
        return Err(ReclearError::NoClearing {
            job: hex::encode(job_id),
            before,
        });
    };
    if replaces.is_empty() || replaces.len() > CLEARING_ASSIGNMENTS_MAX {
        return Err(ReclearError::Replaces);
    }
    let shards = unfinished_of(&s, replaces)?;
    let excluded: BTreeSet<PublicKey> = s.leased.keys().copied().collect();
    let clearing_ms = now_ms.max(s.last_clearing_ms);
    let req = request(job, bidder, first, clearing_ms, views);
    let (clearing, _) = clearing::run_for(&req, shards, &excluded, logs)?;
    Ok(Reclearing {
        clearing,
        shards,
        replaces: replaces.iter().copied().collect(),
    })
}

/// Shards the `replaces` providers left unfinished, each replaced for the first time and
/// with something unfinished (rules 2 and 3 of §3.6).
fn unfinished_of<'a>(
    s: &Standing,
    replaces: impl IntoIterator<Item = &'a PublicKey>,
) -> Result<u64, ReclearError> {
    let mut total = 0u64;
    for p in replaces {
        if let Some(seq) = s.replaced.get(p) {
            return Err(ReclearError::AlreadyReplaced {
                provider: hex::encode(p),
                seq: *seq,
            });
        }
        let u = s.unfinished(p);
        if u == 0 {
            return Err(nothing(s, p));
        }
        total += u;
    }
    Ok(total)
}

fn nothing(s: &Standing, p: &PublicKey) -> ReclearError {
    ReclearError::NothingUnfinished {
        provider: hex::encode(p),
        leased: s.leased.get(p).copied().unwrap_or(0),
        delivered: s.delivered.get(p).map_or(0, |d| d.len() as u64),
    }
}

/// Check the re-clearing `r` at index `seq` (time `entry_ms`) of the bidder's log against the
/// entries before it and the offers in `logs` (`specs/market.md` §3.6).
pub fn check(
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    job: &Job,
    bidder: &PublicKey,
    seq: u64,
    entry_ms: u64,
    r: &Reclearing,
) -> Result<(), ReclearError> {
    let own = logs.get(bidder).map_or(&[][..], Vec::as_slice);
    let c = &r.clearing;
    let s = standing(
        own,
        &c.job_id,
        seq,
        &rejected_runs(logs, job, &c.job_id, &c.views, (bidder, seq)),
    );
    let Some((_, first)) = &s.first else {
        return Err(ReclearError::NoClearing {
            job: hex::encode(c.job_id),
            before: seq,
        });
    };
    for (field, expected, found) in [
        ("bid_seq", first.bid_seq, c.bid_seq),
        ("shard_units", first.shard_units, c.shard_units),
    ] {
        if expected != found {
            return Err(ReclearError::Differs {
                field,
                expected,
                found,
            });
        }
    }
    if c.clearing_ms < s.last_clearing_ms || c.clearing_ms > entry_ms {
        return Err(ReclearError::Time {
            from: s.last_clearing_ms,
            to: entry_ms,
            found: c.clearing_ms,
        });
    }
    if r.replaces.is_empty()
        || r.replaces.len() > CLEARING_ASSIGNMENTS_MAX
        || r.replaces.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(ReclearError::Replaces);
    }
    let unfinished = unfinished_of(&s, &r.replaces)?;
    if r.shards > unfinished {
        return Err(ReclearError::TooManyShards {
            unfinished,
            found: r.shards,
        });
    }
    let excluded: BTreeSet<PublicKey> = s.leased.keys().copied().collect();
    let req = request(job, bidder, first, c.clearing_ms, c.views.clone());
    let (again, _) = clearing::run_for(&req, r.shards, &excluded, logs)?;
    if again != *c {
        return Err(ReclearError::Outcome {
            price: again.price_cents_per_kilo_unit,
            assignments: again.assignments.len(),
            found_price: c.price_cents_per_kilo_unit,
            found_assignments: c.assignments.len(),
        });
    }
    Ok(())
}
