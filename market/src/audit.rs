//! The market audit (`specs/market.md` §6): re-run the clearing rule for every clearing record
//! and check every bid, lease, receipt, verdict and settlement against the job and clearing it
//! belongs to. Pure: it reads decoded logs (already verified by the ledger audit) and returns
//! findings; it never stops at the first one.

use std::collections::{BTreeMap, BTreeSet};

use leam_ledger::entry::{Body, Clearing, Digest32, Entry, PublicKey, Terms as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::clearing::{self, lease_terms, Request};
use crate::job::Job;
use crate::settle::owed_cents;

/// An offer may claim at most this many times the throughput its provider's own receipts show
/// before the audit flags it.
pub const OFFER_RECEIPT_TOLERANCE: u64 = 2;

/// One thing the market audit found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Log (key hex) holding the entry.
    pub log: String,
    /// The entry's index.
    pub seq: u64,
    /// Entry kind.
    pub kind: &'static str,
    /// What is wrong, saying what was expected and what was found.
    pub detail: String,
}

/// The market audit's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MarketAudit {
    /// Job entries that decode.
    pub jobs: u64,
    /// Bids seen.
    pub bids: u64,
    /// Clearing records re-run.
    pub clearings: u64,
    /// Of those, the ones the rule reproduces exactly.
    pub clearings_reproduced: u64,
    /// Re-clearing records checked (`specs/market.md` §3.6).
    pub reclearings: u64,
    /// Of those, the ones that hold: the replaced providers left the shards unfinished and the
    /// rule, without the job's leased providers, reproduces them exactly.
    pub reclearings_reproduced: u64,
    /// Distinct leases (by fact id) checked.
    pub leases: u64,
    /// Of those, the ones a reproduced clearing implies exactly.
    pub leases_matching: u64,
    /// Distinct receipts checked.
    pub receipts: u64,
    /// Verdicts by a referee of the job.
    pub verdicts_counted: u64,
    /// Verdicts by a member who is not a referee of the job (reported, never counted).
    pub verdicts_ignored: u64,
    /// Distinct settlements checked.
    pub settlements: u64,
    /// Seed reveals seen.
    pub reveals: u64,
    /// Of those, the ones that open their job's seed commitment.
    pub reveals_opening: u64,
    /// Everything found wrong.
    pub findings: Vec<Finding>,
    /// Offers whose throughput their provider's own receipts contradict (more than
    /// [`OFFER_RECEIPT_TOLERANCE`] times the units per device hour its receipts show). A flag,
    /// not a finding: device time varies with load, so this is evidence to look at, not proof.
    pub flags: Vec<Finding>,
    /// Settlements paid, by (job, payer, payee) (not in the JSON).
    #[serde(skip)]
    pub paid_cents: BTreeMap<(Digest32, PublicKey, PublicKey), u64>,
    /// Every settlement (once per fact) with what its receipts are worth at the payee's lease
    /// price (`settle::owed_cents` of its accepted receipts' units; not in the JSON).
    #[serde(skip)]
    pub settled: Vec<Settled>,
}

/// A settlement as the audit resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Its terms.
    pub terms: leam_ledger::entry::SettlementTerms,
    /// The bidder of the job's lease with the payee.
    pub bidder: Option<PublicKey>,
    /// What its receipts are worth: the referee-verified ones among them, at the lease price.
    pub worth_cents: u64,
}

impl MarketAudit {
    /// Whether nothing was found wrong.
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }
}

fn fact_id(e: &Entry) -> Option<Digest32> {
    e.body.cosigned().map(|v| v.fact_id)
}

