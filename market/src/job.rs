//! Job descriptions: what a bidder buys, in one canonical text encoding whose SHA-256 is the
//! job id (`specs/market.md` §2).
//!
//! The encoding is line-based text rather than TOML or JSON because it is signed and hashed: an
//! auditor in another language re-implements it from the spec alone, and every job has exactly
//! one encoding (fixed field order, single spaces, decimal integers without leading zeros,
//! lower-case hex). Users write the friendlier [`JobFile`] (TOML), which the node resolves
//! (corpus file → hash, deadline → time, secret seed → commitment) into a [`Job`].

use std::fmt::Write as _;

use leam_ledger::entry::{valid_text, Digest32, PublicKey, JOB_BYTES_MAX};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// First line of every job description.
pub const JOB_HEADER: &str = "leam-job/v1";
/// Largest job name, UTF-8 bytes.
pub const JOB_NAME_BYTES_MAX: usize = 128;
/// Most referees a job may name.
pub const REFEREES_MAX: usize = 16;
/// Most DiLoCo rounds of one job.
pub const ROUNDS_MAX: u32 = 10_000;
/// Most shards per round.
pub const SHARDS_PER_ROUND_MAX: u32 = 1_024;
/// Most inner steps per shard.
pub const INNER_STEPS_MAX: u32 = 100_000;
/// Parts per million: the unit of the replication fraction.
pub const PPM: u32 = 1_000_000;
/// Domain separator of the replication seed commitment.
pub const SEED_COMMITMENT_CONTEXT: &[u8] = b"leam/replication-seed/v1\0";

/// The model a job trains (the nanoGPT family of `compute/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Transformer layers.
    pub n_layer: u32,
    /// Attention heads.
    pub n_head: u32,
    /// Embedding width.
    pub n_embd: u32,
    /// Context length, tokens.
    pub block_size: u32,
    /// Sequences per batch.
    pub batch: u32,
    /// Seed of the parameter initialisation.
    pub init_seed: u64,
}

impl ModelSpec {
    /// nanoGPT's CPU configuration for char-level Shakespeare (4 layers, 4 heads, 128 wide,
    /// context 64, batch 12).
    /// Mirrors `leam_compute::model::preset::NANOGPT_CPU` (market does not depend on compute;
    /// `leam-jobs` tests that the two agree).
    pub const NANOGPT_CPU: ModelSpec = ModelSpec {
        n_layer: 4,
        n_head: 4,
        n_embd: 128,
        block_size: 64,
        batch: 12,
        init_seed: 1337,
    };

    /// `leam demo`'s shards: 2 layers, 4 heads, 64 wide, context 32, batch 8 (mirrors the
    /// `demo` preset of `leam train`; `leam-node` tests that the two agree).
    pub const DEMO: ModelSpec = ModelSpec {
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        block_size: 32,
        batch: 8,
        init_seed: 1337,
    };
}

/// A job description (`specs/market.md` §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Human-readable name (non-empty, no control characters, ≤ [`JOB_NAME_BYTES_MAX`]).
    pub name: String,
    /// The model.
    pub model: ModelSpec,
    /// SHA-256 of the corpus (a data pool), hex in JSON.
    #[serde(serialize_with = "ser_hex")]
    pub corpus_sha256: Digest32,
    /// Corpus size, bytes.
    pub corpus_bytes: u64,
    /// DiLoCo rounds (outer steps).
    pub rounds: u32,
    /// Shards per round (one provider trains one shard).
    pub shards_per_round: u32,
    /// Inner (local) steps per shard.
    pub inner_steps: u32,
    /// Fraction of shards replicated on a second provider, parts per million.
    pub replication_ppm: u32,
    /// SHA-256 commitment to the bidder's secret replication seed ([`seed_commitment`]).
    #[serde(serialize_with = "ser_hex")]
    pub seed_commitment: Digest32,
    /// Members whose verdicts on this job count (strictly ascending, 1..=[`REFEREES_MAX`]).
    #[serde(serialize_with = "ser_hex_list")]
    pub referees: Vec<PublicKey>,
    /// The work must be done by this time (Unix ms).
    pub deadline_ms: u64,
    /// Highest price the bidder pays, credits (EUR cents) per 1,000 compute units.
    pub max_price_cents_per_kilo_unit: u64,
    /// How long the bidder waits for a shard's result before the provider loses it
    /// (milliseconds, [`SHARD_TIMEOUT_MS_RANGE`]); `None`: the timeout follows each provider's
    /// offered throughput.
    pub shard_timeout_ms: Option<u64>,
}

