//! Per-step commitments: the state hash after every inner step of a shard, committed as an
//! RFC 6962 / RFC 9162 §2.1 Merkle tree, with inclusion proofs for single step hashes.
//!
//! Leaf `i` of a shard's step tree is the 32-byte state hash after inner step `i` (0-based;
//! the state *before* step 0 is the shard's committed starting state). Leaf hash =
//! SHA-256(0x00 ‖ state_hash), node hash = SHA-256(0x01 ‖ left ‖ right), the tree splits at the
//! largest power of two below its size. The empty tree's root is SHA-256 of the empty string.
//!
//! Hand-written (about 60 lines of hashing) rather than depending on the ledger crate or a Merkle
//! crate because compute must not depend on the ledger and the two functions we need (root and
//! inclusion proof with its verifier) are small enough to check against the transparency-dev
//! vectors in `compute/tests/shard_merkle.rs`.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash32 = [u8; 32];

/// Longest inclusion proof accepted, in hashes (a tree of 2^63 leaves needs 63).
pub const INCLUSION_PROOF_HASHES_MAX: usize = 63;

/// Errors of Merkle proof construction and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    IndexOutOfRange {
        /// Requested leaf index.
        index: u64,
        /// Tree size in leaves.
        size: u64,
    },
    /// The proof has a different number of hashes than the tree shape requires.
    #[error("inclusion proof for leaf {index} of {size} has {found} hashes, expected {expected}")]
    ProofLength {
        /// Leaf index.
        index: u64,
        /// Tree size.
        size: u64,
        /// Hashes the shape requires.
        expected: usize,
        /// Hashes supplied.
        found: usize,
    },
    /// The proof is well formed but does not lead to the claimed root.
    #[error(
        "inclusion proof for leaf {index} of {size} yields root {computed}, expected {expected}"
    )]
    RootMismatch {
        /// Leaf index.
        index: u64,
        /// Tree size.
        size: u64,
        /// Hex of the root the proof computes.
        computed: String,
        /// Hex of the committed root.
        expected: String,
    },
}

/// RFC 6962 leaf hash: SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// RFC 6962 interior node hash: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2, "split_point needs at least two leaves");
    let p = n.next_power_of_two();
    if p == n {
        n / 2
    } else {
        p / 2
    }
}

/// Merkle tree hash (RFC 9162 §2.1.1) over already-hashed leaves.
pub fn root_from_leaf_hashes(leaves: &[Hash32]) -> Hash32 {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split_point(n);
            node_hash(
                &root_from_leaf_hashes(&leaves[..k]),
                &root_from_leaf_hashes(&leaves[k..]),
            )
        }
    }
}

