//! Accounting: the rules every log obeys at append, and the deterministic fold over verified
//! logs that yields the per-organisation and per-sector report.
//!
//! Both are pure: no clock, no I/O, no randomness; `BTreeMap`s keep every output ordered.
//! The rules are specified in `specs/ledger.md`, section "Accounting".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::entry::{Body, Digest32, Entry, Evidence, EvidenceKind, Money, PublicKey, Sector};
use crate::evidence::Equivocation;

/// An organisation and sector a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Membership {
    /// Organisation name.
    pub organisation: String,
    /// Its sector.
    pub sector: Sector,
}

/// Why an entry breaks the log rules (checked at append, and again by audit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The entry's author is not the log's owner.
    #[error("entry {seq}: author {found} is not the log owner {expected}")]
    WrongAuthor {
        /// Entry index.
        seq: u64,
        /// Owner hex.
        expected: String,
        /// Author hex.
        found: String,
    },
    /// The entry's sequence number is not the next index.
    #[error("entry has seq {found}, expected the next index {expected}")]
    WrongSeq {
        /// Next index.
        expected: u64,
        /// Found.
        found: u64,
    },
    /// The timestamp goes backwards.
    #[error("entry {seq}: timestamp {found} ms is before the previous entry's {previous} ms")]
    TimeBackwards {
        /// Entry index.
        seq: u64,
        /// Previous timestamp.
        previous: u64,
        /// Found.
        found: u64,
    },
    /// Entry 0 must be the owner's self-admission.
    #[error("entry 0 must be the log owner's self-admission, found a {found}")]
    MissingGenesis {
        /// What entry 0 is.
        found: &'static str,
    },
    /// A key is admitted twice, or the owner re-admits itself.
    #[error("entry {seq}: key {key} is already admitted")]
    AlreadyAdmitted {
        /// Entry index.
        seq: u64,
        /// Key hex.
        key: String,
    },
    /// An organisation name is admitted with two sectors.
    #[error("entry {seq}: organisation {organisation:?} was admitted as {first}, now as {found}")]
    SectorConflict {
        /// Entry index.
        seq: u64,
        /// Organisation.
        organisation: String,
        /// Earlier sector.
        first: &'static str,
        /// New sector.
        found: &'static str,
    },
    /// A key the entry refers to was never admitted in this log.
    #[error(
        "entry {seq}: key {key} ({role}) is not admitted in this log; record its admission first"
    )]
    NotAdmitted {
        /// Entry index.
        seq: u64,
        /// Key hex.
        key: String,
        /// What the key is in the entry.
        role: &'static str,
    },
    /// A deposit names a member other than the author.
    #[error("entry {seq}: a deposit must be the author's own (member {member})")]
    ForeignDeposit {
        /// Entry index.
        seq: u64,
        /// Member hex.
        member: String,
    },
    /// The same co-signed fact appears twice in this log.
    #[error("entry {seq}: this {kind} (fact {fact}) is already in the log")]
    DuplicateFact {
        /// Entry index.
        seq: u64,
        /// Kind.
        kind: &'static str,
        /// Fact id hex.
        fact: String,
    },
    /// A node judges or accuses itself.
    #[error("entry {seq}: a {kind} about the author itself is not allowed")]
    SelfReference {
        /// Entry index.
        seq: u64,
        /// Kind.
        kind: &'static str,
    },
    /// Evidence of a checkpoint equivocation does not prove one by the accused.
    #[error("entry {seq}: equivocation evidence does not hold: {reason}")]
    BadEvidence {
        /// Entry index.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A settlement would overdraw the owner's credits of the money it pays with.
    #[error("entry {seq}: settlement of {needed} credit cents of {money:?} money would overdraw the owner's {money:?} balance of {available}")]
    Overdraw {
        /// Entry index.
        seq: u64,
        /// The money the settlement pays with.
        money: Money,
        /// Amount paid.
        needed: u64,
        /// Balance before.
        available: u64,
    },
    /// A balance would exceed u64.
    #[error("entry {seq}: the owner's credit balance would overflow")]
    Overflow {
        /// Entry index.
        seq: u64,
    },
}

