//! A provider's offer is measured, never declared (`specs/market.md` §1): the node runs the
//! kernel self-test on its own backend (a backend whose bits differ from the CPU reference
//! offers nothing), then a benchmark shard, and offers the compute units it counted from the
//! shard's shapes over the shard's wall time. `leam node --offer-price` measures at start;
//! `leam offer` asks the running node to measure again (so a node restarted on another backend,
//! or under other load, offers what it does now).

use std::path::Path;
use std::time::Instant;

use leam_compute::model::optim::Hyper;
use leam_compute::model::train::TrainState;
use leam_compute::model::transformer::Config;
use leam_compute::numerics::gpu::selftest::{self, Outcome};
use leam_compute::numerics::kernels::Kernels;
use leam_compute::verify::replay::{run_shard, ModelRunner};
use leam_compute::verify::shard::compute_units;
use leam_ledger::entry::{Digest32, Offer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Inner steps of the benchmark shard.
pub const BENCH_STEPS: u32 = 4;
/// File in a node directory with the node's last measurement.
pub const MEASUREMENT_FILE: &str = "measurement.json";
/// Largest measurement file read back.
pub const MEASUREMENT_BYTES_MAX: u64 = 64 * 1024;

/// The benchmark shard's text, repeated to `BENCH_TEXT_BYTES` (any text does: units are counted
/// from the model's shapes, not from what it reads).
const BENCH_TEXT: &str = "Partners pool their accelerators, startups bid for shards, \
    and every step is replayed bit for bit by anyone who doubts it.\n";
/// Length of the benchmark shard's corpus.
const BENCH_TEXT_BYTES: usize = 2048;

/// What a node measured on its backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurement {
    /// The backend's name (`cpu`, `wgpu/<backend>/<adapter>`).
    pub backend: String,
    /// The device description the fingerprint hashes ([`Kernels::device`]).
    pub device: String,
    /// SHA-256 of `device`: the offer's device fingerprint.
    #[serde(with = "hex::serde")]
    pub fingerprint: Digest32,
    /// Kernels the self-test compared with the CPU reference (0 on the CPU reference itself).
    pub selftest_kernels: usize,
    /// Compute units of the benchmark shard (from its shapes).
    pub units: u64,
    /// Its wall time on the backend, milliseconds.
    pub ms: u64,
    /// `units` per hour at that speed: the offer's throughput.
    pub units_per_hour: u64,
    /// Memory for tensors on the backend, bytes ([`Kernels::memory_bytes`]).
    #[serde(default)]
    pub memory_bytes: u64,
    /// When it was measured (Unix ms).
    pub measured_at_ms: u64,
}

/// Why a node offers nothing.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A kernel gave other bits than the CPU reference: nothing this backend computes would
    /// survive a replica or a referee.
    #[error("the kernel self-test failed on {backend}: kernel `{kernel}`: {detail}")]
    SelfTest {
        /// The backend.
        backend: String,
        /// The failing kernel.
        kernel: &'static str,
        /// What differed.
        detail: String,
    },
    /// The benchmark shard did not run.
    #[error("the benchmark shard failed on {backend}: {detail}")]
    Bench {
        /// The backend.
        backend: String,
        /// The error.
        detail: String,
    },
}

