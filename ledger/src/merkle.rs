//! RFC 6962 / RFC 9162 §2.1 Merkle tree hashing, inclusion and consistency proofs.
//!
//! Storage follows the "stored hashes" layout of Go's `golang.org/x/mod/sumdb/tlog`
//! (re-implemented here, not copied): every complete subtree hash of the tree is written
//! exactly once, in the order in which it becomes complete, into one flat sequence.
//! Level 0 holds the leaf hashes, level `L` position `n` is the root of leaves
//! `n·2^L .. (n+1)·2^L`. A log appends the hashes returned by
//! [`stored_hashes_for_record_hash`] and never rewrites anything, so storage is
//! append-only and a tree of any earlier size can still be hashed and proven.
//!
//! Why hand-written: the stored-hash layout must match `tlog` exactly (auditors use it),
//! proof verification must follow RFC 9162 byte for byte, and neither `ct-merkle` nor
//! the other crates expose the flat storage index this log is built on. The code is
//! small and cross-checked against the transparency-dev/merkle reference vectors and a
//! direct transcription of the RFC definitions ([`root_of`], [`inclusion_proof_of`],
//! [`consistency_proof_of`]).
//!
//! Proof order is RFC 9162's: an inclusion proof lists the sibling hashes from the leaf
//! up to the root; a consistency proof is `SUBPROOF(m, D[n], true)` of RFC 9162 §2.1.4.1.

use sha2::{Digest, Sha256};

/// A SHA-256 hash: leaf hash, interior node hash or tree root.
pub type Hash = [u8; 32];

/// Length of a [`Hash`](type@Hash) in bytes.
pub const HASH_SIZE: usize = 32;

/// Largest tree size the storage-based functions accept.
///
/// Keeps every stored-hash index (about twice the tree size) far from `u64` overflow;
/// 2^62 records is beyond any log this project will hold.
pub const TREE_SIZE_MAX: u64 = 1 << 62;

/// Largest number of hashes a proof can have for a tree of at most 2^64 leaves.
pub const PROOF_HASHES_MAX: usize = 64;

/// Domain-separation prefix of a leaf hash (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix of an interior node hash (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// Errors of Merkle tree storage, proof generation and proof verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A record index is not inside the tree.
    #[error("record index {index} is out of range for a tree of size {tree_size}")]
    IndexOutOfRange {
        /// The record index asked for.
        index: u64,
        /// The size of the tree it was asked in.
        tree_size: u64,
    },
    /// A consistency proof was asked for or checked between impossible sizes.
    #[error(
        "consistency proof needs 1 <= old size <= new size, found old size {old_size} and new size {new_size}"
    )]
    InvalidSizes {
        /// The size of the older tree.
        old_size: u64,
        /// The size of the newer tree.
        new_size: u64,
    },
    /// A tree is larger than [`TREE_SIZE_MAX`].
    #[error("tree size {tree_size} exceeds the maximum of {max}", max = TREE_SIZE_MAX)]
    TreeTooLarge {
        /// The tree size asked for.
        tree_size: u64,
    },
    /// A proof does not have the number of hashes that the sizes/index dictate.
    #[error("proof has {found} hashes, expected {expected}")]
    ProofLength {
        /// The number of hashes the proof must have.
        expected: usize,
        /// The number of hashes it has.
        found: usize,
    },
    /// A proof leads to a different root than the one it is checked against.
    #[error(
        "root mismatch for tree size {tree_size}: proof computes {computed}, expected {expected}"
    )]
    RootMismatch {
        /// Size of the tree whose root did not match.
        tree_size: u64,
        /// Hex of the root computed from the proof.
        computed: String,
        /// Hex of the root that was expected.
        expected: String,
    },
    /// A stored hash index was asked for that the storage does not (yet) hold.
    #[error("stored hash {index} is missing: storage holds {stored} hashes")]
    MissingStoredHash {
        /// The stored-hash index asked for.
        index: u64,
        /// How many hashes the storage holds.
        stored: u64,
    },
    /// A [`HashReader`] returned a different number of hashes than asked for.
    #[error("storage returned {returned} hashes for {requested} requested indexes")]
    ReadCount {
        /// Number of indexes asked for.
        requested: usize,
        /// Number of hashes returned.
        returned: usize,
    },
    /// The underlying storage failed.
    #[error("hash storage: {0}")]
    Storage(String),
}

