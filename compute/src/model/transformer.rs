//! The decoder-only transformer (nanoGPT's `GPT` with `bias=False`, no dropout): token and
//! learned positional embeddings, `n_layer` blocks of (LayerNorm → causal multi-head
//! self-attention → residual, LayerNorm → MLP 4× with GELU → residual), final LayerNorm,
//! output head tied to the token embedding, mean cross-entropy.
//!
//! Forward and backward are written against `&dyn Kernels`, so every backend runs the same
//! integer program. Data movement (gathers, head splits) and
//! arithmetic both go through `numerics::tensor::Exec`, so tensors stay where the backend keeps
//! them. See `specs/compute.md` for the op list.

use crate::numerics::fixed::{isqrt, normal_q16, requantize, B24_MANT_MAX};
use crate::numerics::kernels::{Bfp, KernelError, Kernels, MatmulShape};
use crate::numerics::tensor::{Exec, Scalar, Stats, Tensor};
use rayon::prelude::*;

// The one set of model limits: `Config::validate`, training, checkpoints and shard specs
// (`verify::shard`) all check these.
/// Largest vocabulary, in tokens.
pub const VOCAB_MAX: usize = 1 << 16;
/// Longest context, in tokens.
pub const BLOCK_SIZE_MAX: usize = 4096;
/// Widest embedding.
pub const N_EMBD_MAX: usize = 4096;
/// Most transformer layers.
pub const N_LAYER_MAX: usize = 64;
/// Most attention heads per layer.
pub const N_HEAD_MAX: usize = 64;
/// Largest batch, in sequences.
pub const BATCH_SIZE_MAX: usize = 1024;
/// Init standard deviation of weights (nanoGPT: 0.02).
pub const INIT_STD: f64 = 0.02;
/// Hash stream of parameter initialization (tensor `i` uses `STREAM_INIT + i`).
pub const STREAM_INIT: u64 = 0x1_0000;

/// Model hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Vocabulary size (number of distinct tokens).
    pub vocab: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Embedding width (`n_embd % n_head == 0`).
    pub n_embd: usize,
    /// Context length.
    pub block_size: usize,
}

/// Why a model call was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A kernel failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// A configuration field is out of range.
    #[error("model config field `{field}` = {found}: {expected}")]
    Config {
        /// Field name.
        field: &'static str,
        /// Its value.
        found: usize,
        /// What was expected.
        expected: String,
    },
    /// A token id, length or parameter tensor does not fit the config.
    #[error("model input `{what}`: expected {expected}, found {found}")]
    Input {
        /// Which input.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
}

/// Name, shape and weight-decay flag of one parameter tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// nanoGPT-style name, e.g. `h.0.attn.c_attn.weight`.
    pub name: String,
    /// Rows (1 for vectors).
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Whether AdamW decays it (2-D tensors only, as nanoGPT).
    pub decay: bool,
}

