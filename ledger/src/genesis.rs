//! The federation's genesis document: its founding members, parameters and the founders'
//! signatures, and the membership rule built on it (`specs/federation.md` §1–§2).
//!
//! The document is a C2SP-style signed note whose text is the canonical body:
//!
//! ```text
//! leam-genesis/v1
//! subsidy-percent <0..=100>
//! threshold <1..=number of members>
//! member <64 lower-hex ed25519 key> <public|private|science|startup> <organisation>
//! …one line per founder, sorted by key bytes
//!
//! — leam.member/<64 hex key> <base64(keyID ‖ Ed25519 signature over the body)>
//! …zero or more signature lines, sorted by key bytes
//! ```
//!
//! Every founder signs the body with its ledger key under the note key name
//! `leam.member/<hex key>` ([`signer_name`]). Zero signature lines are allowed (a document
//! that is still being signed); [`SignedGenesis::verify_complete`] requires all of them.
//! Parsing is strict: every accepted document has exactly one encoding, and
//! `parse(encode(g)) == g`.
//!
//! The genesis document may carry up to [`GENESIS_MEMBERS_MAX`] signature lines, more than a
//! checkpoint note's `NOTE_SIGNATURES_MAX`, so this module splits the document itself and
//! parses each signature line with [`crate::note`]'s line parser.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ed25519_dalek::SigningKey;
use sha2::{Digest as _, Sha256};

use crate::account::Membership;
use crate::entry::{self, Body, Entry, PublicKey, Sector, ORGANISATION_BYTES_MAX};
use crate::note::{self, Algorithm, Note, Signer, Verifier, ED25519_SIGNATURE_SIZE};

/// Largest encoded genesis document, bytes.
pub const GENESIS_BYTES_MAX: usize = 256 * 1024;
/// Most founding members of a genesis document.
pub const GENESIS_MEMBERS_MAX: usize = 256;
/// Largest subsidy parameter, percent.
pub const SUBSIDY_PERCENT_MAX: u8 = 100;
/// First line of the genesis body.
pub const GENESIS_MAGIC: &str = "leam-genesis/v1";
/// Prefix of a founder's note key name; the 64 lower-case hex digits of its key follow.
pub const MEMBER_NAME_PREFIX: &str = "leam.member/";

