//! Checkpoints, witnesses and equivocation evidence working together, end to end:
//! a log grows, a witness cosigns, the log forks, the witness refuses and the evidence
//! it hands out convinces an independent verifier.

use ed25519_dalek::SigningKey;
use leam_ledger::checkpoint::{self, Checkpoint, Cosigner};
use leam_ledger::evidence::{Equivocation, EquivocationKind, EvidenceError};
use leam_ledger::merkle::{self, Hash, MemoryTree};
use leam_ledger::note::{Note, Signer};
use leam_ledger::witness::{FileState, Witness, WitnessError, WitnessState};

const ORIGIN: &str = "leam.ledger/test";
const NOW: u64 = 1_790_000_000;

struct Log {
    signer: Signer,
    tree: MemoryTree,
}

impl Log {
    fn new(seed: u8) -> Log {
        Log {
            signer: Signer::new(ORIGIN, SigningKey::from_bytes(&[seed; 32])).unwrap(),
            tree: MemoryTree::new(),
        }
    }
    fn append(&mut self, n: usize, tag: &str) {
        for i in 0..n {
            let leaf = merkle::leaf_hash(format!("{tag}{}:{i}", self.tree.size()).as_bytes());
            self.tree.append(leaf).unwrap();
        }
    }
    fn checkpoint(&self) -> String {
        Checkpoint::new(ORIGIN, self.tree.size(), self.tree.root())
            .unwrap()
            .sign(&self.signer)
            .unwrap()
    }
    fn proof(&self, from: u64) -> Vec<Hash> {
        if from == 0 {
            return Vec::new();
        }
        self.tree.prove_tree(self.tree.size(), from).unwrap()
    }
}

fn witness(dir: &std::path::Path) -> Witness<FileState> {
    let cosigner = Cosigner::new("witness.example/w1", SigningKey::from_bytes(&[42; 32])).unwrap();
    Witness::new(cosigner, FileState::open(dir).unwrap())
}

#[test]
fn witness_follows_an_honest_log_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new(1);
    let vk = log.signer.verifier().clone();
    let mut w = witness(dir.path());

    log.append(5, "");
    let cp5 = log.checkpoint();
    let line = w.cosign(cp5.as_bytes(), &vk, &[], NOW).unwrap();
    // The returned line verifies as a cosignature on the log's note.
    let cosigned = format!("{cp5}{line}");
    let (_, note) = Checkpoint::open(cosigned.as_bytes(), &vk).unwrap();
    assert_eq!(
        checkpoint::verify_cosignature(&note, w.cosigner().verifier()),
        Ok(NOW)
    );

    // Same checkpoint again: fine (empty proof, equal roots).
    w.cosign(cp5.as_bytes(), &vk, &[], NOW + 1).unwrap();

    log.append(8, "");
    let cp13 = log.checkpoint();
    w.cosign(cp13.as_bytes(), &vk, &log.proof(5), NOW + 2)
        .unwrap();

    // A restarted witness (fresh FileState on the same directory) remembers size 13.
    let mut w2 = witness(dir.path());
    let stored = w2.state().load(ORIGIN).unwrap().unwrap();
    assert_eq!(stored.checkpoint, cp13);
    let err = w2.cosign(cp5.as_bytes(), &vk, &[], NOW + 3).unwrap_err();
    assert!(
        matches!(
            err,
            WitnessError::Rollback {
                cosigned_size: 13,
                offered_size: 5,
                ..
            }
        ),
        "{err}"
    );
    // No proof for a grown log: refused, state unchanged.
    log.append(1, "");
    let cp14 = log.checkpoint();
    let err = w2.cosign(cp14.as_bytes(), &vk, &[], NOW + 4).unwrap_err();
    assert!(matches!(err, WitnessError::Inconsistent { .. }), "{err}");
    assert_eq!(w2.state().load(ORIGIN).unwrap().unwrap().checkpoint, cp13);
    w2.cosign(cp14.as_bytes(), &vk, &log.proof(13), NOW + 5)
        .unwrap();
}

