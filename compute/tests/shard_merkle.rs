//! The step-commitment Merkle helper (`commit.rs`) against the transparency-dev RFC 6962/9162
//! inclusion-proof vectors (including every case that must fail), and root/proof agreement on
//! trees of every size up to 70.

use leam_compute::verify::commit::{
    inclusion_proof, leaf_hash, root_from_leaf_hashes, verify_inclusion, Hash32, StepLog,
};
use std::path::{Path, PathBuf};

/// Standard base64 decoding of a test-vector field (`None` if malformed).
fn b64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn hash32(v: &serde_json::Value) -> Option<Hash32> {
    b64(v.as_str()?)?.try_into().ok()
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ledger/tests/data/merkle-vectors/testdata/inclusion")
}

#[test]
fn transparency_dev_inclusion_vectors() {
    let mut checked = (0, 0);
    let mut files = Vec::new();
    let mut pending = vec![vectors_dir()];
    while let Some(dir) = pending.pop() {
        for e in
            std::fs::read_dir(&dir).expect("merkle vectors are checked in under ledger/tests/data")
        {
            let path = e.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    for f in files {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let want_err = v["wantErr"].as_bool().unwrap();
        let index = v["leafIdx"].as_u64().unwrap();
        let size = v["treeSize"].as_u64().unwrap();
        let proof: Option<Vec<Hash32>> = match &v["proof"] {
            serde_json::Value::Null => Some(Vec::new()),
            p => p.as_array().unwrap().iter().map(hash32).collect(),
        };
        let ok = match (hash32(&v["root"]), hash32(&v["leafHash"]), proof) {
            (Some(root), Some(leaf), Some(proof)) => {
                verify_inclusion(&leaf, index, size, &proof, &root).is_ok()
            }
            _ => false,
        };
        assert_eq!(ok, !want_err, "{}: {}", f.display(), v["desc"]);
        if want_err {
            checked.1 += 1;
        } else {
            checked.0 += 1;
        }
    }
    assert!(
        checked.0 >= 5 && checked.1 >= 50,
        "too few vectors found: {checked:?}"
    );
}

#[test]
fn proofs_of_every_leaf_of_every_size_verify() {
    for n in 1..=70u64 {
        let log: StepLog = (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let root = log.root();
        let leaves: Vec<Hash32> = log.state_hashes().iter().map(|h| leaf_hash(h)).collect();
        assert_eq!(root, root_from_leaf_hashes(&leaves));
        for i in 0..n {
            let p = log.prove(i).unwrap();
            assert_eq!(p.proof, inclusion_proof(&leaves, i).unwrap());
            p.verify(n, &root).unwrap();
            // (A proof need not fail for another tree size: leaf 0 of 3 and of 4 share a proof
            // shape. The size is bound by the shard result, not by the proof.)
            if n > 1 {
                let mut wrong = p.clone();
                wrong.step = (i + 1) % n;
                assert!(wrong.verify(n, &root).is_err(), "n {n} i {i}");
            }
        }
    }
}

/// Cost of serving bisection proofs from a full-size step log, against recomputing each proof
/// from the leaves (`inclusion_proof`), in the same process. Run with
/// `cargo test --release -p leam-compute --test shard_merkle -- --ignored --nocapture`.
#[test]
#[ignore = "timing report, run on demand in release mode"]
fn proof_serving_cost_at_shard_steps_max() {
    use std::time::Instant;
    let n = leam_compute::verify::shard::SHARD_STEPS_MAX as u64;
    let t = Instant::now();
    let log: StepLog = (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    let build = t.elapsed();
    let t = Instant::now();
    let root = log.root();
    let proofs: Vec<_> = (0..21)
        .map(|j| log.prove(j * 49_999 % n).unwrap())
        .collect();
    let served = t.elapsed();
    let leaves: Vec<Hash32> = log.state_hashes().iter().map(|h| leaf_hash(h)).collect();
    let t = Instant::now();
    for p in &proofs {
        assert_eq!(p.proof, inclusion_proof(&leaves, p.step).unwrap());
        p.verify(n, &root).unwrap();
    }
    let naive = t.elapsed();
    println!(
        "{n} leaves: log built in {build:?}; root + 21 proofs from the log {served:?}; \
         21 proofs recomputed from the leaves {naive:?}; ratio {:.0}",
        naive.as_secs_f64() / served.as_secs_f64()
    );
}
