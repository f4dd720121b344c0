//! Proptests of every shard decoder: round trips of valid values, canonical re-encoding of
//! whatever decodes, precise rejection of truncation, trailing bytes, unknown versions and
//! out-of-range fields, and the id check.

use leam_compute::verify::diloco::{DilocoError, IntTensor, ParamDelta};
use leam_compute::verify::shard::{
    Hyper, ModelShape, ShardError, ShardResult, ShardSpec, FINGERPRINT_BYTES_MAX, NUMERICS_B16_V1,
    RESULT_FIXED_BYTES, SHARD_STEPS_MAX, SPEC_BYTES,
};
use proptest::prelude::*;

fn arb_spec() -> impl Strategy<Value = ShardSpec> {
    (
        (
            2u32..=65536,
            1u32..=64,
            1u32..=64,
            1u32..=64,
            1u32..=4096,
            1u32..=1024,
        ),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        (0u64..1 << 40, 0u64..1 << 40, any::<u64>()),
        (
            0i64..=1 << 50,
            0i64..=1 << 50,
            0u64..=1 << 50,
            0u64..=1 << 50,
        ),
        (
            0i64..=1 << 50,
            0i64..=1 << 30,
            0i64..=1 << 30,
            0i64..=1 << 50,
        ),
        (0u64..1 << 39, 1u32..=SHARD_STEPS_MAX),
    )
        .prop_map(
            |(
                (vocab, layers, heads, per_head, block, batch),
                start,
                corpus,
                (ds, len, seed),
                (lr, min_lr, warm, decay),
                (wd, b1, b2, clip),
                (first, steps),
            )| {
                ShardSpec {
                    numerics: NUMERICS_B16_V1,
                    model: ModelShape {
                        vocab_size: vocab,
                        n_layer: layers,
                        n_head: heads,
                        n_embd: (heads * per_head).min(4096 / heads * heads),
                        block_size: block,
                        batch_size: batch,
                    },
                    start_state: start,
                    corpus_sha256: corpus,
                    data_start: ds,
                    data_end: ds + u64::from(block) + 1 + len,
                    seed,
                    hyper: Hyper {
                        lr_q40: lr,
                        min_lr_q40: min_lr,
                        warmup_iters: warm,
                        lr_decay_iters: decay,
                        weight_decay_q30: wd,
                        beta1_q30: b1,
                        beta2_q30: b2,
                        grad_clip_q30: clip,
                    },
                    first_step: first,
                    steps,
                }
            },
        )
}

fn arb_result() -> impl Strategy<Value = ShardResult> {
    (
        any::<[u8; 32]>(),
        1u32..=SHARD_STEPS_MAX,
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<u64>(),
        "\\PC{0,60}",
    )
        .prop_filter_map("fingerprint too long", |(id, steps, f, d, r, cu, fp)| {
            (fp.len() <= FINGERPRINT_BYTES_MAX).then_some(ShardResult {
                shard_id: id,
                steps,
                final_state: f,
                delta_commitment: d,
                step_root: r,
                compute_units: cu,
                fingerprint: fp,
            })
        })
}

fn arb_delta() -> impl Strategy<Value = ParamDelta> {
    prop::collection::vec(
        (
            -(1i32 << 24)..=1 << 24,
            prop::collection::vec(any::<i64>(), 0..20),
        ),
        0..6,
    )
    .prop_map(|ts| ParamDelta {
        tensors: ts
            .into_iter()
            .map(|(exp, values)| IntTensor { exp, values })
            .collect(),
    })
}

