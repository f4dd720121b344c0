//! Federation: the genesis document (golden vector, round trips, strict parsing), the
//! membership rule, verified replicas of other members' logs (chunked replication, every bad
//! extension refused with nothing stored, equivocation evidence), detached co-signatures and
//! the audit's allow-list (`specs/federation.md`).

use std::path::Path;

use ed25519_dalek::SigningKey;
use leam_ledger::account::Membership;
use leam_ledger::audit::{audit_dirs, AuditOptions, AuditReport};
use leam_ledger::checkpoint::{Checkpoint, Cosigner};
use leam_ledger::entry::*;
use leam_ledger::evidence::EquivocationKind;
use leam_ledger::genesis::{
    self, signer_name, Founder, Genesis, GenesisError, SignedGenesis, GENESIS_BYTES_MAX,
    GENESIS_MEMBERS_MAX,
};
use leam_ledger::identity::{self, Identity};
use leam_ledger::log::{Log, LogReader};
use leam_ledger::note::Signer;
use leam_ledger::replica::{Classified, Replica, ReplicaError, REPLICA_EXTEND_ENTRIES_MAX};
use proptest::prelude::*;

const T0: u64 = 1_767_225_600_000;

fn pk(seed: u8) -> PublicKey {
    Identity::from_seed(&[seed; 32]).public_key()
}

fn sk(seed: u8) -> SigningKey {
    Identity::from_seed(&[seed; 32]).signing_key().clone()
}

fn member(org: &str, sector: Sector) -> Membership {
    Membership {
        organisation: org.into(),
        sector,
    }
}

fn founder(seed: u8, org: &str, sector: Sector) -> Founder {
    Founder {
        organisation: org.into(),
        sector,
        key: pk(seed),
    }
}

// ---------------------------------------------------------------------------------------------
// Genesis: golden vector
// ---------------------------------------------------------------------------------------------

/// The three founders of the golden vector (seeds 32 × 0x01, 0x02, 0x03).
fn golden_founders() -> Vec<Founder> {
    vec![
        founder(1, "Rechenzentrum Beispielstadt", Sector::Public),
        founder(2, "TU Beispiel", Sector::Science),
        founder(3, "Beispiel AI GmbH", Sector::Startup),
    ]
}

fn golden() -> SignedGenesis {
    let g = Genesis::new(20, 2, golden_founders()).unwrap();
    let mut s = SignedGenesis::unsigned(g);
    for seed in [3, 1, 2] {
        s.sign(&sk(seed)).unwrap();
    }
    s
}

const GOLDEN_DOCUMENT: &str = concat!(
    "leam-genesis/v1\n",
    "subsidy-percent 20\n",
    "threshold 2\n",
    "member 8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394 science TU Beispiel\n",
    "member 8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c public Rechenzentrum Beispielstadt\n",
    "member ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1 startup Beispiel AI GmbH\n",
    "\n",
    "\u{2014} leam.member/8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394 2EMs9hu/lMTUzSIqeBcO33X9n8WXEnwHVk/ND+rlgPPK9d2WEaDQfV8dHHteyunpXl+n+33KH1eHqbJdsRS6KJu9QAw=\n",
    "\u{2014} leam.member/8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c lypFpq5IXHUc/WsgHBCF8pUVIm0BBPfWXyZmO66foYBZx7wLFVb04A/jFuFIDYM0KMpFPxikXnrmEsJ5P7hC14VoRwQ=\n",
    "\u{2014} leam.member/ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1 p0Ar0EUpX2t/YrAFyTRz0phaEavsjLmcwLVCiMBtxMsNa/JiAHPWYqX+Pd5Cgh12LTf1ZUn67NnDsiPVRdlzqp0b5go=\n",
);
const GOLDEN_ID: &str = "ac6d8d707f7b146567c39bed7e2bbaead9414148276ec4b88b4683c48ab8a45c";

#[test]
fn genesis_golden_vector() {
    let s = golden();
    assert_eq!(s.encode(), GOLDEN_DOCUMENT);
    assert_eq!(hex::encode(s.genesis.id()), GOLDEN_ID);
    assert_eq!(SignedGenesis::parse(GOLDEN_DOCUMENT.as_bytes()).unwrap(), s);
    assert_eq!(s.verify_complete().unwrap(), &s.genesis);
    // The spec quotes the document, its id and the seeds.
    let spec_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/federation.md");
    let spec = std::fs::read_to_string(spec_path).expect("specs/federation.md exists");
    let marker = "<!-- genesis-example -->\n```text\n";
    let start = spec
        .find(marker)
        .unwrap_or_else(|| panic!("{spec_path} lacks {marker:?}"))
        + marker.len();
    let end = start + spec[start..].find("```").expect("the block is closed");
    assert_eq!(
        &spec[start..end],
        GOLDEN_DOCUMENT,
        "the genesis example in {spec_path} differs from the code; regenerate with \
         `cargo test -p leam-ledger --test ledger_federation print_genesis_example -- --ignored --nocapture`"
    );
    assert!(
        spec.contains(GOLDEN_ID),
        "{spec_path} lacks the id {GOLDEN_ID}"
    );
    for seed in [1u8, 2, 3] {
        assert!(
            spec.contains(&hex::encode(pk(seed))),
            "{spec_path} lacks the key of seed {seed}"
        );
    }
}

#[test]
#[ignore = "prints the genesis example for specs/federation.md"]
fn print_genesis_example() {
    let s = golden();
    println!("<!-- genesis-example -->\n```text\n{}```", s.encode());
    println!("id {}", hex::encode(s.genesis.id()));
    for seed in [1u8, 2, 3] {
        println!("seed {seed}: key {}", hex::encode(pk(seed)));
    }
}

// ---------------------------------------------------------------------------------------------
// Genesis: round trips and strict parsing
// ---------------------------------------------------------------------------------------------

fn signed_strategy() -> impl Strategy<Value = SignedGenesis> {
    (
        prop::collection::btree_set(any::<[u8; 32]>(), 1..7),
        prop::collection::vec(("\\PC{1,30}", 0usize..4, any::<bool>()), 7),
        0u8..=100,
        any::<u16>(),
    )
        .prop_map(|(seeds, details, subsidy, t)| {
            let keys: Vec<SigningKey> = seeds.iter().map(SigningKey::from_bytes).collect();
            let members: Vec<Founder> = keys
                .iter()
                .zip(&details)
                .enumerate()
                .map(|(i, (k, (org, sector, _)))| Founder {
                    // Distinct names: one sector per organisation.
                    organisation: format!("{org} {i}"),
                    sector: Sector::ALL[*sector],
                    key: k.verifying_key().to_bytes(),
                })
                .collect();
            let threshold = 1 + t % members.len() as u16;
            let mut s = SignedGenesis::unsigned(Genesis::new(subsidy, threshold, members).unwrap());
            for (k, (_, _, signs)) in keys.iter().zip(&details) {
                if *signs {
                    s.sign(k).unwrap();
                }
            }
            s
        })
}