impl ParamSpec {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// True for an empty tensor.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Index of a block's tensors within the parameter list.
const PER_LAYER: usize = 6;
const WTE: usize = 0;
const WPE: usize = 1;
const LN1: usize = 0;
const ATTN: usize = 1;
const PROJ: usize = 2;
const LN2: usize = 3;
const FC: usize = 4;
const MPROJ: usize = 5;

impl Config {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), ModelError> {
        let check = |field: &'static str, v: usize, max: usize| {
            if v == 0 || v > max {
                return Err(ModelError::Config {
                    field,
                    found: v,
                    expected: format!("between 1 and {max}"),
                });
            }
            Ok(())
        };
        check("vocab", self.vocab, VOCAB_MAX)?;
        check("n_layer", self.n_layer, N_LAYER_MAX)?;
        check("n_head", self.n_head, N_HEAD_MAX.min(self.n_embd.max(1)))?;
        check("n_embd", self.n_embd, N_EMBD_MAX)?;
        check("block_size", self.block_size, BLOCK_SIZE_MAX)?;
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ModelError::Config {
                field: "n_embd",
                found: self.n_embd,
                expected: format!("a multiple of n_head = {}", self.n_head),
            });
        }
        Ok(())
    }

    /// Head size `n_embd / n_head`.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Attention score scale `floor(2^16 / sqrt(head_size))` in Q16, by integer square root.
    pub fn attn_scale_q16(&self) -> u32 {
        isqrt((1u128 << 32) / self.head_size() as u128) as u32
    }

    /// The parameter tensors in canonical order (the order of hashes and checkpoints).
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (c, v, t) = (self.n_embd, self.vocab, self.block_size);
        let spec = |name: String, rows, cols, decay| ParamSpec {
            name,
            rows,
            cols,
            decay,
        };
        let mut out = vec![
            spec("wte.weight".into(), v, c, true),
            spec("wpe.weight".into(), t, c, true),
        ];
        for l in 0..self.n_layer {
            out.push(spec(format!("h.{l}.ln_1.weight"), 1, c, false));
            out.push(spec(format!("h.{l}.attn.c_attn.weight"), 3 * c, c, true));
            out.push(spec(format!("h.{l}.attn.c_proj.weight"), c, c, true));
            out.push(spec(format!("h.{l}.ln_2.weight"), 1, c, false));
            out.push(spec(format!("h.{l}.mlp.c_fc.weight"), 4 * c, c, true));
            out.push(spec(format!("h.{l}.mlp.c_proj.weight"), c, 4 * c, true));
        }
        out.push(spec("ln_f.weight".into(), 1, c, false));
        out
    }

    /// Number of scalar parameters.
    pub fn n_params(&self) -> usize {
        self.param_specs().iter().map(ParamSpec::len).sum()
    }

    /// Integer multiply-accumulates of one forward + backward pass on `batch` sequences of
    /// `block_size` tokens, counted from the shapes of every matmul (3 per weight matmul and 3
    /// per attention matmul: forward, input gradient, weight/other-operand gradient).
    pub fn train_macs(&self, batch: usize) -> u64 {
        let (b, t, c, v) = (
            batch as u64,
            self.block_size as u64,
            self.n_embd as u64,
            self.vocab as u64,
        );
        let bt = b * t;
        let per_layer = bt * c * 3 * c + bt * c * c + bt * c * 4 * c * 2 // weights
            + 2 * b * t * t * c; // scores and weighted values over all heads
        3 * (self.n_layer as u64 * per_layer + bt * c * v)
    }
}

/// Initial parameters from `seed` (B24 master copies): weights `N(0, 0.02)`, residual
/// projections `N(0, 0.02 / sqrt(2·n_layer))` as nanoGPT, LayerNorm weights 1. Normal samples
/// are [`normal_q16`] of `(seed, STREAM_INIT + tensor index, element index)` times the standard
/// deviation in Q32 ([`init_std_q32`], integers only), requantized to B24.
pub fn init_params(cfg: &Config, seed: u64) -> Vec<Bfp> {
    let proj_std_q32 = init_std_q32(2 * cfg.n_layer as u64);
    cfg.param_specs()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if !s.decay {
                return Bfp::new(vec![1 << 22; s.len()], -22);
            }
            let std_q32 = if s.name.ends_with("c_proj.weight") {
                proj_std_q32
            } else {
                init_std_q32(1)
            };
            let wide: Vec<i64> = (0..s.len() as u64)
                .map(|j| normal_q16(seed, STREAM_INIT + i as u64, j) * std_q32)
                .collect();
            let (mant, exp) = requantize(&wide, -48, B24_MANT_MAX);
            Bfp::new(mant, exp)
        })
        .collect()
}

