//! The kernel interface every backend implements, and [`CpuKernels`], the bit-exact reference.
//!
//! Tensors are block floating point ([`Bfp`]): `value[i] = mant[i] · 2^exp` with one exponent per
//! tensor. Every method's doc comment states its exact integer semantics; a backend is correct
//! only if it returns the same bits as [`CpuKernels`] for every input (see `specs/compute.md`).
//!
//! Rule for additions: every method added after the first version has a default body returning
//! [`KernelError::Unsupported`], so that other backends keep compiling until they port it.

use crate::numerics::fixed::{bitlen, requant_shift, rhe, rhe64, B16_MANT_MAX};
use ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2, ShapeBuilder};
use rayon::prelude::*;

use crate::numerics::gemm::{self, Path};

/// Largest inner dimension of a matmul: keeps `|Σ a·b| < 2^30 · 2^22 = 2^52`, so sums fit in
/// i64 and are exact in f64 (the CPU backend's dgemm trick needs `< 2^53`).
pub const MATMUL_K_MAX: usize = 1 << 22;
/// Largest number of elements of any tensor passed to or returned by a kernel.
pub const TENSOR_ELEMS_MAX: usize = 1 << 28;
/// Largest magnitude of a tensor exponent; beyond it a kernel reports `ExponentRange`.
pub const EXP_ABS_MAX: i64 = 1 << 24;
/// Largest exponent difference [`Kernels::add`] and [`Kernels::adamw`] align exactly; a finer
/// operand is first rounded to `ADD_ALIGN_BITS_MAX` bits below the coarser one.
pub const ADD_ALIGN_BITS_MAX: i32 = 40;
/// Largest magnitude of a B24 master mantissa accepted by [`Kernels::add`] and `requant`.
pub const WIDE_MANT_MAX: i32 = (1 << 23) - 1;
/// `1.702` in Q16: the slope of GELU's sigmoid form.
pub const GELU_K_Q16: i64 = 111_542;
/// Saturation bound of intermediate Q16 arguments of exp2 (|value| ≤ 2^40).
pub const EXP_ARG_SAT: i128 = 1 << 40;
/// Saturation bound of shifted AdamW updates (|value| ≤ 2^100).
pub const UPDATE_SAT: i128 = 1 << 100;

/// The scalars of one AdamW step, all integers (see `optim` for how they are derived).
///
/// Exact rule of [`Kernels::adamw`] (`≪` saturates at ±`UPDATE_SAT`):
/// 1. `m'`: align `m` and `g` as in [`Kernels::add`] to `e0`; `w = β1·m + (2^30 − β1)·g`
///    (i128); requantize to B16 from `e0 − 30`.
/// 2. `r'` (= sqrt v): align `r²` (exponent `2·r.exp`) and `g²` (`2·g.exp`) the same way to
///    `e1`; `w = β2·r² + (2^30 − β2)·g²`, `E = e1 − 30`; if `E` is odd, `w <<= 1, E −= 1`;
///    `s = max(0, (100 − bitlen(max w)) / 2)`; `q = isqrt(w << 2s)`, requantized to B16 from
///    `E/2 − s`.
/// 3. `u = div_rhe(m'·2^30, r' + 1)` (the +1 ulp floor replaces ε), `a = alpha_q40 · u` in
///    units `2^(m'.exp − r'.exp − 70)`, brought to units `2^(p.exp − 16)` by `rhe` (or `≪`).
/// 4. `d = rhe(decay_q40 · p, 24)` (decoupled weight decay, units `2^(p.exp − 16)`).
/// 5. `p' = (p << 16) − d − a`, requantized to B24 (`2^23 − 1`) from `p.exp − 16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdamStep {
    /// β1 in Q30.
    pub beta1_q30: i64,
    /// β2 in Q30.
    pub beta2_q30: i64,
    /// `lr_t · sqrt(1 − β2^t) / (1 − β1^t)` in Q40.
    pub alpha_q40: i64,
    /// `lr_t · weight_decay` in Q40 (0 for tensors without decay).
    pub decay_q40: i64,
}

/// A block-floating-point tensor: `value[i] = mant[i] · 2^exp`. The shape is carried by the
/// caller (each kernel method takes the dimensions it needs).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bfp {
    /// Signed integer mantissas, row-major.
    pub mant: Vec<i32>,
    /// Power-of-two exponent shared by all elements.
    pub exp: i32,
}

impl Bfp {
    /// A tensor from mantissas and exponent.
    pub fn new(mant: Vec<i32>, exp: i32) -> Self {
        Self { mant, exp }
    }

    /// All-zero tensor of `len` elements with exponent `exp`.
    pub fn zeros(len: usize, exp: i32) -> Self {
        Self {
            mant: vec![0; len],
            exp,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.mant.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.mant.is_empty()
    }

    /// Value of element `i` as f64, for reporting and tests only (never in the hashed path).
    pub fn value(&self, i: usize) -> f64 {
        self.mant[i] as f64 * (self.exp as f64).exp2()
    }

    /// All values as f64, for reporting and tests only.
    pub fn to_f64(&self) -> Vec<f64> {
        let scale = (self.exp as f64).exp2();
        self.mant.iter().map(|&m| m as f64 * scale).collect()
    }
}

/// Dimensions of a (batched) matrix product `C[b] = op(A[b]) · op(B[b])`, `op(A)` being `m×k`
/// and `op(B)` being `k×n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    /// Number of independent products; operands and result are stored batch after batch.
    pub batch: usize,
    /// Rows of the result.
    pub m: usize,
    /// Inner (summed) dimension.
    pub k: usize,
    /// Columns of the result.
    pub n: usize,
    /// A is stored `k×m` row-major (so `op(A) = Aᵀ`) instead of `m×k`.
    pub trans_a: bool,
    /// B is stored `n×k` row-major (so `op(B) = Bᵀ`) instead of `k×n`.
    pub trans_b: bool,
}

impl MatmulShape {
    /// Plain `m×k · k×n` product, no batch, no transposes.
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        Self {
            batch: 1,
            m,
            k,
            n,
            trans_a: false,
            trans_b: false,
        }
    }
    /// Same shape with `trans_a` set.
    pub fn ta(mut self) -> Self {
        self.trans_a = true;
        self
    }
    /// Same shape with `trans_b` set.
    pub fn tb(mut self) -> Self {
        self.trans_b = true;
        self
    }
    /// Same shape with `batch` products.
    pub fn batched(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    /// Number of integer multiply-accumulates: `batch · m · k · n`.
    pub fn macs(&self) -> u64 {
        (self.batch as u64) * (self.m as u64) * (self.k as u64) * (self.n as u64)
    }
}

