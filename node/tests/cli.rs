//! The command-line convention of specs/cli.md, checked on the real binary: every command's
//! `--help` documents every flag and shows an example; each exit code (0, 1, 2, 3) on a real
//! case; `--json` outputs parse and carry their documented fields; `--version`; completions and
//! man pages; and the README's commands that run in seconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

mod common;
use common::{leam, ok, p};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `leam` in `dir` with extra environment.
fn leam_in(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leam"));
    c.args(args).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("leam {args:?}: not JSON ({e}):\n{out}"))
}

fn has_fields(v: &serde_json::Value, fields: &[&str], what: &str) {
    for f in fields {
        assert!(v.get(f).is_some(), "{what}: no field `{f}` in {v}");
    }
}

/// The subcommand names listed under `Commands:` of a help text.
fn subcommands(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for l in help.lines() {
        if l.starts_with("Commands:") {
            inside = true;
            continue;
        }
        if inside {
            if !l.starts_with("  ") {
                break;
            }
            let name = l.split_whitespace().next().unwrap_or("");
            if !name.is_empty() && name != "help" && l.starts_with("  ") && !l.starts_with("   ") {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Every command path of `leam`, by walking the `Commands:` sections of the help texts.
fn command_tree() -> Vec<Vec<String>> {
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    let mut all = Vec::new();
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = ok(&args);
        for s in subcommands(&help) {
            let mut child = path.clone();
            child.push(s);
            todo.push(child);
        }
        all.push(path);
    }
    all
}

#[test]
fn every_command_documents_every_flag_and_shows_an_example() {
    let tree = command_tree();
    // The whole surface, so that a new command is walked too.
    for expected in [
        "init",
        "genesis sign",
        "node",
        "peers",
        "admit",
        "sim",
        "keygen",
        "ledger bench",
        "ledger prove",
        "audit",
        "train",
        "sample",
        "eval",
        "compute selftest",
        "compute bench",
        "demo",
        "completions",
        "man",
    ] {
        assert!(
            tree.iter().any(|p| p.join(" ") == expected),
            "`leam {expected}` not in the command tree {tree:?}"
        );
    }
    for path in &tree {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = leam(&args);
        assert_eq!(code(&out), Some(0), "leam {args:?}: {}", stderr(&out));
        let help = String::from_utf8(out.stdout).unwrap();
        // Every option and argument line is followed by its description.
        let lines: Vec<&str> = help.lines().collect();
        let mut section = "";
        for (i, l) in lines.iter().enumerate() {
            if !l.starts_with(' ') && l.ends_with(':') {
                section = l;
                continue;
            }
            if section != "Options:" && section != "Arguments:" {
                continue;
            }
            let t = l.trim_start();
            let indent = l.len() - t.len();
            if (2..=6).contains(&indent) && (t.starts_with('-') || t.starts_with('<')) {
                let desc = lines.get(i + 1).map(|d| d.trim()).unwrap_or("");
                assert!(
                    !desc.is_empty() && !desc.starts_with('-'),
                    "leam {}: `{t}` has no help text:\n{help}",
                    path.join(" ")
                );
            }
        }
        // Each top-level command (and each leaf) has an example in its long help.
        if path.len() == 1 || subcommands(&help).is_empty() {
            assert!(
                help.contains("Example:\n  leam "),
                "leam {}: no example in the long help",
                path.join(" ")
            );
        }
    }
    // Every flag of `leam train` states its default (they come from the preset definition).
    let help = ok(&["train", "--help"]);
    for (flag, default) in [
        ("--n-layer", "Default: 4"),
        ("--n-head", "Default: 4"),
        ("--n-embd", "Default: 128"),
        ("--block-size", "Default: 64"),
        ("--batch-size", "Default: 12"),
        ("--max-iters", "Default: 2000"),
        ("--lr-decay-iters", "Default: --max-iters"),
        ("--learning-rate", "Default: 0.001"),
        ("--min-lr", "Default: 0.0001"),
        ("--warmup-iters", "Default: 100"),
        ("--weight-decay", "Default: 0.1"),
        ("--beta2", "Default: 0.99"),
        ("--seed", "Default: 1337"),
        ("--eval-interval", "Default: 250"),
        ("--eval-iters", "Default: 200"),
        ("--backend", "[default: auto]"),
    ] {
        let at = help
            .find(&format!("      {flag} "))
            .unwrap_or_else(|| panic!("{flag} in train --help"));
        let block = &help[at..];
        let end = block[1..].find("\n      --").map_or(block.len(), |e| e + 1);
        assert!(
            block[..end].contains(default),
            "train {flag}: `{default}` not stated:\n{}",
            &block[..end]
        );
    }
}

#[test]
fn version_names_the_commit_and_the_backends() {
    let v = ok(&["--version"]);
    assert!(
        v.starts_with(&format!("leam {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("backends: cpu, wgpu"), "{v}");
    let commit = v
        .split("(commit ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap();
    // Where git and the repository are present (a CI clone), the commit is HEAD's.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo_root())
        .output();
    match head {
        Ok(h) if h.status.success() => {
            assert_eq!(commit, String::from_utf8_lossy(&h.stdout).trim(), "{v}")
        }
        _ => assert!(
            commit == "unknown" || commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{v}"
        ),
    }
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    let bash = ok(&["completions", "bash"]);
    for word in [
        "leam",
        "train",
        "audit",
        "ledger",
        "--backend",
        "nanogpt-cpu",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    for shell in ["zsh", "fish"] {
        assert!(ok(&["completions", shell]).contains("audit"), "{shell}");
    }
    assert_eq!(code(&leam(&["completions", "tcsh"])), Some(2));
    let man = ok(&["man"]);
    assert!(man.contains(".TH leam 1"), "{}", &man[..man.len().min(300)]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    ok(&["man", "--out", p(&dir)]);
    for page in [
        "leam.1",
        "leam-train.1",
        "leam-ledger-init.1",
        "leam-audit.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
}

/// `leam args` with stdout a pipe whose reader is closed before it starts: every write fails
/// with EPIPE (SIGPIPE is ignored by Rust programs). Returns (exit code, stderr).
fn with_stdout_closed(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(args)
        .stdout(writer)
        .output()
        .unwrap();
    (code(&out), stderr(&out))
}

#[test]
fn a_reader_that_stops_early_is_no_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    bench_log(&dir, "300");
    // `leam man | head -1`: the reader takes a few bytes and goes away. The export of 300
    // entries (about 1 KB each) is larger than a pipe's buffer (64 KiB), so leam is still
    // writing when the reader leaves; the man page and the completion script fit in it today.
    let export = ["ledger", "export", "--dir", p(&dir)];
    for args in [&["man"][..], &["completions", "bash"], &export] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_leam"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 16];
        std::io::Read::read_exact(&mut child.stdout.take().unwrap(), &mut first).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), Some(0), "leam {args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("error"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Whatever the sizes: the reader is gone before the first write. The audit report is
    // written with `println!`, which panics on a closed pipe unless the panic hook steps in.
    let audit = ["audit", "--no-state", p(&dir)];
    for args in [
        &["man"][..],
        &["completions", "bash"],
        &["completions", "zsh"],
        &export,
        &audit,
    ] {
        let (code, err) = with_stdout_closed(args);
        assert_eq!(code, Some(0), "leam {args:?}: {err}");
        assert!(
            !err.contains("error") && !err.contains("panicked"),
            "leam {args:?}: {err}"
        );
    }
    // A verdict stands when nobody reads the report: the market audit of a bench ledger
    // fails (exit 1, as in exit_codes_on_real_cases), piped or not; a clean one exits 0.
    let (code, err) = with_stdout_closed(&["audit", "--no-state", "--json", p(&dir)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("audit FAILED"), "{err}");
    let (code, err) =
        with_stdout_closed(&["audit", "--no-market", "--no-state", "--json", p(&dir)]);
    assert_eq!(code, Some(0), "{err}");
}

/// A fresh log of `entries` synthetic entries (plus two admissions) in `dir`.
fn bench_log(dir: &Path, entries: &str) -> serde_json::Value {
    json(&[
        "ledger",
        "bench",
        "--dir",
        p(dir),
        "--entries",
        entries,
        "--batch",
        "8",
        "--json",
    ])
}

#[test]
fn exit_codes_on_real_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    bench_log(&dir, "30");
    // 0: a clean audit.
    assert_eq!(
        code(&leam(&["audit", "--no-market", "--no-state", p(&dir)])),
        Some(0)
    );
    // 1: the same bench ledger is no market (its leases and verdicts name no published job):
    // the market audit reports them and fails.
    let out = leam(&["audit", "--no-state", p(&dir)]);
    assert_eq!(code(&out), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("the rule would not have produced this lease"));

    // 2: usage errors (clap's code) and unreadable input.
    for args in [
        vec!["train", "--backend", "tpu"],
        vec!["audit", "--no-such-flag", p(&dir)],
        vec![
            "ledger", "init", "--dir", "x", "--org", "X", "--sector", "banks",
        ],
        vec!["compute", "bench", "--reps", "0"],
        vec!["audit", "--no-state", "/nonexistent/leam-node"],
        vec!["eval", "--checkpoint", "/nonexistent/x.ckpt"],
        vec!["train", "--corpus", "/nonexistent/corpus.txt"],
        vec!["demo", "--rounds", "0"],
    ] {
        let out = leam(&args);
        assert_eq!(code(&out), Some(2), "leam {args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("error"), "{args:?}: {}", stderr(&out));
    }
    // A missing corpus names where it was looked for.
    let out = leam_in(
        tmp.path(),
        &[],
        &["demo", "--dir", p(&tmp.path().join("d"))],
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("corpus not found (looked for") && err.contains("data/tinyshakespeare.txt"),
        "{err}"
    );
    assert!(!tmp.path().join("d").exists(), "nothing is created first");

    // 3: the store is locked by another process (here: this test holding it open).
    {
        let _held = leam_ledger::store::SledStore::open(&dir.join("ledger.sled")).unwrap();
        for args in [
            vec!["audit", "--no-market", "--no-state", p(&dir)],
            vec!["ledger", "export", "--dir", p(&dir)],
        ] {
            let out = leam(&args);
            assert_eq!(code(&out), Some(3), "leam {args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("locked"), "{}", stderr(&out));
        }
    }

    // 3: no wgpu adapter where `--backend wgpu` requires one (here: none matches the choice
    // in LEAM_WGPU_ADAPTER; on a machine without any adapter the same code and message).
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args([
            "train",
            "--backend",
            "wgpu",
            "--preset",
            "demo",
            "--max-iters",
            "1",
        ])
        .args(["--corpus", corpus, "--quiet"])
        .env("LEAM_WGPU_ADAPTER", "no-such-adapter")
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("no wgpu adapter"), "{}", stderr(&out));

    // 1: a tampered entry is an audit failure naming the entry.
    let export = ok(&["ledger", "export", "--dir", p(&dir)]);
    let row: serde_json::Value = serde_json::from_str(export.lines().nth(20).unwrap()).unwrap();
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(row["entry"].as_str().unwrap())
        .unwrap();
    bytes[70] ^= 0x01;
    let store = leam_ledger::store::SledStore::open(&dir.join("ledger.sled")).unwrap();
    store.raw_replace_entry(20, &bytes).unwrap();
    drop(store);
    let out = leam(&["audit", "--no-market", "--no-state", p(&dir)]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("entry 20"), "{}", stderr(&out));
}

#[test]
fn json_outputs_carry_their_documented_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.key");
    let v = json(&["keygen", "--out", p(&key), "--json"]);
    has_fields(&v, &["key_file", "verifier_key"], "keygen");

    let node = tmp.path().join("n");
    let v = json(&[
        "ledger",
        "init",
        "--dir",
        p(&node),
        "--org",
        "Org",
        "--sector",
        "science",
        "--json",
    ]);
    has_fields(
        &v,
        &["dir", "organisation", "sector", "verifier_key"],
        "ledger init",
    );
    assert_eq!(v["sector"], "science");
    let vk = json(&["ledger", "vkey", "--dir", p(&node), "--json"]);
    assert_eq!(vk["verifier_key"], v["verifier_key"]);
    let cp = json(&["ledger", "checkpoint", "--dir", p(&node), "--json"]);
    has_fields(&cp, &["size", "root", "note"], "ledger checkpoint");
    assert_eq!(cp["size"], 1);

    let bench = tmp.path().join("b");
    let v = bench_log(&bench, "20");
    has_fields(
        &v,
        &[
            "entries",
            "batch",
            "threads",
            "append_entries_per_s",
            "inclusion_proof_us",
            "consistency_proof_us",
            "audit_entries_per_s",
            "raw_verifications_per_s",
            "ratio",
        ],
        "ledger bench",
    );
    let v = json(&["audit", "--no-market", "--no-state", "--json", p(&bench)]);
    has_fields(&v, &["logs", "accounting"], "audit");
    has_fields(
        &v["logs"][0],
        &[
            "dir",
            "origin",
            "verifier_key",
            "size",
            "root",
            "signatures_verified",
            "cosigned_by",
            "consistent_with_size",
        ],
        "audit logs[0]",
    );
    has_fields(
        &v["accounting"],
        &["logs", "entries", "facts", "organisations", "sectors"],
        "audit accounting",
    );
    let v = json(&[
        "ledger",
        "prove",
        "--dir",
        p(&bench),
        "--index",
        "3",
        "--json",
    ]);
    has_fields(
        &v,
        &["type", "index", "size", "leaf_hash", "root", "proof"],
        "ledger prove",
    );

    // Training, evaluation and sampling of a tiny model on the cpu backend.
    let ckpt = tmp.path().join("t.ckpt");
    let corpus = repo_root().join("data/tinyshakespeare.txt");
    let tiny = [
        "--corpus",
        p(&corpus),
        "--backend",
        "cpu",
        "--preset",
        "demo",
        "--n-layer",
        "1",
        "--n-embd",
        "16",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--max-iters",
        "4",
        "--eval-iters",
        "2",
    ];
    let mut args = vec!["train", "--json", "--out", p(&ckpt)];
    args.extend(tiny);
    let t = json(&args);
    has_fields(
        &t,
        &[
            "backend",
            "parameters",
            "n_layer",
            "n_head",
            "n_embd",
            "block_size",
            "batch_size",
            "max_iters",
            "vocab",
            "corpus",
            "curve",
            "checkpoint",
            "params",
            "val_loss",
        ],
        "train",
    );
    // The preset filled what the flags left: the demo's 4 heads; the flags won elsewhere.
    assert_eq!(t["n_head"], 4);
    assert_eq!(t["n_embd"], 16);
    assert_eq!(t["curve"].as_array().unwrap().len(), 1, "{t}");
    let e = json(&[
        "eval",
        "--json",
        "--backend",
        "cpu",
        "--corpus",
        p(&corpus),
        "--eval-iters",
        "2",
        "--checkpoint",
        p(&ckpt),
    ]);
    has_fields(
        &e,
        &[
            "step",
            "eval_iters",
            "batch_size",
            "block_size",
            "backend",
            "params",
            "train_loss",
            "val_loss",
        ],
        "eval",
    );
    assert_eq!(e["params"], t["params"]);
    assert_eq!(e["val_loss"], t["val_loss"]);
    let s = json(&[
        "sample",
        "--json",
        "--backend",
        "cpu",
        "--tokens",
        "20",
        "--checkpoint",
        p(&ckpt),
    ]);
    assert!(s["text"].as_str().unwrap().chars().count() >= 20, "{s}");

    let st = json(&["compute", "selftest", "--json"]);
    has_fields(&st, &["adapters", "failed"], "compute selftest");
    assert_eq!(st["failed"], 0, "{st}");
    let b = json(&[
        "compute",
        "bench",
        "--backend",
        "cpu",
        "--reps",
        "1",
        "--json",
    ]);
    has_fields(
        &b,
        &[
            "reps",
            "threads",
            "shapes",
            "cpu_gops",
            "sgemm_gops",
            "ratio_all_shapes",
            "adapters",
            "ratio",
        ],
        "compute bench",
    );
    assert_eq!(b["adapters"], serde_json::json!([]), "cpu only: {b}");
}

#[test]
fn presets_are_complete_and_flags_override_them() {
    // With no flag but the preset and a short run, every nanoGPT setting shows in the header.
    let out = ok(&[
        "train",
        "--corpus",
        p(&repo_root().join("data/tinyshakespeare.txt")),
        "--backend",
        "cpu",
        "--quiet",
        "--preset",
        "nanogpt-cpu",
        "--max-iters",
        "1",
        "--eval-interval",
        "0",
        "--eval-iters",
        "1",
    ]);
    assert!(
        out.contains("n_layer 4 n_head 4 n_embd 128 block_size 64 batch_size 12 max_iters 1 |"),
        "{out}"
    );
    let out = ok(&[
        "train",
        "--corpus",
        p(&repo_root().join("data/tinyshakespeare.txt")),
        "--backend",
        "cpu",
        "--quiet",
        "--preset",
        "demo",
        "--n-head",
        "2",
        "--max-iters",
        "1",
        "--eval-iters",
        "1",
    ]);
    assert!(
        out.contains("n_layer 2 n_head 2 n_embd 64 block_size 32 batch_size 8 max_iters 1 |"),
        "{out}"
    );
}

#[test]
fn audit_state_goes_to_the_state_directory_not_the_working_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    bench_log(&dir, "10");
    let work = tmp.path().join("work");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&work).unwrap();
    let out = leam_in(
        &work,
        &[("XDG_STATE_HOME", &state)],
        &["audit", "--no-market", p(&dir)],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(state.join("leam/audit-state.json").is_file());
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    assert!(stderr(&out).contains(p(&state.join("leam/audit-state.json"))));
    // Without XDG_STATE_HOME: under $HOME/.local/state/leam.
    let home = tmp.path().join("home");
    let mut c = Command::new(env!("CARGO_BIN_EXE_leam"));
    let out = c
        .args(["audit", "--no-market", p(&dir)])
        .current_dir(&work)
        .env_remove("XDG_STATE_HOME")
        .env("HOME", &home)
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(home.join(".local/state/leam/audit-state.json").is_file());
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
}

/// The README's shell blocks and command table. Run here: the federation set-up (init, genesis
/// create and sign) and the audit of a node directory with the genesis; every command of the
/// table answers `--help`. Not run here: `leam node`, `leam peers` and the line that opens the
/// running node's web page (long-running nodes:
/// node/tests/federation.rs runs them), `cargo run --release -- demo` (minutes; node/tests/
/// demo.rs runs the demo with small flags), `cargo test --workspace --release`.
#[test]
fn readme_commands_run() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let block = readme
        .split("## A federation on one machine")
        .nth(1)
        .and_then(|r| r.split("```sh\n").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("the federation block");
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_leam")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for line in block.lines() {
        if line.contains("leam node") || line.contains("leam peers") || line.contains("http.addr") {
            continue;
        }
        let out = Command::new("sh")
            .args(["-ec", line])
            .current_dir(tmp.path())
            .env("PATH", &path)
            .env("XDG_STATE_HOME", tmp.path().join("state"))
            .output()
            .unwrap();
        assert_eq!(
            code(&out),
            Some(0),
            "README line `{line}`: {}",
            stderr(&out)
        );
        ran += 1;
    }
    assert_eq!(ran, 3, "init, genesis create, genesis sign:\n{block}");
    // "after stopping the nodes, `leam audit --genesis fed.genesis a` audits the federation".
    let audit = readme
        .split('`')
        .find(|s| s.starts_with("leam audit --genesis"))
        .expect("the README's audit command");
    let out = Command::new("sh")
        .args(["-ec", audit])
        .current_dir(tmp.path())
        .env("PATH", &path)
        .env("XDG_STATE_HOME", tmp.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(0), "`{audit}`: {}", stderr(&out));
    // The nodes never ran, so a holds no replicas yet: its own log is audited.
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("ok a:") && report.contains("1 logs"),
        "{report}"
    );
    assert!(tmp.path().join("state/leam/audit-state.json").is_file());

    // Every command of the table exists and answers --help.
    let table = readme
        .split("## Commands")
        .nth(1)
        .and_then(|r| r.split("\n\n").nth(1))
        .unwrap();
    let mut n = 0;
    for row in table.lines().filter(|l| l.starts_with("| `leam ")) {
        let cmd = row.split('`').nth(1).unwrap();
        let words: Vec<&str> = cmd
            .split_whitespace()
            .skip(1)
            .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase()))
            .collect();
        let mut args = words.clone();
        args.push("--help");
        let out = leam(&args);
        assert_eq!(code(&out), Some(0), "README `{cmd}`: {}", stderr(&out));
        n += 1;
    }
    assert!(n >= 15, "{n} commands in the README table");
}
