//! The log on real sled files in temporary directories: appends, proofs, reopen with tail
//! verification, audit and accounting over two co-operating nodes, and every kind of bad input
//! the issue lists, each with its precise error and with nothing already stored lost.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use leam_ledger::account::{Membership, RuleError};
use leam_ledger::audit::{audit_dirs, AuditError, AuditOptions};
use leam_ledger::entry::*;
use leam_ledger::evidence::EquivocationKind;
use leam_ledger::identity::{Identity, IdentityError};
use leam_ledger::log::{
    Log, LogError, LogReader, CHECKPOINT_FILE_NAME, KEY_FILE_NAME, STORE_DIR_NAME,
};
use leam_ledger::merkle;
use leam_ledger::store::{SledStore, Store as _};

const T0: u64 = 1_767_225_600_000;

fn member(org: &str, sector: Sector) -> Membership {
    Membership {
        organisation: org.into(),
        sector,
    }
}

fn new_log(dir: &Path, seed: u8, org: &str, sector: Sector) -> Log {
    Log::create(
        dir,
        Identity::from_seed(&[seed; 32]),
        &member(org, sector),
        T0,
    )
    .unwrap()
}

fn offer(i: u64) -> Body {
    Body::Offer(Offer {
        offer_id: i,
        device_fingerprint: [7; 32],
        compute_units_per_hour: 1000 + i,
        memory_bytes: 1 << 30,
        price_cents_per_kilo_unit: 3,
        valid_until_ms: T0 + 1_000_000,
    })
}

/// Append `n` offers in batches of `batch`.
fn fill(log: &mut Log, n: u64, batch: u64) {
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let base = log.size();
        let entries = (0..k)
            .map(|i| log.sign_next(i, T0 + base + i, offer(base + i)))
            .collect();
        log.append_batch(entries).unwrap();
        done += k;
    }
}

fn snapshot(dir: &Path) -> (u64, Vec<u8>, Vec<Vec<u8>>) {
    let r = LogReader::open(dir).unwrap();
    let size = r.head().size;
    (size, r.head().note.clone(), r.entries(0, size).unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn append_reopen_and_prove() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "TU Beispiel", Sector::Science);
    fill(&mut log, 300, 64);
    assert_eq!(log.size(), 301);
    let root = log.reader().head().root;
    drop(log);

    let log = Log::open(&dir).unwrap();
    assert_eq!(log.size(), 301);
    let entries = log.reader().entries(0, 301).unwrap();
    let leaves: Vec<_> = entries.iter().map(|b| merkle::leaf_hash(b)).collect();
    assert_eq!(merkle::root_of(&leaves), root);
    for (i, leaf) in leaves.iter().enumerate().step_by(37) {
        let proof = log.prove_inclusion(i as u64, 301).unwrap();
        merkle::check_record(&proof, 301, &root, i as u64, leaf).unwrap();
    }
    let old_root = log.reader().root_at(100).unwrap();
    let proof = log.prove_consistency(100, 301).unwrap();
    merkle::check_tree(&proof, 301, &root, 100, &old_root).unwrap();
    // The checkpoint file equals the stored checkpoint.
    assert_eq!(
        std::fs::read(dir.join(CHECKPOINT_FILE_NAME)).unwrap(),
        log.checkpoint()
    );
}

#[test]
fn create_refuses_an_existing_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    drop(new_log(&dir, 1, "A", Sector::Public));
    let err = Log::create(
        &dir,
        Identity::from_seed(&[2; 32]),
        &member("B", Sector::Private),
        T0,
    )
    .unwrap_err();
    assert!(
        matches!(&err, LogError::Location { reason, .. } if reason.contains("node.key already exists")),
        "{err}"
    );
    assert_eq!(Log::open(&dir).unwrap().size(), 1);
}

#[test]
fn key_file_with_loose_permissions_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    drop(new_log(&dir, 1, "A", Sector::Public));
    let key = dir.join(KEY_FILE_NAME);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    match Log::open(&dir).unwrap_err() {
        LogError::Identity(IdentityError::LoosePermissions { path, mode }) => {
            assert_eq!(path, key);
            assert_eq!(mode, 0o644);
        }
        other => panic!("expected LoosePermissions, got {other}"),
    }
    // Nothing lost: restoring the mode opens the log again.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(Log::open(&dir).unwrap().size(), 1);
}

