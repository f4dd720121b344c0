//! Time of `CpuKernels::matmul` per product of one nanoGPT CPU preset training step (the 75
//! products of `model.rs`, grouped by shape), on random B16 mantissas, run inside the thread
//! pool as the training step runs: `cargo run --release -p leam-compute --example matmul_shapes
//! -- [repetitions] [name filter]`. Prints best-of time per call, ms per step and GMAC/s per
//! shape (only the shapes whose name contains the filter, if given).
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::kernels::{Bfp, Kernels, MatmulShape};
use std::time::{Duration, Instant};

/// Random mantissas in `[−32767, 32767]` from a fixed-seed xorshift generator.
fn random_mant(len: usize, seed: &mut u64) -> Vec<i32> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed % 65535) as i32 - 32767
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20);
    let filter = std::env::args().nth(2).unwrap_or_default();
    // nanoGPT CPU preset: batch 12, block 64, 4 layers, 4 heads, 128 wide, vocab 65.
    let (bt, c, t, hs, bh, v, layers) = (768, 128, 64, 32, 48, 65, 4);
    let new = MatmulShape::new;
    let shapes: Vec<(&str, MatmulShape, usize)> = vec![
        ("qkv", new(bt, c, 3 * c).tb(), layers),
        ("att s", new(t, hs, t).tb().batched(bh), layers),
        ("att y", new(t, t, hs).batched(bh), layers),
        ("proj", new(bt, c, c).tb(), layers),
        ("fc", new(bt, c, 4 * c).tb(), layers),
        ("mproj", new(bt, 4 * c, c).tb(), layers),
        ("head", new(bt, c, v).tb(), 1),
        ("d head x", new(bt, v, c), 1),
        ("d head w", new(v, bt, c).ta(), 1),
        ("d mproj w", new(c, bt, 4 * c).ta(), layers),
        ("d mproj x", new(bt, c, 4 * c), layers),
        ("d fc w", new(4 * c, bt, c).ta(), layers),
        ("d fc x", new(bt, 4 * c, c), layers),
        ("d proj w", new(c, bt, c).ta(), layers),
        ("d proj x", new(bt, c, c), layers),
        ("d att p", new(t, hs, t).tb().batched(bh), layers),
        ("d att v", new(t, t, hs).ta().batched(bh), layers),
        ("d att q", new(t, t, hs).batched(bh), layers),
        ("d att k", new(t, t, hs).ta().batched(bh), layers),
        ("d qkv w", new(3 * c, bt, c).ta(), layers),
        ("d qkv x", new(bt, 3 * c, c), layers),
    ];
    let kern = CpuKernels::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut total = Duration::ZERO;
    let mut total_macs = 0usize;
    println!(
        "{:>10} {:>28} {:>9} {:>9} {:>7}",
        "", "batch×m×k×n", "µs/call", "ms/step", "GMAC/s"
    );
    for (name, s, count) in shapes.into_iter().filter(|x| x.0.contains(&filter)) {
        let a = Bfp {
            mant: random_mant(s.batch * s.m * s.k, &mut seed),
            exp: 0,
        };
        let b = Bfp {
            mant: random_mant(s.batch * s.k * s.n, &mut seed),
            exp: 0,
        };
        let best = rayon::scope(|_| -> anyhow::Result<Duration> {
            let mut best = Duration::MAX;
            for _ in 0..reps {
                let t0 = Instant::now();
                std::hint::black_box(kern.matmul(&a, &b, s)?);
                best = best.min(t0.elapsed());
            }
            Ok(best)
        })?;
        let macs = s.batch * s.m * s.k * s.n;
        total += best * count as u32;
        total_macs += macs * count;
        let dims = format!(
            "{}×{}×{}×{}{}{}",
            s.batch,
            s.m,
            s.k,
            s.n,
            if s.trans_a { " ta" } else { "" },
            if s.trans_b { " tb" } else { "" }
        );
        println!(
            "{name:>10} {dims:>28} {:>9.1} {:>9.2} {:>7.1}",
            best.as_secs_f64() * 1e6,
            best.as_secs_f64() * 1e3 * count as f64,
            macs as f64 / best.as_secs_f64() / 1e9
        );
    }
    println!(
        "total {:.2} ms/step, {:.1} GMAC/s",
        total.as_secs_f64() * 1e3,
        total_macs as f64 / total.as_secs_f64() / 1e9
    );
    Ok(())
}