/// Parse must not panic; whatever parses must re-encode to exactly the input.
fn parse_is_canonical(bytes: &[u8]) {
    if let Ok(s) = SignedGenesis::parse(bytes) {
        assert_eq!(s.encode().as_bytes(), bytes);
    }
}

proptest! {
    #[test]
    fn genesis_round_trips(s in signed_strategy()) {
        let text = s.encode();
        let parsed = SignedGenesis::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &s);
        prop_assert_eq!(parsed.encode(), text);
        prop_assert_eq!(parsed.signed_by().len() + parsed.missing_signatures().len(), s.genesis.members.len());
        prop_assert_eq!(parsed.verify_complete().is_ok(), parsed.missing_signatures().is_empty());
    }

    #[test]
    fn genesis_parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        parse_is_canonical(&bytes);
    }

    #[test]
    fn genesis_parse_never_panics_on_mutated_documents(
        s in signed_strategy(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = s.encode().into_bytes();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.push(byte),
            }
        }
        parse_is_canonical(&bytes);
    }
}

/// Replace line `n` (1-based) of a document.
fn with_line(doc: &str, n: usize, line: &str) -> String {
    let mut lines: Vec<&str> = doc.split('\n').collect();
    lines[n - 1] = line;
    lines.join("\n")
}

#[test]
fn genesis_parse_rejects_each_malformation_precisely() {
    let doc = GOLDEN_DOCUMENT;
    let body_lines = 6; // magic, subsidy, threshold, three members
    let err = |text: &str| SignedGenesis::parse(text.as_bytes()).unwrap_err();
    let line_err = |text: &str, want_line: usize, want_field: &str| match err(text) {
        GenesisError::Line { line, field, .. } => {
            assert_eq!((line, field), (want_line, want_field), "{text}")
        }
        e => panic!("{e} for {text}"),
    };
    line_err(&with_line(doc, 1, "leam-genesis/v2"), 1, "magic");
    line_err(
        &with_line(doc, 2, "subsidy-percent 020"),
        2,
        "subsidy-percent",
    );
    line_err(
        &with_line(doc, 2, "subsidy-percent +20"),
        2,
        "subsidy-percent",
    );
    line_err(
        &with_line(doc, 2, "subsidy-percent  20"),
        2,
        "subsidy-percent",
    );
    line_err(&with_line(doc, 3, "threshold 02"), 3, "threshold");
    line_err(&with_line(doc, 3, "threshold 70000"), 3, "threshold");
    assert_eq!(
        err(&with_line(doc, 2, "subsidy-percent 101")),
        GenesisError::SubsidyPercent { found: 101 }
    );
    assert_eq!(
        err(&with_line(doc, 3, "threshold 0")),
        GenesisError::Threshold {
            found: 0,
            members: 3
        }
    );
    assert_eq!(
        err(&with_line(doc, 3, "threshold 4")),
        GenesisError::Threshold {
            found: 4,
            members: 3
        }
    );
    let lines: Vec<&str> = doc.split('\n').collect();
    // Upper-case hex, unknown sector, missing organisation.
    line_err(&with_line(doc, 4, &lines[3].to_uppercase()), 4, "member");
    let upper_key = lines[3].replacen(&lines[3][7..71], &lines[3][7..71].to_uppercase(), 1);
    line_err(&with_line(doc, 4, &upper_key), 4, "key");
    let bad_sector = lines[3].replacen(" science ", " civic ", 1);
    line_err(&with_line(doc, 4, &bad_sector), 4, "sector");
    let no_organisation = &lines[3][..7 + 64 + 1 + "science".len()];
    line_err(&with_line(doc, 4, no_organisation), 4, "member");
    // Members out of order, or twice.
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    assert!(matches!(
        err(&swapped.join("\n")),
        GenesisError::MemberOrder { line: 5, .. }
    ));
    let mut twice = lines.clone();
    twice[4] = lines[3];
    assert!(matches!(
        err(&twice.join("\n")),
        GenesisError::DuplicateMember { .. }
    ));
    // No blank line; a missing final newline; trailing garbage.
    assert_eq!(
        err(&lines[..body_lines].join("\n")),
        GenesisError::MissingBlankLine
    );
    assert!(matches!(
        err(doc.strip_suffix('\n').unwrap()),
        GenesisError::SignatureLine { line: 10, .. }
    ));
    assert!(matches!(
        err(&format!("{doc}garbage\n")),
        GenesisError::SignatureLine { .. }
    ));
    // Signature lines out of order, duplicated, by a stranger, or wrong.
    let sig = |i: usize| lines[body_lines + 1 + i];
    let mut out_of_order = lines.clone();
    out_of_order.swap(body_lines + 1, body_lines + 2);
    assert!(matches!(
        err(&out_of_order.join("\n")),
        GenesisError::SignatureOrder { line: 9, .. }
    ));
    let mut dup = lines.clone();
    dup[body_lines + 2] = sig(0);
    assert!(matches!(
        err(&dup.join("\n")),
        GenesisError::SignatureOrder { line: 9, .. }
    ));
    let body = golden().genesis.body();
    let stranger = Signer::new(&signer_name(&pk(9)), sk(9)).unwrap();
    let stranger_line = stranger.sign(&body).unwrap().line();
    let with_stranger = format!("{body}\n{stranger_line}");
    assert_eq!(
        err(&with_stranger),
        GenesisError::NotFounder {
            line: 8,
            key: hex::encode(pk(9))
        }
    );
    // Founder 1's key signing under its ledger origin name is refused (wrong name).
    let as_log = Signer::new(&identity::origin_of(&pk(1)), sk(1)).unwrap();
    let log_line = as_log.sign(&body).unwrap().line();
    assert!(matches!(
        err(&format!("{body}\n{log_line}")),
        GenesisError::SignatureLine { line: 8, .. }
    ));
    // A founder's signature over another text.
    let other = Signer::new(&signer_name(&pk(1)), sk(1)).unwrap();
    let wrong = other.sign("another text\n").unwrap().line();
    match err(&format!("{body}\n{wrong}")) {
        GenesisError::BadSignature {
            organisation, key, ..
        } => {
            assert_eq!(
                (organisation.as_str(), key),
                ("Rechenzentrum Beispielstadt", hex::encode(pk(1)))
            )
        }
        e => panic!("{e}"),
    }
    // Size bound; not UTF-8.
    let big = vec![b'a'; GENESIS_BYTES_MAX + 1];
    assert_eq!(
        SignedGenesis::parse(&big).unwrap_err(),
        GenesisError::TooLarge {
            found: GENESIS_BYTES_MAX + 1,
            max: GENESIS_BYTES_MAX
        }
    );
    let mut bad_utf8 = doc.as_bytes().to_vec();
    bad_utf8[5] = 0xff;
    assert_eq!(
        SignedGenesis::parse(&bad_utf8).unwrap_err(),
        GenesisError::NotUtf8 { offset: 5 }
    );
    // A zero-signature document parses.
    let unsigned = format!("{body}\n");
    let parsed = SignedGenesis::parse(unsigned.as_bytes()).unwrap();
    assert!(parsed.signed_by().is_empty());
    assert_eq!(parsed.encode(), unsigned);
}

