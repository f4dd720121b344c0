//! Jobs' progress documents (`specs/market.md` §8.2): after every DiLoCo round a bidder's node
//! writes `DIR/jobs/<job id hex>.progress.json`. [`read_progress`] reads them back, bounded, for
//! [`crate::View::job_progress`]; `/api/jobs/progress` and the `/jobs` page show them.
//!
//! [`JobProgress`] mirrors the fields `leam-jobs` writes (its `bidder::Progress`); web does not
//! depend on `leam-jobs`. Fields missing from a document read as zero or empty, fields web does
//! not know are ignored. A file that is not a regular file, is larger than
//! [`PROGRESS_FILE_BYTES_MAX`], is not a progress document, or names another job than its file
//! name is skipped: a bad file never fails a request.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Folder of a node directory with the bidder's job files (`leam-jobs`' `JOBS_DIR_NAME`).
pub const JOBS_DIR_NAME: &str = "jobs";
/// File name suffix of a job's progress document (`leam-jobs`' `bidder::PROGRESS_SUFFIX`).
pub const PROGRESS_SUFFIX: &str = ".progress.json";
/// Most progress files one read opens, over all directories of a view.
pub const PROGRESS_FILES_MAX: usize = 256;
/// Largest progress file read, bytes; a larger one is skipped.
pub const PROGRESS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most bytes one read takes from all progress files together; files beyond it are skipped.
pub const PROGRESS_BYTES_TOTAL_MAX: u64 = 16 * 1024 * 1024;
/// Most entries of one jobs folder examined (by name) when looking for progress files.
pub const JOBS_DIR_ENTRIES_MAX: usize = 16 * 1024;

/// One DiLoCo round of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct RoundProgress {
    /// Round index (the first round is 0).
    pub round: u32,
    /// Shards of the round (one per worker).
    pub shards: u32,
    /// Runs that finished (primaries and replicas).
    pub runs: u32,
    /// Shards computed twice, by two providers, to check each other.
    pub replicated: u32,
    /// Replicated shards whose two results differed (the referee decides which is right).
    pub mismatched: u32,
    /// Shards whose result entered the model's outer step.
    pub merged: u32,
    /// Runs taken from a provider (timeout, failure) and leased to another.
    pub released: u32,
    /// Runs of the round the job's referee accepted so far (verdicts arrive after the round).
    pub verified: u32,
    /// Runs of the round the job's referee rejected so far.
    pub rejected: u32,
    /// Validation loss after the round's outer step (null when nothing was merged).
    pub val_loss: Option<f64>,
    /// Wall time of the round, milliseconds.
    pub wall_ms: u64,
}

/// A job's progress document, as its bidder's node writes it after every round.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct JobProgress {
    /// Job id, hex (also the file name).
    pub job: String,
    /// `running`, `settling`, `done` or `failed: <reason>`.
    pub state: String,
    /// Validation loss of the initial model, before the first round.
    pub val_loss_start: Option<f64>,
    /// Rounds so far.
    pub rounds: Vec<RoundProgress>,
    /// Device time each provider reported for its runs, milliseconds, by provider key hex.
    pub device_ms: BTreeMap<String, u64>,
    /// Compute units of primary runs.
    pub primary_units: u64,
    /// Compute units of replica runs (the cost of verification).
    pub replica_units: u64,
    /// Bytes one worker moves per round: the start parameters to the provider, the parameter
    /// delta back (mean over the merged shards).
    pub bytes_per_worker_round: u64,
    /// Bytes of parameter deltas fetched from providers, as the bidder's link counted them.
    pub delta_bytes_fetched: u64,
    /// Bytes of start parameters the merged shards' providers needed (params blob lengths).
    pub params_bytes_served: u64,
    /// Shards merged so far (the worker-rounds the two byte counts cover).
    pub worker_rounds: u64,
    /// What plain data parallelism would move per worker for the same inner steps.
    pub data_parallel_bytes_per_worker_round: u64,
    /// Job wall time from the first run request to the last outer step, milliseconds.
    pub wall_ms: u64,
    /// The bidder's settlements, euro cents of credits, by provider key hex.
    pub paid_cents: BTreeMap<String, u64>,
    /// The referee's verdicts on the job's runs: `[accepted, rejected]`.
    #[schema(value_type = Vec<u64>, min_items = 2, max_items = 2)]
    pub verdicts: [u64; 2],
    /// Re-clearings: providers that left the job, and who took the shards they left
    /// unfinished (`specs/market.md` §3.6).
    pub reclearings: Vec<Replacement>,
}

/// One re-clearing of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Replacement {
    /// The providers that left the job (key hex).
    pub replaces: Vec<String>,
    /// Shards they left unfinished, bought again.
    pub shards: u64,
    /// Providers that took them (key hex) and how many shards each.
    pub providers: BTreeMap<String, u32>,
    /// The re-clearing's price, credits (EUR cents) per 1,000 compute units; 0 when no offer
    /// could take the shards.
    pub price_cents_per_kilo_unit: u64,
}

