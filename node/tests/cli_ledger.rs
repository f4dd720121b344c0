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
    store.raw_replace_entry(40, &bytes).unwrap();
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

/// `leam serve DIRS…` on 127.0.0.1; the process and its base URL.
fn serve(dirs: &[&Path]) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(["serve", "--http", "127.0.0.1:0"])
        .args(dirs)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("serve prints its address: {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    (child, base)
}

/// The log key (hex) of the node directory `dir`.
fn key_hex(dir: &Path) -> String {
    let note = ok(&["ledger", "checkpoint", "--dir", p(dir)]);
    note.lines()
        .next()
        .unwrap()
        .trim_start_matches("leam.ledger/")
        .to_owned()
}

/// A server in front of `upstream` that passes every GET on, after `tamper(path, body)`: a lying
/// tlog-tiles server. Returns its base URL; it runs until the test process ends.
fn lying_proxy(upstream: &str, tamper: impl Fn(&str, &mut Vec<u8>) + Send + 'static) -> String {
    use std::io::{BufRead as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // Skip the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let (status, mut body) = match ureq::get(&format!("{upstream}{path}")).call() {
                Ok(mut r) => (200, r.body_mut().read_to_vec().unwrap()),
                Err(ureq::Error::StatusCode(code)) => (code, Vec::new()),
                Err(e) => panic!("{e}"),
            };
            tamper(&path, &mut body);
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    base
}

/// Flips a byte of entry `index` in its entry bundle (`body` of `tile/entries/<N>…`).
fn tamper_bundle(body: &mut [u8], index: u64) {
    let mut at = 0;
    for _ in 0..index % 256 {
        at += 2 + usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    }
    body[at + 2 + 70] ^= 0x01;
}

#[test]
fn audit_over_http_verifies_logs_above_one_extension_in_batches() {
    let tmp = tempfile::tempdir().unwrap();
    // Above the 65,536 entries of one replica extension (the old limit of `audit URL`).
    let big = tmp.path().join("big");
    ok(&["ledger", "bench", "--dir", p(&big), "--entries", "66000"]);
    let small = tmp.path().join("small");
    ok(&["ledger", "bench", "--dir", p(&small), "--entries", "1500"]);
    let audit_json = |target: &str, batch: &str| -> serde_json::Value {
        let out = ok(&[
            "audit",
            "--json",
            "--no-market",
            "--no-state",
            "--batch-entries",
            batch,
            target,
        ]);
        serde_json::from_str(&out).unwrap()
    };
    let (local_big, local_small) = (audit_json(p(&big), "65536"), audit_json(p(&small), "65536"));
    let (big_key, small_key) = (key_hex(&big), key_hex(&small));

    let (mut server, base) = serve(&[&big, &small]);
    let started = std::time::Instant::now();
    let remote_big = leam(&[
        "audit",
        "--json",
        "--no-market",
        "--no-state",
        &format!("{base}/tlog/{big_key}/"),
    ]);
    let elapsed = started.elapsed();
    let remote_small = leam(&[
        "audit",
        "--json",
        "--no-market",
        "--no-state",
        "--batch-entries",
        "256",
        &format!("{base}/tlog/{small_key}/"),
    ]);
    // A server that changes entry 300 (a byte of its body, so its signature fails), in the
    // second batch of 256.
    let entry_liar = lying_proxy(&base, |path, body| {
        if path.ends_with("/tile/entries/001") {
            tamper_bundle(body, 300);
        }
    });
    let bad_entry = leam(&[
        "audit",
        "--no-market",
        "--no-state",
        "--batch-entries",
        "256",
        &format!("{entry_liar}/tlog/{small_key}/"),
    ]);
    // A server whose hash tiles lie: the consistency proofs fail, nothing is believed.
    let tile_liar = lying_proxy(&base, |path, body| {
        if path.contains("/tile/") && !path.contains("/tile/entries/") {
            body.iter_mut().for_each(|b| *b ^= 0xff);
        }
    });
    let bad_tiles = leam(&[
        "audit",
        "--no-market",
        "--no-state",
        "--batch-entries",
        "256",
        &format!("{tile_liar}/tlog/{small_key}/"),
    ]);
    let zero = leam(&["audit", "--batch-entries", "0", &base]);
    server.kill().unwrap();
    server.wait().unwrap();

    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    for (remote, local, size) in [
        (&remote_big, &local_big, 66_002),
        (&remote_small, &local_small, 1_502),
    ] {
        assert!(
            remote.status.success(),
            "audit over HTTP: {}",
            stderr(remote)
        );
        let remote: serde_json::Value = serde_json::from_slice(&remote.stdout).unwrap();
        assert_eq!(remote["logs"][0]["size"], size);
        for field in ["size", "root", "signatures_verified"] {
            assert_eq!(remote["logs"][0][field], local["logs"][0][field], "{field}");
        }
        assert_eq!(remote["accounting"], local["accounting"]);
    }
    eprintln!("audit of 66,002 entries over HTTP: {elapsed:?}");

    let err = stderr(&bad_entry);
    assert_eq!(bad_entry.status.code(), Some(1), "{err}");
    assert!(
        err.contains("entry 300") && err.contains(&small_key),
        "the error names the log and the entry: {err}"
    );
    let err = stderr(&bad_tiles);
    assert_eq!(bad_tiles.status.code(), Some(1), "{err}");
    assert!(
        err.contains("entries 0..256") && err.contains("size 1502") && err.contains(&small_key),
        "the error names the log, the batch and the signed tree: {err}"
    );
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
}
