//! Criterion: matmul of the `cpu` backend (exact integer dgemm + B16 requantization) against
//! `matrixmultiply` f32 sgemm on the model's shapes, and of the `wgpu` backend on each adapter
//! present against the `cpu` backend. After the criterion groups, prints the ratios measured
//! in this same process (`ratio cpu/sgemm`, `ratio wgpu/cpu` per adapter).

use criterion::{BenchmarkId, Criterion};
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::gpu::bench::{operands, time_kernels, time_sgemm, BENCH_SHAPES};
use leam_compute::numerics::gpu::{list_adapters, AdapterChoice, GpuKernels};
use leam_compute::numerics::kernels::{Kernels, MatmulShape};
use ndarray::{linalg::general_mat_mul, Array2};

/// Repetitions of the ratio measurement after the criterion groups.
const RATIO_REPS: usize = 3;
/// Timed training steps of the tiny model per backend.
const TRAIN_STEPS: u64 = 5;

fn gpus() -> Vec<GpuKernels> {
    list_adapters()
        .iter()
        .filter_map(|a| GpuKernels::with_adapter(&AdapterChoice::Index(a.index)).ok())
        .collect()
}

fn shapes() -> Vec<MatmulShape> {
    BENCH_SHAPES
        .iter()
        .map(|&(m, k, n)| MatmulShape::new(m, k, n))
        .collect()
}

fn bench(c: &mut Criterion, gpus: &[GpuKernels]) {
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(2));
    for s in shapes() {
        let id = format!("{}x{}x{}", s.m, s.k, s.n);
        let (a, b) = operands(s);
        g.bench_with_input(BenchmarkId::new("cpu", &id), &s, |bch, &s| {
            bch.iter(|| CpuKernels.matmul(&a, &b, s).expect("valid operands"))
        });
        let af = Array2::from_shape_fn((s.m, s.k), |(i, j)| a.mant[i * s.k + j] as f32);
        let bf = Array2::from_shape_fn((s.k, s.n), |(i, j)| b.mant[i * s.n + j] as f32);
        let mut cf = Array2::<f32>::zeros((s.m, s.n));
        g.bench_with_input(BenchmarkId::new("sgemm", &id), &s, |bch, _| {
            bch.iter(|| general_mat_mul(1.0, &af, &bf, 0.0, &mut cf))
        });
        for gpu in gpus {
            let name = format!("wgpu-{}", gpu.fingerprint().adapter.backend);
            g.bench_with_input(BenchmarkId::new(name, &id), &s, |bch, &s| {
                bch.iter(|| gpu.matmul(&a, &b, s).expect("fits the adapter"))
            });
        }
    }
    g.finish();
}

fn ratios(gpus: &[GpuKernels]) {
    let (mut cpu_s, mut sg_s) = (0.0, 0.0);
    let mut gpu_s = vec![0.0; gpus.len()];
    for s in shapes() {
        cpu_s += time_kernels(&CpuKernels, s, RATIO_REPS)
            .expect("valid operands")
            .secs;
        sg_s += time_sgemm(s, RATIO_REPS).secs;
        for (t, gpu) in gpu_s.iter_mut().zip(gpus) {
            *t += time_kernels(gpu, s, RATIO_REPS)
                .expect("fits the adapter")
                .secs;
        }
    }
    for (t, gpu) in gpu_s.iter().zip(gpus) {
        println!("ratio wgpu/cpu {} {:.3}", gpu.name(), cpu_s / t);
    }
    println!("ratio cpu/sgemm {:.3}", sg_s / cpu_s);
}

/// Every kernel on model-sized inputs, and steps of a tiny model, cpu against each adapter.
fn kernels_and_training(gpus: &[GpuKernels]) {
    use leam_compute::model::train::train_step_secs;
    use leam_compute::numerics::gpu::bench::kernel_timings;
    let cpu = kernel_timings(&CpuKernels, RATIO_REPS);
    for g in gpus {
        for ((name, c), (_, t)) in cpu.iter().zip(kernel_timings(g, RATIO_REPS)) {
            match (c, t) {
                (Ok(c), Ok(t)) => println!(
                    "kernel {name} {}: cpu {:.3} ms, wgpu {:.3} ms, ratio wgpu/cpu speed {:.3}",
                    g.name(),
                    c * 1e3,
                    t * 1e3,
                    c / t
                ),
                (c, t) => println!("kernel {name} {}: cpu {c:?}, wgpu {t:?}", g.name()),
            }
        }
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");
    let Ok(corpus) = leam_compute::model::data::Corpus::load(std::path::Path::new(path)) else {
        println!("no demo corpus at {path}: training steps not timed");
        return;
    };
    let fresh = || {
        let cfg = leam_compute::model::transformer::Config {
            vocab: corpus.vocab.len(),
            n_layer: 1,
            n_head: 2,
            n_embd: 32,
            block_size: 16,
        };
        let h = leam_compute::model::optim::Hyper::nanogpt_cpu()
            .to_fixed()
            .expect("valid hyperparameters");
        leam_compute::model::train::TrainState::new(cfg, h, 4, 1337).expect("valid config")
    };
    let steps = TRAIN_STEPS;
    let c = train_step_secs(&CpuKernels, &mut fresh(), &corpus.train, steps).expect("trains");
    for g in gpus {
        let t = train_step_secs(g, &mut fresh(), &corpus.train, steps).expect("trains");
        println!(
            "train tiny {}: cpu {:.2} ms/step, wgpu {:.2} ms/step, ratio wgpu/cpu speed {:.3}",
            g.name(),
            c * 1e3,
            t * 1e3,
            c / t
        );
    }
}

fn main() {
    let gpus = gpus();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &gpus);
    c.final_summary();
    kernels_and_training(&gpus);
    ratios(&gpus);
}
