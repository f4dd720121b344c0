//! What a job's shards are (`specs/market.md` §8.1): pure functions of the job, its clearing and
//! the bidder's secret seed, so the bidder, the providers, the referee and an auditor derive the
//! same training setup, data ranges and shard assignment.

use leam_compute::model::data::TRAIN_PERCENT;
use leam_compute::model::optim::{Hyper, HyperQ};
use leam_compute::model::train::TrainState;
use leam_compute::model::transformer::Config;
use leam_ledger::entry::{Assignment, Digest32, PublicKey};
use leam_market::clearing::replica_count;
use leam_market::job::Job;

/// Validation batches the bidder evaluates after each outer step.
pub const EVAL_BATCHES: usize = 16;
/// Warm-up is at most this share (1/n) of the job's inner steps.
pub const WARMUP_SHARE_DIV: u64 = 4;
/// A shard run that takes this many times longer than its provider's offered throughput
/// promises is abandoned and the shard is leased again.
pub const SHARD_TIMEOUT_FACTOR: u64 = 4;
/// A shard run is never abandoned sooner than this.
pub const SHARD_TIMEOUT_MS_MIN: u64 = 60_000;

/// Why a job's training setup could not be derived.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The job's model or hyperparameters are out of range for the kernels.
    #[error("job model: {0}")]
    Model(String),
    /// The corpus does not fit the job.
    #[error("corpus: {0}")]
    Corpus(String),
}

/// The optimizer settings of a job: nanoGPT's CPU settings with the learning-rate decay over
/// the job's inner steps and warm-up at most a quarter of them.
pub fn hyper(job: &Job) -> Result<HyperQ, PlanError> {
    let total = u64::from(job.rounds) * u64::from(job.inner_steps);
    let base = Hyper::nanogpt_cpu();
    Hyper {
        warmup_iters: base.warmup_iters.min(total / WARMUP_SHARE_DIV),
        lr_decay_iters: total,
        ..base
    }
    .to_fixed()
    .map_err(|e| PlanError::Model(e.to_string()))
}

/// The training state every worker of the job starts from (round 0).
pub fn initial_state(job: &Job, vocab: usize) -> Result<TrainState, PlanError> {
    let m = &job.model;
    let cfg = Config {
        vocab,
        n_layer: m.n_layer as usize,
        n_head: m.n_head as usize,
        n_embd: m.n_embd as usize,
        block_size: m.block_size as usize,
    };
    TrainState::new(cfg, hyper(job)?, m.batch as usize, m.init_seed)
        .map_err(|e| PlanError::Model(e.to_string()))
}

/// Byte offset of the end of the training split: the first [`TRAIN_PERCENT`] of the corpus's
/// characters, exactly the split of `leam_compute::model::data::Corpus` (the validation split is the
/// rest). The one definition of the split in bytes.
pub fn train_end(corpus: &[u8]) -> Result<u64, PlanError> {
    let text = std::str::from_utf8(corpus)
        .map_err(|e| PlanError::Corpus(format!("not UTF-8 at byte {}", e.valid_up_to())))?;
    let chars = text.chars().count();
    let n_train = chars * TRAIN_PERCENT / 100;
    Ok(text
        .char_indices()
        .nth(n_train)
        .map_or(corpus.len(), |(i, _)| i) as u64)
}

/// The data range of each of `workers` workers: the training split cut into equal runs of
/// characters, in order.
pub fn worker_ranges(corpus: &[u8], workers: u32) -> Result<Vec<(u64, u64)>, PlanError> {
    let end = train_end(corpus)?;
    let text = std::str::from_utf8(&corpus[..end as usize])
        .map_err(|e| PlanError::Corpus(e.to_string()))?;
    let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let n = starts.len();
    let w = workers.max(1) as usize;
    if n < w {
        return Err(PlanError::Corpus(format!(
            "{n} training characters cannot feed {w} workers"
        )));
    }
    let at = |k: usize| {
        if k * n / w >= n {
            end
        } else {
            starts[k * n / w] as u64
        }
    };
    Ok((0..w).map(|k| (at(k), at(k + 1))).collect())
}

