//! Re-checking wrong-result evidence (`specs/market.md` §8.4): the check an auditor runs
//! before an evidence entry counts against a provider. The ledger cannot do it (it would have
//! to replay a shard); this module plugs into its fold as a
//! [`leam_ledger::account::EvidenceCheck`].
//!
//! Evidence holds when
//! 1. it decodes as `leam/wrong-shard-result/v1`, with a shard spec and a claimed result;
//! 2. the accused co-signed a receipt for exactly that run: same job and shard, input
//!    commitment = the spec's id, output commitment = the claimed result's id (so the referee
//!    cannot put words in the accused's mouth);
//! 3. and the claimed result is wrong: it does not answer its spec, or (method `bisection`) its
//!    own inclusion proof fixes a state hash at the divergent step that a replay of the spec
//!    from its start state does not give, or (method `replay`) a full replay of the spec gives
//!    other commitments.
//!
//! Inputs (the corpus and the start state) are content-addressed blobs the caller supplies;
//! evidence whose inputs are unavailable is reported as unchecked and counts for nothing.
//! The checker remembers every decided outcome (by the hash of author, accused and bytes), so
//! a node's report replays each shard at most once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use leam_compute::numerics::kernels::Kernels;
use leam_compute::verify::commit::StepHashProof;
use leam_compute::verify::replay::{run_shard, ModelRunner, StepRunner};
use leam_compute::verify::shard::{ShardResult, ShardSpec};
use leam_ledger::account::{EvidenceCheck, LogView};
use leam_ledger::entry::{Body, Digest32, Evidence, EvidenceKind, PublicKey};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The `type` of wrong-result evidence.
pub const WRONG_RESULT_TYPE: &str = "leam/wrong-shard-result/v1";

/// Supplies a blob's bytes by SHA-256, or `None` when this auditor cannot get it. The checker
/// re-hashes whatever it is given.
pub type Inputs = dyn Fn(&Digest32) -> Option<Vec<u8>> + Send + Sync;

/// The evidence document as stored (field names as `specs/market.md` §8.4).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(rename = "type")]
    kind: String,
    job: String,
    shard: u32,
    shard_spec: String,
    claimed_result: String,
    method: String,
    divergent_step: Option<u64>,
    agreed_before: Option<String>,
    claimed_after: Option<String>,
    claimed_proof: Vec<String>,
    #[allow(dead_code)] // The referee's figure: the auditor recomputes it.
    recomputed: String,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The evidence proves the accused's result wrong; the reason says how.
    Holds(String),
    /// It does not: the document is malformed, not tied to the accused's receipt, or the
    /// replay confirms the claimed result.
    Fails(String),
    /// It could not be checked here (inputs unavailable, replay failed on this machine).
    Unchecked(String),
}

/// Checks evidence; see the module documentation.
pub struct Checker {
    kernels: Arc<dyn Kernels>,
    inputs: Arc<Inputs>,
    decided: Mutex<HashMap<Digest32, Outcome>>,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker").finish_non_exhaustive()
    }
}

impl Checker {
    /// A checker replaying on `kernels` (any backend: the kernels are bit-exact) with inputs
    /// from `inputs`.
    pub fn new(kernels: Arc<dyn Kernels>, inputs: Arc<Inputs>) -> Self {
        Self {
            kernels,
            inputs,
            decided: Mutex::new(HashMap::new()),
        }
    }