#[test]
fn key_file_round_trip_and_malformed_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k");
    let id = Identity::from_seed(&[9; 32]);
    id.write_new(&path).unwrap();
    assert_eq!(Identity::load(&path).unwrap().public_key(), id.public_key());
    assert!(matches!(
        id.write_new(&path),
        Err(IdentityError::Exists { .. })
    ));
    let text = std::fs::read_to_string(&path).unwrap();
    let bad = tmp.path().join("bad");
    std::fs::write(&bad, text.replace("leam-node-key/v1", "leam-node-key/v2")).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        matches!(
            Identity::load(&bad),
            Err(IdentityError::Malformed { line: 1, .. })
        ),
        "wrong magic"
    );
    let other = Identity::from_seed(&[8; 32]).verifier_key();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&bad, format!("{}\n{}\n{other}\n", lines[0], lines[1])).unwrap();
    assert!(matches!(
        Identity::load(&bad),
        Err(IdentityError::Malformed { line: 3, .. })
    ));
}

#[test]
fn wrong_signature_is_rejected_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    fill(&mut log, 5, 5);
    let before = snapshot_of(&log);
    let mut bad = log.sign_next(1, T0 + 10, offer(99));
    bad.signature[10] ^= 1;
    let good = log.sign_next(0, T0 + 10, offer(98));
    let err = log.append_batch(vec![good, bad]).unwrap_err();
    match &err {
        LogError::Signature { index, source, .. } => {
            assert_eq!(*index, 7);
            assert!(matches!(source, VerifyError::BadSignature { .. }));
        }
        other => panic!("expected a signature error, got {other}"),
    }
    // Signed by another key: also a signature error for that entry.
    let foreign = Entry::sign(&SigningKey::from_bytes(&[3; 32]), 6, T0 + 10, offer(1));
    assert!(matches!(
        log.append(foreign).unwrap_err(),
        LogError::Rule {
            source: RuleError::WrongAuthor { seq: 6, .. },
            ..
        }
    ));
    assert_eq!(snapshot_of(&log), before);
    drop(log);
    assert_eq!(snapshot(&dir), before);
}

fn snapshot_of(log: &Log) -> (u64, Vec<u8>, Vec<Vec<u8>>) {
    let size = log.size();
    (
        size,
        log.checkpoint().to_vec(),
        log.reader().entries(0, size).unwrap(),
    )
}

#[test]
fn reordered_or_missing_entries_are_rejected_at_append() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    let before = snapshot_of(&log);
    let e1 = log.sign_next(0, T0 + 1, offer(1));
    let e2 = log.sign_next(1, T0 + 2, offer(2));
    let e3 = log.sign_next(2, T0 + 3, offer(3));
    let err = log.append_batch(vec![e2.clone(), e1.clone()]).unwrap_err();
    assert!(matches!(
        err,
        LogError::Rule {
            source: RuleError::WrongSeq {
                expected: 1,
                found: 2
            },
            ..
        }
    ));
    let err = log.append_batch(vec![e1.clone(), e3]).unwrap_err();
    assert!(matches!(
        err,
        LogError::Rule {
            source: RuleError::WrongSeq {
                expected: 2,
                found: 3
            },
            ..
        }
    ));
    assert_eq!(snapshot_of(&log), before);
    log.append_batch(vec![e1, e2]).unwrap();
    assert_eq!(log.size(), 3);
}

