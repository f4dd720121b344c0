//! Time per kernel of a few training steps of the nanoGPT CPU preset on the cpu backend:
//! `cargo run --release -p leam-compute --example profile_step -- [steps]`. Independent
//! backward chains run concurrently (`rayon::join` in the model), so the per-kernel times can
//! add up to more than the step's wall time, which the first line gives.
use leam_compute::model::data::Corpus;
use leam_compute::model::optim::Hyper;
use leam_compute::model::train::TrainState;
use leam_compute::model::transformer::Config;
use leam_compute::numerics::backend::Timed;
use leam_compute::numerics::cpu::CpuKernels;

fn main() -> anyhow::Result<()> {
    let steps: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let corpus = Corpus::load(std::path::Path::new("data/tinyshakespeare.txt"))?;
    let cfg = Config {
        vocab: corpus.vocab.len(),
        n_layer: 4,
        n_head: 4,
        n_embd: 128,
        block_size: 64,
    };
    let mut st = TrainState::new(cfg, Hyper::nanogpt_cpu().to_fixed()?, 12, 1337)?;
    let k = Timed::new(CpuKernels);
    let t0 = std::time::Instant::now();
    for _ in 0..steps {
        let b = st.batch_for(&corpus.train, st.step)?;
        st.step(&k, &b)?;
    }
    let total = t0.elapsed();
    println!(
        "{steps} steps in {:.3} s ({:.1} ms/step)",
        total.as_secs_f64(),
        total.as_secs_f64() * 1e3 / steps as f64
    );
    for (op, n, d) in k.report() {
        println!(
            "{op:>18} {n:>6} calls {:>9.1} ms/step",
            d.as_secs_f64() * 1e3 / steps as f64
        );
    }
    Ok(())
}