/// Why a genesis document or its parts are not valid. Line numbers count the lines of the
/// whole document from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    /// The document is larger than [`GENESIS_BYTES_MAX`].
    #[error("genesis document is {found} bytes, more than GENESIS_BYTES_MAX = {max}")]
    TooLarge {
        /// Bytes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The document is not valid UTF-8.
    #[error("genesis document is not valid UTF-8 at byte {offset}")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// No blank line ends the body.
    #[error("genesis document has no blank line after its body (expected body, \"\\n\", signature lines)")]
    MissingBlankLine,
    /// A body line is not what the format requires.
    #[error("genesis line {line}: field `{field}`: expected {expected}, found {found:?}")]
    Line {
        /// Line number.
        line: usize,
        /// Field being read.
        field: &'static str,
        /// What the format requires.
        expected: String,
        /// What the line holds.
        found: String,
    },
    /// The number of founders is outside `1..=GENESIS_MEMBERS_MAX`.
    #[error("genesis has {found} members, expected 1..={max}")]
    MemberCount {
        /// Members found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The subsidy is above [`SUBSIDY_PERCENT_MAX`].
    #[error("genesis subsidy-percent is {found}, expected 0..={max}", max = SUBSIDY_PERCENT_MAX)]
    SubsidyPercent {
        /// Value found.
        found: u8,
    },
    /// The threshold is outside `1..=members`.
    #[error("genesis threshold is {found}, expected 1..={members} (the number of members)")]
    Threshold {
        /// Value found.
        found: u16,
        /// Number of members.
        members: usize,
    },
    /// A founder's organisation name is not valid ledger text.
    #[error("founder {key}: organisation {found:?} is not valid: {reason}")]
    Organisation {
        /// Founder key hex.
        key: String,
        /// The name.
        found: String,
        /// Why.
        reason: String,
    },
    /// A founder key is not usable as an ed25519 verifying key.
    #[error("founder {key}: {reason}")]
    BadKey {
        /// Key hex.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// Two founders have the same key.
    #[error("founder key {key} is listed twice")]
    DuplicateMember {
        /// Key hex.
        key: String,
    },
    /// Member lines are not sorted by key.
    #[error("genesis line {line}: member {key} follows {previous}; member lines must be sorted by key, without repeats")]
    MemberOrder {
        /// Line number.
        line: usize,
        /// Key hex of this line.
        key: String,
        /// Key hex of the previous member line.
        previous: String,
    },
    /// One organisation is listed with two sectors.
    #[error("organisation {organisation:?} is listed as {first} and as {second}")]
    SectorConflict {
        /// Organisation.
        organisation: String,
        /// Sector of its first listing.
        first: &'static str,
        /// The other sector.
        second: &'static str,
    },
    /// A signature line is malformed.
    #[error("genesis line {line}: signature line: {reason}")]
    SignatureLine {
        /// Line number.
        line: usize,
        /// Expected and found.
        reason: String,
    },
    /// A signature line is by a key that is not a founder.
    #[error("genesis line {line}: signature by {key}, which is not a founding member")]
    NotFounder {
        /// Line number (0 when signing, not parsing).
        line: usize,
        /// Key hex.
        key: String,
    },
    /// Signature lines are not sorted by key, or one founder signed twice.
    #[error("genesis line {line}: signature by {key} follows {previous}; signature lines must be sorted by key, one per founder")]
    SignatureOrder {
        /// Line number.
        line: usize,
        /// Key hex of this line.
        key: String,
        /// Key hex of the previous signature line.
        previous: String,
    },
    /// A founder's signature does not verify over the body.
    #[error("signature of founder {organisation} ({key}) does not verify: {reason}")]
    BadSignature {
        /// Founder organisation.
        organisation: String,
        /// Founder key hex.
        key: String,
        /// What failed.
        reason: String,
    },
    /// Not every founder has signed.
    #[error("genesis is signed by {signed} of {members} founders; missing: {}", missing.join(", "))]
    Incomplete {
        /// Founders that signed.
        signed: usize,
        /// Founders.
        members: usize,
        /// Each missing founder as `organisation (key hex)`, in key order.
        missing: Vec<String>,
    },
    /// Two signed documents to merge have different bodies.
    #[error("genesis documents differ: id {expected} and id {found}")]
    DifferentGenesis {
        /// Id (hex) of the document merged into.
        expected: String,
        /// Id (hex) of the other document.
        found: String,
    },
}

/// A founding member of the federation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Founder {
    /// Organisation name (ledger text, at most [`ORGANISATION_BYTES_MAX`] bytes).
    pub organisation: String,
    /// The organisation's sector.
    pub sector: Sector,
    /// The founder's ledger key (its log key and node key).
    pub key: PublicKey,
}

/// The genesis body: federation parameters and founders, validated and sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    /// Federation parameter in percent (`0..=100`), recorded for the market rules; the ledger
    /// does not interpret it.
    pub subsidy_percent: u8,
    /// Distinct current members whose admission votes admit a new member (`1..=members`).
    pub threshold: u16,
    /// The founders, sorted by key bytes, no key twice.
    pub members: Vec<Founder>,
}

fn check_key(key: &PublicKey) -> Result<(), GenesisError> {
    let bad = |reason| GenesisError::BadKey {
        key: hex::encode(key),
        reason,
    };
    let vk = entry::verifying_key("member", key).map_err(|_| bad("not a valid ed25519 point"))?;
    if vk.is_weak() {
        return Err(bad("a weak (small-order) ed25519 key"));
    }
    Ok(())
}

