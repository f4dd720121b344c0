//! The worked example of `specs/shard.md`, checked byte for byte against the code: the spec's
//! encoding and id, a result's encoding, and a step tree's root and inclusion proof.

use leam_compute::verify::commit::{Hash32, StepLog};
use leam_compute::verify::shard::{compute_units, nanogpt_cpu_spec, ShardResult, ShardSpec};
use sha2::{Digest, Sha256};

/// The hex inside the fenced block of `specs/shard.md` that follows a line `<!-- golden:NAME -->`.
fn golden(name: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/shard.md"))
        .expect("specs/shard.md exists");
    let marker = format!("<!-- golden:{name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in specs/shard.md"));
    let rest = &doc[at + marker.len()..];
    let open = rest.find("```").expect("fenced block after marker");
    let body = &rest[open + 3..];
    let body = &body[body.find('\n').expect("fence line ends") + 1..];
    let close = body.find("```").expect("fence closes");
    body[..close].split_whitespace().collect()
}

fn h(s: &str) -> Hash32 {
    hex::decode(s).unwrap().try_into().unwrap()
}

fn example_spec() -> ShardSpec {
    let corpus = h("86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed");
    let start: Hash32 = Sha256::digest(b"example start state").into();
    nanogpt_cpu_spec(start, corpus, 1_115_394, 1337, 500, 250)
}

fn example_log() -> StepLog {
    (0u32..250)
        .map(|i| Sha256::digest(format!("example state after step {i}")).into())
        .collect()
}

fn example_result() -> ShardResult {
    let spec = example_spec();
    let log = example_log();
    ShardResult {
        shard_id: spec.id(),
        steps: spec.steps,
        final_state: log.state_hash(249).unwrap(),
        delta_commitment: Sha256::digest(b"example delta").into(),
        step_root: log.root(),
        compute_units: compute_units(&spec),
        fingerprint: "cpu/x86_64/dgemm".into(),
    }
}

/// Prints the values of the worked example, to regenerate `specs/shard.md` after a deliberate
/// format change; the tests below check every golden block of the document.
#[test]
#[ignore = "prints the golden values, checks nothing: run with `cargo test --release -p leam-compute --test shard_golden -- --ignored --nocapture print_golden_values`"]
fn print_golden_values() {
    let spec = example_spec();
    println!("spec {}", hex::encode(spec.encode()));
    println!("id {}", hex::encode(spec.id()));
    println!("result {}", hex::encode(example_result().encode()));
    println!("root {}", hex::encode(example_log().root()));
    let p = example_log().prove(100).unwrap();
    println!("leaf100 {}", hex::encode(p.state_hash));
    for x in p.proof {
        println!("proof {}", hex::encode(x));
    }
    println!("units {}", compute_units(&spec));
}

#[test]
fn spec_encoding_and_id_match_the_document() {
    let spec = example_spec();
    assert_eq!(hex::encode(spec.encode()), golden("spec"));
    assert_eq!(hex::encode(spec.id()), golden("spec-id"));
    let bytes = hex::decode(golden("spec")).unwrap();
    assert_eq!(
        ShardSpec::decode_verified(&bytes, &spec.id()).unwrap(),
        spec
    );
}

#[test]
fn result_encoding_matches_the_document() {
    let r = example_result();
    assert_eq!(hex::encode(r.encode()), golden("result"));
    let decoded = ShardResult::decode(&hex::decode(golden("result")).unwrap()).unwrap();
    assert_eq!(decoded, r);
    decoded.check_against(&example_spec()).unwrap();
}

#[test]
fn step_tree_matches_the_document() {
    let log = example_log();
    assert_eq!(hex::encode(log.root()), golden("step-root"));
    let p = log.prove(100).unwrap();
    let proof: String = p.proof.iter().map(hex::encode).collect();
    assert_eq!(proof, golden("proof-100"));
    p.verify(250, &log.root()).unwrap();
}
