//! The market and a federated job across real processes: four `leam node`s on loopback; two
//! providers publish measured offers with `leam offer`, the startup deposits and bids with
//! `leam deposit` and `leam bid`; the startup's node clears the bid by the market rule and
//! proposes the leases it implies; each provider's node re-runs the rule on its own replicas
//! before it co-signs. Then the job runs over the network: shards and replicas on the
//! providers (one falsifies its first run), receipts, the referee's bisection and verdicts,
//! evidence, settlements; after SIGTERM, `leam audit --genesis` of the startup's directory
//! reproduces the clearing and finds every record backed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::fed::{federation, start_with, tcp_addr, wait_until as wait, Running};
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
fn a_bid_is_cleared_leased_trained_verified_and_settled_over_the_network() {
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
    // a sells from the start: it measures its backend and publishes the offer itself.
    let mut nodes = vec![start_with(
        &dirs[0],
        &genesis,
        &[],
        &["--backend", "cpu", "--offer-price", "40"],
    )];
    let boot = tcp_addr(&dirs[0]);
    for (i, d) in dirs[1..].iter().enumerate() {
        // The industry partner (b) falsifies the first shard it runs.
        let extra: &[&str] = if i == 0 {
            &["--backend", "cpu", "--falsify-run", "0"]
        } else {
            &["--backend", "cpu"]
        };
        nodes.push(start_with(d, &genesis, std::slice::from_ref(&boot), extra));
    }
    // Everyone holds everyone's log.
    wait("replicas", Duration::from_secs(30), || {
        dirs.iter()
            .all(|d| keys.iter().all(|k| size(d, k).is_some()))
    });

    // Two measured offers (a's from its start, b's by `leam offer`), a deposit, a job and a bid.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt");
    let own_offer = |i: usize| -> Option<Value> {
        get(&dirs[i], "/api/offers")?["entries"]
            .as_array()?
            .iter()
            .find(|e| e["log"] == keys[i].as_str())
            .map(|e| e["entry"].clone())
    };
    let mut a_offer = Value::Null;
    wait(
        "a's offer measured at start",
        Duration::from_secs(60),
        || {
            a_offer = own_offer(0).unwrap_or(Value::Null);
            !a_offer.is_null()
        },
    );
    let measured: Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("measurement.json")).unwrap()).unwrap();
    assert_eq!(measured["backend"], "cpu", "{measured}");
    assert_eq!(
        a_offer["body"]["price_cents_per_kilo_unit"], 40,
        "{a_offer}"
    );
    assert_eq!(
        a_offer["body"]["compute_units_per_hour"], measured["units_per_hour"],
        "the offer carries what the node measured: {a_offer}"
    );
    assert_eq!(
        a_offer["body"]["memory_bytes"], measured["memory_bytes"],
        "{a_offer}"
    );
    assert!(
        measured["memory_bytes"].as_u64() > Some(1 << 20),
        "the host's available memory: {measured}"
    );
    let out = ok(&[
        "offer",
        "--dir",
        p(&dirs[1]),
        "--price",
        "55",
        "--minutes",
        "30",
    ]);
    assert!(
        out.contains("units/hour measured by the node on cpu"),
        "{out}"
    );
    // b's availability window is an RFC 3339 time, an hour from now.
    let until_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        / 1000
        + 3600)
        * 1000;
    let until = time::OffsetDateTime::from_unix_timestamp((until_ms / 1000) as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    // A new window for b's offer; its price stands.
    let out = ok(&["offer", "--dir", p(&dirs[1]), "--until", &until]);
    assert!(out.contains("55 cents per 1,000 units"), "{out}");

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
    // The startup publishes the corpus as a data pool (hash, licence, provenance).
    let sha = ok(&[
        "data",
        "add",
        "--dir",
        p(&dirs[3]),
        p(&corpus),
        "--licence",
        "LicenseRef-public-domain",
        "--source",
        "tinyshakespeare (karpathy/char-rnn)",
    ]);
    assert_eq!(sha.trim().len(), 64, "data add prints the SHA-256: {sha}");
    // The public research centre (a) funds the public pool that subsidises startups (30%).
    ok(&[
        "deposit",
        "--dir",
        p(&dirs[0]),
        "--eur-cents",
        "500000",
        "--money",
        "public",
        "--reference",
        "public funding 2026",
    ]);
    let job = root.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"tiny shakespeare\"\npreset = \"nanogpt-cpu\"\ncorpus = \"{}\"\nrounds = 2\nshards_per_round = 2\ninner_steps = 10\nreplication_percent = 50\nreferees = [\"{}\"]\ndeadline_minutes = 30\nmax_price_cents_per_kilo_unit = 60\n[model]\nn_layer = 2\nn_embd = 64\nblock_size = 32\nbatch = 8\n",
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
    // With 50% replication the job buys 4 shards + 2 replicas, and no provider may take more
    // than the 4 shards (a replica needs a second provider): the cheaper ask (40) takes 4, the
    // other (55) the 2 replicas, and 55 is the first unsold unit's price.
    wait("clearing and leases", Duration::from_secs(30), || {
        own(3) >= d0 + 5 && own(0) > a0 && own(1) > b0
    });
    println!(
        "bid to co-signed leases over the network: {} ms",
        t.elapsed().as_millis()
    );
    // The job runs: shards, replicas, receipts, the referee's verdicts, settlements.
    let progress = dirs[3].join("jobs").join(format!("{job_id}.progress.json"));
    let t = Instant::now();
    let mut last = Value::Null;
    wait("the job done", Duration::from_secs(240), || {
        last = std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let state = last["state"].as_str().unwrap_or("");
        assert!(!state.starts_with("failed"), "{last}");
        state == "done"
    });
    println!(
        "job run over the network in {} ms: {last}",
        t.elapsed().as_millis()
    );
    let rounds = last["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{last}");
    let mismatched: u64 = rounds
        .iter()
        .map(|r| r["mismatched"].as_u64().unwrap())
        .sum();
    let replicated: u64 = rounds
        .iter()
        .map(|r| r["replicated"].as_u64().unwrap())
        .sum();
    assert_eq!(replicated, 2, "{last}");
    assert_eq!(
        mismatched, 1,
        "the falsified replica differs from its primary: {last}"
    );
    let start_loss = last["val_loss_start"].as_f64().unwrap();
    let end_loss = rounds[1]["val_loss"].as_f64().unwrap();
    assert!(
        end_loss < start_loss,
        "training lowers the validation loss: {last}"
    );
    assert_eq!(last["verdicts"], serde_json::json!([5, 1]), "{last}");
    // The pool (a) pays b the subsidy share once the startup paid its 70%: b's log then holds
    // its lease, 2 receipts and 2 settlements.
    wait("the public subsidy", Duration::from_secs(30), || {
        size(&dirs[1], &keys[1]) == Some(b0 + 5)
    });
    // `leam jobs --wait` returns at once for a finished job (and names its rounds on stderr).
    let waited = leam(&["jobs", "--dir", p(&dirs[3]), "--wait", &job_id[..12]]);
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    assert!(String::from_utf8_lossy(&waited.stderr).contains("round 1:"));
    // `leam jobs` shows the same progress.
    let jobs: Value = serde_json::from_str(&ok(&["jobs", "--dir", p(&dirs[3]), "--json"])).unwrap();
    assert_eq!(jobs[0]["progress"]["state"], "done", "{jobs}");
    assert_eq!(jobs[0]["progress"]["rounds"], last["rounds"], "{jobs}");
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
    let count = |log: &[Value], kind: &str| log.iter().filter(|e| e["kind"] == kind).count();
    let kinds: Vec<&str> = bidder[d0 as usize..d0 as usize + 3]
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["job", "bid", "clearing"],
        "the bidder's new entries"
    );
    let clearing = &bidder[d0 as usize + 2]["body"];
    assert_eq!(clearing["price_cents_per_kilo_unit"], 55, "{clearing}");
    let assignments = clearing["assignments"].as_array().unwrap();
    assert_eq!(assignments.len(), 2, "{clearing}");
    assert_eq!(assignments[0]["provider"], keys[0].as_str());
    assert_eq!(assignments[0]["shards"], 4);
    assert_eq!(assignments[1]["shards"], 2);
    assert_eq!(bidder[d0 as usize + 1]["body"]["job_id"], job_id.as_str());
    assert_eq!(count(&bidder, "lease"), 2);
    assert_eq!(count(&bidder, "receipt"), 6, "4 shards and 2 replicas");
    assert_eq!(
        count(&bidder, "reveal"),
        1,
        "the seed is public after the job"
    );
    // The referee (c) judged every run; the falsified one is rejected, with evidence.
    let referee = export(&dirs[2]);
    let verdicts: Vec<&Value> = referee.iter().filter(|e| e["kind"] == "verdict").collect();
    assert_eq!(verdicts.len(), 6);
    let rejected: Vec<&&Value> = verdicts
        .iter()
        .filter(|v| v["body"]["accepted"] == false)
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["body"]["provider"], keys[1].as_str());
    let evidence: Vec<&Value> = referee.iter().filter(|e| e["kind"] == "evidence").collect();
    assert_eq!(evidence.len(), 1);
    assert_eq!(evidence[0]["body"]["accused"], keys[1].as_str());
    // Both providers are paid for what the referee accepted, the cheat for 1 of its 2 runs.
    let settlements: Vec<&Value> = bidder
        .iter()
        .filter(|e| e["kind"] == "settlement")
        .collect();
    assert_eq!(settlements.len(), 2, "{settlements:?}");
    let paid = |k: &str| {
        settlements
            .iter()
            .find(|s| s["body"]["terms"]["payee"] == k)
            .map(|s| s["body"]["terms"]["credits_cents"].as_u64().unwrap())
            .unwrap()
    };
    let (pa, pb) = (paid(&keys[0]), paid(&keys[1]));
    assert!(
        pa > 3 * pb && pa <= 4 * pb,
        "4 verified shards vs 1: {pa} vs {pb}"
    );
    // The pool's subsidy to b: 30% of what b is owed, next to the startup's 70%.
    let pool_log = export(&dirs[0]);
    let subsidy: Vec<&Value> = pool_log
        .iter()
        .filter(|e| e["kind"] == "settlement" && e["body"]["terms"]["payer"] == keys[0].as_str())
        .collect();
    assert_eq!(subsidy.len(), 1, "{subsidy:?}");
    assert_eq!(subsidy[0]["body"]["terms"]["payee"], keys[1].as_str());
    // Public and private money stay apart: the startup pays from its private deposit, the pool
    // from its public funding.
    assert_eq!(subsidy[0]["body"]["terms"]["money"], "public");
    for s in &settlements {
        assert_eq!(s["body"]["terms"]["money"], "private", "{s}");
    }
    // Both pay named receipts: b's one accepted run (its falsified replica is paid nothing).
    let to_b = settlements
        .iter()
        .find(|e| e["body"]["terms"]["payee"] == keys[1].as_str())
        .unwrap();
    let named = &to_b["body"]["terms"]["receipts"];
    assert_eq!(named.as_array().map(Vec::len), Some(1), "{to_b}");
    assert_eq!(
        &subsidy[0]["body"]["terms"]["receipts"], named,
        "{subsidy:?}"
    );
    let sb = subsidy[0]["body"]["terms"]["credits_cents"]
        .as_u64()
        .unwrap();
    let owed_b = sb + pb;
    assert_eq!(
        sb,
        owed_b * 30 / 100,
        "the pool pays the genesis rate: {sb} of {owed_b}"
    );
    // b's offer window ends at the `--until` time, to the millisecond.
    let b_offer = export(&dirs[1])
        .into_iter()
        .rfind(|e| e["kind"] == "offer")
        .unwrap();
    assert_eq!(b_offer["body"]["valid_until_ms"], until_ms, "{b_offer}");
    let provider = export(&dirs[0]);
    assert_eq!(count(&provider, "lease"), 1);
    assert_eq!(count(&provider, "receipt"), 4);

    // The audit of the bidder's directory (own log and replicas) re-runs the rule and checks
    // receipts against leases and verdicts against the job's referee.
    let out = audit_ok(&genesis, &dirs[3]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["market"];
    assert_eq!(m["clearings"], 1, "{m}");
    assert_eq!(m["clearings_reproduced"], 1, "{m}");
    assert_eq!(m["leases_matching"], 2, "{m}");
    assert_eq!(m["receipts"], 6, "{m}");
    assert_eq!(m["verdicts_counted"], 6, "{m}");
    assert_eq!(m["settlements"], 3, "{m}");
    assert_eq!(m["reveals_opening"], 1, "{m}");
    // Deterministic flags: none (the corpus is a published data pool, each drawn shard has two
    // receipts). An offer flag may appear on a loaded machine, where device time stretches.
    let flags: Vec<&Value> = m["flags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] != "offer")
        .collect();
    assert!(flags.is_empty(), "{m}");
    assert_eq!(m["findings"].as_array().unwrap().len(), 0, "{m}");
    // The audit replayed the referee's wrong-result evidence from the bidder's blobs: it holds,
    // and counts against the cheat's organisation only.
    let acc = &v["accounting"];
    assert_eq!(acc["evidence_not_counted"], serde_json::json!([]), "{acc}");
    let against = |org: &str| acc["organisations"][org]["evidence_against"].as_u64();
    assert_eq!(against(orgs[1].1), Some(1), "{acc}");
    assert_eq!(against(orgs[0].1), Some(0), "{acc}");
}

/// A provider killed with `kill -9` in the middle of a shard and restarted: the run it lost is
/// asked for again (`Unknown` → `Run`), finished runs survive in `DIR/runs/`, and the job
/// completes with one receipt per shard. The bidder names itself the referee, so its judge
/// requests are served locally and its own log holds the verdicts.
/// Three nodes on loopback: a (public, provider with an offer at 40), c (science), d
/// (startup, the bidder, with 1,000 EUR deposited), every log replicated everywhere and a's
/// offer at the bidder.
struct Three {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    genesis: PathBuf,
    dirs: Vec<PathBuf>,
    keys: Vec<String>,
    corpus: PathBuf,
    nodes: Vec<Running>,
}

fn three_nodes() -> Three {
    three_nodes_with(&[])
}

/// [`three_nodes`], with `a_args` added to a's `leam node` command line.
fn three_nodes_with(a_args: &[&str]) -> Three {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let orgs = [
        ("a", "Rechenzentrum Nord", "public"),
        ("c", "Universitaet Sued", "science"),
        ("d", "Sprachwerk GmbH", "startup"),
    ];
    let (genesis, dirs) = federation(&root, &orgs, 2);
    let keys: Vec<String> = dirs.iter().map(|d| member_key(d)).collect();
    let cpu = ["--backend", "cpu"];
    let a = start_with(&dirs[0], &genesis, &[], &[&cpu[..], a_args].concat());
    let boot = tcp_addr(&dirs[0]);
    let c = start_with(&dirs[1], &genesis, std::slice::from_ref(&boot), &cpu);
    let d = start_with(&dirs[2], &genesis, std::slice::from_ref(&boot), &cpu);
    wait("replicas", Duration::from_secs(30), || {
        dirs.iter()
            .all(|d| keys.iter().all(|k| size(d, k).is_some()))
    });
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt");
    ok(&[
        "deposit",
        "--dir",
        p(&dirs[2]),
        "--eur-cents",
        "100000",
        "--money",
        "private",
        "--reference",
        "seed round",
    ]);
    offer_to_bidder(&dirs, &keys, 0, "40");
    Three {
        _tmp: tmp,
        root,
        genesis,
        dirs,
        keys,
        corpus,
        nodes: vec![a, c, d],
    }
}

/// Bid from `bidder` for a small unreplicated job of 2 shards per round (a 2-layer, 64-wide
/// model on `corpus`, refereed by `referees` in that order, maximum price 60) with the job-file lines `lines`
/// (its name, rounds, inner steps and any extra setting); returns the job id and its progress
/// file once the job has started.
fn bid_and_start(
    root: &Path,
    bidder: &Path,
    corpus: &Path,
    referees: &[&str],
    lines: &str,
) -> (String, PathBuf) {
    let referees: Vec<String> = referees.iter().map(|k| format!("\"{k}\"")).collect();
    let job = root.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "{lines}preset = \"nanogpt-cpu\"\ncorpus = \"{}\"\nshards_per_round = 2\nreplication_percent = 0\nreferees = [{}]\ndeadline_minutes = 30\nmax_price_cents_per_kilo_unit = 60\n[model]\nn_layer = 2\nn_embd = 64\nblock_size = 32\nbatch = 8\n",
            corpus.display(),
            referees.join(", "),
        ),
    )
    .unwrap();
    let job_id = ok(&["bid", "--dir", p(bidder), "--job", p(&job)])
        .trim()
        .to_owned();
    let progress = bidder.join("jobs").join(format!("{job_id}.progress.json"));
    wait("the job started", Duration::from_secs(30), || {
        progress.exists()
    });
    (job_id, progress)
}

