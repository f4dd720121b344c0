//! Entry encoding: round trips for every kind, rejection of every mutation and truncation,
//! precise errors for non-canonical forms, and the spec's golden example bytes.

use ed25519_dalek::SigningKey;
use leam_ledger::entry::*;
use proptest::prelude::*;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Body built for `author` with a counterparty `other` that co-signs where needed.
/// A clearing record (kind 11, and the start of kind 14).
fn clearing_strategy() -> impl Strategy<Value = Clearing> {
    (
        any::<[u8; 32]>(),
        any::<[u64; 4]>(),
        prop::collection::vec((any::<[u8; 32]>(), any::<u64>()), 0..6),
        prop::collection::vec((any::<[u8; 32]>(), any::<u64>(), any::<u32>()), 0..6),
    )
        .prop_map(|(job_id, n, views, assignments)| Clearing {
            job_id,
            bid_seq: n[0],
            clearing_ms: n[1],
            shard_units: n[2],
            price_cents_per_kilo_unit: n[3],
            views: views
                .into_iter()
                .map(|(log, size)| LogView { log, size })
                .collect(),
            assignments: assignments
                .into_iter()
                .map(|(provider, offer_id, shards)| Assignment {
                    provider,
                    offer_id,
                    shards,
                })
                .collect(),
        })
}

fn body_strategy(author: SigningKey, other: SigningKey) -> impl Strategy<Value = Body> {
    let a = author.verifying_key().to_bytes();
    let o = other.verifying_key().to_bytes();
    let text = "[a-zA-Z0-9 äöüß.&-]{1,60}";
    let sector = prop::sample::select(Sector::ALL.to_vec());
    prop_oneof![
        (text, sector.clone(), any::<[u8; 32]>()).prop_map(|(organisation, sector, member)| {
            Body::Admission(Admission {
                organisation,
                sector,
                member,
            })
        }),
        (any::<u64>(), any::<bool>(), text).prop_map(move |(eur_cents, public, reference)| {
            Body::Deposit(Deposit {
                member: a,
                eur_cents,
                money: if public {
                    Money::Public
                } else {
                    Money::Private
                },
                reference,
            })
        }),
        (
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(
                |(offer_id, device_fingerprint, cu, price, until, memory_bytes)| Body::Offer(
                    Offer {
                        offer_id,
                        device_fingerprint,
                        compute_units_per_hour: cu,
                        memory_bytes,
                        price_cents_per_kilo_unit: price,
                        valid_until_ms: until,
                    }
                )
            ),
        (any::<[u8; 32]>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(job_id, compute_units, p, deadline_ms)| Body::Bid(Bid {
                job_id,
                compute_units,
                max_price_cents_per_kilo_unit: p,
                deadline_ms,
            })
        ),
        {
            let other = other.clone();
            (any::<[u8; 32]>(), any::<bool>(), any::<[u64; 4]>()).prop_map(
                move |(job_id, author_bids, n)| {
                    let (bidder, provider) = if author_bids { (a, o) } else { (o, a) };
                    Body::Lease(
                        LeaseTerms {
                            job_id,
                            bidder,
                            provider,
                            offer_id: n[0],
                            compute_units: n[1],
                            price_cents: n[2],
                            expires_ms: n[3],
                        }
                        .cosign(&other),
                    )
                },
            )
        },
        {
            let other = other.clone();
            (any::<[[u8; 32]; 5]>(), any::<u32>(), any::<[u64; 2]>()).prop_map(
                move |(d, shard, n)| {
                    Body::Receipt(
                        ReceiptTerms {
                            job_id: d[0],
                            shard,
                            bidder: o,
                            provider: a,
                            lease: d[4],
                            input_commitment: d[1],
                            output_commitment: d[2],
                            compute_units: n[0],
                            gpu_ms: n[1],
                            device_fingerprint: d[3],
                        }
                        .cosign(&other),
                    )
                },
            )
        },
        (any::<[[u8; 32]; 3]>(), any::<u32>(), any::<bool>()).prop_map(|(d, shard, accepted)| {
            Body::Verdict(Verdict {
                job_id: d[0],
                shard,
                provider: d[1],
                output_commitment: d[2],
                accepted,
            })
        }),
        {
            let other = other.clone();
            (
                any::<[u8; 32]>(),
                any::<u64>(),
                any::<[bool; 2]>(),
                proptest::collection::btree_set(any::<[u8; 32]>(), 0..4),
            )
                .prop_map(move |(job_id, credits_cents, [pays, public], receipts)| {
                    let (payer, payee) = if pays { (a, o) } else { (o, a) };
                    Body::Settlement(
                        SettlementTerms {
                            job_id,
                            payer,
                            payee,
                            credits_cents,
                            money: if public {
                                Money::Public
                            } else {
                                Money::Private
                            },
                            receipts: receipts.into_iter().collect(),
                        }
                        .cosign(&other),
                    )
                })
        },
        (
            any::<[u8; 32]>(),
            0..3usize,
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(accused, k, bytes)| Body::Evidence(Evidence {
                accused,
                kind: [
                    EvidenceKind::CheckpointEquivocation,
                    EvidenceKind::WrongShardResult,
                    EvidenceKind::BrokenAgreement
                ][k],
                bytes,
            })),
        prop::collection::vec(any::<u8>(), 0..600)
            .prop_map(|description| Body::Job(Job { description })),
        clearing_strategy().prop_map(Body::Clearing),
        (
            clearing_strategy(),
            any::<u64>(),
            prop::collection::vec(any::<[u8; 32]>(), 0..4)
        )
            .prop_map(|(clearing, shards, replaces)| Body::Reclearing(Reclearing {
                clearing,
                shards,
                replaces,
            })),
        (any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(job_id, seed)| Body::Reveal(Reveal { job_id, seed })),
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            "[A-Za-z0-9.+-]{1,64}",
            "[a-z ]{1,200}"
        )
            .prop_map(|(sha256, bytes, licence, source)| Body::Data(Data {
                sha256,
                bytes,
                licence,
                source
            })),
    ]
}