/// `SHA-256(0x00 ‖ data)`: the hash of a leaf (RFC 6962 §2.1).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`: the hash of an interior node (RFC 6962 §2.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// `SHA-256("")`: the root of the empty tree (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Index in the flat stored-hash sequence of the hash at `level`, position `n`
/// (the root of leaves `n·2^level .. (n+1)·2^level`); tlog's `StoredHashIndex`.
///
/// Precondition (programmer error otherwise): `n << level` below [`TREE_SIZE_MAX`].
pub fn stored_hash_index(level: u32, n: u64) -> u64 {
    // The hash at (level, n) is written right after the hash at (level-1, 2n+1), so walk
    // down to the level-0 position of its last leaf, then add one per level climbed.
    let mut n = n;
    for _ in 0..level {
        n = 2 * n + 1;
    }
    // Level-0 hash n is preceded by n leaves and by n/2 + n/4 + … completed subtrees.
    let mut i = 0u64;
    let mut m = n;
    while m > 0 {
        i += m;
        m >>= 1;
    }
    i + u64::from(level)
}

/// Number of stored hashes for a tree of `n` records; tlog's `StoredHashCount`.
pub fn stored_hash_count(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    // Up to and including the last leaf hash, plus the subtrees that leaf completes.
    stored_hash_index(0, n - 1) + 1 + u64::from((n - 1).trailing_ones())
}

/// The (level, position) of stored hash `index`: the inverse of [`stored_hash_index`]; tlog's
/// `SplitStoredHashIndex`. Lets a reader that holds hashes by level and position (tlog-tiles)
/// serve the indexes the proof functions ask for.
pub fn split_stored_hash_index(index: u64) -> (u32, u64) {
    // Leaf hash n has stored index at least n (and below 2n + 1), so the leaf committed just
    // before `index` is at most index/2 positions back: start there and walk forward, each
    // record n adding 1 + trailing_ones(n) hashes.
    let mut n = index / 2;
    let mut at = stored_hash_index(0, n);
    debug_assert!(at <= index, "stored_hash_index(0, {n}) = {at} > {index}");
    loop {
        let next = at + 1 + u64::from(n.trailing_ones());
        if next > index {
            break;
        }
        n += 1;
        at = next;
    }
    // `index` was written with record n: it is (0, n), (1, n/2), (2, n/4), …
    let level = (index - at) as u32;
    (level, n >> level)
}

/// Reads stored hashes by their index in the flat stored-hash sequence.
pub trait HashReader {
    /// Returns the hashes at `indexes`, in the same order.
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MerkleError>;
}

impl HashReader for [Hash] {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MerkleError> {
        indexes
            .iter()
            .map(|&index| {
                usize::try_from(index)
                    .ok()
                    .and_then(|i| self.get(i))
                    .copied()
                    .ok_or(MerkleError::MissingStoredHash {
                        index,
                        stored: self.len() as u64,
                    })
            })
            .collect()
    }
}

impl HashReader for Vec<Hash> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MerkleError> {
        self.as_slice().read_hashes(indexes)
    }
}

/// Reads `indexes` and checks that the reader returned one hash per index.
fn read_exact(r: &(impl HashReader + ?Sized), indexes: &[u64]) -> Result<Vec<Hash>, MerkleError> {
    let hashes = r.read_hashes(indexes)?;
    if hashes.len() != indexes.len() {
        return Err(MerkleError::ReadCount {
            requested: indexes.len(),
            returned: hashes.len(),
        });
    }
    Ok(hashes)
}

