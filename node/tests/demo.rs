//! `leam demo` end to end: a short federation run trains, catches the tampered shard, settles,
//! and leaves ledgers that an independent `leam audit` run accepts.

use std::process::Command;

#[test]
fn demo_trains_verifies_settles_and_its_ledgers_audit_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("fed");
    // From the repository root, where the demo finds data/tinyshakespeare.txt itself.
    let out = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(["demo", "--rounds", "2", "--steps", "4", "--dir"])
        .arg(&root)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Honest shards are accepted, the tampered one is bisected, refereed and rejected.
    assert_eq!(
        stdout.matches("commitments match, accepted").count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("referee replayed that one step: the provider is wrong"),
        "{stdout}"
    );
    assert!(
        stdout.contains("recorded a rejecting verdict and evidence against Industrie Compute AG")
    );
    // It says what is not built instead of pretending.
    assert!(stdout.contains("not built yet"));
    // The report charges the evidence to the private sector and pays only verified units.
    let private = stdout
        .lines()
        .find(|l| l.starts_with("private "))
        .expect("private sector line");
    assert!(private.trim_end().ends_with(" 1"), "{private}");

    // An independent audit of the four ledgers passes, and again with the auditor state.
    let dirs = [
        "rechenzentrum-nord",
        "industrie-compute",
        "universitaet-sued",
        "sprachwerk-startup",
    ];
    let state = tmp.path().join("auditor.json");
    for _ in 0..2 {
        let audit = Command::new(env!("CARGO_BIN_EXE_leam"))
            .arg("audit")
            .arg("--state")
            .arg(&state)
            .args(dirs.iter().map(|d| root.join(d)))
            .output()
            .unwrap();
        assert!(
            audit.status.success(),
            "audit failed: {}{}",
            String::from_utf8_lossy(&audit.stdout),
            String::from_utf8_lossy(&audit.stderr)
        );
    }
    // A second demo into the same directory is refused rather than mixing federations.
    let again = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args(["demo", "--dir"])
        .arg(&root)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}