/// Inclusion proof (RFC 9162 §2.1.3.1) for leaf `index` over already-hashed leaves.
pub fn inclusion_proof(leaves: &[Hash32], index: u64) -> Result<Vec<Hash32>, MerkleError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    let mut slice = leaves;
    let mut m = index as usize;
    // Walk from the root down, collecting the sibling subtree roots, then reverse so the proof
    // lists them leaf-to-root as RFC 9162 does.
    while slice.len() > 1 {
        let k = split_point(slice.len());
        if m < k {
            proof.push(root_from_leaf_hashes(&slice[k..]));
            slice = &slice[..k];
        } else {
            proof.push(root_from_leaf_hashes(&slice[..k]));
            slice = &slice[k..];
            m -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Root implied by an inclusion proof (RFC 9162 §2.1.3.2), or an error if the proof's length
/// does not match the tree shape.
pub fn root_from_inclusion_proof(
    leaf: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
) -> Result<Hash32, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    // Expected length: bits of (index XOR (size-1)) below the top, plus the ones of the
    // remaining index bits that are set (right-border steps collapse).
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    let expected = inner + border;
    if proof.len() != expected {
        return Err(MerkleError::ProofLength {
            index,
            size,
            expected,
            found: proof.len(),
        });
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = *leaf;
    for p in proof {
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    debug_assert_eq!(snode, 0, "proof length was checked against the tree shape");
    Ok(r)
}

/// Verifies that `leaf` (a leaf hash) is at `index` in the tree of `size` leaves with `root`.
pub fn verify_inclusion(
    leaf: &Hash32,
    index: u64,
    size: u64,
    proof: &[Hash32],
    root: &Hash32,
) -> Result<(), MerkleError> {
    let computed = root_from_inclusion_proof(leaf, index, size, proof)?;
    if &computed != root {
        return Err(MerkleError::RootMismatch {
            index,
            size,
            computed: hex::encode(computed),
            expected: hex::encode(root),
        });
    }
    Ok(())
}

/// The state hashes after every inner step of one shard run, in step order, with the hashes of
/// every complete (power-of-two, aligned) subtree, so that the root and any inclusion proof
/// cost O(log² steps) hashes instead of O(steps). Memory: 32 bytes per step for the state
/// hashes plus about 64 for the subtree levels (96 MiB at `SHARD_STEPS_MAX`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepLog {
    state_hashes: Vec<Hash32>,
    /// `levels[l][i]` is the root of leaves `i·2^l .. (i+1)·2^l`; `levels[0]` are leaf hashes.
    levels: Vec<Vec<Hash32>>,
}

/// A step's state hash with its inclusion proof against a shard result's step root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepHashProof {
    /// Inner step index (0-based leaf index).
    pub step: u64,
    /// State hash after that step.
    pub state_hash: Hash32,
    /// RFC 9162 inclusion proof of `leaf_hash(state_hash)` at `step`.
    pub proof: Vec<Hash32>,
}

impl StepHashProof {
    /// Checks the proof against a committed step root over `steps` leaves.
    pub fn verify(&self, steps: u64, root: &Hash32) -> Result<(), MerkleError> {
        verify_inclusion(
            &leaf_hash(&self.state_hash),
            self.step,
            steps,
            &self.proof,
            root,
        )
    }
}

impl StepLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the state hash after the next step.
    pub fn push(&mut self, state_hash: Hash32) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf_hash(&state_hash));
        self.state_hashes.push(state_hash);
        // Complete every subtree the new leaf closes.
        let mut l = 0;
        while self.levels[l].len().is_multiple_of(2) {
            let n = self.levels[l].len();
            let node = node_hash(&self.levels[l][n - 2], &self.levels[l][n - 1]);
            if self.levels.len() == l + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[l + 1].push(node);
            l += 1;
        }
    }

    /// Root of leaves `a..b` (non-empty, `a` aligned as in RFC 9162's recursion).
    fn subtree_root(&self, a: usize, b: usize) -> Hash32 {
        let n = b - a;
        debug_assert!(n >= 1, "subtree_root of an empty range");
        if n.is_power_of_two() && a.is_multiple_of(n) {
            let l = n.trailing_zeros() as usize;
            return self.levels[l][a >> l];
        }
        let k = split_point(n);
        node_hash(&self.subtree_root(a, a + k), &self.subtree_root(a + k, b))
    }

    /// Number of recorded steps.
    pub fn len(&self) -> u64 {
        self.state_hashes.len() as u64
    }

    /// Whether no step was recorded.
    pub fn is_empty(&self) -> bool {
        self.state_hashes.is_empty()
    }

    /// State hashes in step order.
    pub fn state_hashes(&self) -> &[Hash32] {
        &self.state_hashes
    }

    /// The state hash after step `step`, if recorded.
    pub fn state_hash(&self, step: u64) -> Option<Hash32> {
        usize::try_from(step)
            .ok()
            .and_then(|i| self.state_hashes.get(i).copied())
    }

    /// Merkle root over all recorded step hashes.
    pub fn root(&self) -> Hash32 {
        match self.state_hashes.len() {
            0 => root_from_leaf_hashes(&[]),
            n => self.subtree_root(0, n),
        }
    }

    /// The step hash of `step` with its inclusion proof against [`StepLog::root`] (the same
    /// proof as [`inclusion_proof`], from the stored subtree hashes).
    pub fn prove(&self, step: u64) -> Result<StepHashProof, MerkleError> {
        let state_hash = self.state_hash(step).ok_or(MerkleError::IndexOutOfRange {
            index: step,
            size: self.len(),
        })?;
        let mut proof = Vec::new();
        let (mut a, mut b) = (0usize, self.state_hashes.len());
        // `state_hash` found the step, so it fits in usize.
        let m = step as usize;
        while b - a > 1 {
            let k = split_point(b - a);
            if m < a + k {
                proof.push(self.subtree_root(a + k, b));
                b = a + k;
            } else {
                proof.push(self.subtree_root(a, a + k));
                a += k;
            }
        }
        proof.reverse();
        Ok(StepHashProof {
            step,
            state_hash,
            proof,
        })
    }
}

impl FromIterator<Hash32> for StepLog {
    fn from_iter<I: IntoIterator<Item = Hash32>>(iter: I) -> Self {
        let mut log = StepLog::new();
        for h in iter {
            log.push(h);
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize) -> Vec<Hash32> {
        (0..n as u64).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(root_from_leaf_hashes(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_proof_verifies_and_tampering_fails() {
        for n in 1..=33usize {
            let l = leaves(n);
            let root = root_from_leaf_hashes(&l);
            for i in 0..n as u64 {
                let p = inclusion_proof(&l, i).unwrap();
                verify_inclusion(&l[i as usize], i, n as u64, &p, &root).unwrap();
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(matches!(
                        verify_inclusion(&l[i as usize], i, n as u64, &bad, &root),
                        Err(MerkleError::RootMismatch { .. })
                    ));
                }
                let mut long = p.clone();
                long.push([0; 32]);
                assert!(matches!(
                    verify_inclusion(&l[i as usize], i, n as u64, &long, &root),
                    Err(MerkleError::ProofLength { .. })
                ));
            }
            assert!(matches!(
                inclusion_proof(&l, n as u64),
                Err(MerkleError::IndexOutOfRange { .. })
            ));
        }
    }

    proptest! {
        #[test]
        fn proof_for_one_leaf_never_proves_another(n in 2usize..200, i in 0usize..200, j in 0usize..200) {
            let (i, j) = (i % n, j % n);
            prop_assume!(i != j);
            let l = leaves(n);
            let root = root_from_leaf_hashes(&l);
            let p = inclusion_proof(&l, i as u64).unwrap();
            prop_assert!(verify_inclusion(&l[j], i as u64, n as u64, &p, &root).is_err());
            prop_assert!(verify_inclusion(&l[i], j as u64, n as u64, &p, &root).is_err());
        }
    }
}