/// `INIT_STD / sqrt(d)` in Q32, rounded to nearest (ties to even), in integers only: with
/// `INIT_STD` = m·2^e exactly (its f64 value), the result is the integer nearest to
/// `sqrt(m²·2^(2(e+32)) / d)`, found by an integer square root and one exact comparison. The
/// test `init_std_is_the_correctly_rounded_value` shows it equals the f64 formula
/// `round(INIT_STD / sqrt(d) · 2^32)` for every `d = 2·n_layer` the model allows.
pub fn init_std_q32(d: u64) -> i64 {
    let bits = INIT_STD.to_bits();
    // A normal positive f64: mantissa with the implicit bit, unbiased exponent of the integer.
    let m = u128::from((bits & ((1 << 52) - 1)) | (1 << 52));
    let e = ((bits >> 52) & 0x7ff) as i32 - 1075;
    // value·2^32 = m·2^k with k = e + 32 < 0 for INIT_STD < 2^-21·…: want round(m·2^k / √d)
    // = round(√(N / D)) with N = m², D = d·2^(−2k).
    let k = e + 32;
    debug_assert!(
        k < 0 && -2 * k < 64,
        "INIT_STD is a small positive constant"
    );
    let n = m * m;
    let den = u128::from(d.max(1)) << (-2 * k);
    let r = isqrt(n / den);
    // r = ⌊√(N/D)⌋; round up when √(N/D) > r + ½, i.e. (2r+1)²·D < 4N (equality: ties to even).
    let lhs = (2 * r + 1) * (2 * r + 1) * den;
    let q = match lhs.cmp(&(4 * n)) {
        std::cmp::Ordering::Less => r + 1,
        std::cmp::Ordering::Greater => r,
        std::cmp::Ordering::Equal => r + (r & 1),
    };
    q as i64
}

/// Result of [`forward_backward`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Sum over all positions of the cross-entropy, in Q16 nats.
    pub loss_sum_q16: i64,
    /// Number of positions (`batch · block_size`).
    pub positions: usize,
    /// Gradients of the mean loss, one B16 tensor per parameter (empty without backward).
    pub grads: Vec<Bfp>,
}

impl Pass {
    /// Mean loss in nats (reporting only).
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum_q16 as f64 / 65536.0 / self.positions.max(1) as f64
    }
}

/// Result of [`forward_backward_on`]: [`Pass`] with gradients where the executor keeps
/// tensors.
#[derive(Debug)]
pub struct TensorPass {
    /// Sum over all positions of the cross-entropy, in Q16 nats (possibly still on the
    /// device: [`Exec::value`]).
    pub loss_sum_q16: Scalar,
    /// Number of positions.
    pub positions: usize,
    /// Gradients of the mean loss (empty without backward).
    pub grads: Vec<Tensor>,
}

/// The parameters of a pass: host master copies, or tensors where the executor keeps them.
#[derive(Clone, Copy, Debug)]
pub enum Params<'a> {
    /// Host B24 tensors (moved to the device first when the executor is resident).
    Host(&'a [Bfp]),
    /// Tensors of the executor.
    Tensors(&'a [Tensor]),
}

impl Params<'_> {
    fn lens(&self) -> Vec<usize> {
        match self {
            Params::Host(p) => p.iter().map(Bfp::len).collect(),
            Params::Tensors(p) => p.iter().map(Tensor::len).collect(),
        }
    }
}

struct LayerCache {
    x_in: Tensor,
    h1: Tensor,
    r1: Stats,
    a1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    y: Tensor,
    x_mid: Tensor,
    h2: Tensor,
    r2: Stats,
    a2: Tensor,
    f: Tensor,
    gf: Tensor,
}

/// Runs two independent kernel chains of the backward pass with `rayon::join`, so the two
/// cores overlap their serial parts (rounding-shift scans, small shapes, fork/join tails)
/// instead of meeting at a barrier after every kernel. Results are the same bits: each chain
/// only reads shared inputs. Errors are reported as the sequential order would: the first
/// chain's error wins, as it ran first there (kernels have no side effects, so running the
/// second chain anyway is unobservable).
fn both<A: Send, B: Send>(
    a: impl FnOnce() -> Result<A, KernelError> + Send,
    b: impl FnOnce() -> Result<B, KernelError> + Send,
) -> Result<(A, B), KernelError> {
    let (ra, rb) = rayon::join(a, b);
    Ok((ra?, rb?))
}

