//! The C2SP tlog-tiles interface (`https://c2sp.org/tlog-tiles`, `specs/tlog.md` §8): every held
//! log at `/tlog/<log key hex>/` with `checkpoint`, hash tiles `tile/<L>/<N>[.p/<W>]` and entry
//! bundles `tile/entries/<N>[.p/<W>]`.
//!
//! Tile hashes come straight from the log's stored hashes: the hash at position `i` of tile
//! `(L, N)` is the stored hash at Merkle level `8·L`, position `256·N + i`
//! (`merkle::stored_hash_index`), the root of a complete subtree of `256^L` leaves. Nothing is
//! recomputed; one tile is one read of at most 256 stored hashes.

use std::cell::RefCell;
use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use leam_ledger::entry::PublicKey;
use leam_ledger::merkle::{self, Hash, HashReader, MerkleError, HASH_SIZE};

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

/// Most hash tiles a [`TileHashReader`] keeps (8 KiB each); it forgets them all when full.
pub const TILE_READER_TILES_MAX: usize = 64;

/// The client side of hash tiles: a [`merkle::HashReader`] over the hash tiles of the tree of
/// size `size`, fetched through `fetch` (a tlog-tiles server, for `leam audit URL`). A stored
/// hash at Merkle level `8·L + r` is computed from the `2^r` level-`8·L` hashes of tile level
/// `L` below it (`merkle::split_stored_hash_index` names level and position), so the proof
/// functions of `merkle` run on it unchanged; only complete subtrees of the tree of `size`
/// exist. The hashes are the server's word: what they prove must be checked against a signed
/// root (`merkle::check_tree`) before it is believed.
pub struct TileHashReader<F> {
    size: u64,
    fetch: F,
    cache: RefCell<HashMap<(u32, u64), Vec<Hash>>>,
}

impl<F> std::fmt::Debug for TileHashReader<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileHashReader")
            .field("size", &self.size)
            .field("tiles_cached", &self.cache.borrow().len())
            .finish_non_exhaustive()
    }
}

impl<F: Fn(&Tile) -> Result<Vec<u8>, String>> TileHashReader<F> {
    /// A reader of the tree of `size` whose tiles `fetch` returns (full, or `.p/<W>` for the
    /// tree's rightmost partial tile of a level).
    pub fn new(size: u64, fetch: F) -> Self {
        TileHashReader {
            size,
            fetch,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// The hashes of tile `(level, n)`, which holds `items` hashes in the tree.
    fn tile(&self, level: u32, n: u64, items: u64) -> Result<Vec<Hash>, MerkleError> {
        if let Some(hashes) = self.cache.borrow().get(&(level, n)) {
            return Ok(hashes.clone());
        }
        let tile = Tile::Hashes {
            level,
            n,
            width: (items < TILE_WIDTH).then_some(items),
        };
        let bytes = (self.fetch)(&tile)
            .map_err(|e| MerkleError::Storage(format!("{}: {e}", tile.path())))?;
        if bytes.len() as u64 != items * HASH_SIZE as u64 {
            return Err(MerkleError::Storage(format!(
                "{}: {} bytes, expected {} ({items} hashes)",
                tile.path(),
                bytes.len(),
                items * HASH_SIZE as u64
            )));
        }
        let hashes: Vec<Hash> = bytes
            .chunks_exact(HASH_SIZE)
            .map(|c| c.try_into().expect("chunks of HASH_SIZE"))
            .collect();
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= TILE_READER_TILES_MAX {
            cache.clear();
        }
        cache.insert((level, n), hashes.clone());
        Ok(hashes)
    }

    fn read_one(&self, index: u64) -> Result<Hash, MerkleError> {
        let (level, position) = merkle::split_stored_hash_index(index);
        let (tile_level, sub) = (level / TILE_HEIGHT, level % TILE_HEIGHT);
        // The 2^sub hashes of tile level `tile_level` under (level, position): aligned, so
        // they lie in one tile.
        let first = position << sub;
        let count = 1u64 << sub;
        let n = first / TILE_WIDTH;
        let offset = first % TILE_WIDTH;
        let items = tile_items(self.size, Some(tile_level), n);
        if tile_level > TILE_LEVEL_MAX || offset + count > items {
            return Err(MerkleError::Storage(format!(
                "stored hash {index} (level {level}, position {position}) is not a complete subtree of the tree of size {}",
                self.size
            )));
        }
        let hashes = self.tile(tile_level, n, items)?;
        let mut layer = hashes[offset as usize..(offset + count) as usize].to_vec();
        while layer.len() > 1 {
            layer = layer
                .chunks_exact(2)
                .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                .collect();
        }
        Ok(layer[0])
    }
}

impl<F: Fn(&Tile) -> Result<Vec<u8>, String>> HashReader for TileHashReader<F> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, MerkleError> {
        indexes.iter().map(|&i| self.read_one(i)).collect()
    }
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
    fn tile_hash_reader_gives_the_stored_hashes_proofs() {
        // A tree as a server holds it, and its tiles as `hash_tile` serves them.
        let mut tree = merkle::MemoryTree::new();
        for i in 0u32..70_000 {
            tree.append(merkle::leaf_hash(&i.to_be_bytes())).unwrap();
        }
        let stored = tree.stored_hashes().to_vec();
        let fetched = RefCell::new(Vec::new());
        for size in [1u64, 255, 256, 257, 1000, 65_535, 65_536, 65_537, 69_999] {
            let serve = |t: &Tile| -> Result<Vec<u8>, String> {
                fetched.borrow_mut().push(t.path());
                let Tile::Hashes { level, n, width } = *t else {
                    return Err("not a hash tile".into());
                };
                let available = tile_items(size, Some(level), n);
                let w = width.unwrap_or(TILE_WIDTH);
                if w > available || (width.is_none() && available < TILE_WIDTH) {
                    return Err(format!("404 for {}", t.path()));
                }
                Ok((0..w)
                    .flat_map(|i| {
                        stored[merkle::stored_hash_index(level * TILE_HEIGHT, n * TILE_WIDTH + i)
                            as usize]
                    })
                    .collect())
            };
            let tiles = TileHashReader::new(size, serve);
            assert_eq!(
                merkle::tree_hash(size, &tiles).unwrap(),
                tree.root_at(size).unwrap(),
                "{size}"
            );
            for old in [1, size / 3, size / 2 + 1, size - 1, size] {
                if old == 0 {
                    continue;
                }
                assert_eq!(
                    merkle::prove_tree(size, old, &tiles).unwrap(),
                    tree.prove_tree(size, old).unwrap(),
                    "{old} -> {size}"
                );
            }
            // A subtree the tree of `size` does not complete is an error, not a guess.
            if size < 70_000 {
                let beyond = merkle::stored_hash_index(0, size);
                assert!(tiles.read_hashes(&[beyond]).is_err());
            }
        }
        // Only tiles were asked for, and the tree's rightmost partial tiles with their width.
        assert!(fetched.borrow().contains(&"tile/0/255.p/255".to_owned()));
        assert!(fetched.borrow().iter().all(|p| p.starts_with("tile/")));
        // A tile of the wrong length is refused.
        let short = TileHashReader::new(300, |_: &Tile| Ok(vec![0u8; 31]));
        assert!(merkle::tree_hash(300, &short).is_err());
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