fn check_organisation(f: &Founder) -> Result<(), GenesisError> {
    let bad = |reason: String| GenesisError::Organisation {
        key: hex::encode(f.key),
        found: f.organisation.clone(),
        reason,
    };
    if f.organisation.len() > ORGANISATION_BYTES_MAX {
        return Err(bad(format!(
            "{} bytes, more than ORGANISATION_BYTES_MAX = {ORGANISATION_BYTES_MAX}",
            f.organisation.len()
        )));
    }
    if !entry::valid_text(&f.organisation) {
        return Err(bad(
            "it must be non-empty and free of control characters".into()
        ));
    }
    Ok(())
}

impl Genesis {
    /// A genesis body: sorts `members` by key and validates everything the format requires
    /// (1..=[`GENESIS_MEMBERS_MAX`] members, distinct valid non-weak keys, organisations that
    /// are ledger text of at most [`ORGANISATION_BYTES_MAX`] bytes with one sector per
    /// organisation, `subsidy_percent <= 100`, `1 <= threshold <= members`).
    pub fn new(
        subsidy_percent: u8,
        threshold: u16,
        mut members: Vec<Founder>,
    ) -> Result<Genesis, GenesisError> {
        members.sort_by_key(|f| f.key);
        let g = Genesis {
            subsidy_percent,
            threshold,
            members,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks every rule of [`Genesis::new`] (members must already be sorted).
    fn validate(&self) -> Result<(), GenesisError> {
        let n = self.members.len();
        if n == 0 || n > GENESIS_MEMBERS_MAX {
            return Err(GenesisError::MemberCount {
                found: n,
                max: GENESIS_MEMBERS_MAX,
            });
        }
        if self.subsidy_percent > SUBSIDY_PERCENT_MAX {
            return Err(GenesisError::SubsidyPercent {
                found: self.subsidy_percent,
            });
        }
        if self.threshold == 0 || usize::from(self.threshold) > n {
            return Err(GenesisError::Threshold {
                found: self.threshold,
                members: n,
            });
        }
        let mut sectors: BTreeMap<&str, Sector> = BTreeMap::new();
        for (i, f) in self.members.iter().enumerate() {
            if i > 0 && self.members[i - 1].key >= f.key {
                if self.members[i - 1].key == f.key {
                    return Err(GenesisError::DuplicateMember {
                        key: hex::encode(f.key),
                    });
                }
                return Err(GenesisError::MemberOrder {
                    line: 0,
                    key: hex::encode(f.key),
                    previous: hex::encode(self.members[i - 1].key),
                });
            }
            check_key(&f.key)?;
            check_organisation(f)?;
            let first = *sectors.entry(&f.organisation).or_insert(f.sector);
            if first != f.sector {
                return Err(GenesisError::SectorConflict {
                    organisation: f.organisation.clone(),
                    first: first.name(),
                    second: f.sector.name(),
                });
            }
        }
        Ok(())
    }

    /// The canonical body text (every line ends with `\n`); the text the founders sign.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{GENESIS_MAGIC}\nsubsidy-percent {}\nthreshold {}\n",
            self.subsidy_percent, self.threshold
        );
        for f in &self.members {
            s.push_str("member ");
            s.push_str(&hex::encode(f.key));
            s.push(' ');
            s.push_str(f.sector.name());
            s.push(' ');
            s.push_str(&f.organisation);
            s.push('\n');
        }
        s
    }

    /// The federation id: SHA-256 of the body bytes.
    pub fn id(&self) -> [u8; 32] {
        Sha256::digest(self.body().as_bytes()).into()
    }

    /// The founder with key `key`, if any.
    pub fn founder(&self, key: &PublicKey) -> Option<&Founder> {
        self.members
            .binary_search_by(|f| f.key.cmp(key))
            .ok()
            .map(|i| &self.members[i])
    }