/// Bounds of a job's shard timeout: a second to a day.
pub const SHARD_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=86_400_000;

fn ser_hex<S: serde::Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

fn ser_hex_list<S: serde::Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(hex::encode))
}

/// The commitment a job publishes for the bidder's secret replication seed.
pub fn seed_commitment(seed: &[u8; 32]) -> Digest32 {
    let mut h = Sha256::new();
    h.update(SEED_COMMITMENT_CONTEXT);
    h.update(seed);
    h.finalize().into()
}

/// Why bytes are not a canonical job description, or a job breaks a bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Too long for a ledger entry.
    #[error("job description is {found} bytes, more than the {max} a job entry holds")]
    TooLong {
        /// Bytes found.
        found: usize,
        /// Limit.
        max: usize,
    },
    /// Not UTF-8, or no final newline.
    #[error("job description must be UTF-8 text ending in a newline")]
    NotText,
    /// A line is missing or names another field.
    #[error("line {line}: expected field `{expected}`, found {found:?}")]
    Field {
        /// 1-based line number.
        line: usize,
        /// Field expected there.
        expected: &'static str,
        /// What the line holds.
        found: String,
    },
    /// A value is malformed or out of bounds.
    #[error("line {line}: field `{field}`: {reason}")]
    Value {
        /// 1-based line number (0 when built from a job file).
        line: usize,
        /// Field.
        field: &'static str,
        /// What was expected.
        reason: String,
    },
    /// Lines after the last field.
    #[error("line {line}: unexpected line after the last field: {found:?}")]
    Trailing {
        /// 1-based line number.
        line: usize,
        /// Its text.
        found: String,
    },
}

impl Job {
    /// Total shards the job trains (rounds × shards per round), before replicas.
    pub fn shards(&self) -> u64 {
        u64::from(self.rounds) * u64::from(self.shards_per_round)
    }

    /// Whether `key` may judge this job's shards.
    pub fn is_referee(&self, key: &PublicKey) -> bool {
        self.referees.binary_search(key).is_ok()
    }

    /// Check every bound of `specs/market.md` §2.
    pub fn check(&self) -> Result<(), JobError> {
        let v = |field, reason: String| {
            Err(JobError::Value {
                line: 0,
                field,
                reason,
            })
        };
        if !valid_text(&self.name)
            || self.name.len() > JOB_NAME_BYTES_MAX
            || self.name != self.name.trim()
        {
            return v(
                "name",
                format!("expected 1..={JOB_NAME_BYTES_MAX} bytes of text without control characters or surrounding spaces, found {:?}", self.name),
            );
        }
        let m = &self.model;
        for (field, x, max) in [
            ("model.n_layer", m.n_layer, 64),
            ("model.n_head", m.n_head, 64),
            ("model.n_embd", m.n_embd, 4096),
            ("model.block_size", m.block_size, 4096),
            ("model.batch", m.batch, 1024),
        ] {
            if x == 0 || x > max {
                return v(field, format!("expected 1..={max}, found {x}"));
            }
        }
        if !m.n_embd.is_multiple_of(m.n_head) {
            return v(
                "model.n_embd",
                format!("{} is not a multiple of n_head {}", m.n_embd, m.n_head),
            );
        }
        for (field, x, max) in [
            ("rounds", self.rounds, ROUNDS_MAX),
            (
                "shards_per_round",
                self.shards_per_round,
                SHARDS_PER_ROUND_MAX,
            ),
            ("inner_steps", self.inner_steps, INNER_STEPS_MAX),
        ] {
            if x == 0 || x > max {
                return v(field, format!("expected 1..={max}, found {x}"));
            }
        }
        if self.replication_ppm > PPM {
            return v(
                "replication_ppm",
                format!(
                    "expected 0..={PPM} (parts per million), found {}",
                    self.replication_ppm
                ),
            );
        }
        if self.referees.is_empty() || self.referees.len() > REFEREES_MAX {
            return v(
                "referees",
                format!(
                    "expected 1..={REFEREES_MAX} referees, found {}",
                    self.referees.len()
                ),
            );
        }
        if self.referees.windows(2).any(|w| w[0] >= w[1]) {
            return v(
                "referees",
                "expected strictly ascending keys (sorted, no duplicates)".into(),
            );
        }
        if self.corpus_bytes == 0 {
            return v("corpus", "expected a non-empty corpus".into());
        }
        if let Some(t) = self.shard_timeout_ms {
            if !SHARD_TIMEOUT_MS_RANGE.contains(&t) {
                return v(
                    "shard-timeout",
                    format!(
                        "expected {}..={} ms, found {t}",
                        SHARD_TIMEOUT_MS_RANGE.start(),
                        SHARD_TIMEOUT_MS_RANGE.end()
                    ),
                );
            }
        }
        Ok(())
    }