#[test]
fn genesis_signatures_are_collected_and_checked() {
    let g = Genesis::new(20, 2, golden_founders()).unwrap();
    let mut a = SignedGenesis::unsigned(g.clone());
    a.sign(&sk(1)).unwrap();
    let e = a.verify_complete().unwrap_err();
    assert_eq!(
        e,
        GenesisError::Incomplete {
            signed: 1,
            members: 3,
            missing: [(2u8, "TU Beispiel"), (3, "Beispiel AI GmbH")]
                .iter()
                .map(|(s, o)| (pk(*s), *o))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .map(|(k, o)| format!("{o} ({})", hex::encode(k)))
                .collect(),
        }
    );
    assert!(e.to_string().contains("TU Beispiel ("), "{e}");
    let mut missing = a.missing_signatures();
    missing.sort();
    let mut want = vec![pk(2), pk(3)];
    want.sort();
    assert_eq!(missing, want);
    // Founders sign separate copies; merging gives the complete document.
    let mut b =
        SignedGenesis::parse(SignedGenesis::unsigned(g.clone()).encode().as_bytes()).unwrap();
    b.sign(&sk(2)).unwrap();
    let mut c = SignedGenesis::unsigned(g.clone());
    c.sign(&sk(3)).unwrap();
    a.merge(&b).unwrap();
    a.merge(&c).unwrap();
    assert_eq!(a.encode(), GOLDEN_DOCUMENT);
    // Merging another federation's document is refused.
    let other = SignedGenesis::unsigned(Genesis::new(21, 2, golden_founders()).unwrap());
    assert!(matches!(
        a.merge(&other),
        Err(GenesisError::DifferentGenesis { .. })
    ));
    // Changing the body after signing invalidates the signatures.
    let mut changed = golden();
    changed.genesis.subsidy_percent = 30;
    assert!(matches!(
        changed.verify_complete(),
        Err(GenesisError::BadSignature { .. })
    ));
    assert!(SignedGenesis::parse(changed.encode().as_bytes()).is_err());
    // A stranger cannot sign.
    assert_eq!(
        a.sign(&sk(9)),
        Err(GenesisError::NotFounder {
            line: 0,
            key: hex::encode(pk(9))
        })
    );
}

