//! The accounting fold on in-memory logs: attribution, conflicts, verdicts, dedup, determinism.

use ed25519_dalek::SigningKey;
use leam_ledger::account::{
    fold, fold_with, AccountError, EvidenceCheck, LogState, LogView, RuleError,
};
use leam_ledger::entry::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn pk(k: &SigningKey) -> PublicKey {
    k.verifying_key().to_bytes()
}

fn admit(member: PublicKey, org: &str, sector: Sector) -> Body {
    Body::Admission(Admission {
        organisation: org.into(),
        sector,
        member,
    })
}

/// A log of `bodies` by `k` (entry 0, the self-admission, is prepended), checked by the rules.
fn log(k: &SigningKey, org: &str, sector: Sector, bodies: Vec<Body>) -> Vec<Entry> {
    let mut all = vec![admit(pk(k), org, sector)];
    all.extend(bodies);
    let entries: Vec<Entry> = all
        .into_iter()
        .enumerate()
        .map(|(i, b)| Entry::sign(k, i as u64, 1_000 + i as u64, b))
        .collect();
    LogState::new(pk(k)).apply_all(&entries).unwrap();
    entries
}

/// Job `n` as published: a description naming `key(3)` as its one referee.
fn job(n: u8) -> Job {
    Job {
        description: format!(
            "leam-job/v1\nname test {n}\nreferee {}\n",
            hex::encode(pk(&key(3)))
        )
        .into_bytes(),
    }
}

fn receipt(n: u8, bidder: &SigningKey, provider: &SigningKey, units: u64) -> ReceiptTerms {
    let job = n;
    ReceiptTerms {
        job_id: self::job(n).id(),
        shard: 0,
        bidder: pk(bidder),
        provider: pk(provider),
        lease: [0x44; 32],
        input_commitment: [0; 32],
        output_commitment: [job; 32],
        compute_units: units,
        gpu_ms: units * 2,
        device_fingerprint: [0; 32],
    }
}

fn verdict(job: u8, provider: &SigningKey, accepted: bool) -> Body {
    Body::Verdict(Verdict {
        job_id: self::job(job).id(),
        shard: 0,
        provider: pk(provider),
        output_commitment: [job; 32],
        accepted,
    })
}

