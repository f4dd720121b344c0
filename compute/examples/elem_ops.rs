//! Best-of-N time of each non-matmul CPU kernel on the tensor shapes of the nanoGPT CPU preset
//! (768 tokens, 128 channels, MLP 512, 48 attention rows of 64×64):
//! `cargo run --release -p leam-compute --example elem_ops -- [reps] [filter]`.
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::fixed::hash3;
use leam_compute::numerics::kernels::{AdamStep, Bfp, Kernels};
use std::time::{Duration, Instant};

fn gen(seed: u64, len: usize, lim: i32) -> Vec<i32> {
    (0..len as u64)
        .map(|i| (hash3(seed, 5, i) % (2 * lim as u64 + 1)) as i32 - lim)
        .collect()
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let filter = std::env::args().nth(2).unwrap_or_default();
    let k = CpuKernels;
    let (t, c, h) = (768, 128, 512);
    let x = Bfp::new(gen(1, t * c, 32_767), -12);
    let y = Bfp::new(gen(2, t * c, 32_767), -11);
    let wide = Bfp::new(gen(3, t * c, (1 << 23) - 1), -20);
    let xh = Bfp::new(gen(4, t * h, 32_767), -12);
    let dyh = Bfp::new(gen(5, t * h, 32_767), -25);
    let w = Bfp::new(gen(6, c, 32_767), -14);
    let att = Bfp::new(gen(7, 48 * 64 * 64, 32_767), -10);
    let (hat, r) = k.layernorm(&x, t, c).unwrap();
    let p = k.softmax(&att, 48 * 64, 64, true, 11_585).unwrap();
    let logits = Bfp::new(gen(8, t * 65, 32_767), -11);
    let targets: Vec<u32> = (0..t as u64)
        .map(|i| (hash3(9, 9, i) % 65) as u32)
        .collect();
    let st = AdamStep {
        beta1_q30: 966_367_642,
        beta2_q30: 1_072_668_082,
        alpha_q40: 1_099_511_628,
        decay_q40: 109_951_163,
    };
    let pw = Bfp::new(gen(10, c * h, (1 << 23) - 1), -30);
    let gw = Bfp::new(gen(11, c * h, 32_767), -20);
    let mw = Bfp::new(gen(12, c * h, 32_767), -21);
    let rw = Bfp::new(gen(13, c * h, 32_767), -18);
    let zero = Bfp::new(vec![0; c * h], -64);
    // Exponents and scalars as in training (the update small next to the parameters, whose
    // largest magnitude it does not move across a power of two).
    let st_train = AdamStep {
        beta1_q30: 966_367_642,
        beta2_q30: 1_063_004_406,
        alpha_q40: 25_134_854,
        decay_q40: 4_354_501,
    };
    let gt = Bfp::new(gen(14, c * h, 32_767), -22);
    let mt = Bfp::new(gen(15, c * h, 32_767), -24);
    let rt = Bfp::new(
        gen(16, c * h, 32_767).iter().map(|v| v.abs()).collect(),
        -25,
    );
    let pt = Bfp::new(gen(17, c * h, 6_000_000), -26);
    type Op<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let ops: Vec<Op<'_>> = vec![
        ("add", Box::new(|| drop(k.add(&x, &wide)))),
        ("add_same_exp", Box::new(|| drop(k.add(&x, &x)))),
        ("requant", Box::new(|| drop(k.requant(&wide, 32_767)))),
        ("rescale", Box::new(|| drop(k.rescale(&x, -9)))),
        ("mul_cols", Box::new(|| drop(k.mul_cols(&x, &w, t, c)))),
        ("col_dot", Box::new(|| drop(k.col_dot(&x, &y, t, c)))),
        ("layernorm", Box::new(|| drop(k.layernorm(&x, t, c)))),
        (
            "layernorm_bwd",
            Box::new(|| drop(k.layernorm_bwd(&y, &hat, &r, -12, t, c))),
        ),
        (
            "softmax",
            Box::new(|| drop(k.softmax(&att, 48 * 64, 64, true, 11_585))),
        ),
        (
            "softmax_bwd",
            Box::new(|| drop(k.softmax_bwd(&p, &att, 48 * 64, 64, 11_585))),
        ),
        (
            "cross_entropy",
            Box::new(|| drop(k.cross_entropy(&logits, &targets, t, 65))),
        ),
        ("gelu", Box::new(|| drop(k.gelu(&xh)))),
        ("gelu_bwd", Box::new(|| drop(k.gelu_bwd(&xh, &dyh)))),
        ("sum_squares", Box::new(|| drop(k.sum_squares(&x)))),
        ("scale", Box::new(|| drop(k.scale(&x, 1 << 29)))),
        (
            "adamw_128x512",
            Box::new(|| drop(k.adamw(&pw, &gw, &mw, &rw, &st))),
        ),
        (
            "adamw_train",
            Box::new(|| drop(k.adamw(&pt, &gt, &mt, &rt, &st_train))),
        ),
        (
            "adamw_first_step",
            Box::new(|| drop(k.adamw(&pw, &gw, &zero, &zero, &st))),
        ),
    ];
    for (name, f) in &ops {
        if !name.contains(filter.as_str()) {
            continue;
        }
        let mut best = Duration::MAX;
        for _ in 0..reps {
            let t0 = Instant::now();
            f();
            best = best.min(t0.elapsed());
        }
        println!("{name:>16} {:>9.3} ms", best.as_secs_f64() * 1e3);
    }
}