#[test]
fn overdraw_is_rejected_at_append() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = new_log(&a_dir, 1, "A", Sector::Startup);
    let b = new_log(&b_dir, 2, "B", Sector::Public);
    let b_key = b.identity().signing_key().clone();
    let a_pk = a.identity().public_key();
    let b_pk = b.identity().public_key();
    let admit = a.sign_next(
        0,
        T0,
        Body::Admission(Admission {
            organisation: "B".into(),
            sector: Sector::Public,
            member: b_pk,
        }),
    );
    let deposit = a.sign_next(
        1,
        T0,
        Body::Deposit(Deposit {
            member: a_pk,
            eur_cents: 1_000,
            money: Money::Private,
            reference: "SEPA 2026-001".into(),
        }),
    );
    a.append_batch(vec![admit, deposit]).unwrap();
    let pay = |a: &Log, cents, offset, money| {
        let terms = SettlementTerms {
            job_id: [offset as u8; 32],
            payer: a_pk,
            payee: b_pk,
            credits_cents: cents,
            money,
            receipts: vec![],
        };
        a.sign_next(offset, T0 + 5, Body::Settlement(terms.cosign(&b_key)))
    };
    let ok = pay(&a, 600, 0, Money::Private);
    let too_much = pay(&a, 500, 1, Money::Private);
    let before = snapshot_of(&a);
    let err = a.append_batch(vec![ok.clone(), too_much]).unwrap_err();
    match err {
        LogError::Rule {
            source:
                RuleError::Overdraw {
                    seq,
                    money,
                    needed,
                    available,
                },
            ..
        } => {
            assert_eq!(
                (seq, money, needed, available),
                (4, Money::Private, 500, 400)
            );
        }
        other => panic!("expected Overdraw, got {other}"),
    }
    assert_eq!(snapshot_of(&a), before);
    assert_eq!(a.state().balance_cents(), 1_000);
    a.append(ok.clone()).unwrap();
    assert_eq!(a.state().balance_cents(), 400);
    // Public and private money stay apart: private credits never pay a public settlement.
    assert_eq!(
        (
            a.state().purse_cents(Money::Private),
            a.state().purse_cents(Money::Public)
        ),
        (400, 0)
    );
    let public = pay(&a, 1, 0, Money::Public);
    match a.append(public).unwrap_err() {
        LogError::Rule {
            source: RuleError::Overdraw {
                money, available, ..
            },
            ..
        } => assert_eq!((money, available), (Money::Public, 0)),
        other => panic!("expected Overdraw, got {other}"),
    }
    assert_eq!(a.state().balance_cents(), 400);
    // Replaying the same co-signed fact is refused.
    let mut replay = ok;
    replay.seq = 4;
    let replay = Entry::sign(
        a.identity().signing_key(),
        4,
        replay.timestamp_ms,
        replay.body,
    );
    assert!(matches!(
        a.append(replay).unwrap_err(),
        LogError::Rule {
            source: RuleError::DuplicateFact {
                seq: 4,
                kind: "settlement",
                ..
            },
            ..
        }
    ));
    // The state survives a reopen.
    drop(a);
    assert_eq!(Log::open(&a_dir).unwrap().state().balance_cents(), 400);
}

#[test]
fn flipped_byte_in_a_stored_entry_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    fill(&mut log, 1_500, 500);
    drop(log);
    let before = snapshot(&dir);
    // In the tail (re-verified on open): refused on open, naming the entry.
    let store = SledStore::open(&dir.join(STORE_DIR_NAME)).unwrap();
    let idx = 1_400;
    let mut bytes = store.entries(idx, idx + 1).unwrap().remove(0);
    bytes[60] ^= 0x01;
    store.raw_replace_entry(idx, &bytes).unwrap();
    drop(store);
    let err = LogReader::open(&dir).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { reason, .. } if reason.starts_with("entry 1400: leaf hash")),
        "{err}"
    );
    // Before the tail: open succeeds, the audit names the entry.
    restore_entry(&dir, idx, &before.2[idx as usize]);
    let store = SledStore::open(&dir.join(STORE_DIR_NAME)).unwrap();
    let mut bytes = before.2[10].clone();
    bytes[60] ^= 0x01;
    store.raw_replace_entry(10, &bytes).unwrap();
    drop(store);
    assert!(LogReader::open(&dir).is_ok());
    let err = audit_dirs(std::slice::from_ref(&dir), &AuditOptions::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            AuditError::Signature { index: 10, .. } | AuditError::Decode { index: 10, .. }
        ),
        "{err}"
    );
    // Nothing else changed: restoring the byte restores the log.
    restore_entry(&dir, 10, &before.2[10]);
    assert_eq!(snapshot(&dir), before);
    audit_dirs(&[dir], &AuditOptions::default()).unwrap();
}

fn restore_entry(dir: &Path, idx: u64, bytes: &[u8]) {
    let store = SledStore::open(&dir.join(STORE_DIR_NAME)).unwrap();
    store.raw_replace_entry(idx, bytes).unwrap();
}

