//! Exit codes and messages of the federation commands on real failures: 1 the data is wrong,
//! 2 unreadable or malformed input, 3 an environment problem (port in use, unreachable
//! bootstrap, no running node).

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::fed::{base, get_json, sigterm, Running};
use common::{leam, ok, p};

fn code_and_err(args: &[&str]) -> (Option<i32>, String) {
    let out = leam(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One founder, genesis signed; returns (node dir, genesis path).
fn single(root: &Path, listen: Option<&str>) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = root.join("a");
    let mut args = vec!["init", "--dir", p(&dir), "--org", "A", "--sector", "public"];
    if let Some(l) = listen {
        args.extend(["--listen", l]);
    }
    assert!(leam(&args).status.success());
    let g = root.join("fed.genesis");
    assert!(leam(&[
        "genesis",
        "create",
        "--out",
        p(&g),
        "--subsidy-percent",
        "10",
        "--threshold",
        "1",
        p(&dir)
    ])
    .status
    .success());
    assert!(leam(&["genesis", "sign", "--dir", p(&dir), p(&g)])
        .status
        .success());
    (dir, g)
}

#[test]
fn malformed_inputs_exit_2_with_the_field_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, g) = single(tmp.path(), None);
    // A genesis that is not one.
    let bad = tmp.path().join("bad.genesis");
    std::fs::write(&bad, "leam-genesis/v1\nsubsidy-percent 200\n").unwrap();
    let (code, err) = code_and_err(&["genesis", "verify", p(&bad)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad.genesis"), "{err}");
    // A member file with a wrong PeerId.
    let m = tmp.path().join("m.toml");
    let text = std::fs::read_to_string(dir.join("member.toml")).unwrap();
    std::fs::write(&m, text.replace("12D3Koo", "12D3Kox")).unwrap();
    let (code, err) = code_and_err(&[
        "genesis",
        "create",
        "--out",
        p(&tmp.path().join("x")),
        "--subsidy-percent",
        "1",
        "--threshold",
        "1",
        p(&m),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("peer_id"), "{err}");
    // A node.toml with an unknown field.
    let toml = dir.join("node.toml");
    let orig = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("{orig}\nlisten_typo = []\n")).unwrap();
    let (code, err) = code_and_err(&["node", "--dir", p(&dir), "--genesis", p(&g)]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listen_typo"), "{err}");
    std::fs::write(&toml, orig).unwrap();
    // A directory that already holds a node.
    let (code, err) = code_and_err(&["init", "--dir", p(&dir), "--org", "A", "--sector", "public"]);
    assert_eq!(code, Some(2), "{err}");
    // A sector that does not exist: clap's usage error, listing the valid ones; nothing made.
    let (code, err) = code_and_err(&[
        "init",
        "--dir",
        p(&tmp.path().join("z")),
        "--org",
        "Z",
        "--sector",
        "bogus",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("invalid value 'bogus' for '--sector <SECTOR>'")
            && err.contains("[possible values: public, private, science, startup]"),
        "{err}"
    );
    assert!(!tmp.path().join("z").exists());
}

/// Run `leam` with `--json` appended; require success, exactly one JSON document on stdout
/// and the human lines on stderr. Returns (document, stderr).
fn json(args: &[&str]) -> (Value, String) {
    let mut args = args.to_vec();
    args.push("--json");
    let out = leam(&args);
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.status.code(), Some(0), "leam {args:?}: {stderr}");
    // from_str refuses anything after the document but white space.
    let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("leam {args:?}: stdout is not one JSON document ({e}):\n{stdout}")
    });
    (v, stderr)
}

