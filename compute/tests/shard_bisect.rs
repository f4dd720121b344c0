//! Bisection and replay on a toy deterministic step function: a divergence injected at every
//! possible step is found with at most ⌈log2 steps⌉ + 1 fetches per side, and the referee's
//! single-step replay convicts the faulty side.

use leam_compute::verify::bisect::{bisect, ceil_log2, referee, BisectError, RefereeVerdict};
use leam_compute::verify::commit::{Hash32, StepHashProof, StepLog};
use leam_compute::verify::replay::{
    check_step_claim, replay_shard, replay_step, run_shard, ReplayError, RunnerError, ShardVerdict,
    StepRunner,
};
use leam_compute::verify::shard::{nanogpt_cpu_spec, ShardSpec};
use sha2::{Digest, Sha256};

/// A toy training state: a few integers mixed by each step.
#[derive(Clone, Debug, PartialEq)]
struct Toy {
    values: [u64; 4],
}

impl Toy {
    fn encode(&self) -> Vec<u8> {
        self.values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }
}

/// Deterministic toy runner; `fault_at` flips one bit after that global step (a faulty device).
struct ToyRunner {
    fault_at: Option<u64>,
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl StepRunner for ToyRunner {
    type State = Toy;

    fn decode_state(&self, _spec: &ShardSpec, bytes: &[u8]) -> Result<Toy, RunnerError> {
        if bytes.len() != 32 {
            return Err(format!("toy state is 32 bytes, got {}", bytes.len()).into());
        }
        let mut values = [0u64; 4];
        for (v, c) in values.iter_mut().zip(bytes.chunks_exact(8)) {
            *v = u64::from_be_bytes(c.try_into()?);
        }
        Ok(Toy { values })
    }

    fn state_hash(&self, s: &Toy) -> Hash32 {
        Sha256::digest(s.encode()).into()
    }

    fn step(&self, spec: &ShardSpec, s: &mut Toy, global_step: u64) -> Result<(), RunnerError> {
        for (i, v) in s.values.iter_mut().enumerate() {
            *v = mix(*v ^ spec.seed ^ (global_step << 8) ^ i as u64);
        }
        if self.fault_at == Some(global_step) {
            s.values[0] ^= 1;
        }
        Ok(())
    }

    fn delta_commitment(&self, a: &Toy, b: &Toy) -> Result<Hash32, RunnerError> {
        let d: Vec<u8> = a
            .values
            .iter()
            .zip(&b.values)
            .flat_map(|(x, y)| y.wrapping_sub(*x).to_be_bytes())
            .collect();
        Ok(Sha256::digest(d).into())
    }

    fn fingerprint(&self) -> String {
        "toy/test".into()
    }
}

fn start() -> Toy {
    Toy {
        values: [1, 2, 3, 4],
    }
}

fn spec(steps: u32, first_step: u64) -> ShardSpec {
    let honest = ToyRunner { fault_at: None };
    nanogpt_cpu_spec(
        honest.state_hash(&start()),
        [7; 32],
        1_115_394,
        42,
        first_step,
        steps,
    )
}

/// A source that counts its answers (the bisection counts too; this checks the count is honest).
struct Counting<'a> {
    log: &'a StepLog,
    served: u32,
}

impl leam_compute::verify::bisect::StepHashSource for Counting<'_> {
    fn step_hash(
        &mut self,
        step: u64,
    ) -> Result<StepHashProof, Box<dyn std::error::Error + Send + Sync>> {
        self.served += 1;
        Ok(self.log.prove(step)?)
    }
}

#[test]
fn two_runs_of_a_shard_agree_and_replay_matches() {
    let s = spec(37, 1000);
    let r = ToyRunner { fault_at: None };
    let a = run_shard(&r, &s, &start()).unwrap();
    let b = run_shard(&r, &s, &start()).unwrap();
    assert_eq!(a.result, b.result);
    a.result.check_against(&s).unwrap();
    let (v, _) = replay_shard(&r, &s, &start(), &a.result).unwrap();
    assert_eq!(v, ShardVerdict::Match);
}

#[test]
fn wrong_start_state_is_refused() {
    let s = spec(3, 0);
    let r = ToyRunner { fault_at: None };
    let mut wrong = start();
    wrong.values[3] += 1;
    assert!(matches!(
        run_shard(&r, &s, &wrong),
        Err(ReplayError::StateMismatch { .. })
    ));
}

