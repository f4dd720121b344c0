//! Property tests of `merkle`: the storage-based tree (tlog layout) agrees with the
//! RFC 9162 definitions, proofs round-trip, and proofs for anything else fail.

use leam_ledger::merkle::{self, Hash, MemoryTree, MerkleError};
use proptest::prelude::*;

/// Largest random tree; keeps each case fast (the RFC reference is O(n) per proof).
const TREE_LEAVES_MAX: usize = 300;

fn leaves(n: usize, seed: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| merkle::leaf_hash(format!("{seed}:{i}").as_bytes()))
        .collect()
}

fn tree_of(leaves: &[Hash]) -> MemoryTree {
    let mut t = MemoryTree::new();
    for l in leaves {
        t.append(*l).unwrap();
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn stored_tree_hash_equals_root_of(n in 0..TREE_LEAVES_MAX, seed: u64) {
        let l = leaves(n, seed);
        let t = tree_of(&l);
        prop_assert_eq!(t.stored_hashes().len() as u64, merkle::stored_hash_count(n as u64));
        for size in [0, n / 3, n / 2, n] {
            prop_assert_eq!(t.root_at(size as u64).unwrap(), merkle::root_of(&l[..size]));
        }
    }

    #[test]
    fn inclusion_round_trips_and_rejects_others(
        n in 1..TREE_LEAVES_MAX, seed: u64, i in any::<prop::sample::Index>(), j in any::<prop::sample::Index>(),
    ) {
        let l = leaves(n, seed);
        let t = tree_of(&l);
        let size = 1 + j.index(n) as u64;           // any tree size up to n
        let idx = i.index(size as usize) as u64;     // any record in it
        let root = merkle::root_of(&l[..size as usize]);
        let proof = t.prove_record(size, idx).unwrap();
        prop_assert_eq!(&proof, &merkle::inclusion_proof_of(&l[..size as usize], idx as usize));
        prop_assert_eq!(merkle::check_record(&proof, size, &root, idx, &l[idx as usize]), Ok(()));

        // Another leaf, another root, another index: all fail.
        let other = merkle::leaf_hash(b"not in the tree");
        prop_assert!(merkle::check_record(&proof, size, &root, idx, &other).is_err());
        prop_assert!(merkle::check_record(&proof, size, &other, idx, &l[idx as usize]).is_err());
        if size > 1 {
            let idx2 = (idx + 1) % size;
            prop_assert!(merkle::check_record(&proof, size, &root, idx2, &l[idx as usize]).is_err());
        }
        // The same proof against another tree size (with that size's true root) fails.
        if (size as usize) < n {
            let root2 = merkle::root_of(&l[..size as usize + 1]);
            prop_assert!(merkle::check_record(&proof, size + 1, &root2, idx, &l[idx as usize]).is_err());
        }
        prop_assert_eq!(
            merkle::check_record(&proof, size, &root, size, &l[idx as usize]),
            Err(MerkleError::IndexOutOfRange { index: size, tree_size: size })
        );
        // A flipped bit anywhere in the proof fails.
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let k = idx as usize % bad.len();
            bad[k][0] ^= 1;
            prop_assert!(merkle::check_record(&bad, size, &root, idx, &l[idx as usize]).is_err());
        }
    }

    #[test]
    fn consistency_round_trips_and_rejects_others(
        n in 1..TREE_LEAVES_MAX, seed: u64, a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>(),
    ) {
        let l = leaves(n, seed);
        let t = tree_of(&l);
        let (x, y) = (1 + a.index(n), 1 + b.index(n));
        let (old, new) = (x.min(y) as u64, x.max(y) as u64);
        let root_old = merkle::root_of(&l[..old as usize]);
        let root_new = merkle::root_of(&l[..new as usize]);
        let proof = t.prove_tree(new, old).unwrap();
        prop_assert_eq!(&proof, &merkle::consistency_proof_of(&l[..new as usize], old as usize));
        prop_assert_eq!(proof.len(), merkle::tree_proof_len(new, old));
        prop_assert_eq!(merkle::check_tree(&proof, new, &root_new, old, &root_old), Ok(()));

        // A forked history: same sizes, the old tree's last leaf differs.
        let mut forked = l[..old as usize].to_vec();
        forked[old as usize - 1] = merkle::leaf_hash(b"fork");
        let root_fork = merkle::root_of(&forked);
        prop_assert!(merkle::check_tree(&proof, new, &root_new, old, &root_fork).is_err());
        prop_assert!(merkle::check_tree(&proof, new, &root_fork, old, &root_old).is_err());
        // A different old size with the same proof fails (unless the proof happens to be
        // valid for it too, which the reference proof tells us).
        if old > 1 {
            let root_prev = merkle::root_of(&l[..old as usize - 1]);
            let valid = merkle::consistency_proof_of(&l[..new as usize], old as usize - 1) == proof;
            prop_assert_eq!(merkle::check_tree(&proof, new, &root_new, old - 1, &root_prev).is_ok(), valid);
        }
        // The same proof for a larger new size (with its true root) fails.
        if (new as usize) < n {
            let root_next = merkle::root_of(&l[..new as usize + 1]);
            prop_assert!(merkle::check_tree(&proof, new + 1, &root_next, old, &root_old).is_err());
        }
        prop_assert_eq!(
            merkle::check_tree(&proof, old, &root_old, new + 1, &root_new),
            Err(MerkleError::InvalidSizes { old_size: new + 1, new_size: old })
        );
    }
}

#[test]
fn stored_hashes_for_record_hash_extends_storage_consistently() {
    let mut stored: Vec<Hash> = Vec::new();
    let l = leaves(37, 7);
    for (i, leaf) in l.iter().enumerate() {
        let add = merkle::stored_hashes_for_record_hash(i as u64, *leaf, &stored).unwrap();
        assert_eq!(add[0], *leaf);
        stored.extend(add);
        assert_eq!(stored.len() as u64, merkle::stored_hash_count(i as u64 + 1));
        assert_eq!(
            merkle::tree_hash(i as u64 + 1, &stored).unwrap(),
            merkle::root_of(&l[..=i])
        );
    }
    // A proof of a tree larger than what is stored names the missing hash.
    assert!(matches!(
        merkle::prove_record(38, 0, &stored),
        Err(MerkleError::MissingStoredHash { .. })
    ));
}
