//! `leam train`, `leam eval`, `leam sample` on a tiny configuration: training is reproducible,
//! a checkpoint re-evaluates to exactly the loss training printed, and bad input is refused
//! with a precise message.

use std::path::Path;
use std::process::{Command, Output};

fn leam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap()
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{out}"))
}

#[test]
fn checkpoint_reevaluates_to_the_trained_loss_and_samples_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("tiny.ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    let tiny = [
        "train",
        "--backend",
        "cpu",
        "--quiet",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--max-iters",
        "6",
        "--eval-interval",
        "6",
        "--eval-iters",
        "3",
        "--out",
    ];
    let mut args = tiny.to_vec();
    args.push(ckpt_s);
    let a = leam(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let a_out = String::from_utf8_lossy(&a.stdout).to_string();
    // The last line is the validation loss, preceded by the parameter commitment.
    assert!(a_out
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .starts_with("val_loss "));
    let params = line(&a_out, "params ").to_string();
    let val = line(&a_out, "val_loss ").to_string();

    let e = leam(&[
        "eval",
        "--backend",
        "cpu",
        "--eval-iters",
        "3",
        "--checkpoint",
        ckpt_s,
    ]);
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    let e_out = String::from_utf8_lossy(&e.stdout);
    assert_eq!(line(&e_out, "params "), params);
    assert_eq!(line(&e_out, "val_loss "), val);

    let s1 = leam(&[
        "sample",
        "--backend",
        "cpu",
        "--tokens",
        "40",
        "--checkpoint",
        ckpt_s,
    ]);
    let s2 = leam(&[
        "sample",
        "--backend",
        "cpu",
        "--tokens",
        "40",
        "--checkpoint",
        ckpt_s,
    ]);
    assert!(
        s1.status.success(),
        "{}",
        String::from_utf8_lossy(&s1.stderr)
    );
    assert_eq!(s1.stdout, s2.stdout);
    assert!(s1.stdout.len() >= 40);

    // A corpus with another vocabulary is refused, naming both sizes.
    let other = tmp.path().join("other.txt");
    std::fs::write(&other, "abcabcabcabcabcabcabcabcabcabcabcabcabcabcabcabc").unwrap();
    let bad = leam(&[
        "eval",
        "--checkpoint",
        ckpt_s,
        "--corpus",
        other.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        msg.contains("vocabulary (3 characters) differs from the checkpoint's (65"),
        "{msg}"
    );

    // A truncated checkpoint is an error, not a panic.
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    let cut = leam(&["eval", "--checkpoint", ckpt_s]);
    assert!(!cut.status.success());
    assert!(String::from_utf8_lossy(&cut.stderr).starts_with("error: "));
}

/// `leam compute bench --train-step`: per step the wall time and the host↔device traffic, last
/// line `bytes_per_step`. The cpu backend computes in host memory (no traffic); a wgpu adapter
/// moves bytes both ways in every step and submits work to its queue.
#[test]
fn train_step_bench_counts_the_host_device_traffic() {
    let out = leam(&[
        "compute",
        "bench",
        "--train-step",
        "--backend",
        "cpu",
        "--preset",
        "demo",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let steps: Vec<&str> = text.lines().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 4, "{text}");
    for s in &steps {
        assert!(
            s.contains("uploaded_bytes 0 downloaded_bytes 0 submissions 0"),
            "{text}"
        );
    }
    assert_eq!(text.lines().last(), Some("bytes_per_step 0"), "{text}");
    assert!(
        text.contains("the batch's token ids are 2048 bytes"),
        "{text}"
    );

    let out = leam(&[
        "compute",
        "bench",
        "--train-step",
        "--backend",
        "wgpu",
        "--preset",
        "demo",
        "--json",
    ]);
    if out.status.code() == Some(3) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but no wgpu adapter: {out:?}"
        );
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no wgpu adapter for the --train-step traffic check"
        );
        return;
    }
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{v}");
    for s in steps {
        assert!(s["uploaded_bytes"].as_u64().unwrap() > 2048, "{v}");
        assert!(s["downloaded_bytes"].as_u64().unwrap() > 0, "{v}");
        assert!(s["submissions"].as_u64().unwrap() > 0, "{v}");
    }
    assert!(v["bytes_per_step"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn compute_probe_says_what_auto_takes_here() {
    // The child's answer (what `leam node` asks before opening its backend) is the decision
    // this process takes itself on the same machine.
    let out = leam(&["compute", "probe", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let here = leam_compute::numerics::backend::decide_auto_here();
    match here {
        leam_compute::numerics::backend::AutoDecision::Gpu => assert_eq!(v["backend"], "wgpu"),
        leam_compute::numerics::backend::AutoDecision::Cpu { reason, warning } => {
            assert_eq!(v["backend"], "cpu", "{v}");
            assert_eq!(v["reason"], reason.as_str(), "{v}");
            assert_eq!(v["warning"].as_str(), warning.as_deref(), "{v}");
        }
    }
    let human = leam(&["compute", "probe"]);
    assert!(human.status.success());
    assert!(String::from_utf8_lossy(&human.stdout)
        .starts_with(&format!("backend {}", v["backend"].as_str().unwrap())));
}
