//! Correctness of the integer model's math: its forward loss and every gradient tensor are
//! compared with a float64 implementation of the same forward (finite differences).
//! This is separate from bit-exactness: it checks that the integer program computes the
//! right derivatives, to within the quantization error of 16-bit mantissas.

use leam_compute::model::transformer::{forward_backward, Config};
use leam_compute::numerics::cpu::CpuKernels;
use leam_compute::numerics::fixed::{normal_q16, requantize, B24_MANT_MAX};
use leam_compute::numerics::kernels::Bfp;

struct F64Model<'a> {
    cfg: &'a Config,
    scale: f64,
}

fn layernorm(x: &[f64], w: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter()
        .zip(w)
        .map(|(v, w)| (v - mean) / var.sqrt() * w)
        .collect()
}

fn gelu(x: f64) -> f64 {
    x / (1.0 + (-1.702 * x).exp())
}

/// `y[r] = W x[r]` with `W` stored `out × in`.
fn linear(x: &[Vec<f64>], w: &[f64], out: usize) -> Vec<Vec<f64>> {
    x.iter()
        .map(|row| {
            (0..out)
                .map(|o| {
                    row.iter()
                        .zip(&w[o * row.len()..(o + 1) * row.len()])
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect()
        })
        .collect()
}

impl F64Model<'_> {
    fn loss(&self, p: &[Vec<f64>], idx: &[u32], tg: &[u32], b: usize, t: usize) -> f64 {
        let cfg = self.cfg;
        let (c, h, hs, v) = (cfg.n_embd, cfg.n_head, cfg.head_size(), cfg.vocab);
        let mut x: Vec<Vec<f64>> = (0..b * t)
            .map(|r| {
                (0..c)
                    .map(|j| p[0][idx[r] as usize * c + j] + p[1][(r % t) * c + j])
                    .collect()
            })
            .collect();
        for l in 0..cfg.n_layer {
            let base = 2 + 6 * l;
            let a1: Vec<Vec<f64>> = x.iter().map(|r| layernorm(r, &p[base])).collect();
            let qkv = linear(&a1, &p[base + 1], 3 * c);
            let mut y = vec![vec![0.0; c]; b * t];
            for bi in 0..b {
                for hi in 0..h {
                    for i in 0..t {
                        let q = &qkv[bi * t + i][hi * hs..(hi + 1) * hs];
                        let s: Vec<f64> = (0..=i)
                            .map(|j| {
                                let k = &qkv[bi * t + j][c + hi * hs..c + (hi + 1) * hs];
                                q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() * self.scale
                            })
                            .collect();
                        let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for (j, ej) in e.iter().enumerate() {
                            let vv = &qkv[bi * t + j][2 * c + hi * hs..2 * c + (hi + 1) * hs];
                            for d in 0..hs {
                                y[bi * t + i][hi * hs + d] += ej / z * vv[d];
                            }
                        }
                    }
                }
            }
            let o = linear(&y, &p[base + 2], c);
            for (xr, orow) in x.iter_mut().zip(&o) {
                for (a, b) in xr.iter_mut().zip(orow) {
                    *a += b;
                }
            }
            let a2: Vec<Vec<f64>> = x.iter().map(|r| layernorm(r, &p[base + 3])).collect();
            let f = linear(&a2, &p[base + 4], 4 * c);
            let g: Vec<Vec<f64>> = f
                .iter()
                .map(|r| r.iter().map(|&v| gelu(v)).collect())
                .collect();
            let o2 = linear(&g, &p[base + 5], c);
            for (xr, orow) in x.iter_mut().zip(&o2) {
                for (a, b) in xr.iter_mut().zip(orow) {
                    *a += b;
                }
            }
        }
        let lnf = 2 + 6 * cfg.n_layer;
        let af: Vec<Vec<f64>> = x.iter().map(|r| layernorm(r, &p[lnf])).collect();
        let logits = linear(&af, &p[0], v);
        let mut total = 0.0;
        for (r, row) in logits.iter().enumerate() {
            let mx = row.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
            total += z.ln() + mx - row[tg[r] as usize];
        }
        total / (b * t) as f64
    }
}

fn random_params(cfg: &Config, seed: u64) -> Vec<Bfp> {
    cfg.param_specs()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // std 0.35 (weights) or 1 ± 0.2 (LayerNorm weights), so every nonlinearity matters.
            let wide: Vec<i64> = (0..s.len() as u64)
                .map(|j| {
                    let n = normal_q16(seed, i as u64, j);
                    if s.decay {
                        n * 23
                    } else {
                        (1 << 22) + n * 13
                    }
                })
                .collect();
            let (m, e) = requantize(&wide, -22, B24_MANT_MAX);
            Bfp::new(m, e)
        })
        .collect()
}

#[test]
fn integer_gradients_match_float_finite_differences() {
    let cfg = Config {
        vocab: 7,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        block_size: 5,
    };
    let (b, t) = (3, 5);
    let params = random_params(&cfg, 11);
    let idx: Vec<u32> = (0..b * t).map(|i| ((i * 5 + 3) % 7) as u32).collect();
    let tg: Vec<u32> = (0..b * t).map(|i| ((i * 3 + 1) % 7) as u32).collect();
    let (pass, _) =
        forward_backward(&CpuKernels, &cfg, &params, &idx, Some(&tg), b, t, true).unwrap();
    let model = F64Model {
        cfg: &cfg,
        scale: cfg.attn_scale_q16() as f64 / 65536.0,
    };
    let mut pf: Vec<Vec<f64>> = params.iter().map(Bfp::to_f64).collect();
    let loss_f = model.loss(&pf, &idx, &tg, b, t);
    let loss_i = pass.mean_loss();
    assert!(
        (loss_f - loss_i).abs() < 2e-3 * loss_f.abs().max(1.0),
        "loss: integer {loss_i}, float {loss_f}"
    );
    eprintln!("loss: integer {loss_i}, float {loss_f}");
    let eps = 1e-5;
    for (ti, spec) in cfg.param_specs().iter().enumerate() {
        let gi = pass.grads[ti].to_f64();
        let mut fd = vec![0.0; spec.len()];
        for j in 0..spec.len() {
            let orig = pf[ti][j];
            pf[ti][j] = orig + eps;
            let lp = model.loss(&pf, &idx, &tg, b, t);
            pf[ti][j] = orig - eps;
            let lm = model.loss(&pf, &idx, &tg, b, t);
            pf[ti][j] = orig;
            fd[j] = (lp - lm) / (2.0 * eps);
        }
        let norm: f64 = fd.iter().map(|v| v * v).sum::<f64>().sqrt();
        let err: f64 = fd
            .iter()
            .zip(&gi)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        eprintln!("{}: |fd| {norm:.3e} rel err {:.2e}", spec.name, err / norm);
        assert!(
            err <= 0.01 * norm + 1e-6,
            "{}: relative gradient error {:.4} (|fd| = {norm:.3e})",
            spec.name,
            err / norm
        );
    }
}