    /// Check one evidence entry written by `author` against the folded `logs`.
    pub fn outcome(&self, logs: &[LogView<'_>], author: &PublicKey, ev: &Evidence) -> Outcome {
        if ev.kind != EvidenceKind::WrongShardResult {
            return Outcome::Unchecked(format!(
                "{} evidence has no re-checkable encoding yet",
                ev.kind.name()
            ));
        }
        let mut h = Sha256::new();
        h.update(author);
        h.update(ev.accused);
        h.update(&ev.bytes);
        let key: Digest32 = h.finalize().into();
        if let Some(o) = self.decided.lock().expect("checker lock").get(&key) {
            return o.clone();
        }
        let o = check_wrong_result(
            self.kernels.as_ref(),
            self.inputs.as_ref(),
            logs,
            &ev.accused,
            &ev.bytes,
        );
        if !matches!(o, Outcome::Unchecked(_)) {
            self.decided
                .lock()
                .expect("checker lock")
                .insert(key, o.clone());
        }
        o
    }
}

impl EvidenceCheck for Checker {
    fn check(&self, logs: &[LogView<'_>], author: &PublicKey, ev: &Evidence) -> Result<(), String> {
        match self.outcome(logs, author, ev) {
            Outcome::Holds(_) => Ok(()),
            Outcome::Fails(r) => Err(format!("does not hold: {r}")),
            Outcome::Unchecked(r) => Err(format!("not checked: {r}")),
        }
    }
}

fn hex32(field: &str, s: &str) -> Result<Digest32, String> {
    let v = hex::decode(s).map_err(|e| format!("`{field}` is not hex: {e}"))?;
    v.try_into()
        .map_err(|v: Vec<u8>| format!("`{field}` has {} bytes, expected 32", v.len()))
}

fn hexbytes(field: &str, s: &str) -> Result<Vec<u8>, String> {
    hex::decode(s).map_err(|e| format!("`{field}` is not hex: {e}"))
}

/// Check wrong-result evidence `bytes` against `accused` (see the module documentation).
pub fn check_wrong_result(
    kernels: &dyn Kernels,
    inputs: &Inputs,
    logs: &[LogView<'_>],
    accused: &PublicKey,
    bytes: &[u8],
) -> Outcome {
    let parsed = (|| -> Result<(Doc, Digest32, ShardSpec, ShardResult), String> {
        let doc: Doc = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a {WRONG_RESULT_TYPE} document: {e}"))?;
        if doc.kind != WRONG_RESULT_TYPE {
            return Err(format!(
                "`type` is {:?}, expected {WRONG_RESULT_TYPE:?}",
                doc.kind
            ));
        }
        let job = hex32("job", &doc.job)?;
        let spec = ShardSpec::decode(&hexbytes("shard_spec", &doc.shard_spec)?)
            .map_err(|e| format!("`shard_spec`: {e}"))?;
        let result = ShardResult::decode(&hexbytes("claimed_result", &doc.claimed_result)?)
            .map_err(|e| format!("`claimed_result`: {e}"))?;
        Ok((doc, job, spec, result))
    })();
    let (doc, job, spec, result) = match parsed {
        Ok(x) => x,
        Err(e) => return Outcome::Fails(e),
    };
    let (spec_id, result_id) = (spec.id(), result.id());
    let receipted = logs.iter().flat_map(|l| l.entries.iter()).any(|e| {
        matches!(&e.body, Body::Receipt(c)
            if c.terms.provider == *accused
                && c.terms.job_id == job
                && c.terms.shard == doc.shard
                && c.terms.input_commitment == spec_id
                && c.terms.output_commitment == result_id)
    });
    if !receipted {
        return Outcome::Fails(format!(
            "no receipt co-signed by the accused {} for job {} shard {} with input commitment {} (the spec's id) and output commitment {} (the claimed result's id)",
            hex::encode(accused),
            doc.job,
            doc.shard,
            hex::encode(spec_id),
            hex::encode(result_id)
        ));
    }
    if let Err(e) = result.check_against(&spec) {
        return Outcome::Holds(format!("the claimed result does not answer its spec: {e}"));
    }
    let input = |what: &str, hash: &Digest32| -> Result<Vec<u8>, Outcome> {
        let b = inputs(hash).ok_or_else(|| {
            Outcome::Unchecked(format!(
                "the shard's {what} {} is not available to this auditor",
                hex::encode(hash)
            ))
        })?;
        let got: Digest32 = Sha256::digest(&b).into();
        if &got != hash {
            return Err(Outcome::Unchecked(format!(
                "the bytes supplied as the {what} {} hash to {}",
                hex::encode(hash),
                hex::encode(got)
            )));
        }
        Ok(b)
    };
    let corpus = match input("corpus", &spec.corpus_sha256) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let start_bytes = match input("start state", &spec.start_state) {
        Ok(b) => b,
        Err(o) => return o,
    };
    let runner = match ModelRunner::new(kernels, &corpus) {
        Ok(r) => r,
        Err(e) => return Outcome::Unchecked(format!("the corpus does not load: {e}")),
    };
    let start = match runner.decode_state(&spec, &start_bytes) {
        Ok(s) => s,
        Err(e) => return Outcome::Unchecked(format!("the start state does not decode: {e}")),
    };
    match doc.method.as_str() {
        "bisection" => {
            let (Some(step), Some(after)) = (doc.divergent_step, doc.claimed_after.as_deref())
            else {
                return Outcome::Fails(
                    "method `bisection` needs `divergent_step` and `claimed_after`".into(),
                );
            };
            if step >= u64::from(result.steps) {
                return Outcome::Fails(format!(
                    "`divergent_step` {step} is not below the result's {} steps",
                    result.steps
                ));
            }
            let after = match hex32("claimed_after", after) {
                Ok(h) => h,
                Err(e) => return Outcome::Fails(e),
            };
            let proof: Result<Vec<Digest32>, String> = doc
                .claimed_proof
                .iter()
                .enumerate()
                .map(|(i, h)| hex32(&format!("claimed_proof[{i}]"), h))
                .collect();
            let proof = match proof {
                Ok(p) => p,
                Err(e) => return Outcome::Fails(e),
            };
            let sp = StepHashProof {
                step,
                state_hash: after,
                proof,
            };
            if let Err(e) = sp.verify(u64::from(result.steps), &result.step_root) {
                return Outcome::Fails(format!(
                    "`claimed_proof` does not prove `claimed_after` at step {step} against the claimed step root: {e}"
                ));
            }
            let mut state = start;
            for inner in 0..step {
                if let Err(e) = runner.step(&spec, &mut state, spec.global_step(inner as u32)) {
                    return Outcome::Unchecked(format!("replaying step {inner} failed: {e}"));
                }
            }
            let before = runner.state_hash(&state);
            if let Some(agreed) = doc.agreed_before.as_deref() {
                match hex32("agreed_before", agreed) {
                    Ok(a) if a == before => {}
                    Ok(a) => {
                        return Outcome::Fails(format!(
                            "`agreed_before` is {}, the replay gives {} before step {step}",
                            hex::encode(a),
                            hex::encode(before)
                        ))
                    }
                    Err(e) => return Outcome::Fails(e),
                }
            }
            if let Err(e) = runner.step(&spec, &mut state, spec.global_step(step as u32)) {
                return Outcome::Unchecked(format!("replaying step {step} failed: {e}"));
            }
            let replayed = runner.state_hash(&state);
            if replayed == after {
                Outcome::Fails(format!(
                    "the replay of step {step} gives the claimed state hash {}",
                    hex::encode(after)
                ))
            } else {
                Outcome::Holds(format!(
                    "step {step}: the accused committed to state {}, the replay gives {}",
                    hex::encode(after),
                    hex::encode(replayed)
                ))
            }
        }
        "replay" => match run_shard(&runner, &spec, &start) {
            Ok(run) if run.result.same_commitments(&result) => {
                Outcome::Fails("the full replay gives the claimed commitments".into())
            }
            Ok(run) => Outcome::Holds(format!(
                "the full replay gives step root {} and delta commitment {}, the accused claimed {} and {}",
                hex::encode(run.result.step_root),
                hex::encode(run.result.delta_commitment),
                hex::encode(result.step_root),
                hex::encode(result.delta_commitment)
            )),
            Err(e) => Outcome::Unchecked(format!("the full replay failed: {e}")),
        },
        other => Outcome::Fails(format!(
            "`method` is {other:?}, expected \"bisection\" or \"replay\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leam_compute::numerics::cpu::CpuKernels;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes give an outcome, never a panic; with no receipt on record nothing holds.
        #[test]
        fn arbitrary_evidence_never_holds_without_a_receipt(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let none = |_: &Digest32| -> Option<Vec<u8>> { None };
            let o = check_wrong_result(&CpuKernels, &none, &[], &[5; 32], &bytes);
            prop_assert!(matches!(o, Outcome::Fails(_)), "{:?}", o);
        }

        /// Well-formed JSON with arbitrary field values fails with the field named.
        #[test]
        fn documents_with_bad_fields_fail_naming_them(job in "[0-9a-z]{0,70}", spec in "[0-9a-f]{0,40}") {
            let doc = serde_json::json!({
                "type": WRONG_RESULT_TYPE, "job": job, "shard": 0, "shard_spec": spec,
                "claimed_result": "", "method": "replay", "divergent_step": null,
                "agreed_before": null, "claimed_after": null, "claimed_proof": [],
                "recomputed": "",
            });
            let none = |_: &Digest32| -> Option<Vec<u8>> { None };
            let o = check_wrong_result(&CpuKernels, &none, &[], &[5; 32], &serde_json::to_vec(&doc).unwrap());
            let Outcome::Fails(r) = o else { panic!("{o:?}") };
            prop_assert!(r.contains("`job`") || r.contains("`shard_spec`") || r.contains("`claimed_result`"), "{}", r);
        }
    }
}
