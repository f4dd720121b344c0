//! leam-jobs: federated training jobs over the network (`specs/market.md` §8).
//!
//! - [`plan`]: what a job's shards are and who runs them (pure).
//! - [`blobs`]: content-addressed blobs in a node directory (corpora, training states).
//! - [`link`]: the running node's command channel, as jobs use it.
//! - [`provider`]: take shard runs under a lease, run them, answer polls and bisection.
//! - [`referee`]: judge a shard's claims and record verdicts and evidence.
//! - [`evidence`]: re-check wrong-result evidence by replay, for the audit.
//! - [`bidder`]: the bidder's round loop: specs, runs, replicas, receipts, outer steps,
//!   referee requests, settlements.
//! - [`serve`]: the node's handler of the work protocol.
//! - [`offer`]: a provider's offer, measured on its backend (self-test, benchmark shard).
//!
//! Invariants: no libp2p here (the node's shell carries the messages); nothing is believed
//! that is not checked (blobs against their hash, results against their spec, receipts against
//! the provider's own run, verdicts only from the job's referee); training decisions are the
//! compute crate's bit-exact functions, so every party derives the same states.

pub mod bidder;
pub mod blobs;
pub mod evidence;
pub mod link;
pub mod offer;
pub mod plan;
pub mod provider;
pub mod referee;
pub mod serve;

/// Folder of a node directory holding bidders' job files (secret seeds, progress).
pub const JOBS_DIR_NAME: &str = "jobs";
