//! Which shards are replicated on a second provider (`specs/market.md` §4): chosen by a seed the
//! bidder commits to in the job description and reveals only after the round's results are in,
//! so no provider knows whether its shard is checked and every auditor can check the choice.

use leam_ledger::entry::Digest32;
use sha2::{Digest as _, Sha256};

use crate::job::{seed_commitment, Job};

/// Domain separator of the per-shard replication draw.
pub const DRAW_CONTEXT: &[u8] = b"leam/replicate/v1\0";

/// The draw of shard `shard` (0-based over the whole job): SHA-256 of the context, the seed,
/// the job id and the shard number.
pub fn draw(seed: &[u8; 32], job_id: &Digest32, shard: u64) -> Digest32 {
    let mut h = Sha256::new();
    h.update(DRAW_CONTEXT);
    h.update(seed);
    h.update(job_id);
    h.update(shard.to_be_bytes());
    h.finalize().into()
}

/// The replicated shards: the `count` shards of `0..shards` with the smallest draws, returned
/// in ascending shard order.
pub fn replicated(seed: &[u8; 32], job_id: &Digest32, shards: u64, count: u64) -> Vec<u64> {
    let mut d: Vec<(Digest32, u64)> = (0..shards).map(|k| (draw(seed, job_id, k), k)).collect();
    d.sort_unstable();
    let mut out: Vec<u64> = d.into_iter().take(count as usize).map(|(_, k)| k).collect();
    out.sort_unstable();
    out
}

/// Whether a revealed seed opens the job's commitment.
pub fn opens(job: &Job, seed: &[u8; 32]) -> bool {
    seed_commitment(seed) == job.seed_commitment
}

/// Probability, in parts per billion, that a job replicating `replicas` of `shards` shards
/// checks at least one of `falsified` falsified shards (hypergeometric: 1 − C(n−f, r)/C(n, r)).
pub fn catch_probability_ppb(shards: u64, replicas: u64, falsified: u64) -> u64 {
    if falsified == 0 || replicas == 0 {
        return 0;
    }
    if falsified + replicas > shards {
        return 1_000_000_000;
    }
    // C(n−f, r)/C(n, r) = Π_{i<r} (n−f−i)/(n−i), in f64: a report figure, not a ledger value.
    let mut miss = 1.0f64;
    for i in 0..replicas {
        miss *= (shards - falsified - i) as f64 / (shards - i) as f64;
    }
    ((1.0 - miss) * 1e9).round() as u64
}