#[test]
fn replaying_any_step_reproduces_its_committed_hash() {
    let s = spec(21, 500);
    let r = ToyRunner { fault_at: None };
    let run = run_shard(&r, &s, &start()).unwrap();
    // Keep every intermediate state to serve the "before" bytes.
    let mut states = vec![start()];
    let mut st = start();
    for i in 0..s.steps {
        r.step(&s, &mut st, s.global_step(i)).unwrap();
        states.push(st.clone());
    }
    for k in 0..u64::from(s.steps) {
        let proof = if k == 0 {
            None
        } else {
            Some(run.log.prove(k - 1).unwrap())
        };
        let rep = replay_step(
            &r,
            &s,
            &run.result,
            k,
            &states[k as usize].encode(),
            proof.as_ref(),
        )
        .unwrap();
        assert!(check_step_claim(&run.result, &rep, &run.log.prove(k).unwrap()).unwrap());
        // Wrong "before" state: refused with a precise error.
        let bad = replay_step(
            &r,
            &s,
            &run.result,
            k,
            &states[k as usize + 1].encode(),
            proof.as_ref(),
        );
        assert!(
            matches!(bad, Err(ReplayError::StateMismatch { .. })),
            "{bad:?}"
        );
    }
    // A proof for the wrong step is refused.
    let bad = replay_step(
        &r,
        &s,
        &run.result,
        5,
        &states[5].encode(),
        Some(&run.log.prove(3).unwrap()),
    );
    assert!(matches!(bad, Err(ReplayError::WrongStep { .. })));
    assert!(matches!(
        replay_step(&r, &s, &run.result, 21, &states[21].encode(), None),
        Err(ReplayError::StepOutOfRange { .. })
    ));
    let e = replay_step(&r, &s, &run.result, 4, &states[4].encode(), None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "replaying step 4 needs the inclusion proof of step 3"
    );
}

#[test]
fn divergence_at_every_step_is_found_within_the_fetch_bound() {
    for steps in [1u32, 2, 3, 5, 8, 13, 16, 17, 31, 64] {
        let first = 100u64;
        let s = spec(steps, first);
        let honest = ToyRunner { fault_at: None };
        let good = run_shard(&honest, &s, &start()).unwrap();
        let bound = ceil_log2(steps.into()) + 1;
        for k in 0..u64::from(steps) {
            let faulty = ToyRunner {
                fault_at: Some(first + k),
            };
            let bad = run_shard(&faulty, &s, &start()).unwrap();
            assert_ne!(good.result.step_root, bad.result.step_root);
            // Bisect with the honest side as A and as B.
            for honest_is_a in [true, false] {
                let (ra, la, rb, lb) = if honest_is_a {
                    (&good.result, &good.log, &bad.result, &bad.log)
                } else {
                    (&bad.result, &bad.log, &good.result, &good.log)
                };
                let mut sa = Counting { log: la, served: 0 };
                let mut sb = Counting { log: lb, served: 0 };
                let d = bisect(&s, ra, &mut sa, rb, &mut sb).unwrap();
                assert_eq!(d.step, k, "steps {steps}, fault at {k}");
                assert_eq!((d.fetches_a, d.fetches_b), (sa.served, sb.served));
                assert!(d.fetches_a <= bound && d.fetches_b <= bound, "{d:?}");
                // The referee replays step k from the agreed state and convicts the faulty side.
                let before = if k == 0 {
                    start()
                } else {
                    let mut st = start();
                    for i in 0..k {
                        honest.step(&s, &mut st, first + i).unwrap();
                    }
                    st
                };
                let v = referee(&honest, &s, &d, &before.encode()).unwrap();
                let want = if honest_is_a {
                    RefereeVerdict::AIsRight
                } else {
                    RefereeVerdict::BIsRight
                };
                assert_eq!(v, want);
            }
        }
    }
}

#[test]
fn equal_results_and_lying_sources_are_reported() {
    let s = spec(8, 0);
    let honest = ToyRunner { fault_at: None };
    let good = run_shard(&honest, &s, &start()).unwrap();
    let mut la = good.log.clone();
    let mut lb = good.log.clone();
    assert!(matches!(
        bisect(&s, &good.result, &mut la, &good.result, &mut lb),
        Err(BisectError::NoDivergence)
    ));
    let bad = run_shard(&ToyRunner { fault_at: Some(3) }, &s, &start()).unwrap();
    // Side B serves hashes from a log that is not the one it committed to.
    let mut wrong_log = good.log.clone();
    let r = bisect(&s, &good.result, &mut la, &bad.result, &mut wrong_log);
    assert!(
        matches!(
            r,
            Err(BisectError::Inconsistent {
                side: leam_compute::verify::bisect::Side::B,
                ..
            })
        ),
        "{r:?}"
    );
}