/// One shard of a job and who runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Shard index within the job: `round × shards_per_round + worker`.
    pub shard: u32,
    /// DiLoCo round.
    pub round: u32,
    /// Worker (data range) within the round.
    pub worker: u32,
    /// The provider that runs it.
    pub primary: PublicKey,
    /// The second provider that also runs it, for the secretly replicated shards.
    pub replica: Option<PublicKey>,
}

/// The assignment of every shard of `job`. First the shards the seed draws for replication
/// (`leam_market::replicate::replicated`), in order, each on the two providers with the most
/// quota left (ties in clearing order), the one with more quota as primary; then every other
/// shard round-robin over the clearing's assignments while each has quota left, so a round's
/// shards spread over the providers. A drawn shard with only one provider left runs
/// unreplicated; a shard with no quota left is not placed (the clearing sold fewer shards).
pub fn plan(
    job: &Job,
    job_id: &Digest32,
    assignments: &[Assignment],
    seed: &[u8; 32],
) -> Vec<Slot> {
    let total = job.rounds.saturating_mul(job.shards_per_round);
    let per = job.shards_per_round.max(1);
    let mut left: Vec<u64> = assignments.iter().map(|a| u64::from(a.shards)).collect();
    let drawn: std::collections::BTreeSet<u64> =
        leam_market::replicate::replicated(seed, job_id, u64::from(total), replica_count(job))
            .into_iter()
            .collect();
    let mut placed: Vec<Option<(PublicKey, Option<PublicKey>)>> = vec![None; total as usize];
    for &s in &drawn {
        let mut by_quota: Vec<usize> = (0..assignments.len()).filter(|&i| left[i] > 0).collect();
        by_quota.sort_by_key(|&i| (std::cmp::Reverse(left[i]), i));
        if let Some(&p) = by_quota.first() {
            left[p] -= 1;
            let r = by_quota.get(1).map(|&r| {
                left[r] -= 1;
                assignments[r].provider
            });
            if let Some(slot) = placed.get_mut(s as usize) {
                *slot = Some((assignments[p].provider, r));
            }
        }
    }
    let mut next = 0usize;
    let mut slots = Vec::with_capacity(total as usize);
    for shard in 0..total {
        let pair = match placed[shard as usize] {
            Some(pair) => Some(pair),
            None => (0..assignments.len())
                .map(|k| (next + k) % assignments.len())
                .find(|&i| left[i] > 0)
                .map(|i| {
                    left[i] -= 1;
                    next = (i + 1) % assignments.len();
                    (assignments[i].provider, None)
                }),
        };
        let Some((primary, replica)) = pair else {
            break;
        };
        slots.push(Slot {
            shard,
            round: shard / per,
            worker: shard % per,
            primary,
            replica,
        });
    }
    slots
}

