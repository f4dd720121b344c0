//! Ledger entries: a versioned, canonical binary encoding, signed by the author.
//!
//! Every entry has exactly one encoding (`specs/ledger.md`, section "Entries"): fixed-width
//! big-endian integers, `u32`-length-prefixed byte strings with named maxima, `u8` tags. Decoding
//! rejects trailing bytes, unknown versions, kinds and tags, invalid UTF-8, booleans other than
//! 0/1 and over-long fields, each with an error naming the field.
//!
//! Layout of an encoded entry:
//!
//! ```text
//! version u8 (=1) ‖ kind u8 ‖ author [32] ‖ seq u64 ‖ timestamp_ms u64 ‖ body ‖ signature [64]
//! ```
//!
//! The author signs `ENTRY_SIGNING_CONTEXT ‖ encoding-without-signature`. Facts that involve two
//! nodes (lease, shard receipt, settlement) carry the counterparty's signature over
//! `COSIGNING_CONTEXT ‖ kind ‖ terms` inside the body, so each party can append the same fact to
//! its own log under its own signature.
//!
//! The encoder and decoder are hand-written rather than derived (e.g. with `bincode`) because the
//! byte layout is a public, versioned format that verifiers in other languages implement from the
//! spec alone; a serialisation library's own format could change under us.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// The only entry format version this code reads and writes.
pub const ENTRY_VERSION: u8 = 1;
/// Largest encoded entry, signature included (C2SP tlog-tiles' entry limit).
pub const ENTRY_BYTES_MAX: usize = 64 * 1024;
/// Largest organisation name, UTF-8 bytes.
pub const ORGANISATION_BYTES_MAX: usize = 128;
/// Largest payment reference of a funding deposit, UTF-8 bytes.
pub const REFERENCE_BYTES_MAX: usize = 256;
/// Largest portable evidence blob in a misbehaviour entry.
pub const EVIDENCE_BYTES_MAX: usize = 60 * 1024;
/// Largest canonical job description in a job entry (`specs/market.md`).
pub const JOB_BYTES_MAX: usize = 8 * 1024;
/// Largest licence (an SPDX expression) of a data pool, UTF-8 bytes.
pub const LICENCE_BYTES_MAX: usize = 64;
/// Largest provenance text of a data pool, UTF-8 bytes.
pub const SOURCE_BYTES_MAX: usize = 512;
/// Most member logs a clearing record may name as its view of the offers.
pub const CLEARING_VIEWS_MAX: usize = 256;
/// Most providers a clearing record may assign shards to.
pub const CLEARING_ASSIGNMENTS_MAX: usize = 256;
/// Receipts one settlement pays at most (32 KiB of fact ids; more are paid by several).
pub const SETTLEMENT_RECEIPTS_MAX: usize = 1024;
/// Prefix of the message the author signs.
pub const ENTRY_SIGNING_CONTEXT: &[u8] = b"leam/entry/v1\0";
/// Prefix of the message a counterparty signs for a co-signed fact.
pub const COSIGNING_CONTEXT: &[u8] = b"leam/cosign/v1\0";
/// Bytes of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Bytes of an ed25519 public key.
pub const KEY_BYTES: usize = 32;
/// Bytes of the fixed header: version, kind, author, seq, timestamp.
pub const HEADER_BYTES: usize = 1 + 1 + KEY_BYTES + 8 + 8;

/// A raw ed25519 public key (32 bytes), as it appears in entries.
pub type PublicKey = [u8; KEY_BYTES];
/// A 32-byte commitment or identifier (SHA-256 output).
pub type Digest32 = [u8; 32];

/// Why bytes are not a valid entry encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The encoding exceeds [`ENTRY_BYTES_MAX`].
    #[error("entry is {found} bytes, more than ENTRY_BYTES_MAX = {max}")]
    TooLong {
        /// Bytes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes end inside a field.
    #[error(
        "truncated in field `{field}` at byte {offset}: needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// Field being read.
        field: &'static str,
        /// Offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The version byte is not [`ENTRY_VERSION`].
    #[error("unknown entry version {found} (expected {ENTRY_VERSION})")]
    UnknownVersion {
        /// Version found.
        found: u8,
    },
    /// The kind byte names no kind.
    #[error("unknown entry kind {found} (expected 1..=13)")]
    UnknownKind {
        /// Kind found.
        found: u8,
    },
    /// A tag byte (sector, money sector, evidence kind) is out of range.
    #[error("field `{field}` has unknown tag {found} (expected {expected})")]
    UnknownTag {
        /// Field.
        field: &'static str,
        /// Tag found.
        found: u8,
        /// What is accepted.
        expected: &'static str,
    },
    /// A length prefix exceeds the field's maximum.
    #[error("field `{field}` is {found} bytes long, more than its maximum {max}")]
    LengthOverMax {
        /// Field.
        field: &'static str,
        /// Length found.
        found: u64,
        /// The limit.
        max: usize,
    },
    /// A text field is not valid UTF-8.
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Field.
        field: &'static str,
    },
    /// A text field is empty or contains control characters.
    #[error("field `{field}` must be non-empty text without control characters, found {found:?}")]
    InvalidText {
        /// Field.
        field: &'static str,
        /// The text found.
        found: String,
    },
    /// A boolean byte is neither 0 nor 1.
    #[error("field `{field}` is boolean byte {found}, expected 0 or 1")]
    InvalidBool {
        /// Field.
        field: &'static str,
        /// Byte found.
        found: u8,
    },
    /// Bytes follow the signature.
    #[error("{found} trailing bytes after the signature")]
    TrailingBytes {
        /// Number of extra bytes.
        found: usize,
    },
    /// A list whose only encoding is strictly ascending is not.
    #[error("field `{field}` element {index} is not greater than the one before (the list must be strictly ascending)")]
    NotAscending {
        /// The list.
        field: &'static str,
        /// The first element out of order.
        index: usize,
    },
}

/// Why a decoded entry's signatures or parties are not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A public key is not a valid ed25519 point.
    #[error("field `{field}` is not a valid ed25519 public key: {key}")]
    BadKey {
        /// Field holding the key.
        field: &'static str,
        /// Hex of the key.
        key: String,
    },
    /// The author's signature does not verify.
    #[error("author signature does not verify for author {author}")]
    BadSignature {
        /// Hex of the author key.
        author: String,
    },
    /// The counterparty's co-signature does not verify.
    #[error("co-signature of {cosigner} over the {kind} terms does not verify")]
    BadCosignature {
        /// Kind name.
        kind: &'static str,
        /// Hex of the co-signer key.
        cosigner: String,
    },
    /// The author of a co-signed fact is not one of its two parties.
    #[error("author {author} is not a party of this {kind} (parties {a} and {b})")]
    AuthorNotParty {
        /// Kind name.
        kind: &'static str,
        /// Author hex.
        author: String,
        /// First party hex.
        a: String,
        /// Second party hex.
        b: String,
    },
    /// A detached co-signature is offered by a key that is not one of the fact's parties.
    #[error("co-signer {cosigner} is not a party of this {kind} (parties {a} and {b})")]
    CosignerNotParty {
        /// Kind name.
        kind: &'static str,
        /// Hex of the offered co-signer key.
        cosigner: String,
        /// First party hex.
        a: String,
        /// Second party hex.
        b: String,
    },
    /// Both parties of a co-signed fact are the same key.
    #[error("both parties of this {kind} are the same key {key}")]
    SameParties {
        /// Kind name.
        kind: &'static str,
        /// Key hex.
        key: String,
    },
}