    /// Parses the body text (which must be exactly [`Genesis::body`] of the result).
    fn parse_body(text: &str) -> Result<Genesis, GenesisError> {
        let bad =
            |line: usize, field: &'static str, expected: &str, found: &str| GenesisError::Line {
                line,
                field,
                expected: expected.to_owned(),
                found: found.chars().take(200).collect(),
            };
        // The caller cut the body after a "\n"; every line ends with one.
        let body = text.strip_suffix('\n').unwrap_or(text);
        let lines: Vec<&str> = body.split('\n').collect();
        if lines.len() > 3 + GENESIS_MEMBERS_MAX {
            return Err(GenesisError::MemberCount {
                found: lines.len().saturating_sub(3),
                max: GENESIS_MEMBERS_MAX,
            });
        }
        let line = |i: usize| lines.get(i).copied();
        let magic = line(0).unwrap_or_default();
        if magic != GENESIS_MAGIC {
            return Err(bad(1, "magic", &format!("{GENESIS_MAGIC:?}"), magic));
        }
        let subsidy_line = line(1).ok_or_else(|| bad(2, "subsidy-percent", "a line", ""))?;
        let subsidy = subsidy_line
            .strip_prefix("subsidy-percent ")
            .and_then(parse_decimal)
            .and_then(|v| u8::try_from(v).ok())
            .ok_or_else(|| {
                bad(
                    2,
                    "subsidy-percent",
                    "\"subsidy-percent <decimal 0..=100, no leading zeros>\"",
                    subsidy_line,
                )
            })?;
        let threshold_line = line(2).ok_or_else(|| bad(3, "threshold", "a line", ""))?;
        let threshold = threshold_line
            .strip_prefix("threshold ")
            .and_then(parse_decimal)
            .and_then(|v| u16::try_from(v).ok())
            .ok_or_else(|| {
                bad(
                    3,
                    "threshold",
                    "\"threshold <decimal 1..=members, no leading zeros>\"",
                    threshold_line,
                )
            })?;
        let mut members: Vec<Founder> = Vec::with_capacity(lines.len().saturating_sub(3));
        for (i, l) in lines.iter().enumerate().skip(3) {
            let n = i + 1;
            let mut parts = l.splitn(4, ' ');
            let (Some("member"), Some(key_hex), Some(sector), Some(organisation)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(
                    n,
                    "member",
                    "\"member <64 hex key> <sector> <organisation>\"",
                    l,
                ));
            };
            let key = parse_key_hex(key_hex)
                .ok_or_else(|| bad(n, "key", "64 lower-case hex digits", key_hex))?;
            let sector: Sector = sector
                .parse()
                .map_err(|_| bad(n, "sector", "public, private, science or startup", sector))?;
            if let Some(prev) = members.last() {
                if prev.key >= key {
                    if prev.key == key {
                        return Err(GenesisError::DuplicateMember {
                            key: hex::encode(key),
                        });
                    }
                    return Err(GenesisError::MemberOrder {
                        line: n,
                        key: hex::encode(key),
                        previous: hex::encode(prev.key),
                    });
                }
            }
            members.push(Founder {
                organisation: organisation.to_owned(),
                sector,
                key,
            });
        }
        let g = Genesis {
            subsidy_percent: subsidy,
            threshold,
            members,
        };
        g.validate()?;
        Ok(g)
    }
}

/// Parses a decimal with no sign and no leading zeros ("0" itself is allowed).
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Parses exactly 64 lower-case hex digits.
fn parse_key_hex(s: &str) -> Option<PublicKey> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(s, &mut key).ok()?;
    Some(key)
}

/// The note key name under which the founder with ledger key `key` signs the genesis body:
/// `leam.member/<64 lower-case hex digits>`.
pub fn signer_name(key: &PublicKey) -> String {
    format!("{MEMBER_NAME_PREFIX}{}", hex::encode(key))
}

/// The note verifier of a founder's genesis signature (type 0x01, named [`signer_name`]).
fn founder_verifier(f: &Founder) -> Result<Verifier, GenesisError> {
    let vk = entry::verifying_key("member", &f.key).map_err(|_| GenesisError::BadKey {
        key: hex::encode(f.key),
        reason: "not a valid ed25519 point",
    })?;
    Verifier::new(&signer_name(&f.key), Algorithm::Ed25519, vk).map_err(|e| {
        GenesisError::BadSignature {
            organisation: f.organisation.clone(),
            key: hex::encode(f.key),
            reason: e.to_string(),
        }
    })
}