/// `leam audit --json --no-state --genesis G DIR`, which must pass.
fn audit_ok(genesis: &Path, dir: &Path) -> std::process::Output {
    let out = leam(&[
        "audit",
        "--json",
        "--no-state",
        "--genesis",
        p(genesis),
        p(dir),
    ]);
    assert!(
        out.status.success(),
        "audit failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// c (science) offers at 50 cents, dearer than a: the clearing leaves it spare for
/// re-clearings. Returns once the bidder (d) holds the offer.
fn c_offers_spare(dirs: &[PathBuf], keys: &[String]) {
    offer_to_bidder(dirs, keys, 1, "50");
}

/// Node `i` offers for 60 minutes at `price` (`leam offer`); returns once the bidder (d) holds
/// the offer.
fn offer_to_bidder(dirs: &[PathBuf], keys: &[String], i: usize, price: &str) {
    ok(&[
        "offer",
        "--dir",
        p(&dirs[i]),
        "--price",
        price,
        "--minutes",
        "60",
    ]);
    let n = size(&dirs[i], &keys[i]).unwrap();
    wait(
        "the offer replicated to the bidder",
        Duration::from_secs(20),
        || size(&dirs[2], &keys[i]) == Some(n),
    );
}

/// The progress of `job_id` in the bidder's `dir` once it is done, within `secs` seconds (a
/// failed job fails the test at once).
fn wait_done(dir: &Path, job_id: &str, secs: u64) -> Value {
    let mut last = Value::Null;
    wait("the job done", Duration::from_secs(secs), || {
        last = progress_of(dir, job_id);
        assert!(
            !last["state"].as_str().unwrap_or("").starts_with("failed"),
            "{last}"
        );
        last["state"] == "done"
    });
    last
}

/// The progress document of a job, if written.
fn progress_of(dir: &Path, job_id: &str) -> Value {
    std::fs::read(dir.join("jobs").join(format!("{job_id}.progress.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn a_provider_killed_mid_shard_resumes_and_the_job_completes() {
    let Three {
        root,
        genesis,
        dirs,
        keys,
        corpus,
        mut nodes,
        _tmp: _keep,
    } = three_nodes();
    let cpu = ["--backend", "cpu"];
    let mut a = nodes.remove(0);
    // The bidder is its own job's referee: its judge requests go to its own handler.
    let (_, progress) = bid_and_start(
        &root,
        &dirs[2],
        &corpus,
        &[&keys[2]],
        "name = \"long shards\"\nrounds = 1\ninner_steps = 300\n",
    );
    // In the middle of the first shard (each takes seconds): no run has finished yet.
    std::thread::sleep(Duration::from_millis(700));
    let finished = |d: &Path| std::fs::read_dir(d.join("runs")).map_or(0, |r| r.count());
    let before = finished(&dirs[0]);
    assert!(
        before < 2,
        "both runs finished before the kill: make the shards longer"
    );
    Command::new("kill")
        .args(["-KILL", &a.child.id().to_string()])
        .status()
        .unwrap();
    a.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _a = start_with(&dirs[0], &genesis, &[tcp_addr(&dirs[2])], &cpu);
    let mut last = Value::Null;
    wait(
        "the job done after the restart",
        Duration::from_secs(180),
        || {
            last = std::fs::read(&progress)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            assert!(
                !last["state"].as_str().unwrap_or("").starts_with("failed"),
                "{last}"
            );
            last["state"] == "done"
        },
    );
    assert_eq!(last["rounds"][0]["runs"], 2, "{last}");
    assert_eq!(last["rounds"][0]["merged"], 2, "{last}");
    assert_eq!(last["verdicts"], serde_json::json!([2, 0]), "{last}");
    assert_eq!(
        finished(&dirs[0]),
        2,
        "both runs are on disk after the restart"
    );
}

/// The bidder killed with `kill -9` between rounds and restarted: its node resumes the job from
/// the resume record (the outer steps replayed on the merged deltas it holds by hash),
/// the remaining rounds run, and the job settles once: one receipt per run, one settlement, one
/// reveal, and the bidder's log audits clean.
#[test]
fn a_bidder_killed_between_rounds_resumes_its_job() {
    let Three {
        root,
        genesis,
        dirs,
        keys,
        corpus,
        mut nodes,
        _tmp: _keep,
    } = three_nodes();
    let job = root.join("job.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"resumed\"\npreset = \"nanogpt-cpu\"\ncorpus = \"{}\"\nrounds = 4\nshards_per_round = 1\ninner_steps = 60\nreplication_percent = 0\nreferees = [\"{}\"]\ndeadline_minutes = 30\nmax_price_cents_per_kilo_unit = 60\n[model]\nn_layer = 2\nn_embd = 64\nblock_size = 32\nbatch = 8\n",
            corpus.display(),
            keys[1]
        ),
    )
    .unwrap();
    let job_id = ok(&["bid", "--dir", p(&dirs[2]), "--job", p(&job)])
        .trim()
        .to_owned();
    wait("the first round", Duration::from_secs(120), || {
        progress_of(&dirs[2], &job_id)["rounds"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    let mut d = nodes.pop().unwrap();
    Command::new("kill")
        .args(["-KILL", &d.child.id().to_string()])
        .status()
        .unwrap();
    d.child.wait().unwrap();
    let before = progress_of(&dirs[2], &job_id);
    let done_before = before["rounds"].as_array().unwrap().len();
    assert!(
        done_before < 4 && before["state"] == "running",
        "the job finished before the kill: make the rounds longer: {before}"
    );
    let record = dirs[2].join("jobs").join(format!("{job_id}.resume.json"));
    let resume: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(
        resume["merged"].as_array().unwrap().len(),
        done_before,
        "one merged delta per finished round: {resume}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let d = start_with(
        &dirs[2],
        &genesis,
        &[tcp_addr(&dirs[0])],
        &["--backend", "cpu"],
    );
    let last = wait_done(&dirs[2], &job_id, 240);
    let rounds = last["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 4, "{last}");
    // The rounds before the kill are kept as they were (a round still being evaluated when the
    // bidder died is evaluated after the restart, and verdicts keep arriving); the loss keeps
    // falling after it.
    for (after, before) in rounds[..done_before]
        .iter()
        .zip(before["rounds"].as_array().unwrap())
    {
        let mut before = before.clone();
        if before["val_loss"].is_null() {
            before["val_loss"] = after["val_loss"].clone();
        }
        for so_far in ["verified", "rejected"] {
            assert!(
                after[so_far].as_u64() >= before[so_far].as_u64(),
                "{after} {before}"
            );
            before[so_far] = after[so_far].clone();
        }
        assert_eq!(after, &before);
    }
    let losses: Vec<f64> = rounds
        .iter()
        .map(|r| r["val_loss"].as_f64().unwrap())
        .collect();
    assert!(losses[3] < losses[0], "{losses:?}");
    assert_eq!(last["verdicts"], serde_json::json!([4, 0]), "{last}");
    drop(d);
    drop(nodes);
    std::thread::sleep(Duration::from_millis(500));
    let bidder = export(&dirs[2]);
    let count = |kind: &str| bidder.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(count("receipt"), 4, "one receipt per run, none twice");
    assert_eq!(count("settlement"), 1);
    assert_eq!(count("reveal"), 1);
    audit_ok(&genesis, &dirs[2]);
}

/// A provider killed with `kill -9` mid-job and never restarted: after the job's shard timeout
/// the bidder's node writes a re-clearing (`specs/market.md` §3.6) that buys the shards it left
/// unfinished from the spare provider, which co-signs the lease after checking the re-clearing
/// on its own copies of the logs; the runs of this round and the next go there, the job
/// completes, the new provider is paid for its verified work, and the audit reproduces it all.
#[test]
fn a_provider_gone_for_good_is_replaced_by_a_reclearing() {
    let Three {
        root,
        genesis,
        dirs,
        keys,
        corpus,
        mut nodes,
        _tmp: _keep,
    } = three_nodes();
    c_offers_spare(&dirs, &keys);
    let mut a = nodes.remove(0);
    // The job names a its first referee: a never judges its own shards, and once it is gone the
    // bidder fails over to the second, itself, for c's.
    let (job_id, _) = bid_and_start(
        &root,
        &dirs[2],
        &corpus,
        &[&keys[0], &keys[2]],
        "name = \"a provider leaves\"\nrounds = 2\ninner_steps = 150\nshard_timeout_seconds = 3\n",
    );
    let jobs: Value = serde_json::from_str(&ok(&["jobs", "--dir", p(&dirs[2]), "--json"])).unwrap();
    let parts: Vec<&str> = jobs[0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["provider"].as_str().unwrap())
        .collect();
    assert_eq!(parts, vec![keys[0].as_str()], "a takes every shard: {jobs}");
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .args(["-KILL", &a.child.id().to_string()])
        .status()
        .unwrap();
    a.child.wait().unwrap();
    let last = wait_done(&dirs[2], &job_id, 240);
    println!("{last}");
    assert_eq!(last["rounds"].as_array().unwrap().len(), 2, "{last}");
    for r in last["rounds"].as_array().unwrap() {
        assert_eq!(r["merged"], 2, "{last}");
    }
    let rc = &last["reclearings"];
    assert_eq!(rc.as_array().map(Vec::len), Some(1), "{last}");
    assert_eq!(rc[0]["replaces"], serde_json::json!([keys[0]]), "{last}");
    let taken = rc[0]["providers"][&keys[1]].as_u64().unwrap_or(0);
    assert!(taken >= 1, "c takes a's unfinished shards: {last}");
    assert_eq!(rc[0]["price_cents_per_kilo_unit"], 50, "{last}");
    // `leam jobs` lists c's part, leased.
    let jobs: Value = serde_json::from_str(&ok(&["jobs", "--dir", p(&dirs[2]), "--json"])).unwrap();
    assert_eq!(jobs[0]["parts"][1]["provider"], keys[1], "{jobs}");
    assert_eq!(jobs[0]["parts"][1]["leased"], true, "{jobs}");
    std::thread::sleep(Duration::from_secs(2));
    for n in nodes.drain(..) {
        Command::new("kill")
            .args(["-TERM", &n.child.id().to_string()])
            .status()
            .unwrap();
        let mut n = n;
        n.child.wait().unwrap();
    }
    // The bidder's log: the re-clearing, c's lease and c's receipts; c is paid.
    let bidder = export(&dirs[2]);
    let count = |kind: &str, provider: &str| {
        bidder
            .iter()
            .filter(|e| {
                e["kind"] == kind
                    && (e["body"]["terms"]["provider"] == provider
                        || e["body"]["terms"]["payee"] == provider)
            })
            .count()
    };
    assert_eq!(
        bidder.iter().filter(|e| e["kind"] == "reclearing").count(),
        1
    );
    assert_eq!(count("lease", &keys[1]), 1);
    assert!(count("receipt", &keys[1]) as u64 >= taken.min(4));
    assert_eq!(count("settlement", &keys[1]), 1);
    // Every run of c was judged, by the second referee (the first was dead).
    let judged = bidder
        .iter()
        .filter(|e| e["kind"] == "verdict" && e["body"]["provider"] == keys[1].as_str())
        .count();
    assert!(
        judged as u64 >= taken.min(4),
        "{judged} verdicts on c's runs"
    );
    let out = audit_ok(&genesis, &dirs[2]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &v["market"];
    assert_eq!(m["reclearings"], 1, "{m}");
    assert_eq!(m["reclearings_reproduced"], 1, "{m}");
    assert_eq!(m["findings"], serde_json::json!([]), "{m}");
    assert_eq!(m["leases"], m["leases_matching"], "{m}");
}

/// A lazy provider (a, `--lazy-run 1`) hands back its first run's result for its second shard,
/// computing nothing. The bidder receipts what a co-signs and has it judged: the referee (c,
/// neither party) rejects it with wrong-result evidence that the audit re-checks and counts.
/// a gets no more runs of the job, and since its rejected run delivered nothing, the shard is
/// bought again from c (re-clearing), whose run the job's second referee (the bidder) judges.
/// a is paid for its honest run only.
#[test]
fn a_lazy_provider_replaying_an_old_result_is_caught_recorded_and_not_paid() {
    let Three {
        root,
        genesis,
        dirs,
        keys,
        corpus,
        nodes,
        _tmp: _keep,
    } = three_nodes_with(&["--lazy-run", "1"]);
    c_offers_spare(&dirs, &keys);
    let (job_id, _) = bid_and_start(
        &root,
        &dirs[2],
        &corpus,
        &[&keys[1], &keys[2]],
        "name = \"a lazy provider\"\nrounds = 1\ninner_steps = 20\n",
    );
    let last = wait_done(&dirs[2], &job_id, 180);
    assert_eq!(last["rounds"][0]["merged"], 2, "{last}");
    assert_eq!(last["verdicts"], serde_json::json!([2, 1]), "{last}");
    assert_eq!(
        last["reclearings"][0]["replaces"],
        serde_json::json!([keys[0]]),
        "{last}"
    );
    std::thread::sleep(Duration::from_secs(1));
    drop(nodes);
    std::thread::sleep(Duration::from_millis(500));
    // The referees' logs (c's, or the bidder's where c had not yet seen the job): one
    // rejection, of a's lazy run, and the evidence against a.
    let mut referees = export(&dirs[1]);
    referees.extend(export(&dirs[2]));
    let rejected: Vec<&Value> = referees
        .iter()
        .filter(|e| e["kind"] == "verdict" && e["body"]["accepted"] == false)
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["body"]["provider"], keys[0].as_str());
    let evidence: Vec<&Value> = referees
        .iter()
        .filter(|e| e["kind"] == "evidence")
        .collect();
    assert_eq!(evidence.len(), 1);
    assert_eq!(evidence[0]["body"]["accused"], keys[0].as_str());
    // The bidder: a's honest and lazy receipts, c's; a is paid for one receipt, c for one.
    let bidder = export(&dirs[2]);
    let receipts_of = |k: &str| {
        bidder
            .iter()
            .filter(|e| e["kind"] == "receipt" && e["body"]["terms"]["provider"] == k)
            .count()
    };
    assert_eq!((receipts_of(&keys[0]), receipts_of(&keys[1])), (2, 1));
    for k in [&keys[0], &keys[1]] {
        let paid: Vec<&Value> = bidder
            .iter()
            .filter(|e| e["kind"] == "settlement" && e["body"]["terms"]["payee"] == k.as_str())
            .collect();
        assert_eq!(paid.len(), 1, "{paid:?}");
        assert_eq!(
            paid[0]["body"]["terms"]["receipts"]
                .as_array()
                .map(Vec::len),
            Some(1),
            "one accepted run each; the lazy one is not paid: {:?}",
            paid[0]
        );
    }
    // The audit (over c's directory, which holds every log) reproduces the re-clearing,
    // re-checks the evidence and counts it against a.
    let out = audit_ok(&genesis, &dirs[1]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let orgs = &v["accounting"]["organisations"];
    assert_eq!(orgs["Rechenzentrum Nord"]["evidence_against"], 1, "{orgs}");
    assert_eq!(
        v["accounting"]["evidence_not_counted"],
        serde_json::json!([]),
        "{v}"
    );
    let m = &v["market"];
    assert_eq!(m["findings"], serde_json::json!([]), "{m}");
    assert_eq!(m["reclearings_reproduced"], 1, "{m}");
}