proptest! {
    #[test]
    fn spec_round_trips_and_verifies(spec in arb_spec()) {
        spec.validate().unwrap();
        let bytes = spec.encode();
        prop_assert_eq!(bytes.len(), SPEC_BYTES);
        prop_assert_eq!(ShardSpec::decode(&bytes).unwrap(), spec.clone());
        prop_assert_eq!(ShardSpec::decode_verified(&bytes, &spec.id()).unwrap(), spec.clone());
        let mut wrong = spec.id();
        wrong[31] ^= 0x80;
        let is_id_mismatch = matches!(
            ShardSpec::decode_verified(&bytes, &wrong),
            Err(ShardError::IdMismatch { .. })
        );
        prop_assert!(is_id_mismatch);
    }

    #[test]
    fn spec_truncation_and_trailing_bytes_are_rejected(spec in arb_spec(), cut in 0usize..SPEC_BYTES, extra in 1usize..4) {
        let bytes = spec.encode();
        let truncated = matches!(ShardSpec::decode(&bytes[..cut]), Err(ShardError::Truncated { .. }));
        prop_assert!(truncated);
        let mut long = bytes.clone();
        long.extend(std::iter::repeat_n(0u8, extra));
        let trailing = matches!(
            ShardSpec::decode(&long),
            Err(ShardError::TrailingBytes { offset: SPEC_BYTES, .. })
        );
        prop_assert!(trailing);
    }

    #[test]
    fn spec_mutations_decode_canonically_or_fail_precisely(spec in arb_spec(), at in 0usize..SPEC_BYTES, bit in 0u8..8) {
        let mut bytes = spec.encode();
        bytes[at] ^= 1 << bit;
        match ShardSpec::decode(&bytes) {
            Ok(other) => {
                prop_assert_eq!(other.encode(), bytes);
                prop_assert_ne!(other.id(), spec.id());
            }
            Err(e) => {
                let ok = matches!(
                    e,
                    ShardError::BadMagic { .. }
                        | ShardError::UnknownVersion { .. }
                        | ShardError::OutOfRange { .. }
                        | ShardError::Invalid { .. }
                );
                prop_assert!(ok, "{e}");
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decode_canonically(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(s) = ShardSpec::decode(&bytes) {
            prop_assert_eq!(s.encode(), bytes.clone());
        }
        if let Ok(r) = ShardResult::decode(&bytes) {
            prop_assert_eq!(r.encode(), bytes.clone());
        }
        if let Ok(d) = ParamDelta::decode(&bytes) {
            prop_assert_eq!(d.encode(), bytes);
        }
    }

    #[test]
    fn result_round_trips(r in arb_result(), cut in 0usize..RESULT_FIXED_BYTES) {
        let bytes = r.encode();
        prop_assert_eq!(ShardResult::decode(&bytes).unwrap(), r.clone());
        let truncated = matches!(ShardResult::decode(&bytes[..cut]), Err(ShardError::Truncated { .. }));
        prop_assert!(truncated);
        let mut long = bytes;
        long.push(0);
        let trailing = matches!(ShardResult::decode(&long), Err(ShardError::TrailingBytes { .. }));
        prop_assert!(trailing);
    }

    #[test]
    fn delta_round_trips(d in arb_delta()) {
        let bytes = d.encode();
        prop_assert_eq!(ParamDelta::decode(&bytes).unwrap(), d.clone());
        prop_assert_eq!(d.commitment(), ParamDelta::decode(&bytes).unwrap().commitment());
        if !bytes.is_empty() {
            let short = matches!(
                ParamDelta::decode(&bytes[..bytes.len() - 1]),
                Err(DilocoError::Decode { .. })
            );
            prop_assert!(short);
        }
    }
}

#[test]
fn precise_errors_name_the_field() {
    let spec =
        leam_compute::verify::shard::nanogpt_cpu_spec([1; 32], [2; 32], 1_115_394, 1337, 0, 100);
    let mut bytes = spec.encode();
    bytes[4] = 2;
    assert_eq!(
        ShardSpec::decode(&bytes),
        Err(ShardError::UnknownVersion {
            what: "shard spec",
            found: 2,
            supported: 1
        })
    );
    // steps = 0 (last four bytes).
    let mut bytes = spec.encode();
    let n = bytes.len();
    bytes[n - 4..].copy_from_slice(&0u32.to_be_bytes());
    let e = ShardSpec::decode(&bytes).unwrap_err();
    assert_eq!(
        e,
        ShardError::OutOfRange {
            what: "shard spec",
            field: "steps",
            value: 0,
            min: 1,
            max: SHARD_STEPS_MAX.into()
        }
    );
    assert_eq!(
        e.to_string(),
        "shard spec: field `steps` is 0, allowed 1..=1048576"
    );
    // n_head = 3 does not divide n_embd = 128 (n_head is the third model field, offset 15).
    let mut bytes = spec.encode();
    bytes[15..19].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(
        ShardSpec::decode(&bytes),
        Err(ShardError::Invalid {
            field: "n_head",
            ..
        })
    ));
    // A result for another spec is refused.
    let other =
        leam_compute::verify::shard::nanogpt_cpu_spec([1; 32], [2; 32], 1_115_394, 1338, 0, 100);
    let r = ShardResult {
        shard_id: other.id(),
        steps: 100,
        final_state: [0; 32],
        delta_commitment: [0; 32],
        step_root: [0; 32],
        compute_units: leam_compute::verify::shard::compute_units(&spec),
        fingerprint: String::new(),
    };
    assert!(matches!(
        r.check_against(&spec),
        Err(ShardError::ResultMismatch {
            field: "shard_id",
            ..
        })
    ));
    // Non-UTF-8 fingerprint.
    let mut bytes = r.encode();
    bytes.truncate(RESULT_FIXED_BYTES - 2);
    bytes.extend_from_slice(&2u16.to_be_bytes());
    bytes.extend_from_slice(&[0xff, 0xfe]);
    assert!(matches!(
        ShardResult::decode(&bytes),
        Err(ShardError::Invalid {
            field: "fingerprint",
            ..
        })
    ));
}

#[test]
fn delta_widths_are_minimal_and_enforced() {
    let d = ParamDelta {
        tensors: vec![
            IntTensor {
                exp: -3,
                values: vec![-128, 127],
            },
            IntTensor {
                exp: 0,
                values: vec![-129],
            },
            IntTensor {
                exp: 0,
                values: vec![1 << 20, -(1 << 23)],
            },
            IntTensor {
                exp: 0,
                values: vec![1 << 23],
            },
            IntTensor {
                exp: 0,
                values: vec![i64::MIN],
            },
            IntTensor {
                exp: 0,
                values: vec![],
            },
        ],
    };
    let bytes = d.encode();
    // header 9, then per tensor 9 bytes + values: 2·1, 1·2, 2·3 (±2^23 fit 24 bits only as
    // −2^23), 1·4 (2^23 does not), 1·8, 0.
    assert_eq!(bytes.len(), 9 + 6 * 9 + 2 + 2 + 6 + 4 + 8);
    assert_eq!(ParamDelta::decode(&bytes).unwrap(), d);
    // Re-encode the first tensor at width 2: decodes to the same values but is not canonical.
    let mut wide = bytes[..9 + 8].to_vec();
    wide.push(2);
    wide.extend_from_slice(&(-128i16).to_be_bytes());
    wide.extend_from_slice(&127i16.to_be_bytes());
    wide.extend_from_slice(&bytes[9 + 9 + 2..]);
    let e = ParamDelta::decode(&wide).unwrap_err();
    assert!(
        matches!(
            e,
            DilocoError::Decode {
                field: "width",
                offset: 17,
                ..
            }
        ),
        "{e}"
    );
    // Widths outside 1..=8 are refused by name.
    for w in [0u8, 9, 255] {
        let mut bad = bytes.clone();
        bad[17] = w;
        assert!(matches!(
            ParamDelta::decode(&bad),
            Err(DilocoError::Decode { field: "width", .. })
        ));
    }
}

proptest! {
    #[test]
    fn delta_mutations_decode_canonically_or_fail(d in arb_delta(), at in 0usize..4096, bit in 0u8..8) {
        let mut bytes = d.encode();
        let at = at % bytes.len();
        bytes[at] ^= 1 << bit;
        if let Ok(other) = ParamDelta::decode(&bytes) {
            prop_assert_eq!(other.encode(), bytes);
        }
    }
}