/// The sector of a member organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sector {
    /// Public research centre or agency (tag 0).
    Public,
    /// Industry (tag 1).
    Private,
    /// University or science organisation (tag 2).
    Science,
    /// Startup (tag 3).
    Startup,
}

impl Sector {
    /// All sectors, in tag order.
    pub const ALL: [Sector; 4] = [
        Sector::Public,
        Sector::Private,
        Sector::Science,
        Sector::Startup,
    ];
    fn tag(self) -> u8 {
        self as u8
    }
    fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.get(usize::from(tag)).copied()
    }
    /// Lower-case name (`public`, `private`, `science`, `startup`).
    pub fn name(self) -> &'static str {
        match self {
            Sector::Public => "public",
            Sector::Private => "private",
            Sector::Science => "science",
            Sector::Startup => "startup",
        }
    }
}

impl std::str::FromStr for Sector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!("unknown sector {s:?} (expected public, private, science or startup)")
            })
    }
}

/// Whether deposited money is public funding or private money; the ledger keeps them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Money {
    /// Public funding (tag 0).
    Public = 0,
    /// Private money (tag 1).
    Private = 1,
}

/// The kind of misbehaviour an evidence entry documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum EvidenceKind {
    /// Two checkpoints of one log that cannot be consistent (`evidence::Equivocation` bytes;
    /// tag 1).
    CheckpointEquivocation = 1,
    /// A shard result that a referee rejected (tag 2).
    WrongShardResult = 2,
    /// A co-signed fact the accused denied or contradicted (tag 3).
    BrokenAgreement = 3,
}

impl EvidenceKind {
    const ALL: [EvidenceKind; 3] = [
        EvidenceKind::CheckpointEquivocation,
        EvidenceKind::WrongShardResult,
        EvidenceKind::BrokenAgreement,
    ];

    /// Snake-case name, as in JSON (`checkpoint_equivocation`, `wrong_shard_result`,
    /// `broken_agreement`).
    pub fn name(self) -> &'static str {
        match self {
            EvidenceKind::CheckpointEquivocation => "checkpoint_equivocation",
            EvidenceKind::WrongShardResult => "wrong_shard_result",
            EvidenceKind::BrokenAgreement => "broken_agreement",
        }
    }
}

/// Membership admission: `member` belongs to `organisation` of `sector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admission {
    /// Organisation name (non-empty, no control characters, ≤ [`ORGANISATION_BYTES_MAX`]).
    pub organisation: String,
    /// Sector of the organisation.
    pub sector: Sector,
    /// The admitted node key.
    #[serde(serialize_with = "ser_hex")]
    pub member: PublicKey,
}

/// Funding deposit of `member` (the author), in EUR cents, credited 1:1 as credits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deposit {
    /// Depositing member (must be the author).
    #[serde(serialize_with = "ser_hex")]
    pub member: PublicKey,
    /// Amount in EUR cents.
    pub eur_cents: u64,
    /// Public funding or private money.
    pub money: Money,
    /// Payment reference auditors match against bank records.
    pub reference: String,
}

/// Capacity offer of the author's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offer {
    /// Offer number, unique per author.
    pub offer_id: u64,
    /// SHA-256 of the device description.
    #[serde(serialize_with = "ser_hex")]
    pub device_fingerprint: Digest32,
    /// Compute units the node can deliver per hour.
    pub compute_units_per_hour: u64,
    /// Memory for tensors on the node's backend, bytes, as measured with the throughput
    /// (`specs/market.md` §1); 0 where the platform reports none.
    pub memory_bytes: u64,
    /// Price in credits (EUR cents) per 1,000 compute units.
    pub price_cents_per_kilo_unit: u64,
    /// The offer expires at this time (Unix ms).
    pub valid_until_ms: u64,
}

/// A bid: the author wants `compute_units` of work done for job `job_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bid {
    /// SHA-256 of the job description.
    #[serde(serialize_with = "ser_hex")]
    pub job_id: Digest32,
    /// Compute units wanted.
    pub compute_units: u64,
    /// Highest acceptable price, credits (EUR cents) per 1,000 compute units.
    pub max_price_cents_per_kilo_unit: u64,
    /// Deadline (Unix ms).
    pub deadline_ms: u64,
}

/// A job description the author (a bidder) publishes, so that every auditor holds the inputs of
/// its clearings and verifications. The bytes are the canonical description of `specs/market.md`
/// (the ledger only bounds them); the job id is their SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Canonical job description bytes (≤ [`JOB_BYTES_MAX`]).
    #[serde(serialize_with = "ser_hex")]
    pub description: Vec<u8>,
}

impl Job {
    /// The job id: SHA-256 of the description.
    pub fn id(&self) -> Digest32 {
        Sha256::digest(&self.description).into()
    }

    /// The keys the description names on `referee <64 lower-case hex>` lines (`specs/market.md`
    /// §2): the members whose verdicts on this job count. The ledger reads only these lines of
    /// the description; the market crate decodes the rest.
    pub fn referees(&self) -> Vec<PublicKey> {
        let Ok(text) = std::str::from_utf8(&self.description) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| l.strip_prefix("referee "))
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .filter_map(|h| {
                let mut k = [0u8; 32];
                hex::decode_to_slice(h, &mut k).ok().map(|_| k)
            })
            .collect()
    }
}

/// One member log as the bidder had verified it when it cleared: the offers a clearing
/// considers are those in the first `size` entries of each named log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LogView {
    /// The log's key.
    #[serde(serialize_with = "ser_hex")]
    pub log: PublicKey,
    /// Entries of that log the bidder held (a checkpoint size it had verified).
    pub size: u64,
}

/// Shards a clearing assigns to one provider's offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Assignment {
    /// The provider.
    #[serde(serialize_with = "ser_hex")]
    pub provider: PublicKey,
    /// The provider's offer the shards are bought from.
    pub offer_id: u64,
    /// Shards assigned.
    pub shards: u32,
}

/// The bidder's record of one clearing of the market rule (`specs/market.md`): its inputs (the
/// bid, the time, the logs it saw) and its outputs (price, assignments), so that any auditor
/// re-runs the rule and compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clearing {
    /// Job cleared.
    #[serde(serialize_with = "ser_hex")]
    pub job_id: Digest32,
    /// Index of the bid entry in the author's (the bidder's) log.
    pub bid_seq: u64,
    /// The clearing time (Unix ms): offers valid at this time are considered.
    pub clearing_ms: u64,
    /// Compute units of one shard (from the job's tensor shapes).
    pub shard_units: u64,
    /// The uniform clearing price, credits (EUR cents) per 1,000 compute units.
    pub price_cents_per_kilo_unit: u64,
    /// The logs the bidder saw (≤ [`CLEARING_VIEWS_MAX`], strictly ascending by key).
    pub views: Vec<LogView>,
    /// The rule's output (≤ [`CLEARING_ASSIGNMENTS_MAX`], in the rule's order).
    pub assignments: Vec<Assignment>,
}

