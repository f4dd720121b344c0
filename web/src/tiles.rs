//! The C2SP tlog-tiles interface (`https://c2sp.org/tlog-tiles`, `specs/tlog.md` §8): every held
//! log at `/tlog/<log key hex>/` with `checkpoint`, hash tiles `tile/<L>/<N>[.p/<W>]` and entry
//! bundles `tile/entries/<N>[.p/<W>]`.
//!
//! Tile hashes come straight from the log's stored hashes: the hash at position `i` of tile
//! `(L, N)` is the stored hash at Merkle level `8·L`, position `256·N + i`
//! (`merkle::stored_hash_index`), the root of a complete subtree of `256^L` leaves. Nothing is
//! recomputed; one tile is one read of at most 256 stored hashes.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use leam_ledger::entry::PublicKey;
use leam_ledger::merkle::{self, HASH_SIZE};

use crate::view::View;
use crate::{parse_key, AppError, AppShared};

/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 256;
/// Merkle levels per tile level.
pub const TILE_HEIGHT: u32 = 8;
/// Highest tile level with any tile (`8·L` must stay below the 62-bit tree size limit).
pub const TILE_LEVEL_MAX: u32 = 7;
/// Most three-digit groups in a tile index path (`u64` has at most 20 decimal digits).
pub const INDEX_GROUPS_MAX: usize = 7;
/// Cache header of tiles: a tile's bytes, full or partial of a given width, never change.
pub const TILE_CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
/// Cache header of the checkpoint, which changes with every append and cosignature.
pub const CHECKPOINT_CACHE_CONTROL: &str = "no-cache";

/// A tile named by a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tile {
    /// Hash tile at `level`, index `n`; `width` for a partial tile (`1..=255`).
    Hashes {
        /// Tile level `L`.
        level: u32,
        /// Tile index `N`.
        n: u64,
        /// Width of a partial tile.
        width: Option<u64>,
    },
    /// Entry bundle `n`; `width` for a partial bundle.
    Entries {
        /// Bundle index `N`.
        n: u64,
        /// Width of a partial bundle.
        width: Option<u64>,
    },
}

/// `N` as a path: zero-padded groups of three digits, all but the last prefixed `x`
/// (1234067 → `x001/x234/067`).
pub fn index_path(n: u64) -> String {
    let mut groups = vec![format!("{:03}", n % 1000)];
    let mut rest = n / 1000;
    while rest > 0 {
        groups.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    groups.reverse();
    groups.join("/")
}

impl Tile {
    /// The tile's path below `/tlog/<key>/` (`tile/…`).
    pub fn path(&self) -> String {
        let (head, n, width) = match self {
            Tile::Hashes { level, n, width } => (level.to_string(), *n, *width),
            Tile::Entries { n, width } => ("entries".to_owned(), *n, *width),
        };
        let w = width.map(|w| format!(".p/{w}")).unwrap_or_default();
        format!("tile/{head}/{}{w}", index_path(n))
    }

    /// Parse the part of a path after `tile/`, refusing every non-canonical form (leading
    /// zeros, missing padding, width 0 or ≥ 256) so each tile has exactly one path.
    pub fn parse(rest: &str) -> Result<Tile, String> {
        let bad = |why: &str| {
            format!(
                "tile path {rest:?}: {why}; expected <L>/<N>[.p/<W>] or entries/<N>[.p/<W>], N in groups of three digits like x001/x234/067"
            )
        };
        let mut segs: Vec<&str> = rest.split('/').collect();
        if segs.len() < 2 {
            return Err(bad("too few segments"));
        }
        let head = segs.remove(0);
        let mut width = None;
        if segs.len() >= 2 && segs[segs.len() - 2].ends_with(".p") {
            let w = segs.pop().unwrap_or_default();
            let canonical = !w.is_empty()
                && w.len() <= 3
                && w.bytes().all(|b| b.is_ascii_digit())
                && !w.starts_with('0');
            let w: u64 = if canonical {
                w.parse().map_err(|_| bad("width is not a number"))?
            } else {
                return Err(bad("width must be a decimal 1..=255 without leading zeros"));
            };
            if !(1..TILE_WIDTH).contains(&w) {
                return Err(bad("width must be 1..=255"));
            }
            width = Some(w);
            let last = segs.len() - 1;
            segs[last] = segs[last].strip_suffix(".p").unwrap_or(segs[last]);
        }
        if segs.is_empty() || segs.len() > INDEX_GROUPS_MAX {
            return Err(bad("the index has too many or no groups"));
        }
        let mut n: u64 = 0;
        for (i, g) in segs.iter().enumerate() {
            let digits = if i + 1 < segs.len() {
                g.strip_prefix('x')
                    .ok_or_else(|| bad("all groups but the last start with x"))?
            } else {
                g
            };
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("each group is exactly three digits"));
            }
            let d: u64 = digits.parse().map_err(|_| bad("group is not a number"))?;
            n = n
                .checked_mul(1000)
                .and_then(|n| n.checked_add(d))
                .ok_or_else(|| bad("index overflows 64 bits"))?;
        }
        let tile = if head == "entries" {
            Tile::Entries { n, width }
        } else {
            let canonical = !head.is_empty()
                && head.len() <= 2
                && head.bytes().all(|b| b.is_ascii_digit())
                && (head == "0" || !head.starts_with('0'));
            if !canonical {
                return Err(bad("level must be a decimal without leading zeros"));
            }
            let level: u32 = head.parse().map_err(|_| bad("level is not a number"))?;
            Tile::Hashes { level, n, width }
        };
        if tile.path() != format!("tile/{rest}") {
            return Err(bad("not the canonical form of this tile's path"));
        }
        Ok(tile)
    }
}