/// `[B·H, T, hs]` ×3 (aligned to one exponent) → `[B·T, 3C]`.
fn merge_qkv(
    ex: &Exec<'_>,
    parts: [&Tensor; 3],
    shape: (usize, usize, usize, usize),
) -> Result<Tensor, KernelError> {
    let al = ex.rescale_to_max(&parts)?;
    ex.merge_heads(&[&al[0], &al[1], &al[2]], shape)
}

fn check_inputs(
    cfg: &Config,
    params: &[usize],
    idx: &[u32],
    batch: usize,
    t: usize,
) -> Result<(), ModelError> {
    cfg.validate()?;
    let specs = cfg.param_specs();
    if params.len() != specs.len() {
        return Err(ModelError::Input {
            what: "parameter tensors",
            expected: specs.len().to_string(),
            found: params.len().to_string(),
        });
    }
    for (s, &p) in specs.iter().zip(params) {
        if p != s.len() {
            return Err(ModelError::Input {
                what: "parameter tensor length",
                expected: format!("{} elements for {}", s.len(), s.name),
                found: p.to_string(),
            });
        }
    }
    if t == 0 || t > cfg.block_size || batch == 0 || batch > BATCH_SIZE_MAX {
        return Err(ModelError::Input {
            what: "batch shape",
            expected: format!(
                "1..={} sequences of 1..={} tokens",
                BATCH_SIZE_MAX, cfg.block_size
            ),
            found: format!("{batch} of {t}"),
        });
    }
    if idx.len() != batch * t {
        return Err(ModelError::Input {
            what: "token ids",
            expected: format!("{} (batch · length)", batch * t),
            found: idx.len().to_string(),
        });
    }
    if let Some(i) = idx.iter().position(|&v| v as usize >= cfg.vocab) {
        return Err(ModelError::Input {
            what: "token id",
            expected: format!("< vocab {}", cfg.vocab),
            found: format!("{} at position {i}", idx[i]),
        });
    }
    Ok(())
}

/// Forward (and, if `targets` is given, the loss; if also `backward`, all gradients) on
/// `batch` sequences of `t` tokens each (`idx` row-major `batch × t`), on host tensors.
/// Returns the pass and the final logits (`batch·t × vocab`). [`forward_backward_on`] is the
/// same program on tensors where the backend keeps them.
#[allow(clippy::too_many_arguments)] // each argument is a distinct, documented input
pub fn forward_backward(
    kern: &dyn Kernels,
    cfg: &Config,
    params: &[Bfp],
    idx: &[u32],
    targets: Option<&[u32]>,
    batch: usize,
    t: usize,
    backward: bool,
) -> Result<(Pass, Bfp), ModelError> {
    let ex = Exec::new(kern);
    let (pass, logits) = forward_backward_on(
        &ex,
        cfg,
        Params::Host(params),
        idx,
        targets,
        batch,
        t,
        backward,
    )?;
    let grads = pass
        .grads
        .into_iter()
        .map(|g| ex.take(g))
        .collect::<Result<_, _>>()?;
    let pass = Pass {
        loss_sum_q16: ex.value(&pass.loss_sum_q16)?,
        positions: pass.positions,
        grads,
    };
    Ok((pass, ex.take(logits)?))
}