fn check_tree_size(tree_size: u64) -> Result<(), MerkleError> {
    if tree_size > TREE_SIZE_MAX {
        return Err(MerkleError::TreeTooLarge { tree_size });
    }
    Ok(())
}

/// The hashes to append to storage when record `n` (0-based) with leaf hash `h` is
/// added to a tree of `n` records; tlog's `StoredHashesForRecordHash`.
///
/// The first returned hash is `h` itself, followed by the roots of the subtrees that
/// record `n` completes, lowest level first. `r` must hold the stored hashes of the
/// tree of size `n`.
pub fn stored_hashes_for_record_hash(
    n: u64,
    h: Hash,
    r: &(impl HashReader + ?Sized),
) -> Result<Vec<Hash>, MerkleError> {
    check_tree_size(n.saturating_add(1))?;
    // Each trailing one bit of n completes a subtree whose left sibling is stored.
    let completed = n.trailing_ones();
    let indexes: Vec<u64> = (0..completed)
        .rev()
        .map(|level| stored_hash_index(level, (n >> level) - 1))
        .collect();
    let old = read_exact(r, &indexes)?;
    let mut hashes = Vec::with_capacity(1 + completed as usize);
    hashes.push(h);
    let mut h = h;
    for left in old.iter().rev() {
        h = node_hash(left, &h);
        hashes.push(h);
    }
    Ok(hashes)
}

/// Largest power of two strictly below `n` (`n >= 2`), and its base-2 logarithm.
fn split_point(n: u64) -> (u64, u32) {
    debug_assert!(n >= 2, "split_point needs n >= 2, got {n}");
    let level = 63 - (n - 1).leading_zeros();
    (1 << level, level)
}

/// Largest power of two at most `n` (`n >= 1`), and its base-2 logarithm.
fn largest_pow2_at_most(n: u64) -> (u64, u32) {
    debug_assert!(n >= 1, "largest_pow2_at_most needs n >= 1");
    let level = 63 - n.leading_zeros();
    (1 << level, level)
}

/// Appends the stored-hash indexes of the complete subtrees that make up leaves
/// `lo..hi` (largest first); their hashes combine right-to-left to the root of `lo..hi`.
fn sub_tree_index(mut lo: u64, hi: u64, need: &mut Vec<u64>) {
    while lo < hi {
        let (k, level) = largest_pow2_at_most(hi - lo);
        debug_assert_eq!(lo & (k - 1), 0, "subtree {lo}..{hi} not aligned");
        need.push(stored_hash_index(level, lo >> level));
        lo += k;
    }
}

/// Consumes the hashes listed by [`sub_tree_index`] for `lo..hi` and returns the root.
fn sub_tree_hash(mut lo: u64, hi: u64, hashes: &[Hash]) -> (Hash, &[Hash]) {
    let mut count = 0;
    while lo < hi {
        let (k, _) = largest_pow2_at_most(hi - lo);
        lo += k;
        count += 1;
    }
    assert!(
        count >= 1 && count <= hashes.len(),
        "sub_tree_hash: bad math"
    );
    let mut h = hashes[count - 1];
    for left in hashes[..count - 1].iter().rev() {
        h = node_hash(left, &h);
    }
    (h, &hashes[count..])
}

/// Root hash of the tree of the first `n` records, read from storage; tlog's `TreeHash`
/// except that the empty tree has root [`empty_root`] as RFC 9162 requires.
pub fn tree_hash(n: u64, r: &(impl HashReader + ?Sized)) -> Result<Hash, MerkleError> {
    check_tree_size(n)?;
    if n == 0 {
        return Ok(empty_root());
    }
    let mut indexes = Vec::new();
    sub_tree_index(0, n, &mut indexes);
    let hashes = read_exact(r, &indexes)?;
    let (h, rest) = sub_tree_hash(0, n, &hashes);
    debug_assert!(rest.is_empty());
    Ok(h)
}