/// A genesis body and the founders' signatures on it (one per founder at most, each valid
/// when parsed or added).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedGenesis {
    /// The body. Changing it invalidates the signatures ([`SignedGenesis::verify_complete`]
    /// re-verifies them).
    pub genesis: Genesis,
    /// Founder key → Ed25519 signature over the body; key order is line order.
    signatures: BTreeMap<PublicKey, [u8; ED25519_SIGNATURE_SIZE]>,
}

impl fmt::Display for SignedGenesis {
    /// The encoded document ([`SignedGenesis::encode`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl SignedGenesis {
    /// The document with no signature yet (what `leam genesis create` writes).
    pub fn unsigned(g: Genesis) -> SignedGenesis {
        SignedGenesis {
            genesis: g,
            signatures: BTreeMap::new(),
        }
    }

    /// Parses a document strictly: at most [`GENESIS_BYTES_MAX`] bytes of UTF-8; the body up
    /// to the first blank line, canonical ([`Genesis::body`] of the result) and valid
    /// ([`Genesis::new`]'s rules); then zero or more signature lines, each a signed-note
    /// line by `leam.member/<key>` of a founder with the key ID of that name and key and a
    /// 64-byte Ed25519 signature that verifies over the body, sorted by key with no founder
    /// twice. Hence `encode(parse(b)) == b` for every accepted `b`.
    pub fn parse(bytes: &[u8]) -> Result<SignedGenesis, GenesisError> {
        if bytes.len() > GENESIS_BYTES_MAX {
            return Err(GenesisError::TooLarge {
                found: bytes.len(),
                max: GENESIS_BYTES_MAX,
            });
        }
        let s = std::str::from_utf8(bytes).map_err(|e| GenesisError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        // The body has no blank line, so the first "\n\n" ends it.
        let split = s.find("\n\n").ok_or(GenesisError::MissingBlankLine)?;
        let (body, block) = (&s[..split + 1], &s[split + 2..]);
        let genesis = Genesis::parse_body(body)?;
        // parse_body accepts only the canonical form; check anyway, cheaply.
        if genesis.body() != body {
            return Err(GenesisError::Line {
                line: 1,
                field: "body",
                expected: "the canonical body".into(),
                found: "another encoding".into(),
            });
        }
        let mut out = SignedGenesis::unsigned(genesis);
        if block.is_empty() {
            return Ok(out);
        }
        let first_line = body.matches('\n').count() + 2;
        let Some(block) = block.strip_suffix('\n') else {
            return Err(GenesisError::SignatureLine {
                line: first_line + block.matches('\n').count(),
                reason: "the last signature line does not end with a newline".into(),
            });
        };
        let lines: Vec<&str> = block.split('\n').collect();
        if lines.len() > out.genesis.members.len() {
            return Err(GenesisError::SignatureLine {
                line: first_line + out.genesis.members.len(),
                reason: format!(
                    "{} signature lines, but there are only {} founders",
                    lines.len(),
                    out.genesis.members.len()
                ),
            });
        }
        let text = out.genesis.body();
        let mut previous: Option<PublicKey> = None;
        for (i, l) in lines.iter().enumerate() {
            let line = first_line + i;
            let (key, sig) = parse_signature_line(l, line)?;
            let Some(founder) = out.genesis.founder(&key) else {
                return Err(GenesisError::NotFounder {
                    line,
                    key: hex::encode(key),
                });
            };
            if let Some(prev) = previous {
                if prev >= key {
                    return Err(GenesisError::SignatureOrder {
                        line,
                        key: hex::encode(key),
                        previous: hex::encode(prev),
                    });
                }
            }
            verify_founder(founder, &text, &sig)?;
            previous = Some(key);
            out.signatures.insert(key, sig);
        }
        Ok(out)
    }

    /// The document: body, blank line, one signature line per signature, in key order.
    pub fn encode(&self) -> String {
        let mut s = self.genesis.body();
        s.push('\n');
        for (key, sig) in &self.signatures {
            let name = signer_name(key);
            let line = note::Signature {
                key_id: note::key_id(&name, Algorithm::Ed25519, key),
                name,
                sig: sig.to_vec(),
            }
            .line();
            s.push_str(&line);
        }
        s
    }

    /// Signs the body with founder key `key` (note signer [`signer_name`]). Replaces the
    /// founder's earlier signature if there is one; Ed25519 is deterministic, so signing twice
    /// yields the same document. Refuses a key that is not a founder.
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), GenesisError> {
        let public = key.verifying_key().to_bytes();
        let founder = self
            .genesis
            .founder(&public)
            .ok_or_else(|| GenesisError::NotFounder {
                line: 0,
                key: hex::encode(public),
            })?;
        let fail = |e: note::NoteError| GenesisError::BadSignature {
            organisation: founder.organisation.clone(),
            key: hex::encode(public),
            reason: e.to_string(),
        };
        let signature = Signer::new(&signer_name(&public), key.clone())
            .and_then(|signer| signer.sign(&self.genesis.body()))
            .map_err(fail)?;
        let sig: [u8; ED25519_SIGNATURE_SIZE] = signature
            .sig
            .as_slice()
            .try_into()
            .expect("an Ed25519 note signature is 64 bytes");
        self.signatures.insert(public, sig);
        Ok(())
    }

