//! The market's pure parts: job encoding, the clearing rule's properties, replica selection, and
//! the audit's detection of every kind of market record the rule or the lease does not back.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use leam_ledger::entry::*;
use leam_market::audit::audit;
use leam_market::clearing::{self, capacity_shards, clear, lease_terms, Ask, Request};
use leam_market::job::{seed_commitment, Job, JobFile, ModelSpec, SHARD_TIMEOUT_MS_RANGE};
use leam_market::replicate::{catch_probability_ppb, opens, replicated};
use leam_market::settle::{self, owed_cents, split};
use proptest::prelude::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn pk(seed: u8) -> PublicKey {
    key(seed).verifying_key().to_bytes()
}

fn job(referees: Vec<PublicKey>) -> Job {
    let mut referees = referees;
    referees.sort_unstable();
    Job {
        name: "shakespeare char".into(),
        model: ModelSpec::NANOGPT_CPU,
        corpus_sha256: [7; 32],
        corpus_bytes: 1_115_394,
        rounds: 3,
        shards_per_round: 2,
        inner_steps: 30,
        replication_ppm: 0,
        seed_commitment: seed_commitment(&[9; 32]),
        referees,
        deadline_ms: 10_000_000,
        max_price_cents_per_kilo_unit: 60,
        shard_timeout_ms: None,
    }
}

fn job_strategy() -> impl Strategy<Value = Job> {
    (
        "[a-zA-Z0-9][a-zA-Z0-9 .-]{0,40}[a-zA-Z0-9]",
        (
            1u32..8,
            1u32..8,
            1u32..64,
            1u32..512,
            1u32..64,
            any::<u64>(),
        ),
        (any::<[u8; 32]>(), 1u64..u64::MAX),
        (1u32..100, 1u32..64, 1u32..5000, 0u32..=1_000_000),
        prop::collection::btree_set(any::<[u8; 32]>(), 1..5),
        (
            any::<u64>(),
            any::<u64>(),
            prop::option::of(SHARD_TIMEOUT_MS_RANGE),
        ),
    )
        .prop_map(|(name, m, c, s, referees, d)| Job {
            name,
            model: ModelSpec {
                n_layer: m.0,
                n_head: m.1,
                n_embd: m.1 * m.2,
                block_size: m.3,
                batch: m.4,
                init_seed: m.5,
            },
            corpus_sha256: c.0,
            corpus_bytes: c.1,
            rounds: s.0,
            shards_per_round: s.1,
            inner_steps: s.2,
            replication_ppm: s.3,
            seed_commitment: [3; 32],
            referees: referees.into_iter().collect(),
            deadline_ms: d.0,
            max_price_cents_per_kilo_unit: d.1,
            shard_timeout_ms: d.2,
        })
}

/// The shard timeout is an optional last line: without it a job keeps its encoding (and id),
/// with it the line is checked like every other.
#[test]
fn the_shard_timeout_is_an_optional_checked_line() {
    let mut j = job(vec![pk(1)]);
    let plain = j.encode();
    assert!(!String::from_utf8_lossy(&plain).contains("shard-timeout"));
    j.shard_timeout_ms = Some(90_000);
    let bytes = j.encode();
    assert!(bytes.ends_with(b"max-price 60\nshard-timeout 90000\n"));
    assert_eq!(Job::decode(&bytes).unwrap(), j);
    let too_short = String::from_utf8(bytes.clone())
        .unwrap()
        .replace("shard-timeout 90000", "shard-timeout 999");
    let e = Job::decode(too_short.as_bytes()).unwrap_err().to_string();
    assert!(
        e.contains("shard-timeout") && e.contains("1000..=86400000"),
        "{e}"
    );
    let misplaced = String::from_utf8(plain)
        .unwrap()
        .replace("deadline", "shard-timeout 90000\ndeadline");
    assert!(Job::decode(misplaced.as_bytes()).is_err());
}

