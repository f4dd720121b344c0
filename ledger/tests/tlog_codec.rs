//! Property tests of every tlog decoder: signed notes, verifier keys, checkpoints and
//! equivocation evidence round-trip exactly, and mutated or arbitrary input is either
//! rejected or decodes to something that re-encodes to the very same bytes.

use ed25519_dalek::SigningKey;
use leam_ledger::checkpoint::{Checkpoint, Cosigner};
use leam_ledger::evidence::Equivocation;
use leam_ledger::note::{Algorithm, Note, Signer, Verifier};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9./_-]{1,24}"
}

fn text_line() -> impl Strategy<Value = String> {
    // Printable text, including non-ASCII, without newlines or control characters.
    "[ -~äöüß€\u{2014}]{1,40}"
}

fn checkpoint() -> impl Strategy<Value = Checkpoint> {
    (
        name(),
        any::<u64>(),
        any::<[u8; 32]>(),
        prop::collection::vec(text_line(), 0..3),
    )
        .prop_map(|(origin, size, root, extensions)| Checkpoint {
            origin,
            size,
            root,
            extensions,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn checkpoint_note_round_trips(c in checkpoint(), seed: [u8; 32], wseed: [u8; 32], ts in 0..=i64::MAX as u64) {
        let signer = Signer::new(&c.origin, SigningKey::from_bytes(&seed)).unwrap();
        let signed = c.sign(&signer).unwrap();
        let (c2, mut n) = Checkpoint::open(signed.as_bytes(), signer.verifier()).unwrap();
        prop_assert_eq!(&c2, &c);
        prop_assert_eq!(Checkpoint::parse(&c.body()).unwrap(), c.clone());
        prop_assert_eq!(n.encode(), signed);
        let w = Cosigner::new("w.example", SigningKey::from_bytes(&wseed)).unwrap();
        n.add_signature(w.cosign(&n.text, ts).unwrap()).unwrap();
        let enc = n.encode();
        prop_assert_eq!(Note::parse(enc.as_bytes()).unwrap(), n);
    }

    #[test]
    fn mutated_signed_note_never_verifies_wrongly(c in checkpoint(), seed: [u8; 32], pos: prop::sample::Index, bit in 0..8u8) {
        let signer = Signer::new(&c.origin, SigningKey::from_bytes(&seed)).unwrap();
        let signed = c.sign(&signer).unwrap();
        let mut bytes = signed.into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        // Either rejected, or it parses and re-encodes to exactly the mutated bytes and
        // still says what was signed (a flip inside the signature never verifies).
        match Checkpoint::open(&bytes, signer.verifier()) {
            Err(_) => {}
            Ok((c2, n)) => {
                prop_assert_eq!(n.encode().into_bytes(), bytes.clone());
                prop_assert_eq!(c2, c);
            }
        }
        if let Ok(n) = Note::parse(&bytes) {
            prop_assert_eq!(n.encode().into_bytes(), bytes.clone());
        }
    }

    #[test]
    fn verifier_key_round_trips(n in name(), seed: [u8; 32], cosig: bool) {
        let alg = if cosig { Algorithm::CosignatureV1 } else { Algorithm::Ed25519 };
        let v = Verifier::new(&n, alg, SigningKey::from_bytes(&seed).verifying_key()).unwrap();
        let s = v.to_string();
        let back: Verifier = s.parse().unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(back.to_string(), s);
    }

    #[test]
    fn arbitrary_verifier_key_strings_round_trip_or_fail(s in "[ -~]{0,90}") {
        if let Ok(v) = s.parse::<Verifier>() {
            prop_assert_eq!(v.to_string(), s);
        }
    }

    #[test]
    fn arbitrary_notes_round_trip_or_fail(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(n) = Note::parse(&bytes) {
            prop_assert_eq!(n.encode().into_bytes(), bytes.clone());
        }
    }

    #[test]
    fn evidence_round_trips_and_rejects_mutations(
        a in text_line(), b in text_line(), key in name(),
        proof in prop::collection::vec(any::<[u8; 32]>(), 0..4),
        pos: prop::sample::Index, byte: u8,
    ) {
        let e = Equivocation::new(&key, &a, &b, proof);
        let enc = e.encode();
        prop_assert_eq!(Equivocation::decode(enc.as_bytes()).unwrap(), e);
        let mut m = enc.into_bytes();
        let i = pos.index(m.len());
        m[i] = byte;
        if let Ok(d) = Equivocation::decode(&m) {
            prop_assert_eq!(d.encode().into_bytes(), m.clone());
        }
    }
}

#[test]
fn non_canonical_evidence_is_rejected() {
    let e = Equivocation::new("k", "a", "b", vec![[0xab; 32]]);
    let enc = e.encode();
    let cases = [
        enc.replace("\"a\":", "\"a\" :"),
        enc.replace(&"ab".repeat(32), &"AB".repeat(32)),
        format!("{enc}\n"),
        enc.replacen("\"log\":\"k\",\"a\":\"a\"", "\"a\":\"a\",\"log\":\"k\"", 1),
    ];
    for c in cases {
        assert!(Equivocation::decode(c.as_bytes()).is_err(), "{c}");
    }
    assert!(
        Equivocation::decode(enc.replace("equivocation/v1", "equivocation/v2").as_bytes())
            .unwrap_err()
            .to_string()
            .contains("type")
    );
}