#[test]
fn missing_or_swapped_stored_entries_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    fill(&mut log, 40, 40);
    drop(log);
    let before = snapshot(&dir);
    let store = SledStore::open(&dir.join(STORE_DIR_NAME)).unwrap();
    store.raw_remove_entry(20).unwrap();
    drop(store);
    let err = LogReader::open(&dir).unwrap_err();
    assert!(
        matches!(&err, LogError::Store(leam_ledger::store::StoreError::Missing { what, size: 41, .. }) if what == "entry 20"),
        "{err}"
    );
    restore_entry(&dir, 20, &before.2[20]);
    restore_entry(&dir, 21, &before.2[22]);
    restore_entry(&dir, 22, &before.2[21]);
    let err = LogReader::open(&dir).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { reason, .. } if reason.starts_with("entry 21: leaf hash")),
        "{err}"
    );
    restore_entry(&dir, 21, &before.2[21]);
    restore_entry(&dir, 22, &before.2[22]);
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn non_canonical_entry_in_the_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    drop(new_log(&dir, 1, "A", Sector::Public));
    let store = SledStore::open(&dir.join(STORE_DIR_NAME)).unwrap();
    let mut bytes = store.entries(0, 1).unwrap().remove(0);
    bytes.push(0); // a trailing byte: not the canonical encoding
                   // Make the stored level-0 hash (and thus the root of this size-1 tree) agree, so that only
                   // the decoder can object.
    store.raw_replace_entry(0, &bytes).unwrap();
    store
        .raw_insert(&SledStore::hash_block_key(0), &merkle::leaf_hash(&bytes))
        .unwrap();
    drop(store);
    let err = LogReader::open(&dir).unwrap_err();
    // The tree hash no longer matches the signed checkpoint: caught before decoding.
    assert!(
        matches!(&err, LogError::Corrupt { reason, .. } if reason.starts_with("tree hash of the stored hashes")),
        "{err}"
    );
}

#[test]
fn truncated_or_rolled_back_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    fill(&mut log, 100, 100);
    drop(log);
    let early = tmp.path().join("early.sled");
    copy_dir(&dir.join(STORE_DIR_NAME), &early);
    let mut log = Log::open(&dir).unwrap();
    fill(&mut log, 100, 50);
    drop(log);
    let before = snapshot(&dir);
    // Roll the store back to the earlier copy (what a truncated, crash-recovered store does).
    let current = tmp.path().join("current.sled");
    std::fs::rename(dir.join(STORE_DIR_NAME), &current).unwrap();
    copy_dir(&early, &dir.join(STORE_DIR_NAME));
    let err = LogReader::open(&dir).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { reason, .. }
            if reason.contains("records size 201 but the store holds only 101 entries")),
        "{err}"
    );
    std::fs::remove_dir_all(dir.join(STORE_DIR_NAME)).unwrap();
    std::fs::rename(&current, dir.join(STORE_DIR_NAME)).unwrap();
    assert_eq!(snapshot(&dir), before);
    // Truncate sled's data file itself: the open fails with an error, never silently.
    let db = largest_file(&dir.join(STORE_DIR_NAME));
    let len = std::fs::metadata(&db).unwrap().len();
    let saved = std::fs::read(&db).unwrap();
    // (Cutting only the unused, preallocated end of sled's segment loses nothing; cut into
    // the data.)
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len / 10).unwrap();
    drop(f);
    let err = LogReader::open(&dir).unwrap_err();
    assert!(
        matches!(&err, LogError::Store(leam_ledger::store::StoreError::Backend { path, message })
            if *path == dir.join(STORE_DIR_NAME) && message.contains("corrupted")),
        "{err}"
    );
    std::fs::write(&db, saved).unwrap();
    assert_eq!(snapshot(&dir), before);
}

fn largest_file(dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let len = e.metadata().unwrap().len();
                if best.as_ref().is_none_or(|(l, _)| len > *l) {
                    best = Some((len, e.path()));
                }
            }
        }
    }
    best.unwrap().1
}

