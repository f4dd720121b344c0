//! leam-net: the federation on libp2p.
//!
//! - [`wire`]: every message, protocol name and limit (`specs/wire.md`).
//! - [`core`]: the node core, a state machine over the own log, replicas and witness state; no
//!   libp2p, no async.
//! - [`shell`]: the libp2p swarm that drives the core.
//! - [`work`]: the work protocol (blobs, shard runs, step hashes, referee requests), carried
//!   by the shell to a handler the node plugs in.
//! - [`live`]: read handles on a running node's logs, peers and status for its web server.
//!
//! Invariants: the core never touches the network; nothing unsigned changes state (gossip
//! carries signed checkpoints and signed entries, replicas store only what verifies against a
//! checkpoint signed by the log's owner); peers that are not members are dropped at the
//! connection.

// The core's errors carry the ledger's `LogError`/`ReplicaError` (128 bytes and more, see the
// same allow in leam-ledger); they are returned rarely, on operator commands and start-up.
#![allow(clippy::result_large_err)]

pub mod core;
pub mod live;
pub mod shell;
pub mod wire;
pub mod work;