/// A second clearing of a job (`specs/market.md` §3.6): the shards that providers who left
/// the job unfinished had leased, bought again under the same rule from providers that hold no
/// lease of the job yet. Auditors re-run it like a clearing and check, from the bidder's log
/// before it, that every replaced provider left at least `shards` leased shards unfinished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reclearing {
    /// The rule's inputs and outputs, as in a clearing (`bid_seq` names the job's bid).
    pub clearing: Clearing,
    /// Shards bought again.
    pub shards: u64,
    /// The providers whose unfinished leases this replaces (≤ [`CLEARING_ASSIGNMENTS_MAX`],
    /// strictly ascending).
    #[serde(serialize_with = "ser_hex_list")]
    pub replaces: Vec<PublicKey>,
}

/// The bidder's reveal of a job's secret replication seed (`specs/market.md` §4), after the
/// job's last round: every auditor re-computes which shards were replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reveal {
    /// Job whose seed this is.
    #[serde(serialize_with = "ser_hex")]
    pub job_id: Digest32,
    /// The seed (its commitment is in the job description).
    #[serde(serialize_with = "ser_hex")]
    pub seed: Digest32,
}

/// A data pool: a content-addressed dataset the author offers for jobs (`specs/market.md` §2),
/// with its licence and provenance; nodes fetch its bytes by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Data {
    /// SHA-256 of the dataset's bytes.
    #[serde(serialize_with = "ser_hex")]
    pub sha256: Digest32,
    /// Its size in bytes.
    pub bytes: u64,
    /// Licence, an SPDX expression (e.g. `CC0-1.0`, `MIT`, `LicenseRef-public-domain`).
    pub licence: String,
    /// Provenance: where the data comes from.
    pub source: String,
}

/// Terms of a lease between a bidder and a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseTerms {
    /// Job.
    #[serde(serialize_with = "ser_hex")]
    pub job_id: Digest32,
    /// Party that pays.
    #[serde(serialize_with = "ser_hex")]
    pub bidder: PublicKey,
    /// Party that computes.
    #[serde(serialize_with = "ser_hex")]
    pub provider: PublicKey,
    /// The provider's offer this lease accepts.
    pub offer_id: u64,
    /// Compute units leased.
    pub compute_units: u64,
    /// Total agreed price, credits (EUR cents).
    pub price_cents: u64,
    /// The lease ends at this time (Unix ms).
    pub expires_ms: u64,
}

/// Terms of a shard receipt: the provider computed one shard for the bidder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptTerms {
    /// Job.
    #[serde(serialize_with = "ser_hex")]
    pub job_id: Digest32,
    /// Shard number within the job.
    pub shard: u32,
    /// Party that ordered the work.
    #[serde(serialize_with = "ser_hex")]
    pub bidder: PublicKey,
    /// Party that computed.
    #[serde(serialize_with = "ser_hex")]
    pub provider: PublicKey,
    /// Fact id (`specs/ledger.md` §2.3) of the lease the shard was computed under: a lease of
    /// this job between these two parties.
    #[serde(serialize_with = "ser_hex")]
    pub lease: Digest32,
    /// Commitment to the shard's input (state and data).
    #[serde(serialize_with = "ser_hex")]
    pub input_commitment: Digest32,
    /// Commitment to the shard's output: SHA-256 of the provider's whole result in its
    /// canonical encoding (step root, final state, delta commitment; `specs/shard.md`), so the
    /// result the provider co-signed is fixed.
    #[serde(serialize_with = "ser_hex")]
    pub output_commitment: Digest32,
    /// Compute units counted from tensor shapes (not wall time).
    pub compute_units: u64,
    /// Device time spent, milliseconds.
    pub gpu_ms: u64,
    /// SHA-256 of the device description.
    #[serde(serialize_with = "ser_hex")]
    pub device_fingerprint: Digest32,
}

/// Terms of a settlement: `payer` pays `payee` credits for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SettlementTerms {
    /// Job paid for.
    #[serde(serialize_with = "ser_hex")]
    pub job_id: Digest32,
    /// Paying party.
    #[serde(serialize_with = "ser_hex")]
    pub payer: PublicKey,
    /// Paid party.
    #[serde(serialize_with = "ser_hex")]
    pub payee: PublicKey,
    /// Credits (EUR cents) moved.
    pub credits_cents: u64,
    /// Which of the payer's money pays: its public funding or its private money. The payee
    /// receives credits of the same money; the ledger keeps the two apart in every balance.
    pub money: Money,
    /// Fact ids of the receipts this settlement pays (≤ [`SETTLEMENT_RECEIPTS_MAX`], strictly
    /// ascending): the audit checks that each is a run of the payee for this job that the
    /// job's referee accepted, and that the credits do not exceed what they are worth.
    #[serde(serialize_with = "ser_hex_list")]
    pub receipts: Vec<Digest32>,
}

/// Verification verdict on one shard, authored by the referee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Job.
    #[serde(serialize_with = "ser_hex")]
    pub job_id: Digest32,
    /// Shard.
    pub shard: u32,
    /// Provider whose result is judged.
    #[serde(serialize_with = "ser_hex")]
    pub provider: PublicKey,
    /// The output commitment judged.
    #[serde(serialize_with = "ser_hex")]
    pub output_commitment: Digest32,
    /// Whether the result is accepted.
    pub accepted: bool,
}

/// Misbehaviour evidence against `accused`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Accused node key.
    #[serde(serialize_with = "ser_hex")]
    pub accused: PublicKey,
    /// Kind of misbehaviour (`evidence_kind` in the encoding and in JSON, where `kind` names
    /// the entry kind).
    #[serde(rename = "evidence_kind")]
    pub kind: EvidenceKind,
    /// Portable evidence bytes (for equivocations: an `evidence::Equivocation` encoding).
    #[serde(serialize_with = "ser_hex")]
    pub bytes: Vec<u8>,
}

/// Terms of a fact two parties agree on, with the counterparty's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoSigned<T> {
    /// The agreed terms.
    pub terms: T,
    /// Signature of the party that is not the entry's author over
    /// `COSIGNING_CONTEXT ‖ kind ‖ encode(terms)`.
    #[serde(serialize_with = "ser_hex")]
    pub cosignature: [u8; SIGNATURE_BYTES],
}