/// [`forward_backward`] on the executor's tensors: with a resident backend, parameters,
/// activations and gradients stay on the device; only the ids go up and the loss comes down.
#[allow(clippy::too_many_arguments)] // each argument is a distinct, documented input
pub fn forward_backward_on(
    ex: &Exec<'_>,
    cfg: &Config,
    params: Params<'_>,
    idx: &[u32],
    targets: Option<&[u32]>,
    batch: usize,
    t: usize,
    backward: bool,
) -> Result<(TensorPass, Tensor), ModelError> {
    check_inputs(cfg, &params.lens(), idx, batch, t)?;
    if let Some(i) = targets.and_then(|tg| tg.iter().position(|&v| v as usize >= cfg.vocab)) {
        let tg = targets.unwrap_or_default();
        return Err(ModelError::Input {
            what: "target id",
            expected: format!("< vocab {}", cfg.vocab),
            found: format!("{} at position {i}", tg[i]),
        });
    }
    let (c, v, h, hs) = (cfg.n_embd, cfg.vocab, cfg.n_head, cfg.head_size());
    let bt = batch * t;
    let bh = batch * h;
    let heads = (batch, t, h, hs);
    let scale = cfg.attn_scale_q16();
    // Tensors in parallel (most are too small to split on their own); the first error in
    // tensor order is reported, as a sequential loop would.
    let b16 = crate::numerics::fixed::B16_MANT_MAX;
    let w16: Vec<Result<Tensor, KernelError>> = match params {
        Params::Host(p) => p
            .par_iter()
            .map(|p| {
                if ex.is_resident() {
                    ex.requant(&ex.put_copy(p)?, b16)
                } else {
                    ex.kernels().requant(p, b16).map(Tensor::Host)
                }
            })
            .collect(),
        Params::Tensors(p) => p.par_iter().map(|p| ex.requant(p, b16)).collect(),
    };
    let w16: Vec<Tensor> = w16.into_iter().collect::<Result<_, _>>()?;
    let lp = |l: usize, i: usize| 2 + l * PER_LAYER + i;
    let lnf = 2 + cfg.n_layer * PER_LAYER;
    let ids = ex.ids(idx)?;

    let tok = ex.gather_rows(&w16[WTE], c, &ids)?;
    let pos = ex.gather_positions(&w16[WPE], c, t, bt)?;
    let mut x = ex.add(&tok, &pos)?;
    let mut caches = Vec::with_capacity(cfg.n_layer);
    for l in 0..cfg.n_layer {
        let x_in = x;
        let (h1, r1) = ex.layernorm(&x_in, bt, c)?;
        let a1 = ex.mul_cols(&h1, &w16[lp(l, LN1)], bt, c)?;
        let qkv = ex.matmul(&a1, &w16[lp(l, ATTN)], MatmulShape::new(bt, c, 3 * c).tb())?;
        let q = ex.split_heads(&qkv, heads, 3 * c, 0)?;
        let kk = ex.split_heads(&qkv, heads, 3 * c, 1)?;
        let vv = ex.split_heads(&qkv, heads, 3 * c, 2)?;
        drop(qkv);
        let s = ex.matmul(&q, &kk, MatmulShape::new(t, hs, t).tb().batched(bh))?;
        let p = ex.softmax(&s, bh * t, t, true, scale)?;
        drop(s);
        let yh = ex.matmul(&p, &vv, MatmulShape::new(t, t, hs).batched(bh))?;
        let y = ex.merge_heads(&[&yh], heads)?;
        drop(yh);
        let o = ex.matmul(&y, &w16[lp(l, PROJ)], MatmulShape::new(bt, c, c).tb())?;
        let x_mid = ex.add(&x_in, &o)?;
        drop(o);
        let (h2, r2) = ex.layernorm(&x_mid, bt, c)?;
        let a2 = ex.mul_cols(&h2, &w16[lp(l, LN2)], bt, c)?;
        let f = ex.matmul(&a2, &w16[lp(l, FC)], MatmulShape::new(bt, c, 4 * c).tb())?;
        let gf = ex.gelu(&f)?;
        let o2 = ex.matmul(&gf, &w16[lp(l, MPROJ)], MatmulShape::new(bt, 4 * c, c).tb())?;
        x = ex.add(&x_mid, &o2)?;
        caches.push(LayerCache {
            x_in,
            h1,
            r1,
            a1,
            q,
            k: kk,
            v: vv,
            p,
            y,
            x_mid,
            h2,
            r2,
            a2,
            f,
            gf,
        });
    }
    let (hf, rf) = ex.layernorm(&x, bt, c)?;
    let af = ex.mul_cols(&hf, &w16[lnf], bt, c)?;
    let logits = ex.matmul(&af, &w16[WTE], MatmulShape::new(bt, c, v).tb())?;
    let Some(targets) = targets else {
        let pass = TensorPass {
            loss_sum_q16: Scalar::Host(0),
            positions: bt,
            grads: Vec::new(),
        };
        return Ok((pass, logits));
    };
    let tids = ex.ids(targets)?;
    let (loss_sum_q16, dlogits) = ex.cross_entropy(&logits, &tids, bt, v)?;
    if !backward {
        let pass = TensorPass {
            loss_sum_q16,
            positions: bt,
            grads: Vec::new(),
        };
        return Ok((pass, logits));
    }

    let mut grads: Vec<Option<Tensor>> = vec![None; w16.len()];
    let (daf, dwte_head) = both(
        || ex.matmul(&dlogits, &w16[WTE], MatmulShape::new(bt, v, c)),
        || ex.matmul(&dlogits, &af, MatmulShape::new(v, bt, c).ta()),
    )?;
    drop(dlogits);
    let (g_lnf, dhf) = both(
        || ex.col_dot(&daf, &hf, bt, c),
        || ex.mul_cols(&daf, &w16[lnf], bt, c),
    )?;
    grads[lnf] = Some(g_lnf);
    let mut dx = ex.layernorm_bwd(&dhf, &hf, &rf, &x, bt, c)?;
    while let Some(cch) = caches.pop() {
        let l = caches.len();
        // MLP: each weight gradient runs beside the chain of input gradients it does not feed.
        let (g_mproj, df) = both(
            || ex.matmul(&dx, &cch.gf, MatmulShape::new(c, bt, 4 * c).ta()),
            || {
                let dgf = ex.matmul(&dx, &w16[lp(l, MPROJ)], MatmulShape::new(bt, c, 4 * c))?;
                ex.gelu_bwd(&cch.f, &dgf)
            },
        )?;
        grads[lp(l, MPROJ)] = Some(g_mproj);
        let (g_fc, (g_ln2, dx_mid)) = both(
            || ex.matmul(&df, &cch.a2, MatmulShape::new(4 * c, bt, c).ta()),
            || {
                let da2 = ex.matmul(&df, &w16[lp(l, FC)], MatmulShape::new(bt, 4 * c, c))?;
                let (g_ln2, dh2) = both(
                    || ex.col_dot(&da2, &cch.h2, bt, c),
                    || ex.mul_cols(&da2, &w16[lp(l, LN2)], bt, c),
                )?;
                let dxm = ex.layernorm_bwd(&dh2, &cch.h2, &cch.r2, &cch.x_mid, bt, c)?;
                Ok((g_ln2, ex.add(&dx, &dxm)?))
            },
        )?;
        grads[lp(l, FC)] = Some(g_fc);
        grads[lp(l, LN2)] = Some(g_ln2);
        // attention
        let (g_proj, dy) = both(
            || ex.matmul(&dx_mid, &cch.y, MatmulShape::new(c, bt, c).ta()),
            || ex.matmul(&dx_mid, &w16[lp(l, PROJ)], MatmulShape::new(bt, c, c)),
        )?;
        grads[lp(l, PROJ)] = Some(g_proj);
        let dyh = ex.split_heads(&dy, heads, c, 0)?;
        let (dp, dv) = both(
            || ex.matmul(&dyh, &cch.v, MatmulShape::new(t, hs, t).tb().batched(bh)),
            || ex.matmul(&cch.p, &dyh, MatmulShape::new(t, t, hs).ta().batched(bh)),
        )?;
        let ds = ex.softmax_bwd(&cch.p, &dp, bh * t, t, scale)?;
        let (dq, dk) = both(
            || ex.matmul(&ds, &cch.k, MatmulShape::new(t, t, hs).batched(bh)),
            || ex.matmul(&ds, &cch.q, MatmulShape::new(t, t, hs).ta().batched(bh)),
        )?;
        let dqkv = merge_qkv(ex, [&dq, &dk, &dv], heads)?;
        let (g_attn, (g_ln1, dxi)) = both(
            || ex.matmul(&dqkv, &cch.a1, MatmulShape::new(3 * c, bt, c).ta()),
            || {
                let da1 = ex.matmul(&dqkv, &w16[lp(l, ATTN)], MatmulShape::new(bt, 3 * c, c))?;
                let (g_ln1, dh1) = both(
                    || ex.col_dot(&da1, &cch.h1, bt, c),
                    || ex.mul_cols(&da1, &w16[lp(l, LN1)], bt, c),
                )?;
                let dxi = ex.layernorm_bwd(&dh1, &cch.h1, &cch.r1, &cch.x_in, bt, c)?;
                Ok((g_ln1, dxi))
            },
        )?;
        grads[lp(l, ATTN)] = Some(g_attn);
        grads[lp(l, LN1)] = Some(g_ln1);
        dx = ex.add(&dx_mid, &dxi)?;
    }
    let dwte_emb = ex.scatter_add_rows(&dx, &ids, v, c)?;
    let pos_idx: Vec<u32> = (0..bt).map(|r| (r % t) as u32).collect();
    let dwpe = ex.scatter_add_rows(&dx, &ex.ids(&pos_idx)?, cfg.block_size, c)?;
    grads[WTE] = Some(ex.add(&dwte_head, &dwte_emb)?);
    grads[WPE] = Some(dwpe);
    let grads = grads
        .into_iter()
        .map(|g| g.expect("the backward pass sets every parameter's gradient"))
        .collect();
    let pass = TensorPass {
        loss_sum_q16,
        positions: bt,
        grads,
    };
    Ok((pass, logits))
}

