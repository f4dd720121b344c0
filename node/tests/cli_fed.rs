//! Exit codes and messages of the federation commands on real failures: 1 the data is wrong,
//! 2 unreadable or malformed input, 3 an environment problem (port in use, unreachable
//! bootstrap, no running node).

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{leam, p};

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