/// The kernel self-test, then the benchmark shard, on `kernels`; `now_ms` stamps the result.
pub fn measure(kernels: &dyn Kernels, now_ms: u64) -> Result<Measurement, MeasureError> {
    let backend = kernels.name();
    // The CPU backend is the reference itself: comparing it with itself proves nothing.
    let selftest_kernels = if backend == "cpu" {
        0
    } else {
        let checks = selftest::run(kernels);
        if let Some(c) = checks
            .iter()
            .find(|c| matches!(c.outcome, Outcome::Fail(_)))
        {
            let Outcome::Fail(detail) = &c.outcome else {
                unreachable!("matched above")
            };
            return Err(MeasureError::SelfTest {
                backend,
                kernel: c.kernel,
                detail: detail.clone(),
            });
        }
        checks.len()
    };
    let bench = |e: &dyn std::fmt::Display| MeasureError::Bench {
        backend: backend.clone(),
        detail: e.to_string(),
    };
    let text: String = BENCH_TEXT.chars().cycle().take(BENCH_TEXT_BYTES).collect();
    let runner = ModelRunner::new(kernels, text.as_bytes()).map_err(|e| bench(&e))?;
    let cfg = Config {
        vocab: runner.vocab_size(),
        n_layer: 2,
        n_head: 4,
        n_embd: 64,
        block_size: 32,
    };
    let hyper = Hyper::nanogpt_cpu().to_fixed().map_err(|e| bench(&e))?;
    let start = TrainState::new(cfg, hyper, 8, 1337).map_err(|e| bench(&e))?;
    let spec = runner
        .spec_for(&start, 0, text.len() as u64, BENCH_STEPS)
        .map_err(|e| bench(&e))?;
    let units = compute_units(&spec);
    let t = Instant::now();
    run_shard(&runner, &spec, &start).map_err(|e| bench(&e))?;
    let ms = (t.elapsed().as_millis() as u64).max(1);
    let device = kernels.device();
    Ok(Measurement {
        fingerprint: Sha256::digest(device.as_bytes()).into(),
        backend,
        device,
        selftest_kernels,
        units,
        ms,
        units_per_hour: units.saturating_mul(3_600_000) / ms,
        memory_bytes: kernels.memory_bytes(),
        measured_at_ms: now_ms,
    })
}

/// [`measure`], and on success [`save`] to `DIR/measurement.json` (a file that cannot be
/// written is logged: the measurement still stands).
pub fn measure_into(
    dir: &Path,
    kernels: &dyn Kernels,
    now_ms: u64,
) -> Result<Measurement, MeasureError> {
    let m = measure(kernels, now_ms)?;
    if let Err(e) = save(dir, &m) {
        tracing::warn!(error = %e, "writing the measurement");
    }
    Ok(m)
}

/// The offer of a measurement at `price_cents_per_kilo_unit`, valid until `valid_until_ms`.
pub fn offer(
    m: &Measurement,
    offer_id: u64,
    price_cents_per_kilo_unit: u64,
    valid_until_ms: u64,
) -> Offer {
    Offer {
        offer_id,
        device_fingerprint: m.fingerprint,
        compute_units_per_hour: m.units_per_hour,
        memory_bytes: m.memory_bytes,
        price_cents_per_kilo_unit,
        valid_until_ms,
    }
}

/// Writes the measurement to `DIR/measurement.json` (atomically).
pub fn save(dir: &Path, m: &Measurement) -> std::io::Result<()> {
    let path = dir.join(MEASUREMENT_FILE);
    let tmp = dir.join(format!(".{MEASUREMENT_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(m)?)?;
    std::fs::rename(tmp, path)
}

/// The measurement in `DIR/measurement.json`, if a node wrote one.
pub fn load(dir: &Path) -> Option<Measurement> {
    let path = dir.join(MEASUREMENT_FILE);
    if std::fs::metadata(&path).ok()?.len() > MEASUREMENT_BYTES_MAX {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use leam_compute::numerics::cpu::CpuKernels;

    #[test]
    fn the_cpu_reference_measures_a_positive_throughput_and_round_trips() {
        let m = measure(&CpuKernels::new(), 1_700_000_000_000).unwrap();
        assert_eq!(m.backend, "cpu");
        assert_eq!(m.selftest_kernels, 0);
        assert!(m.units > 0 && m.units_per_hour >= m.units, "{m:?}");
        assert_eq!(m.fingerprint, <[u8; 32]>::from(Sha256::digest(b"cpu")));
        // The host's memory, as Linux reports it (this test runs on Linux).
        assert!(m.memory_bytes > 1 << 20, "{m:?}");
        let o = offer(&m, 7, 55, 9);
        assert_eq!(
            (
                o.offer_id,
                o.compute_units_per_hour,
                o.memory_bytes,
                o.price_cents_per_kilo_unit
            ),
            (7, m.units_per_hour, m.memory_bytes, 55)
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        save(dir.path(), &m).unwrap();
        assert_eq!(load(dir.path()), Some(m));
    }
}
