//! leam's compute market, as pure functions that the bidder's node, every provider and every
//! auditor run alike (`specs/market.md`):
//!
//! - [`job`]: the job description, its canonical encoding and id;
//! - [`clearing`]: the reverse auction (uniform price at the first rejected ask, capped at the
//!   bid's maximum) and the leases it implies;
//! - [`reclear`]: buying again the shards a provider left unfinished;
//! - [`replicate`]: the commit-reveal choice of replicated shards;
//! - [`flow`]: what a bidder's node does next and whether a provider agrees to a lease;
//! - [`settle`]: what verified work is worth and the public subsidy's share;
//! - [`audit`]: the re-run of the rule and the checks of every market record in the logs.
//!
//! No clock, no randomness, no I/O, no network: time and seeds are arguments.
#![allow(clippy::result_large_err)]

pub mod audit;
pub mod clearing;
pub mod flow;
pub mod job;
pub mod reclear;
pub mod replicate;
pub mod settle;
