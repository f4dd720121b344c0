//! What softmax, cross-entropy and GELU share: exp2 with its tables passed in, and the cache of
//! lookup tables they build from it.

use crate::numerics::fixed::{rhe64, EXP2_TABLE_LEN};
use std::sync::{Arc, Mutex};

/// The exp2 tables as arrays, fetched once per call.
pub(super) type Exp2Tables = ([i64; EXP2_TABLE_LEN], [i64; EXP2_TABLE_LEN]);

/// [`crate::numerics::fixed::exp2_neg_q31`] with the tables passed in. `hi`, `lo ≤ 2^31`, so their
/// product fits in i64 and [`rhe64`] rounds it exactly as `rhe` does.
///
/// Branch-free: `v ≤ 2^31`, so `rhe(v, n) = 0` for every `n ≥ 33` (and for `n ≥ 64`, where
/// the reference returns 0 directly); `n` is clamped to 40, and `rhe(v, n)` is computed as
/// `rhe(2v, n + 1)` (the same quotient) so that the shift is never 0.
#[inline]
pub(super) fn exp2_q31(t: &Exp2Tables, y: i64) -> i64 {
    const N_CLAMP: i64 = 40;
    debug_assert!(y >= 0);
    let n = (y >> 16).min(N_CLAMP) as u32 + 1;
    let f = (y & 0xFFFF) as usize;
    let v2 = 2 * rhe64(t.0[f >> 8] * t.1[f & 255], 31);
    let q = v2 >> n;
    q + (((v2 & ((1 << n) - 1)) + (1 << (n - 1)) - 1 + (q & 1)) >> n)
}

/// A few immutable lookup tables shared across calls and threads, most recently used first: a
/// hit moves its entry to the front, a `put` drops entries beyond `LEN`. A table is a pure
/// function of its key, so whether a call finds one never changes a result bit.
#[derive(Debug)]
pub(super) struct TableCache<K, V, const LEN: usize> {
    entries: Mutex<Vec<(K, Arc<V>)>>,
}

impl<K: PartialEq, V, const LEN: usize> TableCache<K, V, LEN> {
    pub(super) const fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = entries.iter().position(|(k, _)| k == key)?;
        let hit = entries.remove(i);
        let table = hit.1.clone();
        entries.insert(0, hit);
        Some(table)
    }

    pub(super) fn put(&self, key: K, table: Arc<V>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(0, (key, table));
        entries.truncate(LEN);
    }
}