#[test]
fn verdicts_decide_what_counts_and_facts_count_once() {
    let (a, b, r) = (key(1), key(2), key(3));
    let la = log(
        &a,
        "A",
        Sector::Science,
        vec![
            admit(pk(&b), "B", Sector::Startup),
            Body::Receipt(receipt(1, &b, &a, 100).cosign(&b)),
            Body::Receipt(receipt(2, &b, &a, 200).cosign(&b)),
            Body::Receipt(receipt(3, &b, &a, 400).cosign(&b)),
        ],
    );
    let lb = log(
        &b,
        "B",
        Sector::Startup,
        vec![
            admit(pk(&a), "A", Sector::Science),
            Body::Job(job(1)),
            Body::Job(job(2)),
            Body::Job(job(3)),
            Body::Receipt(receipt(1, &b, &a, 100).cosign(&a)),
            // The bidder is not job 3's referee: its verdict counts for nothing.
            verdict(3, &a, true),
        ],
    );
    let lr = log(
        &r,
        "Referee",
        Sector::Public,
        vec![
            admit(pk(&a), "A", Sector::Science),
            verdict(1, &a, true),
            verdict(2, &a, true),
            verdict(2, &a, false),
            Body::Evidence(Evidence {
                accused: pk(&a),
                kind: EvidenceKind::WrongShardResult,
                bytes: vec![2; 8],
            }),
        ],
    );
    let mut lb2 = lb.clone();
    lb2.truncate(1);
    let views = [
        LogView {
            owner: pk(&a),
            entries: &la,
        },
        LogView {
            owner: pk(&b),
            entries: &lb,
        },
        LogView {
            owner: pk(&r),
            entries: &lr,
        },
    ];
    let rep = fold(&views).unwrap();
    let at = &rep.organisations["A"].totals;
    assert_eq!(
        at.compute_contributed_units, 100,
        "receipt 1 once, accepted"
    );
    assert_eq!(at.compute_contributed_gpu_ms, 200);
    assert_eq!(
        at.compute_rejected_units, 200,
        "receipt 2 has a rejecting verdict"
    );
    assert_eq!(
        at.compute_unverified_units, 400,
        "receipt 3 has no verdict by a referee"
    );
    assert_eq!(rep.verdicts_ignored, 1);
    // The ledger alone cannot replay a shard: the wrong-result evidence is listed, not counted.
    assert_eq!(at.evidence_against, 0);
    assert_eq!(rep.evidence_not_counted.len(), 1);
    assert_eq!(rep.evidence_not_counted[0].seq, 5);
    assert!(rep.evidence_not_counted[0]
        .reason
        .contains("needs a shard replay"));
    assert_eq!(rep.organisations["B"].totals.compute_consumed_units, 100);
    assert_eq!(rep.facts, 3);
    // Deterministic: any order of logs gives the same report.
    let reversed = [views[2], views[0], views[1]];
    assert_eq!(fold(&reversed).unwrap(), rep);
    // With a checker that confirms it, it counts against the accused; one that refuses it
    // leaves its reason in the report.
    struct Judge(bool);
    impl EvidenceCheck for Judge {
        fn check(&self, logs: &[LogView<'_>], _: &PublicKey, ev: &Evidence) -> Result<(), String> {
            assert_eq!(logs.len(), 3, "the checker sees every folded log");
            assert_eq!(ev.bytes, vec![2; 8]);
            if self.0 {
                Ok(())
            } else {
                Err("does not hold: the replay agrees".into())
            }
        }
    }
    let counted = fold_with(&views, &Judge(true)).unwrap();
    assert_eq!(counted.organisations["A"].totals.evidence_against, 1);
    assert!(counted.evidence_not_counted.is_empty());
    let refused = fold_with(&views, &Judge(false)).unwrap();
    assert_eq!(refused.organisations["A"].totals.evidence_against, 0);
    assert_eq!(
        refused.evidence_not_counted[0].reason,
        "does not hold: the replay agrees"
    );
}

#[test]
fn conflicting_admissions_and_unattributed_keys_are_errors() {
    let (a, b, c) = (key(1), key(2), key(3));
    let la = log(
        &a,
        "A",
        Sector::Science,
        vec![admit(pk(&c), "C", Sector::Public)],
    );
    let lb = log(
        &b,
        "B",
        Sector::Private,
        vec![admit(pk(&c), "C", Sector::Private)],
    );
    let err = fold(&[
        LogView {
            owner: pk(&a),
            entries: &la,
        },
        LogView {
            owner: pk(&b),
            entries: &lb,
        },
    ])
    .unwrap_err();
    match err {
        AccountError::ConflictingAdmission { key, first, second } => {
            assert_eq!(key, hex::encode(pk(&c)));
            // Logs are folded in key order, so either admission may come first.
            assert!(
                (first.starts_with("C/public") && second.starts_with("C/private"))
                    || (first.starts_with("C/private") && second.starts_with("C/public")),
                "{first} {second}"
            );
            assert!(first.contains("entry 1") && second.contains("entry 1"));
        }
        other => panic!("expected ConflictingAdmission, got {other}"),
    }
    // An entry naming a key nobody admitted (built without the log rules).
    let stray = vec![
        Entry::sign(&a, 0, 0, admit(pk(&a), "A", Sector::Science)),
        Entry::sign(&a, 1, 0, verdict(9, &c, true)),
    ];
    let err = fold(&[LogView {
        owner: pk(&a),
        entries: &stray,
    }])
    .unwrap_err();
    assert_eq!(
        err,
        AccountError::Unattributed {
            log: hex::encode(pk(&a)),
            seq: 1,
            key: hex::encode(pk(&c)),
        }
    );
}

#[test]
fn log_rules_name_the_entry() {
    let (a, b) = (key(1), key(2));
    let mut st = LogState::new(pk(&a));
    let first = Entry::sign(
        &a,
        0,
        5,
        Body::Offer(Offer {
            offer_id: 0,
            device_fingerprint: [0; 32],
            compute_units_per_hour: 1,
            memory_bytes: 1 << 30,
            price_cents_per_kilo_unit: 1,
            valid_until_ms: 1,
        }),
    );
    assert_eq!(
        st.apply_all([&first]),
        Err(RuleError::MissingGenesis { found: "offer" })
    );
    let genesis = Entry::sign(&a, 0, 5, admit(pk(&a), "A", Sector::Public));
    st.apply_all([&genesis]).unwrap();
    let early = Entry::sign(&a, 1, 4, admit(pk(&b), "B", Sector::Public));
    assert_eq!(
        st.apply_all([&early]),
        Err(RuleError::TimeBackwards {
            seq: 1,
            previous: 5,
            found: 4
        })
    );
    let unknown = Entry::sign(&a, 1, 6, verdict(1, &b, true));
    assert!(matches!(
        st.apply_all([&unknown]),
        Err(RuleError::NotAdmitted {
            seq: 1,
            role: "provider",
            ..
        })
    ));
    let own = Entry::sign(&a, 1, 6, verdict(1, &a, true));
    assert_eq!(
        st.apply_all([&own]),
        Err(RuleError::SelfReference {
            seq: 1,
            kind: "verdict"
        })
    );
    let foreign_deposit = Entry::sign(
        &a,
        1,
        6,
        Body::Deposit(Deposit {
            member: pk(&b),
            eur_cents: 1,
            money: Money::Public,
            reference: "x".into(),
        }),
    );
    assert!(matches!(
        st.apply_all([&foreign_deposit]),
        Err(RuleError::ForeignDeposit { seq: 1, .. })
    ));
    let sector_change = [
        Entry::sign(&a, 1, 6, admit(pk(&b), "B", Sector::Public)),
        Entry::sign(&a, 2, 6, admit(pk(&key(3)), "B", Sector::Private)),
    ];
    assert!(matches!(
        st.apply_all(&sector_change),
        Err(RuleError::SectorConflict {
            seq: 2,
            first: "public",
            found: "private",
            ..
        })
    ));
    // Nothing of a failed batch was applied.
    assert_eq!(st.next_seq(), 1);
    assert!(st.membership(&pk(&b)).is_none());
}
