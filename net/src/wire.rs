//! Wire formats of the federation (`specs/wire.md`): gossip messages, request-response messages,
//! protocol names and every size and time limit, as named constants.

use serde::{Deserialize, Serialize};

use leam_ledger::entry::{PublicKey, ENTRY_BYTES_MAX};

/// Request-response protocol for logs: entries, checkpoints, cosignatures.
pub const PROTOCOL_LOG: &str = "/leam/log/1.0.0";
/// Identify protocol version string (`/leam/<federation id hex>` is appended by the node).
pub const PROTOCOL_VERSION: &str = "/leam/1.0.0";
/// Kademlia protocol name (private to the federation, so leam nodes never join a public DHT).
pub const PROTOCOL_KAD: &str = "/leam/kad/1.0.0";
/// Prefix of the gossip topic; the topic is `leam/<federation id hex>/log/1`.
pub const TOPIC_PREFIX: &str = "leam/";

/// Largest gossip message (a tag byte and a checkpoint note or an evidence entry).
pub const GOSSIP_BYTES_MAX: usize = ENTRY_BYTES_MAX + 1;
/// Largest encoded request.
pub const REQUEST_BYTES_MAX: u64 = 16 * 1024;
/// Largest encoded response.
pub const RESPONSE_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Most entries one `Entries` request may ask for.
pub const ENTRIES_PER_REQUEST_MAX: u64 = 4096;
/// A responder stops adding entries once this many entry bytes are in the response (so a
/// response stays under [`RESPONSE_BYTES_MAX`] with CBOR framing).
pub const RESPONSE_ENTRY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest cosignature line a witness may send.
pub const COSIGNATURE_LINE_BYTES_MAX: usize = 512;
/// Largest terms a countersign proposal may carry.
pub const TERMS_BYTES_MAX: usize = 4 * 1024;
/// Largest refusal reason.
pub const REASON_BYTES_MAX: usize = 512;
/// Timeout of one request.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Concurrent inbound and outbound request streams per connection.
pub const CONCURRENT_STREAMS_MAX: usize = 32;

/// Gossip tag: a signed checkpoint note of a member's log follows.
pub const GOSSIP_CHECKPOINT: u8 = 1;
/// Gossip tag: an encoded ledger entry of kind Evidence follows (signed by its reporter).
pub const GOSSIP_EVIDENCE: u8 = 2;

/// A decoded gossip message. Encoding: one tag byte, then the payload bytes as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gossip {
    /// A checkpoint note (C2SP signed note, as the log owner signed it).
    Checkpoint(Vec<u8>),
    /// A signed ledger entry carrying misbehaviour evidence.
    Evidence(Vec<u8>),
}

/// Why a gossip message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// Empty message.
    #[error("empty gossip message")]
    Empty,
    /// Over the limit.
    #[error("gossip message of {found} bytes, more than GOSSIP_BYTES_MAX = {GOSSIP_BYTES_MAX}")]
    TooLong {
        /// Size found.
        found: usize,
    },
    /// Unknown tag.
    #[error("gossip tag {found}, expected {GOSSIP_CHECKPOINT} (checkpoint) or {GOSSIP_EVIDENCE} (evidence)")]
    UnknownTag {
        /// Tag found.
        found: u8,
    },
}

impl Gossip {
    /// Encode: tag ‖ payload.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, payload) = match self {
            Gossip::Checkpoint(p) => (GOSSIP_CHECKPOINT, p),
            Gossip::Evidence(p) => (GOSSIP_EVIDENCE, p),
        };
        let mut out = Vec::with_capacity(1 + payload.len());
        out.push(tag);
        out.extend_from_slice(payload);
        out
    }

    /// Decode, checking the size limit and the tag (the payload is checked by its receiver).
    pub fn decode(bytes: &[u8]) -> Result<Gossip, GossipError> {
        if bytes.len() > GOSSIP_BYTES_MAX {
            return Err(GossipError::TooLong { found: bytes.len() });
        }
        let (&tag, payload) = bytes.split_first().ok_or(GossipError::Empty)?;
        match tag {
            GOSSIP_CHECKPOINT => Ok(Gossip::Checkpoint(payload.to_vec())),
            GOSSIP_EVIDENCE => Ok(Gossip::Evidence(payload.to_vec())),
            found => Err(GossipError::UnknownTag { found }),
        }
    }
}

/// A request on [`PROTOCOL_LOG`] (CBOR, RFC 8949, as serde maps it: an enum is a map with one
/// key, the variant name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The latest checkpoint the responder holds of `log` (its own or a replica).
    Checkpoint {
        /// Log owner key.
        #[serde(with = "serde_bytes")]
        log: PublicKey,
    },
    /// Entries `from..to` of `log`, as stored (at most [`ENTRIES_PER_REQUEST_MAX`]).
    Entries {
        /// Log owner key.
        #[serde(with = "serde_bytes")]
        log: PublicKey,
        /// First index.
        from: u64,
        /// One past the last index.
        to: u64,
    },
    /// A witness's C2SP cosignature line for the responder's current checkpoint.
    Cosignature {
        /// `— <name> <base64>\n`.
        line: String,
    },
    /// A proposal to countersign a fact both parties record (a lease, receipt or settlement).
    Countersign {
        /// The entry kind of the fact (`specs/ledger.md` §2.1: 5 lease, 6 receipt, 8
        /// settlement).
        kind: u8,
        /// The terms' canonical encoding (`specs/ledger.md`), at most [`TERMS_BYTES_MAX`].
        #[serde(with = "serde_bytes")]
        terms: Vec<u8>,
        /// The proposer's signature over the terms' cosigning message, so that the responder
        /// can record its copy co-signed by the proposer.
        #[serde(with = "serde_bytes")]
        cosignature: Vec<u8>,
    },
}

