//! The work protocol `/leam/shard/1.0.0` (`specs/wire.md` §7): content-addressed blobs (corpora,
//! training states), shard runs, their results and the step hashes that bisection asks for, and
//! referee requests. The shell only carries these messages between members and applies the size
//! limits; what they mean is decided by whoever serves them (`leam-jobs`, wired in by the node).

use serde::{Deserialize, Serialize};

use leam_ledger::entry::{Digest32, PublicKey};

/// Request-response protocol for work.
pub const PROTOCOL_SHARD: &str = "/leam/shard/1.0.0";
/// Largest blob chunk a response carries.
pub const BLOB_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Largest encoded work request (a shard spec and two claimed results fit many times over).
pub const WORK_REQUEST_BYTES_MAX: u64 = 64 * 1024;
/// Largest encoded work response (a blob chunk with CBOR framing).
pub const WORK_RESPONSE_BYTES_MAX: u64 = 2 * 1024 * 1024;
/// Largest shard spec or shard result carried in a message.
pub const WORK_ITEM_BYTES_MAX: usize = 8 * 1024;
/// Largest Merkle proof (hashes) in a step-hash answer: a step tree has at most 2^32 leaves.
pub const STEP_PROOF_HASHES_MAX: usize = 32;
/// Claims a referee request carries at most (the primary's and the replica's).
pub const JUDGE_CLAIMS_MAX: usize = 2;
/// Inbound work requests queued for the node's handler at most; more are refused.
pub const WORK_INBOUND_QUEUE_MAX: usize = 64;
/// Outbound work requests awaiting an answer at most.
pub const WORK_OUTBOUND_MAX: usize = 256;
/// Timeout of one work request (a blob chunk on a slow link).
pub const WORK_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// A request on [`PROTOCOL_SHARD`] (CBOR, as serde maps it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkRequest {
    /// Bytes `offset..` of the blob whose SHA-256 is `hash` (at most [`BLOB_CHUNK_BYTES_MAX`]).
    Blob {
        /// SHA-256 of the whole blob.
        #[serde(with = "serde_bytes")]
        hash: Digest32,
        /// First byte wanted.
        offset: u64,
    },
    /// Run shard `shard` of job `job_id` under the requester's lease with the responder.
    Run {
        /// Job id.
        #[serde(with = "serde_bytes")]
        job_id: Digest32,
        /// Shard index within the job (replicas carry the index of the shard they repeat).
        shard: u32,
        /// The shard spec's canonical encoding (`specs/shard.md`).
        #[serde(with = "serde_bytes")]
        spec: Vec<u8>,
        /// SHA-256 of the params blob of the spec's start state (`specs/shard.md` §6), when
        /// the start state is a fresh one: the provider may fetch those 4 bytes per parameter
        /// and build the state instead of fetching the whole state (12 bytes per parameter).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_params: Option<serde_bytes::ByteArray<32>>,
    },
    /// The state of the run of the spec with this id.
    Poll {
        /// Shard spec id.
        #[serde(with = "serde_bytes")]
        spec_id: Digest32,
    },
    /// The state hash after inner step `step` of the responder's run of `spec_id`, with its
    /// inclusion proof against the result's step root (bisection).
    StepHash {
        /// Shard spec id.
        #[serde(with = "serde_bytes")]
        spec_id: Digest32,
        /// Inner step.
        step: u64,
    },
    /// Ask a referee of the job to judge the results claimed for one shard.
    Judge {
        /// Job id.
        #[serde(with = "serde_bytes")]
        job_id: Digest32,
        /// Shard index.
        shard: u32,
        /// The shard spec's canonical encoding.
        #[serde(with = "serde_bytes")]
        spec: Vec<u8>,
        /// Each claim: the provider and its result's canonical encoding.
        claims: Vec<Claim>,
    },
}

/// One provider's claimed result, as the bidder received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Provider key.
    #[serde(with = "serde_bytes")]
    pub provider: PublicKey,
    /// The result's canonical encoding (`specs/shard.md`).
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
}

/// A response on [`PROTOCOL_SHARD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkResponse {
    /// A chunk of a blob.
    Blob {
        /// Size of the whole blob.
        total: u64,
        /// The bytes from the requested offset.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The request was taken; its outcome is asked for later (`Poll`, or the referee's log).
    Accepted,
    /// The run is going on: `steps_done` of its inner steps are done.
    Running {
        /// Inner steps done.
        steps_done: u32,
    },
    /// The run is done.
    Done {
        /// The result's canonical encoding.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
        /// Device time the run took on the provider's backend, milliseconds.
        device_ms: u64,
    },
    /// The responder holds no run of that spec (never asked, or abandoned after a restart).
    Unknown,
    /// A step hash with its inclusion proof.
    StepHash {
        /// Inner step.
        step: u64,
        /// State hash after the step.
        #[serde(with = "serde_bytes")]
        state_hash: Digest32,
        /// Inclusion proof hashes, leaf to root.
        proof: Vec<serde_bytes::ByteArray<32>>,
    },
    /// The request was refused; the reason says why.
    Refused {
        /// Why (at most [`crate::wire::REASON_BYTES_MAX`] bytes).
        reason: String,
    },
}

