//! Verification: what lets parties that do not trust each other agree on a shard's result.
//!
//! - [`shard`]: content-addressed shard specs and results;
//! - [`commit`]: per-step RFC 6962 commitments (the Merkle tree over state hashes);
//! - [`replay`]: replaying a shard, or one step of it, on any backend;
//! - [`bisect`]: bisection to the first divergent step and the referee's verdict;
//! - [`diloco`]: parameter deltas and the DiLoCo outer step.

pub mod bisect;
pub mod commit;
pub mod diloco;
pub mod replay;
pub mod shard;
