//! The web app over a real federation built with the ledger's public API in a temporary
//! directory, driven through `tower::ServiceExt::oneshot` (no sockets): every route, every
//! refused write, random requests, and an independent tlog-tiles reader.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body as HttpBody;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use ed25519_dalek::{Signature, SigningKey, Verifier as _, VerifyingKey};
use http_body_util::BodyExt as _;
use leam_ledger::account::Membership;
use leam_ledger::audit::{audit_dirs, AuditOptions};
use leam_ledger::checkpoint::Cosigner;
use leam_ledger::entry::*;
use leam_ledger::genesis::{Founder, Genesis};
use leam_ledger::identity::Identity;
use leam_ledger::log::Log;
use leam_ledger::merkle;
use leam_ledger::note::Note;
use leam_web::dir::DirView;
use leam_web::{app, Accepted, AppState, Submit};
use sha2::{Digest as _, Sha256};
use tower::ServiceExt as _;

const T0: u64 = 1_767_225_600_000;
const TOKEN: &str = "0123456789abcdef-control-token";
/// Offers appended to A, so that A has more than 256 entries (level-1 tiles exist).
const A_OFFERS: u64 = 300;

fn member(org: &str, sector: Sector) -> Membership {
    Membership {
        organisation: org.into(),
        sector,
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}
fn pk(seed: u8) -> PublicKey {
    key(seed).verifying_key().to_bytes()
}

struct Fed {
    _tmp: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    genesis: Genesis,
}

fn offer(i: u64) -> Body {
    Body::Offer(Offer {
        offer_id: i,
        device_fingerprint: [7; 32],
        compute_units_per_hour: 1000 + i,
        memory_bytes: 1 << 30,
        price_cents_per_kilo_unit: 3 + i % 5,
        valid_until_ms: T0 + 10_000_000,
    })
}

/// A (science) and B (startup) are the genesis founders. B deposits public money, bids, leases
/// compute from A, A computes a shard that B accepts, B pays; a second shard is rejected and B
/// files evidence; B witnesses A's checkpoint.
fn federation() -> Fed {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = Log::create(
        &a_dir,
        Identity::from_seed(&[1; 32]),
        &member("Forschungszentrum A", Sector::Science),
        T0,
    )
    .unwrap();
    let mut b = Log::create(
        &b_dir,
        Identity::from_seed(&[2; 32]),
        &member("Startup B", Sector::Startup),
        T0,
    )
    .unwrap();
    let (ak, bk) = (key(1), key(2));
    let (apk, bpk) = (pk(1), pk(2));
    // The job names B as its referee, so B's verdicts count (specs/ledger.md §6.3).
    let job_entry = leam_ledger::entry::Job {
        description: format!("leam-job/v1\nname web test\nreferee {}\n", hex::encode(bpk))
            .into_bytes(),
    };
    let job = job_entry.id();
    let lease = LeaseTerms {
        job_id: job,
        bidder: bpk,
        provider: apk,
        offer_id: 1,
        compute_units: 2_000,
        price_cents: 2_500,
        expires_ms: T0 + 3_600_000,
    };
    let receipt = |shard: u32, out: u8| ReceiptTerms {
        job_id: job,
        shard,
        bidder: bpk,
        provider: apk,
        lease: [0x44; 32],
        input_commitment: [1; 32],
        output_commitment: [out; 32],
        compute_units: 1_000,
        gpu_ms: 42_000,
        device_fingerprint: [3; 32],
    };
    let settle = SettlementTerms {
        job_id: job,
        payer: bpk,
        payee: apk,
        credits_cents: 2_500,
        money: Money::Public,
        receipts: vec![],
    };
    let admit = |pk, org: &str, sector| {
        Body::Admission(Admission {
            organisation: org.into(),
            sector,
            member: pk,
        })
    };
    let verdict = |shard, out: u8, accepted| {
        Body::Verdict(Verdict {
            job_id: job,
            shard,
            provider: apk,
            output_commitment: [out; 32],
            accepted,
        })
    };
    let b_entries = vec![
        admit(apk, "Forschungszentrum A", Sector::Science),
        Body::Deposit(Deposit {
            member: bpk,
            eur_cents: 10_000,
            money: Money::Public,
            reference: "EXIST grant 2026/17".into(),
        }),
        Body::Bid(Bid {
            job_id: job,
            compute_units: 2_000,
            max_price_cents_per_kilo_unit: 5,
            deadline_ms: T0 + 7_200_000,
        }),
        Body::Bid(Bid {
            job_id: [0x43; 32],
            compute_units: 500,
            max_price_cents_per_kilo_unit: 1,
            deadline_ms: T0 + 7_200_000,
        }),
        Body::Lease(lease.clone().cosign(&ak)),
        Body::Receipt(receipt(0, 2).cosign(&ak)),
        verdict(0, 2, true),
        Body::Receipt(receipt(1, 9).cosign(&ak)),
        verdict(1, 9, false),
        Body::Evidence(Evidence {
            accused: apk,
            kind: EvidenceKind::WrongShardResult,
            bytes: b"shard 1 of job 42: referee replay differs at step 17".to_vec(),
        }),
        Body::Settlement(settle.clone().cosign(&ak)),
        Body::Job(job_entry),
    ];
    let mut a_entries = vec![
        admit(bpk, "Startup B", Sector::Startup),
        Body::Lease(lease.cosign(&bk)),
        Body::Receipt(receipt(0, 2).cosign(&bk)),
        Body::Settlement(settle.cosign(&bk)),
    ];
    a_entries.extend((0..A_OFFERS).map(offer));
    let batch = |log: &Log, bodies: Vec<Body>| -> Vec<Entry> {
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| log.sign_next(i as u64, T0 + 1_000, body))
            .collect()
    };
    let eb = batch(&b, b_entries);
    b.append_batch(eb).unwrap();
    let ea = batch(&a, a_entries);
    a.append_batch(ea).unwrap();
    // B witnesses A's checkpoint under its federation witness name.
    let witness = Cosigner::new(&leam_web::witness_name(&bpk), key(2)).unwrap();
    let text = Note::parse(a.checkpoint()).unwrap().text;
    let line = witness.cosign(&text, 1_790_000_000).unwrap().line();
    a.add_cosignature(&line, witness.verifier()).unwrap();
    let genesis = Genesis::new(
        20,
        1,
        vec![
            Founder {
                organisation: "Forschungszentrum A".into(),
                sector: Sector::Science,
                key: apk,
            },
            Founder {
                organisation: "Startup B".into(),
                sector: Sector::Startup,
                key: bpk,
            },
        ],
    )
    .unwrap();
    drop((a, b));
    Fed {
        _tmp: tmp,
        dirs: vec![a_dir, b_dir],
        genesis,
    }
}

