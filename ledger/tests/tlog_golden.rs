//! The worked example of `specs/tlog.md`: recomputes every value from fixed keys and
//! leaves, compares with the golden file `tests/data/tlog-example.txt`, and checks that
//! the spec page quotes each value verbatim, so page, file and code cannot drift apart.
//!
//! To regenerate after a deliberate format change: `LEAM_BLESS=1 cargo test -p
//! leam-ledger --test tlog_golden`, then update the spec page from the file.

use std::fmt::Write as _;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use leam_ledger::checkpoint::{Checkpoint, Cosigner};
use leam_ledger::evidence::Equivocation;
use leam_ledger::merkle::{self, MemoryTree};
use leam_ledger::note::{Note, Signer};

/// The RFC 6962 test leaves (transparency-dev/merkle README), as hex.
const LEAVES_HEX: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
const LOG_SEED: [u8; 32] = [1; 32];
const WITNESS_SEED: [u8; 32] = [2; 32];
const ORIGIN: &str = "example.org/leam-log";
const WITNESS: &str = "witness.example.org/w1";
const TIMESTAMP: u64 = 1_790_000_000;

fn example() -> String {
    let mut out = String::new();
    let mut tree = MemoryTree::new();
    let leaves: Vec<_> = LEAVES_HEX
        .iter()
        .map(|h| merkle::leaf_hash(&hex::decode(h).unwrap()))
        .collect();
    for (i, l) in leaves.iter().enumerate() {
        tree.append(*l).unwrap();
        writeln!(out, "leaf_hash[{i}] = {}", hex::encode(l)).unwrap();
    }
    writeln!(out, "stored_hash_count(8) = {}", tree.stored_hashes().len()).unwrap();
    for (i, h) in tree.stored_hashes().iter().enumerate() {
        writeln!(out, "stored[{i}] = {}", hex::encode(h)).unwrap();
    }
    for size in [6, 8] {
        writeln!(
            out,
            "root({size}) = {}",
            hex::encode(tree.root_at(size).unwrap())
        )
        .unwrap();
    }
    for (i, h) in tree.prove_record(8, 5).unwrap().iter().enumerate() {
        writeln!(out, "inclusion(index 5, size 8)[{i}] = {}", hex::encode(h)).unwrap();
    }
    for (i, h) in tree.prove_tree(8, 6).unwrap().iter().enumerate() {
        writeln!(out, "consistency(6 -> 8)[{i}] = {}", hex::encode(h)).unwrap();
    }

    let log = Signer::new(ORIGIN, SigningKey::from_bytes(&LOG_SEED)).unwrap();
    let witness = Cosigner::new(WITNESS, SigningKey::from_bytes(&WITNESS_SEED)).unwrap();
    writeln!(out, "log vkey = {}", log.verifier()).unwrap();
    writeln!(out, "witness vkey = {}", witness.verifier()).unwrap();
    let cp = Checkpoint::new(ORIGIN, 8, tree.root()).unwrap();
    let mut note = Note::parse(cp.sign(&log).unwrap().as_bytes()).unwrap();
    let cosig = witness.cosign(&note.text, TIMESTAMP).unwrap();
    note.add_signature(cosig.clone()).unwrap();
    writeln!(out, "cosignature timestamp = {TIMESTAMP}").unwrap();
    writeln!(out, "cosignature bytes = {}", hex::encode(&cosig.sig)).unwrap();
    writeln!(
        out,
        "checkpoint note (base64) = {}",
        B64.encode(note.encode())
    )
    .unwrap();
    for l in note.encode().lines() {
        writeln!(out, "checkpoint note line = {l}").unwrap();
    }

    // Equivocation: a second size-8 checkpoint whose last leaf differs.
    let mut fork = MemoryTree::new();
    for l in &leaves[..7] {
        fork.append(*l).unwrap();
    }
    fork.append(merkle::leaf_hash(b"forged")).unwrap();
    let forked = Checkpoint::new(ORIGIN, 8, fork.root())
        .unwrap()
        .sign(&log)
        .unwrap();
    let ev = Equivocation::new(
        &log.verifier().to_string(),
        &cp.sign(&log).unwrap(),
        &forked,
        Vec::new(),
    );
    assert!(ev.verify_conclusive().is_ok());
    writeln!(out, "evidence = {}", ev.encode()).unwrap();
    out
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn worked_example_matches_golden_file_and_spec() {
    let got = example();
    let golden = data("tests/data/tlog-example.txt");
    if std::env::var_os("LEAM_BLESS").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("golden file tests/data/tlog-example.txt");
    assert_eq!(
        got,
        want,
        "worked example differs from {}",
        golden.display()
    );

    let spec = std::fs::read_to_string(data("../specs/tlog.md")).expect("specs/tlog.md");
    for line in want.lines() {
        // Each value (right of " = ") must appear verbatim in the spec page, except the
        // long base64/JSON lines, which the page shows through the golden file.
        let (key, value) = line.split_once(" = ").unwrap();
        if key == "checkpoint note (base64)" || key == "evidence" {
            continue;
        }
        assert!(spec.contains(value), "specs/tlog.md lacks {key} = {value}");
    }
    assert_eq!(
        merkle::root_of(&[]),
        merkle::empty_root(),
        "empty tree root per RFC 9162"
    );
}