#[test]
fn genesis_limits() {
    let members: Vec<Founder> = (0..GENESIS_MEMBERS_MAX)
        .map(|i| Founder {
            organisation: format!("Organisation {i}"),
            sector: Sector::ALL[i % 4],
            key: SigningKey::from_bytes(&[i as u8; 32])
                .verifying_key()
                .to_bytes(),
        })
        .collect();
    let g = Genesis::new(100, GENESIS_MEMBERS_MAX as u16, members.clone()).unwrap();
    let mut s = SignedGenesis::unsigned(g);
    for i in 0..GENESIS_MEMBERS_MAX {
        s.sign(&SigningKey::from_bytes(&[i as u8; 32])).unwrap();
    }
    // More signature lines than a checkpoint note may carry.
    let text = s.encode();
    assert!(text.len() < GENESIS_BYTES_MAX);
    let parsed = SignedGenesis::parse(text.as_bytes()).unwrap();
    parsed.verify_complete().unwrap();
    let mut more = members;
    more.push(founder(1, "One more", Sector::Public));
    // Seed 1 is among the 256 already: first the count is refused.
    assert_eq!(
        Genesis::new(0, 1, more),
        Err(GenesisError::MemberCount {
            found: GENESIS_MEMBERS_MAX + 1,
            max: GENESIS_MEMBERS_MAX
        })
    );
    // Organisation rules of the ledger.
    let long = "x".repeat(ORGANISATION_BYTES_MAX + 1);
    assert!(matches!(
        Genesis::new(0, 1, vec![founder(1, &long, Sector::Public)]),
        Err(GenesisError::Organisation { .. })
    ));
    assert!(matches!(
        Genesis::new(0, 1, vec![founder(1, "tab\there", Sector::Public)]),
        Err(GenesisError::Organisation { .. })
    ));
    assert!(matches!(
        Genesis::new(
            0,
            1,
            vec![Founder {
                organisation: "Weak".into(),
                sector: Sector::Public,
                key: [0; 32]
            }]
        ),
        Err(GenesisError::BadKey { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Membership
// ---------------------------------------------------------------------------------------------

fn admission(author: u8, seq: u64, member_seed: u8, org: &str, sector: Sector) -> Entry {
    Entry::sign(
        &sk(author),
        seq,
        T0,
        Body::Admission(Admission {
            organisation: org.into(),
            sector,
            member: pk(member_seed),
        }),
    )
}

#[test]
fn membership_needs_threshold_votes_and_iterates() {
    // Founders 1, 2, 3; threshold 2.
    let g = Genesis::new(20, 2, golden_founders()).unwrap();
    let votes = vec![
        // 4: one vote only.
        admission(1, 1, 4, "Four", Sector::Private),
        // 5: two founders.
        admission(1, 2, 5, "Five", Sector::Science),
        admission(2, 1, 5, "Five", Sector::Science),
        // 6: one founder and 5 (admitted in the first round).
        admission(3, 1, 6, "Six", Sector::Startup),
        admission(5, 1, 6, "Six", Sector::Startup),
        // 7: two votes, but for different organisations.
        admission(1, 3, 7, "Seven", Sector::Public),
        admission(2, 2, 7, "Seven Ltd", Sector::Public),
        // 8: two votes by non-members (4 and 9), and a self-admission.
        admission(4, 1, 8, "Eight", Sector::Public),
        admission(9, 1, 8, "Eight", Sector::Public),
        admission(8, 0, 8, "Eight", Sector::Public),
        // 1: founders keep their genesis membership.
        admission(2, 3, 1, "Elsewhere", Sector::Private),
        admission(3, 2, 1, "Elsewhere", Sector::Private),
    ];
    let m = genesis::members(&g, &votes);
    let keys: Vec<PublicKey> = m.keys().copied().collect();
    let mut want = vec![pk(1), pk(2), pk(3), pk(5), pk(6)];
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(m[&pk(5)], member("Five", Sector::Science));
    assert_eq!(m[&pk(6)], member("Six", Sector::Startup));
    assert_eq!(
        m[&pk(1)],
        member("Rechenzentrum Beispielstadt", Sector::Public)
    );
    // Independent of order.
    let reversed: Vec<Entry> = votes.iter().rev().cloned().collect();
    assert_eq!(genesis::members(&g, &reversed), m);
    assert_eq!(genesis::voters(&m, &pk(4), &votes).len(), 1);
    assert_eq!(genesis::voters(&m, &pk(8), &votes).len(), 0);
    // Two pairs over the threshold in one round: most votes, then smallest name.
    let tie = vec![
        admission(1, 1, 7, "Beta", Sector::Public),
        admission(2, 1, 7, "Beta", Sector::Public),
        admission(1, 2, 7, "Alpha", Sector::Public),
        admission(2, 2, 7, "Alpha", Sector::Public),
    ];
    assert_eq!(
        genesis::members(&g, &tie)[&pk(7)],
        member("Alpha", Sector::Public)
    );
    let mut most = tie.clone();
    most.push(admission(3, 1, 7, "Beta", Sector::Public));
    assert_eq!(
        genesis::members(&g, &most)[&pk(7)],
        member("Beta", Sector::Public)
    );
}

// ---------------------------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------------------------

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

fn new_log(dir: &Path, seed: u8, org: &str, sector: Sector) -> Log {
    Log::create(
        dir,
        Identity::from_seed(&[seed; 32]),
        &member(org, sector),
        T0,
    )
    .unwrap()
}

/// Appends `bodies` as one batch; returns the new checkpoint note.
fn append(log: &mut Log, bodies: Vec<Body>) -> Vec<u8> {
    let base = log.size();
    let entries = bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| log.sign_next(i as u64, T0 + base + i as u64, b))
        .collect();
    log.append_batch(entries).unwrap();
    log.checkpoint().to_vec()
}

/// A log of seed 1 with admissions, a deposit, a co-signed lease and settlement and offers,
/// appended in batches; returns the log and the checkpoint after each batch.
fn busy_log(dir: &Path) -> (Log, Vec<Vec<u8>>) {
    let mut log = new_log(dir, 1, "Rechenzentrum Beispielstadt", Sector::Public);
    let mut notes = vec![log.checkpoint().to_vec()];
    let job = [0xaa; 32];
    notes.push(append(
        &mut log,
        vec![
            Body::Admission(Admission {
                organisation: "TU Beispiel".into(),
                sector: Sector::Science,
                member: pk(2),
            }),
            Body::Deposit(Deposit {
                member: pk(1),
                eur_cents: 10_000,
                money: Money::Public,
                reference: "REF-1".into(),
            }),
        ],
    ));
    let lease = LeaseTerms {
        job_id: job,
        bidder: pk(1),
        provider: pk(2),
        offer_id: 1,
        compute_units: 1000,
        price_cents: 300,
        expires_ms: T0 + 10_000,
    };
    let settlement = SettlementTerms {
        job_id: job,
        payer: pk(1),
        payee: pk(2),
        credits_cents: 300,
        money: Money::Public,
        receipts: vec![],
    };
    notes.push(append(
        &mut log,
        vec![
            Body::Lease(lease.cosign(&sk(2))),
            Body::Settlement(settlement.cosign(&sk(2))),
        ],
    ));
    for k in [5u64, 1, 17, 3] {
        let base = log.size();
        notes.push(append(&mut log, (0..k).map(|i| offer(base + i)).collect()));
    }
    (log, notes)
}

fn size_of(note: &[u8]) -> u64 {
    let text = std::str::from_utf8(note).unwrap();
    let body = &text[..text.find("\n\n").unwrap() + 1];
    Checkpoint::parse(body).unwrap().size
}

/// Replicates `log` into `replica` by the checkpoints `notes` (in increasing size).
fn replicate(replica: &mut Replica, log: &LogReader, notes: &[Vec<u8>]) {
    for note in notes {
        let size = size_of(note);
        if size <= replica.size() {
            continue;
        }
        let entries = log.entries(replica.size(), size).unwrap();
        replica.extend(note, &entries).unwrap();
        assert_eq!(replica.size(), size);
        assert_eq!(replica.checkpoint(), note.as_slice());
    }
}

fn audit_one(dir: &Path) -> AuditReport {
    audit_dirs(&[dir.to_owned()], &AuditOptions::default()).unwrap()
}

#[test]
fn replica_follows_a_log_in_chunks_and_audits_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, rdir) = (tmp.path().join("log"), tmp.path().join("replica"));
    let (log, notes) = busy_log(&dir);
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    assert_eq!((r.size(), r.root()), (0, leam_ledger::merkle::empty_root()));
    assert!(r.checkpoint().is_empty());
    replicate(&mut r, log.reader(), &notes[..3]);
    drop(r);
    // Reopen and continue.
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    assert_eq!(r.size(), size_of(&notes[2]));
    replicate(&mut r, log.reader(), &notes);
    assert_eq!((r.size(), r.root()), (log.size(), log.reader().head().root));
    assert_eq!(r.checkpoint(), log.checkpoint());
    assert_eq!(r.decode_all().unwrap().len() as u64, log.size());
    assert_eq!(
        r.entries(3, 9).unwrap(),
        log.reader().entries(3, 9).unwrap()
    );
    assert_eq!(
        r.prove_consistency(5, log.size()).unwrap(),
        log.prove_consistency(5, log.size()).unwrap()
    );
    assert_eq!(r.state().balance_cents(), log.state().balance_cents());
    drop(r);
    drop(log);

    // A replica reads like the log itself.
    let (a, b) = (
        LogReader::open(&dir).unwrap(),
        LogReader::open(&rdir).unwrap(),
    );
    assert_eq!(a.head(), b.head());
    assert_eq!(a.key(), b.key());
    drop((a, b));
    let (ra, rb) = (audit_one(&dir), audit_one(&rdir));
    assert_eq!(ra.accounting, rb.accounting);
    let (la, lb) = (&ra.logs[0], &rb.logs[0]);
    assert_eq!(
        (&la.origin, la.size, &la.root, la.signatures_verified),
        (&lb.origin, lb.size, &lb.root, lb.signatures_verified)
    );
    // The log's own directory opens as a replica of its owner, not of anyone else.
    drop(Replica::open_or_create(&dir, pk(1)).unwrap());
    match Replica::open_or_create(&rdir, pk(2)).unwrap_err() {
        ReplicaError::Location { reason, .. } => {
            assert!(reason.contains(&hex::encode(pk(1))), "{reason}")
        }
        e => panic!("{e}"),
    }
}

/// Size, root and note of the replica in `dir`, after reopening it.
fn reopened(dir: &Path) -> (u64, [u8; 32], Vec<u8>) {
    let r = Replica::open_or_create(dir, pk(1)).unwrap();
    (r.size(), r.root(), r.checkpoint().to_vec())
}

#[test]
fn replica_refuses_bad_extensions_and_keeps_what_it_had() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, rdir) = (tmp.path().join("log"), tmp.path().join("replica"));
    let (log, notes) = busy_log(&dir);
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    replicate(&mut r, log.reader(), &notes[..4]);
    let before = (r.size(), r.root(), r.checkpoint().to_vec());
    let k = r.size();
    // The next batch: 1 offer (notes[4]).
    let note = &notes[4];
    let good = log.reader().entries(k, k + 1).unwrap();
    assert_eq!(size_of(note), k + 1);
    let check = |r: &Replica| assert_eq!((r.size(), r.root(), r.checkpoint().to_vec()), before);

    // Forged entry: one byte of the offer flipped.
    let mut forged = good.clone();
    let at = HEADER_BYTES + 3; // inside offer_id
    forged[0][at] ^= 1;
    match r.extend(note, &forged).unwrap_err() {
        ReplicaError::Signature { index, log, .. } => {
            assert_eq!((index, log), (k, hex::encode(pk(1))))
        }
        e => panic!("{e}"),
    }
    check(&r);
    // Wrong seq (validly signed by the owner).
    let wrong_seq = vec![Entry::sign(&sk(1), k + 1, T0 + 100, offer(99)).encode()];
    match r.extend(note, &wrong_seq).unwrap_err() {
        ReplicaError::Misplaced {
            index,
            field,
            expected,
            found,
            ..
        } => assert_eq!(
            (index, field, expected, found),
            (k, "seq", k.to_string(), (k + 1).to_string())
        ),
        e => panic!("{e}"),
    }
    check(&r);
    // Wrong author.
    let wrong_author = vec![Entry::sign(&sk(2), k, T0 + 100, offer(99)).encode()];
    match r.extend(note, &wrong_author).unwrap_err() {
        ReplicaError::Misplaced {
            field,
            expected,
            found,
            ..
        } => assert_eq!(
            (field, expected, found),
            ("author", hex::encode(pk(1)), hex::encode(pk(2)))
        ),
        e => panic!("{e}"),
    }
    check(&r);
    // A valid owner entry that the checkpoint does not commit to.
    let other = vec![Entry::sign(&sk(1), k, T0 + 100, offer(99)).encode()];
    match r.extend(note, &other).unwrap_err() {
        ReplicaError::RootMismatch { size, expected, .. } => {
            assert_eq!(size, k + 1);
            assert!(std::str::from_utf8(note).unwrap().contains(&{
                use base64::Engine as _;
                let mut root = [0u8; 32];
                hex::decode_to_slice(&expected, &mut root).unwrap();
                base64::engine::general_purpose::STANDARD.encode(root)
            }));
        }
        e => panic!("{e}"),
    }
    check(&r);
    // A log rule broken: time going backwards.
    let backwards = vec![Entry::sign(&sk(1), k, T0 - 1, offer(99)).encode()];
    assert!(matches!(
        r.extend(note, &backwards).unwrap_err(),
        ReplicaError::Rule { .. }
    ));
    check(&r);
    // Undecodable bytes.
    let mut trailing = good.clone();
    trailing[0].push(0);
    assert!(matches!(
        r.extend(note, &trailing).unwrap_err(),
        ReplicaError::Decode { index, .. } if index == k
    ));
    check(&r);
    // Checkpoint size not matching the entries.
    match r.extend(&notes[5], &good).unwrap_err() {
        ReplicaError::SizeMismatch {
            expected,
            found,
            replica,
            entries,
            ..
        } => assert_eq!(
            (expected, found, replica, entries),
            (k + 1, size_of(&notes[5]), k, 1)
        ),
        e => panic!("{e}"),
    }
    check(&r);
    // Checkpoint of another log, and the owner's origin signed by another key.
    let tmp2 = tempfile::tempdir().unwrap();
    let stranger = new_log(&tmp2.path().join("s"), 2, "TU Beispiel", Sector::Science);
    match r.extend(stranger.checkpoint(), &good).unwrap_err() {
        ReplicaError::Checkpoint { reason, .. } => {
            assert!(reason.contains(&identity::origin_of(&pk(2))), "{reason}")
        }
        e => panic!("{e}"),
    }
    let origin = identity::origin_of(&pk(1));
    let root = {
        let text = std::str::from_utf8(note).unwrap();
        Checkpoint::parse(&text[..text.find("\n\n").unwrap() + 1])
            .unwrap()
            .root
    };
    let by_other = Checkpoint::new(&origin, k + 1, root)
        .unwrap()
        .sign(&Signer::new(&origin, sk(2)).unwrap())
        .unwrap();
    assert!(matches!(
        r.extend(by_other.as_bytes(), &good).unwrap_err(),
        ReplicaError::Checkpoint { .. }
    ));
    assert!(matches!(
        r.classify(by_other.as_bytes()).unwrap_err(),
        ReplicaError::Checkpoint { .. }
    ));
    check(&r);
    // Too many entries.
    let many = vec![Vec::new(); REPLICA_EXTEND_ENTRIES_MAX + 1];
    assert!(matches!(
        r.extend(note, &many).unwrap_err(),
        ReplicaError::TooManyEntries { found, .. } if found == REPLICA_EXTEND_ENTRIES_MAX + 1
    ));
    check(&r);
    drop(r);
    assert_eq!(reopened(&rdir), before);
    drop(LogReader::open(&rdir).unwrap());

    // And the genuine entries still go in.
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    r.extend(note, &good).unwrap();
    assert_eq!(r.size(), k + 1);
}

