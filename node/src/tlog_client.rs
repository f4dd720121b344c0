//! `leam audit URL…`: fetch logs over the C2SP tlog-tiles interface (`specs/tlog.md` §8) into
//! verified local replicas, so that the audit runs on them exactly as on node directories. A
//! funder needs only the server's address, never a copy of a node's directory.
//!
//! Each log is fetched as its checkpoint (with cosignatures) and the entry bundles that cover
//! it; `ledger::replica::Replica::extend` then checks every entry (encoding, author, index,
//! signatures, log rules) and that the leaves give the checkpoint's signed root, before
//! anything is stored. The hash tiles are not needed for that: the root is rebuilt from the
//! entries themselves.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use leam_ledger::entry::PublicKey;
use leam_ledger::replica::{Replica, REPLICA_EXTEND_ENTRIES_MAX};
use leam_web::tiles::{Tile, TILE_WIDTH as BUNDLE_ENTRIES};

use crate::cli;

/// Largest response the client reads: a full bundle of maximal entries.
pub const RESPONSE_BYTES_MAX: u64 = BUNDLE_ENTRIES * (2 + 65_535);
/// Most logs one server may list for an audit.
pub const LOGS_MAX: usize = 256;

/// Whether an audit argument is a URL rather than a directory.
pub fn is_url(arg: &Path) -> bool {
    arg.to_str()
        .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
}

fn get(url: &str) -> anyhow::Result<Vec<u8>> {
    let env = |e: anyhow::Error| cli::fail(cli::EXIT_ENV, e);
    let mut resp = crate::cli_fed::agent()
        .get(url)
        .call()
        .map_err(|e| env(anyhow!("fetching {url}: {e}")))?;
    if resp.status().as_u16() != 200 {
        return Err(env(anyhow!("fetching {url}: HTTP {}", resp.status())));
    }
    resp.body_mut()
        .with_config()
        .limit(RESPONSE_BYTES_MAX)
        .read_to_vec()
        .map_err(|e| env(anyhow!("reading {url}: {e}")))
}

/// The entries of one bundle: big-endian `u16` lengths, each followed by that many bytes.
pub fn parse_bundle(bytes: &[u8], expected: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if at + 2 > bytes.len() {
            bail!(
                "entry bundle ends inside the length prefix of entry {}",
                out.len()
            );
        }
        let len = usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
        at += 2;
        if at + len > bytes.len() {
            bail!(
                "entry bundle: entry {} declares {len} bytes, {} remain",
                out.len(),
                bytes.len() - at
            );
        }
        out.push(bytes[at..at + len].to_vec());
        at += len;
    }
    if out.len() as u64 != expected {
        bail!(
            "entry bundle holds {} entries, expected {expected}",
            out.len()
        );
    }
    Ok(out)
}

/// The logs behind `url`: one log for `…/tlog/<key>/`, else every log the server lists at
/// `/api/logs`. Returns (tlog base URL, key) pairs.
fn logs_of(url: &str) -> anyhow::Result<Vec<(String, PublicKey)>> {
    let url = url.trim_end_matches('/');
    let parse_key = |h: &str| -> anyhow::Result<PublicKey> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(h, &mut k).map_err(|_| {
            cli::fail(
                cli::EXIT_INPUT,
                anyhow!("{h:?} is not a 64-hex-digit log key"),
            )
        })?;
        Ok(k)
    };
    if let Some((_, key)) = url.rsplit_once("/tlog/") {
        return Ok(vec![(url.to_owned(), parse_key(key)?)]);
    }
    let listed: serde_json::Value = serde_json::from_slice(&get(&format!("{url}/api/logs"))?)
        .map_err(|e| cli::fail(cli::EXIT_ENV, anyhow!("{url}/api/logs: {e}")))?;
    let keys: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["key"].as_str())
        .collect();
    if keys.is_empty() || keys.len() > LOGS_MAX {
        bail!(cli::fail(
            cli::EXIT_ENV,
            anyhow!(
                "{url}/api/logs lists {} logs, expected 1..={LOGS_MAX}",
                keys.len()
            )
        ));
    }
    keys.into_iter()
        .map(|k| Ok((format!("{url}/tlog/{k}"), parse_key(k)?)))
        .collect()
}

/// Fetch every log behind `url` into verified replicas under `into`; returns their dirs.
pub fn fetch(url: &str, into: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for (base, key) in logs_of(url)? {
        let note = get(&format!("{base}/checkpoint"))?;
        let size: u64 = std::str::from_utf8(&note)
            .ok()
            .and_then(|t| t.lines().nth(1))
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| {
                cli::fail(
                    cli::EXIT_INVALID,
                    anyhow!("{base}/checkpoint is not a checkpoint"),
                )
            })?;
        if size > REPLICA_EXTEND_ENTRIES_MAX as u64 {
            bail!(cli::fail(
                cli::EXIT_ENV,
                anyhow!("{base}: {size} entries; auditing over HTTP is limited to {REPLICA_EXTEND_ENTRIES_MAX} entries per log for now (audit a copy of the directory instead)")
            ));
        }
        let mut entries = Vec::with_capacity(size as usize);
        let mut n = 0;
        while n * BUNDLE_ENTRIES < size {
            let width = (size - n * BUNDLE_ENTRIES).min(BUNDLE_ENTRIES);
            let tile = Tile::Entries {
                n,
                width: (width < BUNDLE_ENTRIES).then_some(width),
            };
            let path = format!("{base}/{}", tile.path());
            let bundle = parse_bundle(&get(&path)?, width)
                .with_context(|| path.clone())
                .map_err(|e| cli::fail(cli::EXIT_INVALID, e))?;
            entries.extend(bundle);
            n += 1;
        }
        let dir = into.join(hex::encode(key));
        let mut replica = Replica::open_or_create(&dir, key)?;
        replica
            .extend(&note, &entries)
            .with_context(|| format!("verifying {base}"))
            .map_err(|e| cli::fail(cli::EXIT_INVALID, e))?;
        dirs.push(dir);
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bundle(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            out.extend_from_slice(&(e.len() as u16).to_be_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    proptest! {
        #[test]
        fn bundles_round_trip(entries in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let b = bundle(&entries);
            prop_assert_eq!(parse_bundle(&b, entries.len() as u64).unwrap(), entries.clone());
            // A wrong count, and every truncation, is an error, never a panic.
            prop_assert!(parse_bundle(&b, entries.len() as u64 + 1).is_err());
            for cut in 0..b.len() {
                let _ = parse_bundle(&b[..cut], entries.len() as u64);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), n in 0u64..300) {
            let _ = parse_bundle(&bytes, n);
        }
    }

    #[test]
    fn tile_index_paths() {
        use leam_web::tiles::index_path;
        assert_eq!(index_path(0), "000");
        assert_eq!(index_path(1_234_067), "x001/x234/067");
        assert_eq!(index_path(1_000), "x001/000");
    }
}