/// Terms that two parties co-sign.
pub trait Terms: Sized {
    /// The entry kind these terms belong to.
    const KIND: Kind;
    /// The two parties.
    fn parties(&self) -> (PublicKey, PublicKey);
    /// Canonical encoding of the terms.
    fn encode_into(&self, w: &mut Vec<u8>);
    /// Decode the terms.
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// The message a counterparty signs.
    fn cosigning_message(&self) -> Vec<u8> {
        let mut m = COSIGNING_CONTEXT.to_vec();
        m.push(Self::KIND as u8);
        self.encode_into(&mut m);
        m
    }
    /// Identifier of the fact: SHA-256(kind ‖ encode(terms)). Both parties' entries of one fact
    /// share it; the accounting fold counts each fact once.
    fn fact_id(&self) -> Digest32 {
        let mut m = vec![Self::KIND as u8];
        self.encode_into(&mut m);
        Sha256::digest(&m).into()
    }
    /// The counterparty's detached co-signature over these terms: `key` signs
    /// [`Terms::cosigning_message`]. The counterparty computes it on its own node and sends only
    /// these bytes; the author attaches them with [`Terms::with_cosignature`].
    fn cosignature(&self, key: &SigningKey) -> [u8; SIGNATURE_BYTES] {
        key.sign(&self.cosigning_message()).to_bytes()
    }
    /// Attach a detached co-signature `sig` by `counterparty`, after checking that
    /// `counterparty` is one of the two (distinct) parties and that `sig` verifies (strictly)
    /// over [`Terms::cosigning_message`].
    fn with_cosignature(
        self,
        counterparty: &PublicKey,
        sig: [u8; SIGNATURE_BYTES],
    ) -> Result<CoSigned<Self>, VerifyError> {
        let (a, b) = self.parties();
        if a == b {
            return Err(VerifyError::SameParties {
                kind: Self::KIND.name(),
                key: hex::encode(a),
            });
        }
        if *counterparty != a && *counterparty != b {
            return Err(VerifyError::CosignerNotParty {
                kind: Self::KIND.name(),
                cosigner: hex::encode(counterparty),
                a: hex::encode(a),
                b: hex::encode(b),
            });
        }
        let key = verifying_key("cosigner", counterparty)?;
        key.verify_strict(&self.cosigning_message(), &Signature::from_bytes(&sig))
            .map_err(|_| VerifyError::BadCosignature {
                kind: Self::KIND.name(),
                cosigner: hex::encode(counterparty),
            })?;
        Ok(CoSigned {
            terms: self,
            cosignature: sig,
        })
    }
    /// Co-sign the terms with the counterparty's key (in-process form of
    /// [`Terms::cosignature`]; no check that the key is a party).
    fn cosign(self, counterparty: &SigningKey) -> CoSigned<Self> {
        let cosignature = self.cosignature(counterparty);
        CoSigned {
            terms: self,
            cosignature,
        }
    }
}

/// The canonical encoding of co-signed terms on their own (what a proposer sends its
/// counterparty to countersign; `specs/wire.md` §4).
pub fn encode_terms<T: Terms>(terms: &T) -> Vec<u8> {
    let mut out = Vec::new();
    terms.encode_into(&mut out);
    out
}

/// Decode terms sent on their own: strict, the bytes must end exactly after the terms.
pub fn decode_terms<T: Terms>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let t = T::decode_from(&mut r)?;
    let rest = bytes.len() - r.pos;
    if rest != 0 {
        return Err(DecodeError::TrailingBytes { found: rest });
    }
    Ok(t)
}

/// Entry kinds and their tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Kind {
    /// [`Admission`].
    Admission = 1,
    /// [`Deposit`].
    Deposit = 2,
    /// [`Offer`].
    Offer = 3,
    /// [`Bid`].
    Bid = 4,
    /// Co-signed [`LeaseTerms`].
    Lease = 5,
    /// Co-signed [`ReceiptTerms`].
    Receipt = 6,
    /// [`Verdict`].
    Verdict = 7,
    /// Co-signed [`SettlementTerms`].
    Settlement = 8,
    /// [`Evidence`].
    Evidence = 9,
    /// [`Job`].
    Job = 10,
    /// [`Clearing`].
    Clearing = 11,
    /// [`Reveal`].
    Reveal = 12,
    /// [`Data`].
    Data = 13,
    /// [`Reclearing`].
    Reclearing = 14,
}

impl Kind {
    /// Stable lower-case name used in exports and errors.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Admission => "admission",
            Kind::Deposit => "deposit",
            Kind::Offer => "offer",
            Kind::Bid => "bid",
            Kind::Lease => "lease",
            Kind::Receipt => "receipt",
            Kind::Verdict => "verdict",
            Kind::Settlement => "settlement",
            Kind::Evidence => "evidence",
            Kind::Job => "job",
            Kind::Clearing => "clearing",
            Kind::Reveal => "reveal",
            Kind::Data => "data",
            Kind::Reclearing => "reclearing",
        }
    }
    fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            1 => Kind::Admission,
            2 => Kind::Deposit,
            3 => Kind::Offer,
            4 => Kind::Bid,
            5 => Kind::Lease,
            6 => Kind::Receipt,
            7 => Kind::Verdict,
            8 => Kind::Settlement,
            9 => Kind::Evidence,
            10 => Kind::Job,
            11 => Kind::Clearing,
            12 => Kind::Reveal,
            13 => Kind::Data,
            14 => Kind::Reclearing,
            _ => return None,
        })
    }
}

/// The kind-specific part of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// Membership admission.
    Admission(Admission),
    /// Funding deposit.
    Deposit(Deposit),
    /// Capacity offer.
    Offer(Offer),
    /// Bid.
    Bid(Bid),
    /// Lease, co-signed.
    Lease(CoSigned<LeaseTerms>),
    /// Shard receipt, co-signed.
    Receipt(CoSigned<ReceiptTerms>),
    /// Verification verdict.
    Verdict(Verdict),
    /// Credit settlement, co-signed.
    Settlement(CoSigned<SettlementTerms>),
    /// Misbehaviour evidence.
    Evidence(Evidence),
    /// Job description.
    Job(Job),
    /// Market clearing record.
    Clearing(Clearing),
    /// Replication seed reveal.
    Reveal(Reveal),
    /// Data pool.
    Data(Data),
    /// Second clearing of a job.
    Reclearing(Reclearing),
}

