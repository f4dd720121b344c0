//! What verified work is worth, and who pays it (`specs/market.md` §5).

use std::collections::BTreeMap;

use leam_ledger::account::LogState;
use leam_ledger::entry::{Body, Entry, Money, PublicKey, Sector, SettlementTerms};

use crate::clearing::price_cents;

/// Shares of one payment: the bidder's and the public funding pool's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Split {
    /// Credits the bidder pays.
    pub bidder_cents: u64,
    /// Credits the public pool pays (the subsidy).
    pub public_cents: u64,
}

/// Credits owed for `verified_units` at the lease's price, never more than the lease's total.
pub fn owed_cents(verified_units: u64, price_cents_per_kilo_unit: u64, lease_cents: u64) -> u64 {
    price_cents(verified_units, price_cents_per_kilo_unit).min(lease_cents)
}

/// Split a payment: startups get `subsidy_percent` of it from the public pool (rounded down to
/// the cent, so the pool never pays more than the rate); every other sector pays in full.
pub fn split(amount_cents: u64, bidder_sector: Sector, subsidy_percent: u8) -> Split {
    let public = if bidder_sector == Sector::Startup {
        u64::try_from(u128::from(amount_cents) * u128::from(subsidy_percent.min(100)) / 100)
            .unwrap_or(0)
    } else {
        0
    };
    Split {
        bidder_cents: amount_cents - public,
        public_cents: public,
    }
}

/// The money `me` pays `cents` with, by its credits of each money as its own log `own` shows
/// them (the ledger's own rules rebuild the balances, `LogState::purse_cents`): private money if
/// it covers the payment, else public funding if that does, else private (and the log refuses
/// the overdraw, naming the money).
pub fn paying_money(own: &[Entry], me: &PublicKey, cents: u64) -> Money {
    let mut state = LogState::new(*me);
    // The log passed these rules when it was written; if they fail now, every purse reads 0.
    let _ = state.apply_all(own);
    if state.purse_cents(Money::Private) >= cents {
        Money::Private
    } else if state.purse_cents(Money::Public) >= cents {
        Money::Public
    } else {
        Money::Private
    }
}

/// The federation's public pool: the public-sector member with the most public money deposited
/// in its own log (ties: the smaller key); `None` while no public member deposited public money.
pub fn public_pool(
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    sectors: &BTreeMap<PublicKey, Sector>,
) -> Option<PublicKey> {
    logs.iter()
        .filter(|(k, _)| sectors.get(*k) == Some(&Sector::Public))
        .map(|(k, entries)| {
            let public: u64 = entries
                .iter()
                .filter_map(|e| match &e.body {
                    Body::Deposit(d) if d.member == *k && d.money == Money::Public => {
                        Some(d.eur_cents)
                    }
                    _ => None,
                })
                .fold(0u64, u64::saturating_add);
            (public, *k)
        })
        .filter(|(public, _)| *public > 0)
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, k)| k)
}

/// The subsidy settlements `pool` still owes (`specs/market.md` §5): for every settlement a
/// startup paid to a provider of its job, the public share of what that settlement's receipts
/// are worth ([`split`]), with the same receipts, unless the pool paid them already. The pool
/// pays no one when it is the provider itself (its share stays with it).
pub fn subsidy_due(
    logs: &BTreeMap<PublicKey, Vec<Entry>>,
    sectors: &BTreeMap<PublicKey, Sector>,
    pool: &PublicKey,
    subsidy_percent: u8,
) -> Vec<SettlementTerms> {
    let audit = crate::audit::audit(logs);
    let paid_by_pool = |s: &SettlementTerms| {
        audit.settled.iter().any(|x| {
            x.terms.payer == *pool
                && x.terms.payee == s.payee
                && x.terms.job_id == s.job_id
                && x.terms.receipts == s.receipts
        })
    };
    let mut out: Vec<SettlementTerms> = Vec::new();
    for x in &audit.settled {
        let s = &x.terms;
        let by_startup =
            x.bidder == Some(s.payer) && sectors.get(&s.payer) == Some(&Sector::Startup);
        if !by_startup || s.payee == *pool || s.payer == *pool || paid_by_pool(s) {
            continue;
        }
        let due = split(x.worth_cents, Sector::Startup, subsidy_percent).public_cents;
        let terms = SettlementTerms {
            job_id: s.job_id,
            payer: *pool,
            payee: s.payee,
            credits_cents: due,
            money: Money::Public,
            receipts: s.receipts.clone(),
        };
        if due > 0 && !out.contains(&terms) {
            out.push(terms);
        }
    }
    out
}