fn entry_strategy() -> impl Strategy<Value = Entry> {
    (1u8..=255, any::<u64>(), any::<u64>())
        .prop_flat_map(|(seed, seq, ts)| {
            let author = key(seed);
            let other = key(seed.wrapping_add(1).max(1));
            (
                Just((author.clone(), seq, ts)),
                body_strategy(author, other),
            )
        })
        .prop_map(|((author, seq, ts), body)| Entry::sign(&author, seq, ts, body))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_every_kind(e in entry_strategy()) {
        let bytes = e.encode();
        prop_assert!(bytes.len() <= ENTRY_BYTES_MAX);
        let d = Entry::decode(&bytes).unwrap();
        prop_assert_eq!(&d, &e);
        prop_assert_eq!(d.encode(), bytes);
        prop_assert_eq!(d.verify(), Ok(()));
    }

    #[test]
    fn every_single_byte_mutation_is_rejected(e in entry_strategy(), flip in 1u8..=255) {
        let bytes = e.encode();
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= flip;
            if let Ok(d) = Entry::decode(&m) {
                prop_assert!(d.verify().is_err(), "mutation at byte {} accepted", i);
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_rejected(e in entry_strategy(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        let bytes = e.encode();
        for n in 0..bytes.len() {
            prop_assert!(Entry::decode(&bytes[..n]).is_err(), "prefix of {} bytes decoded", n);
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(Entry::decode(&longer), Err(DecodeError::TrailingBytes { found: extra.len() }));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_reencode_exactly(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(e) = Entry::decode(&bytes) {
            prop_assert_eq!(e.encode(), bytes);
        }
    }
}

fn verdict_entry() -> Vec<u8> {
    Entry::sign(
        &key(3),
        5,
        1_000,
        Body::Verdict(Verdict {
            job_id: [1; 32],
            shard: 2,
            provider: key(4).verifying_key().to_bytes(),
            output_commitment: [9; 32],
            accepted: true,
        }),
    )
    .encode()
}

#[test]
fn non_canonical_forms_are_rejected_with_the_field() {
    let good = verdict_entry();
    let n = good.len();
    // The boolean is the last byte before the signature.
    let mut b = good.clone();
    b[n - SIGNATURE_BYTES - 1] = 2;
    assert_eq!(
        Entry::decode(&b),
        Err(DecodeError::InvalidBool {
            field: "accepted",
            found: 2
        })
    );
    let mut b = good.clone();
    b[0] = 2;
    assert_eq!(
        Entry::decode(&b),
        Err(DecodeError::UnknownVersion { found: 2 })
    );
    for kind in [0u8, 15, 255] {
        let mut b = good.clone();
        b[1] = kind;
        assert_eq!(
            Entry::decode(&b),
            Err(DecodeError::UnknownKind { found: kind })
        );
    }
    assert_eq!(
        Entry::decode(&good[..HEADER_BYTES + 3]),
        Err(DecodeError::Truncated {
            field: "job_id",
            offset: HEADER_BYTES,
            needed: 32,
            available: 3
        })
    );
    assert!(matches!(
        Entry::decode(&vec![1u8; ENTRY_BYTES_MAX + 1]),
        Err(DecodeError::TooLong { found, .. }) if found == ENTRY_BYTES_MAX + 1
    ));
}

fn admission_bytes(org: &[u8], sector: u8) -> Vec<u8> {
    let mut b = vec![ENTRY_VERSION, 1];
    b.extend_from_slice(&key(5).verifying_key().to_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&(org.len() as u32).to_be_bytes());
    b.extend_from_slice(org);
    b.push(sector);
    b.extend_from_slice(&[0; 32]);
    b.extend_from_slice(&[0; 64]);
    b
}

#[test]
fn text_and_tag_fields_are_checked() {
    assert!(Entry::decode(&admission_bytes(b"TU Example", 2)).is_ok());
    assert_eq!(
        Entry::decode(&admission_bytes(b"TU Example", 4)),
        Err(DecodeError::UnknownTag {
            field: "sector",
            found: 4,
            expected: "0..=3 (public, private, science, startup)"
        })
    );
    assert_eq!(
        Entry::decode(&admission_bytes(b"TU \xff", 0)),
        Err(DecodeError::InvalidUtf8 {
            field: "organisation"
        })
    );
    assert_eq!(
        Entry::decode(&admission_bytes(b"", 0)),
        Err(DecodeError::InvalidText {
            field: "organisation",
            found: String::new()
        })
    );
    assert_eq!(
        Entry::decode(&admission_bytes(b"a\nb", 0)),
        Err(DecodeError::InvalidText {
            field: "organisation",
            found: "a\nb".into()
        })
    );
    let long = vec![b'a'; ORGANISATION_BYTES_MAX + 1];
    assert_eq!(
        Entry::decode(&admission_bytes(&long, 0)),
        Err(DecodeError::LengthOverMax {
            field: "organisation",
            found: (ORGANISATION_BYTES_MAX + 1) as u64,
            max: ORGANISATION_BYTES_MAX
        })
    );
}

#[test]
fn cosignature_must_come_from_the_other_party() {
    let (a, b, c) = (key(10), key(11), key(12));
    let terms = SettlementTerms {
        job_id: [0; 32],
        payer: a.verifying_key().to_bytes(),
        payee: b.verifying_key().to_bytes(),
        credits_cents: 500,
        money: Money::Private,
        receipts: vec![[1; 32], [2; 32]],
    };
    let good = Entry::sign(&a, 1, 1, Body::Settlement(terms.clone().cosign(&b)));
    assert_eq!(good.verify(), Ok(()));
    let forged = Entry::sign(&a, 1, 1, Body::Settlement(terms.clone().cosign(&c)));
    assert_eq!(
        forged.verify(),
        Err(VerifyError::BadCosignature {
            kind: "settlement",
            cosigner: hex::encode(b.verifying_key().to_bytes())
        })
    );
    let outsider = Entry::sign(&c, 1, 1, Body::Settlement(terms.cosign(&b)));
    assert!(matches!(
        outsider.verify(),
        Err(VerifyError::AuthorNotParty {
            kind: "settlement",
            ..
        })
    ));
}

/// The example entries in `specs/ledger.md` are generated here; the spec and code cannot drift.
pub fn spec_examples() -> Vec<(&'static str, Vec<u8>)> {
    let node = key(0x11);
    let other = key(0x22);
    let admission = Entry::sign(
        &node,
        0,
        1_767_225_600_000,
        Body::Admission(Admission {
            organisation: "Forschungszentrum Beispiel".into(),
            sector: Sector::Science,
            member: node.verifying_key().to_bytes(),
        }),
    );
    let receipt = Entry::sign(
        &node,
        7,
        1_767_229_200_000,
        Body::Receipt(
            ReceiptTerms {
                job_id: [0xaa; 32],
                shard: 3,
                bidder: other.verifying_key().to_bytes(),
                provider: node.verifying_key().to_bytes(),
                lease: [0xee; 32],
                input_commitment: [0xbb; 32],
                output_commitment: [0xcc; 32],
                compute_units: 1_250_000,
                gpu_ms: 93_500,
                device_fingerprint: [0xdd; 32],
            }
            .cosign(&other),
        ),
    );
    vec![
        ("example-admission", admission.encode()),
        ("example-receipt", receipt.encode()),
    ]
}

#[test]
fn spec_examples_match_the_code() {
    let spec_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/ledger.md");
    let spec = std::fs::read_to_string(spec_path).expect("specs/ledger.md exists");
    for (name, bytes) in spec_examples() {
        let marker = format!("<!-- {name} -->");
        let start = spec
            .find(&marker)
            .unwrap_or_else(|| panic!("{spec_path} lacks the marker {marker}"));
        let block = &spec[start..];
        let open = block
            .find("```text\n")
            .expect("a ```text block follows the marker")
            + 8;
        let close = open + block[open..].find("```").expect("the block is closed");
        let hex_in_spec: String = block[open..close]
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .collect();
        assert_eq!(
            hex_in_spec,
            hex::encode(&bytes),
            "{name} in {spec_path} differs from the code; regenerate with \
             `cargo test -p leam-ledger --test ledger_entry print_spec_examples -- --ignored --nocapture`"
        );
    }
}

#[test]
#[ignore = "prints the spec examples for pasting into specs/ledger.md"]
fn print_spec_examples() {
    for (name, bytes) in spec_examples() {
        println!("<!-- {name} -->\n```text");
        for line in bytes.chunks(32) {
            println!("{}", hex::encode(line));
        }
        println!("```");
    }
}

/// A settlement's receipts have one encoding: strictly ascending, at most
/// `SETTLEMENT_RECEIPTS_MAX`; anything else is refused with the element or the count.
#[test]
fn settlement_receipts_must_be_strictly_ascending_and_bounded() {
    let (a, b) = (key(10), key(11));
    let settle = |receipts: Vec<[u8; 32]>| {
        let terms = SettlementTerms {
            job_id: [0; 32],
            payer: a.verifying_key().to_bytes(),
            payee: b.verifying_key().to_bytes(),
            credits_cents: 500,
            money: Money::Private,
            receipts,
        };
        Entry::sign(&a, 1, 1, Body::Settlement(terms.cosign(&b))).encode()
    };
    let ok = settle(vec![[1; 32], [2; 32]]);
    assert!(Entry::decode(&ok).is_ok());
    for (receipts, index) in [
        (vec![[2; 32], [1; 32]], 1),
        (vec![[1; 32], [3; 32], [3; 32]], 2),
    ] {
        assert_eq!(
            Entry::decode(&settle(receipts)),
            Err(DecodeError::NotAscending {
                field: "receipts",
                index
            })
        );
    }
    let many: Vec<[u8; 32]> = (0..=SETTLEMENT_RECEIPTS_MAX as u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        })
        .collect();
    assert_eq!(
        Entry::decode(&settle(many)),
        Err(DecodeError::LengthOverMax {
            field: "receipts",
            found: SETTLEMENT_RECEIPTS_MAX as u64 + 1,
            max: SETTLEMENT_RECEIPTS_MAX
        })
    );
}
