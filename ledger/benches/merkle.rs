//! Inclusion-proof generation and verification on a 2^20-leaf tree held in memory
//! (stored-hash layout), against one raw SHA-256 of 64 bytes measured in the same run.
//!
//! `cargo bench -p leam-ledger --bench merkle` runs criterion's measurements, then prints
//! a summary measured in this process: ns per operation and the ratio to one SHA-256 of
//! 64 bytes. `-- --quick` (or LEAM_BENCH_QUICK=1) shortens the summary for CI smoke runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use leam_ledger::merkle::{self, Hash, MemoryTree};
use sha2::{Digest, Sha256};

/// Leaves in the benchmark tree.
const TREE_LEAVES: u64 = 1 << 20;
/// Wall time each summary measurement runs for.
const SUMMARY_TIME: Duration = Duration::from_millis(700);

fn build_tree() -> MemoryTree {
    let mut t = MemoryTree::new();
    for i in 0..TREE_LEAVES {
        t.append(merkle::leaf_hash(&i.to_le_bytes()))
            .expect("in-memory append");
    }
    t
}

/// A cheap deterministic index sequence (xorshift), so runs are reproducible.
fn next_index(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % TREE_LEAVES
}

fn bench(c: &mut Criterion, tree: &MemoryTree) {
    let size = tree.size();
    let root = tree.root();
    let block = [7u8; 64];
    c.bench_function("sha256_64_bytes", |b| {
        b.iter(|| Sha256::digest(black_box(block)))
    });
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    c.bench_function("prove_record_2^20", |b| {
        b.iter(|| tree.prove_record(size, next_index(&mut s)).expect("proof"))
    });
    let proofs: Vec<(u64, Vec<Hash>)> = (0..1024)
        .map(|_| {
            let i = next_index(&mut s);
            (i, tree.prove_record(size, i).expect("proof"))
        })
        .collect();
    let leaves: Vec<Hash> = proofs
        .iter()
        .map(|(i, _)| merkle::leaf_hash(&i.to_le_bytes()))
        .collect();
    let mut k = 0usize;
    c.bench_function("check_record_2^20", |b| {
        b.iter(|| {
            k = (k + 1) % proofs.len();
            let (i, p) = &proofs[k];
            merkle::check_record(p, size, &root, *i, &leaves[k]).expect("valid proof")
        })
    });
}

/// Mean ns per call of `f`, run repeatedly for about `time`.
fn ns_per_op(time: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < time {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn summary(tree: &MemoryTree, time: Duration) {
    let size = tree.size();
    let root = tree.root();
    let block = [7u8; 64];
    let sha = ns_per_op(time, || {
        black_box(Sha256::digest(black_box(block)));
    });
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let prove = ns_per_op(time, || {
        black_box(tree.prove_record(size, next_index(&mut s)).expect("proof"));
    });
    let (i, p) = (123_457u64, tree.prove_record(size, 123_457).expect("proof"));
    let leaf = merkle::leaf_hash(&i.to_le_bytes());
    let check = ns_per_op(time, || {
        merkle::check_record(black_box(&p), size, &root, i, &leaf).expect("valid proof");
    });
    println!(
        "summary (same process, tree of 2^20 leaves, proof of {} hashes):",
        p.len()
    );
    println!("  sha256(64 bytes):  {sha:9.1} ns");
    println!(
        "  prove_record:      {prove:9.1} ns  = {:.2} x sha256",
        prove / sha
    );
    println!(
        "  check_record:      {check:9.1} ns  = {:.2} x sha256",
        check / sha
    );
}

fn main() {
    let quick =
        std::env::args().any(|a| a == "--quick") || std::env::var_os("LEAM_BENCH_QUICK").is_some();
    let t0 = Instant::now();
    let tree = build_tree();
    println!(
        "built 2^20-leaf tree ({} stored hashes) in {:.2} s",
        tree.stored_hashes().len(),
        t0.elapsed().as_secs_f64()
    );
    if !quick {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c, &tree);
        c.final_summary();
    }
    summary(
        &tree,
        if quick {
            SUMMARY_TIME / 4
        } else {
            SUMMARY_TIME
        },
    );
}
