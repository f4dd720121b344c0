//! `leam compute selftest`, `leam compute bench`: the kernels of every backend against the CPU
//! reference (bits) and against `matrixmultiply` sgemm (speed).
use leam_compute::numerics::backend::AutoDecision;
use std::process::ExitCode;

use anyhow::Context;
use leam_compute::model::train::train_step_secs;
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::gpu::bench::{
    kernel_timings, time_against_sgemm, time_kernels, BENCH_MODEL_SHAPES, BENCH_SHAPES,
    MEASURE_SECS_MIN,
};
use leam_compute::numerics::gpu::selftest::{self, Outcome};
use leam_compute::numerics::gpu::{list_adapters, AdapterChoice, GpuKernels, WithCpuFallback};
use leam_compute::numerics::kernels::{Kernels, MatmulShape};

use crate::cli::{self, Backend, CodeExt as _, EXIT_ENV, EXIT_INPUT, EXIT_INVALID};

/// A human line: stdout, or stderr when stdout carries JSON.
fn say(json: bool, line: &str) {
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

/// Repetitions per shape in `leam compute bench` unless `--reps` says otherwise: measurements
/// of at least `MEASURE_SECS_MIN` each, cpu and sgemm alternately, shapes round robin, best of
/// 10 (about 7 s; best of 5 single calls, 0.15 s, varied by ±0.1 between runs).
const BENCH_REPS_DEFAULT: usize = 10;
/// Upper bound of `--reps`.
const BENCH_REPS_MAX: usize = 1000;
/// Upper bound of `--train-steps`.
const TRAIN_STEPS_MAX: u64 = 1000;
/// Training steps `leam compute bench --train-step` runs and reports one by one.
const TRAIN_STEP_BENCH_STEPS: u64 = 4;

/// The optional parts of `leam compute bench`.
#[derive(Debug)]
struct Extra {
    kernels: bool,
    train_steps: u64,
    corpus: Option<std::path::PathBuf>,
    json: bool,
}

/// Per-kernel seconds on cpu and on each adapter, with the ratio cpu time / wgpu time.
fn kernel_table(gpus: &[WithCpuFallback], reps: usize, json: bool) {
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
                        leam_compute::numerics::kernels::KernelError::Unsupported { .. } =>
                            "UNSUPPORTED".to_string(),
                        other => other.to_string(),
                    }
                )),
            }
        }
        say(json, &line);
    }
}