#[test]
fn replica_takes_a_cosigned_checkpoint_of_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, rdir) = (tmp.path().join("log"), tmp.path().join("replica"));
    let (mut log, notes) = busy_log(&dir);
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    replicate(&mut r, log.reader(), &notes);
    let cosigner = Cosigner::new("witness.example", SigningKey::from_bytes(&[5; 32])).unwrap();
    let text = std::str::from_utf8(log.checkpoint()).unwrap().to_owned();
    let body = &text[..text.find("\n\n").unwrap() + 1];
    let line = cosigner.cosign(body, 1_767_225_600).unwrap().line();
    log.add_cosignature(&line, cosigner.verifier()).unwrap();
    assert_eq!(r.classify(log.checkpoint()).unwrap(), Classified::Known);
    r.extend(log.checkpoint(), &[]).unwrap();
    assert_eq!(r.checkpoint(), log.checkpoint());
    drop(r);
    let opts = AuditOptions {
        witnesses: vec![cosigner.verifier().to_string()],
        ..AuditOptions::default()
    };
    let report = audit_dirs(std::slice::from_ref(&rdir), &opts).unwrap();
    assert_eq!(report.logs[0].cosigned_by, vec!["witness.example"]);
}

#[test]
fn replica_classifies_checkpoints_and_proves_equivocation() {
    let tmp = tempfile::tempdir().unwrap();
    let (xdir, ydir, rdir) = (
        tmp.path().join("x"),
        tmp.path().join("y"),
        tmp.path().join("replica"),
    );
    // Two logs of one key (one seed, two directories) that agree on entry 0 and then diverge.
    let mut x = new_log(&xdir, 1, "A", Sector::Public);
    let mut y = new_log(&ydir, 1, "A", Sector::Public);
    let mut xnotes = vec![x.checkpoint().to_vec()];
    let mut ynotes = vec![y.checkpoint().to_vec()];
    for i in 1..=8u64 {
        xnotes.push(append(&mut x, vec![offer(i)]));
        ynotes.push(append(&mut y, vec![offer(100 + i)]));
    }
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    // Empty replica: everything is ahead.
    assert_eq!(
        r.classify(&xnotes[3]).unwrap(),
        Classified::Ahead { size: 4 }
    );
    replicate(&mut r, x.reader(), &xnotes[..7]); // size 7
    assert_eq!(r.size(), 7);
    // Known: the same checkpoint, and every earlier one.
    for n in &xnotes[..7] {
        assert_eq!(r.classify(n).unwrap(), Classified::Known);
    }
    assert_eq!(
        r.classify(&xnotes[8]).unwrap(),
        Classified::Ahead { size: 9 }
    );
    // Entry 0 is shared: y's size-1 checkpoint is consistent.
    assert_eq!(r.classify(&ynotes[0]).unwrap(), Classified::Known);
    // Same size, other root.
    let expect = |note: &[u8], kind: EquivocationKind| match r.classify(note).unwrap() {
        Classified::Equivocation(ev) => {
            assert_eq!(ev.verify_conclusive().unwrap(), kind);
            assert_eq!(ev.log_verifier_key, identity::verifier_key_of(&pk(1)));
        }
        c => panic!("{c:?}"),
    };
    expect(
        &ynotes[6],
        EquivocationKind::SameSizeDifferentRoots { size: 7 },
    );
    // A smaller size (not a power of two) with a forked prefix.
    match r.classify(&ynotes[2]).unwrap() {
        Classified::Equivocation(ev) => {
            assert!(matches!(
                ev.verify_conclusive().unwrap(),
                EquivocationKind::ForkedPrefix {
                    old_size: 3,
                    new_size: 7,
                    ..
                }
            ));
            // The evidence goes into an evidence entry of another member's log.
            let mut w = new_log(&tmp.path().join("w"), 2, "B", Sector::Private);
            append(
                &mut w,
                vec![
                    Body::Admission(Admission {
                        organisation: "A".into(),
                        sector: Sector::Public,
                        member: pk(1),
                    }),
                    Body::Evidence(Evidence {
                        accused: pk(1),
                        kind: EvidenceKind::CheckpointEquivocation,
                        bytes: ev.encode().into_bytes(),
                    }),
                ],
            );
        }
        c => panic!("{c:?}"),
    }
    // A power-of-two size: the contradiction is seen but tlog evidence cannot be conclusive.
    match r.classify(&ynotes[1]).unwrap() {
        Classified::Contradiction {
            size,
            note_root,
            replica_root,
        } => {
            assert_eq!(size, 2);
            assert_eq!(replica_root, r.root_at(2).unwrap());
            assert_ne!(note_root, replica_root);
        }
        c => panic!("{c:?}"),
    }
    // A bigger size of the other branch is "ahead", and its entries do not fit.
    assert_eq!(
        r.classify(&ynotes[7]).unwrap(),
        Classified::Ahead { size: 8 }
    );
    let entries = y.reader().entries(7, 8).unwrap();
    assert!(matches!(
        r.extend(&ynotes[7], &entries).unwrap_err(),
        ReplicaError::RootMismatch { size: 8, .. }
    ));
    assert_eq!(r.size(), 7);
}

