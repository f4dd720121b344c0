//! leam-compute: bit-exact integer training shards.