/// Why a kernel refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The backend does not implement this operation (yet).
    #[error("operation `{op}` is not supported by the {backend} backend")]
    Unsupported {
        /// Operation name (the `Kernels` method).
        op: &'static str,
        /// Backend name.
        backend: String,
    },
    /// A size exceeds a limit of the format or of the device.
    #[error("{what}: requested {requested}, the maximum is {max}")]
    Limit {
        /// What was too large.
        what: &'static str,
        /// Requested size.
        requested: u64,
        /// Largest allowed size.
        max: u64,
    },
    /// An operand's length does not match the shape.
    #[error("{op}: operand `{operand}` has {found} elements, expected {expected}")]
    Shape {
        /// Operation name.
        op: &'static str,
        /// Operand name.
        operand: &'static str,
        /// Expected number of elements.
        expected: usize,
        /// Actual number of elements.
        found: usize,
    },
    /// A mantissa is outside the range the operation accepts.
    #[error("{op}: operand `{operand}` element {index} has mantissa {found}, allowed magnitude is at most {max}")]
    MantissaRange {
        /// Operation name.
        op: &'static str,
        /// Operand name.
        operand: &'static str,
        /// Element index.
        index: usize,
        /// The offending mantissa.
        found: i64,
        /// Largest allowed magnitude.
        max: i64,
    },
    /// A result exponent is outside `±EXP_ABS_MAX`.
    #[error("{op}: result exponent {found} outside ±{max}")]
    ExponentRange {
        /// Operation name.
        op: &'static str,
        /// The exponent that would result.
        found: i64,
        /// Largest allowed magnitude.
        max: i64,
    },
    /// The device failed (lost, out of memory, mapping failed…).
    #[error("device error in {op}: {detail}")]
    Device {
        /// Operation name.
        op: &'static str,
        /// What the driver reported.
        detail: String,
    },
}

/// Host↔device traffic of a backend, counted since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    /// Bytes written from host memory to the device (inputs, uniforms).
    pub uploaded_bytes: u64,
    /// Bytes read back from the device to host memory.
    pub downloaded_bytes: u64,
    /// Command-buffer submissions to the device's queue.
    pub submissions: u64,
}

impl Traffic {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            uploaded_bytes: self.uploaded_bytes.saturating_sub(earlier.uploaded_bytes),
            downloaded_bytes: self
                .downloaded_bytes
                .saturating_sub(earlier.downloaded_bytes),
            submissions: self.submissions.saturating_sub(earlier.submissions),
        }
    }
}

/// The operations the model needs, host slices in and out. Implementations must be
/// bit-identical to [`CpuKernels`].
pub trait Kernels: Send + Sync {
    /// Backend name, e.g. `"cpu"` or `"wgpu/Vulkan/llvmpipe"`.
    fn name(&self) -> String;

