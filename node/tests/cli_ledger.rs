//! The ledger command line as funders' scripts call it: keygen, ledger init/export/checkpoint/
//! vkey/prove/bench, audit (success, JSON, and failure exit status).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;
use leam_ledger::merkle;

fn leam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(args)
        .output()
        .expect("the leam binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = leam(args);
    assert!(
        out.status.success(),
        "leam {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn hex32(s: &str) -> [u8; 32] {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).unwrap();
    h
}

#[test]
fn keygen_writes_a_private_key_once() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("node.key");
    let out = ok(&["keygen", "--out", p(&key)]);
    assert!(out.contains("verifier key: leam.ledger/"), "{out}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&key).unwrap();
    let seed_line = text.lines().nth(1).unwrap();
    assert!(!out.contains(seed_line), "keygen printed the secret");
    let again = leam(&["keygen", "--out", p(&key)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // A key file readable by others is refused by name and mode.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = tmp.path().join("node");
    let out = leam(&[
        "ledger",
        "init",
        "--dir",
        p(&dir),
        "--name",
        "TU X",
        "--sector",
        "science",
        "--key",
        p(&key),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mode 0644") && err.contains(p(&key)), "{err}");
    assert!(!dir.join("ledger.sled").exists());
}

#[test]
fn ledger_commands_on_a_bench_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let bench = ok(&[
        "ledger",
        "bench",
        "--dir",
        p(&dir),
        "--entries",
        "60",
        "--batch",
        "16",
    ]);
    let last = bench.lines().last().unwrap();
    let ratio: f64 = last
        .strip_prefix("ratio ")
        .expect("last line is the ratio")
        .parse()
        .unwrap();
    assert!(ratio > 0.0, "{bench}");
    let size = 62u64; // two admissions + 60 entries

    let vkey = ok(&["ledger", "vkey", "--dir", p(&dir)]);
    let vkey = vkey.trim_end();
    assert!(vkey.starts_with("leam.ledger/"), "{vkey}");

    let note = ok(&["ledger", "checkpoint", "--dir", p(&dir)]);
    assert_eq!(
        note.as_bytes(),
        std::fs::read(dir.join("checkpoint")).unwrap()
    );
    let mut lines = note.lines();
    assert_eq!(Some(vkey.split('+').next().unwrap()), lines.next());
    assert_eq!(lines.next(), Some("62"));
    let root: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(lines.next().unwrap())
        .unwrap()
        .try_into()
        .unwrap();

    let export = ok(&["ledger", "export", "--dir", p(&dir)]);
    let rows: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len() as u64, size);
    let mut leaves = vec![];
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"], i as u64);
        assert_eq!(r["author"], vkey);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r["entry"].as_str().unwrap())
            .unwrap();
        let leaf = merkle::leaf_hash(&bytes);
        assert_eq!(r["leaf_hash"], hex::encode(leaf));
        assert_eq!(r["body"]["kind"], r["kind"]);
        leaves.push(leaf);
    }
    assert_eq!(rows[0]["kind"], "admission");
    assert_eq!(rows[0]["body"]["sector"], "science");
    assert_eq!(merkle::root_of(&leaves), root);

    let proof: Vec<[u8; 32]> = ok(&["ledger", "prove", "--dir", p(&dir), "--index", "7"])
        .lines()
        .map(hex32)
        .collect();
    merkle::check_record(&proof, size, &root, 7, &leaves[7]).unwrap();
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "ledger",
        "prove",
        "--dir",
        p(&dir),
        "--index",
        "3",
        "--size",
        "20",
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["type"], "inclusion");
    assert_eq!(json["root"], hex::encode(merkle::root_of(&leaves[..20])));
    let proof: Vec<[u8; 32]> = ok(&[
        "ledger",
        "prove",
        "--dir",
        p(&dir),
        "--from",
        "10",
        "--to",
        "62",
    ])
    .lines()
    .map(hex32)
    .collect();
    merkle::check_tree(&proof, size, &root, 10, &merkle::root_of(&leaves[..10])).unwrap();
    assert!(
        !leam(&["ledger", "prove", "--dir", p(&dir), "--index", "62"])
            .status
            .success()
    );

    // Audit: text, JSON with a state file, and a second run checked against the first.
    let state = tmp.path().join("state.json");
    let text = ok(&["audit", "--no-market", p(&dir), "--state", p(&state)]);
    assert!(
        text.contains("ok ") && text.contains("62 entries"),
        "{text}"
    );
    assert!(
        text.contains("science") && text.contains("Bench Node"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "audit",
        "--no-market",
        p(&dir),
        "--state",
        p(&state),
        "--json",
    ]))
    .unwrap();
    assert_eq!(json["logs"][0]["size"], size);
    assert_eq!(json["logs"][0]["consistent_with_size"], size);
    assert_eq!(json["accounting"]["entries"], size);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["logs"][vkey.split('+').next().unwrap()]["size"], size);

    // A flipped byte in a stored entry: exit status 1 and a message naming the entry.
    let store = leam_ledger::store::SledStore::open(&dir.join("ledger.sled")).unwrap();
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(rows[40]["entry"].as_str().unwrap())
        .unwrap();
    bytes[70] ^= 0x20;
    store
        .raw_insert(&leam_ledger::store::SledStore::entry_key(40), &bytes)
        .unwrap();
    drop(store);
    let out = leam(&["audit", "--no-market", p(&dir), "--no-state"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("entry 40"), "{err}");
}

#[test]
fn init_creates_a_node_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n");
    let out = ok(&[
        "ledger",
        "init",
        "--dir",
        p(&dir),
        "--org",
        "Stadtwerke AG",
        "--sector",
        "private",
    ]);
    assert!(out.contains("verifier key: leam.ledger/"), "{out}");
    let export = ok(&["ledger", "export", "--dir", p(&dir)]);
    let row: serde_json::Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert_eq!(row["body"]["organisation"], "Stadtwerke AG");
    assert_eq!(row["body"]["sector"], "private");
    let bad = leam(&[
        "ledger",
        "init",
        "--dir",
        p(&dir),
        "--org",
        "X",
        "--sector",
        "banks",
    ]);
    // A usage error (exit 2) that lists the sectors.
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid value 'banks'") && err.contains("public, private, science, startup"),
        "{err}"
    );
}