proptest! {
    #[test]
    fn job_encoding_round_trips(j in job_strategy()) {
        let bytes = j.encode();
        prop_assert_eq!(Job::decode(&bytes).unwrap(), j);
    }

    /// Whatever a mutation gives, a decoded job re-encodes to exactly the bytes it came from:
    /// one job, one encoding, one id.
    #[test]
    fn job_decode_accepts_only_canonical_bytes(j in job_strategy(), at in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut bytes = j.encode();
        let i = at.index(bytes.len());
        bytes[i] = b;
        if let Ok(other) = Job::decode(&bytes) {
            prop_assert_eq!(other.encode(), bytes);
        }
    }

    /// The rule's invariants on random books.
    #[test]
    fn clearing_invariants(
        asks in prop::collection::vec((0u8..12, 1u64..100, 0u64..6), 0..10),
        shards in 0u64..20,
        max in 0u64..120,
    ) {
        let job_id = [1u8; 32];
        let bidder = pk(200);
        let asks: Vec<Ask> = asks.iter().enumerate().map(|(i, (p, price, cap))| Ask {
            provider: pk(*p),
            offer_id: i as u64,
            price_cents_per_kilo_unit: *price,
            capacity_shards: *cap,
        }).collect();
        let out = clear(&job_id, &bidder, shards, max, &asks);
        let sold: u64 = out.assignments.iter().map(|a| u64::from(a.shards)).sum();
        prop_assert_eq!(sold + out.unserved_shards, shards);
        let eligible: u64 = asks.iter().filter(|a| a.price_cents_per_kilo_unit <= max).map(|a| a.capacity_shards).sum();
        prop_assert_eq!(sold, shards.min(eligible));
        for a in &out.assignments {
            let ask = asks.iter().find(|x| x.provider == a.provider && x.offer_id == a.offer_id).unwrap();
            prop_assert!(ask.price_cents_per_kilo_unit <= out.price_cents_per_kilo_unit, "an assigned ask is above the price");
            prop_assert!(u64::from(a.shards) <= ask.capacity_shards);
            // No cheaper ask with capacity left was passed over.
            for other in &asks {
                let used: u64 = out.assignments.iter().filter(|x| x.provider == other.provider && x.offer_id == other.offer_id).map(|x| u64::from(x.shards)).sum();
                if other.price_cents_per_kilo_unit < ask.price_cents_per_kilo_unit {
                    prop_assert_eq!(used, other.capacity_shards, "a cheaper ask kept capacity");
                }
            }
        }
        if !out.assignments.is_empty() {
            prop_assert!(out.price_cents_per_kilo_unit <= max);
        }
        // Order of the book does not matter.
        let mut rev = asks.clone();
        rev.reverse();
        prop_assert_eq!(clear(&job_id, &bidder, shards, max, &rev), out);
    }
}

#[test]
fn job_decode_names_line_and_field() {
    let j = job(vec![pk(1)]);
    let text = String::from_utf8(j.encode()).unwrap();
    let bad = text.replace("schedule 3 2 30", "schedule 3 02 30");
    let err = Job::decode(bad.as_bytes()).unwrap_err().to_string();
    assert!(
        err.contains("line 5") && err.contains("schedule") && err.contains("leading zeros"),
        "{err}"
    );
    let bad = text.replace("deadline", "dead-line");
    let err = Job::decode(bad.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("expected field `deadline`"), "{err}");
    let unsorted = text.replace(&hex::encode(pk(1)), &"f".repeat(64)) + "";
    assert!(Job::decode(unsorted.as_bytes()).is_ok());
}