    /// Host↔device traffic since the backend was opened. Zero for a backend that computes in
    /// host memory (the CPU reference).
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }

    /// Batched matrix product with exact integer accumulation and B16 requantization.
    ///
    /// Inputs: `a` holds `batch·m·k` mantissas (`batch` blocks, each `m×k` row-major, or `k×m`
    /// if `trans_a`), `b` holds `batch·k·n` (each `k×n`, or `n×k` if `trans_b`); every mantissa
    /// must satisfy `|x| ≤ 32767` (else `MantissaRange`); `k ≤ MATMUL_K_MAX`.
    ///
    /// Semantics: `s[b,i,j] = Σ_p A[b,i,p]·B[b,p,j]` computed exactly (each product `< 2^30`,
    /// the sum `< 2^52`: accumulate in 64 bits). Then over the WHOLE output (all batches):
    /// `mx = max|s|`, `k = max(0, bitlen(mx) − 15)`, and `k += 1` if `rhe(mx, k) > 32767`;
    /// `out = rhe(s, k)` where `rhe(s, k)` is `s / 2^k` rounded half to even (`k = 0`: `s`);
    /// `exp = a.exp + b.exp + k`. All zero (or empty): mantissas 0 and `exp = a.exp + b.exp`.
    fn matmul(&self, a: &Bfp, b: &Bfp, shape: MatmulShape) -> Result<Bfp, KernelError>;

    /// Elementwise sum of two tensors of equal length, requantized to B16.
    ///
    /// Alignment: `e0 = max(min(ea, eb), max(ea, eb) − ADD_ALIGN_BITS_MAX)`; each operand is
    /// brought to exponent `e0` by `x << (e − e0)` if `e ≥ e0`, else `rhe(x, e0 − e)`. The exact
    /// i64 sums are then requantized to B16 (the rule of [`Kernels::matmul`]) from exponent `e0`.
    /// Mantissas must satisfy `|x| ≤ 2^23 − 1`.
    fn add(&self, a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
        let _ = (a, b);
        Err(self.unsupported("add"))
    }

    /// Requantizes `x` (mantissas `|x| < 2^31`) to the bound `mant_max` (B16: 32767,
    /// B24: 2^23 − 1) by the rule of [`Kernels::matmul`] from exponent `x.exp`.
    fn requant(&self, x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
        let _ = (x, mant_max);
        Err(self.unsupported("requant"))
    }

    /// Rounds `x` to the coarser exponent `exp ≥ x.exp`: `out = rhe(x, exp − x.exp)`.
    fn rescale(&self, x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
        let _ = (x, exp);
        Err(self.unsupported("rescale"))
    }

    /// Broadcast column product: `s[r,c] = x[r,c] · w[c]` exact (`x`: `rows×cols` B16, `w`:
    /// `cols` B16), requantized to B16 from exponent `x.exp + w.exp`.
    fn mul_cols(&self, x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        let _ = (x, w, rows, cols);
        Err(self.unsupported("mul_cols"))
    }

    /// Column dot products: `s[c] = Σ_r a[r,c] · b[r,c]` exact in i64 (B16 inputs, `rows×cols`),
    /// requantized to B16 from exponent `a.exp + b.exp`.
    fn col_dot(&self, a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        let _ = (a, b, rows, cols);
        Err(self.unsupported("col_dot"))
    }

    /// Layer normalization without weight (B16 input `rows×cols`, `C = cols`). Per row:
    /// `A = Σ m`, `d = C·m − A`, `S = Σ d²` (exact, u128). If `S = 0` the row is 0 and `R = 0`;
    /// else `R = isqrt(floor(S · 2^32 / C))` and `w = div_rhe(d · 2^40, R)` (values in units of
    /// 2^−24; `div_rhe` is division rounded half to even). The whole tensor of `w` is then
    /// requantized to B16 from exponent −24. Returns `(xhat, R per row)`; the input exponent
    /// does not matter (normalization is scale-free).
    fn layernorm(&self, x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
        let _ = (x, rows, cols);
        Err(self.unsupported("layernorm"))
    }

    /// Backward of [`Kernels::layernorm`]: `g = dxhat` (B16), `h = xhat` with `h.exp ≤ 0`, `r`
    /// the per-row `R`, `x_exp` the exponent of the forward input. Per row (`C = cols`):
    /// `A = Σ g`, `B = Σ g·h`, `N = ((C·g − A) << (−2·h.exp)) − h·B` (exact i128) and
    /// `w = div_rhe(N << 24, R)` (0 if `R = 0`). Requantized to B16 from exponent
    /// `g.exp + 2·h.exp − x_exp + 16 − 24`.
    fn layernorm_bwd(
        &self,
        dxhat: &Bfp,
        xhat: &Bfp,
        r: &[u64],
        x_exp: i32,
        rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        let _ = (dxhat, xhat, r, x_exp, rows, cols);
        Err(self.unsupported("layernorm_bwd"))
    }

    /// Row softmax of `x · scale_q16 / 2^16` (B16 `rows×cols`). If `causal`, row `r` uses only
    /// columns `j ≤ r mod cols` (the others give 0). Per row: `mx` = max mantissa over the used
    /// columns; `t = mx − m ≥ 0`; `y = rhe(t · scale_q16 · LOG2E_Q30, 30 − x.exp)` (if
    /// `30 − x.exp < 0`, a left shift, saturated at 2^40) is the Q16 power of two;
    /// `E = exp2_neg_q31(y)` (Q31, see `fixed`); `p = div_rhe(E · 2^30, ΣE)` in units 2^−30.
    /// The whole tensor of `p` is requantized to B16 from exponent −30.
    fn softmax(
        &self,
        x: &Bfp,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        let _ = (x, rows, cols, causal, scale_q16);
        Err(self.unsupported("softmax"))
    }

    /// Backward of [`Kernels::softmax`] (`p`, `dp` B16 `rows×cols`, `p.exp ≤ 0`). Per row:
    /// `D = Σ p·dp` (exact); `w = p · ((dp << (−p.exp)) − D) · scale_q16` (exact i128), in units
    /// `2^(2·p.exp + dp.exp − 16)`; requantized to B16 from that exponent.
    fn softmax_bwd(
        &self,
        p: &Bfp,
        dp: &Bfp,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        let _ = (p, dp, rows, cols, scale_q16);
        Err(self.unsupported("softmax_bwd"))
    }

    /// Mean cross-entropy over `rows` rows of logits (B16 `rows×cols`) with `targets[r] < cols`.
    /// Per row, `y_j`, `E_j` as in [`Kernels::softmax`] (scale 1.0, no mask) and
    /// `p_j = div_rhe(E_j · 2^30, ΣE)`. Loss of the row in Q16 nats:
    /// `rhe((log2_q16(ΣE) − 31·2^16 + y_t) · LN2_Q30, 30)`; returns the sum over rows (i64).
    /// Gradient: `w_j = div_rhe((p_j − [j = t]·2^30) · 2^10, rows)`, requantized to B16 from
    /// exponent −40 (this is d(mean loss)/d logits).
    fn cross_entropy(
        &self,
        logits: &Bfp,
        targets: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<(i64, Bfp), KernelError> {
        let _ = (logits, targets, rows, cols);
        Err(self.unsupported("cross_entropy"))
    }

    /// GELU in its sigmoid form `x · σ(1.702·x)` (B16). Per element: `z = rhe(m · GELU_K_Q16,
    /// −x.exp)` (left shift if `x.exp > 0`), clamped to ±2^40 (Q16); `y = rhe(|z| · LOG2E_Q30,
    /// 30)`, `E = exp2_neg_q31(y)`; `σ = div_rhe(2^62, 2^31 + E)` if `z ≥ 0`, else
    /// `div_rhe(E · 2^31, 2^31 + E)` (Q31); output `m · σ`, requantized to B16 from `x.exp − 31`.
    fn gelu(&self, x: &Bfp) -> Result<Bfp, KernelError> {
        let _ = x;
        Err(self.unsupported("gelu"))
    }

    /// Backward of [`Kernels::gelu`]: with `z`, `σ` as there, `t = rhe(σ · (2^31 − σ), 31)`,
    /// `g = σ + rhe(z · t, 16)` (Q31); output `dy · g`, requantized to B16 from `dy.exp − 31`.
    fn gelu_bwd(&self, x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
        let _ = (x, dy);
        Err(self.unsupported("gelu_bwd"))
    }

    /// Row scatter-add: `s[idx[r], c] += src[r, c]` exact (B16 `src`, `idx.len()` rows,
    /// `idx[r] < out_rows`), result `out_rows×cols` requantized to B16 from `src.exp`.
    fn scatter_add_rows(
        &self,
        src: &Bfp,
        idx: &[u32],
        out_rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        let _ = (src, idx, out_rows, cols);
        Err(self.unsupported("scatter_add_rows"))
    }

    /// Exact `Σ m²` of a B16 tensor (its value is that times `2^(2·x.exp)`).
    fn sum_squares(&self, x: &Bfp) -> Result<u128, KernelError> {
        let _ = x;
        Err(self.unsupported("sum_squares"))
    }

    /// Scalar product `m · c_q30` (B16 input), requantized to B16 from `x.exp − 30`.
    fn scale(&self, x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
        let _ = (x, c_q30);
        Err(self.unsupported("scale"))
    }

    /// One AdamW update of one tensor; see [`AdamStep`] for the exact integer rule.
    /// `p` is the B24 master copy; `g`, `m`, `r` (= sqrt of Adam's v) are B16.
    /// Returns the new `(p, m, r)`.
    fn adamw(
        &self,
        p: &Bfp,
        g: &Bfp,
        m: &Bfp,
        r: &Bfp,
        step: &AdamStep,
    ) -> Result<(Bfp, Bfp, Bfp), KernelError> {
        let _ = (p, g, m, r, step);
        Err(self.unsupported("adamw"))
    }

    /// The `Unsupported` error for operation `op` on this backend.
    fn unsupported(&self, op: &'static str) -> KernelError {
        KernelError::Unsupported {
            op,
            backend: self.name(),
        }
    }
}

