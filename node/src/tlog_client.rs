//! `leam audit URL…`: fetch logs over the C2SP tlog-tiles interface (`specs/tlog.md` §8) into
//! verified local replicas, so that the audit runs on them exactly as on node directories. A
//! funder needs only the server's address, never a copy of a node's directory.
//!
//! Each log is fetched as its checkpoint (with cosignatures), verified first, then its entry
//! bundles in batches of [`FETCH_BATCH_ENTRIES_DEFAULT`] entries (64 bundles; at most
//! `REPLICA_EXTEND_ENTRIES_MAX`), so memory stays bounded whatever the log's size.
//! `ledger::replica::Replica::extend_prefix` checks every entry of a batch (encoding, author,
//! index, signatures, log rules after the entries before it) and that the tree the batch
//! completes is a prefix of the checkpoint's signed tree, by a consistency proof built from the
//! server's hash tiles (`leam_web::tiles::TileHashReader`), before the batch is stored; the last
//! batch must give the signed root itself. The tiles are only proof material: the batch's own
//! root is computed from its entries and those verified before it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use leam_ledger::entry::PublicKey;
use leam_ledger::merkle;
use leam_ledger::replica::{Replica, REPLICA_EXTEND_ENTRIES_MAX};
use leam_web::tiles::{Tile, TileHashReader, TILE_WIDTH as BUNDLE_ENTRIES};

use crate::cli;

/// Largest response the client reads: a full bundle of maximal entries.
pub const RESPONSE_BYTES_MAX: u64 = BUNDLE_ENTRIES * (2 + 65_535);
/// Entries verified and stored per replica extension by default: 64 entry bundles. The store
/// (sled 0.34) needs about 30 KiB of memory per entry of one write batch, measured: ~0.5 GiB
/// at this size, ~1 GiB at 32,768, ~3 GiB at the 65,536 one extension takes at most.
pub const FETCH_BATCH_ENTRIES_DEFAULT: u64 = 16_384;
/// Most entries per batch: what one replica extension takes.
pub const FETCH_BATCH_ENTRIES_MAX: u64 = REPLICA_EXTEND_ENTRIES_MAX as u64;
/// A batch also ends after the bundle that brings its entries to this many bytes (entries may
/// be up to 64 KiB each), so one batch holds at most this plus one bundle in memory.
pub const FETCH_BATCH_BYTES_MAX: usize = 64 << 20;
/// Batches downloaded ahead of the one being verified.
pub const FETCH_BATCHES_AHEAD: usize = 1;
/// Most logs one server may list for an audit.
pub const LOGS_MAX: usize = 256;

/// Whether an audit argument is a URL rather than a directory.
pub fn is_url(arg: &Path) -> bool {
    arg.to_str()
        .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
}

/// One HTTP agent for the whole fetch, so that its connections are reused.
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(crate::cli_fed::agent)
}