/// Credits (EUR cents) by money: `[public, private]`, indexed by `Money as usize`.
type Purses = [u64; 2];

/// The running state of one log that the append rules need.
#[derive(Debug, Clone)]
pub struct LogState {
    owner: PublicKey,
    next_seq: u64,
    last_timestamp_ms: u64,
    balance_cents: Purses,
    admitted: HashMap<PublicKey, Membership>,
    sectors: HashMap<String, Sector>,
    facts: HashSet<Digest32>,
}

/// Changes a batch makes to a [`LogState`], applied by [`LogState::commit`] only when the
/// whole batch passes.
#[derive(Debug, Clone)]
pub struct Delta {
    next_seq: u64,
    last_timestamp_ms: u64,
    balance_cents: Purses,
    admitted: HashMap<PublicKey, Membership>,
    sectors: HashMap<String, Sector>,
    facts: HashSet<Digest32>,
}

impl LogState {
    /// The state of an empty log owned by `owner`.
    pub fn new(owner: PublicKey) -> Self {
        LogState {
            owner,
            next_seq: 0,
            last_timestamp_ms: 0,
            balance_cents: [0; 2],
            admitted: HashMap::new(),
            sectors: HashMap::new(),
            facts: HashSet::new(),
        }
    }

    /// Index of the next entry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The owner's credit balance (EUR cents) as this log shows it: both moneys together.
    pub fn balance_cents(&self) -> u64 {
        self.balance_cents.iter().sum()
    }

    /// The owner's credits (EUR cents) of one money as this log shows it.
    pub fn purse_cents(&self, money: Money) -> u64 {
        self.balance_cents[money as usize]
    }

    /// Membership of a key admitted in this log.
    pub fn membership(&self, key: &PublicKey) -> Option<&Membership> {
        self.admitted.get(key)
    }

    /// Check a batch against the rules without changing the state.
    pub fn check<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<Delta, RuleError> {
        let mut d = Delta {
            next_seq: self.next_seq,
            last_timestamp_ms: self.last_timestamp_ms,
            balance_cents: self.balance_cents,
            admitted: HashMap::new(),
            sectors: HashMap::new(),
            facts: HashSet::new(),
        };
        for e in entries {
            self.apply(&mut d, e)?;
        }
        Ok(d)
    }

    /// Apply a checked batch.
    pub fn commit(&mut self, d: Delta) {
        self.next_seq = d.next_seq;
        self.last_timestamp_ms = d.last_timestamp_ms;
        self.balance_cents = d.balance_cents;
        self.admitted.extend(d.admitted);
        self.sectors.extend(d.sectors);
        self.facts.extend(d.facts);
    }

    /// Check and apply a batch (all or nothing).
    pub fn apply_all<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<(), RuleError> {
        let d = self.check(entries)?;
        self.commit(d);
        Ok(())
    }

    fn is_admitted(&self, d: &Delta, key: &PublicKey) -> bool {
        self.admitted.contains_key(key) || d.admitted.contains_key(key)
    }