/// How long the bidder waits for a shard before it leases it again: [`SHARD_TIMEOUT_FACTOR`]
/// times what the provider's offered throughput promises, at least [`SHARD_TIMEOUT_MS_MIN`];
/// ten times that minimum for a provider whose throughput is unknown (0).
pub fn shard_timeout_ms(shard_units: u64, units_per_hour: u64) -> u64 {
    if units_per_hour == 0 {
        return SHARD_TIMEOUT_MS_MIN * 10;
    }
    let promised = shard_units
        .saturating_mul(3_600_000)
        .div_ceil(units_per_hour.max(1));
    promised
        .saturating_mul(SHARD_TIMEOUT_FACTOR)
        .max(SHARD_TIMEOUT_MS_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job(rounds: u32, per_round: u32, ppm: u32) -> Job {
        Job {
            name: "t".into(),
            model: leam_market::job::ModelSpec {
                n_layer: 1,
                n_head: 1,
                n_embd: 8,
                block_size: 4,
                batch: 2,
                init_seed: 1,
            },
            corpus_sha256: [0; 32],
            corpus_bytes: 10,
            rounds,
            shards_per_round: per_round,
            inner_steps: 2,
            replication_ppm: ppm,
            seed_commitment: [0; 32],
            referees: vec![[9; 32]],
            deadline_ms: 1,
            max_price_cents_per_kilo_unit: 1,
            shard_timeout_ms: None,
        }
    }

    fn assignment(p: u8, shards: u32) -> Assignment {
        Assignment {
            provider: [p; 32],
            offer_id: 1,
            shards,
        }
    }

    #[test]
    fn the_split_matches_the_corpus_split() {
        let text = "héllo wörld, the quick brown fox jumps over the lazy dog";
        let corpus = leam_compute::model::data::Corpus::from_bytes(text.as_bytes(), "t").unwrap();
        let end = train_end(text.as_bytes()).unwrap() as usize;
        let train = &text[..end];
        assert_eq!(train.chars().count(), corpus.train.len());
        let ranges = worker_ranges(text.as_bytes(), 3).unwrap();
        assert_eq!(ranges[0].0, 0);
        assert_eq!(ranges[2].1 as usize, end);
        for w in ranges.windows(2) {
            assert_eq!(w[0].1, w[1].0);
            assert!(text.is_char_boundary(w[0].1 as usize));
        }
    }

    proptest! {
        #[test]
        fn every_shard_is_placed_within_quotas(rounds in 1u32..6, per in 1u32..4, ppm in 0u32..1_000_000, q in proptest::collection::vec(1u32..12, 1..4), seed in any::<[u8; 32]>()) {
            let j = job(rounds, per, ppm);
            let a: Vec<Assignment> = q.iter().enumerate().map(|(i, s)| assignment(i as u8 + 1, *s)).collect();
            let slots = plan(&j, &[5; 32], &a, &seed);
            let quota: u64 = q.iter().map(|x| u64::from(*x)).sum();
            if quota >= leam_market::clearing::shards_bought(&j) {
                prop_assert_eq!(slots.len() as u64, u64::from(rounds * per));
            }
            for (i, s) in slots.iter().enumerate() {
                prop_assert_eq!(s.shard, i as u32);
                prop_assert!(s.replica != Some(s.primary));
            }
            for (k, a) in a.iter().enumerate() {
                let used = slots.iter().filter(|s| s.primary == a.provider).count() as u64
                    + slots.iter().filter(|s| s.replica == Some(a.provider)).count() as u64;
                prop_assert!(used <= u64::from(q[k]));
            }
            // Deterministic: the same inputs give the same plan.
            prop_assert_eq!(plan(&j, &[5; 32], &a, &seed), slots);
        }
    }

    #[test]
    fn replicas_follow_the_seed_and_quota() {
        let j = job(2, 2, 500_000);
        let a = [assignment(1, 3), assignment(2, 3)];
        let slots = plan(&j, &[5; 32], &a, &[7; 32]);
        assert_eq!(slots.len(), 4);
        let replicated = slots.iter().filter(|s| s.replica.is_some()).count();
        assert_eq!(replicated as u64, replica_count(&j));
        // Both providers run primaries: the rounds spread over them.
        assert!(slots.iter().any(|s| s.primary == [1; 32]));
        assert!(slots.iter().any(|s| s.primary == [2; 32]));
    }

    #[test]
    fn timeouts() {
        assert_eq!(shard_timeout_ms(1, u64::MAX), SHARD_TIMEOUT_MS_MIN);
        assert_eq!(shard_timeout_ms(3_600_000, 3_600_000), 4 * 3_600_000);
        assert_eq!(shard_timeout_ms(1, 0), 10 * SHARD_TIMEOUT_MS_MIN);
    }

    /// The job preset of `leam-market` (which cannot depend on compute) mirrors compute's one
    /// definition of the nanoGPT CPU preset.
    #[test]
    fn the_market_preset_mirrors_the_compute_preset() {
        let p = leam_compute::model::preset::NANOGPT_CPU;
        let m = leam_market::job::ModelSpec::NANOGPT_CPU;
        assert_eq!(
            (
                m.n_layer as usize,
                m.n_head as usize,
                m.n_embd as usize,
                m.block_size as usize,
                m.batch as usize,
                m.init_seed
            ),
            (
                p.n_layer,
                p.n_head,
                p.n_embd,
                p.block_size,
                p.batch_size,
                p.seed
            )
        );
    }
}