/// A log of seed 1 with `n` entries: its admission, then offers, appended in batches of 500.
fn offers_log(dir: &Path, n: u64) -> Log {
    let mut log = new_log(dir, 1, "Rechenzentrum Beispielstadt", Sector::Public);
    grow(&mut log, n);
    log
}

/// Appends offers to `log` until it holds `n` entries.
fn grow(log: &mut Log, n: u64) {
    while log.size() < n {
        let base = log.size();
        let k = (n - base).min(500);
        append(log, (0..k).map(|i| offer(base + i)).collect());
    }
}

/// Feeds `replica` the entries of `log` after its verified size, up to the size of `note`, in
/// batches of `batch` with the consistency proof from each batch's end to the note's size (what
/// `leam audit URL` builds from hash tiles).
#[allow(clippy::result_large_err)] // as the library, whose errors carry what was expected
fn extend_in_batches(
    replica: &mut Replica,
    log: &LogReader,
    note: &[u8],
    batch: u64,
) -> Result<(), ReplicaError> {
    let size = size_of(note);
    loop {
        let first = replica.verified_size();
        let end = size.min(first + batch);
        let entries = log.entries(first, end).unwrap();
        let proof = if end < size {
            log.prove_consistency(end, size).unwrap()
        } else {
            vec![]
        };
        replica.extend_prefix(note, &entries, &proof)?;
        if end == size {
            return Ok(());
        }
    }
}

