//! `leam compute selftest`, `leam compute bench`: the kernels of every backend against the CPU
//! reference (bits) and against `matrixmultiply` sgemm (speed).
use std::process::ExitCode;

use anyhow::Context;
use leam_compute::gpu::bench::{
    kernel_timings, time_against_sgemm, time_kernels, train_step_secs, BENCH_MODEL_SHAPES,
    BENCH_SHAPES, MEASURE_SECS_MIN,
};
use leam_compute::gpu::selftest::{self, Outcome};
use leam_compute::gpu::{list_adapters, AdapterChoice, GpuKernels, WithCpuFallback};
use leam_compute::kernels::{CpuKernels, Kernels, MatmulShape};

/// Which backends a command covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendSel {
    /// The CPU reference only.
    Cpu,
    /// Every wgpu adapter (or the one `--adapter` names).
    Wgpu,
    /// Both.
    All,
}

/// Repetitions per shape in `leam compute bench` unless `--reps` says otherwise: measurements
/// of at least `MEASURE_SECS_MIN` each, cpu and sgemm alternately, shapes round robin, best of
/// 10 (about 7 s; best of 5 single calls, 0.15 s, varied by ±0.1 between runs).
const BENCH_REPS_DEFAULT: usize = 10;
/// Upper bound of `--reps`.
const BENCH_REPS_MAX: usize = 1000;
/// Upper bound of `--train-steps`.
const TRAIN_STEPS_MAX: u64 = 1000;

/// The optional parts of `leam compute bench`.
#[derive(Debug)]
struct Extra {
    kernels: bool,
    train_steps: u64,
    corpus: std::path::PathBuf,
}

/// Per-kernel seconds on cpu and on each adapter, with the ratio cpu time / wgpu time.
fn kernel_table(gpus: &[WithCpuFallback], reps: usize) {
    let cpu = kernel_timings(&CpuKernels, reps);
    let on_gpus: Vec<_> = gpus.iter().map(|g| kernel_timings(g.gpu(), reps)).collect();
    for (i, (name, c)) in cpu.iter().enumerate() {
        let c_ms = c.as_ref().map(|s| s * 1e3).unwrap_or(f64::NAN);
        let mut line = format!("kernel {name:<17} cpu {c_ms:9.3} ms");
        for (g, t) in gpus.iter().zip(&on_gpus) {
            match &t[i].1 {
                Ok(s) => line.push_str(&format!(
                    " | {} {:9.3} ms (wgpu/cpu speed {:.3})",
                    g.gpu().fingerprint().adapter.backend,
                    s * 1e3,
                    c_ms / (s * 1e3)
                )),
                Err(e) => line.push_str(&format!(
                    " | {} {}",
                    g.gpu().fingerprint().adapter.backend,
                    match e {
                        leam_compute::kernels::KernelError::Unsupported { .. } =>
                            "UNSUPPORTED".to_string(),
                        other => other.to_string(),
                    }
                )),
            }
        }
        println!("{line}");
    }
}