impl WorkRequest {
    /// Check a decoded request against the limits; `Err` carries the refusal reason.
    pub fn check(&self) -> Result<(), String> {
        let item = |what: &str, b: &[u8]| {
            if b.len() > WORK_ITEM_BYTES_MAX {
                Err(format!(
                    "{what} of {} bytes, more than {WORK_ITEM_BYTES_MAX}",
                    b.len()
                ))
            } else {
                Ok(())
            }
        };
        match self {
            WorkRequest::Blob { .. } | WorkRequest::Poll { .. } | WorkRequest::StepHash { .. } => {
                Ok(())
            }
            WorkRequest::Run { spec, .. } => item("spec", spec),
            WorkRequest::Judge { spec, claims, .. } => {
                item("spec", spec)?;
                if claims.is_empty() || claims.len() > JUDGE_CLAIMS_MAX {
                    return Err(format!(
                        "{} claims, expected 1..={JUDGE_CLAIMS_MAX}",
                        claims.len()
                    ));
                }
                claims.iter().try_for_each(|c| item("result", &c.result))
            }
        }
    }
}

impl WorkResponse {
    /// Check a decoded response against the limits; `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        match self {
            WorkResponse::Blob { bytes, total } => {
                if bytes.len() > BLOB_CHUNK_BYTES_MAX || bytes.len() as u64 > *total {
                    Err(format!(
                        "blob chunk of {} bytes of {total}, expected at most {BLOB_CHUNK_BYTES_MAX}",
                        bytes.len()
                    ))
                } else {
                    Ok(())
                }
            }
            WorkResponse::Done { result, .. } if result.len() > WORK_ITEM_BYTES_MAX => {
                Err(format!(
                    "result of {} bytes, more than {WORK_ITEM_BYTES_MAX}",
                    result.len()
                ))
            }
            WorkResponse::StepHash { proof, .. } if proof.len() > STEP_PROOF_HASHES_MAX => {
                Err(format!(
                    "step proof of {} hashes, more than {STEP_PROOF_HASHES_MAX}",
                    proof.len()
                ))
            }
            _ => Ok(()),
        }
    }
}

/// A refusal, with the reason cut to [`crate::wire::REASON_BYTES_MAX`].
pub fn refused(reason: impl Into<String>) -> WorkResponse {
    match crate::wire::refused(reason) {
        crate::wire::Response::Refused { reason } => WorkResponse::Refused { reason },
        _ => unreachable!("wire::refused returns Refused"),
    }
}

/// An inbound work request for the node's handler: answer it on `reply` (dropping `reply`
/// answers with a refusal).
#[derive(Debug)]
pub struct Inbound {
    /// The requesting member.
    pub from: PublicKey,
    /// The request (already checked against the limits).
    pub request: WorkRequest,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<WorkResponse>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        // The codec libp2p's request-response uses on the wire.
        cbor4ii::serde::to_vec(Vec::new(), v).unwrap()
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(r) = cbor4ii::serde::from_slice::<WorkRequest>(&data) {
                let _ = r.check();
            }
            if let Ok(r) = cbor4ii::serde::from_slice::<WorkResponse>(&data) {
                let _ = r.check();
            }
        }

        #[test]
        fn requests_round_trip_and_limits(spec in proptest::collection::vec(any::<u8>(), 0..9000), claims in 0usize..4) {
            let r = WorkRequest::Judge {
                job_id: [1; 32],
                shard: 3,
                spec: spec.clone(),
                claims: (0..claims).map(|i| Claim { provider: [i as u8; 32], result: vec![2; 10] }).collect(),
            };
            let back: WorkRequest = cbor4ii::serde::from_slice(&cbor(&r)).unwrap();
            prop_assert_eq!(&back, &r);
            let ok = spec.len() <= WORK_ITEM_BYTES_MAX && (1..=JUDGE_CLAIMS_MAX).contains(&claims);
            prop_assert_eq!(r.check().is_ok(), ok);
        }

        #[test]
        fn run_requests_round_trip_with_and_without_start_params(
            spec in proptest::collection::vec(any::<u8>(), 0..300),
            params in proptest::option::of(any::<[u8; 32]>()),
        ) {
            let r = WorkRequest::Run {
                job_id: [4; 32],
                shard: 1,
                spec,
                start_params: params.map(serde_bytes::ByteArray::new),
            };
            let bytes = cbor(&r);
            let back: WorkRequest = cbor4ii::serde::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &r);
            // Without the field the encoding is the one of a request that never had it.
            prop_assert_eq!(params.is_none(), !bytes.windows(12).any(|w| w == b"start_params"));
        }
    }

    #[test]
    fn a_full_chunk_fits_the_response_limit() {
        let r = WorkResponse::Blob {
            total: u64::MAX,
            bytes: vec![0xff; BLOB_CHUNK_BYTES_MAX],
        };
        assert!(r.check().is_ok());
        assert!((cbor(&r).len() as u64) < WORK_RESPONSE_BYTES_MAX);
        let big = WorkResponse::Blob {
            total: u64::MAX,
            bytes: vec![0; BLOB_CHUNK_BYTES_MAX + 1],
        };
        assert!(big.check().is_err());
    }
}
