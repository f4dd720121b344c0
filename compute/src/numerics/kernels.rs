//! The kernel interface every backend implements: the [`Kernels`] trait, its tensor type and
//! limits, the input checks every backend shares, and the naive reference matmul.
//!
//! Tensors are block floating point ([`Bfp`]): `value[i] = mant[i] · 2^exp` with one exponent per
//! tensor. Every method's doc comment states its exact integer semantics; a backend is correct
//! only if it returns the same bits as the CPU reference (`numerics::cpu::CpuKernels`) for every input (see `specs/compute.md`).
//!
//! Rule for additions: every method added after the first version has a default body returning
//! [`KernelError::Unsupported`], so that other backends keep compiling until they port it.

use crate::numerics::fixed::{bitlen, requant_shift, rhe, rhe64, B16_MANT_MAX};
use rayon::prelude::*;

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
/// bit-identical to the CPU reference (`numerics::cpu::CpuKernels`).
pub trait Kernels: Send + Sync {
    /// Backend name, e.g. `"cpu"` or `"wgpu/Vulkan/llvmpipe"`.
    fn name(&self) -> String;

    /// What runs the kernels, as the stable `key value` lines an offer's device fingerprint
    /// hashes: for a GPU the backend, adapter, vendor, device, driver and shader hashes; for
    /// the CPU reference its name.
    fn device(&self) -> String {
        self.name()
    }

    /// Memory the backend holds tensors in, bytes, as the platform reports it: the host's
    /// available memory for backends that compute in host memory (Linux `MemAvailable`; 0
    /// where unknown). A GPU backend reports its adapter's largest buffer (`max_buffer_size`):
    /// wgpu reports no total device memory.
    fn memory_bytes(&self) -> u64 {
        host_available_bytes()
    }

    /// Host↔device traffic since the backend was opened. Zero for a backend that computes in
    /// host memory (the CPU reference).
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }

    /// The device backend under this one, for `numerics::tensor` to keep tensors in its
    /// memory (wgpu; the trait names no implementation, so it is handed over as `Any`). `None`
    /// (the default): tensors stay in host memory and every call goes through this interface.
    fn device_backend(&self) -> Option<&dyn std::any::Any> {
        None
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
pub(crate) fn matmul_limits(s: MatmulShape) -> Result<(usize, usize), KernelError> {
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

/// Largest `/proc/meminfo` read (the file is a few KiB).
const MEMINFO_BYTES_MAX: u64 = 64 * 1024;

/// The host's available memory (Linux `MemAvailable` in `/proc/meminfo`), bytes; 0 where the
/// platform does not report it. Read by hand: one line of one file, where a system-information
/// crate (sysinfo) would bring a process and disk scanner for it.
pub fn host_available_bytes() -> u64 {
    use std::io::Read as _;
    let mut text = String::new();
    let read = std::fs::File::open("/proc/meminfo")
        .and_then(|f| f.take(MEMINFO_BYTES_MAX).read_to_string(&mut text));
    if read.is_err() {
        return 0;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map_or(0, |kb| kb.saturating_mul(1024))
}