impl Body {
    /// The kind tag of this body.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Admission(_) => Kind::Admission,
            Body::Deposit(_) => Kind::Deposit,
            Body::Offer(_) => Kind::Offer,
            Body::Bid(_) => Kind::Bid,
            Body::Lease(_) => Kind::Lease,
            Body::Receipt(_) => Kind::Receipt,
            Body::Verdict(_) => Kind::Verdict,
            Body::Settlement(_) => Kind::Settlement,
            Body::Evidence(_) => Kind::Evidence,
            Body::Job(_) => Kind::Job,
            Body::Clearing(_) => Kind::Clearing,
            Body::Reveal(_) => Kind::Reveal,
            Body::Data(_) => Kind::Data,
            Body::Reclearing(_) => Kind::Reclearing,
        }
    }

    /// For co-signed kinds: (parties, counterparty signature, message it signs, fact id).
    pub fn cosigned(&self) -> Option<CoSignedView> {
        fn view<T: Terms>(c: &CoSigned<T>) -> CoSignedView {
            CoSignedView {
                kind: T::KIND,
                parties: c.terms.parties(),
                cosignature: c.cosignature,
                message: c.terms.cosigning_message(),
                fact_id: c.terms.fact_id(),
            }
        }
        match self {
            Body::Lease(c) => Some(view(c)),
            Body::Receipt(c) => Some(view(c)),
            Body::Settlement(c) => Some(view(c)),
            _ => None,
        }
    }

    fn encode_into(&self, w: &mut Vec<u8>) {
        match self {
            Body::Admission(a) => {
                put_str(w, &a.organisation);
                w.push(a.sector.tag());
                w.extend_from_slice(&a.member);
            }
            Body::Deposit(d) => {
                w.extend_from_slice(&d.member);
                w.extend_from_slice(&d.eur_cents.to_be_bytes());
                w.push(d.money as u8);
                put_str(w, &d.reference);
            }
            Body::Offer(o) => {
                w.extend_from_slice(&o.offer_id.to_be_bytes());
                w.extend_from_slice(&o.device_fingerprint);
                w.extend_from_slice(&o.compute_units_per_hour.to_be_bytes());
                w.extend_from_slice(&o.memory_bytes.to_be_bytes());
                w.extend_from_slice(&o.price_cents_per_kilo_unit.to_be_bytes());
                w.extend_from_slice(&o.valid_until_ms.to_be_bytes());
            }
            Body::Bid(b) => {
                w.extend_from_slice(&b.job_id);
                w.extend_from_slice(&b.compute_units.to_be_bytes());
                w.extend_from_slice(&b.max_price_cents_per_kilo_unit.to_be_bytes());
                w.extend_from_slice(&b.deadline_ms.to_be_bytes());
            }
            Body::Lease(c) => put_cosigned(w, c),
            Body::Receipt(c) => put_cosigned(w, c),
            Body::Settlement(c) => put_cosigned(w, c),
            Body::Verdict(v) => {
                w.extend_from_slice(&v.job_id);
                w.extend_from_slice(&v.shard.to_be_bytes());
                w.extend_from_slice(&v.provider);
                w.extend_from_slice(&v.output_commitment);
                w.push(u8::from(v.accepted));
            }
            Body::Evidence(e) => {
                w.extend_from_slice(&e.accused);
                w.push(e.kind as u8);
                put_bytes(w, &e.bytes);
            }
            Body::Job(j) => put_bytes(w, &j.description),
            Body::Clearing(c) => put_clearing(w, c),
            Body::Reclearing(r) => {
                put_clearing(w, &r.clearing);
                w.extend_from_slice(&r.shards.to_be_bytes());
                let n = u32::try_from(r.replaces.len()).expect("replaces are bounded");
                w.extend_from_slice(&n.to_be_bytes());
                for k in &r.replaces {
                    w.extend_from_slice(k);
                }
            }
            Body::Reveal(r) => {
                w.extend_from_slice(&r.job_id);
                w.extend_from_slice(&r.seed);
            }
            Body::Data(d) => {
                w.extend_from_slice(&d.sha256);
                w.extend_from_slice(&d.bytes.to_be_bytes());
                put_str(w, &d.licence);
                put_str(w, &d.source);
            }
        }
    }

    fn decode_from(kind: Kind, r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match kind {
            Kind::Admission => Body::Admission(Admission {
                organisation: r.text("organisation", ORGANISATION_BYTES_MAX)?,
                sector: {
                    let t = r.u8("sector")?;
                    Sector::from_tag(t).ok_or(DecodeError::UnknownTag {
                        field: "sector",
                        found: t,
                        expected: "0..=3 (public, private, science, startup)",
                    })?
                },
                member: r.array("member")?,
            }),
            Kind::Deposit => Body::Deposit(Deposit {
                member: r.array("member")?,
                eur_cents: r.u64("eur_cents")?,
                money: r.money()?,
                reference: r.text("reference", REFERENCE_BYTES_MAX)?,
            }),
            Kind::Offer => Body::Offer(Offer {
                offer_id: r.u64("offer_id")?,
                device_fingerprint: r.array("device_fingerprint")?,
                compute_units_per_hour: r.u64("compute_units_per_hour")?,
                memory_bytes: r.u64("memory_bytes")?,
                price_cents_per_kilo_unit: r.u64("price_cents_per_kilo_unit")?,
                valid_until_ms: r.u64("valid_until_ms")?,
            }),
            Kind::Bid => Body::Bid(Bid {
                job_id: r.array("job_id")?,
                compute_units: r.u64("compute_units")?,
                max_price_cents_per_kilo_unit: r.u64("max_price_cents_per_kilo_unit")?,
                deadline_ms: r.u64("deadline_ms")?,
            }),
            Kind::Lease => Body::Lease(get_cosigned(r)?),
            Kind::Receipt => Body::Receipt(get_cosigned(r)?),
            Kind::Settlement => Body::Settlement(get_cosigned(r)?),
            Kind::Verdict => Body::Verdict(Verdict {
                job_id: r.array("job_id")?,
                shard: r.u32("shard")?,
                provider: r.array("provider")?,
                output_commitment: r.array("output_commitment")?,
                accepted: r.bool("accepted")?,
            }),
            Kind::Evidence => Body::Evidence(Evidence {
                accused: r.array("accused")?,
                kind: {
                    let t = r.u8("evidence_kind")?;
                    EvidenceKind::ALL
                        .get(usize::from(t).wrapping_sub(1))
                        .copied()
                        .ok_or(DecodeError::UnknownTag {
                            field: "evidence_kind",
                            found: t,
                            expected: "1..=3",
                        })?
                },
                bytes: r.bytes("evidence", EVIDENCE_BYTES_MAX)?.to_vec(),
            }),
            Kind::Job => Body::Job(Job {
                description: r.bytes("description", JOB_BYTES_MAX)?.to_vec(),
            }),
            Kind::Clearing => Body::Clearing(r.clearing()?),
            Kind::Reclearing => {
                let clearing = r.clearing()?;
                let shards = r.u64("shards")?;
                let n = r.count("replaces", CLEARING_ASSIGNMENTS_MAX)?;
                let mut replaces = Vec::with_capacity(n);
                for _ in 0..n {
                    replaces.push(r.array("replaces")?);
                }
                Body::Reclearing(Reclearing {
                    clearing,
                    shards,
                    replaces,
                })
            }
            Kind::Reveal => Body::Reveal(Reveal {
                job_id: r.array("job_id")?,
                seed: r.array("seed")?,
            }),
            Kind::Data => Body::Data(Data {
                sha256: r.array("sha256")?,
                bytes: r.u64("bytes")?,
                licence: r.text("licence", LICENCE_BYTES_MAX)?,
                source: r.text("source", SOURCE_BYTES_MAX)?,
            }),
        })
    }
}

