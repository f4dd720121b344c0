//! The funder report and the market in headless Chromium, driven from Rust over WebDriver
//! (fantoccini, chromedriver): two live `leam node`s; the figures the report page shows
//! (`data-org`/`data-field`/`data-value` cells) equal `/api/report`; a bid signed here with the
//! node key and posted with the control token appears on `/market` after a reload; a
//! screenshot of each page is saved. Needs the Debian packages `chromium` and
//! `chromium-driver`: without them the test fails under `CI=true` and is skipped loudly
//! otherwise. `LEAM_SCREENSHOT_DIR` keeps copies of the screenshots.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fantoccini::{ClientBuilder, Locator};
use leam_ledger::entry::{Bid, Body, Deposit, Entry, Money};
use leam_ledger::identity::Identity;
use serde_json::{json, Value};

mod common;
use common::fed::{
    base, federation, get_json, post_json, replicated, start, tcp_addr, token, wait_until,
};

/// The browser and its driver (Debian `chromium`, `chromium-driver`: same source package, so
/// their versions match).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long chromedriver may take to answer its status endpoint.
const DRIVER_START_MS_MAX: u64 = 20_000;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Missing browser binaries: a failure under CI, a loud skip elsewhere. Returns whether to run.
fn browser_available() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|b| !Path::new(b).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "browser test needs {} (apt-get install chromium chromium-driver)",
        missing.join(" and ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    // Straight to the process's stderr: libtest captures `println!` of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
    false
}

fn start_driver() -> (Driver, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let t = Instant::now();
    loop {
        if ureq::get(&format!("{url}/status")).call().is_ok() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_millis(DRIVER_START_MS_MAX),
            "chromedriver did not answer on {url} within {DRIVER_START_MS_MAX} ms"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (Driver(child), url)
}

fn signed(dir: &Path, body: Body) -> Value {
    let logs = get_json(&format!("{}/api/logs", base(dir)));
    let (key, size) = (
        logs[0]["key"].as_str().unwrap().to_string(),
        logs[0]["size"].as_u64().unwrap(),
    );
    let last = get_json(&format!(
        "{}/api/logs/{key}/entries?start={}&limit=1",
        base(dir),
        size - 1
    ));
    let ts = last["entries"][0]["entry"]["timestamp_ms"]
        .as_u64()
        .unwrap();
    let id = Identity::load(&dir.join("node.key")).unwrap();
    let e = Entry::sign(id.signing_key(), size, ts.max(now_ms()), body);
    json!({ "entry_hex": hex::encode(e.encode()) })
}

fn save(shot: &[u8], dir: &Path, name: &str) -> PathBuf {
    assert!(shot.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let path = dir.join(name);
    std::fs::write(&path, shot).unwrap();
    if let Ok(keep) = std::env::var("LEAM_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::write(Path::new(&keep).join(name), shot).unwrap();
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_page_shows_the_api_figures_and_a_posted_bid_appears_on_the_market() {
    if !browser_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (genesis, dirs) = federation(
        tmp.path(),
        &[
            ("a", "Rechenzentrum Nord", "public"),
            ("d", "Sprachwerk GmbH", "startup"),
        ],
        2,
    );
    let _a = start(&dirs[0], &genesis, &[]);
    let _d = start(&dirs[1], &genesis, &[tcp_addr(&dirs[0])]);
    let all: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    wait_until(
        "two nodes replicate each other",
        Duration::from_secs(40),
        || replicated(&all),
    );
    // Public money from A, so that the report has figures besides zeros.
    let a_key = Identity::load(&dirs[0].join("node.key"))
        .unwrap()
        .public_key();
    let deposit = signed(
        &dirs[0],
        Body::Deposit(Deposit {
            member: a_key,
            eur_cents: 1_234_500,
            money: Money::Public,
            reference: "EU-GRANT-7".into(),
        }),
    );
    let (st, ans) = post_json(
        &format!("{}/api/deposits", base(&dirs[0])),
        Some(&token(&dirs[0])),
        &deposit,
    );
    assert_eq!(st, 201, "{ans}");
    let web = base(&dirs[0]);

    let (_driver, driver_url) = start_driver();
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync", "--window-size=1280,1600",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let browser = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&driver_url)
        .await
        .expect("a Chromium session");

    // The report's figures equal the API's.
    let api = get_json(&format!("{web}/api/report"));
    browser.goto(&format!("{web}/report")).await.unwrap();
    let cells = browser
        .find_all(Locator::Css("td[data-org][data-field]"))
        .await
        .unwrap();
    let orgs = api["organisations"].as_object().unwrap();
    assert_eq!(orgs.len(), 2, "{api}");
    assert!(
        cells.len() >= orgs.len() * 9,
        "{} figure cells for {} organisations",
        cells.len(),
        orgs.len()
    );
    let mut seen = 0;
    for cell in &cells {
        let org = cell.attr("data-org").await.unwrap().unwrap();
        let field = cell.attr("data-field").await.unwrap().unwrap();
        let value = cell.attr("data-value").await.unwrap().unwrap();
        let want = &api["organisations"][&org][&field];
        assert!(want.is_number(), "/api/report has no {org}/{field}");
        assert_eq!(value, want.to_string(), "{org} {field}");
        seen += 1;
    }
    let public = browser
        .find(Locator::Css(
            "td[data-org='Rechenzentrum Nord'][data-field='funding_public_eur_cents']",
        ))
        .await
        .unwrap();
    assert_eq!(
        public.attr("data-value").await.unwrap().as_deref(),
        Some("1234500")
    );
    assert!(
        public.text().await.unwrap().contains("12,345"),
        "shown in euros"
    );
    let report_png = save(
        &browser.screenshot().await.unwrap(),
        tmp.path(),
        "report.png",
    );
    println!(
        "{seen} figures equal /api/report; screenshot {}",
        report_png.display()
    );

    // A bid signed here with D's key, posted with D's token, shows on A's market page once A
    // holds it (replication), after a reload.
    browser.goto(&format!("{web}/market")).await.unwrap();
    let job = [0x5a_u8; 32];
    let job_prefix = &hex::encode(job)[..12];
    assert!(!browser.source().await.unwrap().contains(job_prefix));
    let bid = signed(
        &dirs[1],
        Body::Bid(Bid {
            job_id: job,
            compute_units: 4_000_000,
            max_price_cents_per_kilo_unit: 35,
            deadline_ms: now_ms() + 86_400_000,
        }),
    );
    let (st, ans) = post_json(
        &format!("{}/api/bids", base(&dirs[1])),
        Some(&token(&dirs[1])),
        &bid,
    );
    assert_eq!(st, 201, "{ans}");
    let t = Instant::now();
    loop {
        browser.refresh().await.unwrap();
        if browser.source().await.unwrap().contains(job_prefix) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the bid did not appear on A's market page"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = browser
        .find(Locator::Css("td[data-field='bid_status']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!status.is_empty(), "the bid says whether it is served");
    let market_png = save(
        &browser.screenshot().await.unwrap(),
        tmp.path(),
        "market.png",
    );
    println!(
        "bid shown on /market ({status}); screenshot {}",
        market_png.display()
    );
    browser.close().await.unwrap();
}