#[test]
fn forked_log_yields_conclusive_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let mut honest = Log::new(1);
    honest.append(6, "");
    let vk = honest.signer.verifier().clone();
    let mut w = witness(dir.path());
    let cp6 = honest.checkpoint();
    w.cosign(cp6.as_bytes(), &vk, &[], NOW).unwrap();

    // Same size, different root: conclusive.
    let mut fork = Log::new(1);
    fork.append(5, "");
    fork.append(1, "evil");
    let fork6 = fork.checkpoint();
    let WitnessError::Inconsistent { evidence, .. } =
        w.cosign(fork6.as_bytes(), &vk, &[], NOW).unwrap_err()
    else {
        panic!("expected Inconsistent")
    };
    assert_eq!(
        evidence.verify(),
        Ok(EquivocationKind::SameSizeDifferentRoots { size: 6 })
    );
    // The encoding is portable: decode and verify again.
    let decoded = Equivocation::decode(evidence.encode().as_bytes()).unwrap();
    assert_eq!(decoded, *evidence);
    assert!(decoded.verify_conclusive().is_ok());

    // Larger forked tree with the log's own (self-consistent) proof: the proof leads to
    // the fork's root and to a size-6 prefix root that differs from the signed one.
    fork.append(4, "evil");
    let fork10 = fork.checkpoint();
    let served = fork.proof(6);
    let WitnessError::Inconsistent { evidence, .. } =
        w.cosign(fork10.as_bytes(), &vk, &served, NOW).unwrap_err()
    else {
        panic!("expected Inconsistent")
    };
    match evidence.verify() {
        Ok(EquivocationKind::ForkedPrefix {
            old_size: 6,
            new_size: 10,
            prefix_root,
        }) => {
            assert_eq!(prefix_root, fork.tree.root_at(6).unwrap());
        }
        other => panic!("{other:?}"),
    }
    // Without the proof the same pair is only "unproven".
    let bare = Equivocation::new(&vk.to_string(), &cp6, &fork10, Vec::new());
    assert_eq!(
        bare.verify(),
        Ok(EquivocationKind::Unproven {
            old_size: 6,
            new_size: 10
        })
    );
    assert_eq!(
        bare.verify_conclusive(),
        Err(EvidenceError::NotConclusive {
            old_size: 6,
            new_size: 10
        })
    );
}

#[test]
fn forged_evidence_is_rejected() {
    let mut log = Log::new(1);
    log.append(3, "");
    let cp3 = log.checkpoint();
    log.append(4, "");
    let cp7 = log.checkpoint();
    let vkey = log.signer.verifier().to_string();

    // Consistent checkpoints with the real proof.
    let e = Equivocation::new(&vkey, &cp3, &cp7, log.proof(3));
    assert_eq!(
        e.verify(),
        Err(EvidenceError::Consistent {
            old_size: 3,
            new_size: 7
        })
    );
    // The same checkpoint twice.
    let e = Equivocation::new(&vkey, &cp7, &cp7, Vec::new());
    assert!(matches!(
        e.verify(),
        Err(EvidenceError::NotEquivocation { .. })
    ));

    // A "fork" signed by another key under the same name.
    let mut other = Log::new(2);
    other.append(7, "x");
    let e = Equivocation::new(&vkey, &cp7, &other.checkpoint(), Vec::new());
    assert!(matches!(
        e.verify(),
        Err(EvidenceError::Checkpoint { which: "b", .. })
    ));

    // A tampered note (size changed after signing).
    let tampered = cp7.replacen("\n7\n", "\n8\n", 1);
    let e = Equivocation::new(&vkey, &cp7, &tampered, Vec::new());
    assert!(matches!(
        e.verify(),
        Err(EvidenceError::Checkpoint { which: "b", .. })
    ));

    // A different log (other origin) is not evidence against this one.
    let s = Signer::new("leam.ledger/other", SigningKey::from_bytes(&[1; 32])).unwrap();
    let foreign = Checkpoint::new("leam.ledger/other", 7, [9; 32])
        .unwrap()
        .sign(&s)
        .unwrap();
    let e = Equivocation::new(&vkey, &cp7, &foreign, Vec::new());
    assert!(matches!(
        e.verify(),
        Err(EvidenceError::Checkpoint { which: "b", .. })
    ));

    // Wrong-length proof.
    let e = Equivocation::new(&vkey, &cp3, &cp7, vec![[0; 32]]);
    assert!(matches!(e.verify(), Err(EvidenceError::Proof(_))));
}

