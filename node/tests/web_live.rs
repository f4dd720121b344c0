//! The web app served by live `leam node` processes (three on loopback): `/api/logs` shows the
//! own log and the replicas at their live sizes, the tlog checkpoint and the report are served,
//! a signed entry posted with the control token is appended (size + 1 at once) and replicated
//! to a peer, a wrong sequence number gets 409 naming the expected index, a write without the
//! token 401; node metrics are on `/metrics`; a job's progress file in the node directory is
//! served at `/api/jobs/progress` and `/jobs`; SIGTERM ends open event streams and the node.

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leam_ledger::entry::{Bid, Body, Deposit, Entry, Money};
use leam_ledger::identity::Identity;
use serde_json::{json, Value};

mod common;
use common::fed::{
    base, federation, get, get_json, post_json, replicated, sigterm, start, tcp_addr, token,
    wait_until,
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The own log's (key hex, size, last timestamp) as the node serves it.
fn own_log(dir: &Path) -> (String, u64, u64) {
    let logs = get_json(&format!("{}/api/logs", base(dir)));
    let own = &logs[0];
    assert_eq!(own["own"], true, "own log first: {logs}");
    let key = own["key"].as_str().unwrap().to_string();
    let size = own["size"].as_u64().unwrap();
    let last = get_json(&format!(
        "{}/api/logs/{key}/entries?start={}&limit=1",
        base(dir),
        size - 1
    ));
    let ts = last["entries"][0]["entry"]["timestamp_ms"]
        .as_u64()
        .unwrap();
    (key, size, ts)
}

fn signed(dir: &Path, seq: u64, ts: u64, body: Body) -> Value {
    let id = Identity::load(&dir.join("node.key")).unwrap();
    let e = Entry::sign(id.signing_key(), seq, ts, body);
    json!({ "entry_hex": hex::encode(e.encode()) })
}

fn bid(units: u64) -> Body {
    Body::Bid(Bid {
        job_id: [7; 32],
        compute_units: units,
        max_price_cents_per_kilo_unit: 12,
        deadline_ms: now_ms() + 3_600_000,
    })
}

#[test]
fn live_nodes_serve_their_logs_and_accept_signed_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let (genesis, dirs) = federation(
        tmp.path(),
        &[
            ("a", "Rechenzentrum Nord", "public"),
            ("b", "Industrie Compute AG", "private"),
            ("c", "Universitaet Sued", "science"),
        ],
        2,
    );
    let a = start(&dirs[0], &genesis, &[]);
    let boot = vec![tcp_addr(&dirs[0])];
    let b = start(&dirs[1], &genesis, &boot);
    let c = start(&dirs[2], &genesis, &boot);
    let all: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    wait_until(
        "three nodes replicate each other",
        Duration::from_secs(40),
        || replicated(&all),
    );

    // /api/logs: own log first, then both replicas, each at the size its owner serves.
    let logs = get_json(&format!("{}/api/logs", base(&dirs[0])));
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 3, "own log and two replicas: {logs:?}");
    assert_eq!(logs[0]["own"], true);
    assert!(logs[1..].iter().all(|l| l["own"] == false));
    for (i, d) in dirs.iter().enumerate().skip(1) {
        let (key, size, _) = own_log(d);
        let held = logs.iter().find(|l| l["key"] == key.as_str()).unwrap();
        assert_eq!(held["size"].as_u64(), Some(size), "replica of node {i}");
    }
    let (key_a, size_a, ts_a) = own_log(&dirs[0]);

    // The tlog checkpoint of the own log and of a replica.
    let (st, cp) = get(&format!("{}/tlog/{key_a}/checkpoint", base(&dirs[0])));
    assert_eq!(st, 200, "{cp}");
    let mut lines = cp.lines();
    assert!(
        lines.next().unwrap().ends_with(&key_a),
        "origin names the log: {cp}"
    );
    assert_eq!(lines.next().unwrap(), size_a.to_string());
    let key_b = logs[1]["key"].as_str().unwrap();
    assert_eq!(
        get(&format!("{}/tlog/{key_b}/checkpoint", base(&dirs[0]))).0,
        200
    );

    // The report: the accounting over all three logs, and its page.
    let report = get_json(&format!("{}/api/report", base(&dirs[0])));
    assert_eq!(report["logs"], 3, "{report}");
    assert_eq!(report["organisations"].as_object().unwrap().len(), 3);
    let (st, page) = get(&format!("{}/report", base(&dirs[0])));
    assert_eq!(st, 200);
    assert!(page.contains("Rechenzentrum Nord") && page.contains("Universitaet Sued"));

    // Peers from the live node (the fields `leam peers --json` documents).
    let peers = get_json(&format!("{}/api/peers", base(&dirs[0])));
    assert_eq!(peers.as_array().unwrap().len(), 2, "{peers}");
    for f in [
        "peer_id",
        "member_key",
        "organisation",
        "sector",
        "addresses",
        "rtt_ms",
    ] {
        assert!(peers[0].get(f).is_some(), "{f} in {peers}");
    }

    let tok = token(&dirs[0]);
    let deposits = format!("{}/api/deposits", base(&dirs[0]));
    let bids = format!("{}/api/bids", base(&dirs[0]));
    // Without the token: 401, nothing appended.
    let body = signed(&dirs[0], size_a, ts_a.max(now_ms()), bid(1_000));
    let (st, err) = post_json(&bids, None, &body);
    assert_eq!(st, 401, "{err}");
    assert_eq!(own_log(&dirs[0]).1, size_a);

    // A signed deposit with the token: appended as the next entry, visible at once.
    let id_a = Identity::load(&dirs[0].join("node.key")).unwrap();
    let deposit = Body::Deposit(Deposit {
        member: id_a.public_key(),
        eur_cents: 250_000,
        money: Money::Public,
        reference: "GRANT-2025-001".into(),
    });
    let (st, ok) = post_json(
        &deposits,
        Some(&tok),
        &signed(&dirs[0], size_a, ts_a.max(now_ms()), deposit),
    );
    assert_eq!(st, 201, "{ok}");
    assert_eq!(ok["index"].as_u64(), Some(size_a));
    assert_eq!(ok["log"], key_a.as_str());
    let (_, size, ts) = own_log(&dirs[0]);
    assert_eq!(
        size,
        size_a + 1,
        "the live view shows the new entry at once"
    );
    let report = get_json(&format!("{}/api/report", base(&dirs[0])));
    assert_eq!(
        report["organisations"]["Rechenzentrum Nord"]["funding_public_eur_cents"], 250_000,
        "{report}"
    );

    // The wrong sequence number: 409 naming the index the node expects.
    let (st, err) = post_json(
        &bids,
        Some(&tok),
        &signed(&dirs[0], size + 5, ts.max(now_ms()), bid(2_000)),
    );
    assert_eq!(st, 409, "{err}");
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "entry seq {}, expected the next index {size}",
            size + 5
        )),
        "{msg}"
    );
    // Another node's entry is not this node's to append (its author is not this node): 409.
    let (st, err) = post_json(
        &bids,
        Some(&tok),
        &signed(&dirs[1], size, ts.max(now_ms()), bid(2_000)),
    );
    assert_eq!(st, 409, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("expected this node's key"),
        "{err}"
    );

    // The deposit reaches B's replica of A's log.
    wait_until(
        "B replicates A's new entry",
        Duration::from_secs(20),
        || {
            get_json(&format!("{}/api/logs", base(&dirs[1])))
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["key"] == key_a.as_str() && l["size"].as_u64() == Some(size))
        },
    );

    // A job's progress file, where the bidder side of the node writes it (`leam_jobs`' names,
    // which web mirrors), is served by the live node as soon as it exists.
    assert_eq!(
        leam_web::progress::JOBS_DIR_NAME,
        leam_jobs::JOBS_DIR_NAME,
        "web reads where leam-jobs writes"
    );
    assert_eq!(
        leam_web::progress::PROGRESS_SUFFIX,
        leam_jobs::bidder::PROGRESS_SUFFIX
    );
    let progress_url = format!("{}/api/jobs/progress", base(&dirs[0]));
    assert_eq!(get_json(&progress_url), json!([]));
    let job = [0x6b_u8; 32];
    let progress = leam_jobs::bidder::Progress {
        job: hex::encode(job),
        state: "running".into(),
        val_loss_start: Some(4.25),
        rounds: vec![leam_jobs::bidder::RoundProgress {
            round: 0,
            shards: 2,
            runs: 3,
            replicated: 1,
            mismatched: 0,
            merged: 2,
            released: 1,
            verified: 2,
            rejected: 0,
            val_loss: Some(3.5),
            wall_ms: 4_200,
        }],
        device_ms: [(key_a.clone(), 7_000)].into_iter().collect(),
        verdicts: (2, 0),
        ..Default::default()
    };
    let path = leam_jobs::bidder::progress_path(&dirs[0], &job);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&progress).unwrap()).unwrap();
    assert_eq!(
        get_json(&progress_url),
        json!([serde_json::to_value(&progress).unwrap()]),
        "the document as leam-jobs wrote it"
    );
    let (st, page) = get(&format!("{}/jobs", base(&dirs[0])));
    assert_eq!(st, 200);
    assert!(
        page.contains(&hex::encode(job)) && page.contains("<svg"),
        "{page}"
    );
    assert!(
        page.contains("<th scope=\"row\">Rechenzentrum Nord</th>"),
        "device time by organisation: {page}"
    );

    // Node metrics next to the server's.
    let (st, metrics) = get(&format!("{}/metrics", base(&dirs[0])));
    assert_eq!(st, 200);
    for name in [
        "leam_node_gossip_accepted_total",
        "leam_node_replication_lag_entries{",
        "leam_node_replica_entries{",
        "leam_node_members 3",
        "leam_peers 2",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics:\n{metrics}");
    }

    // An open event stream does not hold the node up: SIGTERM ends it and the node exits 0.
    let events = format!("{}/api/events", base(&dirs[0]));
    let reader = std::thread::spawn(move || {
        let mut resp = ureq::get(&events).call().unwrap();
        let mut buf = Vec::new();
        let _ = resp.body_mut().as_reader().read_to_end(&mut buf);
        buf.len()
    });
    std::thread::sleep(Duration::from_millis(500));
    for n in [a, b, c] {
        let (st, took) = sigterm(n);
        assert!(st.success(), "exit {st}");
        assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    }
    reader.join().unwrap();
}