/// Two nodes trade: B (startup) publishes a job that names B as its referee, leases compute from
/// A (science), A computes a shard, B accepts it as referee, B pays A. Both logs hold the co-signed facts; the fold counts them once.
fn two_nodes(tmp: &Path) -> (PathBuf, PathBuf, Log, Log) {
    let (a_dir, b_dir) = (tmp.join("a"), tmp.join("b"));
    let mut a = new_log(&a_dir, 1, "Forschungszentrum A", Sector::Science);
    let mut b = new_log(&b_dir, 2, "Startup B", Sector::Startup);
    let (ak, bk) = (
        a.identity().signing_key().clone(),
        b.identity().signing_key().clone(),
    );
    let (apk, bpk) = (ak.verifying_key().to_bytes(), bk.verifying_key().to_bytes());
    let job_entry = Job {
        description: format!(
            "leam-job/v1\nname two nodes\nreferee {}\n",
            hex::encode(bpk)
        )
        .into_bytes(),
    };
    let job = job_entry.id();
    let lease = LeaseTerms {
        job_id: job,
        bidder: bpk,
        provider: apk,
        offer_id: 1,
        compute_units: 1_000,
        price_cents: 2_500,
        expires_ms: T0 + 3_600_000,
    };
    let receipt = ReceiptTerms {
        job_id: job,
        shard: 0,
        bidder: bpk,
        provider: apk,
        lease: [0x44; 32],
        input_commitment: [1; 32],
        output_commitment: [2; 32],
        compute_units: 1_000,
        gpu_ms: 42_000,
        device_fingerprint: [3; 32],
    };
    let settle = SettlementTerms {
        job_id: job,
        payer: bpk,
        payee: apk,
        credits_cents: 2_500,
        money: Money::Public,
        receipts: vec![],
    };
    let admit = |pk, org: &str, sector| {
        Body::Admission(Admission {
            organisation: org.into(),
            sector,
            member: pk,
        })
    };
    let b_entries = vec![
        admit(apk, "Forschungszentrum A", Sector::Science),
        Body::Job(job_entry),
        Body::Deposit(Deposit {
            member: bpk,
            eur_cents: 10_000,
            money: Money::Public,
            reference: "EXIST grant 2026/17".into(),
        }),
        Body::Lease(lease.clone().cosign(&ak)),
        Body::Receipt(receipt.clone().cosign(&ak)),
        Body::Verdict(Verdict {
            job_id: job,
            shard: 0,
            provider: apk,
            output_commitment: [2; 32],
            accepted: true,
        }),
        Body::Settlement(settle.clone().cosign(&ak)),
    ];
    let a_entries = vec![
        admit(bpk, "Startup B", Sector::Startup),
        Body::Lease(lease.cosign(&bk)),
        Body::Receipt(receipt.cosign(&bk)),
        Body::Settlement(settle.cosign(&bk)),
    ];
    let batch = |log: &Log, bodies: Vec<Body>| -> Vec<Entry> {
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| log.sign_next(i as u64, T0 + 1_000, body))
            .collect()
    };
    let eb = batch(&b, b_entries);
    b.append_batch(eb).unwrap();
    let ea = batch(&a, a_entries);
    a.append_batch(ea).unwrap();
    (a_dir, b_dir, a, b)
}

#[test]
fn audit_and_fold_two_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir, a, b) = two_nodes(tmp.path());
    drop((a, b));
    let report = audit_dirs(&[a_dir.clone(), b_dir.clone()], &AuditOptions::default()).unwrap();
    let acc = &report.accounting;
    assert_eq!((acc.logs, acc.entries, acc.facts), (2, 13, 3));
    assert_eq!(acc.verdicts_ignored, 0);
    let fa = &acc.organisations["Forschungszentrum A"].totals;
    let sb = &acc.organisations["Startup B"].totals;
    assert_eq!(
        (fa.compute_contributed_units, fa.compute_contributed_gpu_ms),
        (1_000, 42_000)
    );
    assert_eq!(fa.credit_balance_cents, 2_500);
    // The grant-funded settlement reaches the provider as public money.
    assert_eq!(
        (fa.credit_public_cents, fa.credit_private_cents),
        (2_500, 0)
    );
    assert_eq!(
        (sb.compute_consumed_units, sb.compute_consumed_gpu_ms),
        (1_000, 42_000)
    );
    assert_eq!(sb.credit_balance_cents, 7_500);
    assert_eq!(
        (sb.credit_public_cents, sb.credit_private_cents),
        (7_500, 0)
    );
    assert_eq!(
        (sb.funding_public_eur_cents, sb.funding_private_eur_cents),
        (10_000, 0)
    );
    assert_eq!(
        acc.sectors[&Sector::Science].compute_contributed_units,
        1_000
    );
    assert_eq!(
        acc.sectors[&Sector::Startup].funding_public_eur_cents,
        10_000
    );
    assert_eq!(acc.sectors[&Sector::Public], Default::default());
    // Same report whatever the order of directories.
    let again = audit_dirs(&[b_dir, a_dir], &AuditOptions::default()).unwrap();
    assert_eq!(&again.accounting, acc);
    // Signatures: B has 8 entries, 3 of them co-signed; A has 5 entries, 3 co-signed.
    let sigs: u64 = report.logs.iter().map(|l| l.signatures_verified).sum();
    assert_eq!(sigs, 8 + 3 + 5 + 3);
}

