//! The federation across real processes on loopback: four `leam node`s started from `leam init`
//! and `leam genesis` connect, replicate each other's logs and cosign each other's checkpoints;
//! a fifth node that is not in the genesis is refused by all, then admitted by two votes and
//! accepted; one node is killed with SIGKILL and restarted; all stop on SIGTERM with exit 0;
//! the audit of one node's directory (own log and replicas) equals the audit of all of them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::fed::{sigterm, start, start_with, status, tcp_addr, Running};
use common::{leam, ok, p};

fn start_awaiting(dir: &Path, genesis: &Path, bootstrap: &[String]) -> Running {
    start_with(dir, genesis, bootstrap, &["--await-admission"])
}

fn peers(dir: &Path) -> Vec<Value> {
    let out = ok(&["peers", "--dir", p(dir), "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Wait until `cond` holds for every node, or fail with the last statuses.
fn wait_for(
    what: &str,
    nodes: &[&Running],
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        let statuses: Vec<Option<Value>> = nodes.iter().map(|n| status(&n.dir)).collect();
        if statuses.iter().all(|s| s.as_ref().is_some_and(&cond)) {
            return t.elapsed();
        }
        if t.elapsed() > limit {
            panic!(
                "{what}: not reached within {limit:?}; statuses:\n{}",
                statuses
                    .iter()
                    .map(|s| serde_json::to_string(s).unwrap())
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every log of `keys` is held at the size its owner reports, and each owner's checkpoint
/// carries at least `cosigs` witness cosignatures.
fn converged(statuses: &[Value], keys: &[String], cosigs: u64) -> bool {
    let own: Vec<(String, u64, u64)> = statuses
        .iter()
        .map(|s| {
            let l = &s["logs"][0];
            (
                l["key"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
                l["cosignatures"].as_u64().unwrap(),
            )
        })
        .collect();
    own.iter().all(|(_, _, c)| *c >= cosigs)
        && statuses.iter().all(|s| {
            keys.iter().all(|k| {
                let want = own.iter().find(|(o, _, _)| o == k).map(|x| x.1);
                s["logs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["key"] == *k && Some(l["size"].as_u64().unwrap()) == want)
            })
        })
}

fn all_statuses(nodes: &[&Running]) -> Vec<Value> {
    nodes.iter().map(|n| status(&n.dir).unwrap()).collect()
}

#[test]
fn four_nodes_federate_refuse_an_outsider_admit_it_and_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let orgs = [
        ("a", "Rechenzentrum Nord", "public"),
        ("b", "Industrie Compute AG", "private"),
        ("c", "Universitaet Sued", "science"),
        ("d", "Sprachwerk GmbH", "startup"),
        ("e", "Neues Institut", "science"),
    ];
    let dirs: Vec<PathBuf> = orgs.iter().map(|(n, _, _)| root.join(n)).collect();
    for ((_, org, sector), dir) in orgs.iter().zip(&dirs) {
        let out = ok(&["init", "--dir", p(dir), "--org", org, "--sector", sector]);
        assert!(
            out.trim().starts_with("12D3Koo"),
            "init prints the PeerId: {out}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("node.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::read_to_string(dir.join("node.toml"))
            .unwrap()
            .contains("# "));
    }
    let genesis = root.join("fed.genesis");
    ok(&[
        "genesis",
        "create",
        "--out",
        p(&genesis),
        "--subsidy-percent",
        "30",
        "--threshold",
        "2",
        p(&dirs[0]),
        p(&dirs[1]),
        p(&dirs[2].join("member.toml")),
        p(&dirs[3]),
    ]);
    // Unsigned: verify fails with exit 1 and names what is missing; a node refuses to start.
    let v = leam(&["genesis", "verify", p(&genesis)]);
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stderr).contains("Rechenzentrum Nord"));
    let n = leam(&["node", "--dir", p(&dirs[0]), "--genesis", p(&genesis)]);
    assert_eq!(
        n.status.code(),
        Some(1),
        "a node refuses an incompletely signed genesis"
    );
    for d in &dirs[..4] {
        ok(&["genesis", "sign", "--dir", p(d), p(&genesis)]);
    }
    // A non-founder cannot sign.
    assert_eq!(
        leam(&["genesis", "sign", "--dir", p(&dirs[4]), p(&genesis)])
            .status
            .code(),
        Some(1)
    );
    ok(&["genesis", "verify", p(&genesis)]);

    let t0 = Instant::now();
    let a = start(&dirs[0], &genesis, &[]);
    let boot = vec![tcp_addr(&dirs[0])];
    let b = start(&dirs[1], &genesis, &boot);
    let c = start(&dirs[2], &genesis, &boot);
    let d = start(&dirs[3], &genesis, &boot);
    let founders = [&a, &b, &c, &d];
    let connected = wait_for(
        "all founders connected",
        &founders,
        Duration::from_secs(30),
        |s| s["logs"].as_array().is_some(),
    );
    let _ = connected;
    let t_all = Instant::now();
    loop {
        if founders.iter().all(|n| peers(&n.dir).len() == 3) {
            break;
        }
        assert!(
            t_all.elapsed() < Duration::from_secs(30),
            "founders did not all connect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "all four founders connected {:?} after the first start",
        t0.elapsed()
    );
    let ps = peers(&dirs[0]);
    for field in [
        "peer_id",
        "member_key",
        "organisation",
        "sector",
        "addresses",
        "rtt_ms",
    ] {
        assert!(
            ps[0].get(field).is_some(),
            "peers --json has {field}: {}",
            ps[0]
        );
    }
    let keys: Vec<String> = all_statuses(&founders)
        .iter()
        .map(|s| s["member_key"].as_str().unwrap().to_string())
        .collect();
    // Replication and witnessing: every founder holds every other's log at its size, and every
    // founder's latest checkpoint carries at least two witness cosignatures, within 30 s.
    let took = {
        let t = Instant::now();
        loop {
            let st = all_statuses(&founders);
            if converged(&st, &keys, 2) {
                break t.elapsed();
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no convergence: {st:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    eprintln!("replicated and cosigned (>= 2 witnesses each) {took:?} after all connected");

    // The outsider: initialised, not in the genesis, refused by every founder.
    // Without --await-admission an outsider's node refuses to start (exit 1, says why).
    let refused = leam(&["node", "--dir", p(&dirs[4]), "--genesis", p(&genesis)]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not in the genesis document"));
    let e = start_awaiting(&dirs[4], &genesis, &boot);
    std::thread::sleep(Duration::from_secs(3));
    for s in all_statuses(&founders) {
        assert!(
            s["refused_non_members"].as_u64().unwrap() > 0 || s["member_key"] != keys[0],
            "founder A refused the outsider: {s}"
        );
    }
    assert!(
        status(&dirs[0]).unwrap()["refused_non_members"]
            .as_u64()
            .unwrap()
            > 0
    );
    for n in &founders {
        let ek = status(&dirs[4]).unwrap()["member_key"].clone();
        assert!(
            peers(&n.dir).iter().all(|p| p["member_key"] != ek),
            "outsider not connected"
        );
    }
    assert!(peers(&dirs[4]).is_empty(), "nobody accepted the outsider");

    // Wrong token: refused with 403, and nothing is recorded.
    let addr = std::fs::read_to_string(dirs[0].join("http.addr")).unwrap();
    let resp = ureq::post(&format!("http://{}/api/admissions", addr.trim()))
        .header("Authorization", "Bearer 00")
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(serde_json::json!({"member": "00", "organisation": "x", "sector": "public"}))
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // Two votes admit it; every founder then accepts its connections.
    ok(&[
        "admit",
        "--dir",
        p(&dirs[0]),
        "--genesis",
        p(&genesis),
        p(&dirs[4]),
    ]);
    // A second vote from the same member is refused (already admitted in its log).
    assert_ne!(
        leam(&[
            "admit",
            "--dir",
            p(&dirs[0]),
            "--genesis",
            p(&genesis),
            p(&dirs[4])
        ])
        .status
        .code(),
        Some(0)
    );
    ok(&[
        "admit",
        "--dir",
        p(&dirs[1]),
        "--genesis",
        p(&genesis),
        p(&dirs[4].join("member.toml")),
    ]);
    // Kill C with SIGKILL while the votes replicate, then restart it from its directory.
    drop(c);
    let c = start(&dirs[2], &genesis, &boot);
    let everyone = [&a, &b, &c, &d, &e];
    let t = Instant::now();
    loop {
        let ek = keys_of(&e);
        if founders_except_c(&[&a, &b, &d], &c)
            .iter()
            .all(|dir| peers(dir).iter().any(|p| p["member_key"] == ek))
            && !peers(&dirs[4]).is_empty()
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "the admitted member was not accepted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut all_keys = keys.clone();
    all_keys.push(keys_of(&e).as_str().unwrap().to_string());
    let t = Instant::now();
    loop {
        let st = all_statuses(&everyone);
        if converged(&st, &all_keys, 2) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "five nodes did not converge: {st:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // SIGTERM: every node exits 0 within 10 s.
    let mut stopped = Vec::new();
    for n in [a, b, c, d, e] {
        let dir = n.dir.clone();
        let (st, took) = sigterm(n);
        assert!(st.success(), "{} exited with {st}", dir.display());
        assert!(
            took < Duration::from_secs(10),
            "{} took {took:?} to stop",
            dir.display()
        );
        stopped.push(dir);
    }

    // One node's directory (own log and replicas) audits to the same federation report as
    // every member's own directory.
    let one = ok(&[
        "audit",
        "--no-state",
        "--json",
        "--genesis",
        p(&genesis),
        p(&dirs[0]),
    ]);
    let all_dirs: Vec<&str> = dirs.iter().map(|d| p(d)).collect();
    let mut args = vec!["audit", "--no-state", "--json", "--genesis", p(&genesis)];
    args.extend(all_dirs);
    let all = ok(&args);
    let one: Value = serde_json::from_str(&one).unwrap();
    let all: Value = serde_json::from_str(&all).unwrap();
    assert_eq!(one["logs"].as_array().unwrap().len(), 5);
    assert_eq!(one["accounting"], all["accounting"]);
    // No log outside the federation (the report omits an empty `outsiders` list).
    assert!(one
        .get("outsiders")
        .is_none_or(|o| o.as_array().unwrap().is_empty()));
}

fn keys_of(n: &Running) -> Value {
    status(&n.dir).unwrap()["member_key"].clone()
}

fn founders_except_c(nodes: &[&Running], _c: &Running) -> Vec<PathBuf> {
    nodes.iter().map(|n| n.dir.clone()).collect()
}