    /// The canonical encoding (`specs/market.md` §2). Panics if [`Job::check`] fails: encode
    /// only checked jobs.
    pub fn encode(&self) -> Vec<u8> {
        self.check().expect("encode only checked jobs");
        let m = &self.model;
        let mut s = String::new();
        let _ = writeln!(s, "{JOB_HEADER}");
        let _ = writeln!(s, "name {}", self.name);
        let _ = writeln!(
            s,
            "model {} {} {} {} {} {}",
            m.n_layer, m.n_head, m.n_embd, m.block_size, m.batch, m.init_seed
        );
        let _ = writeln!(
            s,
            "corpus {} {}",
            hex::encode(self.corpus_sha256),
            self.corpus_bytes
        );
        let _ = writeln!(
            s,
            "schedule {} {} {}",
            self.rounds, self.shards_per_round, self.inner_steps
        );
        let _ = writeln!(
            s,
            "replication {} {}",
            self.replication_ppm,
            hex::encode(self.seed_commitment)
        );
        for r in &self.referees {
            let _ = writeln!(s, "referee {}", hex::encode(r));
        }
        let _ = writeln!(s, "deadline {}", self.deadline_ms);
        let _ = writeln!(s, "max-price {}", self.max_price_cents_per_kilo_unit);
        if let Some(t) = self.shard_timeout_ms {
            let _ = writeln!(s, "shard-timeout {t}");
        }
        s.into_bytes()
    }

    /// The job id: SHA-256 of the canonical encoding.
    pub fn id(&self) -> Digest32 {
        Sha256::digest(self.encode()).into()
    }