    /// Adds the signatures of `other` (the same body, each signature verified) that `self`
    /// lacks: how signatures collected by different founders are combined.
    pub fn merge(&mut self, other: &SignedGenesis) -> Result<(), GenesisError> {
        let (mine, theirs) = (self.genesis.id(), other.genesis.id());
        if mine != theirs {
            return Err(GenesisError::DifferentGenesis {
                expected: hex::encode(mine),
                found: hex::encode(theirs),
            });
        }
        let text = self.genesis.body();
        let mut add = Vec::new();
        for (key, sig) in &other.signatures {
            if self.signatures.contains_key(key) {
                continue;
            }
            let founder = self.genesis.founder(key).ok_or(GenesisError::NotFounder {
                line: 0,
                key: hex::encode(key),
            })?;
            verify_founder(founder, &text, sig)?;
            add.push((*key, *sig));
        }
        self.signatures.extend(add);
        Ok(())
    }

    /// Keys of the founders with a signature line, in key order.
    pub fn signed_by(&self) -> Vec<PublicKey> {
        self.signatures.keys().copied().collect()
    }

    /// Keys of the founders without a signature line, in key order.
    pub fn missing_signatures(&self) -> Vec<PublicKey> {
        self.genesis
            .members
            .iter()
            .map(|f| f.key)
            .filter(|k| !self.signatures.contains_key(k))
            .collect()
    }

    /// The genesis, if the body is valid, every founder signed it and every signature
    /// verifies over the current body; otherwise the error names the missing founders
    /// (organisation and key) or the founder whose signature fails.
    pub fn verify_complete(&self) -> Result<&Genesis, GenesisError> {
        self.genesis.validate()?;
        let text = self.genesis.body();
        for (key, sig) in &self.signatures {
            let founder = self.genesis.founder(key).ok_or(GenesisError::NotFounder {
                line: 0,
                key: hex::encode(key),
            })?;
            verify_founder(founder, &text, sig)?;
        }
        let missing: Vec<String> = self
            .genesis
            .members
            .iter()
            .filter(|f| !self.signatures.contains_key(&f.key))
            .map(|f| format!("{} ({})", f.organisation, hex::encode(f.key)))
            .collect();
        if !missing.is_empty() {
            return Err(GenesisError::Incomplete {
                signed: self.genesis.members.len() - missing.len(),
                members: self.genesis.members.len(),
                missing,
            });
        }
        Ok(&self.genesis)
    }
}