#[test]
fn forked_checkpoint_yields_conclusive_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    fill(&mut log, 2, 2); // size 3
    drop(log);
    // Another history under the same key: index 1 onwards differs.
    let fork = tmp.path().join("fork");
    let mut g = Log::create(
        &fork,
        Identity::from_seed(&[1; 32]),
        &member("A", Sector::Public),
        T0,
    )
    .unwrap();
    g.append(g.sign_next(0, T0 + 1, offer(77))).unwrap();
    fill(&mut g, 2, 2); // size 4
    drop(g);
    let state = tmp.path().join("auditor.json");
    let opts = AuditOptions {
        evidence: None,
        state: Some(state.clone()),
        witnesses: vec![],
        genesis: None,
    };
    audit_dirs(std::slice::from_ref(&dir), &opts).unwrap();
    let saved = std::fs::read(&state).unwrap();
    let err = audit_dirs(std::slice::from_ref(&fork), &opts).unwrap_err();
    match err {
        AuditError::Inconsistent {
            old_size, evidence, ..
        } => {
            assert_eq!(old_size, 3);
            let kind = evidence.verify().unwrap();
            assert!(kind.is_conclusive(), "{kind:?}");
            assert!(matches!(
                kind,
                EquivocationKind::ForkedPrefix {
                    old_size: 3,
                    new_size: 4,
                    ..
                }
            ));
            // Portable: the encoding decodes and verifies the same way.
            let bytes = evidence.encode();
            let back = leam_ledger::evidence::Equivocation::decode(bytes.as_bytes()).unwrap();
            assert_eq!(back.verify().unwrap(), kind);
            // A third node records the evidence in its own log; the fold counts it against A.
            let mut c = new_log(&tmp.path().join("c"), 3, "Auditor C", Sector::Public);
            let accused = Identity::from_seed(&[1; 32]).public_key();
            let admit = c.sign_next(
                0,
                T0,
                Body::Admission(Admission {
                    organisation: "A".into(),
                    sector: Sector::Public,
                    member: accused,
                }),
            );
            c.append(admit).unwrap();
            let evidence_entry = |c: &Log, bytes: Vec<u8>| {
                c.sign_next(
                    0,
                    T0,
                    Body::Evidence(Evidence {
                        accused,
                        kind: EvidenceKind::CheckpointEquivocation,
                        bytes,
                    }),
                )
            };
            let forged = evidence_entry(&c, b"{}".to_vec());
            assert!(matches!(
                c.append(forged).unwrap_err(),
                LogError::Rule {
                    source: RuleError::BadEvidence { seq: 2, .. },
                    ..
                }
            ));
            let real = evidence_entry(&c, bytes.into_bytes());
            c.append(real).unwrap();
            drop(c);
            let report = audit_dirs(
                &[dir.clone(), tmp.path().join("c")],
                &AuditOptions::default(),
            )
            .unwrap();
            assert_eq!(
                report.accounting.organisations["A"].totals.evidence_against,
                1
            );
        }
        other => panic!("expected Inconsistent, got {other}"),
    }
    // The failed audit did not change the auditor's state.
    assert_eq!(std::fs::read(&state).unwrap(), saved);
    // The honest log keeps verifying, and grows consistently.
    let mut log = Log::open(&dir).unwrap();
    fill(&mut log, 5, 5);
    drop(log);
    let report = audit_dirs(&[dir], &opts).unwrap();
    assert_eq!(report.logs[0].consistent_with_size, Some(3));
}