    /// Decode a canonical description; anything but the one encoding of a checked job fails
    /// with the line and field at fault.
    pub fn decode(bytes: &[u8]) -> Result<Job, JobError> {
        if bytes.len() > JOB_BYTES_MAX {
            return Err(JobError::TooLong {
                found: bytes.len(),
                max: JOB_BYTES_MAX,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| JobError::NotText)?;
        let body = text.strip_suffix('\n').ok_or(JobError::NotText)?;
        let lines: Vec<&str> = body.split('\n').collect();
        let mut p = Parser {
            lines: &lines,
            at: 0,
        };
        let header = p.line("leam-job/v1")?;
        if header != JOB_HEADER {
            return Err(JobError::Field {
                line: 1,
                expected: "leam-job/v1",
                found: header.to_owned(),
            });
        }
        let name = p.field("name")?.to_owned();
        let model = p.field("model")?;
        let model = {
            let line = p.at;
            let f = words(model, 6, line, "model")?;
            ModelSpec {
                n_layer: num(f[0], line, "model")?,
                n_head: num(f[1], line, "model")?,
                n_embd: num(f[2], line, "model")?,
                block_size: num(f[3], line, "model")?,
                batch: num(f[4], line, "model")?,
                init_seed: num(f[5], line, "model")?,
            }
        };
        let corpus = p.field("corpus")?;
        let f = words(corpus, 2, p.at, "corpus")?;
        let corpus_sha256 = digest(f[0], p.at, "corpus")?;
        let corpus_bytes = num(f[1], p.at, "corpus")?;
        let schedule = p.field("schedule")?;
        let f = words(schedule, 3, p.at, "schedule")?;
        let (rounds, shards_per_round, inner_steps) = (
            num(f[0], p.at, "schedule")?,
            num(f[1], p.at, "schedule")?,
            num(f[2], p.at, "schedule")?,
        );
        let replication = p.field("replication")?;
        let f = words(replication, 2, p.at, "replication")?;
        let replication_ppm = num(f[0], p.at, "replication")?;
        let seed_commitment = digest(f[1], p.at, "replication")?;
        let mut referees = Vec::new();
        while p.peek_is("referee") {
            let r = p.field("referee")?;
            referees.push(digest(r, p.at, "referee")?);
        }
        let deadline_ms = num(p.field("deadline")?, p.at, "deadline")?;
        let max_price_cents_per_kilo_unit = num(p.field("max-price")?, p.at, "max-price")?;
        let shard_timeout_ms = if p.peek_is("shard-timeout") {
            Some(num(p.field("shard-timeout")?, p.at, "shard-timeout")?)
        } else {
            None
        };
        if let Some(extra) = lines.get(p.at) {
            return Err(JobError::Trailing {
                line: p.at + 1,
                found: (*extra).to_owned(),
            });
        }
        let job = Job {
            name,
            model,
            corpus_sha256,
            corpus_bytes,
            rounds,
            shards_per_round,
            inner_steps,
            replication_ppm,
            seed_commitment,
            referees,
            deadline_ms,
            max_price_cents_per_kilo_unit,
            shard_timeout_ms,
        };
        job.check()?;
        // A checked job has one encoding; anything else (e.g. a name with inner double
        // spaces is fine, but a value that parsed loosely) must not hash to another id.
        if job.encode() != bytes {
            return Err(JobError::Value {
                line: 0,
                field: "encoding",
                reason: "not the canonical encoding of the job it describes".into(),
            });
        }
        Ok(job)
    }
}

struct Parser<'a> {
    lines: &'a [&'a str],
    at: usize,
}

impl<'a> Parser<'a> {
    fn line(&mut self, expected: &'static str) -> Result<&'a str, JobError> {
        let l = self.lines.get(self.at).ok_or(JobError::Field {
            line: self.at + 1,
            expected,
            found: "end of description".into(),
        })?;
        self.at += 1;
        Ok(l)
    }
    fn peek_is(&self, name: &str) -> bool {
        self.lines
            .get(self.at)
            .and_then(|l| l.split_once(' '))
            .is_some_and(|(n, _)| n == name)
    }
    /// The value of the next line, which must be `<name> <value>`.
    fn field(&mut self, name: &'static str) -> Result<&'a str, JobError> {
        let l = self.line(name)?;
        match l.split_once(' ') {
            Some((n, v)) if n == name => Ok(v),
            _ => Err(JobError::Field {
                line: self.at,
                expected: name,
                found: l.to_owned(),
            }),
        }
    }
}

fn words<'a>(
    v: &'a str,
    n: usize,
    line: usize,
    field: &'static str,
) -> Result<Vec<&'a str>, JobError> {
    let f: Vec<&str> = v.split(' ').collect();
    if f.len() != n {
        return Err(JobError::Value {
            line,
            field,
            reason: format!("expected {n} values separated by single spaces, found {v:?}"),
        });
    }
    Ok(f)
}

fn num<T: std::str::FromStr>(s: &str, line: usize, field: &'static str) -> Result<T, JobError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical
        .then(|| s.parse().ok())
        .flatten()
        .ok_or(JobError::Value {
            line,
            field,
            reason: format!(
                "expected a decimal integer without sign or leading zeros, found {s:?}"
            ),
        })
}

fn digest(s: &str, line: usize, field: &'static str) -> Result<[u8; 32], JobError> {
    let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut out = [0u8; 32];
    if ok && hex::decode_to_slice(s, &mut out).is_ok() {
        return Ok(out);
    }
    Err(JobError::Value {
        line,
        field,
        reason: format!("expected 64 lower-case hex digits, found {s:?}"),
    })
}