/// Parses one signature line (without its newline) with the signed-note line parser and
/// checks it is a founder-style line: name `leam.member/<64 hex>`, the key ID of that name
/// and key, 64 signature bytes. Returns the key and the signature.
fn parse_signature_line(
    l: &str,
    line: usize,
) -> Result<(PublicKey, [u8; ED25519_SIGNATURE_SIZE]), GenesisError> {
    let bad = |reason: String| GenesisError::SignatureLine { line, reason };
    // A one-line note reuses note.rs's line syntax (prefix, name rules, canonical base64).
    let probe = format!("g\n\n{l}\n");
    let parsed = Note::parse(probe.as_bytes()).map_err(|e| match e {
        note::NoteError::BadSignatureLine { reason, .. } => bad(reason),
        other => bad(other.to_string()),
    })?;
    let [sig] = parsed.sigs.as_slice() else {
        return Err(bad(format!(
            "expected one signature line, found {}",
            parsed.sigs.len()
        )));
    };
    let key = sig
        .name
        .strip_prefix(MEMBER_NAME_PREFIX)
        .and_then(parse_key_hex)
        .ok_or_else(|| {
            bad(format!(
                "key name must be {MEMBER_NAME_PREFIX}<64 lower-case hex digits>, found {:?}",
                sig.name
            ))
        })?;
    let expected = note::key_id(&sig.name, Algorithm::Ed25519, &key);
    if sig.key_id != expected {
        return Err(bad(format!(
            "key ID {} does not match name {} (expected {})",
            hex::encode(sig.key_id),
            sig.name,
            hex::encode(expected)
        )));
    }
    let bytes: [u8; ED25519_SIGNATURE_SIZE] = sig.sig.as_slice().try_into().map_err(|_| {
        bad(format!(
            "expected {ED25519_SIGNATURE_SIZE} Ed25519 signature bytes after the key ID, found {}",
            sig.sig.len()
        ))
    })?;
    Ok((key, bytes))
}

/// Verifies a founder's Ed25519 signature over body text `text` (strict verification).
fn verify_founder(
    founder: &Founder,
    text: &str,
    sig: &[u8; ED25519_SIGNATURE_SIZE],
) -> Result<(), GenesisError> {
    founder_verifier(founder)?
        .verify(text, sig)
        .map(|_| ())
        .map_err(|e| GenesisError::BadSignature {
            organisation: founder.organisation.clone(),
            key: hex::encode(founder.key),
            reason: e.to_string(),
        })
}

/// Federation membership (`specs/federation.md` §2): the founders with their genesis
/// membership, plus every key that admission votes from at least `genesis.threshold`
/// distinct current members admit.
///
/// A vote is an [`entry::Admission`] entry (`Body::Admission`) whose author is a current
/// member and whose `member` is neither the author nor already a member. Votes count per
/// (member key, organisation, sector). Rounds repeat until nothing changes, so members
/// admitted in one round vote in the next. When several (organisation, sector) pairs of one
/// key reach the threshold in the same round, the pair with the most votes wins, ties going
/// to the smallest (organisation bytes, sector tag). Deterministic: the result depends only
/// on the set of entries, not on their order. Entries must already be verified.
pub fn members<'a>(
    genesis: &Genesis,
    votes: impl IntoIterator<Item = &'a Entry>,
) -> BTreeMap<PublicKey, Membership> {
    // candidate key -> (organisation, sector) -> distinct voters.
    type Ballots = BTreeMap<PublicKey, BTreeMap<(String, Sector), BTreeSet<PublicKey>>>;
    let mut ballots: Ballots = BTreeMap::new();
    for e in votes {
        if let Body::Admission(a) = &e.body {
            if a.member != e.author {
                ballots
                    .entry(a.member)
                    .or_default()
                    .entry((a.organisation.clone(), a.sector))
                    .or_default()
                    .insert(e.author);
            }
        }
    }
    let mut out: BTreeMap<PublicKey, Membership> = genesis
        .members
        .iter()
        .map(|f| {
            (
                f.key,
                Membership {
                    organisation: f.organisation.clone(),
                    sector: f.sector,
                },
            )
        })
        .collect();
    let threshold = usize::from(genesis.threshold);
    loop {
        let mut admitted: Vec<(PublicKey, Membership)> = Vec::new();
        for (key, options) in &ballots {
            if out.contains_key(key) {
                continue;
            }
            // BTreeMap order is (organisation, sector) ascending, so the first of the most
            // voted wins ties.
            let mut best: Option<(usize, &(String, Sector))> = None;
            for (option, voters) in options {
                let n = voters.iter().filter(|v| out.contains_key(*v)).count();
                if n >= threshold && best.is_none_or(|(m, _)| n > m) {
                    best = Some((n, option));
                }
            }
            if let Some((_, (organisation, sector))) = best {
                admitted.push((
                    *key,
                    Membership {
                        organisation: organisation.clone(),
                        sector: *sector,
                    },
                ));
            }
        }
        if admitted.is_empty() {
            return out;
        }
        out.extend(admitted);
    }
}