#[test]
fn witness_rejects_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new(1);
    log.append(2, "");
    let vk = log.signer.verifier().clone();
    let mut w = witness(dir.path());
    let cp = log.checkpoint();

    // Not signed by the log key.
    let imposter = Log::new(3);
    let err = w
        .cosign(cp.as_bytes(), imposter.signer.verifier(), &[], NOW)
        .unwrap_err();
    assert!(matches!(err, WitnessError::Checkpoint(_)), "{err}");
    // Cosigner keys are not log keys.
    let err = w
        .cosign(cp.as_bytes(), &w.cosigner().verifier().clone(), &[], NOW)
        .unwrap_err();
    assert!(matches!(err, WitnessError::NotLogKey { .. }), "{err}");
    // A size-0 checkpoint must carry SHA-256("").
    let bad_empty = Checkpoint::new(ORIGIN, 0, [1; 32])
        .unwrap()
        .sign(&log.signer)
        .unwrap();
    let err = w.cosign(bad_empty.as_bytes(), &vk, &[], NOW).unwrap_err();
    assert!(matches!(err, WitnessError::FalseEmptyRoot { .. }), "{err}");
    // Nothing was stored by any failure.
    assert_eq!(w.state().load(ORIGIN).unwrap(), None);

    // Key rotation is refused (the state follows one key).
    w.cosign(cp.as_bytes(), &vk, &[], NOW).unwrap();
    let mut rotated = Log::new(4);
    rotated.append(2, "");
    let err = w
        .cosign(
            rotated.checkpoint().as_bytes(),
            rotated.signer.verifier(),
            &[],
            NOW,
        )
        .unwrap_err();
    assert!(matches!(err, WitnessError::LogKeyChanged { .. }), "{err}");

    // A corrupted state file is reported, not silently replaced.
    let path = w.state().path(ORIGIN);
    std::fs::write(&path, b"{\"type\":\"leam-witness-state/v1\"").unwrap();
    let err = w.cosign(cp.as_bytes(), &vk, &[], NOW).unwrap_err();
    assert!(matches!(err, WitnessError::StateCorrupt { .. }), "{err}");
}

#[test]
fn cosigned_note_keeps_all_signatures() {
    let mut log = Log::new(1);
    log.append(3, "");
    let vk = log.signer.verifier().clone();
    let cp = log.checkpoint();
    let mut note = Note::parse(cp.as_bytes()).unwrap();
    let mut cosigners = Vec::new();
    for i in 0..5u8 {
        let c = Cosigner::new(
            &format!("w{i}.example"),
            SigningKey::from_bytes(&[100 + i; 32]),
        )
        .unwrap();
        note.add_signature(c.cosign(&note.text, NOW + u64::from(i)).unwrap())
            .unwrap();
        cosigners.push(c);
    }
    let text = note.encode();
    let (_, opened) = Checkpoint::open(text.as_bytes(), &vk).unwrap();
    for (i, c) in cosigners.iter().enumerate() {
        assert_eq!(
            checkpoint::verify_cosignature(&opened, c.verifier()),
            Ok(NOW + i as u64)
        );
    }
}

#[test]
fn leftover_temp_file_from_a_crash_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::new(1);
    log.append(3, "");
    let vk = log.signer.verifier().clone();
    let mut w = witness(dir.path());
    let cp3 = log.checkpoint();
    w.cosign(cp3.as_bytes(), &vk, &[], NOW).unwrap();
    // A crash between writing the temp file and the rename leaves a partial temp file:
    // the state is still the last complete one, and the next store replaces the temp.
    let path = w.state().path(ORIGIN);
    std::fs::write(path.with_extension("json.tmp"), b"{\"type\":\"leam-wit").unwrap();
    let mut w2 = witness(dir.path());
    assert_eq!(w2.state().load(ORIGIN).unwrap().unwrap().checkpoint, cp3);
    log.append(2, "");
    w2.cosign(log.checkpoint().as_bytes(), &vk, &log.proof(3), NOW + 1)
        .unwrap();
    assert!(!path.with_extension("json.tmp").exists());
    assert_eq!(
        w2.state().load(ORIGIN).unwrap().unwrap().checkpoint,
        log.checkpoint()
    );
}