#[test]
fn job_file_resolves_preset_and_overrides() {
    let f = JobFile::parse(
        r#"
name = "tiny"
preset = "nanogpt-cpu"
corpus = "data/tinyshakespeare.txt"
rounds = 2
shards_per_round = 4
inner_steps = 50
replication_percent = 2.5
referees = ["0202020202020202020202020202020202020202020202020202020202020202", "0101010101010101010101010101010101010101010101010101010101010101"]
deadline_minutes = 30
max_price_cents_per_kilo_unit = 80
[model]
n_layer = 2
"#,
    )
    .unwrap();
    let m = f.model().unwrap();
    assert_eq!(
        (m.n_layer, m.n_head, m.n_embd, m.block_size),
        (2, 4, 128, 64)
    );
    assert_eq!(f.replication_ppm().unwrap(), 25_000);
    let r = f.referee_keys().unwrap();
    assert_eq!(r, vec![[1u8; 32], [2u8; 32]]);
    let with_preset = |preset: &str| {
        JobFile::parse(&format!(
            "name = \"d\"\npreset = \"{preset}\"\ncorpus = \"c.txt\"\nrounds = 1\nshards_per_round = 1\ninner_steps = 2\nreferees = []\ndeadline_minutes = 5\nmax_price_cents_per_kilo_unit = 1\n"
        ))
        .unwrap()
    };
    assert_eq!(
        with_preset("demo").model().unwrap(),
        leam_market::job::ModelSpec::DEMO
    );
    let err = with_preset("gpt-5").model().unwrap_err().to_string();
    assert!(
        err.contains("\"gpt-5\"") && err.contains("nanogpt-cpu or demo"),
        "{err}"
    );
    let err = JobFile::parse("name = \"x\"\nbogus = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn uniform_price_is_the_first_rejected_ask() {
    let id = [1u8; 32];
    let bidder = pk(9);
    let ask = |p: u8, price, cap| Ask {
        provider: pk(p),
        offer_id: 1,
        price_cents_per_kilo_unit: price,
        capacity_shards: cap,
    };
    // Cheapest fills 3, the second 1 of its 4: the first unsold unit is the second's, at 55.
    let out = clear(
        &id,
        &bidder,
        4,
        60,
        &[ask(1, 55, 4), ask(2, 40, 3), ask(3, 58, 10)],
    );
    assert_eq!(out.price_cents_per_kilo_unit, 55);
    assert_eq!(
        out.assignments
            .iter()
            .map(|a| (a.provider, a.shards))
            .collect::<Vec<_>>(),
        vec![(pk(2), 3), (pk(1), 1)]
    );
    // Both fully used: the next ask (58) sets the price.
    let out = clear(
        &id,
        &bidder,
        7,
        60,
        &[ask(1, 55, 4), ask(2, 40, 3), ask(3, 58, 10)],
    );
    assert_eq!(out.price_cents_per_kilo_unit, 58);
    // The next ask is above the maximum: capped at 60.
    let out = clear(
        &id,
        &bidder,
        7,
        60,
        &[ask(1, 55, 4), ask(2, 40, 3), ask(3, 90, 10)],
    );
    assert_eq!(out.price_cents_per_kilo_unit, 60);
    // Not enough supply: everything eligible sold at the maximum, the rest unserved.
    let out = clear(&id, &bidder, 9, 60, &[ask(1, 55, 4), ask(2, 40, 3)]);
    assert_eq!(
        (out.price_cents_per_kilo_unit, out.unserved_shards),
        (60, 2)
    );
    // The bidder cannot sell to itself; no capacity, no part.
    let out = clear(&id, &bidder, 2, 60, &[ask(9, 1, 5), ask(2, 40, 0)]);
    assert!(out.assignments.is_empty());
    assert_eq!(out.unserved_shards, 2);
}

#[test]
fn capacity_follows_throughput_window_and_deadline() {
    let o = Offer {
        offer_id: 1,
        device_fingerprint: [0; 32],
        compute_units_per_hour: 3_600_000,
        memory_bytes: 1 << 30,
        price_cents_per_kilo_unit: 1,
        valid_until_ms: 10_000,
    };
    // 1 unit/ms from t=0 to min(10,000, deadline) ms, 1,000 units per shard.
    assert_eq!(capacity_shards(&o, 0, 1_000_000, 1_000), 10);
    assert_eq!(capacity_shards(&o, 0, 5_000, 1_000), 5);
    assert_eq!(capacity_shards(&o, 0, 5_999, 1_000), 5);
    assert_eq!(capacity_shards(&o, 10_000, 20_000, 1_000), 0);
    assert_eq!(capacity_shards(&o, 0, 20_000, 0), 0);
}

#[test]
fn replicas_are_fixed_by_the_seed_and_checkable() {
    let j = job(vec![pk(1)]);
    let a = replicated(&[9; 32], &j.id(), 100, 10);
    assert_eq!(a.len(), 10);
    assert_eq!(a, replicated(&[9; 32], &j.id(), 100, 10));
    assert_ne!(a, replicated(&[8; 32], &j.id(), 100, 10));
    assert!(opens(&j, &[9; 32]) && !opens(&j, &[8; 32]));
    // 10 of 100 checked, 5 falsified: 1 − C(95,10)/C(100,10) ≈ 0.4162.
    let p = catch_probability_ppb(100, 10, 5);
    assert!((416_000_000..416_400_000).contains(&p), "{p}");
    assert_eq!(catch_probability_ppb(100, 0, 5), 0);
}

#[test]
fn subsidy_split_and_owed_amounts() {
    assert_eq!(split(1000, Sector::Startup, 30).public_cents, 300);
    assert_eq!(split(1000, Sector::Startup, 30).bidder_cents, 700);
    assert_eq!(split(999, Sector::Startup, 30).public_cents, 299);
    assert_eq!(split(1000, Sector::Private, 30).public_cents, 0);
    assert_eq!(owed_cents(1_500, 55, 1_000), 83);
    assert_eq!(owed_cents(1_000_000, 55, 1_000), 1_000);
}

#[test]
fn a_payer_pays_with_private_money_while_it_covers_the_payment_then_public() {
    let me = pk(10);
    let sign = |seq: u64, body| Entry::sign(&key(10), seq, 1, body);
    let deposit = |cents, money| {
        Body::Deposit(Deposit {
            member: me,
            eur_cents: cents,
            money,
            reference: "r".into(),
        })
    };
    let admit = |k: u8, organisation: &str, sector| {
        Body::Admission(Admission {
            organisation: organisation.into(),
            sector,
            member: pk(k),
        })
    };
    let mut own = vec![
        sign(0, admit(10, "Startup", Sector::Startup)),
        sign(1, admit(1, "Provider", Sector::Private)),
        sign(2, deposit(100, Money::Private)),
        sign(3, deposit(1_000, Money::Public)),
    ];
    assert_eq!(settle::paying_money(&own, &me, 100), Money::Private);
    assert_eq!(settle::paying_money(&own, &me, 500), Money::Public);
    // Neither covers it: private, which the log then refuses as an overdraw.
    assert_eq!(settle::paying_money(&own, &me, 5_000), Money::Private);
    // A private settlement paid spends the private credits.
    let paid = SettlementTerms {
        job_id: [1; 32],
        payer: me,
        payee: pk(1),
        credits_cents: 60,
        money: Money::Private,
        receipts: vec![[2; 32]],
    };
    own.push(sign(4, Body::Settlement(paid.cosign(&key(1)))));
    assert_eq!(settle::paying_money(&own, &me, 50), Money::Public);
    assert_eq!(settle::paying_money(&own, &me, 40), Money::Private);
}

/// A small federation's market records as logs: bidder 10 (startup), providers 1 and 2, referee 3.
struct Book {
    logs: BTreeMap<PublicKey, Vec<Entry>>,
    keys: BTreeMap<PublicKey, SigningKey>,
    job: Job,
}

impl Book {
    fn new() -> Book {
        let mut b = Book {
            logs: BTreeMap::new(),
            keys: BTreeMap::new(),
            job: job(vec![pk(3)]),
        };
        for s in [1u8, 2, 3, 10] {
            b.keys.insert(pk(s), key(s));
            b.logs.insert(pk(s), Vec::new());
        }
        b
    }
    fn append(&mut self, who: u8, ts: u64, body: Body) -> u64 {
        let log = self.logs.get_mut(&pk(who)).unwrap();
        let seq = log.len() as u64;
        log.push(Entry::sign(&key(who), seq, ts, body));
        seq
    }
    fn offer(&mut self, who: u8, ts: u64, price: u64) {
        self.append(
            who,
            ts,
            Body::Offer(Offer {
                offer_id: ts,
                device_fingerprint: [who; 32],
                compute_units_per_hour: 3_600_000,
                memory_bytes: 1 << 30,
                price_cents_per_kilo_unit: price,
                valid_until_ms: 5_000_000,
            }),
        );
    }
    /// Job, bid and a clearing by the rule; returns the clearing.
    fn clear(&mut self, at: u64) -> Clearing {
        let job_id = self.job.id();
        self.append(
            10,
            at,
            Body::Data(Data {
                sha256: self.job.corpus_sha256,
                bytes: self.job.corpus_bytes,
                licence: "CC0-1.0".into(),
                source: "test corpus".into(),
            }),
        );
        self.append(10, at, Body::Job(Job_(self.job.encode())));
        let bid_seq = self.append(
            10,
            at,
            Body::Bid(Bid {
                job_id,
                compute_units: 6_000_000,
                max_price_cents_per_kilo_unit: 60,
                deadline_ms: self.job.deadline_ms,
            }),
        );
        let views = self
            .logs
            .iter()
            .filter(|(k, _)| **k != pk(10))
            .map(|(k, v)| LogView {
                log: *k,
                size: v.len() as u64,
            })
            .collect();
        let req = Request {
            job: &self.job,
            job_id,
            bidder: pk(10),
            bid_seq,
            clearing_ms: at,
            shard_units: 1_000_000,
            views,
        };
        let (c, _) = clearing::run(&req, &self.logs).unwrap();
        self.append(10, at, Body::Clearing(c.clone()));
        c
    }
    fn both<T: Terms + Clone>(
        &mut self,
        a: u8,
        b: u8,
        ts: u64,
        terms: T,
        wrap: fn(CoSigned<T>) -> Body,
    ) {
        let ka = key(a);
        let kb = key(b);
        self.append(a, ts, wrap(terms.clone().cosign(&kb)));
        self.append(b, ts, wrap(terms.cosign(&ka)));
    }
}

#[allow(non_snake_case)]
fn Job_(description: Vec<u8>) -> leam_ledger::entry::Job {
    leam_ledger::entry::Job { description }
}

#[test]
fn audit_reproduces_an_honest_market_and_flags_each_deviation() {
    let mut b = Book::new();
    // Provider 1 at 40, provider 2 at 55; both deliver 1 unit/ms until 5,000,000 ms.
    b.offer(1, 100, 40);
    b.offer(2, 100, 55);
    let c = b.clear(1_000_000);
    // 6 shards of 1M units; from 1,000,000 ms provider 1 can finish 4 before its offer ends, so
    // provider 2 takes 2 and its unsold capacity (at 55) sets the uniform price.
    assert_eq!(
        c.assignments.iter().map(|a| a.shards).collect::<Vec<_>>(),
        vec![4, 2]
    );
    assert_eq!(c.price_cents_per_kilo_unit, 55);
    let job = b.job.clone();
    let mut lease_of = BTreeMap::new();
    for a in c.assignments.clone() {
        let t = lease_terms(&c, &job, pk(10), &a);
        let p = a.provider;
        lease_of.insert(p, t.fact_id());
        let who = if p == pk(1) { 1 } else { 2 };
        b.both(10, who, 1_000_100, t, Body::Lease);
    }
    // Provider 1's first shard: receipt, accepted by the referee; 1M units at 55 cents per
    // 1,000 units are worth 55,000 cents.
    let receipt = ReceiptTerms {
        job_id: job.id(),
        shard: 0,
        bidder: pk(10),
        provider: pk(1),
        lease: lease_of[&pk(1)],
        input_commitment: [1; 32],
        output_commitment: [2; 32],
        compute_units: 1_000_000,
        gpu_ms: 1234,
        device_fingerprint: [1; 32],
    };
    let receipt_id = receipt.fact_id();
    b.both(1, 10, 1_000_200, receipt.clone(), Body::Receipt);
    b.append(
        3,
        1_000_300,
        Body::Verdict(Verdict {
            job_id: job.id(),
            shard: 0,
            provider: pk(1),
            output_commitment: [2; 32],
            accepted: true,
        }),
    );
    let pay = SettlementTerms {
        job_id: job.id(),
        payer: pk(10),
        payee: pk(1),
        credits_cents: 55_000,
        money: Money::Private,
        receipts: vec![receipt_id],
    };
    b.both(10, 1, 1_000_400, pay, Body::Settlement);
    let a = audit(&b.logs);
    assert!(a.clean(), "{:#?}", a.findings);
    // Provider 1 offered 1 unit/ms; its receipt shows 1M units in 1,234 ms: no flag.
    assert!(a.flags.is_empty(), "{:#?}", a.flags);
    assert_eq!(
        (a.jobs, a.bids, a.clearings, a.clearings_reproduced),
        (1, 1, 1, 1)
    );
    assert_eq!(
        (
            a.leases,
            a.leases_matching,
            a.receipts,
            a.verdicts_counted,
            a.settlements
        ),
        (2, 2, 1, 1, 1)
    );

    // Deviations, each found and named.
    let found = |logs: &BTreeMap<PublicKey, Vec<Entry>>, needle: &str| {
        let a = audit(logs);
        assert!(
            a.findings.iter().any(|f| f.detail.contains(needle)),
            "expected a finding containing {needle:?}, got {:#?}",
            a.findings
        );
    };
    // The book with one more verdict, written by member `author`.
    let with_verdict = |author, shard, provider, output_commitment, accepted| {
        let mut x = Book {
            logs: b.logs.clone(),
            keys: b.keys.clone(),
            job: job.clone(),
        };
        x.append(
            author,
            1_000_500,
            Body::Verdict(Verdict {
                job_id: job.id(),
                shard,
                provider,
                output_commitment,
                accepted,
            }),
        );
        x
    };
    // A verdict by a non-referee.
    let x = with_verdict(2, 0, pk(1), [2; 32], false);
    found(&x.logs, "not one of the job's referees");
    // A referee judging its own result (as the ledger fold, the audit never counts it).
    let x = with_verdict(3, 1, pk(3), [3; 32], true);
    found(&x.logs, "on its own result: not counted");
    assert_eq!(audit(&x.logs).verdicts_counted, 1);
    // Overpayment: one more cent than the verified work is worth.
    let mut x = Book {
        logs: b.logs.clone(),
        keys: b.keys.clone(),
        job: job.clone(),
    };
    let pay = SettlementTerms {
        job_id: job.id(),
        payer: pk(10),
        payee: pk(1),
        credits_cents: 1,
        money: Money::Private,
        receipts: vec![receipt_id],
    };
    x.both(10, 1, 1_000_600, pay.clone(), Body::Settlement);
    found(&x.logs, "worth 55000 cents");
    found(&x.logs, "already paid");
    // Settlements must name what they pay: receipts that exist, of the payee, accepted.
    let unaccepted = ReceiptTerms {
        shard: 1,
        output_commitment: [4; 32],
        ..receipt.clone()
    };
    for (receipts, needle) in [
        (vec![], "names no receipt"),
        (vec![[9; 32]], "which no log holds"),
        (vec![unaccepted.fact_id()], "did not accept"),
    ] {
        let mut x = Book {
            logs: b.logs.clone(),
            keys: b.keys.clone(),
            job: job.clone(),
        };
        x.both(1, 10, 1_000_550, unaccepted.clone(), Body::Receipt);
        let pay = SettlementTerms {
            receipts,
            credits_cents: 0,
            money: Money::Private,
            ..pay.clone()
        };
        x.both(10, 1, 1_000_600, pay, Body::Settlement);
        found(&x.logs, needle);
    }
    // A lease at a price the clearing does not imply.
    let mut x = Book {
        logs: b.logs.clone(),
        keys: b.keys.clone(),
        job: job.clone(),
    };
    let mut t = lease_terms(&c, &job, pk(10), &c.assignments[0]);
    t.price_cents += 1;
    x.both(10, 1, 1_000_700, t, Body::Lease);
    found(&x.logs, "lease terms differ");
    // A clearing record whose price the rule does not give.
    let mut x = Book {
        logs: b.logs.clone(),
        keys: b.keys.clone(),
        job: job.clone(),
    };
    let mut bad = c.clone();
    bad.price_cents_per_kilo_unit = 60;
    x.append(10, 1_000_800, Body::Clearing(bad));
    found(&x.logs, "the rule gives price 55");
    // A clearing that ignores a cheaper offer its own view holds: provider 2 offered at 30
    // before the clearing; a record assigning the old split no longer reproduces.
    let mut x = Book::new();
    x.offer(1, 100, 40);
    x.offer(2, 100, 55);
    x.offer(2, 200, 30);
    let honest = x.clear(1_000_000);
    assert_eq!(honest.assignments[0].provider, pk(2));
    let mut stale = honest.clone();
    stale.assignments = c.assignments.clone();
    x.append(10, 1_000_001, Body::Clearing(stale));
    found(&x.logs, "assignments");
    // An offer claiming ten times what the provider's receipts show is flagged.
    let mut x = Book {
        logs: b.logs.clone(),
        keys: b.keys.clone(),
        job: job.clone(),
    };
    x.append(
        1,
        1_000_900,
        Body::Offer(Offer {
            offer_id: 2,
            device_fingerprint: [1; 32],
            compute_units_per_hour: 30_000_000_000,
            memory_bytes: 1 << 30,
            price_cents_per_kilo_unit: 40,
            valid_until_ms: 9_000_000,
        }),
    );
    let a = audit(&x.logs);
    assert!(a.clean(), "a flag is not a finding");
    assert_eq!(a.flags.len(), 1, "{:#?}", a.flags);
    assert!(
        a.flags[0].detail.contains("receipts show 2917341"),
        "{}",
        a.flags[0].detail
    );
    // A receipt that names no lease, and one that names another provider's lease.
    let mut x = Book::new();
    let r = ReceiptTerms {
        job_id: job.id(),
        shard: 0,
        bidder: pk(10),
        provider: pk(2),
        lease: [7; 32],
        input_commitment: [1; 32],
        output_commitment: [2; 32],
        compute_units: 1,
        gpu_ms: 1,
        device_fingerprint: [1; 32],
    };
    x.both(2, 10, 5, r.clone(), Body::Receipt);
    found(&x.logs, "but no log holds such a lease");
    let mut x = Book {
        logs: b.logs.clone(),
        keys: b.keys.clone(),
        job: job.clone(),
    };
    let r = ReceiptTerms {
        lease: lease_of[&pk(1)],
        ..r
    };
    x.both(2, 10, 1_000_500, r, Body::Receipt);
    found(&x.logs, "which is a lease between bidder");
    // A bid for an unpublished job.
    let mut x = Book::new();
    x.append(
        10,
        5,
        Body::Bid(Bid {
            job_id: [5; 32],
            compute_units: 1,
            max_price_cents_per_kilo_unit: 1,
            deadline_ms: 1,
        }),
    );
    found(&x.logs, "does not publish");
}

/// The example job of `specs/market.md` §2: the spec's bytes and id are the code's.
#[test]
fn spec_example_job_matches_the_code() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/market.md"))
        .unwrap();
    let block = |marker: &str| -> String {
        let at = spec
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} missing from market.md"));
        let rest = &spec[at..];
        let start = rest.find("```text\n").unwrap() + "```text\n".len();
        let end = rest[start..].find("```").unwrap();
        rest[start..start + end].to_owned()
    };
    let j = Job {
        name: "shakespeare char".into(),
        model: ModelSpec::NANOGPT_CPU,
        corpus_sha256: [0x11; 32],
        corpus_bytes: 1_115_394,
        rounds: 3,
        shards_per_round: 2,
        inner_steps: 30,
        replication_ppm: 100_000,
        seed_commitment: seed_commitment(&[0x22; 32]),
        referees: vec![[0x33; 32]],
        deadline_ms: 1_767_225_600_000,
        max_price_cents_per_kilo_unit: 60,
        shard_timeout_ms: None,
    };
    let encoded = String::from_utf8(j.encode()).unwrap();
    assert_eq!(
        block("<!-- example-job -->"),
        encoded,
        "market.md's example job differs from the code's encoding"
    );
    assert_eq!(block("<!-- example-job-id -->").trim(), hex::encode(j.id()));
    assert_eq!(Job::decode(encoded.as_bytes()).unwrap(), j);
}

