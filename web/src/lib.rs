//! leam-web: the funders' audit API and dashboard.
//!
//! Nothing is served yet: the HTTP API and dashboard are the subject of a later issue. The crate
//! exists so that the workspace has its final shape and the dependency direction
//! (`node` → `web` → `ledger`) is fixed from the start.