    fn apply(&self, d: &mut Delta, e: &Entry) -> Result<(), RuleError> {
        let seq = e.seq;
        if e.author != self.owner {
            return Err(RuleError::WrongAuthor {
                seq,
                expected: hex::encode(self.owner),
                found: hex::encode(e.author),
            });
        }
        if seq != d.next_seq {
            return Err(RuleError::WrongSeq {
                expected: d.next_seq,
                found: seq,
            });
        }
        if e.timestamp_ms < d.last_timestamp_ms {
            return Err(RuleError::TimeBackwards {
                seq,
                previous: d.last_timestamp_ms,
                found: e.timestamp_ms,
            });
        }
        let genesis = matches!(&e.body, Body::Admission(a) if a.member == e.author);
        if (seq == 0) != genesis {
            if seq == 0 {
                return Err(RuleError::MissingGenesis {
                    found: e.kind().name(),
                });
            }
            return Err(RuleError::AlreadyAdmitted {
                seq,
                key: hex::encode(e.author),
            });
        }
        if let Some(view) = e.body.cosigned() {
            if self.facts.contains(&view.fact_id) || !d.facts.insert(view.fact_id) {
                return Err(RuleError::DuplicateFact {
                    seq,
                    kind: view.kind.name(),
                    fact: hex::encode(view.fact_id),
                });
            }
        }
        let need = |key: &PublicKey, role| {
            if self.is_admitted(d, key) {
                Ok(())
            } else {
                Err(RuleError::NotAdmitted {
                    seq,
                    key: hex::encode(key),
                    role,
                })
            }
        };
        match &e.body {
            Body::Admission(a) => {
                if self.is_admitted(d, &a.member) {
                    return Err(RuleError::AlreadyAdmitted {
                        seq,
                        key: hex::encode(a.member),
                    });
                }
                let first = self
                    .sectors
                    .get(&a.organisation)
                    .or_else(|| d.sectors.get(&a.organisation));
                if let Some(first) = first {
                    if *first != a.sector {
                        return Err(RuleError::SectorConflict {
                            seq,
                            organisation: a.organisation.clone(),
                            first: first.name(),
                            found: a.sector.name(),
                        });
                    }
                }
                d.sectors.insert(a.organisation.clone(), a.sector);
                d.admitted.insert(
                    a.member,
                    Membership {
                        organisation: a.organisation.clone(),
                        sector: a.sector,
                    },
                );
            }
            Body::Deposit(dep) => {
                if dep.member != e.author {
                    return Err(RuleError::ForeignDeposit {
                        seq,
                        member: hex::encode(dep.member),
                    });
                }
                let purse = &mut d.balance_cents[dep.money as usize];
                *purse = purse
                    .checked_add(dep.eur_cents)
                    .ok_or(RuleError::Overflow { seq })?;
            }
            Body::Offer(_) | Body::Bid(_) | Body::Job(_) | Body::Reveal(_) | Body::Data(_) => {}
            Body::Clearing(c) => {
                for a in &c.assignments {
                    need(&a.provider, "assigned provider")?;
                }
            }
            Body::Reclearing(r) => {
                for a in &r.clearing.assignments {
                    need(&a.provider, "assigned provider")?;
                }
                for k in &r.replaces {
                    need(k, "replaced provider")?;
                }
            }
            Body::Lease(c) => {
                need(&c.terms.bidder, "bidder")?;
                need(&c.terms.provider, "provider")?;
            }
            Body::Receipt(c) => {
                need(&c.terms.bidder, "bidder")?;
                need(&c.terms.provider, "provider")?;
            }
            Body::Settlement(c) => {
                need(&c.terms.payer, "payer")?;
                need(&c.terms.payee, "payee")?;
                let t = &c.terms;
                let purse = &mut d.balance_cents[t.money as usize];
                if t.payer == self.owner {
                    *purse = purse
                        .checked_sub(t.credits_cents)
                        .ok_or(RuleError::Overdraw {
                            seq,
                            money: t.money,
                            needed: t.credits_cents,
                            available: *purse,
                        })?;
                } else {
                    *purse = purse
                        .checked_add(t.credits_cents)
                        .ok_or(RuleError::Overflow { seq })?;
                }
            }
            Body::Verdict(v) => {
                if v.provider == e.author {
                    return Err(RuleError::SelfReference {
                        seq,
                        kind: "verdict",
                    });
                }
                need(&v.provider, "provider")?;
            }
            Body::Evidence(ev) => {
                if ev.accused == e.author {
                    return Err(RuleError::SelfReference {
                        seq,
                        kind: "evidence",
                    });
                }
                need(&ev.accused, "accused")?;
                if ev.kind == EvidenceKind::CheckpointEquivocation {
                    check_equivocation(seq, &ev.accused, &ev.bytes)?;
                }
            }
        }
        d.next_seq = seq + 1;
        d.last_timestamp_ms = e.timestamp_ms;
        Ok(())
    }
}