fn get(url: &str) -> anyhow::Result<Vec<u8>> {
    let env = |e: anyhow::Error| cli::fail(cli::EXIT_ENV, e);
    let mut resp = agent()
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

/// Fetch every log behind `url` into verified replicas under `into`, in batches of at most
/// `batch_entries` entries (`1..=FETCH_BATCH_ENTRIES_MAX`); returns their dirs. A replica
/// already in `into` resumes after the entries it has verified.
pub fn fetch(url: &str, into: &Path, batch_entries: u64) -> anyhow::Result<Vec<PathBuf>> {
    if !(1..=FETCH_BATCH_ENTRIES_MAX).contains(&batch_entries) {
        bail!(cli::fail(
            cli::EXIT_INPUT,
            anyhow!(
                "a fetch batch holds 1..={FETCH_BATCH_ENTRIES_MAX} entries, not {batch_entries}"
            )
        ));
    }
    let mut dirs = Vec::new();
    for (base, key) in logs_of(url)? {
        let dir = into.join(hex::encode(key));
        fetch_log(&base, Replica::open_or_create(&dir, key)?, batch_entries)?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Fetch the log at `base` into `replica`: the checkpoint, verified before anything else, then
/// batch after batch of entries from the replica's verified size, each proven part of the
/// signed tree before it is stored (a consistency proof from the batch's end to the
/// checkpoint's size, from the hash tiles), the last one committing the checkpoint. The next
/// batch is downloaded while one is verified (at most [`FETCH_BATCHES_AHEAD`] wait), and the
/// replica's store is reopened after each batch, which releases what sled holds of it.
fn fetch_log(base: &str, mut replica: Replica, batch_entries: u64) -> anyhow::Result<()> {
    let invalid = |e: anyhow::Error| cli::fail(cli::EXIT_INVALID, e);
    let note = get(&format!("{base}/checkpoint"))?;
    let size = replica
        .open_checkpoint(&note)
        .with_context(|| format!("{base}/checkpoint"))
        .map_err(invalid)?
        .size;
    let tiles = TileHashReader::new(size, |tile: &Tile| {
        get(&format!("{base}/{}", tile.path())).map_err(|e| format!("{e:#}"))
    });
    let start = replica.verified_size();
    std::thread::scope(|scope| {
        let (batches, received) = std::sync::mpsc::sync_channel(FETCH_BATCHES_AHEAD);
        scope.spawn(move || {
            let mut first = start;
            loop {
                let batch = fetch_batch(base, first, size, batch_entries);
                let end = batch.as_ref().map_or(size, |b| first + b.len() as u64);
                // The receiver is gone when verification failed: stop.
                if batches.send(batch).is_err() || end >= size {
                    return;
                }
                first = end;
            }
        });
        loop {
            let entries = received
                .recv()
                .map_err(|_| anyhow!("{base}: the download of entry bundles stopped"))??;
            let first = replica.verified_size();
            let end = first + entries.len() as u64;
            let proof = if end < size {
                merkle::prove_tree(size, end, &tiles)
                    .with_context(|| {
                        format!(
                            "{base}: the consistency proof from {end} to {size} from hash tiles"
                        )
                    })
                    .map_err(|e| cli::fail(cli::EXIT_ENV, e))?
            } else {
                vec![]
            };
            replica
                .extend_prefix(&note, &entries, &proof)
                .with_context(|| format!("verifying {base}"))
                .map_err(invalid)?;
            if end >= size {
                return Ok(());
            }
            replica = replica.reopen()?;
        }
    })
}

/// Entries `first..` of the log at `base` (size `size`), from its entry bundles: up to
/// `batch_entries` of them, fewer at the end of the log or once they reach
/// [`FETCH_BATCH_BYTES_MAX`] bytes.
fn fetch_batch(
    base: &str,
    first: u64,
    size: u64,
    batch_entries: u64,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let end = size.min(first.saturating_add(batch_entries));
    let mut entries = Vec::new();
    let mut bytes = 0;
    let mut next = first;
    while next < end && bytes < FETCH_BATCH_BYTES_MAX {
        let n = next / BUNDLE_ENTRIES;
        let width = (size - n * BUNDLE_ENTRIES).min(BUNDLE_ENTRIES);
        let tile = Tile::Entries {
            n,
            width: (width < BUNDLE_ENTRIES).then_some(width),
        };
        let path = format!("{base}/{}", tile.path());
        let bundle = parse_bundle(&get(&path)?, width)
            .with_context(|| path.clone())
            .map_err(|e| cli::fail(cli::EXIT_INVALID, e))?;
        let upto = end.min(n * BUNDLE_ENTRIES + width);
        for e in bundle
            .into_iter()
            .skip((next - n * BUNDLE_ENTRIES) as usize)
            .take((upto - next) as usize)
        {
            bytes += e.len();
            entries.push(e);
        }
        next = upto;
    }
    Ok(entries)
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