/// A view of the co-signed part of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoSignedView {
    /// Kind.
    pub kind: Kind,
    /// The two parties.
    pub parties: (PublicKey, PublicKey),
    /// The counterparty's signature.
    pub cosignature: [u8; SIGNATURE_BYTES],
    /// The message the counterparty signed.
    pub message: Vec<u8>,
    /// Fact identifier.
    pub fact_id: Digest32,
}

impl CoSignedView {
    /// The party that must co-sign when `author` writes the entry, or an error.
    pub fn cosigner(&self, author: &PublicKey) -> Result<PublicKey, VerifyError> {
        let (a, b) = self.parties;
        if a == b {
            return Err(VerifyError::SameParties {
                kind: self.kind.name(),
                key: hex::encode(a),
            });
        }
        if *author == a {
            Ok(b)
        } else if *author == b {
            Ok(a)
        } else {
            Err(VerifyError::AuthorNotParty {
                kind: self.kind.name(),
                author: hex::encode(author),
                a: hex::encode(a),
                b: hex::encode(b),
            })
        }
    }
}

impl Terms for LeaseTerms {
    const KIND: Kind = Kind::Lease;
    fn parties(&self) -> (PublicKey, PublicKey) {
        (self.bidder, self.provider)
    }
    fn encode_into(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(&self.job_id);
        w.extend_from_slice(&self.bidder);
        w.extend_from_slice(&self.provider);
        w.extend_from_slice(&self.offer_id.to_be_bytes());
        w.extend_from_slice(&self.compute_units.to_be_bytes());
        w.extend_from_slice(&self.price_cents.to_be_bytes());
        w.extend_from_slice(&self.expires_ms.to_be_bytes());
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(LeaseTerms {
            job_id: r.array("job_id")?,
            bidder: r.array("bidder")?,
            provider: r.array("provider")?,
            offer_id: r.u64("offer_id")?,
            compute_units: r.u64("compute_units")?,
            price_cents: r.u64("price_cents")?,
            expires_ms: r.u64("expires_ms")?,
        })
    }
}

impl Terms for ReceiptTerms {
    const KIND: Kind = Kind::Receipt;
    fn parties(&self) -> (PublicKey, PublicKey) {
        (self.bidder, self.provider)
    }
    fn encode_into(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(&self.job_id);
        w.extend_from_slice(&self.shard.to_be_bytes());
        w.extend_from_slice(&self.bidder);
        w.extend_from_slice(&self.provider);
        w.extend_from_slice(&self.lease);
        w.extend_from_slice(&self.input_commitment);
        w.extend_from_slice(&self.output_commitment);
        w.extend_from_slice(&self.compute_units.to_be_bytes());
        w.extend_from_slice(&self.gpu_ms.to_be_bytes());
        w.extend_from_slice(&self.device_fingerprint);
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ReceiptTerms {
            job_id: r.array("job_id")?,
            shard: r.u32("shard")?,
            bidder: r.array("bidder")?,
            provider: r.array("provider")?,
            lease: r.array("lease")?,
            input_commitment: r.array("input_commitment")?,
            output_commitment: r.array("output_commitment")?,
            compute_units: r.u64("compute_units")?,
            gpu_ms: r.u64("gpu_ms")?,
            device_fingerprint: r.array("device_fingerprint")?,
        })
    }
}

impl Terms for SettlementTerms {
    const KIND: Kind = Kind::Settlement;
    fn parties(&self) -> (PublicKey, PublicKey) {
        (self.payer, self.payee)
    }
    fn encode_into(&self, w: &mut Vec<u8>) {
        w.extend_from_slice(&self.job_id);
        w.extend_from_slice(&self.payer);
        w.extend_from_slice(&self.payee);
        w.extend_from_slice(&self.credits_cents.to_be_bytes());
        w.push(self.money as u8);
        w.extend_from_slice(&(self.receipts.len() as u32).to_be_bytes());
        for id in &self.receipts {
            w.extend_from_slice(id);
        }
    }
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let job_id = r.array("job_id")?;
        let payer = r.array("payer")?;
        let payee = r.array("payee")?;
        let credits_cents = r.u64("credits_cents")?;
        let money = r.money()?;
        let n = r.count("receipts", SETTLEMENT_RECEIPTS_MAX)?;
        let mut receipts: Vec<Digest32> = Vec::with_capacity(n);
        for index in 0..n {
            let id = r.array("receipts")?;
            if receipts.last().is_some_and(|last| *last >= id) {
                return Err(DecodeError::NotAscending {
                    field: "receipts",
                    index,
                });
            }
            receipts.push(id);
        }
        Ok(SettlementTerms {
            job_id,
            payer,
            payee,
            credits_cents,
            money,
            receipts,
        })
    }
}

fn put_cosigned<T: Terms>(w: &mut Vec<u8>, c: &CoSigned<T>) {
    c.terms.encode_into(w);
    w.extend_from_slice(&c.cosignature);
}

fn get_cosigned<T: Terms>(r: &mut Reader<'_>) -> Result<CoSigned<T>, DecodeError> {
    Ok(CoSigned {
        terms: T::decode_from(r)?,
        cosignature: r.array("cosignature")?,
    })
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("field lengths are bounded far below u32::MAX");
    w.extend_from_slice(&len.to_be_bytes());
    w.extend_from_slice(b);
}

fn put_clearing(w: &mut Vec<u8>, c: &Clearing) {
    w.extend_from_slice(&c.job_id);
    w.extend_from_slice(&c.bid_seq.to_be_bytes());
    w.extend_from_slice(&c.clearing_ms.to_be_bytes());
    w.extend_from_slice(&c.shard_units.to_be_bytes());
    w.extend_from_slice(&c.price_cents_per_kilo_unit.to_be_bytes());
    let n = u32::try_from(c.views.len()).expect("views are bounded");
    w.extend_from_slice(&n.to_be_bytes());
    for v in &c.views {
        w.extend_from_slice(&v.log);
        w.extend_from_slice(&v.size.to_be_bytes());
    }
    let n = u32::try_from(c.assignments.len()).expect("assignments are bounded");
    w.extend_from_slice(&n.to_be_bytes());
    for a in &c.assignments {
        w.extend_from_slice(&a.provider);
        w.extend_from_slice(&a.offer_id.to_be_bytes());
        w.extend_from_slice(&a.shards.to_be_bytes());
    }
}

fn put_str(w: &mut Vec<u8>, s: &str) {
    put_bytes(w, s.as_bytes());
}

