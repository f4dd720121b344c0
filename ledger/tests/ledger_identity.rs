//! Key files: round trip for any seed, every single-byte mutation and every truncation rejected.

use std::os::unix::fs::PermissionsExt as _;

use leam_ledger::identity::{Identity, IdentityError};
use proptest::prelude::*;

fn write_private(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn key_file_round_trip_and_rejection(seed in any::<[u8; 32]>(), flip in 1u8..=255) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("node.key");
        let id = Identity::from_seed(&seed);
        id.write_new(&path).unwrap();
        let loaded = Identity::load(&path).unwrap();
        prop_assert_eq!(loaded.public_key(), id.public_key());
        prop_assert_eq!(loaded.verifier_key(), id.verifier_key());
        let text = std::fs::read(&path).unwrap();
        let probe = tmp.path().join("probe");
        for i in 0..text.len() {
            let mut m = text.clone();
            m[i] ^= flip;
            write_private(&probe, &m);
            let r = Identity::load(&probe);
            prop_assert!(r.is_err(), "mutation at byte {} accepted", i);
        }
        for n in 0..text.len() {
            write_private(&probe, &text[..n]);
            prop_assert!(
                matches!(Identity::load(&probe), Err(IdentityError::Malformed { .. })),
                "truncation to {} bytes accepted", n
            );
        }
    }
}