#[test]
fn replica_verifies_a_log_in_batches_and_resumes_after_a_bad_batch() {
    // 1,500 entries in batches of 512: two batches proven against the checkpoint and kept
    // pending, then the one that reaches its size and commits it.
    let tmp = tempfile::tempdir().unwrap();
    let (dir, rdir) = (tmp.path().join("log"), tmp.path().join("replica"));
    let log = offers_log(&dir, 1_500);
    let note = log.checkpoint().to_vec();
    let reader = log.reader();
    let proof = |end: u64| reader.prove_consistency(end, 1_500).unwrap();
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    r.extend_prefix(&note, &reader.entries(0, 512).unwrap(), &proof(512))
        .unwrap();
    assert_eq!((r.size(), r.verified_size()), (0, 512));
    assert!(
        r.checkpoint().is_empty(),
        "nothing is committed before the last batch"
    );
    assert_eq!(r.pending().unwrap().note, note);
    let pending = |r: &Replica| (r.size(), r.verified_size(), r.checkpoint().to_vec());
    let before = pending(&r);
    // Reopening the store (what a fetch does after each batch, to release sled's memory)
    // keeps the verified state.
    let mut r = r.reopen().unwrap();
    assert_eq!(pending(&r), before);
    assert_eq!(r.state().next_seq(), 512);

    // The second batch with entry 700 tampered (one byte of its offer): the error names the
    // log and the entry, and nothing of the batch is stored.
    let good = reader.entries(512, 1_024).unwrap();
    let mut tampered = good.clone();
    tampered[700 - 512][HEADER_BYTES + 3] ^= 1;
    let err = r
        .extend_prefix(&note, &tampered, &proof(1_024))
        .unwrap_err();
    match &err {
        ReplicaError::Signature { index, log, .. } => {
            assert_eq!((*index, log.as_str()), (700, hex::encode(pk(1)).as_str()))
        }
        e => panic!("{e}"),
    }
    assert!(err.to_string().contains("entry 700"), "{err}");
    assert_eq!(pending(&r), before);
    // A validly signed entry 700 that the checkpoint does not commit to: the batch's tree is
    // not a prefix of the signed one; the error names the batch, the signed size and root.
    let mut forged = good.clone();
    forged[700 - 512] = Entry::sign(&sk(1), 700, T0 + 700, offer(9_999)).encode();
    let root = hex::encode(reader.head().root);
    match r.extend_prefix(&note, &forged, &proof(1_024)).unwrap_err() {
        ReplicaError::NotAPrefix {
            first,
            end,
            size,
            expected,
            ..
        } => assert_eq!((first, end, size, &expected), (512, 1_024, 1_500, &root)),
        e => panic!("{e}"),
    }
    // The genuine batch with a wrong proof, or none, or the proof for another size.
    let mut bad_proof = proof(1_024);
    bad_proof[0][0] ^= 1;
    for p in [bad_proof, vec![], proof(1_000)] {
        assert!(matches!(
            r.extend_prefix(&note, &good, &p).unwrap_err(),
            ReplicaError::NotAPrefix {
                first: 512,
                end: 1_024,
                ..
            }
        ));
    }
    // Entries past the checkpoint's size, none at all, or too many for one call.
    let tail = reader.entries(512, 1_500).unwrap();
    let mut past = tail.clone();
    past.push(Entry::sign(&sk(1), 1_500, T0 + 1_500, offer(1_500)).encode());
    assert!(matches!(
        r.extend_prefix(&note, &past, &[]).unwrap_err(),
        ReplicaError::SizeMismatch {
            expected: 1_501,
            found: 1_500,
            replica: 512,
            ..
        }
    ));
    assert!(matches!(
        r.extend_prefix(&note, &[], &proof(512)).unwrap_err(),
        ReplicaError::EmptyPrefix {
            replica: 512,
            size: 1_500,
            ..
        }
    ));
    let many = vec![Vec::new(); REPLICA_EXTEND_ENTRIES_MAX + 1];
    assert!(matches!(
        r.extend_prefix(&note, &many, &[]).unwrap_err(),
        ReplicaError::TooManyEntries { .. }
    ));
    // `extend` continues from the verified size too, and needs the whole rest.
    assert!(matches!(
        r.extend(&note, &good).unwrap_err(),
        ReplicaError::SizeMismatch {
            expected: 1_024,
            found: 1_500,
            replica: 512,
            ..
        }
    ));
    assert_eq!(pending(&r), before);
    drop(r);

    // A rerun against a correct source resumes after the first batch and completes.
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    assert_eq!(pending(&r), before);
    extend_in_batches(&mut r, reader, &note, 512).unwrap();
    assert_eq!(
        (r.size(), r.verified_size(), r.root()),
        (1_500, 1_500, reader.head().root)
    );
    assert_eq!(r.checkpoint(), note.as_slice());
    assert!(r.pending().is_none());
    assert_eq!(r.decode_all().unwrap().len(), 1_500);
    drop(r);
    drop(log);
    assert_eq!(
        LogReader::open(&rdir).unwrap().head(),
        LogReader::open(&dir).unwrap().head()
    );
    let (ra, rb) = (audit_one(&dir), audit_one(&rdir));
    assert_eq!(ra.accounting, rb.accounting);
    assert_eq!(
        ra.logs[0].signatures_verified,
        rb.logs[0].signatures_verified
    );
}

#[test]
fn replica_batches_resume_under_a_newer_checkpoint_while_readers_see_the_committed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, rdir) = (tmp.path().join("log"), tmp.path().join("replica"));
    let mut log = offers_log(&dir, 100);
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    r.extend(log.checkpoint(), &log.reader().entries(0, 100).unwrap())
        .unwrap();
    let committed = log.reader().head().clone();
    // The log grows; one batch of the new checkpoint is verified and kept pending.
    grow(&mut log, 1_300);
    let first = log.checkpoint().to_vec();
    let proof = log.prove_consistency(612, 1_300).unwrap();
    r.extend_prefix(&first, &log.reader().entries(100, 612).unwrap(), &proof)
        .unwrap();
    assert_eq!((r.size(), r.verified_size()), (100, 612));
    assert_eq!(
        r.state().next_seq(),
        612,
        "the rules run on after the pending entries"
    );
    drop(r);
    // Readers of the directory see the committed checkpoint and its entries only.
    let head = LogReader::open(&rdir).unwrap().head().clone();
    assert_eq!(head, committed);
    assert_eq!(audit_one(&rdir).logs[0].size, 100);
    // The log grows again; the rerun takes the newer checkpoint: each batch is proven against
    // it, so the pending entries are checked again with the first batch that follows them.
    grow(&mut log, 1_400);
    let newer = log.checkpoint().to_vec();
    let mut r = Replica::open_or_create(&rdir, pk(1)).unwrap();
    assert_eq!(r.verified_size(), 612);
    extend_in_batches(&mut r, log.reader(), &newer, 512).unwrap();
    assert_eq!((r.size(), r.root()), (1_400, log.reader().head().root));
    assert_eq!(r.checkpoint(), newer.as_slice());
    assert_eq!(
        r.entries(0, 1_400).unwrap(),
        log.reader().entries(0, 1_400).unwrap()
    );
}

