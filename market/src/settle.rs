//! What verified work is worth, and who pays it (`specs/market.md` §5).

use leam_ledger::entry::Sector;

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