/// Seconds per training step of the tiny model on cpu and each adapter.
fn train_table(gpus: &[WithCpuFallback], extra: &Extra) -> anyhow::Result<()> {
    use leam_compute::data::Corpus;
    use leam_compute::model::Config;
    use leam_compute::optim::Hyper;
    use leam_compute::train::TrainState;
    let corpus = Corpus::load(&extra.corpus)
        .with_context(|| format!("loading corpus {}", extra.corpus.display()))?;
    let fresh = || -> anyhow::Result<TrainState> {
        let cfg = Config {
            vocab: corpus.vocab.len(),
            n_layer: 1,
            n_head: 2,
            n_embd: 32,
            block_size: 16,
        };
        Ok(TrainState::new(
            cfg,
            Hyper::nanogpt_cpu().to_fixed()?,
            4,
            1337,
        )?)
    };
    let mut st = fresh()?;
    let c = train_step_secs(&CpuKernels, &mut st, &corpus.train, extra.train_steps)?;
    println!(
        "train tiny (1 layer, 32 wide, context 16, batch 4): cpu {:.2} ms/step, params {}",
        c * 1e3,
        hex::encode(st.params_commitment())
    );
    for g in gpus {
        let mut st = fresh()?;
        let t = train_step_secs(g, &mut st, &corpus.train, extra.train_steps)?;
        println!(
            "train tiny: {} {:.2} ms/step (cpu/wgpu speed {:.3}), params {}, ops on cpu: {:?}",
            g.name(),
            t * 1e3,
            c / t,
            hex::encode(st.params_commitment()),
            g.fallback_counts()
        );
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum ComputeCmd {
    /// Run every kernel against the CPU reference on each local adapter; prints the device
    /// fingerprint and PASS/FAIL/UNSUPPORTED per kernel; exits non-zero on any mismatch.
    Selftest {
        /// Adapter: `auto`, an index from the list, or a substring (`vulkan`, `gl`, …);
        /// default: every adapter.
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Time the cpu backend's matmul against matrixmultiply sgemm on the model's shapes
    /// (last line: `ratio <cpu/sgemm>`); with `--backend wgpu|all` also each adapter.
    Bench {
        /// Backends to time besides the sgemm baseline.
        #[arg(long, value_enum, default_value = "cpu")]
        backend: BackendSel,
        /// Time every backend (same as `--backend all`).
        #[arg(long)]
        all: bool,
        /// Adapter for the wgpu backend (default: every adapter).
        #[arg(long)]
        adapter: Option<String>,
        /// Repetitions per shape (best time is reported).
        #[arg(long, default_value_t = BENCH_REPS_DEFAULT)]
        reps: usize,
        /// Also time every kernel (model-sized inputs) on each backend, wgpu against cpu.
        #[arg(long)]
        kernels: bool,
        /// Also time this many training steps of a tiny model (1 layer, width 32, context 16,
        /// batch 4) on each backend; needs `--corpus`.
        #[arg(long, default_value_t = 0)]
        train_steps: u64,
        /// Corpus for `--train-steps`.
        #[arg(long, default_value = "data/tinyshakespeare.txt")]
        corpus: std::path::PathBuf,
    },
}

pub fn run(cmd: ComputeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ComputeCmd::Selftest { adapter } => selftest_cmd(adapter),
        ComputeCmd::Bench {
            backend,
            all,
            adapter,
            reps,
            kernels,
            train_steps,
            corpus,
        } => {
            anyhow::ensure!(
                (1..=BENCH_REPS_MAX).contains(&reps),
                "--reps must be between 1 and {BENCH_REPS_MAX}, got {reps}"
            );
            anyhow::ensure!(
                train_steps <= TRAIN_STEPS_MAX,
                "--train-steps must be at most {TRAIN_STEPS_MAX}, got {train_steps}"
            );
            let sel = if all { BackendSel::All } else { backend };
            let extra = Extra {
                kernels,
                train_steps,
                corpus,
            };
            bench_cmd(sel, adapter, reps, &extra)
        }
    }
}

/// Opens the adapters a command covers: the one named, or every one listed.
fn open_adapters(adapter: Option<String>) -> anyhow::Result<Vec<GpuKernels>> {
    match adapter {
        Some(a) => {
            let choice = AdapterChoice::parse(&a);
            Ok(vec![GpuKernels::with_adapter(&choice)
                .with_context(|| format!("opening wgpu adapter '{a}'"))?])
        }
        None => {
            let mut out = Vec::new();
            for a in list_adapters() {
                match GpuKernels::with_adapter(&AdapterChoice::Index(a.index)) {
                    Ok(k) => out.push(k),
                    Err(e) => println!("adapter {a}: not usable: {e}"),
                }
            }
            Ok(out)
        }
    }
}

fn selftest_cmd(adapter: Option<String>) -> anyhow::Result<ExitCode> {
    let gpus = open_adapters(adapter)?;
    if gpus.is_empty() {
        println!("no wgpu adapter on this machine: nothing to compare with the cpu reference");
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0usize;
    for g in &gpus {
        let f = g.fingerprint();
        println!("== {}", g.name());
        println!("{f}");
        println!("fingerprint {}", f.digest_hex());
        for c in selftest::run(g) {
            match &c.outcome {
                Outcome::Pass => println!("PASS {} ({} cases)", c.kernel, c.cases),
                Outcome::Unsupported => println!("UNSUPPORTED {}", c.kernel),
                Outcome::Fail(why) => {
                    failed += 1;
                    println!("FAIL {}: {why}", c.kernel);
                }
            }
        }
    }
    if failed > 0 {
        println!("{failed} kernel check(s) FAILED");
        Ok(ExitCode::FAILURE)
    } else {
        println!("all ported kernels bit-identical to the cpu reference");
        Ok(ExitCode::SUCCESS)
    }
}

fn bench_cmd(
    sel: BackendSel,
    adapter: Option<String>,
    reps: usize,
    extra: &Extra,
) -> anyhow::Result<ExitCode> {
    let shapes: Vec<MatmulShape> = BENCH_SHAPES
        .iter()
        .map(|&(m, k, n)| MatmulShape::new(m, k, n))
        .collect();
    let cpu = CpuKernels::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "matmul, best of {reps} measurements of >= {:.0} ms (cpu and sgemm alternately, shapes \
         round robin), {threads} hardware threads; GOP/s counts a multiply-add as 2",
        MEASURE_SECS_MIN * 1e3
    );
    let label = |s: &MatmulShape| {
        let mut l = format!("{}x{}x{}", s.m, s.k, s.n);
        if s.batch > 1 {
            l = format!("{}*{l}", s.batch);
        }
        for (flag, name) in [(s.trans_a, " ta"), (s.trans_b, " tb")] {
            if flag {
                l.push_str(name);
            }
        }
        l
    };
    // The ratio over BENCH_SHAPES (the last line, comparable across versions) and over every
    // product of a training step (BENCH_MODEL_SHAPES too), each shape weighted by its time.
    let (mut cpu_s, mut sg_s, mut ops) = (0.0, 0.0, 0.0);
    let (mut all_cpu_s, mut all_sg_s) = (0.0, 0.0);
    let mut cpu_times = Vec::new();
    let all: Vec<MatmulShape> = shapes.iter().chain(&BENCH_MODEL_SHAPES).copied().collect();
    for (i, (s, (c, g))) in all
        .iter()
        .zip(time_against_sgemm(&cpu, &all, reps)?)
        .enumerate()
    {
        println!(
            "{:<18} cpu {:8.2} GOP/s  sgemm {:8.2} GOP/s  ratio {:.2}",
            label(s),
            c.gops,
            g.gops,
            c.gops / g.gops
        );
        all_cpu_s += c.secs;
        all_sg_s += g.secs;
        if i < shapes.len() {
            cpu_s += c.secs;
            sg_s += g.secs;
            ops += 2.0 * s.macs() as f64;
            cpu_times.push(c);
        }
    }
    let gpus: Vec<WithCpuFallback> = if sel == BackendSel::Cpu {
        Vec::new()
    } else {
        open_adapters(adapter)?
            .into_iter()
            .map(WithCpuFallback::new)
            .collect()
    };
    if extra.kernels {
        kernel_table(&gpus, reps);
    }
    if extra.train_steps > 0 {
        train_table(&gpus, extra)?;
    }
    {
        for gpu in gpus.iter().map(WithCpuFallback::gpu) {
            let mut gs = 0.0;
            for (&s, c) in shapes.iter().zip(&cpu_times) {
                let t = time_kernels(gpu, s, reps)?;
                gs += t.secs;
                println!(
                    "{}x{}x{}  {} {:8.2} GOP/s  cpu {:8.2} GOP/s  ratio wgpu/cpu {:.3}",
                    s.m,
                    s.k,
                    s.n,
                    gpu.name(),
                    t.gops,
                    c.gops,
                    t.gops / c.gops
                );
            }
            println!(
                "total {}: {:.2} GOP/s, ratio wgpu/cpu {:.3}",
                gpu.name(),
                ops / gs / 1e9,
                cpu_s / gs
            );
        }
    }
    println!(
        "ratio over every shape above (training-step products included) {:.2}",
        all_sg_s / all_cpu_s
    );
    println!(
        "total cpu {:.2} GOP/s, sgemm {:.2} GOP/s ({} shapes of BENCH_SHAPES)",
        ops / cpu_s / 1e9,
        ops / sg_s / 1e9,
        shapes.len()
    );
    println!("ratio {:.2}", sg_s / cpu_s);
    Ok(ExitCode::SUCCESS)
}