/// The job id of a progress file name (`<64 lowercase hex>.progress.json`), if it is one.
pub fn progress_file_job(name: &str) -> Option<&str> {
    let job = name.strip_suffix(PROGRESS_SUFFIX)?;
    (job.len() == 64
        && job
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(job)
}

/// The progress files of one jobs folder (regular files only, no links), in name order, with
/// their job ids; at most [`JOBS_DIR_ENTRIES_MAX`] entries are examined.
fn progress_files(jobs: &Path) -> Vec<(PathBuf, String)> {
    let Ok(read) = std::fs::read_dir(jobs) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, String)> = read
        .take(JOBS_DIR_ENTRIES_MAX)
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name();
            let job = progress_file_job(name.to_str()?)?.to_owned();
            Some((e.path(), job))
        })
        .collect();
    files.sort();
    files
}

/// One progress file, if it is at most [`PROGRESS_FILE_BYTES_MAX`] and `budget` bytes and
/// holds the progress of `job`.
fn read_one(path: &Path, job: &str, budget: &mut u64) -> Option<JobProgress> {
    let file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len > PROGRESS_FILE_BYTES_MAX || len > *budget {
        return None;
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // The file may grow after the length was read: never take more than the limit.
    file.take(PROGRESS_FILE_BYTES_MAX.min(*budget) + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > PROGRESS_FILE_BYTES_MAX.min(*budget) {
        return None;
    }
    *budget -= bytes.len() as u64;
    let p: JobProgress = serde_json::from_slice(&bytes).ok()?;
    (p.job == job && !p.state.is_empty()).then_some(p)
}

/// The progress documents in `<dir>/jobs/` of each of `dirs`: each folder's files in name
/// order, each job once (the first directory holding it), skipping what cannot be read. Opens at
/// most [`PROGRESS_FILES_MAX`] files and reads at most [`PROGRESS_BYTES_TOTAL_MAX`] bytes.
pub fn read_progress<P: AsRef<Path>>(dirs: &[P]) -> Vec<JobProgress> {
    let mut out: Vec<JobProgress> = Vec::new();
    let mut opened = 0usize;
    let mut budget = PROGRESS_BYTES_TOTAL_MAX;
    for dir in dirs {
        for (path, job) in progress_files(&dir.as_ref().join(JOBS_DIR_NAME)) {
            if opened >= PROGRESS_FILES_MAX {
                return out;
            }
            if out.iter().any(|p| p.job == job) {
                continue;
            }
            opened += 1;
            if let Some(p) = read_one(&path, &job, &mut budget) {
                out.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_progress_file_names_name_a_job() {
        let id = "ab".repeat(32);
        assert_eq!(
            progress_file_job(&format!("{id}.progress.json")),
            Some(id.as_str())
        );
        for bad in [
            format!("{id}.seed"),
            format!("{id}.progress.tmp"),
            format!("{}.progress.json", "AB".repeat(32)),
            format!("{}.progress.json", "ab".repeat(31)),
            ".progress.json".to_owned(),
            "notes.progress.json".to_owned(),
        ] {
            assert_eq!(progress_file_job(&bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_are_bounded_and_skip_bad_files() {
        let tmp = tempfile::tempdir().unwrap();
        let jobs = tmp.path().join(JOBS_DIR_NAME);
        std::fs::create_dir_all(&jobs).unwrap();
        let write = |i: usize, body: &str| {
            std::fs::write(jobs.join(format!("{i:064x}{PROGRESS_SUFFIX}")), body).unwrap();
        };
        let doc = |i: usize| format!("{{\"job\":\"{i:064x}\",\"state\":\"running\"}}");
        for i in 0..PROGRESS_FILES_MAX + 10 {
            write(i, &doc(i));
        }
        let got = read_progress(&[tmp.path()]);
        assert_eq!(got.len(), PROGRESS_FILES_MAX);
        assert_eq!(got[0].job, format!("{:064x}", 0));

        // Malformed, oversized, of another job, or empty: skipped (and counted as opened).
        write(0, "{\"job\":");
        write(1, &format!("{}{}", doc(1), " ".repeat(1 << 20)));
        write(2, &doc(3));
        write(4, "{}");
        let got = read_progress(&[tmp.path()]);
        let jobs_read: Vec<String> = got.iter().map(|p| p.job.clone()).collect();
        assert_eq!(jobs_read.len(), PROGRESS_FILES_MAX - 4);
        for i in [0, 1, 2, 4] {
            assert!(!jobs_read.contains(&format!("{i:064x}")), "{i}");
        }
        assert!(read_progress(&[tmp.path().join("nowhere")]).is_empty());
    }
}