/// A response on [`PROTOCOL_LOG`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A checkpoint note (empty when the responder holds nothing of that log).
    Checkpoint {
        /// The note.
        #[serde(with = "serde_bytes")]
        note: Vec<u8>,
    },
    /// Encoded entries, starting at the requested `from`; fewer than asked when the responder
    /// holds fewer or the response would grow past [`RESPONSE_ENTRY_BYTES_MAX`].
    Entries {
        /// Entries in order.
        entries: Vec<serde_bytes::ByteBuf>,
    },
    /// The cosignature was verified and stored.
    Cosigned,
    /// The responder agreed to the proposed fact and recorded it; its signature over the
    /// terms' cosigning message follows.
    Countersigned {
        /// 64 bytes.
        #[serde(with = "serde_bytes")]
        cosignature: Vec<u8>,
    },
    /// The request was refused; the reason says why.
    Refused {
        /// Why (at most [`REASON_BYTES_MAX`] bytes).
        reason: String,
    },
}

impl Request {
    /// Check a decoded request against the limits; `Err` carries the refusal reason.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Request::Checkpoint { .. } => Ok(()),
            Request::Entries { from, to, .. } => {
                if to <= from || to - from > ENTRIES_PER_REQUEST_MAX {
                    Err(format!(
                        "entries {from}..{to}: expected a non-empty range of at most {ENTRIES_PER_REQUEST_MAX}"
                    ))
                } else {
                    Ok(())
                }
            }
            Request::Countersign {
                terms, cosignature, ..
            } => {
                if terms.len() > TERMS_BYTES_MAX {
                    Err(format!(
                        "terms of {} bytes, more than {TERMS_BYTES_MAX}",
                        terms.len()
                    ))
                } else if cosignature.len() != leam_ledger::entry::SIGNATURE_BYTES {
                    Err(format!(
                        "cosignature of {} bytes, expected {}",
                        cosignature.len(),
                        leam_ledger::entry::SIGNATURE_BYTES
                    ))
                } else {
                    Ok(())
                }
            }
            Request::Cosignature { line } => {
                if line.len() > COSIGNATURE_LINE_BYTES_MAX {
                    Err(format!(
                        "cosignature line of {} bytes, more than {COSIGNATURE_LINE_BYTES_MAX}",
                        line.len()
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// A refusal, with the reason cut to [`REASON_BYTES_MAX`].
pub fn refused(reason: impl Into<String>) -> Response {
    let mut reason = reason.into();
    if reason.len() > REASON_BYTES_MAX {
        let mut cut = REASON_BYTES_MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Response::Refused { reason }
}

/// The gossip topic of a federation.
pub fn topic(federation_id: &[u8; 32]) -> String {
    format!("{TOPIC_PREFIX}{}/log/1", hex::encode(federation_id))
}

/// Listen addresses of a peer (from identify) kept at most.
pub const LISTEN_ADDRS_MAX: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn gossip_decode_never_panics_and_round_trips(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(g) = Gossip::decode(&data) {
                prop_assert_eq!(g.encode(), data);
            }
        }

        #[test]
        fn gossip_encode_decode(tag in 0u8..2, payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let g = if tag == 0 { Gossip::Checkpoint(payload) } else { Gossip::Evidence(payload) };
            prop_assert_eq!(Gossip::decode(&g.encode()).unwrap(), g);
        }

        #[test]
        fn request_limits(from in 0u64..u64::MAX / 2, len in 0u64..3000, line in ".{0,600}") {
            let r = Request::Entries { log: [7; 32], from, to: from.saturating_add(len) };
            let ok = len > 0 && len <= ENTRIES_PER_REQUEST_MAX;
            prop_assert_eq!(r.check().is_ok(), ok);
            let c = Request::Cosignature { line: line.clone() };
            prop_assert_eq!(c.check().is_ok(), line.len() <= COSIGNATURE_LINE_BYTES_MAX);
        }
    }

    #[test]
    fn gossip_limits_and_tags() {
        assert_eq!(Gossip::decode(&[]), Err(GossipError::Empty));
        assert_eq!(
            Gossip::decode(&[3, 1]),
            Err(GossipError::UnknownTag { found: 3 })
        );
        let big = vec![GOSSIP_CHECKPOINT; GOSSIP_BYTES_MAX + 1];
        assert_eq!(
            Gossip::decode(&big),
            Err(GossipError::TooLong {
                found: GOSSIP_BYTES_MAX + 1
            })
        );
        let max = vec![GOSSIP_CHECKPOINT; GOSSIP_BYTES_MAX];
        assert!(Gossip::decode(&max).is_ok());
        let r = refused("é".repeat(REASON_BYTES_MAX));
        match r {
            Response::Refused { reason } => assert!(reason.len() <= REASON_BYTES_MAX),
            _ => unreachable!(),
        }
    }
}