#[test]
fn witness_cosignature_is_stored_and_audited() {
    use leam_ledger::checkpoint::Cosigner;
    use leam_ledger::witness::{FileState, Witness};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    fill(&mut log, 3, 3);
    let wdir = tmp.path().join("witness");
    std::fs::create_dir_all(&wdir).unwrap();
    let cosigner = Cosigner::new("witness.example", SigningKey::from_bytes(&[5; 32])).unwrap();
    let wkey = cosigner.verifier().to_string();
    let mut w = Witness::new(cosigner, FileState::open(&wdir).unwrap());
    let log_verifier = leam_ledger::identity::log_verifier(&log.identity().public_key()).unwrap();
    let line = w
        .cosign(log.checkpoint(), &log_verifier, &[], 1_767_225_600)
        .unwrap();
    log.add_cosignature(&line, w.cosigner().verifier()).unwrap();
    drop(log);
    let note = std::fs::read_to_string(dir.join(CHECKPOINT_FILE_NAME)).unwrap();
    assert!(note.ends_with(&line), "{note}");
    let opts = AuditOptions {
        evidence: None,
        state: None,
        witnesses: vec![wkey],
        genesis: None,
    };
    let report = audit_dirs(std::slice::from_ref(&dir), &opts).unwrap();
    assert_eq!(
        report.logs[0].cosigned_by,
        vec!["witness.example".to_string()]
    );
    // Reopen keeps the cosigned checkpoint.
    assert_eq!(Log::open(&dir).unwrap().checkpoint(), note.as_bytes());
}

#[test]
fn auditor_notices_a_whole_node_rolled_back() {
    // A node that restores an old copy of its whole directory (store and checkpoint file) looks
    // self-consistent; only an auditor who saw a later checkpoint can tell.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    fill(&mut log, 2, 2);
    drop(log);
    let old = tmp.path().join("old");
    copy_dir(&dir, &old);
    let mut log = Log::open(&dir).unwrap();
    fill(&mut log, 5, 5);
    drop(log);
    let state = tmp.path().join("auditor.json");
    let opts = AuditOptions {
        evidence: None,
        state: Some(state.clone()),
        witnesses: vec![],
        genesis: None,
    };
    audit_dirs(std::slice::from_ref(&dir), &opts).unwrap();
    match audit_dirs(std::slice::from_ref(&old), &opts).unwrap_err() {
        AuditError::Inconsistent {
            old_size, reason, ..
        } => {
            assert_eq!(old_size, 8);
            assert_eq!(reason, "the log shrank from 8 to 3 entries");
        }
        other => panic!("expected Inconsistent, got {other}"),
    }
}

#[test]
fn auditor_state_file_errors_are_precise() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    drop(new_log(&dir, 1, "A", Sector::Public));
    let state = tmp.path().join("auditor.json");
    let opts = AuditOptions {
        evidence: None,
        state: Some(state.clone()),
        witnesses: vec![],
        genesis: None,
    };
    std::fs::write(&state, b"{\"version\": 2, \"logs\": {}}").unwrap();
    match audit_dirs(std::slice::from_ref(&dir), &opts).unwrap_err() {
        AuditError::State { path, reason } => {
            assert_eq!(path, state);
            assert_eq!(reason, "version 2, expected 1");
        }
        other => panic!("expected a state error, got {other}"),
    }
    std::fs::write(&state, b"not json").unwrap();
    assert!(matches!(
        audit_dirs(std::slice::from_ref(&dir), &opts).unwrap_err(),
        AuditError::State { reason, .. } if reason.starts_with("not valid state JSON")
    ));
    // The unreadable state was not overwritten.
    assert_eq!(std::fs::read(&state).unwrap(), b"not json");
    std::fs::remove_file(&state).unwrap();
    audit_dirs(std::slice::from_ref(&dir), &opts).unwrap();
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["version"], 1);
}

#[test]
fn a_checkpoint_file_behind_the_store_is_brought_up_to_date() {
    // What a crash between the store's commit and the file's rename leaves behind.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut log = new_log(&dir, 1, "A", Sector::Public);
    let older = log.checkpoint().to_vec();
    fill(&mut log, 3, 3);
    let current = log.checkpoint().to_vec();
    drop(log);
    std::fs::write(dir.join(CHECKPOINT_FILE_NAME), &older).unwrap();
    assert_eq!(LogReader::open(&dir).unwrap().head().size, 4);
    let log = Log::open(&dir).unwrap();
    assert_eq!(
        std::fs::read(dir.join(CHECKPOINT_FILE_NAME)).unwrap(),
        current
    );
    assert_eq!(log.checkpoint(), current.as_slice());
}