/// Audit the market records of `logs` (entries by log key, each log complete from entry 0 as
/// far as the auditor holds it).
pub fn audit(logs: &BTreeMap<PublicKey, Vec<Entry>>) -> MarketAudit {
    let mut out = MarketAudit::default();
    let find = |out: &mut MarketAudit, e: &Entry, detail: String| {
        out.findings.push(Finding {
            log: hex::encode(e.author),
            seq: e.seq,
            kind: e.body.kind().name(),
            detail,
        });
    };

    // 1. Jobs published, by (bidder, job id).
    let mut jobs: BTreeMap<(PublicKey, Digest32), (u64, Job)> = BTreeMap::new();
    for entries in logs.values() {
        for e in entries {
            if let Body::Job(j) = &e.body {
                match Job::decode(&j.description) {
                    Ok(job) => {
                        out.jobs += 1;
                        let id: Digest32 = Sha256::digest(&j.description).into();
                        jobs.entry((e.author, id)).or_insert((e.seq, job));
                    }
                    Err(err) => find(
                        &mut out,
                        e,
                        format!("job description does not decode: {err}"),
                    ),
                }
            }
        }
    }
    // A job trains on a published data pool: flag a corpus no log publishes (its licence and
    // provenance are then unknown to the funders).
    let pools: BTreeSet<Digest32> = logs
        .values()
        .flatten()
        .filter_map(|e| match &e.body {
            Body::Data(d) => Some(d.sha256),
            _ => None,
        })
        .collect();
    for ((bidder, id), (seq, job)) in &jobs {
        if !pools.contains(&job.corpus_sha256) {
            out.flags.push(Finding {
                log: hex::encode(bidder),
                seq: *seq,
                kind: "job",
                detail: format!(
                    "job {}'s corpus {} is not a published data pool (no licence or provenance on record)",
                    hex::encode(id),
                    hex::encode(job.corpus_sha256)
                ),
            });
        }
    }
    // Any bidder's job by id (verdicts and receipts name only the job id).
    let job_by_id: BTreeMap<Digest32, (&PublicKey, &Job)> =
        jobs.iter().map(|((b, id), (_, j))| (*id, (b, j))).collect();

    // Seed reveals: by the job's bidder, opening the job's commitment. The shards the seed
    // draws must have receipts from two providers (a flag where not: a replica may find no
    // second provider with quota left, `specs/market.md` §8.1).
    for (bidder, entries) in logs {
        for e in entries {
            let Body::Reveal(r) = &e.body else { continue };
            out.reveals += 1;
            let Some((_, job)) = jobs.get(&(*bidder, r.job_id)) else {
                find(
                    &mut out,
                    e,
                    format!(
                        "reveal for job {}, which the revealing log does not publish",
                        hex::encode(r.job_id)
                    ),
                );
                continue;
            };
            if !crate::replicate::opens(job, &r.seed) {
                find(
                    &mut out,
                    e,
                    format!(
                        "the revealed seed does not open job {}'s seed commitment",
                        hex::encode(r.job_id)
                    ),
                );
                continue;
            }
            out.reveals_opening += 1;
            let drawn = crate::replicate::replicated(
                &r.seed,
                &r.job_id,
                job.shards(),
                crate::clearing::replica_count(job),
            );
            let mut providers: BTreeMap<u32, BTreeSet<PublicKey>> = BTreeMap::new();
            for x in logs.values().flatten() {
                if let Body::Receipt(c) = &x.body {
                    if c.terms.job_id == r.job_id && c.terms.bidder == *bidder {
                        providers
                            .entry(c.terms.shard)
                            .or_default()
                            .insert(c.terms.provider);
                    }
                }
            }
            for k in drawn {
                let n = u32::try_from(k)
                    .ok()
                    .and_then(|k| providers.get(&k))
                    .map_or(0, BTreeSet::len);
                if n < 2 {
                    out.flags.push(Finding {
                        log: hex::encode(bidder),
                        seq: e.seq,
                        kind: "reveal",
                        detail: format!(
                            "shard {k} of job {} was drawn for replication but has receipts from {n} provider(s)",
                            hex::encode(r.job_id)
                        ),
                    });
                }
            }
        }
    }

    // 2. Bids and clearings, in the bidder's own log.
    let mut clearings: BTreeMap<(PublicKey, Digest32), Vec<&Clearing>> = BTreeMap::new();
    for (bidder, entries) in logs {
        for e in entries {
            match &e.body {
                Body::Bid(b) => {
                    out.bids += 1;
                    match jobs.get(&(*bidder, b.job_id)) {
                        Some((seq, job)) if *seq < e.seq => {
                            if b.max_price_cents_per_kilo_unit != job.max_price_cents_per_kilo_unit
                                || b.deadline_ms != job.deadline_ms
                            {
                                find(
                                    &mut out,
                                    e,
                                    format!(
                                    "bid says max price {} and deadline {}, its job says {} and {}",
                                    b.max_price_cents_per_kilo_unit, b.deadline_ms,
                                    job.max_price_cents_per_kilo_unit, job.deadline_ms
                                ),
                                );
                            }
                        }
                        _ => find(
                            &mut out,
                            e,
                            format!(
                                "bid for job {} that the bidder's log does not publish before it",
                                hex::encode(b.job_id)
                            ),
                        ),
                    }
                }
                Body::Clearing(c) => {
                    out.clearings += 1;
                    if let Some(detail) = check_clearing(logs, &jobs, bidder, e, c) {
                        find(&mut out, e, detail);
                    } else {
                        out.clearings_reproduced += 1;
                        clearings.entry((*bidder, c.job_id)).or_default().push(c);
                    }
                }
                Body::Reclearing(r) => {
                    out.reclearings += 1;
                    let c = &r.clearing;
                    let Some((_, job)) = jobs.get(&(*bidder, c.job_id)) else {
                        find(
                            &mut out,
                            e,
                            format!(
                                "re-clearing of job {}, which the bidder's log does not publish",
                                hex::encode(c.job_id)
                            ),
                        );
                        continue;
                    };
                    match crate::reclear::check(logs, job, bidder, e.seq, e.timestamp_ms, r) {
                        Err(err) => find(&mut out, e, format!("re-clearing does not hold: {err}")),
                        Ok(()) => {
                            out.reclearings_reproduced += 1;
                            clearings.entry((*bidder, c.job_id)).or_default().push(c);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // 3. Co-signed facts (each once) and verdicts.
    let mut seen: BTreeSet<Digest32> = BTreeSet::new();
    // Reproduced leases by (job, bidder, provider): (units, price per 1,000 units, cents).
    let mut leased: BTreeMap<(Digest32, PublicKey, PublicKey), (u64, u64, u64)> = BTreeMap::new();
    // Every lease any log holds, by fact id: (job, bidder, provider) and whether the audit
    // reproduced it from a clearing.
    let mut lease_ids: BTreeMap<Digest32, ((Digest32, PublicKey, PublicKey), bool)> =
        BTreeMap::new();
    let mut verdicts: BTreeMap<(Digest32, u32, PublicKey, Digest32), (u64, u64)> = BTreeMap::new();
    for entries in logs.values() {
        for e in entries {
            let new = fact_id(e).is_none_or(|f| seen.insert(f));
            match &e.body {
                Body::Lease(c) if new => {
                    out.leases += 1;
                    let t = &c.terms;
                    lease_ids.insert(t.fact_id(), ((t.job_id, t.bidder, t.provider), false));
                    let implied = clearings.get(&(t.bidder, t.job_id)).and_then(|cs| {
                        let (_, job) = &jobs[&(t.bidder, t.job_id)];
                        cs.iter().find_map(|cl| {
                            cl.assignments
                                .iter()
                                .find(|a| a.provider == t.provider && a.offer_id == t.offer_id)
                                .map(|a| {
                                    (
                                        lease_terms(cl, job, t.bidder, a),
                                        cl.price_cents_per_kilo_unit,
                                    )
                                })
                        })
                    });
                    match implied {
                        Some((terms, price)) if terms == *t => {
                            out.leases_matching += 1;
                            lease_ids.insert(t.fact_id(), ((t.job_id, t.bidder, t.provider), true));
                            leased.insert((t.job_id, t.bidder, t.provider), (t.compute_units, price, t.price_cents));
                        }
                        Some((terms, _)) => find(&mut out, e, format!(
                            "lease terms differ from what the clearing implies: expected {} units for {} cents until {}, found {} units for {} cents until {}",
                            terms.compute_units, terms.price_cents, terms.expires_ms,
                            t.compute_units, t.price_cents, t.expires_ms
                        )),
                        None => find(&mut out, e, format!(
                            "no reproduced clearing of job {} in the bidder's log assigns shards to provider {} under offer {}: the rule would not have produced this lease",
                            hex::encode(t.job_id), hex::encode(t.provider), t.offer_id
                        )),
                    }
                }
                Body::Verdict(v) => {
                    match job_by_id.get(&v.job_id) {
                        // A referee never judges its own claim (as the ledger fold counts verdicts).
                        Some(_) if v.provider == e.author => {
                            out.verdicts_ignored += 1;
                            find(
                                &mut out,
                                e,
                                format!(
                            "verdict on job {} shard {} by {} on its own result: not counted",
                            hex::encode(v.job_id), v.shard, hex::encode(e.author)
                        ),
                            );
                        }
                        Some((_, job)) if job.is_referee(&e.author) => {
                            out.verdicts_counted += 1;
                            let x = verdicts
                                .entry((v.job_id, v.shard, v.provider, v.output_commitment))
                                .or_default();
                            if v.accepted {
                                x.0 += 1
                            } else {
                                x.1 += 1
                            }
                        }
                        Some(_) => {
                            out.verdicts_ignored += 1;
                            find(&mut out, e, format!(
                            "verdict on job {} shard {} by {}, who is not one of the job's referees: not counted",
                            hex::encode(v.job_id), v.shard, hex::encode(e.author)
                        ));
                        }
                        None => {
                            out.verdicts_ignored += 1;
                            find(
                                &mut out,
                                e,
                                format!(
                                    "verdict on job {}, which no log publishes: not counted",
                                    hex::encode(v.job_id)
                                ),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // 4. Receipts and settlements against leases and referee verdicts.
    seen.clear();
    let mut paid: BTreeMap<(Digest32, PublicKey), (u64, &Entry)> = BTreeMap::new();
    // Receipts by fact id: terms and whether the referee accepted them (and none rejected).
    let mut receipts: BTreeMap<Digest32, (&leam_ledger::entry::ReceiptTerms, bool)> =
        BTreeMap::new();
    let mut settlements: Vec<(&Entry, &leam_ledger::entry::SettlementTerms)> = Vec::new();
    for entries in logs.values() {
        for e in entries {
            if !fact_id(e).is_none_or(|f| seen.insert(f)) {
                continue;
            }
            match &e.body {
                Body::Receipt(c) => {
                    out.receipts += 1;
                    let t = &c.terms;
                    // The receipt's lease: a lease of its job between its two parties, which
                    // the audit reproduced from a clearing (a lease it did not is found above).
                    let why = match lease_ids.get(&t.lease) {
                        Some((parties, true)) if *parties == (t.job_id, t.bidder, t.provider) => {
                            None
                        }
                        Some((parties, true)) => Some(format!(
                            "which is a lease between bidder {} and provider {} for job {}",
                            hex::encode(parties.1),
                            hex::encode(parties.2),
                            hex::encode(parties.0)
                        )),
                        Some((_, false)) => Some("which no clearing implies".to_string()),
                        None => Some("but no log holds such a lease".to_string()),
                    };
                    if let Some(why) = why {
                        find(&mut out, e, format!(
                            "receipt for shard {} of job {} between bidder {} and provider {} names lease {}, {why}",
                            t.shard, hex::encode(t.job_id), hex::encode(t.bidder), hex::encode(t.provider), hex::encode(t.lease)
                        ));
                        continue;
                    }
                    let (acc, rej) = verdicts
                        .get(&(t.job_id, t.shard, t.provider, t.output_commitment))
                        .copied()
                        .unwrap_or((0, 0));
                    if let Some(id) = fact_id(e) {
                        receipts.insert(id, (t, acc > 0 && rej == 0));
                    }
                }
                Body::Settlement(c) => {
                    out.settlements += 1;
                    settlements.push((e, &c.terms));
                    let by = out
                        .paid_cents
                        .entry((c.terms.job_id, c.terms.payer, c.terms.payee))
                        .or_default();
                    *by = by.saturating_add(c.terms.credits_cents);
                    let p = paid
                        .entry((c.terms.job_id, c.terms.payee))
                        .or_insert((0, e));
                    p.0 = p.0.saturating_add(c.terms.credits_cents);
                    p.1 = e;
                }
                _ => {}
            }
        }
    }
    // 5. Offers against the provider's own receipts (units per device hour).
    seen.clear();
    let mut done: BTreeMap<PublicKey, (u128, u128)> = BTreeMap::new();
    for entries in logs.values() {
        for e in entries {
            if let Body::Receipt(c) = &e.body {
                if fact_id(e).is_none_or(|f| seen.insert(f)) && c.terms.gpu_ms > 0 {
                    let d = done.entry(c.terms.provider).or_default();
                    d.0 += u128::from(c.terms.compute_units);
                    d.1 += u128::from(c.terms.gpu_ms);
                }
            }
        }
    }
    for (provider, (units, ms)) in &done {
        let per_hour = units * 3_600_000 / ms;
        for e in logs.get(provider).map_or(&[][..], Vec::as_slice) {
            if let Body::Offer(o) = &e.body {
                if u128::from(o.compute_units_per_hour)
                    > per_hour * u128::from(OFFER_RECEIPT_TOLERANCE)
                {
                    out.flags.push(Finding {
                        log: hex::encode(provider),
                        seq: e.seq,
                        kind: "offer",
                        detail: format!(
                            "offer {} claims {} units per hour; the provider's receipts show {per_hour} ({units} units in {ms} device ms)",
                            o.offer_id, o.compute_units_per_hour
                        ),
                    });
                }
            }
        }
    }
    // 5b. Each settlement pays named receipts: runs of the payee for the job that the referee
    // accepted, each at most once per payer, for no more than they are worth.
    let mut paid_by: BTreeSet<(PublicKey, Digest32)> = BTreeSet::new();
    for (e, t) in &settlements {
        let lease = leased
            .iter()
            .find(|((j, _, p), _)| *j == t.job_id && *p == t.payee);
        let mut units = 0u64;
        if t.receipts.is_empty() {
            find(
                &mut out,
                e,
                format!(
                    "settlement of {} cents to {} for job {} names no receipt it pays",
                    t.credits_cents,
                    hex::encode(t.payee),
                    hex::encode(t.job_id)
                ),
            );
        }
        for id in &t.receipts {
            match receipts.get(id) {
                Some((r, verified)) if r.job_id == t.job_id && r.provider == t.payee => {
                    if !verified {
                        find(&mut out, e, format!(
                            "settlement pays receipt {} (shard {}), which the job's referee did not accept",
                            hex::encode(id), r.shard
                        ));
                    } else if !paid_by.insert((t.payer, *id)) {
                        find(
                            &mut out,
                            e,
                            format!(
                                "settlement pays receipt {} (shard {}) that {} already paid",
                                hex::encode(id),
                                r.shard,
                                hex::encode(t.payer)
                            ),
                        );
                    } else {
                        units = units.saturating_add(r.compute_units);
                    }
                }
                Some(_) => find(
                    &mut out,
                    e,
                    format!(
                        "settlement pays receipt {}, which is not a run of {} for job {}",
                        hex::encode(id),
                        hex::encode(t.payee),
                        hex::encode(t.job_id)
                    ),
                ),
                None => find(
                    &mut out,
                    e,
                    format!(
                        "settlement pays receipt {}, which no log holds",
                        hex::encode(id)
                    ),
                ),
            }
        }
        let worth = lease.map_or(0, |(_, (_, price, lease_cents))| {
            owed_cents(units, *price, *lease_cents)
        });
        if t.credits_cents > worth {
            find(
                &mut out,
                e,
                format!(
                    "settlement pays {} cents for receipts worth {} cents at the lease price",
                    t.credits_cents, worth
                ),
            );
        }
        out.settled.push(Settled {
            terms: (*t).clone(),
            bidder: lease.map(|((_, b, _), _)| *b),
            worth_cents: worth,
        });
    }
    // The bidder's and the pool's settlements to a provider for a job together never exceed
    // what the receipt sets they pay are worth, nor the provider's leases.
    for ((job_id, payee), (cents, e)) in &paid {
        let mut sets: BTreeMap<&[Digest32], u64> = BTreeMap::new();
        for x in out
            .settled
            .iter()
            .filter(|x| x.terms.job_id == *job_id && x.terms.payee == *payee)
        {
            let w = sets.entry(&x.terms.receipts).or_default();
            *w = (*w).max(x.worth_cents);
        }
        let lease_cents: u64 = leased
            .iter()
            .filter(|((j, _, p), _)| j == job_id && p == payee)
            .map(|(_, (_, _, c))| *c)
            .fold(0, u64::saturating_add);
        let owed = sets
            .values()
            .fold(0u64, |a, w| a.saturating_add(*w))
            .min(lease_cents);
        if *cents > owed {
            find(&mut out, e, format!(
                "settlements pay {} {} cents for job {}, but the referee-verified receipts they name are worth {} cents at the lease price",
                hex::encode(payee), cents, hex::encode(job_id), owed
            ));
        }
    }
    out
}

/// Re-run one clearing; `Some(reason)` when it does not reproduce.
fn check_clearing(
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    jobs: &BTreeMap<(PublicKey, Digest32), (u64, Job)>,
    bidder: &PublicKey,
    e: &Entry,
    c: &Clearing,
) -> Option<String> {
    let entries = &logs[bidder];
    let bid = entries.get(usize::try_from(c.bid_seq).ok()?);
    match bid.map(|b| &b.body) {
        Some(Body::Bid(b)) if b.job_id == c.job_id => {
            let bid_ms = entries[c.bid_seq as usize].timestamp_ms;
            if c.clearing_ms < bid_ms || c.clearing_ms > e.timestamp_ms {
                return Some(format!(
                    "clearing time {} is outside [bid time {bid_ms}, clearing entry time {}]",
                    c.clearing_ms, e.timestamp_ms
                ));
            }
        }
        _ => {
            return Some(format!(
                "entry {} of the bidder's log is not a bid for job {}",
                c.bid_seq,
                hex::encode(c.job_id)
            ))
        }
    }
    let Some((_, job)) = jobs.get(&(*bidder, c.job_id)) else {
        return Some(format!(
            "job {} is not published in the bidder's log",
            hex::encode(c.job_id)
        ));
    };
    let req = Request {
        job,
        job_id: c.job_id,
        bidder: *bidder,
        bid_seq: c.bid_seq,
        clearing_ms: c.clearing_ms,
        shard_units: c.shard_units,
        views: c.views.clone(),
    };
    match clearing::run(&req, logs) {
        Err(err) => Some(format!("cannot re-run the rule: {err}")),
        Ok((again, _)) if again != *c => Some(format!(
            "the rule gives price {} and assignments {}, the record says price {} and {}",
            again.price_cents_per_kilo_unit,
            show(&again),
            c.price_cents_per_kilo_unit,
            show(c)
        )),
        Ok(_) => None,
    }
}

fn show(c: &Clearing) -> String {
    let parts: Vec<String> = c
        .assignments
        .iter()
        .map(|a| {
            format!(
                "{}…#{}×{}",
                &hex::encode(a.provider)[..8],
                a.offer_id,
                a.shards
            )
        })
        .collect();
    format!("[{}]", parts.join(", "))
}
