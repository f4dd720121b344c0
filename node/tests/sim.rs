//! The in-process simulation: 64 federation nodes, each a real libp2p swarm on loopback with
//! its own sled ledger and replicas, driven by the same `leam-net` code as `leam node`. Gossip
//! and replication must converge: every node connects to every member, every node holds every
//! member's log at its owner's size, and every signed checkpoint reaches every node. The
//! figures it prints are reported, not asserted (this machine is shared and noisy).

use std::process::Command;

#[test]
fn sixty_four_nodes_converge() {
    let out = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args([
            "sim",
            "--nodes",
            "64",
            "--messages",
            "10",
            "--interval-ms",
            "300",
            "--entries",
            "2000",
            "--json",
        ])
        .output()
        .expect("leam sim runs");
    assert!(
        out.status.success(),
        "leam sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{v}");
    assert_eq!(v["nodes"], 64);
    assert_eq!(v["messages"], 10);
    for k in [
        "connect_ms",
        "replication_converged_ms",
        "propagation_ms_p50",
        "propagation_ms_p99",
        "replication_entries_per_s",
        "audit_entries_per_s",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k} measured: {v}");
    }
}

/// The same federation code over libp2p's in-process memory transport (`leam sim --memory`):
/// every member connects and every checkpoint reaches every node.
#[test]
fn nodes_converge_over_the_memory_transport() {
    let out = Command::new(env!("CARGO_BIN_EXE_leam"))
        .args([
            "sim",
            "--nodes",
            "8",
            "--messages",
            "3",
            "--interval-ms",
            "200",
            "--entries",
            "0",
            "--memory",
            "--json",
        ])
        .output()
        .expect("leam sim runs");
    assert!(
        out.status.success(),
        "leam sim --memory failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"], 8);
    assert_eq!(v["messages"], 3);
    assert!(
        v["propagation_ms_p50"].as_f64().is_some_and(|x| x > 0.0),
        "{v}"
    );
}