fn leaf_proof_index(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) {
    debug_assert!(lo <= n && n < hi);
    if lo + 1 == hi {
        return;
    }
    let (k, _) = split_point(hi - lo);
    if n < lo + k {
        leaf_proof_index(lo, lo + k, n, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        leaf_proof_index(lo + k, hi, n, need);
    }
}

fn leaf_proof<'a>(
    lo: u64,
    hi: u64,
    n: u64,
    hashes: &'a [Hash],
    proof: &mut Vec<Hash>,
) -> &'a [Hash] {
    if lo + 1 == hi {
        return hashes;
    }
    let (k, _) = split_point(hi - lo);
    let (sibling, rest) = if n < lo + k {
        let rest = leaf_proof(lo, lo + k, n, hashes, proof);
        sub_tree_hash(lo + k, hi, rest)
    } else {
        let (sibling, rest) = sub_tree_hash(lo, lo + k, hashes);
        (sibling, leaf_proof(lo + k, hi, n, rest, proof))
    };
    proof.push(sibling);
    rest
}

/// Inclusion proof of record `n` in the tree of size `t`, in RFC 9162 §2.1.3 order
/// (sibling hashes from the leaf up to the root); tlog's `ProveRecord`.
pub fn prove_record(
    t: u64,
    n: u64,
    r: &(impl HashReader + ?Sized),
) -> Result<Vec<Hash>, MerkleError> {
    check_tree_size(t)?;
    if n >= t {
        return Err(MerkleError::IndexOutOfRange {
            index: n,
            tree_size: t,
        });
    }
    let mut indexes = Vec::new();
    leaf_proof_index(0, t, n, &mut indexes);
    let hashes = read_exact(r, &indexes)?;
    let mut proof = Vec::new();
    let rest = leaf_proof(0, t, n, &hashes, &mut proof);
    debug_assert!(rest.is_empty());
    Ok(proof)
}

/// Number of hashes in an inclusion proof of record `n` in a tree of size `t`
/// (`n < t`): the depth of leaf `n`.
pub fn record_proof_len(t: u64, n: u64) -> usize {
    debug_assert!(n < t);
    let (mut lo, mut hi, mut len) = (0u64, t, 0usize);
    while hi - lo > 1 {
        let (k, _) = split_point(hi - lo);
        if n < lo + k {
            hi = lo + k;
        } else {
            lo += k;
        }
        len += 1;
    }
    len
}

/// Verifies that `proof` proves leaf hash `leaf` at index `n` of the tree of size `t`
/// with root `root` (RFC 9162 §2.1.3.2).
pub fn check_record(
    proof: &[Hash],
    t: u64,
    root: &Hash,
    n: u64,
    leaf: &Hash,
) -> Result<(), MerkleError> {
    if n >= t {
        return Err(MerkleError::IndexOutOfRange {
            index: n,
            tree_size: t,
        });
    }
    let expected = record_proof_len(t, n);
    if proof.len() != expected {
        return Err(MerkleError::ProofLength {
            expected,
            found: proof.len(),
        });
    }
    let computed = run_record_proof(proof, 0, t, n, *leaf);
    if computed != *root {
        return Err(MerkleError::RootMismatch {
            tree_size: t,
            computed: hex::encode(computed),
            expected: hex::encode(root),
        });
    }
    Ok(())
}

/// Recomputes the root of `lo..hi` from a proof whose length was already checked.
fn run_record_proof(proof: &[Hash], lo: u64, hi: u64, n: u64, leaf: Hash) -> Hash {
    if lo + 1 == hi {
        return leaf;
    }
    let (last, rest) = proof.split_last().expect("proof length checked by caller");
    let (k, _) = split_point(hi - lo);
    if n < lo + k {
        node_hash(&run_record_proof(rest, lo, lo + k, n, leaf), last)
    } else {
        node_hash(last, &run_record_proof(rest, lo + k, hi, n, leaf))
    }
}