/// A field of a TOML file written by `leam init`.
fn toml_field(file: &Path, field: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field} = ")))
        .unwrap_or_else(|| panic!("{field} in {}", file.display()));
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn json_outputs_of_init_genesis_node_and_admit() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");

    // init --json: the facts of member.toml and the ledger's verifier key.
    let (ja, err) = json(&[
        "init",
        "--dir",
        p(&a),
        "--org",
        "Org A",
        "--sector",
        "science",
    ]);
    assert_eq!(ja["dir"], p(&a));
    assert_eq!(ja["organisation"], "Org A");
    assert_eq!(ja["sector"], "science");
    assert_eq!(ja["peer_id"], toml_field(&a.join("member.toml"), "peer_id"));
    assert!(
        ja["peer_id"].as_str().unwrap().starts_with("12D3Koo"),
        "{ja}"
    );
    assert_eq!(ja["member_key"], toml_field(&a.join("member.toml"), "key"));
    let vkey: Value =
        serde_json::from_str(&ok(&["ledger", "vkey", "--dir", p(&a), "--json"])).unwrap();
    assert_eq!(ja["verifier_key"], vkey["verifier_key"]);
    assert!(
        err.contains("created node"),
        "the human line on stderr: {err}"
    );
    // Without --json, stdout holds the PeerId alone, the one member.toml names.
    let pid_b = ok(&[
        "init",
        "--dir",
        p(&b),
        "--org",
        "Org B",
        "--sector",
        "startup",
    ]);
    assert_eq!(
        pid_b,
        format!("{}\n", toml_field(&b.join("member.toml"), "peer_id"))
    );
    let key_b = toml_field(&b.join("member.toml"), "key");

    // genesis create --json: the federation id `genesis verify` computes, the founders.
    let g = tmp.path().join("fed.genesis");
    let (jc, err) = json(&[
        "genesis",
        "create",
        "--out",
        p(&g),
        "--subsidy-percent",
        "25",
        "--threshold",
        "1",
        p(&a),
    ]);
    assert!(err.contains("wrote"), "{err}");
    let unsigned = leam(&["genesis", "verify", "--json", p(&g)]);
    assert_eq!(unsigned.status.code(), Some(1), "not signed yet");
    let v: Value = serde_json::from_slice(&unsigned.stdout).unwrap();
    assert_eq!(jc["federation"], v["federation"]);
    assert_eq!(jc["federation"].as_str().unwrap().len(), 64, "{jc}");
    assert_eq!(jc["file"], p(&g));
    assert_eq!(jc["subsidy_percent"], 25);
    assert_eq!(jc["threshold"], 1);
    assert_eq!(
        jc["members"],
        serde_json::json!([{
            "organisation": "Org A", "sector": "science", "key": ja["member_key"], "signed": false,
        }])
    );

    // genesis sign --json: who signed, how many have, the same federation.
    let (js, err) = json(&["genesis", "sign", "--dir", p(&a), p(&g)]);
    assert!(err.contains("signed; 1 of 1"), "{err}");
    assert_eq!(js["federation"], jc["federation"]);
    assert_eq!(js["file"], p(&g));
    assert_eq!(js["signed_by"], ja["member_key"]);
    assert_eq!(js["signatures"], 1);
    assert_eq!(js["members"][0]["signed"], true);
    let (v, _) = json(&["genesis", "verify", p(&g)]);
    assert_eq!(v["federation"], jc["federation"]);
    assert_eq!(v["members"], js["members"]);

    // node --json: one line once it listens, naming what it wrote to its files.
    let log = std::fs::File::create(tmp.path().join("a.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(["node", "--dir", p(&a), "--genesis", p(&g), "--json"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let node = Running {
        dir: a.clone(),
        child,
    };
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let jn: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "node --json: not a JSON line ({e}): {line:?}\n{}",
            std::fs::read_to_string(tmp.path().join("a.log")).unwrap_or_default()
        )
    });
    assert_eq!(jn["peer_id"], ja["peer_id"]);
    let listen: Vec<String> = std::fs::read_to_string(a.join("listen.addrs"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(jn["listen"], serde_json::json!(listen));
    assert_eq!(listen.len(), 2, "TCP and QUIC: {listen:?}");
    let pid = ja["peer_id"].as_str().unwrap();
    assert!(listen.iter().all(|l| l.ends_with(&format!("/p2p/{pid}"))));
    assert_eq!(
        jn["http"],
        std::fs::read_to_string(a.join("http.addr")).unwrap().trim()
    );

    // admit --json: the vote's entry, found at that index of the node's log.
    let (jv, err) = json(&["admit", "--dir", p(&a), "--genesis", p(&g), p(&b)]);
    assert!(err.contains("vote recorded as entry"), "{err}");
    assert_eq!(jv["member"], key_b.as_str());
    assert_eq!(jv["organisation"], "Org B");
    assert_eq!(jv["threshold"], 1);
    let index = jv["index"].as_u64().unwrap();
    assert!(index >= 1, "entry 0 is the node's own membership: {jv}");
    let page = get_json(&format!(
        "{}/api/logs/{}/entries?start={index}&limit=1",
        base(&a),
        ja["member_key"].as_str().unwrap()
    ));
    let body = &page["entries"][0]["entry"]["body"];
    assert_eq!(body["kind"], "admission", "{page}");
    assert_eq!(body["member"], key_b.as_str(), "{page}");

    // Nothing else reached stdout while the node ran; it stops with 0 on SIGTERM.
    let (status, _) = sigterm(node);
    assert_eq!(status.code(), Some(0));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "", "node --json printed more than its start line");
}

#[test]
fn environment_problems_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    // The listen port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let (dir, g) = single(tmp.path(), Some(&listen));
    let (code, err) = code_and_err(&["node", "--dir", p(&dir), "--genesis", p(&g)]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains(&port.to_string()),
        "the error names the address: {err}"
    );
    // No running node to ask.
    let (code, err) = code_and_err(&["peers", "--dir", p(&dir)]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no running node"), "{err}");
    // Nobody listens at the bootstrap address: the node gives up after BOOTSTRAP_TIMEOUT_MS.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let t = Instant::now();
    let (code, err) = code_and_err(&[
        "node",
        "--dir",
        p(&dir),
        "--genesis",
        p(&g),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--bootstrap",
        &format!("/ip4/127.0.0.1/tcp/{closed_port}"),
    ]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no bootstrap member reachable"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(
        !dir.join("http.addr").exists(),
        "a stopped node leaves no control address behind"
    );
}