/// Equivocation evidence must decode, be conclusive (tlog.md §6) and accuse the log whose key
/// signed both checkpoints.
fn check_equivocation(seq: u64, accused: &PublicKey, bytes: &[u8]) -> Result<(), RuleError> {
    let bad = |reason: String| RuleError::BadEvidence { seq, reason };
    let ev = Equivocation::decode(bytes).map_err(|e| bad(e.to_string()))?;
    ev.verify_conclusive().map_err(|e| bad(e.to_string()))?;
    let expected = crate::identity::verifier_key_of(accused);
    if ev.log_verifier_key != expected {
        return Err(bad(format!(
            "it is about log {}, not the accused {expected}",
            ev.log_verifier_key
        )));
    }
    Ok(())
}

/// Totals for an organisation or a sector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Compute units of verified shards this party computed.
    pub compute_contributed_units: u64,
    /// Device milliseconds of those shards.
    pub compute_contributed_gpu_ms: u64,
    /// Compute units of verified shards computed for this party.
    pub compute_consumed_units: u64,
    /// Device milliseconds of those shards.
    pub compute_consumed_gpu_ms: u64,
    /// Compute units this party claims without an accepting verdict yet.
    pub compute_unverified_units: u64,
    /// Compute units of this party's shards that a referee rejected.
    pub compute_rejected_units: u64,
    /// Credits (EUR cents): deposits plus settlements received minus settlements paid; the sum
    /// of the two fields below.
    pub credit_balance_cents: i64,
    /// Credits of public money: public funding deposited, plus settlements received in public
    /// money, minus settlements paid in public money.
    pub credit_public_cents: i64,
    /// Credits of private money, counted the same way.
    pub credit_private_cents: i64,
    /// Public funding deposited, EUR cents.
    pub funding_public_eur_cents: u64,
    /// Private money deposited, EUR cents.
    pub funding_private_eur_cents: u64,
    /// Distinct pieces of misbehaviour evidence against this party.
    pub evidence_against: u64,
}

impl Totals {
    /// Adds `cents` (negative: subtracts) to the credits of `money` and to the balance.
    fn credit(&mut self, money: Money, cents: i64) -> Option<()> {
        let purse = match money {
            Money::Public => &mut self.credit_public_cents,
            Money::Private => &mut self.credit_private_cents,
        };
        *purse = purse.checked_add(cents)?;
        self.credit_balance_cents = self.credit_balance_cents.checked_add(cents)?;
        Some(())
    }

    /// Adds every field of `t` to `self`; `None` (and `self` partly updated, to be discarded)
    /// if a field overflows.
    fn accumulate(&mut self, t: &Totals) -> Option<()> {
        self.compute_contributed_units = self
            .compute_contributed_units
            .checked_add(t.compute_contributed_units)?;
        self.compute_contributed_gpu_ms = self
            .compute_contributed_gpu_ms
            .checked_add(t.compute_contributed_gpu_ms)?;
        self.compute_consumed_units = self
            .compute_consumed_units
            .checked_add(t.compute_consumed_units)?;
        self.compute_consumed_gpu_ms = self
            .compute_consumed_gpu_ms
            .checked_add(t.compute_consumed_gpu_ms)?;
        self.compute_unverified_units = self
            .compute_unverified_units
            .checked_add(t.compute_unverified_units)?;
        self.compute_rejected_units = self
            .compute_rejected_units
            .checked_add(t.compute_rejected_units)?;
        self.credit_balance_cents = self
            .credit_balance_cents
            .checked_add(t.credit_balance_cents)?;
        self.credit_public_cents = self
            .credit_public_cents
            .checked_add(t.credit_public_cents)?;
        self.credit_private_cents = self
            .credit_private_cents
            .checked_add(t.credit_private_cents)?;
        self.funding_public_eur_cents = self
            .funding_public_eur_cents
            .checked_add(t.funding_public_eur_cents)?;
        self.funding_private_eur_cents = self
            .funding_private_eur_cents
            .checked_add(t.funding_private_eur_cents)?;
        self.evidence_against = self.evidence_against.checked_add(t.evidence_against)?;
        Some(())
    }
}

/// One organisation's line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgReport {
    /// Sector.
    pub sector: Sector,
    /// Member keys (hex), sorted.
    pub members: Vec<String>,
    /// Totals.
    #[serde(flatten)]
    pub totals: Totals,
}