#[derive(Default)]
struct MockSubmit {
    got: Mutex<Vec<Entry>>,
}

impl Submit for MockSubmit {
    fn submit(
        &self,
        entry: Entry,
        bytes: Vec<u8>,
    ) -> futures::future::BoxFuture<'static, Result<Accepted, String>> {
        assert_eq!(entry.encode(), bytes);
        let res = if entry.seq == 999 {
            Err(format!("entry {}: expected seq 12", entry.seq))
        } else {
            Ok(Accepted {
                log: hex::encode(entry.author),
                index: entry.seq,
            })
        };
        self.got.lock().unwrap().push(entry);
        Box::pin(async move { res })
    }
}

async fn send(
    app: &Router,
    req: Request<HttpBody>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, body)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    send(app, Request::get(uri).body(HttpBody::empty()).unwrap()).await
}

async fn get_json(app: &Router, uri: &str) -> serde_json::Value {
    let (status, h, body) = get(app, uri).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{uri}: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{uri}"
    );
    serde_json::from_slice(&body).unwrap()
}

fn read_only(fed: &Fed) -> Router {
    let view = DirView::open(&fed.dirs, Some(fed.genesis.clone()), None).unwrap();
    app(AppState::new(Arc::new(view)))
}

#[tokio::test]
async fn every_read_route_answers_with_the_ledger_figures() {
    let fed = federation();
    let witnesses = vec![
        leam_web::witness_vkey(&pk(2)).unwrap(),
        leam_web::witness_vkey(&pk(1)).unwrap(),
    ];
    let audit = audit_dirs(
        &fed.dirs,
        &AuditOptions {
            evidence: None,
            state: None,
            witnesses,
            genesis: Some(fed.genesis.clone()),
        },
    )
    .unwrap();
    let app = read_only(&fed);
    let (apk, bpk) = (hex::encode(pk(1)), hex::encode(pk(2)));

    // The report is the audit's accounting, and its figures are the trades above.
    let report = get_json(&app, "/api/report").await;
    assert_eq!(report, serde_json::to_value(&audit.accounting).unwrap());
    let a = &report["organisations"]["Forschungszentrum A"];
    assert_eq!(a["compute_contributed_units"], 1_000);
    assert_eq!(a["compute_rejected_units"], 1_000);
    assert_eq!(a["credit_balance_cents"], 2_500);
    assert_eq!(
        a["credit_public_cents"], 2_500,
        "paid from B's public grant"
    );
    // The referee's evidence is free text, not a checkable wrong-result document: listed, not
    // counted.
    assert_eq!(a["evidence_against"], 0);
    let nc = &report["evidence_not_counted"];
    assert_eq!(nc.as_array().unwrap().len(), 1, "{nc}");
    assert_eq!(nc[0]["accused"], hex::encode(pk(1)));
    assert_eq!(nc[0]["evidence_kind"], "wrong_shard_result");
    let b = &report["organisations"]["Startup B"];
    assert_eq!(b["compute_consumed_units"], 1_000);
    assert_eq!(b["funding_public_eur_cents"], 10_000);
    assert_eq!(b["credit_balance_cents"], 7_500);
    assert_eq!(
        report["sectors"]["science"]["compute_contributed_gpu_ms"],
        42_000
    );

    let (status, h, csv) = get(&app, "/api/report.csv").await;
    assert_eq!(status, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = String::from_utf8(csv).unwrap();
    assert!(
        csv.starts_with("scope,name,sector,compute_contributed_units,"),
        "{csv}"
    );
    assert!(
        csv.contains(
            "organisation,Forschungszentrum A,science,1000,42000,0,0,0,1000,2500,2500,0,0,0,0\r\n"
        ),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 2 + 4);

    let fedj = get_json(&app, "/api/federation").await;
    assert_eq!(fedj["genesis"]["subsidy_percent"], 20);
    assert_eq!(fedj["genesis"]["id"], hex::encode(fed.genesis.id()));
    let members = fedj["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert!(members.iter().any(|m| m["key"] == apk
        && m["organisation"] == "Forschungszentrum A"
        && m["sector"] == "science"
        && m["founder"] == true));

    let logs = get_json(&app, "/api/logs").await;
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 2);
    let la = logs.iter().find(|l| l["key"] == apk).unwrap();
    assert_eq!(la["size"], 1 + 4 + A_OFFERS);
    assert_eq!(la["origin"], format!("leam.ledger/{apk}"));
    let cos = la["cosigners"].as_array().unwrap();
    assert_eq!(cos.len(), 1);
    assert_eq!(cos[0]["organisation"], "Startup B");
    assert_eq!(cos[0]["verified"], true);
    assert_eq!(cos[0]["timestamp"], 1_790_000_000u64);

    let cp = get_json(&app, &format!("/api/logs/{apk}/checkpoint")).await;
    assert_eq!(cp["size"], la["size"]);
    assert_eq!(cp["checkpoint"], la["checkpoint"]);

    // Entries: paging and filters.
    let page = get_json(&app, &format!("/api/logs/{bpk}/entries?start=1&limit=3")).await;
    let es = page["entries"].as_array().unwrap();
    assert_eq!(es.len(), 3);
    assert_eq!(es[0]["index"], 1);
    assert_eq!(es[0]["kind"], "admission");
    assert_eq!(es[1]["entry"]["body"]["eur_cents"], 10_000);
    assert_eq!(page["next"], 4);
    let bids = get_json(&app, &format!("/api/logs/{bpk}/entries?kind=bid")).await;
    assert_eq!(bids["entries"].as_array().unwrap().len(), 2);
    assert_eq!(bids["next"], serde_json::Value::Null);
    let by_org = get_json(
        &app,
        &format!("/api/logs/{apk}/entries?organisation=Startup%20B&limit=500"),
    )
    .await;
    // A's entries that involve B: the admission of B and the three co-signed facts.
    assert_eq!(by_org["entries"].as_array().unwrap().len(), 4);

    // Kind lists over all logs; co-signed facts once.
    let offers = get_json(&app, "/api/offers?limit=500").await;
    assert_eq!(offers["entries"].as_array().unwrap().len() as u64, A_OFFERS);
    assert_eq!(offers["complete"], true);
    let leases = get_json(&app, "/api/leases").await;
    assert_eq!(leases["entries"].as_array().unwrap().len(), 1);
    assert_eq!(
        get_json(&app, "/api/bids").await["entries"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let ev = get_json(&app, "/api/evidence").await;
    assert_eq!(
        ev["entries"][0]["entry"]["body"]["evidence_kind"],
        "wrong_shard_result"
    );
    assert_eq!(get_json(&app, "/api/peers").await, serde_json::json!([]));

    // Proofs verify with the ledger's own checkers against the served checkpoint root.
    let size: u64 = la["size"].as_u64().unwrap();
    let root = hex32(la["root"].as_str().unwrap());
    let inc = get_json(
        &app,
        &format!("/api/logs/{apk}/proof/inclusion?index=7&size={size}"),
    )
    .await;
    let proof: Vec<[u8; 32]> = inc["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex32(h.as_str().unwrap()))
        .collect();
    merkle::check_record(
        &proof,
        size,
        &root,
        7,
        &hex32(inc["leaf_hash"].as_str().unwrap()),
    )
    .unwrap();
    let con = get_json(&app, &format!("/api/logs/{apk}/proof/consistency?from=5")).await;
    let proof: Vec<[u8; 32]> = con["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hex32(h.as_str().unwrap()))
        .collect();
    merkle::check_tree(
        &proof,
        size,
        &root,
        5,
        &hex32(con["from_root"].as_str().unwrap()),
    )
    .unwrap();

    // OpenAPI lists every API route.
    let api = get_json(&app, "/api/openapi.json").await;
    assert!(api["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/federation",
        "/api/logs",
        "/api/logs/{key}/entries",
        "/api/logs/{key}/checkpoint",
        "/api/logs/{key}/proof/inclusion",
        "/api/logs/{key}/proof/consistency",
        "/api/offers",
        "/api/bids",
        "/api/leases",
        "/api/evidence",
        "/api/peers",
        "/api/report",
        "/api/report.csv",
        "/api/jobs/progress",
        "/api/deposits",
        "/api/admissions",
        "/api/data",
        "/api/data-pools",
    ] {
        assert!(
            api["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(api["paths"]["/api/bids"].get("post").is_some());

    // Metrics.
    let (status, h, text) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(&format!(
            "leam_log_entries{{log=\"{apk}\",own=\"false\"}} {size}"
        )),
        "{text}"
    );
    assert!(
        text.contains("leam_entries_by_kind{kind=\"offer\"} 300"),
        "{text}"
    );
    assert!(text.contains("leam_peers 0"), "{text}");
    assert!(
        text.contains("leam_http_requests_total{route=\"/api/report\",status=\"200\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn pages_show_the_report_figures_and_why_bids_are_not_served() {
    let fed = federation();
    let app = read_only(&fed);
    let report = get_json(&app, "/api/report").await;
    let (s, h, body) = get(&app, "/report").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let html = String::from_utf8(body).unwrap();
    // Every organisation figure on the page equals the API's.
    for (org, o) in report["organisations"].as_object().unwrap() {
        for field in [
            "compute_contributed_units",
            "compute_unverified_units",
            "compute_rejected_units",
            "compute_consumed_units",
            "funding_public_eur_cents",
            "credit_balance_cents",
            "credit_public_cents",
            "credit_private_cents",
            "evidence_against",
        ] {
            let needle = format!(
                "data-org=\"{org}\" data-field=\"{field}\" data-value=\"{}\"",
                o[field]
            );
            assert!(html.contains(&needle), "{needle}");
        }
    }
    assert!(html.contains("data-field=\"settled_cents\" data-value=\"2500\""));
    // The page says which accusation does not count, and why.
    assert!(
        html.contains("data-counted=\"false\"") && html.contains("needs a shard replay"),
        "{html}"
    );
    assert!(html.contains("<svg class=\"chart\" id=\"contributed\""));
    assert!(html.contains("href=\"/api/report.csv\""));
    assert!(html.contains("subsidy rate at 20 %"));
    // The only settlement is paid by the job's bidder: no subsidy paid, all public money left.
    assert!(html.contains("data-field=\"subsidy_paid_cents\" data-value=\"0\""));
    assert!(html.contains("data-field=\"subsidy_remaining_cents\" data-value=\"10000\""));
    // Deterministic: the same ledger renders the same page.
    assert_eq!(get(&app, "/report").await.2, html.into_bytes());

    let (_, _, market) = get(&app, "/market").await;
    let market = String::from_utf8(market).unwrap();
    assert!(
        market.contains("served: 2,000 of 2,000 units leased"),
        "{market}"
    );
    assert!(market.contains("not served: no offer at or below its max price of €0.01 per 1,000 units (cheapest valid offer: €0.03)"), "{market}");

    let (_, _, home) = get(&app, "/").await;
    let home = String::from_utf8(home).unwrap();
    assert!(home.contains("Forschungszentrum A") && home.contains("Startup B"));
    assert!(
        home.contains("Startup B ✓"),
        "B's witness cosignature on A's log is shown verified"
    );
    let (s, _, ledger) = get(&app, &format!("/ledger?log={}", hex::encode(pk(2)))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8(ledger)
        .unwrap()
        .contains("deposits €100.00 of public money, reference EXIST grant 2026/17"));
    let (s, h, css) = get(&app, leam_web::pages::CSS_PATH).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        h[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert!(!css.is_empty());
}

/// A progress document as a bidder's node writes it (`leam-jobs`' `bidder::Progress`): B's job
/// with three rounds (the second merged nothing, so has no loss), run by A and a non-member.
fn progress_doc(job: &str) -> serde_json::Value {
    serde_json::json!({
        "job": job,
        "state": "settling",
        "val_loss_start": 4.1725,
        "rounds": [
            { "round": 0, "shards": 4, "runs": 6, "replicated": 2, "mismatched": 1, "merged": 4,
              "released": 1, "verified": 5, "rejected": 1, "val_loss": 3.25, "wall_ms": 12_345 },
            { "round": 1, "shards": 4, "runs": 5, "replicated": 1, "mismatched": 0, "merged": 0,
              "released": 3, "verified": 5, "rejected": 0, "val_loss": null, "wall_ms": 60_000 },
            { "round": 2, "shards": 4, "runs": 6, "replicated": 2, "mismatched": 0, "merged": 4,
              "released": 0, "verified": 6, "rejected": 0, "val_loss": 2.5, "wall_ms": 9_000 }
        ],
        "device_ms": { hex::encode(pk(1)): 84_000, hex::encode(pk(9)): 1_500 },
        "primary_units": 12_000,
        "replica_units": 5_000,
        "bytes_per_worker_round": 2_097_152,
        "delta_bytes_fetched": 8_388_608,
        "params_bytes_served": 8_388_608,
        "worker_rounds": 8,
        "data_parallel_bytes_per_worker_round": 209_715_200,
        "wall_ms": 81_345,
        "paid_cents": { hex::encode(pk(1)): 2_500 },
        "verdicts": [16, 1],
        "reclearings": [{
            "replaces": [hex::encode(pk(9))],
            "shards": 3,
            "providers": { hex::encode(pk(1)): 3 },
            "price_cents_per_kilo_unit": 55
        }]
    })
}

#[tokio::test]
async fn jobs_progress_is_served_and_shown_and_bad_files_are_skipped() {
    let fed = federation();
    let app = read_only(&fed);
    // No jobs folder: an empty list and a page that says so.
    assert_eq!(
        get_json(&app, "/api/jobs/progress").await,
        serde_json::json!([])
    );
    let (s, _, empty) = get(&app, "/jobs").await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8(empty)
        .unwrap()
        .contains("No job progress is held here"));

    // The served directory of the bidder B gets a progress file, and beside it files that are
    // not progress documents: each is skipped, none fails the request.
    let jobs = fed.dirs[1].join(leam_web::progress::JOBS_DIR_NAME);
    std::fs::create_dir_all(&jobs).unwrap();
    let job = hex::encode([0x4a; 32]);
    let doc = progress_doc(&job);
    let file = |id: &str| jobs.join(format!("{id}{}", leam_web::progress::PROGRESS_SUFFIX));
    std::fs::write(file(&job), serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let malformed = hex::encode([0x4b; 32]);
    std::fs::write(
        file(&malformed),
        format!("{{\"job\":\"{malformed}\",\"state\":"),
    )
    .unwrap();
    let oversized = hex::encode([0x4c; 32]);
    let mut big = serde_json::to_vec(&progress_doc(&oversized)).unwrap();
    big.resize(
        leam_web::progress::PROGRESS_FILE_BYTES_MAX as usize + 1,
        b' ',
    );
    std::fs::write(file(&oversized), big).unwrap();
    let other_job = hex::encode([0x4d; 32]);
    std::fs::write(
        file(&other_job),
        serde_json::to_vec(&progress_doc(&job)).unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(file(&hex::encode([0x4e; 32]))).unwrap();
    std::fs::write(jobs.join(format!("{job}.seed")), [7u8; 32]).unwrap();

    let got = get_json(&app, "/api/jobs/progress").await;
    assert_eq!(
        got,
        serde_json::json!([doc]),
        "only the well-formed document"
    );

    let (s, h, body) = get(&app, "/jobs").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let html = String::from_utf8(body).unwrap();
    assert!(html.contains(&job), "the job id is shown");
    for id in [&malformed, &oversized, &other_job] {
        assert!(!html.contains(id.as_str()), "{id} is skipped");
    }
    assert!(html.contains("<a href=\"/jobs\" aria-current=\"page\">Jobs</a>"));
    // The loss chart: an accessible SVG whose line breaks at the round without a loss.
    assert!(html.contains("<svg class=\"chart\" id=\"loss-0\" role=\"img\" aria-label=\"Validation loss of job 4a4a4a4a4a4a, lower is better: 4.173 at the start, 2.500 after round 2; lowest 2.500.\""), "{html}");
    assert_eq!(html.matches("<polyline ").count(), 1, "{html}");
    assert_eq!(html.matches("<circle ").count(), 3, "{html}");
    assert!(html.contains(">start</text>"));
    assert!(
        html.contains(">2.5</text>") && html.contains(">4.5</text>"),
        "round loss labels"
    );
    // One row per round, each figure with its exact value.
    for (round, field, value) in [
        (0, "runs", "6"),
        (0, "replicated", "2"),
        (0, "mismatched", "1"),
        (0, "merged", "4"),
        (0, "released", "1"),
        (0, "verified", "5"),
        (0, "rejected", "1"),
        (0, "val_loss", "3.25"),
        (0, "wall_ms", "12345"),
        (1, "released", "3"),
        (2, "val_loss", "2.5"),
    ] {
        let needle = format!(
            "data-job=\"{job}\" data-round=\"{round}\" data-field=\"{field}\" data-value=\"{value}\""
        );
        assert!(html.contains(&needle), "{needle}");
    }
    assert_eq!(html.matches("<tr data-job=").count(), 3, "three round rows");
    assert!(html.contains("<th scope=\"row\">1</th>"));
    assert!(html.contains("<td class=\"num\">nothing merged</td>"));
    assert!(html.contains("<caption>Rounds of job 4a4a4a4a4a4a…"));
    for (field, value) in [
        ("verdicts_accepted", "16"),
        ("verdicts_rejected", "1"),
        ("bytes_per_worker_round", "2097152"),
        ("data_parallel_bytes_per_worker_round", "209715200"),
        ("paid_cents_total", "2500"),
        ("device_ms_total", "85500"),
    ] {
        let needle = format!("data-job=\"{job}\" data-field=\"{field}\" data-value=\"{value}\"");
        assert!(html.contains(&needle), "{needle}");
    }
    assert!(html.contains("16 accepted") && html.contains("1 rejected"));
    assert!(html.contains("100.0 times as much"), "{html}");
    // Providers by organisation where the federation knows them.
    assert!(html.contains("<th scope=\"row\">Forschungszentrum A</th>"));
    assert!(html.contains(&format!(
        "<th scope=\"row\">non-member {}</th>",
        hex::encode(&pk(9)[..8])
    )));
    // The provider that left, and who took its unfinished shards at what price.
    assert!(
        html.contains(&format!(
            "data-job=\"{job}\" data-field=\"reclearing_shards\" data-value=\"3\""
        )),
        "{html}"
    );
    assert!(html.contains(&format!(
        "Provider(s) non-member {} left the job",
        hex::encode(&pk(9)[..8])
    )));
    assert!(html.contains("from Forschungszentrum A (3)"), "{html}");
    assert!(html.contains("settling: every round is computed"));
    // What mismatched and re-leased mean, for a reader who never saw leam.
    assert!(html.contains("<dt>Mismatched</dt>") && html.contains("<dt>Re-leased</dt>"));
    // Deterministic: the same files render the same page.
    assert_eq!(get(&app, "/jobs").await.2, html.into_bytes());
}

fn hex32(s: &str) -> [u8; 32] {
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).unwrap();
    h
}

#[tokio::test]
async fn bad_reads_get_precise_4xx_json_errors() {
    let fed = federation();
    let app = read_only(&fed);
    let apk = hex::encode(pk(1));
    for (uri, status, needle) in [
        (
            "/api/logs/zz/entries".to_owned(),
            400,
            "expected 64 hex digits",
        ),
        (
            format!("/api/logs/{}/entries", "ab".repeat(32)),
            404,
            "no log with key",
        ),
        (
            format!("/api/logs/{apk}/entries?limit=501"),
            400,
            "limit: expected 1..=500, found 501",
        ),
        (
            format!("/api/logs/{apk}/entries?kind=banana"),
            400,
            "kind: expected one of",
        ),
        (format!("/api/logs/{apk}/entries?start=-1"), 400, "query"),
        (
            format!("/api/logs/{apk}/proof/inclusion?index=9999"),
            400,
            "expected index < size",
        ),
        (
            format!("/api/logs/{apk}/proof/consistency?from=0"),
            400,
            "1 <= from",
        ),
        ("/nope".to_owned(), 404, "no route for /nope"),
        (
            format!("/tlog/{apk}/tile/0/1"),
            404,
            "each group is exactly three digits",
        ),
        (format!("/tlog/{apk}/tile/0/009"), 404, "is not full"),
    ] {
        let (s, h, body) = get(&app, &uri).await;
        assert_eq!(
            s.as_u16(),
            status,
            "{uri}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(h[header::CONTENT_TYPE], "application/json", "{uri}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{uri}: {v}");
        assert_eq!(v["status"], status);
    }
    let (s, _, body) = send(
        &app,
        Request::delete("/api/report")
            .body(HttpBody::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("not allowed"), "{v}");
}

fn post(uri: &str, token: Option<&str>, body: impl Into<HttpBody>) -> Request<HttpBody> {
    let mut r = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    r.body(body.into()).unwrap()
}

fn entry_json(e: &Entry) -> String {
    serde_json::json!({ "entry_hex": hex::encode(e.encode()) }).to_string()
}

fn bid_by(seed: u8, seq: u64) -> Entry {
    Entry::sign(
        &key(seed),
        seq,
        T0 + 5_000,
        Body::Bid(Bid {
            job_id: [0x44; 32],
            compute_units: 100,
            max_price_cents_per_kilo_unit: 4,
            deadline_ms: T0 + 9_000_000,
        }),
    )
}

/// (what, route, token, body, status, words the error must contain).
type WriteCase<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);

#[tokio::test]
async fn writes_are_checked_before_the_node_sees_them() {
    let fed = federation();
    let view = Arc::new(DirView::open(&fed.dirs, Some(fed.genesis.clone()), None).unwrap());
    let submit = Arc::new(MockSubmit::default());
    let app = app(AppState::new(view).with_writes(TOKEN.into(), submit.clone()));

    // Accepted: a member's signed bid, hex or base64.
    let good = bid_by(2, 11);
    let (s, _, body) = send(&app, post("/api/bids", Some(TOKEN), entry_json(&good))).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({ "log": hex::encode(pk(2)), "index": 11 })
    );
    let b64 = serde_json::json!({ "entry_base64": base64::engine::general_purpose::STANDARD.encode(good.encode()) });
    let (s, _, _) = send(&app, post("/api/bids", Some(TOKEN), b64.to_string())).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(submit.got.lock().unwrap().len(), 2);

    let mut bad_sig = bid_by(2, 11);
    bad_sig.signature[3] ^= 1;
    let mut wrong_key = bid_by(9, 11);
    wrong_key.author = pk(2);
    let offer = Entry::sign(&key(2), 11, T0, offer(1));
    let big = format!("{{\"entry_hex\":\"{}\"}}", "00".repeat(80 * 1024));
    let cases: Vec<WriteCase<'_>> = vec![
        (
            "missing token",
            "/api/bids",
            None,
            entry_json(&good),
            401,
            "missing `Authorization: Bearer",
        ),
        (
            "wrong token",
            "/api/bids",
            Some("not-the-token"),
            entry_json(&good),
            403,
            "wrong control token",
        ),
        (
            "malformed JSON",
            "/api/bids",
            Some(TOKEN),
            "{\"entry_hex\":".into(),
            400,
            "body: expected JSON",
        ),
        (
            "unknown field",
            "/api/bids",
            Some(TOKEN),
            "{\"entry\":\"00\"}".into(),
            400,
            "unknown field",
        ),
        (
            "not hex",
            "/api/bids",
            Some(TOKEN),
            "{\"entry_hex\":\"xyz\"}".into(),
            400,
            "entry_hex: expected",
        ),
        (
            "garbage entry",
            "/api/bids",
            Some(TOKEN),
            "{\"entry_hex\":\"0102\"}".into(),
            400,
            "not a canonical ledger entry",
        ),
        (
            "bad signature",
            "/api/bids",
            Some(TOKEN),
            entry_json(&bad_sig),
            400,
            "signature",
        ),
        (
            "wrong key",
            "/api/bids",
            Some(TOKEN),
            entry_json(&wrong_key),
            400,
            "signature",
        ),
        (
            "non-member",
            "/api/bids",
            Some(TOKEN),
            entry_json(&bid_by(9, 0)),
            403,
            "is not a member",
        ),
        (
            "wrong kind",
            "/api/bids",
            Some(TOKEN),
            entry_json(&offer),
            400,
            "/api/bids accepts bid entries, found a offer entry",
        ),
        (
            "a bid on the data-pool route",
            "/api/data",
            Some(TOKEN),
            entry_json(&good),
            400,
            "/api/data accepts data entries, found a bid entry",
        ),
        ("oversized", "/api/bids", Some(TOKEN), big, 413, "at most"),
        (
            "node refuses",
            "/api/bids",
            Some(TOKEN),
            entry_json(&bid_by(2, 999)),
            409,
            "expected seq 12",
        ),
    ];
    for (what, uri, token, body, status, needle) in cases {
        let (s, h, out) = send(&app, post(uri, token, body)).await;
        assert_eq!(
            s.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(h[header::CONTENT_TYPE], "application/json", "{what}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["error"].as_str().unwrap().contains(needle), "{what}: {v}");
    }
    // Only the two good bids and the one the node refused reached the node.
    assert_eq!(submit.got.lock().unwrap().len(), 3);

    // A read-only server (leam serve) refuses every write.
    let ro = read_only_again(&app, fed);
    let (s, _, out) = send(&ro, post("/api/bids", Some(TOKEN), entry_json(&good))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&out).contains("this server is read-only"));
}

fn read_only_again(app: &Router, fed: Fed) -> Router {
    // The writable app above holds the stores open; serve the same directories from a copy.
    let _ = app;
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = fed
        .dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let to = tmp.path().join(i.to_string());
            copy_dir(d, &to);
            to
        })
        .collect();
    let view = DirView::open(&dirs, Some(fed.genesis.clone()), None).unwrap();
    std::mem::forget(tmp);
    app_of(view)
}

fn app_of(view: DirView) -> Router {
    app(AppState::new(Arc::new(view)))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn rate_limit_answers_429() {
    let fed = federation();
    let view = Arc::new(DirView::open(&fed.dirs, Some(fed.genesis.clone()), None).unwrap());
    let app = app(AppState::new(view)
        .with_writes(TOKEN.into(), Arc::new(MockSubmit::default()))
        .with_write_limit(leam_web::writes::RateLimit {
            burst: 2,
            per_minute: 1,
        }));
    let good = entry_json(&bid_by(2, 11));
    for _ in 0..2 {
        let (s, _, _) = send(&app, post("/api/bids", Some(TOKEN), good.clone())).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, _, out) = send(&app, post("/api/bids", Some(TOKEN), good)).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&out).contains("rate limit: at most 2 writes at once"));
}

#[tokio::test]
async fn events_stream_starts_with_the_log_sizes_and_ends_at_shutdown() {
    let fed = federation();
    let view = Arc::new(DirView::open(&fed.dirs, None, None).unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let app = app(AppState::new(view).with_shutdown(stop.clone()));
    let res = app
        .oneshot(Request::get("/api/events").body(HttpBody::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stop.cancel();
    });
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        res.into_body().collect(),
    )
    .await
    .expect("the stream ends when the shutdown token is cancelled")
    .unwrap()
    .to_bytes();
    stopper.await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.starts_with("event: logs\ndata: ["), "{text}");
    assert!(
        text.contains(&format!(
            "{{\"log\":\"{}\",\"size\":{}}}",
            hex::encode(pk(1)),
            5 + A_OFFERS
        )),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// An independent tlog-tiles reader, written from the C2SP text (c2sp.org/tlog-tiles,
// tlog-checkpoint, signed-note): it uses no code of leam-web or leam-ledger's Merkle module.

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn node(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    sha256(&[&[1], l, r])
}

fn n_path(n: u64) -> String {
    let s = format!("{n}");
    let pad = s.len().div_ceil(3) * 3;
    let s = format!("{n:0pad$}");
    let groups: Vec<&str> = (0..s.len() / 3).map(|i| &s[3 * i..3 * i + 3]).collect();
    let last = groups.len() - 1;
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            if i < last {
                format!("x{g}")
            } else {
                (*g).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

struct TileReader<'a> {
    app: &'a Router,
    base: String,
    size: u64,
}

impl TileReader<'_> {
    /// The tile at (level, n) as the checkpoint's size defines it (full or `.p/W`).
    async fn tile(&self, level: u32, n: u64) -> Vec<[u8; 32]> {
        let at_level = self.size >> (8 * level);
        let w = (at_level - n * 256).min(256);
        let uri = if w == 256 {
            format!("{}tile/{level}/{}", self.base, n_path(n))
        } else {
            format!("{}tile/{level}/{}.p/{w}", self.base, n_path(n))
        };
        let (s, h, body) = get(self.app, &uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert_eq!(
            h[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(body.len() as u64, 32 * w, "{uri}");
        body.chunks(32).map(|c| c.try_into().unwrap()).collect()
    }

    /// The hash of the complete subtree of 2^k leaves starting at leaf `start`.
    async fn subtree(&self, k: u32, start: u64) -> [u8; 32] {
        let level = k / 8;
        let r = k % 8;
        // 2^r hashes of tile level `level`, positions p·2^r .. (p+1)·2^r, combined pairwise.
        let p = start >> k;
        let first = p << r;
        let mut hashes = Vec::new();
        for i in first..first + (1 << r) {
            let t = self.tile(level, i / 256).await;
            hashes.push(t[(i % 256) as usize]);
        }
        while hashes.len() > 1 {
            hashes = hashes.chunks(2).map(|c| node(&c[0], &c[1])).collect();
        }
        hashes[0]
    }

    /// The root of the tree of `size` leaves: complete subtrees from the left, folded from
    /// the right (RFC 6962).
    async fn root(&self) -> [u8; 32] {
        if self.size == 0 {
            return sha256(&[]);
        }
        let mut parts = Vec::new();
        let mut start = 0;
        for k in (0..64).rev() {
            if self.size & (1 << k) != 0 {
                parts.push(self.subtree(k, start).await);
                start += 1 << k;
            }
        }
        let mut h = parts.pop().unwrap();
        while let Some(l) = parts.pop() {
            h = node(&l, &h);
        }
        h
    }
}

/// Fetch and check one log: the checkpoint's signature by the log key, the root rebuilt from
/// the tiles, and every entry bundle against the level-0 tiles.
async fn read_log(app: &Router, key: &[u8; 32]) -> u64 {
    let base = format!("/tlog/{}/", hex::encode(key));
    let (s, h, note) = get(app, &format!("{base}checkpoint")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CACHE_CONTROL], "no-cache");
    let note = String::from_utf8(note).unwrap();
    let split = note.rfind("\n\n").unwrap();
    let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
    let mut lines = text.lines();
    let origin = lines.next().unwrap();
    assert_eq!(origin, format!("leam.ledger/{}", hex::encode(key)));
    let size: u64 = lines.next().unwrap().parse().unwrap();
    let root: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(lines.next().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    // The log's signature line: key ID = SHA-256(name ‖ \n ‖ 0x01 ‖ key)[..4].
    let key_id = &sha256(&[origin.as_bytes(), b"\n", &[1], key])[..4];
    let sig_line = sigs
        .lines()
        .find(|l| l.starts_with(&format!("\u{2014} {origin} ")))
        .expect("signed by the log");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig_line.rsplit(' ').next().unwrap())
        .unwrap();
    assert_eq!(&raw[..4], key_id);
    let vk = VerifyingKey::from_bytes(key).unwrap();
    vk.verify(text.as_bytes(), &Signature::from_slice(&raw[4..]).unwrap())
        .expect("the checkpoint signature verifies");

    let reader = TileReader {
        app,
        base: base.clone(),
        size,
    };
    assert_eq!(
        reader.root().await,
        root,
        "root rebuilt from the tiles of size {size}"
    );
    // Entry bundles: every entry's leaf hash is the level-0 tile hash.
    for n in 0..size.div_ceil(256) {
        let w = (size - n * 256).min(256);
        let uri = if w == 256 {
            format!("{base}tile/entries/{}", n_path(n))
        } else {
            format!("{base}tile/entries/{}.p/{w}", n_path(n))
        };
        let (s, _, bundle) = get(app, &uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        let hashes = reader.tile(0, n).await;
        let mut rest = &bundle[..];
        let mut i = 0;
        while !rest.is_empty() {
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            assert_eq!(
                sha256(&[&[0], &rest[2..2 + len]]),
                hashes[i],
                "{uri} entry {i}"
            );
            rest = &rest[2 + len..];
            i += 1;
        }
        assert_eq!(i as u64, w);
    }
    size
}

#[tokio::test]
async fn an_independent_tile_reader_rebuilds_every_served_root() {
    let fed = federation();
    let app = read_only(&fed);
    assert_eq!(read_log(&app, &pk(1)).await, 5 + A_OFFERS);
    assert_eq!(read_log(&app, &pk(2)).await, 13);

    // One log served at many sizes: partial tiles, exactly full tiles, level-1 and level-2
    // tiles.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let mut log = Log::create(
        &dir,
        Identity::from_seed(&[3; 32]),
        &member("C", Sector::Public),
        T0,
    )
    .unwrap();
    let mut sizes = Vec::new();
    for target in [1u64, 2, 7, 255, 256, 257, 511, 512, 700, 65_536 + 3] {
        while log.size() < target {
            let n = (target - log.size()).min(4096);
            let batch = (0..n).map(|i| log.sign_next(i, T0 + 1, offer(i))).collect();
            log.append_batch(batch).unwrap();
        }
        drop(log);
        let view = DirView::open(std::slice::from_ref(&dir), None, None).unwrap();
        let app = app_of(view);
        sizes.push(read_log(&app, &pk(3)).await);
        drop(app);
        log = Log::open(&dir).unwrap();
    }
    assert_eq!(sizes, [1, 2, 7, 255, 256, 257, 511, 512, 700, 65_539]);
}

// ---------------------------------------------------------------------------------------------
// Golden tile vectors: specs/tlog.md §8 lists, for a fixed log, each tile path and the SHA-256
// of its bytes; the served tiles must match.

/// The vector log: seed 0x07, organisation "Vector", science, 299 offers at T0 (size 300).
fn vector_log(dir: &Path) {
    let mut log = Log::create(
        dir,
        Identity::from_seed(&[7; 32]),
        &member("Vector", Sector::Science),
        T0,
    )
    .unwrap();
    let batch = (0..299).map(|i| log.sign_next(i, T0, offer(i))).collect();
    log.append_batch(batch).unwrap();
}

fn spec_vectors() -> Vec<(String, String)> {
    let spec =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/tlog.md"))
            .unwrap();
    let start = spec
        .find("<!-- tile vectors begin -->")
        .expect("vector table in specs/tlog.md");
    let end = spec.find("<!-- tile vectors end -->").unwrap();
    spec[start..end]
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
            (cells.len() == 5 && cells[1].starts_with("tile/"))
                .then(|| (cells[1].to_owned(), cells[3].to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn served_tiles_match_the_spec_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    vector_log(&dir);
    let app = app_of(DirView::open(std::slice::from_ref(&dir), None, None).unwrap());
    let base = format!("/tlog/{}/", hex::encode(pk(7)));
    let vectors = spec_vectors();
    if std::env::var_os("LEAM_PRINT_TILE_VECTORS").is_some() {
        for p in [
            "tile/0/000",
            "tile/0/001.p/44",
            "tile/1/000.p/1",
            "tile/entries/000",
            "tile/entries/001.p/44",
        ] {
            let (_, _, b) = get(&app, &format!("{base}{p}")).await;
            println!("| `{p}` | {} | `{}` |", b.len(), hex::encode(sha256(&[&b])));
        }
    }
    assert_eq!(vectors.len(), 5, "{vectors:?}");
    for (path, digest) in vectors {
        let (s, _, b) = get(&app, &format!("{base}{path}")).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!(hex::encode(sha256(&[&b])), digest, "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// No request, however malformed, gets a 5xx.

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("api".to_owned()),
            Just("tlog".to_owned()),
            Just("tile".to_owned()),
            Just("entries".to_owned()),
            Just("logs".to_owned()),
            Just("proof".to_owned()),
            Just("inclusion".to_owned()),
            Just("x001".to_owned()),
            Just("000".to_owned()),
            Just("001.p".to_owned()),
            Just("checkpoint".to_owned()),
            Just("report.csv".to_owned()),
            Just(hex::encode(pk(1))),
            Just("bids".to_owned()),
            Just("jobs".to_owned()),
            Just("progress".to_owned()),
            Just("%ff".to_owned()),
            Just("..".to_owned()),
            "[a-z0-9.%~_-]{0,12}",
        ]
    }

    fn request() -> impl Strategy<Value = (String, String, Vec<u8>, bool)> {
        (
            prop_oneof![
                Just("GET"),
                Just("POST"),
                Just("PUT"),
                Just("DELETE"),
                Just("HEAD")
            ],
            proptest::collection::vec(segment(), 0..7),
            "[a-z=&0-9%]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<bool>(),
        )
            .prop_map(|(m, segs, q, body, auth)| {
                let q = if q.is_empty() {
                    String::new()
                } else {
                    format!("?{q}")
                };
                (m.to_owned(), format!("/{}{q}", segs.join("/")), body, auth)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn random_requests_never_get_a_5xx(reqs in proptest::collection::vec(request(), 1..4)) {
            thread_local! {
                static APP: (Fed, Router) = {
                    let fed = federation();
                    let view = Arc::new(DirView::open(&fed.dirs, Some(fed.genesis.clone()), None).unwrap());
                    let app = app(AppState::new(view).with_writes(TOKEN.into(), Arc::new(MockSubmit::default()))
                        .with_write_limit(leam_web::writes::RateLimit { burst: 1_000_000, per_minute: 1_000_000 }));
                    (fed, app)
                };
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            APP.with(|(_, app)| {
                for (method, uri, body, auth) in reqs {
                    let mut r = Request::builder().method(method.as_str()).uri(&uri);
                    if auth {
                        r = r.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
                    }
                    let Ok(req) = r.body(HttpBody::from(body)) else { continue };
                    let status = rt.block_on(async { app.clone().oneshot(req).await.unwrap().status() });
                    prop_assert!(!status.is_server_error(), "{method} {uri}: {status}");
                }
                Ok(())
            })?;
        }
    }
}

/// `GET /api/blobs/{sha256}` serves a blob from `DIR/blobs/` only under its own hash: a file
/// whose bytes do not match its name is not served; bad names get 400, absent ones 404.
#[tokio::test]
async fn blobs_are_served_by_hash_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    vector_log(&dir);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    let blob = b"the shard's start state".to_vec();
    let h = sha256(&[&blob]);
    std::fs::write(dir.join("blobs").join(hex::encode(h)), &blob).unwrap();
    let forged = sha256(&[b"other"]);
    std::fs::write(dir.join("blobs").join(hex::encode(forged)), b"not it").unwrap();
    let app = app_of(DirView::open(std::slice::from_ref(&dir), None, None).unwrap());
    let (status, headers, body) = get(&app, &format!("/api/blobs/{}", hex::encode(h))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, blob);
    assert_eq!(headers["content-type"], "application/octet-stream");
    let (status, _, _) = get(&app, &format!("/api/blobs/{}", hex::encode(forged))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = get(&app, &format!("/api/blobs/{}", hex::encode([9u8; 32]))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = get(&app, "/api/blobs/xyz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("64 hex digits"));
}