/// A bidder's node clears a bid once, then proposes each implied lease until it is in its log;
/// a provider agrees only to the terms a reproducible clearing implies.
#[test]
fn bidder_steps_and_provider_check() {
    use leam_market::flow::{bidder_steps, check_lease, Step};
    let mut b = Book::new();
    b.offer(1, 100, 40);
    b.offer(2, 100, 55);
    let job = b.job.clone();
    b.append(10, 1_000, Body::Job(Job_(job.encode())));
    b.append(
        10,
        1_000,
        Body::Bid(Bid {
            job_id: job.id(),
            compute_units: 6_000_000,
            max_price_cents_per_kilo_unit: 60,
            deadline_ms: job.deadline_ms,
        }),
    );
    let (steps, waiting) = bidder_steps(&pk(10), &b.logs, 1_000_000);
    assert!(waiting.is_empty(), "{waiting:?}");
    let [Step::Clear(c)] = steps.as_slice() else {
        panic!("expected one clearing, got {steps:?}")
    };
    assert_eq!(c.price_cents_per_kilo_unit, 55);
    b.append(10, 1_000_000, Body::Clearing(c.clone()));
    let (steps, _) = bidder_steps(&pk(10), &b.logs, 1_000_001);
    let leases: Vec<LeaseTerms> = steps
        .iter()
        .map(|s| match s {
            Step::ProposeLease(t) => t.clone(),
            other => panic!("expected only lease proposals, got {other:?}"),
        })
        .collect();
    assert_eq!(leases.len(), 2);
    // The provider agrees to its implied lease, and to nothing else.
    let mine = leases.iter().find(|t| t.provider == pk(1)).unwrap();
    assert_eq!(check_lease(&pk(1), mine, &b.logs), Ok(()));
    let mut dearer = mine.clone();
    dearer.price_cents += 1;
    assert!(check_lease(&pk(1), &dearer, &b.logs)
        .unwrap_err()
        .contains("differ"));
    assert!(check_lease(&pk(2), mine, &b.logs).is_err());
    // A provider whose copy of the bidder's log ends before the clearing cannot check yet.
    let mut behind = b.logs.clone();
    behind.get_mut(&pk(10)).unwrap().pop();
    assert!(check_lease(&pk(1), mine, &behind).is_err());
    // Once recorded, a lease is not proposed again.
    b.both(10, 1, 1_000_002, mine.clone(), Body::Lease);
    let (steps, _) = bidder_steps(&pk(10), &b.logs, 1_000_003);
    assert_eq!(steps.len(), 1);
    // No offer under the maximum: the bid waits, with the reason.
    let mut x = Book::new();
    x.offer(1, 100, 90);
    x.append(10, 1_000, Body::Job(Job_(job.encode())));
    x.append(
        10,
        1_000,
        Body::Bid(Bid {
            job_id: job.id(),
            compute_units: 6_000_000,
            max_price_cents_per_kilo_unit: 60,
            deadline_ms: job.deadline_ms,
        }),
    );
    let (steps, waiting) = bidder_steps(&pk(10), &x.logs, 1_000_000);
    assert!(steps.is_empty());
    assert!(
        waiting[0].reason.contains("no offer at or under 60"),
        "{waiting:?}"
    );
}