/// The accounting report over a set of verified logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Logs folded.
    pub logs: u64,
    /// Entries folded.
    pub entries: u64,
    /// Distinct co-signed facts (counted once even when in both parties' logs).
    pub facts: u64,
    /// Per organisation.
    pub organisations: BTreeMap<String, OrgReport>,
    /// Per sector (every sector listed, zero if no member).
    pub sectors: BTreeMap<Sector, Totals>,
    /// Verdicts that count for nothing: their job is not published in any folded log, or
    /// their author is not one of the job's referees.
    pub verdicts_ignored: u64,
    /// Evidence entries that count for nothing, with the reason: evidence that does not check
    /// (a wrong-result claim the replay does not confirm) or that this auditor could not check
    /// (no [`EvidenceCheck`] for its kind, or the shard's inputs unavailable).
    pub evidence_not_counted: Vec<EvidenceNotCounted>,
}

/// An evidence entry the fold did not count, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceNotCounted {
    /// Log (key hex) holding the entry.
    pub log: String,
    /// The entry's index.
    pub seq: u64,
    /// Accused key (hex).
    pub accused: String,
    /// Kind of evidence.
    pub evidence_kind: EvidenceKind,
    /// Why it does not count.
    pub reason: String,
}

/// Checks evidence the ledger cannot check by itself: wrong-result evidence must be replayed
/// on the shard's inputs (`specs/market.md` §8.4), which needs the compute crate and the
/// inputs' bytes. Equivocation evidence never reaches a checker: the log rules already proved
/// it conclusive at append.
pub trait EvidenceCheck: Send + Sync {
    /// `Ok` when `ev`, written by `author`, proves misbehaviour of `ev.accused` given the
    /// folded `logs`; otherwise the reason it does not count (it does not hold, or it could
    /// not be checked).
    fn check(&self, logs: &[LogView<'_>], author: &PublicKey, ev: &Evidence) -> Result<(), String>;
}

/// The checker of an auditor that can replay nothing: only equivocation evidence counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct LedgerOnly;

impl EvidenceCheck for LedgerOnly {
    fn check(&self, _: &[LogView<'_>], _: &PublicKey, ev: &Evidence) -> Result<(), String> {
        Err(format!(
            "{} evidence needs a shard replay, and this auditor checks none",
            ev.kind.name()
        ))
    }
}

/// Why a set of logs cannot be folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Two admissions of one key disagree.
    #[error("key {key} is admitted as {first} and as {second}")]
    ConflictingAdmission {
        /// Key hex.
        key: String,
        /// First admission: `organisation/sector (log <hex> entry <n>)`.
        first: String,
        /// Second admission, same form.
        second: String,
    },
    /// A key appears in an entry but no log admits it.
    #[error("log {log} entry {seq}: key {key} is not admitted by any audited log")]
    Unattributed {
        /// Log (owner key hex).
        log: String,
        /// Entry.
        seq: u64,
        /// Key hex.
        key: String,
    },
    /// A total would overflow.
    #[error("log {log} entry {seq}: a total overflows")]
    Overflow {
        /// Log.
        log: String,
        /// Entry.
        seq: u64,
    },
}

/// A verified log, as the fold reads it.
#[derive(Debug, Clone, Copy)]
pub struct LogView<'a> {
    /// The owner's key.
    pub owner: PublicKey,
    /// All entries, in order, already verified (signatures, tree, rules).
    pub entries: &'a [Entry],
}

type ShardKey = (Digest32, u32, PublicKey, Digest32);

/// Fold verified logs into the report. Deterministic: the same logs in any order give the same
/// report. Co-signed facts count once; a shard's compute counts as verified when some log other
/// than the provider's own holds an accepting verdict on (job, shard, provider, output) and no
/// log holds a rejecting one. Evidence counts only if it checks: equivocation evidence always
/// (the log rules proved it at append), other kinds when `check` confirms them.
pub fn fold(logs: &[LogView<'_>]) -> Result<Report, AccountError> {
    fold_with(logs, &LedgerOnly)
}

/// [`fold`] with a checker for the evidence the ledger cannot check by itself.
pub fn fold_with(logs: &[LogView<'_>], check: &dyn EvidenceCheck) -> Result<Report, AccountError> {
    let mut ordered: Vec<&LogView<'_>> = logs.iter().collect();
    ordered.sort_by_key(|l| l.owner);

    // 1. Memberships.
    let mut members: BTreeMap<PublicKey, (Membership, PublicKey, u64)> = BTreeMap::new();
    for log in &ordered {
        for e in log.entries {
            if let Body::Admission(a) = &e.body {
                let m = Membership {
                    organisation: a.organisation.clone(),
                    sector: a.sector,
                };
                match members.get(&a.member) {
                    Some((first, flog, fseq)) if *first != m => {
                        return Err(AccountError::ConflictingAdmission {
                            key: hex::encode(a.member),
                            first: format!(
                                "{}/{} (log {} entry {fseq})",
                                first.organisation,
                                first.sector.name(),
                                hex::encode(flog)
                            ),
                            second: format!(
                                "{}/{} (log {} entry {})",
                                m.organisation,
                                m.sector.name(),
                                hex::encode(log.owner),
                                e.seq
                            ),
                        })
                    }
                    Some(_) => {}
                    None => {
                        members.insert(a.member, (m, log.owner, e.seq));
                    }
                }
            }
        }
    }
    let mut report = Report {
        logs: ordered.len() as u64,
        entries: 0,
        facts: 0,
        organisations: BTreeMap::new(),
        sectors: Sector::ALL
            .iter()
            .map(|s| (*s, Totals::default()))
            .collect(),
        verdicts_ignored: 0,
        evidence_not_counted: Vec::new(),
    };
    for (key, (m, _, _)) in &members {
        let org = report
            .organisations
            .entry(m.organisation.clone())
            .or_insert_with(|| OrgReport {
                sector: m.sector,
                members: vec![],
                totals: Totals::default(),
            });
        org.members.push(hex::encode(key));
    }

    // 2. Verdicts, counted only from the referees the job names.
    let mut referees: HashMap<Digest32, Vec<PublicKey>> = HashMap::new();
    for log in &ordered {
        for e in log.entries {
            if let Body::Job(j) = &e.body {
                referees.entry(j.id()).or_insert_with(|| j.referees());
            }
        }
    }
    let mut verdicts: HashMap<ShardKey, (u64, u64)> = HashMap::new();
    for log in &ordered {
        for e in log.entries {
            if let Body::Verdict(v) = &e.body {
                let may_judge = referees
                    .get(&v.job_id)
                    .is_some_and(|r| r.contains(&e.author));
                if v.provider == e.author || !may_judge {
                    report.verdicts_ignored += 1;
                    continue;
                }
                let c = verdicts
                    .entry((v.job_id, v.shard, v.provider, v.output_commitment))
                    .or_default();
                if v.accepted {
                    c.0 += 1;
                } else {
                    c.1 += 1;
                }
            }
        }
    }

    // 3. Everything else.
    let mut facts: BTreeSet<Digest32> = BTreeSet::new();
    let mut evidence: BTreeSet<(PublicKey, u8, Digest32)> = BTreeSet::new();
    for log in &ordered {
        let log_hex = || hex::encode(log.owner);
        for e in log.entries {
            report.entries += 1;
            let org_of = |key: &PublicKey| -> Result<String, AccountError> {
                members
                    .get(key)
                    .map(|(m, _, _)| m.organisation.clone())
                    .ok_or_else(|| AccountError::Unattributed {
                        log: log_hex(),
                        seq: e.seq,
                        key: hex::encode(key),
                    })
            };
            let overflow = || AccountError::Overflow {
                log: log_hex(),
                seq: e.seq,
            };
            if let Some(view) = e.body.cosigned() {
                if !facts.insert(view.fact_id) {
                    continue;
                }
            }
            let add = |report: &mut Report, org: &str, f: &dyn Fn(&mut Totals) -> Option<()>| {
                let o = report
                    .organisations
                    .get_mut(org)
                    .expect("every attributed organisation has a report line");
                f(&mut o.totals).ok_or_else(overflow)
            };
            match &e.body {
                Body::Deposit(d) => {
                    let org = org_of(&d.member)?;
                    let cents = d.eur_cents;
                    add(&mut report, &org, &|t| {
                        match d.money {
                            Money::Public => {
                                t.funding_public_eur_cents =
                                    t.funding_public_eur_cents.checked_add(cents)?
                            }
                            Money::Private => {
                                t.funding_private_eur_cents =
                                    t.funding_private_eur_cents.checked_add(cents)?
                            }
                        }
                        t.credit(d.money, i64::try_from(cents).ok()?)
                    })?;
                }
                Body::Settlement(c) => {
                    let amount = i64::try_from(c.terms.credits_cents).map_err(|_| overflow())?;
                    let payer = org_of(&c.terms.payer)?;
                    let payee = org_of(&c.terms.payee)?;
                    let money = c.terms.money;
                    add(&mut report, &payer, &|t| t.credit(money, -amount))?;
                    add(&mut report, &payee, &|t| t.credit(money, amount))?;
                }
                Body::Receipt(c) => {
                    let t = &c.terms;
                    let provider = org_of(&t.provider)?;
                    let bidder = org_of(&t.bidder)?;
                    let (acc, rej) = verdicts
                        .get(&(t.job_id, t.shard, t.provider, t.output_commitment))
                        .copied()
                        .unwrap_or((0, 0));
                    let (units, ms) = (t.compute_units, t.gpu_ms);
                    if rej > 0 {
                        add(&mut report, &provider, &|x| {
                            x.compute_rejected_units =
                                x.compute_rejected_units.checked_add(units)?;
                            Some(())
                        })?;
                    } else if acc > 0 {
                        add(&mut report, &provider, &|x| {
                            x.compute_contributed_units =
                                x.compute_contributed_units.checked_add(units)?;
                            x.compute_contributed_gpu_ms =
                                x.compute_contributed_gpu_ms.checked_add(ms)?;
                            Some(())
                        })?;
                        add(&mut report, &bidder, &|x| {
                            x.compute_consumed_units =
                                x.compute_consumed_units.checked_add(units)?;
                            x.compute_consumed_gpu_ms =
                                x.compute_consumed_gpu_ms.checked_add(ms)?;
                            Some(())
                        })?;
                    } else {
                        add(&mut report, &provider, &|x| {
                            x.compute_unverified_units =
                                x.compute_unverified_units.checked_add(units)?;
                            Some(())
                        })?;
                    }
                }
                Body::Evidence(ev) => {
                    let accused = org_of(&ev.accused)?;
                    let digest: Digest32 = Sha256::digest(&ev.bytes).into();
                    let checked = match ev.kind {
                        EvidenceKind::CheckpointEquivocation => Ok(()),
                        _ => check.check(logs, &e.author, ev),
                    };
                    if let Err(reason) = checked {
                        report.evidence_not_counted.push(EvidenceNotCounted {
                            log: log_hex(),
                            seq: e.seq,
                            accused: hex::encode(ev.accused),
                            evidence_kind: ev.kind,
                            reason,
                        });
                    } else if evidence.insert((ev.accused, ev.kind as u8, digest)) {
                        add(&mut report, &accused, &|x| {
                            x.evidence_against = x.evidence_against.checked_add(1)?;
                            Some(())
                        })?;
                    }
                }
                Body::Lease(c) => {
                    org_of(&c.terms.bidder)?;
                    org_of(&c.terms.provider)?;
                }
                Body::Verdict(v) => {
                    org_of(&v.provider)?;
                }
                Body::Admission(_)
                | Body::Offer(_)
                | Body::Bid(_)
                | Body::Job(_)
                | Body::Clearing(_)
                | Body::Reclearing(_)
                | Body::Reveal(_)
                | Body::Data(_) => {}
            }
            org_of(&e.author)?;
        }
    }
    report.facts = facts.len() as u64;

    // 4. Sector sums.
    for org in report.organisations.values() {
        let s = report
            .sectors
            .get_mut(&org.sector)
            .expect("every sector has a line");
        let t = &org.totals;
        let err = || AccountError::Overflow {
            log: String::from("(sector sums)"),
            seq: 0,
        };
        s.accumulate(t).ok_or_else(err)?;
    }
    Ok(report)
}