fn tree_proof_index(lo: u64, hi: u64, n: u64, need: &mut Vec<u64>) {
    debug_assert!(lo < n && n <= hi);
    if n == hi {
        if lo != 0 {
            sub_tree_index(lo, hi, need);
        }
        return;
    }
    let (k, _) = split_point(hi - lo);
    if n <= lo + k {
        tree_proof_index(lo, lo + k, n, need);
        sub_tree_index(lo + k, hi, need);
    } else {
        sub_tree_index(lo, lo + k, need);
        tree_proof_index(lo + k, hi, n, need);
    }
}

fn tree_proof<'a>(
    lo: u64,
    hi: u64,
    n: u64,
    hashes: &'a [Hash],
    proof: &mut Vec<Hash>,
) -> &'a [Hash] {
    if n == hi {
        if lo == 0 {
            return hashes;
        }
        let (h, rest) = sub_tree_hash(lo, hi, hashes);
        proof.push(h);
        return rest;
    }
    let (k, _) = split_point(hi - lo);
    let (h, rest) = if n <= lo + k {
        let rest = tree_proof(lo, lo + k, n, hashes, proof);
        sub_tree_hash(lo + k, hi, rest)
    } else {
        let (h, rest) = sub_tree_hash(lo, lo + k, hashes);
        (h, tree_proof(lo + k, hi, n, rest, proof))
    };
    proof.push(h);
    rest
}

/// Consistency proof from the tree of size `n` to the tree of size `t`
/// (RFC 9162 §2.1.4; tlog's `ProveTree`). Needs `1 <= n <= t`.
pub fn prove_tree(
    t: u64,
    n: u64,
    r: &(impl HashReader + ?Sized),
) -> Result<Vec<Hash>, MerkleError> {
    check_tree_size(t)?;
    if n == 0 || n > t {
        return Err(MerkleError::InvalidSizes {
            old_size: n,
            new_size: t,
        });
    }
    let mut indexes = Vec::new();
    tree_proof_index(0, t, n, &mut indexes);
    let hashes = read_exact(r, &indexes)?;
    let mut proof = Vec::new();
    let rest = tree_proof(0, t, n, &hashes, &mut proof);
    debug_assert!(rest.is_empty());
    Ok(proof)
}

/// Number of hashes in a consistency proof from size `n` to size `t` (`1 <= n <= t`).
pub fn tree_proof_len(t: u64, n: u64) -> usize {
    debug_assert!(1 <= n && n <= t);
    let (mut lo, mut hi, mut len) = (0u64, t, 0usize);
    while n != hi {
        let (k, _) = split_point(hi - lo);
        if n <= lo + k {
            hi = lo + k;
        } else {
            lo += k;
        }
        len += 1;
    }
    if lo != 0 {
        len += 1;
    }
    len
}

/// Runs a consistency proof from size `n` to size `t` and returns the roots it implies:
/// (root of the first `n` leaves, root of all `t` leaves). Checks the sizes and the proof
/// length, not the roots.
///
/// When `n` is a power of two the size-`n` tree is a node on the path and RFC 9162
/// leaves it out of the proof; the claimed `root_n` is then used and returned as is.
/// Otherwise both roots are computed from the proof alone, so a proof that leads to a
/// signed `root_t` but to an old root different from a signed `root_n` shows that the
/// two signed trees cannot both be right (see `evidence`).
pub fn consistency_roots(
    proof: &[Hash],
    t: u64,
    n: u64,
    root_n: &Hash,
) -> Result<(Hash, Hash), MerkleError> {
    if n == 0 || n > t {
        return Err(MerkleError::InvalidSizes {
            old_size: n,
            new_size: t,
        });
    }
    let expected = tree_proof_len(t, n);
    if proof.len() != expected {
        return Err(MerkleError::ProofLength {
            expected,
            found: proof.len(),
        });
    }
    Ok(run_tree_proof(proof, 0, t, n, *root_n))
}

