//! The market across real processes: four `leam node`s on loopback; two providers publish
//! measured offers with `leam offer`, the startup deposits and bids with `leam deposit` and
//! `leam bid`; the startup's node clears the bid by the market rule and proposes the leases it
//! implies; each provider's node re-runs the rule on its own replicas before it co-signs; after
//! SIGTERM, `leam audit --genesis` of the startup's directory reproduces every clearing and
//! every lease.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{leam, ok, p};

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, genesis: &Path, bootstrap: Option<&str>) -> Running {
    let _ = std::fs::remove_file(dir.join("http.addr"));
    let _ = std::fs::remove_file(dir.join("listen.addrs"));
    let mut args = vec!["node", "--dir", p(dir), "--genesis", p(genesis)];
    if let Some(b) = bootstrap {
        args.extend(["--bootstrap", b]);
    }
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(&args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !(dir.join("http.addr").exists() && dir.join("listen.addrs").exists()) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "node {} did not start",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Running { child }
}

fn get(dir: &Path, path: &str) -> Option<Value> {
    let addr = std::fs::read_to_string(dir.join("http.addr")).ok()?;
    let mut resp = ureq::get(&format!("http://{}{path}", addr.trim()))
        .call()
        .ok()?;
    resp.body_mut().read_json().ok()
}

/// Entries of `kind` in the log `key` as the node in `dir` holds it.
fn entries(dir: &Path, key: &str, kind: &str) -> Vec<Value> {
    get(
        dir,
        &format!("/api/logs/{key}/entries?kind={kind}&limit=500"),
    )
    .and_then(|v| v["entries"].as_array().cloned())
    .unwrap_or_default()
}

fn wait(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let dirs: Vec<PathBuf> = orgs.iter().map(|(n, _, _)| root.join(n)).collect();
    for ((_, org, sector), dir) in orgs.iter().zip(&dirs) {
        ok(&["init", "--dir", p(dir), "--org", org, "--sector", sector]);
    }
    let genesis = root.join("fed.genesis");
    let mut create = vec![
        "genesis",
        "create",
        "--out",
        p(&genesis),
        "--subsidy-percent",
        "30",
        "--threshold",
        "2",
    ];
    create.extend(dirs.iter().map(|d| p(d)));
    ok(&create);
    for d in &dirs {
        ok(&["genesis", "sign", "--dir", p(d), p(&genesis)]);
    }
    let keys: Vec<String> = dirs.iter().map(|d| member_key(d)).collect();
    let first = start(&dirs[0], &genesis, None);
    let boot = std::fs::read_to_string(dirs[0].join("listen.addrs"))
        .unwrap()
        .lines()
        .find(|l| l.contains("/tcp/"))
        .unwrap()
        .to_owned();
    let mut nodes = vec![first];
    for d in &dirs[1..] {
        nodes.push(start(d, &genesis, Some(&boot)));
    }
    // Everyone holds everyone's log.
    wait("replicas", Duration::from_secs(30), || {
        dirs.iter()
            .all(|d| get(d, "/api/logs").and_then(|v| v.as_array().map(|a| a.len())) == Some(4))
    });

    // Two measured offers, a deposit, a job and a bid, all from the command line.
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
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt");
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
    // The bidder waits for both offers to reach its replicas before bidding, so the clearing
    // sees both.
    wait(
        "offers replicated to the bidder",
        Duration::from_secs(20),
        || {
            entries(&dirs[3], &keys[0], "offer").len() == 1
                && entries(&dirs[3], &keys[1], "offer").len() == 1
        },
    );
    let t = Instant::now();
    let job_id = ok(&["bid", "--dir", p(&dirs[3]), "--job", p(&job)])
        .trim()
        .to_owned();
    assert_eq!(job_id.len(), 64, "bid prints the job id: {job_id}");

    // The startup's node clears the bid, then every assignment becomes a co-signed lease.
    wait("a clearing", Duration::from_secs(20), || {
        !entries(&dirs[3], &keys[3], "clearing").is_empty()
    });
    let clearing = entries(&dirs[3], &keys[3], "clearing").remove(0);
    let assignments = clearing["entry"]["body"]["assignments"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!assignments.is_empty());
    // The cheaper provider comes first in the rule's order.
    assert_eq!(assignments[0]["provider"], keys[0].as_str(), "{clearing}");
    wait("leases", Duration::from_secs(30), || {
        entries(&dirs[3], &keys[3], "lease").len() == assignments.len()
    });
    let bid_to_lease = t.elapsed();
    println!(
        "bid to all leases co-signed: {} ms",
        bid_to_lease.as_millis()
    );
    for a in &assignments {
        let provider = a["provider"].as_str().unwrap();
        let i = keys.iter().position(|k| k == provider).unwrap();
        assert_eq!(
            entries(&dirs[i], provider, "lease").len(),
            1,
            "the provider's own copy"
        );
    }
    // Let the replicas settle, stop every node, and audit the startup's directory (its own
    // log and its replicas): the market audit reproduces the clearing and every lease.
    std::thread::sleep(Duration::from_secs(3));
    for n in nodes.drain(..) {
        let pid = n.child.id();
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let mut n = n;
        n.child.wait().unwrap();
    }
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
    assert_eq!(
        m["leases_matching"].as_u64(),
        Some(assignments.len() as u64),
        "{m}"
    );
    assert_eq!(m["findings"].as_array().unwrap().len(), 0, "{m}");
}