/// Distinct current members (of `members`) that voted to admit `key`, over all
/// (organisation, sector) pairs: for explaining why a key is not a member.
pub fn voters<'a>(
    members: &BTreeMap<PublicKey, Membership>,
    key: &PublicKey,
    votes: impl IntoIterator<Item = &'a Entry>,
) -> BTreeSet<PublicKey> {
    votes
        .into_iter()
        .filter_map(|e| match &e.body {
            Body::Admission(a)
                if a.member == *key && e.author != *key && members.contains_key(&e.author) =>
            {
                Some(e.author)
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn founder(seed: u8, org: &str, sector: Sector) -> (SigningKey, Founder) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let f = Founder {
            organisation: org.into(),
            sector,
            key: sk.verifying_key().to_bytes(),
        };
        (sk, f)
    }

    #[test]
    fn new_sorts_and_validates() {
        let (_, a) = founder(1, "A", Sector::Public);
        let (_, b) = founder(2, "B", Sector::Science);
        let g = Genesis::new(0, 1, vec![b.clone(), a.clone()]).unwrap();
        assert!(g.members.windows(2).all(|w| w[0].key < w[1].key));
        assert_eq!(
            Genesis::new(101, 1, vec![a.clone()]),
            Err(GenesisError::SubsidyPercent { found: 101 })
        );
        assert_eq!(
            Genesis::new(0, 2, vec![a.clone()]),
            Err(GenesisError::Threshold {
                found: 2,
                members: 1
            })
        );
        assert!(matches!(
            Genesis::new(0, 1, vec![a.clone(), a.clone()]),
            Err(GenesisError::DuplicateMember { .. })
        ));
        let mut c = b.clone();
        c.organisation = "A".into();
        assert!(matches!(
            Genesis::new(0, 1, vec![a.clone(), c]),
            Err(GenesisError::SectorConflict { .. })
        ));
        assert!(matches!(
            Genesis::new(0, 1, vec![]),
            Err(GenesisError::MemberCount { found: 0, .. })
        ));
    }

    #[test]
    fn sign_is_idempotent_and_refuses_strangers() {
        let (ka, a) = founder(1, "A", Sector::Public);
        let (kb, b) = founder(2, "B", Sector::Science);
        let mut s = SignedGenesis::unsigned(Genesis::new(0, 1, vec![a, b]).unwrap());
        s.sign(&ka).unwrap();
        let once = s.encode();
        s.sign(&ka).unwrap();
        assert_eq!(s.encode(), once);
        assert!(matches!(
            s.sign(&SigningKey::from_bytes(&[9; 32])),
            Err(GenesisError::NotFounder { .. })
        ));
        let e = s.verify_complete().unwrap_err();
        assert!(e.to_string().contains("missing: B ("), "{e}");
        s.sign(&kb).unwrap();
        s.verify_complete().unwrap();
    }
}