/// A bounds-checked reader over an entry encoding that names the field on every error.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(DecodeError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(field, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn money(&mut self) -> Result<Money, DecodeError> {
        match self.u8("money")? {
            0 => Ok(Money::Public),
            1 => Ok(Money::Private),
            t => Err(DecodeError::UnknownTag {
                field: "money",
                found: t,
                expected: "0 (public) or 1 (private)",
            }),
        }
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            found => Err(DecodeError::InvalidBool { field, found }),
        }
    }
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)?;
        if len as usize > max {
            return Err(DecodeError::LengthOverMax {
                field,
                found: u64::from(len),
                max,
            });
        }
        self.take(field, len as usize)
    }
    /// The fields of a clearing (kind 11, and the start of kind 14).
    fn clearing(&mut self) -> Result<Clearing, DecodeError> {
        let job_id = self.array("job_id")?;
        let bid_seq = self.u64("bid_seq")?;
        let clearing_ms = self.u64("clearing_ms")?;
        let shard_units = self.u64("shard_units")?;
        let price_cents_per_kilo_unit = self.u64("price_cents_per_kilo_unit")?;
        let n = self.count("views", CLEARING_VIEWS_MAX)?;
        let mut views = Vec::with_capacity(n);
        for _ in 0..n {
            views.push(LogView {
                log: self.array("views.log")?,
                size: self.u64("views.size")?,
            });
        }
        let n = self.count("assignments", CLEARING_ASSIGNMENTS_MAX)?;
        let mut assignments = Vec::with_capacity(n);
        for _ in 0..n {
            assignments.push(Assignment {
                provider: self.array("assignments.provider")?,
                offer_id: self.u64("assignments.offer_id")?,
                shards: self.u32("assignments.shards")?,
            });
        }
        Ok(Clearing {
            job_id,
            bid_seq,
            clearing_ms,
            shard_units,
            price_cents_per_kilo_unit,
            views,
            assignments,
        })
    }
    /// A `u32` element count, at most `max`.
    fn count(&mut self, field: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = self.u32(field)?;
        if n as usize > max {
            return Err(DecodeError::LengthOverMax {
                field,
                found: u64::from(n),
                max,
            });
        }
        Ok(n as usize)
    }
    fn text(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes(field, max)?;
        let s = std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8 { field })?;
        if !valid_text(s) {
            return Err(DecodeError::InvalidText {
                field,
                found: s.to_owned(),
            });
        }
        Ok(s.to_owned())
    }
}

/// Text fields are non-empty and contain no control characters, so reports print them safely.
pub fn valid_text(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(char::is_control)
}

/// A signed ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The author's public key; the log this entry belongs to is the author's.
    #[serde(serialize_with = "ser_hex")]
    pub author: PublicKey,
    /// Index of this entry in the author's log.
    pub seq: u64,
    /// Time of writing (Unix ms), given by the caller.
    pub timestamp_ms: u64,
    /// Kind-specific content.
    pub body: Body,
    /// The author's signature over `ENTRY_SIGNING_CONTEXT ‖ encoding-without-signature`.
    #[serde(serialize_with = "ser_hex")]
    pub signature: [u8; SIGNATURE_BYTES],
}

impl Entry {
    /// Build and sign an entry. `timestamp_ms` is an argument: the core never reads the clock.
    pub fn sign(key: &SigningKey, seq: u64, timestamp_ms: u64, body: Body) -> Entry {
        let mut e = Entry {
            author: key.verifying_key().to_bytes(),
            seq,
            timestamp_ms,
            body,
            signature: [0; SIGNATURE_BYTES],
        };
        let unsigned = e.encode_unsigned();
        e.signature = key.sign(&signing_message(&unsigned)).to_bytes();
        e
    }

