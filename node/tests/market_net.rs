//! The market across real processes: four `leam node`s on loopback; two providers publish
//! measured offers with `leam offer`, the startup deposits and bids with `leam deposit` and
//! `leam bid`; the startup's node clears the bid by the market rule and proposes the leases it
//! implies; each provider's node re-runs the rule on its own replicas before it co-signs; after
//! SIGTERM, `leam audit --genesis` of the startup's directory reproduces every clearing and
//! every lease.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::fed::{federation, start, tcp_addr, wait_until as wait};
use common::{leam, ok, p};

fn get(dir: &Path, path: &str) -> Option<Value> {
    let addr = std::fs::read_to_string(dir.join("http.addr")).ok()?;
    let mut resp = ureq::get(&format!("http://{}{path}", addr.trim()))
        .call()
        .ok()?;
    resp.body_mut().read_json().ok()
}

/// Size of the log `key` as the node in `dir` holds it (its own or a replica).
fn size(dir: &Path, key: &str) -> Option<u64> {
    get(dir, "/api/status")?["logs"]
        .as_array()?
        .iter()
        .find(|l| l["key"] == key)?["size"]
        .as_u64()
}

/// The entries of a stopped node's own log, as `leam ledger export` prints them.
fn export(dir: &Path) -> Vec<Value> {
    ok(&["ledger", "export", "--dir", p(dir)])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn member_key(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("member.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

#[test]
fn a_bid_is_cleared_by_the_rule_and_leased_over_the_network() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let orgs = [
        ("a", "Rechenzentrum Nord", "public"),
        ("b", "Industrie Compute AG", "private"),
        ("c", "Universitaet Sued", "science"),
        ("d", "Sprachwerk GmbH", "startup"),
    ];
    let (genesis, dirs) = federation(root, &orgs, 2);
    let keys: Vec<String> = dirs.iter().map(|d| member_key(d)).collect();
    let mut nodes = vec![start(&dirs[0], &genesis, &[])];
    let boot = tcp_addr(&dirs[0]);
    for d in &dirs[1..] {
        nodes.push(start(d, &genesis, std::slice::from_ref(&boot)));
    }
    // Everyone holds everyone's log.
    wait("replicas", Duration::from_secs(30), || {
        dirs.iter()
            .all(|d| keys.iter().all(|k| size(d, k).is_some()))
    });

    // Two measured offers, a deposit, a job and a bid, all from the command line.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt");
    let out = ok(&[
        "offer",
        "--dir",
        p(&dirs[0]),
        "--price",
        "40",
        "--minutes",
        "60",
        "--backend",
        "cpu",
        "--corpus",
        p(&corpus),
    ]);
    assert!(out.contains("units/hour measured on"), "{out}");
    ok(&[
        "offer",
        "--dir",
        p(&dirs[1]),
        "--price",
        "55",
        "--minutes",
        "60",
        "--backend",
        "cpu",
        "--corpus",
        p(&corpus),
    ]);
    ok(&[
        "deposit",
        "--dir",
        p(&dirs[3]),
        "--eur-cents",
        "100000",
        "--money",
        "private",
        "--reference",
        "seed round",
    ]);
    let job = root.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"tiny shakespeare\"\npreset = \"nanogpt-cpu\"\ncorpus = \"{}\"\nrounds = 2\nshards_per_round = 2\ninner_steps = 10\nreplication_percent = 0\nreferees = [\"{}\"]\ndeadline_minutes = 30\nmax_price_cents_per_kilo_unit = 60\n[model]\nn_layer = 2\nn_embd = 64\nblock_size = 32\nbatch = 8\n",
            corpus.display(),
            keys[2]
        ),
    )
    .unwrap();
    // The bidder waits until both offers reached its replicas, so the clearing sees both.
    let own = |i: usize| size(&dirs[i], &keys[i]).unwrap();
    let (a0, b0) = (own(0), own(1));
    wait(
        "offers replicated to the bidder",
        Duration::from_secs(20),
        || size(&dirs[3], &keys[0]) == Some(a0) && size(&dirs[3], &keys[1]) == Some(b0),
    );
    let d0 = own(3);
    let t = Instant::now();
    let job_id = ok(&["bid", "--dir", p(&dirs[3]), "--job", p(&job)])
        .trim()
        .to_owned();
    assert_eq!(job_id.len(), 64, "bid prints the job id: {job_id}");
    // Both providers measured far more than the job's 4 shards within the hour, so the rule
    // gives every shard to the cheaper ask (40) and prices them at its own unsold capacity:
    // a clearing and a lease in the bidder's log after its job and bid, a lease in the
    // provider's.
    wait("clearing and lease", Duration::from_secs(30), || {
        own(3) == d0 + 4 && own(0) == a0 + 1
    });
    println!(
        "bid to lease co-signed over the network: {} ms",
        t.elapsed().as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    for n in nodes.drain(..) {
        let pid = n.child.id();
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let mut n = n;
        n.child.wait().unwrap();
    }
    let bidder = export(&dirs[3]);
    let kinds: Vec<&str> = bidder[d0 as usize..]
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["job", "bid", "clearing", "lease"],
        "the bidder's new entries"
    );
    let clearing = &bidder[d0 as usize + 2]["body"];
    assert_eq!(clearing["price_cents_per_kilo_unit"], 40, "{clearing}");
    let assignments = clearing["assignments"].as_array().unwrap();
    assert_eq!(assignments.len(), 1, "{clearing}");
    assert_eq!(assignments[0]["provider"], keys[0].as_str());
    assert_eq!(assignments[0]["shards"], 4);
    assert_eq!(bidder[d0 as usize + 1]["body"]["job_id"], job_id.as_str());
    let provider = export(&dirs[0]);
    assert_eq!(provider.last().unwrap()["kind"], "lease");
    assert_eq!(
        provider.last().unwrap()["body"]["terms"],
        bidder.last().unwrap()["body"]["terms"]
    );

    // The audit of the bidder's directory (own log and replicas) re-runs the rule.
    let out = leam(&[
        "audit",
        "--json",
        "--no-state",
        "--genesis",
        p(&genesis),
        p(&dirs[3]),
    ]);
    assert!(
        out.status.success(),
        "audit failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["market"];
    assert_eq!(m["clearings"], 1, "{m}");
    assert_eq!(m["clearings_reproduced"], 1, "{m}");
    assert_eq!(m["leases_matching"], 1, "{m}");
    assert_eq!(m["findings"].as_array().unwrap().len(), 0, "{m}");
}