/// Checks lengths, limits and mantissa bounds of a matmul; shared by every backend.
pub fn check_matmul(a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<(), KernelError> {
    const OP: &str = "matmul";
    let (na, nb) = matmul_limits(s)?;
    for (operand, t, expected) in [("a", a, na), ("b", b, nb)] {
        if t.mant.len() != expected {
            return Err(KernelError::Shape {
                op: OP,
                operand,
                expected,
                found: t.mant.len(),
            });
        }
        check_mant(OP, operand, &t.mant, B16_MANT_MAX)?;
    }
    Ok(())
}

/// The limit checks of [`check_matmul`] (its first ones); returns the lengths of A and B.
fn matmul_limits(s: MatmulShape) -> Result<(usize, usize), KernelError> {
    if s.k > MATMUL_K_MAX {
        return Err(KernelError::Limit {
            what: "matmul inner dimension k",
            requested: s.k as u64,
            max: MATMUL_K_MAX as u64,
        });
    }
    let elems = |x: usize, y: usize| -> Result<usize, KernelError> {
        let n = (s.batch as u128) * (x as u128) * (y as u128);
        if n > TENSOR_ELEMS_MAX as u128 {
            return Err(KernelError::Limit {
                what: "matmul tensor elements",
                requested: n.min(u64::MAX as u128) as u64,
                max: TENSOR_ELEMS_MAX as u64,
            });
        }
        Ok(n as usize)
    };
    let (na, nb) = (elems(s.m, s.k)?, elems(s.k, s.n)?);
    elems(s.m, s.n)?;
    Ok((na, nb))
}

/// Input checks of [`Kernels::add`]; shared by every backend.
pub(crate) fn check_add(a: &Bfp, b: &Bfp) -> Result<(), KernelError> {
    const OP: &str = "add";
    expect_len(OP, "b", b.len(), a.len())?;
    check_mant(OP, "a", &a.mant, WIDE_MANT_MAX)?;
    check_mant(OP, "b", &b.mant, WIDE_MANT_MAX)
}

/// Input checks of [`Kernels::rescale`]; shared by every backend.
pub(crate) fn check_rescale(x: &Bfp, exp: i32) -> Result<(), KernelError> {
    if exp < x.exp {
        return Err(KernelError::ExponentRange {
            op: "rescale",
            found: exp as i64,
            max: x.exp as i64,
        });
    }
    Ok(())
}

/// Input checks of [`Kernels::mul_cols`]; shared by every backend.
pub(crate) fn check_mul_cols(
    x: &Bfp,
    w: &Bfp,
    rows: usize,
    cols: usize,
) -> Result<(), KernelError> {
    const OP: &str = "mul_cols";
    expect_len(OP, "x", x.len(), rows * cols)?;
    expect_len(OP, "w", w.len(), cols)?;
    check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
    check_mant(OP, "w", &w.mant, B16_MANT_MAX)
}

/// Input checks of [`Kernels::col_dot`]; shared by every backend.
pub(crate) fn check_col_dot(a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<(), KernelError> {
    const OP: &str = "col_dot";
    expect_len(OP, "a", a.len(), rows * cols)?;
    expect_len(OP, "b", b.len(), rows * cols)?;
    check_mant(OP, "a", &a.mant, B16_MANT_MAX)?;
    check_mant(OP, "b", &b.mant, B16_MANT_MAX)
}

/// Input checks of [`Kernels::layernorm`]; shared by every backend. `Some` is the result
/// for `cols == 0`.
pub(crate) fn check_layernorm(
    x: &Bfp,
    rows: usize,
    cols: usize,
) -> Result<Option<(Bfp, Vec<u64>)>, KernelError> {
    const OP: &str = "layernorm";
    expect_len(OP, "x", x.len(), rows * cols)?;
    check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
    if cols == 0 {
        return Ok(Some((Bfp::new(Vec::new(), -24), vec![0; rows])));
    }
    Ok(None)
}

/// Input checks of [`Kernels::layernorm_bwd`]; shared by every backend. `Some` is the
/// result for `cols == 0`.
pub(crate) fn check_layernorm_bwd(
    dxhat: &Bfp,
    xhat: &Bfp,
    r: &[u64],
    rows: usize,
    cols: usize,
) -> Result<Option<Bfp>, KernelError> {
    const OP: &str = "layernorm_bwd";
    expect_len(OP, "dxhat", dxhat.len(), rows * cols)?;
    expect_len(OP, "xhat", xhat.len(), rows * cols)?;
    expect_len(OP, "r", r.len(), rows)?;
    check_mant(OP, "dxhat", &dxhat.mant, B16_MANT_MAX)?;
    check_mant(OP, "xhat", &xhat.mant, B16_MANT_MAX)?;
    if xhat.exp > 0 || xhat.exp < -64 {
        return Err(KernelError::ExponentRange {
            op: OP,
            found: xhat.exp as i64,
            max: 0,
        });
    }
    if cols == 0 {
        return Ok(Some(Bfp::new(Vec::new(), dxhat.exp)));
    }
    Ok(None)
}

/// Input checks of [`Kernels::softmax`]; shared by every backend.
pub(crate) fn check_softmax(x: &Bfp, rows: usize, cols: usize) -> Result<(), KernelError> {
    const OP: &str = "softmax";
    expect_len(OP, "x", x.len(), rows * cols)?;
    check_mant(OP, "x", &x.mant, B16_MANT_MAX)
}

/// Input checks of [`Kernels::softmax_bwd`]; shared by every backend.
pub(crate) fn check_softmax_bwd(
    p: &Bfp,
    dp: &Bfp,
    rows: usize,
    cols: usize,
) -> Result<(), KernelError> {
    const OP: &str = "softmax_bwd";
    expect_len(OP, "p", p.len(), rows * cols)?;
    expect_len(OP, "dp", dp.len(), rows * cols)?;
    check_mant(OP, "p", &p.mant, B16_MANT_MAX)?;
    check_mant(OP, "dp", &dp.mant, B16_MANT_MAX)?;
    if p.exp > 0 || p.exp < -64 {
        return Err(KernelError::ExponentRange {
            op: OP,
            found: p.exp as i64,
            max: 0,
        });
    }
    Ok(())
}

/// Input checks of [`Kernels::cross_entropy`]; shared by every backend. `Some` is the
/// result for `rows == 0`.
pub(crate) fn check_cross_entropy(
    logits: &Bfp,
    targets: &[u32],
    rows: usize,
    cols: usize,
) -> Result<Option<(i64, Bfp)>, KernelError> {
    const OP: &str = "cross_entropy";
    expect_len(OP, "logits", logits.len(), rows * cols)?;
    expect_len(OP, "targets", targets.len(), rows)?;
    check_mant(OP, "logits", &logits.mant, B16_MANT_MAX)?;
    if let Some(index) = targets.iter().position(|&t| t as usize >= cols) {
        return Err(KernelError::MantissaRange {
            op: OP,
            operand: "targets",
            index,
            found: targets[index] as i64,
            max: cols as i64 - 1,
        });
    }
    if rows == 0 {
        return Ok(Some((0, Bfp::new(Vec::new(), -40))));
    }
    Ok(None)
}

/// Input checks of [`Kernels::gelu_bwd`]; shared by every backend.
pub(crate) fn check_gelu_bwd(x: &Bfp, dy: &Bfp) -> Result<(), KernelError> {
    const OP: &str = "gelu_bwd";
    expect_len(OP, "dy", dy.len(), x.len())?;
    check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
    check_mant(OP, "dy", &dy.mant, B16_MANT_MAX)
}

/// Input checks of [`Kernels::scatter_add_rows`]; shared by every backend.
pub(crate) fn check_scatter_add_rows(
    src: &Bfp,
    idx: &[u32],
    out_rows: usize,
    cols: usize,
) -> Result<(), KernelError> {
    const OP: &str = "scatter_add_rows";
    expect_len(OP, "src", src.len(), idx.len() * cols)?;
    check_mant(OP, "src", &src.mant, B16_MANT_MAX)?;
    if let Some(index) = idx.iter().position(|&t| t as usize >= out_rows) {
        return Err(KernelError::MantissaRange {
            op: OP,
            operand: "idx",
            index,
            found: idx[index] as i64,
            max: out_rows as i64 - 1,
        });
    }
    Ok(())
}

/// Input checks of [`Kernels::adamw`]; shared by every backend.
pub(crate) fn check_adamw(p: &Bfp, g: &Bfp, m: &Bfp, r: &Bfp) -> Result<(), KernelError> {
    const OP: &str = "adamw";
    for (name, t) in [("g", g), ("m", m), ("r", r)] {
        expect_len(OP, name, t.len(), p.len())?;
        check_mant(OP, name, &t.mant, B16_MANT_MAX)?;
    }
    check_mant(OP, "p", &p.mant, WIDE_MANT_MAX)
}

/// Elements per branch-free block of [`check_mant`]'s scan.
const CHECK_MANT_BLOCK: usize = 1 << 10;

/// Returns `MantissaRange` for the first element with `|x| > max`.
pub fn check_mant(
    op: &'static str,
    operand: &'static str,
    mant: &[i32],
    max: i32,
) -> Result<(), KernelError> {
    let out_of_range = |x: &i32| x.unsigned_abs() > max as u32;
    // Every input of every kernel passes here: a branch-free OR over blocks vectorizes (several
    // times faster than `position`'s early exit per element); only a tensor with an offending
    // element is searched again for the first one, so the error is unchanged.
    let clean = mant
        .chunks(CHECK_MANT_BLOCK)
        .all(|c| !c.iter().fold(false, |bad, x| bad | out_of_range(x)));
    if clean {
        return Ok(());
    }
    match mant.iter().position(out_of_range) {
        Some(index) => Err(KernelError::MantissaRange {
            op,
            operand,
            index,
            found: mant[index] as i64,
            max: max as i64,
        }),
        None => Ok(()),
    }
}

/// `base + k` as a tensor exponent, or `ExponentRange`.
pub fn checked_exp(op: &'static str, base: i64, k: i64) -> Result<i32, KernelError> {
    let e = base + k;
    if e.abs() > EXP_ABS_MAX {
        return Err(KernelError::ExponentRange {
            op,
            found: e,
            max: EXP_ABS_MAX,
        });
    }
    Ok(e as i32)
}

/// Requantizes exact i64 sums to B16 as specified for [`Kernels::matmul`], in parallel.
pub fn requantize_b16(op: &'static str, sums: &[i64], base_exp: i64) -> Result<Bfp, KernelError> {
    let mx = sums.par_iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    let k = requant_shift(mx as u128, B16_MANT_MAX);
    let mant = sums.par_iter().map(|&v| rhe64(v, k) as i32).collect();
    Ok(Bfp {
        mant,
        exp: checked_exp(op, base_exp, k as i64)?,
    })
}

/// `ShapeError` unless `found == expected`.
pub fn expect_len(
    op: &'static str,
    operand: &'static str,
    found: usize,
    expected: usize,
) -> Result<(), KernelError> {
    if found != expected {
        return Err(KernelError::Shape {
            op,
            operand,
            expected,
            found,
        });
    }
    Ok(())
}

/// Common exponent of an aligned sum: `max(min(ea, eb), max(ea, eb) − ADD_ALIGN_BITS_MAX)`.
pub fn align_exp(ea: i32, eb: i32) -> i32 {
    ea.min(eb).max(ea.max(eb) - ADD_ALIGN_BITS_MAX)
}

/// `x · 2^(e − e0)` exactly if `e ≥ e0`, else rounded half to even.
pub fn align(x: i128, e: i32, e0: i32) -> i128 {
    if e >= e0 {
        x << (e - e0)
    } else {
        rhe(x, (e0 - e) as u32)
    }
}

/// `x · 2^(−sh)`: `rhe(x, sh)` for `sh ≥ 0`, else a left shift saturated at ±`UPDATE_SAT`.
pub fn shift_sat(x: i128, sh: i64) -> i128 {
    if sh >= 0 {
        rhe(x, sh.min(127) as u32)
    } else if x == 0 {
        0
    } else if bitlen(x.unsigned_abs()) as i64 - sh > 100 {
        x.signum() * UPDATE_SAT
    } else {
        x << (-sh)
    }
}

/// Requantizes exact wide values (`|v| < 2^126`) to mantissas bounded by `mant_max` by the rule
/// of [`Kernels::matmul`], the result exponent being `base_exp + k`.
pub fn requant_wide(
    op: &'static str,
    wide: &[i128],
    base_exp: i64,
    mant_max: i32,
) -> Result<Bfp, KernelError> {
    let mx = wide.par_iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    let k = requant_shift(mx, mant_max);
    let mant = wide.par_iter().map(|&v| rhe(v, k) as i32).collect();
    Ok(Bfp {
        mant,
        exp: checked_exp(op, base_exp, k as i64)?,
    })
}

/// Naive reference matmul: i64 loops in index order, then the specified requantization.
/// Slow; for tests of every backend.
pub fn matmul_naive(a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<Bfp, KernelError> {
    check_matmul(a, b, s)?;
    let mut sums = vec![0i64; s.batch * s.m * s.n];
    for bt in 0..s.batch {
        let (ao, bo) = (bt * s.m * s.k, bt * s.k * s.n);
        for i in 0..s.m {
            for j in 0..s.n {
                let mut acc: i64 = 0;
                for p in 0..s.k {
                    let x = if s.trans_a {
                        a.mant[ao + p * s.m + i]
                    } else {
                        a.mant[ao + i * s.k + p]
                    };
                    let y = if s.trans_b {
                        b.mant[bo + j * s.k + p]
                    } else {
                        b.mant[bo + p * s.n + j]
                    };
                    acc += x as i64 * y as i64;
                }
                sums[bt * s.m * s.n + i * s.n + j] = acc;
            }
        }
    }
    requantize_b16("matmul", &sums, a.exp as i64 + b.exp as i64)
}

/// The CPU reference backend: multi-threaded, bit-exact by construction.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuKernels;

impl CpuKernels {
    /// The CPU backend.
    pub fn new() -> Self {
        Self
    }
}

/// View of one stored block as the logical `rows×cols` operand (transposed view if `trans`).
fn operand_view(data: &[f64], rows: usize, cols: usize, trans: bool) -> ArrayView2<'_, f64> {
    if trans {
        // Stored cols×rows row-major: element (r, c) at c·rows + r.
        ArrayView2::from_shape((rows, cols).strides((1, rows)), data)
            .expect("length checked by check_matmul")
    } else {
        ArrayView2::from_shape((rows, cols), data).expect("length checked by check_matmul")
    }
}

/// Smallest number of elements per rayon task in the elementwise passes of `matmul`.
const MATMUL_PAR_MIN: usize = 1 << 13;

/// Exact product of one block through f64 dgemm, written to `out` (`m×n` row-major). Every
/// input is an integer with `|x| < 2^15`, every product `< 2^30` and every partial sum `< 2^52`,
/// all exactly representable in f64, so whatever order, blocking or FMA use dgemm chooses, each
/// addition is exact and the result is the exact integer sum (proof in specs/compute.md).
fn block_dgemm(a: &[f64], b: &[f64], s: MatmulShape, out: &mut [f64]) {
    let av = operand_view(a, s.m, s.k, s.trans_a);
    let bv = operand_view(b, s.k, s.n, s.trans_b);
    let mut c =
        ArrayViewMut2::from_shape((s.m, s.n), out).expect("output length is m·n by construction");
    // beta = 0: the previous contents of `out` are not read.
    general_mat_mul(1.0, &av, &bv, 0.0, &mut c);
}

/// Largest length of a `matmul` scratch buffer kept for the next call on the same thread.
const MATMUL_SCRATCH_KEEP_MAX: usize = 1 << 21;

thread_local! {
    /// f64 scratch of `matmul` (operand A, operand B, sums), reused by the next call on the same
    /// thread: a fresh multi-megabyte buffer costs page faults and zeroing on every call.
    static MATMUL_SCRATCH: std::cell::RefCell<[Vec<f64>; 3]> =
        std::cell::RefCell::new(Default::default());
}

/// Mantissas as f64 (exact), converted in parallel into `buf`.
fn to_f64_into(mant: &[i32], buf: &mut Vec<f64>) {
    buf.clear();
    buf.par_extend(
        mant.par_iter()
            .with_min_len(MATMUL_PAR_MIN)
            .map(|&x| x as f64),
    );
}

/// The product of [`CpuKernels::matmul`] through exact f64 dgemm (the path for CPUs without an
/// integer SIMD kernel), after `matmul_with`'s checks, for `len = batch·m·n > 0` and `k > 0`.
fn matmul_dgemm(a: &Bfp, b: &Bfp, s: MatmulShape, base_exp: i64) -> Result<Bfp, KernelError> {
    const OP: &str = "matmul";
    let len = s.batch * s.m * s.n;
    // Taken out of the thread-local (left empty), so a nested call cannot alias it.
    let [mut af, mut bf, mut sums_buf] =
        MATMUL_SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
    to_f64_into(&a.mant, &mut af);
    to_f64_into(&b.mant, &mut bf);
    let (sa, sb, sc) = (s.m * s.k, s.k * s.n, s.m * s.n);
    if sums_buf.len() < len {
        sums_buf.resize(len, 0.0);
    }
    // dgemm overwrites every sum (beta = 0); stale values of a previous call are not read.
    let sums = &mut sums_buf[..len];
    if s.batch == 1 {
        block_dgemm(&af, &bf, s, sums);
    } else {
        sums.par_chunks_mut(sc)
            .zip(af.par_chunks(sa))
            .zip(bf.par_chunks(sb))
            .for_each(|((out, ab), bb)| block_dgemm(ab, bb, s, out));
    }
    // The sums are exact integers below 2^52, so the f64 maximum of |s| and the casts to
    // i64 are exact; requantization then follows `requantize_b16` step for step.
    let mx = sums
        .par_iter()
        .with_min_len(MATMUL_PAR_MIN)
        .map(|v| v.abs())
        .reduce(|| 0.0, f64::max);
    let k = requant_shift(mx as u64 as u128, B16_MANT_MAX);
    let mant = sums
        .par_iter()
        .with_min_len(MATMUL_PAR_MIN)
        .map(|&v| rhe64(v as i64, k) as i32)
        .collect();
    MATMUL_SCRATCH.with(|c| {
        let kept = [af, bf, sums_buf].map(|v| {
            if v.capacity() <= MATMUL_SCRATCH_KEEP_MAX {
                v
            } else {
                Vec::new()
            }
        });
        *c.borrow_mut() = kept;
    });
    Ok(Bfp {
        mant,
        exp: checked_exp(OP, base_exp, k as i64)?,
    })
}

thread_local! {
    /// i64 sums of `matmul`'s integer SIMD path, reused by the next call on the same thread.
    static MATMUL_SUMS: std::cell::RefCell<Vec<i64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`CpuKernels::matmul`] through a chosen implementation: the exact integer SIMD sums of
/// `path` ([`crate::numerics::gemm`]), or f64 dgemm for [`Path::Dgemm`] and paths this CPU lacks. Every
/// path gives the same exact sums, requantized by the same rule (`requant_shift` of the max-abs
/// over all batch elements, then `rhe64`), hence the same bits.
pub(crate) fn matmul_with(
    path: Path,
    a: &Bfp,
    b: &Bfp,
    s: MatmulShape,
) -> Result<Bfp, KernelError> {
    const OP: &str = "matmul";
    let (na, nb) = matmul_limits(s)?;
    let path = if path.available() { path } else { Path::Dgemm };
    if (a.mant.len(), b.mant.len()) != (na, nb) || path == Path::Dgemm {
        // Every check in `check_matmul`'s order (a's mantissas before b's length); the integer
        // path below checks the mantissa range itself, while packing the operands.
        check_matmul(a, b, s)?;
    }
    let base_exp = a.exp as i64 + b.exp as i64;
    let len = s.batch * s.m * s.n;
    if path == Path::Dgemm {
        if len == 0 || s.k == 0 {
            // Every sum is 0: mantissas 0, k = 0.
            return Ok(Bfp {
                mant: vec![0; len],
                exp: checked_exp(OP, base_exp, 0)?,
            });
        }
        return matmul_dgemm(a, b, s, base_exp);
    }
    // Taken out of the thread-local (left empty), so a nested call cannot alias it.
    let mut sums_buf = MATMUL_SUMS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    if sums_buf.len() < len {
        sums_buf.resize(len, 0);
    }
    // Every sum is overwritten; stale values of a previous call are not read.
    let sums = &mut sums_buf[..len];
    let found = gemm::exact_sums(path, &a.mant, &b.mant, s, sums);
    let result = match found {
        Some(Some(mx)) => {
            let k = requant_shift(mx as u128, B16_MANT_MAX);
            let mant = gemm::requantize(path, sums, k, MATMUL_PAR_MIN);
            checked_exp(OP, base_exp, k as i64).map(|exp| Bfp { mant, exp })
        }
        // A mantissa out of range (or, impossibly, no integer path after all): `check_matmul`
        // reports the first offender exactly as before; were there none, dgemm.
        _ => check_matmul(a, b, s).and_then(|()| matmul_dgemm(a, b, s, base_exp)),
    };
    if sums_buf.capacity() <= MATMUL_SCRATCH_KEEP_MAX {
        MATMUL_SUMS.with(|c| *c.borrow_mut() = sums_buf);
    }
    result
}

impl Kernels for CpuKernels {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn matmul(&self, a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<Bfp, KernelError> {
        // One hand-over to the thread pool for the whole product: called from outside the pool
        // (the training loop), each parallel pass (split/pack, tiles, requantization) would
        // otherwise queue its work and put this thread to sleep on its own, several context
        // switches per call.
        rayon::scope(|_| matmul_with(Path::detected(), a, b, s))
    }

    fn add(&self, a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::add(a, b)
    }

    fn requant(&self, x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::requant(x, mant_max)
    }

    fn rescale(&self, x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::rescale(x, exp)
    }

    fn mul_cols(&self, x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::mul_cols(x, w, rows, cols)
    }

    fn col_dot(&self, a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::col_dot(a, b, rows, cols)
    }

    fn layernorm(&self, x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
        crate::numerics::cpu::layernorm(x, rows, cols)
    }

    fn layernorm_bwd(
        &self,
        dxhat: &Bfp,
        xhat: &Bfp,
        r: &[u64],
        x_exp: i32,
        rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::layernorm_bwd(dxhat, xhat, r, x_exp, rows, cols)
    }

    fn softmax(
        &self,
        x: &Bfp,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::softmax(x, rows, cols, causal, scale_q16)
    }

    fn softmax_bwd(
        &self,
        p: &Bfp,
        dp: &Bfp,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::softmax_bwd(p, dp, rows, cols, scale_q16)
    }

    fn cross_entropy(
        &self,
        logits: &Bfp,
        targets: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<(i64, Bfp), KernelError> {
        crate::numerics::cpu::cross_entropy(logits, targets, rows, cols)
    }

    fn gelu(&self, x: &Bfp) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::gelu(x)
    }

    fn gelu_bwd(&self, x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::gelu_bwd(x, dy)
    }

    fn scatter_add_rows(
        &self,
        src: &Bfp,
        idx: &[u32],
        out_rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::scatter_add_rows(src, idx, out_rows, cols)
    }

    fn sum_squares(&self, x: &Bfp) -> Result<u128, KernelError> {
        crate::numerics::cpu::sum_squares(x)
    }

    fn scale(&self, x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
        crate::numerics::cpu::scale(x, c_q30)
    }

    fn adamw(
        &self,
        p: &Bfp,
        g: &Bfp,
        m: &Bfp,
        r: &Bfp,
        st: &AdamStep,
    ) -> Result<(Bfp, Bfp, Bfp), KernelError> {
        crate::numerics::cpu::adamw(p, g, m, r, st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_case() -> impl Strategy<Value = (Bfp, Bfp, MatmulShape)> {
        (
            1usize..4,
            0usize..9,
            0usize..70,
            0usize..9,
            any::<bool>(),
            any::<bool>(),
            -20i32..20,
            -20i32..20,
            0u32..16,
        )
            .prop_flat_map(|(batch, m, k, n, ta, tb, ea, eb, bits)| {
                let s = MatmulShape {
                    batch,
                    m,
                    k,
                    n,
                    trans_a: ta,
                    trans_b: tb,
                };
                let lim = (1i32 << bits) - 1;
                let lim = lim.min(B16_MANT_MAX);
                (
                    proptest::collection::vec(-lim..=lim, batch * m * k),
                    proptest::collection::vec(-lim..=lim, batch * k * n),
                )
                    .prop_map(move |(am, bm)| (Bfp::new(am, ea), Bfp::new(bm, eb), s))
            })
    }

    #[test]
    fn cpu_matmul_equals_naive_large_with_reused_scratch() {
        // Outputs above MATMUL_PAR_MIN (parallel passes), in an order that leaves stale sums of
        // a larger call in the thread's scratch; full-range and small mantissas (k > 0 and 0).
        let cases = [
            (1, 200, 300, 150, false, false, 32_767),
            (3, 64, 128, 100, true, false, 32_767),
            (1, 90, 512, 70, false, true, 7),
            (2, 130, 40, 90, true, true, 32_767),
            (1, 1, 3, 1, false, false, 3),
        ];
        for (i, &(batch, m, k, n, trans_a, trans_b, lim)) in cases.iter().enumerate() {
            let s = MatmulShape {
                batch,
                m,
                k,
                n,
                trans_a,
                trans_b,
            };
            let gen = |stream: u64, len: usize| -> Vec<i32> {
                (0..len as u64)
                    .map(|j| {
                        (crate::numerics::fixed::hash3(i as u64, stream, j) % (2 * lim + 1)) as i32
                    })
                    .map(|x| x - lim as i32)
                    .collect()
            };
            let a = Bfp::new(gen(1, batch * m * k), -3);
            let b = Bfp::new(gen(2, batch * k * n), 5);
            let fast = CpuKernels.matmul(&a, &b, s).unwrap();
            assert_eq!(fast, matmul_naive(&a, &b, s).unwrap(), "case {i}");
        }
    }

    proptest! {
        #[test]
        fn cpu_matmul_equals_naive((a, b, s) in arb_case()) {
            let fast = CpuKernels.matmul(&a, &b, s).unwrap();
            let slow = matmul_naive(&a, &b, s).unwrap();
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn naive_matches_i128_rational((a, b, s) in arb_case()) {
            let out = matmul_naive(&a, &b, s).unwrap();
            let k = (out.exp - a.exp - b.exp) as u32;
            // Recompute each sum in i128 and check the requantization rule directly.
            let mut mx = 0u128;
            let mut sums = Vec::new();
            for bt in 0..s.batch { for i in 0..s.m { for j in 0..s.n {
                let mut acc = 0i128;
                for p in 0..s.k {
                    let x = if s.trans_a { a.mant[bt*s.m*s.k + p*s.m + i] } else { a.mant[bt*s.m*s.k + i*s.k + p] };
                    let y = if s.trans_b { b.mant[bt*s.k*s.n + j*s.k + p] } else { b.mant[bt*s.k*s.n + p*s.n + j] };
                    acc += x as i128 * y as i128;
                }
                mx = mx.max(acc.unsigned_abs());
                sums.push(acc);
            }}}
            for (q, sum) in out.mant.iter().zip(&sums) {
                prop_assert_eq!(*q as i128, rhe(*sum, k));
            }
            prop_assert!(out.mant.iter().all(|q| q.unsigned_abs() <= 32_767));
            if k > 0 { prop_assert!(rhe(mx as i128, k - 1) > 32_767); }
        }
    }

    #[test]
    fn extreme_values_stay_exact() {
        // K = 4096 products of 32767·32767: sum = 4096·(2^15−1)^2 ≈ 2^42, must be exact.
        let k = 4096;
        let a = Bfp::new(vec![B16_MANT_MAX; k], 0);
        let b = Bfp::new(vec![-B16_MANT_MAX; k], 0);
        let s = MatmulShape::new(1, k, 1);
        let out = CpuKernels.matmul(&a, &b, s).unwrap();
        assert_eq!(out, matmul_naive(&a, &b, s).unwrap());
        let exact = -(k as i128) * (B16_MANT_MAX as i128).pow(2);
        let sh = (out.exp) as u32;
        assert_eq!(out.mant[0] as i128, rhe(exact, sh));
    }

    #[test]
    fn bad_input_is_precise() {
        let s = MatmulShape::new(2, 3, 2);
        let a = Bfp::new(vec![0; 6], 0);
        let b = Bfp::new(vec![0; 5], 0);
        assert_eq!(
            CpuKernels.matmul(&a, &b, s),
            Err(KernelError::Shape {
                op: "matmul",
                operand: "b",
                expected: 6,
                found: 5
            })
        );
        let mut b = Bfp::new(vec![0; 6], 0);
        b.mant[4] = -32_768;
        assert_eq!(
            CpuKernels.matmul(&a, &b, s),
            Err(KernelError::MantissaRange {
                op: "matmul",
                operand: "b",
                index: 4,
                found: -32_768,
                max: 32_767
            })
        );
        let big = MatmulShape::new(1, MATMUL_K_MAX + 1, 1);
        assert!(matches!(
            CpuKernels.matmul(&a, &b, big),
            Err(KernelError::Limit { .. })
        ));
    }
}

#[cfg(test)]
mod op_tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_b16(n: std::ops::Range<usize>) -> impl Strategy<Value = Bfp> {
        (
            proptest::collection::vec(-B16_MANT_MAX..=B16_MANT_MAX, n),
            -30i32..10,
        )
            .prop_map(|(m, e)| Bfp::new(m, e))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4))]
        #[test]
        fn gelu_table_path_equals_direct_path(e in -30i32..5, seed in any::<u64>()) {
            // Large enough to use the table; compare with the per-element definition.
            let n = 4 * (2 * B16_MANT_MAX as usize + 1);
            let m: Vec<i32> = (0..n as u64)
                .map(|i| (crate::numerics::fixed::hash3(seed, 9, i) % 65_535) as i32 - B16_MANT_MAX)
                .collect();
            let x = Bfp::new(m, e);
            let y = CpuKernels.gelu(&x).unwrap();
            let wide: Vec<i128> = x.mant.iter().map(|&v| v as i128 * crate::numerics::cpu::reference::gelu_sigma(v, e).1 as i128).collect();
            prop_assert_eq!(y, requant_wide("gelu", &wide, e as i64 - 31, B16_MANT_MAX).unwrap());
        }

    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn softmax_rows_sum_to_one(x in arb_b16(1..200), cols in 1usize..20, causal in any::<bool>()) {
            let rows = x.len() / cols;
            prop_assume!(rows > 0);
            let x = Bfp::new(x.mant[..rows * cols].to_vec(), x.exp);
            let p = CpuKernels.softmax(&x, rows, cols, causal, 1 << 16).unwrap();
            for (r, row) in p.to_f64().chunks(cols).enumerate() {
                let s: f64 = row.iter().sum();
                prop_assert!((s - 1.0).abs() < cols as f64 * 2f64.powi(p.exp) + 1e-9, "row {} sums to {}", r, s);
                if causal {
                    prop_assert!(row[r % cols + 1..].iter().all(|&v| v == 0.0));
                }
                // Matches float softmax to the B16 grid (plus the table's relative error).
                let used = if causal { r % cols + 1 } else { cols };
                let xs: Vec<f64> = x.to_f64()[r * cols..r * cols + used].to_vec();
                let mx = xs.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = xs.iter().map(|v| (v - mx).exp()).sum();
                for j in 0..used {
                    let want = (xs[j] - mx).exp() / z;
                    prop_assert!((row[j] - want).abs() < 2f64.powi(p.exp) + 1e-6, "p[{}][{}] {} vs {}", r, j, row[j], want);
                }
            }
        }

        #[test]
        fn layernorm_normalizes(x in arb_b16(8..64)) {
            let cols = 8;
            let rows = x.len() / cols;
            let x = Bfp::new(x.mant[..rows * cols].to_vec(), x.exp);
            let (h, r) = CpuKernels.layernorm(&x, rows, cols).unwrap();
            for (i, row) in h.to_f64().chunks(cols).enumerate() {
                if r[i] == 0 { prop_assert!(row.iter().all(|&v| v == 0.0)); continue; }
                let mean: f64 = row.iter().sum::<f64>() / cols as f64;
                let var: f64 = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
                prop_assert!(mean.abs() < 1e-3, "mean {}", mean);
                prop_assert!((var - 1.0).abs() < 2e-3, "var {}", var);
            }
        }

        #[test]
        fn add_is_exact_when_it_fits(a in arb_b16(1..50), shift in 0i32..10) {
            let b = Bfp::new(a.mant.iter().map(|v| v / 2).collect(), a.exp + shift);
            let s = CpuKernels.add(&a, &b).unwrap();
            for i in 0..a.len() {
                let exact = a.value(i) + b.value(i);
                prop_assert!((s.value(i) - exact).abs() <= 2f64.powi(s.exp - 1));
            }
        }

        #[test]
        fn gelu_matches_float(x in arb_b16(1..100)) {
            let y = CpuKernels.gelu(&x).unwrap();
            for i in 0..x.len() {
                let v = x.value(i);
                let want = v / (1.0 + (-1.702 * v).exp());
                prop_assert!((y.value(i) - want).abs() <= 2f64.powi(y.exp) + 1e-6 * v.abs());
            }
        }
    }
}

#[cfg(test)]
mod gelu_bwd_tests {
    use super::*;

    #[test]
    fn gelu_bwd_table_path_equals_direct_path() {
        let n = 3 * (2 * B16_MANT_MAX as usize + 1);
        for e in [-20, -12, -3, 2] {
            let m: Vec<i32> = (0..n as u64)
                .map(|i| (crate::numerics::fixed::hash3(4, 9, i) % 65_535) as i32 - B16_MANT_MAX)
                .collect();
            let d: Vec<i32> = (0..n as u64)
                .map(|i| (crate::numerics::fixed::hash3(5, 9, i) % 65_535) as i32 - B16_MANT_MAX)
                .collect();
            let (x, dy) = (Bfp::new(m, e), Bfp::new(d, -30));
            let got = CpuKernels.gelu_bwd(&x, &dy).unwrap();
            let wide: Vec<i128> = x
                .mant
                .iter()
                .zip(&dy.mant)
                .map(|(&v, &g)| {
                    let (z, s) = crate::numerics::cpu::reference::gelu_sigma(v, e);
                    let s = s as i128;
                    let t = rhe(s * ((1i128 << 31) - s), 31);
                    g as i128 * (s + rhe(z * t, 16))
                })
                .collect();
            assert_eq!(
                got,
                requant_wide("gelu_bwd", &wide, -61, B16_MANT_MAX).unwrap()
            );
        }
    }
}