/// Verifies that `proof` proves the tree of size `n` with root `root_n` is a prefix of
/// the tree of size `t` with root `root_t` (RFC 9162 §2.1.4.2). Needs `1 <= n <= t`;
/// for `n == t` the proof must be empty and the roots equal.
pub fn check_tree(
    proof: &[Hash],
    t: u64,
    root_t: &Hash,
    n: u64,
    root_n: &Hash,
) -> Result<(), MerkleError> {
    let (old, new) = consistency_roots(proof, t, n, root_n)?;
    if old != *root_n {
        return Err(MerkleError::RootMismatch {
            tree_size: n,
            computed: hex::encode(old),
            expected: hex::encode(root_n),
        });
    }
    if new != *root_t {
        return Err(MerkleError::RootMismatch {
            tree_size: t,
            computed: hex::encode(new),
            expected: hex::encode(root_t),
        });
    }
    Ok(())
}

/// Recomputes (root of `0..n` restricted to `lo..`, root of `lo..hi`) from a proof whose
/// length was already checked. `old` is the claimed root of the size-`n` tree, used
/// when the size-`n` tree is itself a node on the path (`lo == 0`, `n == hi`).
fn run_tree_proof(proof: &[Hash], lo: u64, hi: u64, n: u64, old: Hash) -> (Hash, Hash) {
    if n == hi {
        if lo == 0 {
            return (old, old);
        }
        return (proof[0], proof[0]);
    }
    let (last, rest) = proof.split_last().expect("proof length checked by caller");
    let (k, _) = split_point(hi - lo);
    if n <= lo + k {
        let (oh, th) = run_tree_proof(rest, lo, lo + k, n, old);
        (oh, node_hash(&th, last))
    } else {
        let (oh, th) = run_tree_proof(rest, lo + k, hi, n, old);
        (node_hash(last, &oh), node_hash(last, &th))
    }
}

/// Merkle Tree Hash of a full list of leaf hashes, by RFC 9162 §2.1.1's definition
/// (reference implementation for tests and auditors; O(n) time, O(log n) stack).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let (k, _) = split_point(n as u64);
            let k = k as usize;
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// Inclusion proof `PATH(m, D[n])` of RFC 9162 §2.1.3.1 computed from all leaf hashes
/// (reference implementation). Panics if `m >= leaves.len()` (programmer error).
pub fn inclusion_proof_of(leaves: &[Hash], m: usize) -> Vec<Hash> {
    assert!(
        m < leaves.len(),
        "inclusion_proof_of: index {m} out of range"
    );
    if leaves.len() == 1 {
        return Vec::new();
    }
    let (k, _) = split_point(leaves.len() as u64);
    let k = k as usize;
    if m < k {
        let mut p = inclusion_proof_of(&leaves[..k], m);
        p.push(root_of(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof_of(&leaves[k..], m - k);
        p.push(root_of(&leaves[..k]));
        p
    }
}

/// Consistency proof `PROOF(m, D[n])` of RFC 9162 §2.1.4.1 computed from all leaf
/// hashes (reference implementation). Panics unless `1 <= m <= leaves.len()`.
pub fn consistency_proof_of(leaves: &[Hash], m: usize) -> Vec<Hash> {
    assert!(
        m >= 1 && m <= leaves.len(),
        "consistency_proof_of: size {m} out of range"
    );
    fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { Vec::new() } else { vec![root_of(d)] };
        }
        let (k, _) = split_point(n as u64);
        let k = k as usize;
        if m <= k {
            let mut p = subproof(m, &d[..k], b);
            p.push(root_of(&d[k..]));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push(root_of(&d[..k]));
            p
        }
    }
    subproof(m, leaves, true)
}