/// The job file a bidder writes (`leam bid --job JOB.toml`), before the node resolves it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Job name.
    pub name: String,
    /// A model preset (`nanogpt-cpu`); fields in `model` override it.
    #[serde(default)]
    pub preset: Option<String>,
    /// Model fields (all required without a preset).
    #[serde(default)]
    pub model: Option<ModelFile>,
    /// Corpus: a path (relative to the job file) to a file published as a data pool.
    pub corpus: String,
    /// DiLoCo rounds.
    pub rounds: u32,
    /// Shards per round.
    pub shards_per_round: u32,
    /// Inner steps per shard.
    pub inner_steps: u32,
    /// Replicated fraction, percent with up to four decimals (`10` or `2.5`).
    #[serde(default)]
    pub replication_percent: Option<f64>,
    /// Referees: node keys (hex) of members whose verdicts count.
    pub referees: Vec<String>,
    /// Minutes from the bid until the deadline.
    pub deadline_minutes: u64,
    /// Highest price, credits (EUR cents) per 1,000 compute units.
    pub max_price_cents_per_kilo_unit: u64,
    /// Seconds the bidder waits for a shard's result before leasing it again (default: from
    /// each provider's offered throughput).
    #[serde(default)]
    pub shard_timeout_seconds: Option<u64>,
}

/// Model fields of a job file (any subset overrides the preset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Layers.
    pub n_layer: Option<u32>,
    /// Heads.
    pub n_head: Option<u32>,
    /// Width.
    pub n_embd: Option<u32>,
    /// Context.
    pub block_size: Option<u32>,
    /// Batch.
    pub batch: Option<u32>,
    /// Initialisation seed.
    pub init_seed: Option<u64>,
}

impl JobFile {
    /// Parse a job file.
    pub fn parse(text: &str) -> Result<JobFile, JobError> {
        toml::from_str(text).map_err(|e| JobError::Value {
            line: 0,
            field: "job file",
            reason: e.to_string(),
        })
    }

    /// The model this file asks for.
    pub fn model(&self) -> Result<ModelSpec, JobError> {
        let base = match self.preset.as_deref() {
            Some("nanogpt-cpu") => Some(ModelSpec::NANOGPT_CPU),
            Some("demo") => Some(ModelSpec::DEMO),
            None => None,
            Some(other) => {
                return Err(JobError::Value {
                    line: 0,
                    field: "preset",
                    reason: format!("unknown preset {other:?} (expected nanogpt-cpu or demo)"),
                })
            }
        };
        let f = self.model.unwrap_or_default();
        let need = |x: Option<u32>, b: Option<u32>, field| {
            x.or(b).ok_or(JobError::Value {
                line: 0,
                field,
                reason: "missing (give it in [model] or set a preset)".into(),
            })
        };
        Ok(ModelSpec {
            n_layer: need(f.n_layer, base.map(|b| b.n_layer), "model.n_layer")?,
            n_head: need(f.n_head, base.map(|b| b.n_head), "model.n_head")?,
            n_embd: need(f.n_embd, base.map(|b| b.n_embd), "model.n_embd")?,
            block_size: need(f.block_size, base.map(|b| b.block_size), "model.block_size")?,
            batch: need(f.batch, base.map(|b| b.batch), "model.batch")?,
            init_seed: f.init_seed.or(base.map(|b| b.init_seed)).unwrap_or(1337),
        })
    }

    /// The replication fraction in parts per million.
    pub fn replication_ppm(&self) -> Result<u32, JobError> {
        let pct = self.replication_percent.unwrap_or(10.0);
        if !(0.0..=100.0).contains(&pct) {
            return Err(JobError::Value {
                line: 0,
                field: "replication_percent",
                reason: format!("expected 0..=100, found {pct}"),
            });
        }
        Ok((pct * 10_000.0).round() as u32)
    }

    /// Referee keys, sorted.
    pub fn referee_keys(&self) -> Result<Vec<PublicKey>, JobError> {
        let mut keys = self
            .referees
            .iter()
            .map(|r| digest(r, 0, "referees"))
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }
}
