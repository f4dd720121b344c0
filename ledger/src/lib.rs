//! leam-ledger: the signed contribution ledger.