    /// The kind of this entry.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    fn encode_unsigned(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(256);
        w.push(ENTRY_VERSION);
        w.push(self.body.kind() as u8);
        w.extend_from_slice(&self.author);
        w.extend_from_slice(&self.seq.to_be_bytes());
        w.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        self.body.encode_into(&mut w);
        w
    }

    /// The canonical encoding (the exact bytes hashed as the Merkle leaf).
    ///
    /// Panics if a field exceeds its maximum (a programmer error: build entries from validated
    /// input; [`Entry::check_limits`] says which).
    pub fn encode(&self) -> Vec<u8> {
        if let Err(e) = self.check_limits() {
            panic!("entry violates a format limit: {e}");
        }
        let mut w = self.encode_unsigned();
        w.extend_from_slice(&self.signature);
        w
    }

    /// Check every field maximum and the total size, as decoding would.
    pub fn check_limits(&self) -> Result<(), DecodeError> {
        let text = |field, s: &str, max| {
            if s.len() > max {
                Err(DecodeError::LengthOverMax {
                    field,
                    found: s.len() as u64,
                    max,
                })
            } else if !valid_text(s) {
                Err(DecodeError::InvalidText {
                    field,
                    found: s.to_owned(),
                })
            } else {
                Ok(())
            }
        };
        match &self.body {
            Body::Admission(a) => text("organisation", &a.organisation, ORGANISATION_BYTES_MAX)?,
            Body::Deposit(d) => text("reference", &d.reference, REFERENCE_BYTES_MAX)?,
            Body::Data(d) => {
                text("licence", &d.licence, LICENCE_BYTES_MAX)?;
                text("source", &d.source, SOURCE_BYTES_MAX)?
            }
            Body::Evidence(e) if e.bytes.len() > EVIDENCE_BYTES_MAX => {
                return Err(DecodeError::LengthOverMax {
                    field: "evidence",
                    found: e.bytes.len() as u64,
                    max: EVIDENCE_BYTES_MAX,
                })
            }
            _ => {}
        }
        let len = self.encode_unsigned().len() + SIGNATURE_BYTES;
        if len > ENTRY_BYTES_MAX {
            return Err(DecodeError::TooLong {
                found: len,
                max: ENTRY_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// Decode a canonical encoding. Does not verify signatures (see [`Entry::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        if bytes.len() > ENTRY_BYTES_MAX {
            return Err(DecodeError::TooLong {
                found: bytes.len(),
                max: ENTRY_BYTES_MAX,
            });
        }
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8("version")?;
        if version != ENTRY_VERSION {
            return Err(DecodeError::UnknownVersion { found: version });
        }
        let tag = r.u8("kind")?;
        let kind = Kind::from_tag(tag).ok_or(DecodeError::UnknownKind { found: tag })?;
        let author = r.array("author")?;
        let seq = r.u64("seq")?;
        let timestamp_ms = r.u64("timestamp_ms")?;
        let body = Body::decode_from(kind, &mut r)?;
        let signature = r.array("signature")?;
        let rest = bytes.len() - r.pos;
        if rest != 0 {
            return Err(DecodeError::TrailingBytes { found: rest });
        }
        Ok(Entry {
            author,
            seq,
            timestamp_ms,
            body,
            signature,
        })
    }

    /// Verify the author's signature and, for co-signed kinds, that the author is a party and
    /// the counterparty's co-signature. Uses strict verification (rejects weak keys and
    /// non-canonical signatures).
    pub fn verify(&self) -> Result<(), VerifyError> {
        let author = verifying_key("author", &self.author)?;
        let msg = signing_message(&self.encode_unsigned());
        author
            .verify_strict(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| VerifyError::BadSignature {
                author: hex::encode(self.author),
            })?;
        self.verify_cosignature()
    }

    /// Verify only the co-signature part (parties and counterparty signature), if any.
    pub fn verify_cosignature(&self) -> Result<(), VerifyError> {
        if let Some(view) = self.body.cosigned() {
            let cosigner = view.cosigner(&self.author)?;
            let key = verifying_key("cosigner", &cosigner)?;
            key.verify_strict(&view.message, &Signature::from_bytes(&view.cosignature))
                .map_err(|_| VerifyError::BadCosignature {
                    kind: view.kind.name(),
                    cosigner: hex::encode(cosigner),
                })?;
        }
        Ok(())
    }

    /// Keys this entry refers to besides its author (counterparties, members, accused).
    pub fn referenced_keys(&self) -> Vec<PublicKey> {
        let mut keys = match &self.body {
            Body::Admission(a) => vec![a.member],
            Body::Deposit(d) => vec![d.member],
            Body::Offer(_) | Body::Bid(_) | Body::Job(_) | Body::Reveal(_) | Body::Data(_) => {
                vec![]
            }
            Body::Clearing(c) => c.assignments.iter().map(|a| a.provider).collect(),
            Body::Reclearing(r) => r
                .clearing
                .assignments
                .iter()
                .map(|a| a.provider)
                .chain(r.replaces.iter().copied())
                .collect(),
            Body::Lease(c) => vec![c.terms.bidder, c.terms.provider],
            Body::Receipt(c) => vec![c.terms.bidder, c.terms.provider],
            Body::Verdict(v) => vec![v.provider],
            Body::Settlement(c) => vec![c.terms.payer, c.terms.payee],
            Body::Evidence(e) => vec![e.accused],
        };
        keys.retain(|k| *k != self.author);
        keys
    }
}

/// Distinct co-signer keys [`verify_many`] keeps decompressed per chunk.
const COSIGNER_CACHE_KEYS: usize = 16;

/// Signatures per `ed25519_dalek::verify_batch` call in [`verify_many`].
pub const VERIFY_BATCH_SIGNATURES: usize = 256;

/// Verify the signatures and co-signatures of many entries (`encoded[i]` is the encoding of
/// `entries[i]`) with batch verification, chunks in parallel. Equivalent to calling
/// [`Entry::verify`] on each, except that batch verification accepts exactly the signatures
/// single verification accepts only for keys without small-order components: keys that are
/// weak (small order) are refused up front. On failure returns the position of the first
/// failing entry found by single verification of the failing chunk.
pub fn verify_many(entries: &[Entry], encoded: &[Vec<u8>]) -> Result<(), (usize, VerifyError)> {
    use rayon::prelude::*;
    assert_eq!(entries.len(), encoded.len(), "one encoding per entry");
    let chunk = VERIFY_BATCH_SIGNATURES / 2;
    entries
        .par_chunks(chunk)
        .zip(encoded.par_chunks(chunk))
        .enumerate()
        .try_for_each(|(k, (es, bs))| verify_chunk(es, bs).map_err(|(i, e)| (k * chunk + i, e)))
}

fn verify_chunk(entries: &[Entry], encoded: &[Vec<u8>]) -> Result<(), (usize, VerifyError)> {
    let mut messages: Vec<Vec<u8>> = Vec::with_capacity(entries.len() * 2);
    let mut signatures: Vec<Signature> = Vec::with_capacity(entries.len() * 2);
    let mut keys: Vec<VerifyingKey> = Vec::with_capacity(entries.len() * 2);
    let mut author: Option<(PublicKey, VerifyingKey)> = None;
    let mut cosigners: Vec<(PublicKey, VerifyingKey)> = Vec::new();
    for (i, (e, bytes)) in entries.iter().zip(encoded).enumerate() {
        let key = match author {
            Some((pk, vk)) if pk == e.author => vk,
            _ => {
                let vk = verifying_key("author", &e.author).map_err(|err| (i, err))?;
                if vk.is_weak() {
                    return Err((
                        i,
                        VerifyError::BadKey {
                            field: "author",
                            key: hex::encode(e.author),
                        },
                    ));
                }
                author = Some((e.author, vk));
                vk
            }
        };
        let (msg, sig) = split_signed(bytes).expect("an encoded entry holds a signature");
        messages.push(msg);
        signatures.push(Signature::from_bytes(&sig));
        keys.push(key);
        if let Some(view) = e.body.cosigned() {
            let cosigner = view.cosigner(&e.author).map_err(|err| (i, err))?;
            // Counterparties repeat within a chunk; decompressing a key costs about as much as
            // a third of a verification, so keep the ones already parsed.
            let vk = match cosigners.iter().find(|(pk, _)| *pk == cosigner) {
                Some((_, vk)) => *vk,
                None => {
                    let vk = verifying_key("cosigner", &cosigner).map_err(|err| (i, err))?;
                    if vk.is_weak() {
                        return Err((
                            i,
                            VerifyError::BadKey {
                                field: "cosigner",
                                key: hex::encode(cosigner),
                            },
                        ));
                    }
                    if cosigners.len() < COSIGNER_CACHE_KEYS {
                        cosigners.push((cosigner, vk));
                    }
                    vk
                }
            };
            keys.push(vk);
            signatures.push(Signature::from_bytes(&view.cosignature));
            messages.push(view.message);
        }
    }
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    if ed25519_dalek::verify_batch(&refs, &signatures, &keys).is_ok() {
        return Ok(());
    }
    for (i, e) in entries.iter().enumerate() {
        e.verify().map_err(|err| (i, err))?;
    }
    // Single verification accepted every signature the batch refused (only possible with
    // crafted small-order components): refuse the chunk, naming its first entry.
    Err((
        0,
        VerifyError::BadSignature {
            author: hex::encode(entries.first().map(|e| e.author).unwrap_or_default()),
        },
    ))
}

/// The message an author signs: `ENTRY_SIGNING_CONTEXT ‖ encoding-without-signature`.
pub fn signing_message(unsigned: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENTRY_SIGNING_CONTEXT.len() + unsigned.len());
    m.extend_from_slice(ENTRY_SIGNING_CONTEXT);
    m.extend_from_slice(unsigned);
    m
}

/// Split an encoded entry (at least [`SIGNATURE_BYTES`] long) into its signing message and
/// signature, without decoding the rest. Used by batch verification.
pub fn split_signed(bytes: &[u8]) -> Option<(Vec<u8>, [u8; SIGNATURE_BYTES])> {
    let cut = bytes.len().checked_sub(SIGNATURE_BYTES)?;
    let mut sig = [0u8; SIGNATURE_BYTES];
    sig.copy_from_slice(&bytes[cut..]);
    Some((signing_message(&bytes[..cut]), sig))
}

/// Parse a public key, naming the field on failure.
pub fn verifying_key(field: &'static str, key: &PublicKey) -> Result<VerifyingKey, VerifyError> {
    VerifyingKey::from_bytes(key).map_err(|_| VerifyError::BadKey {
        field,
        key: hex::encode(key),
    })
}

fn ser_hex<S: serde::Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v.as_ref()))
}

fn ser_hex_list<S: serde::Serializer, T: AsRef<[u8]>>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| hex::encode(x.as_ref())))
}