/// A job whose corpus no log publishes as a data pool is flagged (not a finding); publishing
/// the pool clears the flag.
#[test]
fn a_corpus_without_a_data_pool_is_flagged() {
    let mut b = Book::new();
    let job = b.job.clone();
    b.append(10, 1_000, Body::Job(Job_(job.encode())));
    let a = audit(&b.logs);
    assert!(a.clean(), "{:#?}", a.findings);
    assert_eq!(a.flags.len(), 1, "{:#?}", a.flags);
    assert!(a.flags[0].detail.contains("is not a published data pool"));
    b.append(
        1,
        1_001,
        Body::Data(Data {
            sha256: job.corpus_sha256,
            bytes: job.corpus_bytes,
            licence: "CC0-1.0".into(),
            source: "the pool".into(),
        }),
    );
    assert!(audit(&b.logs).flags.is_empty());
}

/// A provider that leaves a job unfinished: the bidder buys its unfinished shards again from a
/// provider with no lease of the job (`specs/market.md` §3.6). The audit re-runs the record;
/// buying more than was left unfinished, replacing a provider that left nothing unfinished, or
/// giving the shards to a provider that already holds a lease are each found and named.
#[test]
fn a_reclearing_buys_the_unfinished_shards_from_a_new_provider() {
    use leam_market::flow::{bidder_steps, check_lease, Step};
    use leam_market::reclear::{check, reclear, standing};
    let mut b = Book::new();
    b.keys.insert(pk(4), key(4));
    b.logs.insert(pk(4), Vec::new());
    b.offer(1, 100, 40);
    b.offer(2, 100, 55);
    b.offer(4, 100, 58);
    let c = b.clear(1_000_000);
    assert_eq!(
        c.assignments
            .iter()
            .map(|a| (a.provider, a.shards))
            .collect::<Vec<_>>(),
        vec![(pk(1), 4), (pk(2), 2)]
    );
    let job = b.job.clone();
    let mut lease_of = BTreeMap::new();
    for a in c.assignments.clone() {
        let t = lease_terms(&c, &job, pk(10), &a);
        lease_of.insert(a.provider, t.fact_id());
        let who = if a.provider == pk(1) { 1 } else { 2 };
        b.both(10, who, 1_000_100, t, Body::Lease);
    }
    // Provider 1 delivers shard 0 and vanishes: 3 of its 4 leased shards are unfinished.
    let receipt = ReceiptTerms {
        job_id: job.id(),
        shard: 0,
        bidder: pk(10),
        provider: pk(1),
        lease: lease_of[&pk(1)],
        input_commitment: [1; 32],
        output_commitment: [2; 32],
        compute_units: 1_000_000,
        gpu_ms: 1234,
        device_fingerprint: [1; 32],
    };
    b.both(1, 10, 1_000_200, receipt, Body::Receipt);
    let own = &b.logs[&pk(10)];
    let none = std::collections::BTreeSet::new();
    let s = standing(own, &job.id(), own.len() as u64, &none);
    assert_eq!((s.unfinished(&pk(1)), s.unfinished(&pk(2))), (3, 2));
    // Had the referee (3) rejected that run, provider 1 would have delivered nothing; a
    // verdict by anyone else, or past the views, changes nothing.
    {
        let mut x = b.logs.clone();
        let views = leam_market::clearing::views_except(&x, &pk(10));
        let reject = |by: u8| {
            Entry::sign(
                &key(by),
                x_len(&b.logs, by),
                1_000_300,
                Body::Verdict(Verdict {
                    job_id: job.id(),
                    shard: 0,
                    provider: pk(1),
                    output_commitment: [2; 32],
                    accepted: false,
                }),
            )
        };
        x.get_mut(&pk(2)).unwrap().push(reject(2));
        let views2 = leam_market::clearing::views_except(&x, &pk(10));
        let unfinished = |logs: &BTreeMap<PublicKey, Vec<Entry>>, views: &[LogView]| {
            let rejected = leam_market::reclear::rejected_runs(
                logs,
                &job,
                &job.id(),
                views,
                (&pk(10), own.len() as u64),
            );
            standing(own, &job.id(), own.len() as u64, &rejected).unfinished(&pk(1))
        };
        assert_eq!(
            unfinished(&x, &views2),
            3,
            "provider 2 is no referee of the job"
        );
        x.get_mut(&pk(3)).unwrap().push(reject(3));
        assert_eq!(unfinished(&x, &views), 3, "the verdict is past the views");
        let views3 = leam_market::clearing::views_except(&x, &pk(10));
        assert_eq!(
            unfinished(&x, &views3),
            4,
            "the rejected run delivered nothing"
        );
    }
    let gone = std::collections::BTreeSet::from([pk(1)]);
    let r = reclear(&pk(10), &job, &job.id(), &gone, &b.logs, 1_500_000).unwrap();
    // Providers 1 and 2 hold leases of the job: only provider 4 (at 58) may take the 3 shards;
    // its capacity until its offer ends is exactly 3, so no unit is unsold: the bid's maximum.
    assert_eq!(r.shards, 3);
    assert_eq!(r.replaces, vec![pk(1)]);
    assert_eq!(
        r.clearing
            .assignments
            .iter()
            .map(|a| (a.provider, a.shards))
            .collect::<Vec<_>>(),
        vec![(pk(4), 3)]
    );
    assert_eq!(r.clearing.price_cents_per_kilo_unit, 60);
    let before = b.logs.clone();
    let at = b.append(10, 1_500_000, Body::Reclearing(r.clone()));
    assert_eq!(check(&b.logs, &job, &pk(10), at, 1_500_000, &r), Ok(()));
    // The new lease is proposed, the new provider agrees to it, and the audit reproduces all.
    let (steps, _) = bidder_steps(&pk(10), &b.logs, 1_500_001);
    let [Step::ProposeLease(t)] = steps.as_slice() else {
        panic!("expected the new provider's lease, got {steps:?}")
    };
    assert_eq!(
        (t.provider, t.compute_units, t.price_cents),
        (pk(4), 3_000_000, 180_000)
    );
    assert_eq!(check_lease(&pk(4), t, &b.logs), Ok(()));
    b.both(10, 4, 1_500_100, t.clone(), Body::Lease);
    let a = audit(&b.logs);
    assert!(a.clean(), "{:#?}", a.findings);
    assert_eq!((a.reclearings, a.reclearings_reproduced), (1, 1));
    assert_eq!((a.leases, a.leases_matching), (3, 3));

    // Forgeries, each found and named.
    let forged_on =
        |logs: &BTreeMap<PublicKey, Vec<Entry>>, change: &dyn Fn(&mut Reclearing), needle: &str| {
            let mut x = logs.clone();
            let own = x.get_mut(&pk(10)).unwrap();
            let mut bad = r.clone();
            change(&mut bad);
            let seq = own.len() as u64;
            own.push(Entry::sign(&key(10), seq, 1_600_000, Body::Reclearing(bad)));
            let a = audit(&x);
            assert!(
                a.findings
                    .iter()
                    .any(|f| f.kind == "reclearing" && f.detail.contains(needle)),
                "expected a finding containing {needle:?}, got {:#?}",
                a.findings
            );
        };
    // Provider 1's unfinished shards bought a second time.
    forged_on(
        &b.logs,
        &|_| {},
        "was replaced already, by the re-clearing at entry",
    );
    // The others instead of the honest record.
    let forged =
        |change: &dyn Fn(&mut Reclearing), needle: &str| forged_on(&before, change, needle);
    // More shards than were left unfinished: provider 2 leased 2 and delivered none.
    forged(
        &|r| {
            r.replaces = vec![pk(2)];
            r.shards = 3;
        },
        "3 shards bought again, but the replaced providers left 2 unfinished",
    );
    // A provider that holds no lease of the job replaced.
    forged(
        &|r| r.replaces = vec![pk(3)],
        "leased 0 shards of the job and delivered 0",
    );
    // The shards given to a provider that already holds a lease (the rule excludes it).
    forged(
        &|r| r.clearing.assignments[0].provider = pk(2),
        "the rule gives price",
    );
    // Not ascending.
    forged(&|r| r.replaces = vec![pk(1), pk(1)], "strictly ascending");
}

/// The number of entries `who`'s log holds in `logs`.
fn x_len(logs: &BTreeMap<PublicKey, Vec<Entry>>, who: u8) -> u64 {
    logs[&pk(who)].len() as u64
}