/// Seconds per training step of the tiny model on cpu and each adapter.
fn train_table(gpus: &[WithCpuFallback], extra: &Extra) -> anyhow::Result<()> {
    use leam_compute::model::data::Corpus;
    use leam_compute::model::optim::Hyper;
    use leam_compute::model::train::TrainState;
    use leam_compute::model::transformer::Config;
    let path = cli::find_corpus(extra.corpus.as_deref())?;
    let corpus = Corpus::load(&path)
        .with_context(|| format!("loading corpus {}", path.display()))
        .code(EXIT_INPUT)?;
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
    say(
        extra.json,
        &format!(
            "train tiny (1 layer, 32 wide, context 16, batch 4): cpu {:.2} ms/step, params {}",
            c * 1e3,
            hex::encode(st.params_commitment())
        ),
    );
    for g in gpus {
        let mut st = fresh()?;
        let t = train_step_secs(g, &mut st, &corpus.train, extra.train_steps)?;
        say(
            extra.json,
            &format!(
                "train tiny: {} {:.2} ms/step (cpu/wgpu speed {:.3}), params {}, ops on cpu: {:?}",
                g.name(),
                t * 1e3,
                c / t,
                hex::encode(st.params_commitment()),
                g.fallback_counts()
            ),
        );
    }
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub enum ComputeCmd {
    /// Run every kernel against the CPU reference on each local adapter; prints the device
    /// fingerprint and PASS/FAIL/UNSUPPORTED per kernel; exit 1 on any mismatch, 3 if the
    /// adapter named by --adapter cannot be opened (no adapter at all and none named: exit 0,
    /// nothing to compare, except under CI=true: exit 3).
    #[command(after_long_help = "Example:\n  leam compute selftest --adapter vulkan --json")]
    Selftest {
        /// Adapter: `auto`, an index from the list, or a substring (`vulkan`, `gl`, …);
        /// default: every adapter.
        #[arg(long)]
        adapter: Option<String>,
        /// Print the result as one JSON document (fields in specs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Say which backend `--backend auto` takes on this machine and why (a hardware GPU only
    /// if it passes the kernel probe); exit 0 either way. `leam node` asks this of a child
    /// process, so that a node on the CPU never holds a GPU driver in its memory.
    #[command(after_long_help = "Example:\n  leam compute probe --json")]
    Probe {
        /// Print the decision as one JSON document (fields in specs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Time the cpu backend's matmul against matrixmultiply sgemm on the model's shapes
    /// (last line: `ratio <cpu/sgemm>`), and each wgpu adapter against cpu.
    #[command(
        after_long_help = "Example:\n  leam compute bench --backend cpu --reps 5\n  leam compute bench --backend wgpu --kernels --train-steps 5"
    )]
    Bench {
        /// Backends to time besides the sgemm baseline: cpu only; wgpu: cpu and every adapter
        /// (or --adapter; exit 3 without one); auto: cpu and every adapter that opens.
        #[arg(long, value_enum, default_value_t = Backend::Auto)]
        backend: Backend,
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
        /// batch 4) on each backend (0: none).
        #[arg(long, value_name = "STEPS", default_value_t = 0)]
        train_steps: u64,
        /// Corpus for --train-steps. Default: tinyshakespeare.txt next to the binary (or in
        /// data/ there), else data/tinyshakespeare.txt in the working folder.
        #[arg(long, value_name = "FILE")]
        corpus: Option<std::path::PathBuf>,
        /// Instead of the kernel timings: run a few training steps of --preset on --backend
        /// (cpu, the first wgpu adapter or --adapter, or what auto picks) and print per step
        /// the wall time, the bytes uploaded to and read back from the device and the queue
        /// submissions; the last line is `bytes_per_step <uploaded+downloaded>` (mean).
        #[arg(long)]
        train_step: bool,
        /// Model and batch of --train-step (the `leam train` presets).
        #[arg(long, value_enum, default_value_t = cli::Preset::NanogptCpu)]
        preset: cli::Preset,
        /// With --train-step: keep tensors on the host, every kernel call uploading its
        /// inputs and reading its result back (the path before device-resident tensors; the
        /// baseline to compare with).
        #[arg(long, requires = "train_step")]
        host_tensors: bool,
        /// Print the matmul figures as one JSON document (fields in specs/cli.md); the
        /// human lines go to stderr.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ComputeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ComputeCmd::Selftest { adapter, json } => selftest_cmd(adapter, json),
        ComputeCmd::Probe { json } => {
            let d = leam_compute::numerics::backend::decide_auto_here();
            if json {
                println!("{}", cli::auto_decision_json(&d));
            } else {
                match &d {
                    AutoDecision::Gpu => {
                        println!("backend wgpu: the adapter passes the kernel probe")
                    }
                    AutoDecision::Cpu { reason, warning } => {
                        println!("backend cpu: {reason}");
                        if let Some(w) = warning {
                            println!("WARNING: {w}");
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ComputeCmd::Bench {
            backend,
            adapter,
            reps,
            kernels,
            train_steps,
            corpus,
            train_step,
            preset,
            host_tensors,
            json,
        } => {
            if train_step {
                return train_step_cmd(
                    backend,
                    adapter,
                    preset,
                    corpus.as_deref(),
                    host_tensors,
                    json,
                );
            }
            if !(1..=BENCH_REPS_MAX).contains(&reps) {
                return Err(cli::fail(
                    EXIT_INPUT,
                    anyhow::anyhow!("--reps must be between 1 and {BENCH_REPS_MAX}, got {reps}"),
                ));
            }
            if train_steps > TRAIN_STEPS_MAX {
                return Err(cli::fail(
                    EXIT_INPUT,
                    anyhow::anyhow!(
                        "--train-steps must be at most {TRAIN_STEPS_MAX}, got {train_steps}"
                    ),
                ));
            }
            let extra = Extra {
                kernels,
                train_steps,
                corpus,
                json,
            };
            bench_cmd(backend, adapter, reps, &extra)
        }
    }
}

/// Opens the adapters a command covers: the one named, or every one listed.
fn open_adapters(adapter: Option<String>, json: bool) -> anyhow::Result<Vec<GpuKernels>> {
    match adapter {
        Some(a) => {
            let choice = AdapterChoice::parse(&a);
            Ok(vec![GpuKernels::with_adapter(&choice)
                .with_context(|| format!("opening wgpu adapter '{a}'"))
                .code(EXIT_ENV)?])
        }
        None => {
            let mut out = Vec::new();
            for a in list_adapters() {
                match GpuKernels::with_adapter(&AdapterChoice::Index(a.index)) {
                    Ok(k) => out.push(k),
                    Err(e) => say(json, &format!("adapter {a}: not usable: {e}")),
                }
            }
            Ok(out)
        }
    }
}

fn selftest_cmd(adapter: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let gpus = open_adapters(adapter, json)?;
    let mut failed = 0usize;
    let mut adapters = Vec::new();
    if gpus.is_empty() {
        say(
            json,
            "no wgpu adapter on this machine: nothing to compare with the cpu reference",
        );
        // In CI an adapter (lavapipe, llvmpipe) is part of the environment: its absence is a
        // failure, not a pass with nothing checked.
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            if json {
                cli::print_json(&serde_json::json!({ "adapters": [], "failed": 0 }))?;
            }
            say(json, "CI=true and no wgpu adapter: failing");
            return Ok(ExitCode::from(cli::EXIT_ENV));
        }
    }
    for g in &gpus {
        let f = g.fingerprint();
        say(json, &format!("== {}", g.name()));
        say(json, &format!("{f}"));
        say(json, &format!("fingerprint {}", f.digest_hex()));
        let mut kernels = Vec::new();
        for c in selftest::run(g) {
            let (outcome, detail) = match &c.outcome {
                Outcome::Pass => {
                    say(json, &format!("PASS {} ({} cases)", c.kernel, c.cases));
                    ("pass", None)
                }
                Outcome::Unsupported => {
                    say(json, &format!("UNSUPPORTED {}", c.kernel));
                    ("unsupported", None)
                }
                Outcome::Fail(why) => {
                    failed += 1;
                    say(json, &format!("FAIL {}: {why}", c.kernel));
                    ("fail", Some(why.to_string()))
                }
            };
            kernels.push(serde_json::json!({
                "kernel": c.kernel, "outcome": outcome, "cases": c.cases, "detail": detail,
            }));
        }
        adapters.push(serde_json::json!({
            "name": g.name(), "fingerprint": f.digest_hex(), "kernels": kernels,
        }));
    }
    if json {
        cli::print_json(&serde_json::json!({ "adapters": adapters, "failed": failed }))?;
    }
    if failed > 0 {
        say(json, &format!("{failed} kernel check(s) FAILED"));
        Ok(ExitCode::from(EXIT_INVALID))
    } else {
        if !gpus.is_empty() {
            say(
                json,
                "all ported kernels bit-identical to the cpu reference",
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `leam compute bench --train-step`: the host↔device traffic of training steps.
fn train_step_cmd(
    sel: Backend,
    adapter: Option<String>,
    preset: cli::Preset,
    corpus: Option<&std::path::Path>,
    host_tensors: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use leam_compute::model::data::Corpus;
    use leam_compute::model::train::TrainState;
    let kernels: Box<dyn Kernels> = match (sel, adapter) {
        (Backend::Wgpu, adapter) => {
            let g = open_adapters(Some(adapter.unwrap_or_else(|| "auto".into())), json)?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    cli::fail(EXIT_ENV, anyhow::anyhow!("--backend wgpu: no wgpu adapter"))
                })?;
            Box::new(WithCpuFallback::new(g))
        }
        (other, _) => other.open()?,
    };
    let path = cli::find_corpus(corpus)?;
    let corpus = Corpus::load(&path)
        .with_context(|| format!("loading corpus {}", path.display()))
        .code(EXIT_INPUT)?;
    let f = cli::TrainSettings::of(Some(preset));
    let mut st = TrainState::new(
        f.model(corpus.vocab.len()),
        f.hyper().to_fixed().code(EXIT_INPUT)?,
        f.batch_size,
        f.seed,
    )
    .code(EXIT_INPUT)?;
    let batch_bytes = (f.batch_size * f.block_size * 2 * std::mem::size_of::<u32>()) as u64;
    say(
        json,
        &format!(
            "train step, preset {}, backend {}: {} layers, {} wide, context {}, batch {} (the batch's token ids are {} bytes)",
            preset.name(),
            kernels.name(),
            f.n_layer,
            f.n_embd,
            f.block_size,
            f.batch_size,
            batch_bytes
        ),
    );
    // The training loop's own session: the state goes to the backend once, each step moves
    // its batch up and its loss (and the kernels' requantization keys) down.
    let before = kernels.traffic();
    let ex = if host_tensors {
        leam_compute::numerics::tensor::Exec::host_only(kernels.as_ref())
    } else {
        leam_compute::numerics::tensor::Exec::new(kernels.as_ref())
    };
    let mut session = st.session_on(ex)?;
    let open = kernels.traffic().since(&before);
    let traffic = |d: &leam_compute::numerics::kernels::Traffic| {
        format!(
            "uploaded_bytes {} downloaded_bytes {} submissions {}",
            d.uploaded_bytes, d.downloaded_bytes, d.submissions
        )
    };
    say(
        json,
        &format!("session open (the state, once per run): {}", traffic(&open)),
    );
    let mut rows = Vec::new();
    for i in 0..TRAIN_STEP_BENCH_STEPS {
        let b = session
            .state_ref()
            .batch_for(&corpus.train, session.step_number())?;
        let before = kernels.traffic();
        let t = std::time::Instant::now();
        session.step(&b)?;
        let wall_ms = t.elapsed().as_secs_f64() * 1e3;
        let d = kernels.traffic().since(&before);
        say(
            json,
            &format!("step {i} wall_ms {wall_ms:.1} {}", traffic(&d)),
        );
        rows.push((wall_ms, d));
    }
    let fallbacks = session.exec().fallbacks();
    let replays = session.exec().replays();
    let before = kernels.traffic();
    session.finish()?;
    let close = kernels.traffic().since(&before);
    say(
        json,
        &format!(
            "session close (the state, read back once): {}; kernels run off the device: {fallbacks}; steps replayed on the checked path: {replays}",
            traffic(&close)
        ),
    );
    let n = rows.len().max(1) as u64;
    let bytes_per_step = rows
        .iter()
        .map(|(_, d)| d.uploaded_bytes + d.downloaded_bytes)
        .sum::<u64>()
        / n;
    if json {
        cli::print_json(&serde_json::json!({
            "preset": preset.name(),
            "backend": kernels.name(),
            "batch_bytes": batch_bytes,
            "steps": rows.iter().map(|(ms, d)| serde_json::json!({
                "wall_ms": ms,
                "uploaded_bytes": d.uploaded_bytes,
                "downloaded_bytes": d.downloaded_bytes,
                "submissions": d.submissions,
            })).collect::<Vec<_>>(),
            "bytes_per_step": bytes_per_step,
            "session_open": {"uploaded_bytes": open.uploaded_bytes, "downloaded_bytes": open.downloaded_bytes},
            "session_close": {"uploaded_bytes": close.uploaded_bytes, "downloaded_bytes": close.downloaded_bytes},
            "resident_fallbacks": fallbacks,
            "deferred_replays": replays,
        }))?;
    } else {
        println!("bytes_per_step {bytes_per_step}");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_cmd(
    sel: Backend,
    adapter: Option<String>,
    reps: usize,
    extra: &Extra,
) -> anyhow::Result<ExitCode> {
    let json = extra.json;
    let shapes: Vec<MatmulShape> = BENCH_SHAPES
        .iter()
        .map(|&(m, k, n)| MatmulShape::new(m, k, n))
        .collect();
    // Open the adapters first: `--backend wgpu` without one is refused before minutes of cpu
    // timing.
    let gpus: Vec<WithCpuFallback> = if sel == Backend::Cpu {
        Vec::new()
    } else {
        open_adapters(adapter, json)?
            .into_iter()
            .map(WithCpuFallback::new)
            .collect()
    };
    if sel == Backend::Wgpu && gpus.is_empty() {
        return Err(cli::fail(
            EXIT_ENV,
            anyhow::anyhow!(
                "--backend wgpu: no wgpu adapter on this machine (use --backend cpu or auto)"
            ),
        ));
    }
    let cpu = CpuKernels::new();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    say(
        json,
        &format!(
            "matmul, best of {reps} measurements of >= {:.0} ms (cpu and sgemm alternately, \
             shapes round robin), {threads} hardware threads; GOP/s counts a multiply-add as 2",
            MEASURE_SECS_MIN * 1e3
        ),
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
    let mut shape_rows = Vec::new();
    let all: Vec<MatmulShape> = shapes.iter().chain(&BENCH_MODEL_SHAPES).copied().collect();
    for (i, (s, (c, g))) in all
        .iter()
        .zip(time_against_sgemm(&cpu, &all, reps)?)
        .enumerate()
    {
        say(
            json,
            &format!(
                "{:<18} cpu {:8.2} GOP/s  sgemm {:8.2} GOP/s  ratio {:.2}",
                label(s),
                c.gops,
                g.gops,
                c.gops / g.gops
            ),
        );
        shape_rows.push(serde_json::json!({
            "shape": label(s), "cpu_gops": c.gops, "sgemm_gops": g.gops,
            "in_ratio": i < shapes.len(),
        }));
        all_cpu_s += c.secs;
        all_sg_s += g.secs;
        if i < shapes.len() {
            cpu_s += c.secs;
            sg_s += g.secs;
            ops += 2.0 * s.macs() as f64;
            cpu_times.push(c);
        }
    }
    if extra.kernels {
        kernel_table(&gpus, reps, json);
    }
    if extra.train_steps > 0 {
        train_table(&gpus, extra)?;
    }
    let mut adapter_rows = Vec::new();
    for gpu in gpus.iter().map(WithCpuFallback::gpu) {
        let mut gs = 0.0;
        for (&s, c) in shapes.iter().zip(&cpu_times) {
            let t = time_kernels(gpu, s, reps)?;
            gs += t.secs;
            say(
                json,
                &format!(
                    "{}x{}x{}  {} {:8.2} GOP/s  cpu {:8.2} GOP/s  ratio wgpu/cpu {:.3}",
                    s.m,
                    s.k,
                    s.n,
                    gpu.name(),
                    t.gops,
                    c.gops,
                    t.gops / c.gops
                ),
            );
        }
        say(
            json,
            &format!(
                "total {}: {:.2} GOP/s, ratio wgpu/cpu {:.3}",
                gpu.name(),
                ops / gs / 1e9,
                cpu_s / gs
            ),
        );
        adapter_rows.push(serde_json::json!({
            "name": gpu.name(), "gops": ops / gs / 1e9, "ratio_wgpu_cpu": cpu_s / gs,
        }));
    }
    say(
        json,
        &format!(
            "ratio over every shape above (training-step products included) {:.2}",
            all_sg_s / all_cpu_s
        ),
    );
    say(
        json,
        &format!(
            "total cpu {:.2} GOP/s, sgemm {:.2} GOP/s ({} shapes of BENCH_SHAPES)",
            ops / cpu_s / 1e9,
            ops / sg_s / 1e9,
            shapes.len()
        ),
    );
    if json {
        cli::print_json(&serde_json::json!({
            "reps": reps,
            "threads": threads,
            "shapes": shape_rows,
            "cpu_gops": ops / cpu_s / 1e9,
            "sgemm_gops": ops / sg_s / 1e9,
            "ratio_all_shapes": all_sg_s / all_cpu_s,
            "adapters": adapter_rows,
            "ratio": sg_s / cpu_s,
        }))?;
    } else {
        println!("ratio {:.2}", sg_s / cpu_s);
    }
    Ok(ExitCode::SUCCESS)
}