#[cfg(test)]
mod init_tests {
    use super::*;

    /// The integer initial standard deviations are the ones the f64 formula gave (so every
    /// golden parameter hash stays), for every projection divisor the model allows and the
    /// plain weights; and each is the integer nearest to the exact real value (checked again
    /// with exact integer bounds).
    #[test]
    fn init_std_is_the_correctly_rounded_value() {
        let by_float = |d: u64| crate::numerics::fixed::to_fixed(INIT_STD / (d as f64).sqrt(), 32);
        assert_eq!(
            init_std_q32(1),
            crate::numerics::fixed::to_fixed(INIT_STD, 32)
        );
        assert_eq!(init_std_q32(1), 85_899_346);
        for n_layer in 1..=N_LAYER_MAX as u64 {
            let d = 2 * n_layer;
            let q = init_std_q32(d);
            assert_eq!(q, by_float(d), "n_layer {n_layer}");
            // |q − X/√d| ≤ ½ with X = INIT_STD·2^32 exactly: (2q−1)²·d ≤ 4X² ≤ (2q+1)²·d,
            // scaled by 2^52 (X = m·2^−26).
            let bits = INIT_STD.to_bits();
            let m = u128::from((bits & ((1 << 52) - 1)) | (1 << 52));
            let four_x2 = 4 * m * m;
            let q = q as u128;
            let d = u128::from(d) << 52;
            assert!(
                (2 * q - 1) * (2 * q - 1) * d <= four_x2,
                "n_layer {n_layer}"
            );
            assert!(
                four_x2 <= (2 * q + 1) * (2 * q + 1) * d,
                "n_layer {n_layer}"
            );
        }
    }
}