/// Items (hashes at Merkle level `8·level`, or entries for `level = None`) a tree of `size`
/// has in tile `n`: `0` if none, `256` if the tile is full.
pub fn tile_items(size: u64, level: Option<u32>, n: u64) -> u64 {
    let shift = level.map_or(0, |l| l * TILE_HEIGHT);
    let at_level = size.checked_shr(shift).unwrap_or(0);
    match n.checked_mul(TILE_WIDTH) {
        Some(first) if at_level > first => (at_level - first).min(TILE_WIDTH),
        _ => 0,
    }
}

/// The width a request may be served with: the full width if the tile is full and no width
/// was asked, or the asked partial width if the tree has at least that many items in the tile
/// (the first `W` items of a tile never change once they exist).
fn served_width(
    available: u64,
    width: Option<u64>,
    what: &str,
    size: u64,
) -> Result<u64, AppError> {
    match width {
        None if available == TILE_WIDTH => Ok(TILE_WIDTH),
        None => Err(AppError::NotFound(format!(
            "{what} is not full: the tree of size {size} has {available} of its {TILE_WIDTH} items (ask for .p/{available})"
        ))),
        Some(w) if w <= available => Ok(w),
        Some(w) => Err(AppError::NotFound(format!(
            "{what} has {available} items in the tree of size {size}, fewer than the width {w} asked"
        ))),
    }
}

/// The bytes of hash tile `(level, n)` of width `width` of the log `key`: the concatenated
/// 32-byte stored hashes.
pub fn hash_tile(
    view: &dyn View,
    key: &PublicKey,
    level: u32,
    n: u64,
    width: u64,
) -> Result<Vec<u8>, AppError> {
    let idx: Vec<u64> = (0..width)
        .map(|i| merkle::stored_hash_index(level * TILE_HEIGHT, n * TILE_WIDTH + i))
        .collect();
    let hashes = view.hashes(key, &idx)?;
    let mut out = Vec::with_capacity(hashes.len() * HASH_SIZE);
    for h in hashes {
        out.extend_from_slice(&h);
    }
    Ok(out)
}

/// The bytes of entry bundle `n` of width `width`: each entry as a big-endian `u16` length
/// followed by its canonical encoding.
pub fn entry_bundle(
    view: &dyn View,
    key: &PublicKey,
    n: u64,
    width: u64,
) -> Result<Vec<u8>, AppError> {
    let start = n * TILE_WIDTH;
    let entries = view.entries(key, start, start + width)?;
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let len = u16::try_from(e.len()).map_err(|_| {
            AppError::Conflict(format!(
                "entry {} is {} bytes, more than an entry bundle's 65535-byte length prefix can carry",
                start + i as u64,
                e.len()
            ))
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

async fn checkpoint(
    State(s): State<AppShared>,
    Path(key): Path<String>,
) -> Result<Response, AppError> {
    let log = s.log(&parse_key(&key)?)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, CHECKPOINT_CACHE_CONTROL),
        ],
        log.checkpoint,
    )
        .into_response())
}

async fn tile(
    State(s): State<AppShared>,
    Path((key, rest)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let key = parse_key(&key)?;
    let tile = Tile::parse(&rest).map_err(AppError::NotFound)?;
    let log = s.log(&key)?;
    let size = log.size;
    let body = match tile {
        Tile::Hashes { level, n, width } => {
            if level > TILE_LEVEL_MAX {
                return Err(AppError::NotFound(format!(
                    "tile level {level}: levels above {TILE_LEVEL_MAX} hold no hashes (tree sizes stay below 2^62)"
                )));
            }
            let available = tile_items(size, Some(level), n);
            let what = format!("hash tile {level}/{n}");
            let w = served_width(available, width, &what, size)?;
            hash_tile(s.view.as_ref(), &key, level, n, w)?
        }
        Tile::Entries { n, width } => {
            let available = tile_items(size, None, n);
            let what = format!("entry bundle {n}");
            let w = served_width(available, width, &what, size)?;
            entry_bundle(s.view.as_ref(), &key, n, w)?
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, TILE_CACHE_CONTROL),
        ],
        body,
    )
        .into_response())
}

pub(crate) fn router() -> Router<AppShared> {
    Router::new()
        .route("/tlog/{key}/checkpoint", get(checkpoint))
        .route("/tlog/{key}/tile/{*rest}", get(tile))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_paths_follow_the_c2sp_examples() {
        assert_eq!(index_path(1_234_067), "x001/x234/067");
        assert_eq!(index_path(0), "000");
        assert_eq!(index_path(1000), "x001/000");
        for n in [0, 1, 999, 1000, 1_234_067, u64::MAX] {
            let t = Tile::Entries { n, width: None };
            assert_eq!(Tile::parse(&t.path()["tile/".len()..]), Ok(t));
        }
        let t = Tile::Hashes {
            level: 1,
            n: 5,
            width: Some(8),
        };
        assert_eq!(t.path(), "tile/1/005.p/8");
        assert_eq!(Tile::parse("1/005.p/8"), Ok(t));
        for bad in [
            "1/5",
            "01/005",
            "1/x000/005",
            "1/005.p/0",
            "1/005.p/256",
            "1/005.p/08",
            "1",
            "entries/005.p/",
            "1/x005",
        ] {
            assert!(Tile::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn tile_items_counts_complete_subtrees() {
        assert_eq!(tile_items(300, Some(0), 0), 256);
        assert_eq!(tile_items(300, Some(0), 1), 44);
        assert_eq!(tile_items(300, Some(0), 2), 0);
        assert_eq!(tile_items(300, Some(1), 0), 1);
        assert_eq!(tile_items(255, Some(1), 0), 0);
        assert_eq!(tile_items(300, None, 1), 44);
        assert_eq!(tile_items(u64::MAX, Some(9), 0), 0);
    }
}