#[test]
fn replica_directory_must_match_its_store() {
    let tmp = tempfile::tempdir().unwrap();
    let rdir = tmp.path().join("replica");
    drop(Replica::open_or_create(&rdir, pk(1)).unwrap());
    // Reopening an empty replica works.
    assert_eq!(reopened(&rdir).0, 0);
    // A checkpoint file without a store means the store was lost.
    let lost = tmp.path().join("lost");
    std::fs::create_dir_all(&lost).unwrap();
    std::fs::write(lost.join("checkpoint"), b"x").unwrap();
    assert!(matches!(
        Replica::open_or_create(&lost, pk(1)).unwrap_err(),
        ReplicaError::Location { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Detached co-signatures
// ---------------------------------------------------------------------------------------------

#[test]
fn detached_cosignature_equals_in_process_and_is_checked() {
    let lease = LeaseTerms {
        job_id: [1; 32],
        bidder: pk(1),
        provider: pk(2),
        offer_id: 4,
        compute_units: 5,
        price_cents: 6,
        expires_ms: T0,
    };
    let sig = lease.cosignature(&sk(2));
    let detached = lease.clone().with_cosignature(&pk(2), sig).unwrap();
    assert_eq!(detached, lease.clone().cosign(&sk(2)));
    // An entry built from it verifies.
    Entry::sign(&sk(1), 3, T0, Body::Lease(detached))
        .verify()
        .unwrap();
    // Not a party; a party that did not sign; a flipped bit.
    assert_eq!(
        lease.clone().with_cosignature(&pk(3), sig).unwrap_err(),
        VerifyError::CosignerNotParty {
            kind: "lease",
            cosigner: hex::encode(pk(3)),
            a: hex::encode(pk(1)),
            b: hex::encode(pk(2)),
        }
    );
    assert_eq!(
        lease.clone().with_cosignature(&pk(1), sig).unwrap_err(),
        VerifyError::BadCosignature {
            kind: "lease",
            cosigner: hex::encode(pk(1)),
        }
    );
    let mut flipped = sig;
    flipped[17] ^= 0x10;
    assert!(matches!(
        lease.clone().with_cosignature(&pk(2), flipped),
        Err(VerifyError::BadCosignature { .. })
    ));
    // Same for the other co-signed kinds.
    let settlement = SettlementTerms {
        job_id: [1; 32],
        payer: pk(2),
        payee: pk(1),
        credits_cents: 9,
        money: Money::Private,
        receipts: vec![],
    };
    let s = settlement.cosignature(&sk(1));
    assert_eq!(
        settlement.clone().with_cosignature(&pk(1), s).unwrap(),
        settlement.clone().cosign(&sk(1))
    );
    let same = SettlementTerms {
        payee: pk(2),
        ..settlement
    };
    let s = same.cosignature(&sk(2));
    assert!(matches!(
        same.with_cosignature(&pk(2), s),
        Err(VerifyError::SameParties { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Audit allow-list
// ---------------------------------------------------------------------------------------------

#[test]
fn audit_with_genesis_folds_only_members() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    // Founders 1 and 2 (threshold 2); 3 is admitted by both; 4 only by founder 1.
    let g = Genesis::new(
        20,
        2,
        vec![
            founder(1, "A", Sector::Public),
            founder(2, "B", Sector::Science),
        ],
    )
    .unwrap();
    let admit = |seed: u8, org: &str, sector| {
        Body::Admission(Admission {
            organisation: org.into(),
            sector,
            member: pk(seed),
        })
    };
    let mut a = new_log(&d("a"), 1, "A", Sector::Public);
    append(
        &mut a,
        vec![
            admit(3, "C", Sector::Private),
            admit(4, "D", Sector::Startup),
            Body::Deposit(Deposit {
                member: pk(1),
                eur_cents: 500,
                money: Money::Public,
                reference: "R".into(),
            }),
        ],
    );
    let mut b = new_log(&d("b"), 2, "B", Sector::Science);
    append(&mut b, vec![admit(3, "C", Sector::Private)]);
    let mut c = new_log(&d("c"), 3, "C", Sector::Private);
    append(&mut c, vec![offer(1)]);
    let mut o = new_log(&d("d"), 4, "D", Sector::Startup);
    append(
        &mut o,
        vec![Body::Deposit(Deposit {
            member: pk(4),
            eur_cents: 1_000_000,
            money: Money::Private,
            reference: "R".into(),
        })],
    );
    drop((a, b, c, o));
    let dirs = vec![d("a"), d("b"), d("c"), d("d")];

    let all = audit_dirs(&dirs, &AuditOptions::default()).unwrap();
    assert_eq!(all.logs.len(), 4);
    assert!(all.outsiders.is_empty());
    let json = serde_json::to_value(&all).unwrap();
    assert!(json.get("outsiders").is_none(), "{json}");
    assert_eq!(
        all.accounting.organisations["D"]
            .totals
            .funding_private_eur_cents,
        1_000_000
    );

    let opts = AuditOptions {
        genesis: Some(g.clone()),
        ..AuditOptions::default()
    };
    let fed = audit_dirs(&dirs, &opts).unwrap();
    let folded: Vec<&Path> = fed.logs.iter().map(|l| l.dir.as_path()).collect();
    assert_eq!(folded, vec![d("a"), d("b"), d("c")]);
    assert_eq!(fed.accounting.logs, 3);
    assert_eq!(fed.outsiders.len(), 1);
    let out = &fed.outsiders[0];
    assert_eq!(
        (out.key.as_str(), out.dir.as_path(), out.entries),
        (hex::encode(pk(4)).as_str(), d("d").as_path(), 2)
    );
    assert!(
        out.reason.contains("admitted by 1 of the 2") && out.reason.contains(&hex::encode(g.id())),
        "{}",
        out.reason
    );
    // D's deposit is not counted; founder A's is.
    assert_eq!(
        fed.accounting.organisations["D"]
            .totals
            .funding_private_eur_cents,
        0
    );
    assert_eq!(
        fed.accounting.organisations["A"]
            .totals
            .funding_public_eur_cents,
        500
    );
    let json = serde_json::to_value(&fed).unwrap();
    assert_eq!(json["outsiders"][0]["entries"], 2);
}