/// An in-memory append-only tree in stored-hash layout: the reference store for tests,
/// benchmarks and tools that hold a whole log in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryTree {
    hashes: Vec<Hash>,
    size: u64,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a record by its leaf hash and returns its index.
    pub fn append(&mut self, leaf: Hash) -> Result<u64, MerkleError> {
        let n = self.size;
        let new = stored_hashes_for_record_hash(n, leaf, &self.hashes)?;
        self.hashes.extend_from_slice(&new);
        self.size += 1;
        debug_assert_eq!(self.hashes.len() as u64, stored_hash_count(self.size));
        Ok(n)
    }

    /// Number of records.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The stored hashes, in stored-hash order.
    pub fn stored_hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Root of the tree of the first `n` records (`n <= size`).
    pub fn root_at(&self, n: u64) -> Result<Hash, MerkleError> {
        self.check_size(n)?;
        tree_hash(n, &self.hashes)
    }

    /// Root of the whole tree.
    pub fn root(&self) -> Hash {
        tree_hash(self.size, &self.hashes).expect("a MemoryTree holds all its stored hashes")
    }

    /// Inclusion proof of record `n` in the tree of size `t` (`t <= size`).
    pub fn prove_record(&self, t: u64, n: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(t)?;
        prove_record(t, n, &self.hashes)
    }

    /// Consistency proof from size `n` to size `t` (`t <= size`).
    pub fn prove_tree(&self, t: u64, n: u64) -> Result<Vec<Hash>, MerkleError> {
        self.check_size(t)?;
        prove_tree(t, n, &self.hashes)
    }

    fn check_size(&self, t: u64) -> Result<(), MerkleError> {
        if t > self.size {
            // Reported as the index of the first missing record.
            return Err(MerkleError::IndexOutOfRange {
                index: t - 1,
                tree_size: self.size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_hash_layout_matches_tlog() {
        // tlog's layout: leaves 0,1 at 0,1; their parent at 2; leaf 2 at 3; leaf 3 at 4;
        // parent(2,3) at 5; root of 0..4 at 6; leaf 4 at 7.
        assert_eq!(stored_hash_index(0, 0), 0);
        assert_eq!(stored_hash_index(0, 1), 1);
        assert_eq!(stored_hash_index(1, 0), 2);
        assert_eq!(stored_hash_index(0, 2), 3);
        assert_eq!(stored_hash_index(0, 3), 4);
        assert_eq!(stored_hash_index(1, 1), 5);
        assert_eq!(stored_hash_index(2, 0), 6);
        assert_eq!(stored_hash_index(0, 4), 7);
        let counts: Vec<u64> = (0..9).map(stored_hash_count).collect();
        assert_eq!(counts, [0, 1, 3, 4, 7, 8, 10, 11, 15]);
    }

    #[test]
    fn split_stored_hash_index_inverts_stored_hash_index() {
        // Every index below a tree's stored-hash count, in order: the hashes each record adds.
        let mut index = 0;
        for n in 0..5_000u64 {
            for level in 0..=n.trailing_ones() {
                let position = n >> level;
                assert_eq!(stored_hash_index(level, position), index);
                assert_eq!(split_stored_hash_index(index), (level, position), "{index}");
                index += 1;
            }
        }
        assert_eq!(index, stored_hash_count(5_000));
        // Far out, near the tree size limit.
        for (level, n) in [(0, (1u64 << 61) + 12_345), (40, 3), (61, 0), (8, 1 << 40)] {
            assert_eq!(
                split_stored_hash_index(stored_hash_index(level, n)),
                (level, n)
            );
        }
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn proof_of_missing_hash_is_a_storage_error() {
        let hashes: Vec<Hash> = vec![leaf_hash(b"a")];
        assert_eq!(
            prove_record(2, 0, &hashes),
            Err(MerkleError::MissingStoredHash {
                index: 1,
                stored: 1
            })
        );
    }

    #[test]
    fn huge_sizes_are_rejected_not_overflowed() {
        let hashes: Vec<Hash> = Vec::new();
        assert_eq!(
            tree_hash(u64::MAX, &hashes),
            Err(MerkleError::TreeTooLarge {
                tree_size: u64::MAX
            })
        );
        // Checking needs no storage and must not overflow either.
        let r = check_record(&[[0; 32]; 3], u64::MAX, &[0; 32], u64::MAX - 1, &[0; 32]);
        assert_eq!(
            r,
            Err(MerkleError::ProofLength {
                expected: 63,
                found: 3
            })
        );
    }
}
