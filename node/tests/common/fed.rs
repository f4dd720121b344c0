//! Real `leam node` processes on loopback: set up a federation with `leam init` and
//! `leam genesis`, start nodes, read their HTTP API, stop them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ok, p};

/// A running `leam node`, killed when dropped.
pub struct Running {
    pub dir: PathBuf,
    pub child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `leam init` for each (name, organisation, sector) under `root`, a genesis of all of them
/// with `threshold`, signed by all; returns the genesis path and the node directories.
pub fn federation(
    root: &Path,
    orgs: &[(&str, &str, &str)],
    threshold: u16,
) -> (PathBuf, Vec<PathBuf>) {
    let dirs: Vec<PathBuf> = orgs.iter().map(|(n, _, _)| root.join(n)).collect();
    for ((_, org, sector), dir) in orgs.iter().zip(&dirs) {
        ok(&["init", "--dir", p(dir), "--org", org, "--sector", sector]);
    }
    let genesis = root.join("fed.genesis");
    let t = threshold.to_string();
    let mut args = vec![
        "genesis",
        "create",
        "--out",
        p(&genesis),
        "--subsidy-percent",
        "30",
        "--threshold",
        &t,
    ];
    args.extend(dirs.iter().map(|d| p(d)));
    ok(&args);
    for d in &dirs {
        ok(&["genesis", "sign", "--dir", p(d), p(&genesis)]);
    }
    (genesis, dirs)
}

/// Start `leam node` in `dir` with `extra` flags; waits until it wrote its addresses.
pub fn start_with(dir: &Path, genesis: &Path, bootstrap: &[String], extra: &[&str]) -> Running {
    let _ = std::fs::remove_file(dir.join("http.addr"));
    let _ = std::fs::remove_file(dir.join("listen.addrs"));
    let mut args = vec![
        "node".to_string(),
        "--dir".into(),
        p(dir).into(),
        "--genesis".into(),
        p(genesis).into(),
    ];
    for b in bootstrap {
        args.push("--bootstrap".into());
        args.push(b.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(&args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("leam node starts");
    let t = Instant::now();
    while !(dir.join("http.addr").exists() && dir.join("listen.addrs").exists()) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "node {} did not start: {}",
            dir.display(),
            std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Running {
        dir: dir.to_owned(),
        child,
    }
}

/// Start `leam node` in `dir`.
pub fn start(dir: &Path, genesis: &Path, bootstrap: &[String]) -> Running {
    start_with(dir, genesis, bootstrap, &[])
}

/// The node's TCP listen address with `/p2p/<PeerId>`.
pub fn tcp_addr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("listen.addrs"))
        .unwrap()
        .lines()
        .find(|l| l.contains("/tcp/"))
        .unwrap()
        .to_string()
}

/// `http://ADDR` of the running node in `dir`.
pub fn base(dir: &Path) -> String {
    format!(
        "http://{}",
        std::fs::read_to_string(dir.join("http.addr"))
            .unwrap()
            .trim()
    )
}

/// The node's control token.
pub fn token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("control.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// GET a URL: (status, body).
pub fn get(url: &str) -> (u16, String) {
    let mut resp = ureq::get(url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

/// GET a URL answering JSON with 200.
pub fn get_json(url: &str) -> Value {
    let (status, body) = get(url);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// POST JSON with an optional bearer token: (status, JSON answer).
pub fn post_json(url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = ureq::post(url).config().http_status_as_error(false).build();
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req
        .send_json(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_json().unwrap_or_default())
}

/// The node's `/api/status`, if it answers.
pub fn status(dir: &Path) -> Option<Value> {
    let addr = std::fs::read_to_string(dir.join("http.addr")).ok()?;
    let mut resp = ureq::get(&format!("http://{}/api/status", addr.trim()))
        .call()
        .ok()?;
    resp.body_mut().read_json().ok()
}

/// Poll `cond` every 200 ms until it holds, or fail after `limit` naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{what}: not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node holds every other node's log at the size its owner serves (`/api/logs`).
pub fn replicated(dirs: &[&Path]) -> bool {
    let logs: Vec<Value> = dirs
        .iter()
        .map(|d| get_json(&format!("{}/api/logs", base(d))))
        .collect();
    let own: Vec<(String, u64)> = logs
        .iter()
        .map(|l| {
            let o = l
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["own"] == true)
                .unwrap();
            (
                o["key"].as_str().unwrap().to_string(),
                o["size"].as_u64().unwrap(),
            )
        })
        .collect();
    logs.iter().all(|l| {
        own.iter().all(|(k, size)| {
            l.as_array()
                .unwrap()
                .iter()
                .any(|x| x["key"] == k.as_str() && x["size"].as_u64() == Some(*size))
        })
    })
}

/// Send SIGTERM and wait (at most 15 s) for the exit: (status, time taken).
pub fn sigterm(mut n: Running) -> (std::process::ExitStatus, Duration) {
    let pid = n.child.id();
    let t = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    loop {
        if let Some(status) = n.child.try_wait().unwrap() {
            return (status, t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "node did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
