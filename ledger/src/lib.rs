//! leam-ledger: the signed contribution ledger.
//!
//! Pure library: no networking, no async runtime. See `specs/ledger.md` and `specs/tlog.md`.

// Errors name the directory, entry, field, expected and found values (ARCHITECTURE.md), so
// `LogError` and the errors that wrap it reach clippy's 128-byte `result_large_err` bound; they
// are returned on cold paths only.
#![allow(clippy::result_large_err)]

// Transparency-log primitives (RFC 6962 / RFC 9162 Merkle tree, C2SP signed notes,
// checkpoints, cosignatures, witness, equivocation evidence).
pub mod checkpoint;
pub mod evidence;
pub mod merkle;
pub mod note;
pub mod witness;

// The ledger proper (identity, entries, storage, log, accounting, audit).
pub mod account;
pub mod audit;
pub mod entry;
pub mod identity;
pub mod log;
pub mod store;

// Federation (genesis document and membership, verified replicas of other members' logs).
pub mod genesis;
pub mod replica;
