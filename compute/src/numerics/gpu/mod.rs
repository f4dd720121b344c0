//! The `wgpu` backend: WGSL compute kernels bit-identical to the CPU reference.
//!
//! # How the kernels stay exact
//! - **Integers only.** No WGSL float type appears in any shader (checked by
//!   `compute/tests/gpu_shaders.rs`); WGSL integer arithmetic is exact and wraps by spec.
//! - **Wide values.** WGSL has no i64: signed 64-bit values are `vec2<u32>` in two's
//!   complement with explicit carries (`int64.wgsl`: add, negate, shifts, 32×32→64 multiply,
//!   bit length, round-half-even); a few kernels need 96 or 128 bits (softmax's exponent
//!   argument, layernorm's square root, softmax_bwd's products, log2's squaring) and carry
//!   them as `vec3<u32>` limbs. Divisions are restoring long division, one bit per step,
//!   followed by the contract's half-to-even rounding.
//! - **Order-free reductions.** The requantization shift of a tensor depends on
//!   `max|s|` only through `bitlen(max|s|)` and whether `max|s|` rounds up; each element's
//!   key `2·bitlen(|s|) + f` (`quant_key64`) is reduced with integer `atomicMax`, which is
//!   order-independent, then `requant.wgsl` rounds every element. Sums are exact, so tiling
//!   and thread order never change a bit. Row kernels run one invocation per row with
//!   columns in index order; `scatter_add_rows` uses integer `atomicAdd` (exact).
//! - **Tables.** exp2 uses `exp2_table.wgsl`, generated from `fixed::exp2_tables()` (integer
//!   code) and compared with it by a test.
//!
//! # Bounds and the CPU fallback
//! Every kernel checks its arguments exactly as `CpuKernels` does (same errors). A few
//! kernels take a narrower range of inputs than the reference, where the emulated width
//! would not suffice; outside it they return `Unsupported` (never a wrong bit):
//! `add` when a 23-bit mantissa meets an exponent gap near 40 bits, `scale` when
//! `|c| ≥ 2^47`, `layernorm`/`layernorm_bwd` rows wider than 256, `softmax_bwd` with
//! `p.exp < −30`, `requant` bounds not of the form `2^b − 1`, `adamw` with β outside
//! `[0, 1]`, `|alpha_q40| ≥ 2^50`, `|decay_q40| ≥ 2^40` or an update wider than 2^60.
//! Every kernel the model calls is ported: training runs entirely on the GPU
//! (`compute/tests/gpu_train.rs`).
//! [`WithCpuFallback`] runs such calls on the CPU reference and counts them.
//! Shapes beyond the adapter's limits (workgroups per dimension, storage binding size) are
//! `KernelError::Limit`; every wait on the device is bounded by [`OP_TIMEOUT_S`].

mod adamw;
pub mod bench;
mod cross_entropy;
mod device;
mod exec;
mod fallback;
mod layernorm;
mod matmul;
mod ops;
pub mod selftest;
pub mod shaders;
mod softmax_bwd;

pub use device::{
    list_adapters, AdapterChoice, AdapterSummary, DeviceFingerprint, GpuError, ADAPTER_ENV,
    OP_TIMEOUT_S,
};

use crate::numerics::fixed::B16_MANT_MAX;
use crate::numerics::kernels::{
    align_exp, check_adamw, check_add, check_col_dot, check_cross_entropy, check_gelu_bwd,
    check_layernorm, check_layernorm_bwd, check_mant, check_matmul, check_mul_cols, check_rescale,
    check_scatter_add_rows, check_softmax, check_softmax_bwd, checked_exp, AdamStep, Bfp,
    KernelError, Kernels, MatmulShape, ADD_ALIGN_BITS_MAX,
};

/// Most significant bits of an aligned `add` operand on the GPU (the sum of two then stays
/// below 2^62 in the emulated signed 64-bit arithmetic).
const ADD_BITS_MAX: i64 = 61;
use device::Gpu;
pub use fallback::WithCpuFallback;

/// The wgpu backend on one adapter.
#[derive(Debug)]
pub struct GpuKernels {
    gpu: Gpu,
}

impl GpuKernels {
    /// Opens the adapter named by [`ADAPTER_ENV`], or the best one when it is unset.
    pub fn new() -> Result<Self, GpuError> {
        Self::with_adapter(&AdapterChoice::from_env())
    }

    /// Opens a specific adapter.
    pub fn with_adapter(choice: &AdapterChoice) -> Result<Self, GpuError> {
        Ok(GpuKernels {
            gpu: Gpu::open(choice)?,
        })
    }

    /// The adapter and shader fingerprint.
    pub fn fingerprint(&self) -> &DeviceFingerprint {
        &self.gpu.fingerprint
    }

    /// The device's limits (the adapter's own; the device is created with them).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.gpu.limits
    }
}

/// Maps a backend failure of operation `op` to the trait's error.
fn kernel_error(op: &'static str, e: GpuError) -> KernelError {
    match e {
        GpuError::Limit {
            what,
            requested,
            max,
        } => KernelError::Limit {
            what,
            requested,
            max,
        },
        other => KernelError::Device {
            op,
            detail: other.to_string(),
        },
    }
}

impl Kernels for GpuKernels {
    fn name(&self) -> String {
        let a = &self.gpu.fingerprint.adapter;
        format!("wgpu/{}/{}", a.backend, a.name)
    }

    fn traffic(&self) -> crate::numerics::kernels::Traffic {
        self.gpu.traffic()
    }

    fn device(&self) -> String {
        self.gpu.fingerprint.to_string()
    }

    fn memory_bytes(&self) -> u64 {
        self.gpu.limits.max_buffer_size
    }

    fn matmul(&self, a: &Bfp, b: &Bfp, shape: MatmulShape) -> Result<Bfp, KernelError> {
        const OP: &str = "matmul";
        check_matmul(a, b, shape)?;
        let (mant, shift) = matmul::matmul_b16(&self.gpu, &a.mant, &b.mant, shape)
            .map_err(|e| kernel_error(OP, e))?;
        Ok(Bfp {
            mant,
            exp: checked_exp(OP, a.exp as i64 + b.exp as i64, shift as i64)?,
        })
    }

    fn add(&self, a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
        const OP: &str = "add";
        check_add(a, b)?;
        let e0 = align_exp(a.exp, b.exp);
        // (left, right) shifts to e0; a left-shifted operand must stay below 2^61 so that the
        // sum fits the emulated signed 64 bits (always true unless mantissas near 2^23 meet
        // a 40-bit exponent gap; then the op is left to the CPU reference).
        let shifts = |t: &Bfp| -> Option<(u32, u32)> {
            let d = t.exp as i64 - e0 as i64;
            if d >= 0 {
                let top = t.mant.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
                ((32 - top.leading_zeros()) as i64 + d <= ADD_BITS_MAX).then_some((d as u32, 0))
            } else {
                Some((0, (-d).min(63) as u32))
            }
        };
        let (Some((la, ra)), Some((lb, rb))) = (shifts(a), shifts(b)) else {
            return Err(self.unsupported(OP));
        };
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::OPS,
                k: 0,
                entry: "add",
                in0: &a.mant,
                in1: &b.mant,
                count: a.len(),
                cols: la as usize,
                rows: ra as usize,
                c: (lb as i64) | ((rb as i64) << 32),
                bits: 15,
            },
            e0 as i64,
        )
    }

    fn requant(&self, x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
        const OP: &str = "requant";
        let bits = 32 - mant_max.max(0).leading_zeros();
        // The key reduction decides the shift exactly only for bounds of the form 2^b − 1.
        if !(1..=30).contains(&bits) || mant_max != (1 << bits) - 1 {
            return Err(self.unsupported(OP));
        }
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::OPS,
                k: 0,
                entry: "requant_in",
                in0: &x.mant,
                in1: &[],
                count: x.len(),
                cols: 0,
                rows: 0,
                c: 0,
                bits,
            },
            x.exp as i64,
        )
    }

    fn rescale(&self, x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
        const OP: &str = "rescale";
        check_rescale(x, exp)?;
        let k = (exp as i64 - x.exp as i64).min(63) as u32;
        let mant = ops::rescale(&self.gpu, &x.mant, k).map_err(|e| kernel_error(OP, e))?;
        Ok(Bfp::new(mant, exp))
    }

    fn mul_cols(&self, x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        const OP: &str = "mul_cols";
        check_mul_cols(x, w, rows, cols)?;
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::OPS,
                k: 0,
                entry: "mul_cols",
                in0: &x.mant,
                in1: &w.mant,
                count: rows * cols,
                cols,
                rows,
                c: 0,
                bits: 15,
            },
            x.exp as i64 + w.exp as i64,
        )
    }

    fn col_dot(&self, a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        const OP: &str = "col_dot";
        check_col_dot(a, b, rows, cols)?;
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::OPS,
                k: 0,
                entry: "col_dot",
                in0: &a.mant,
                in1: &b.mant,
                count: cols,
                cols,
                rows,
                c: 0,
                bits: 15,
            },
            a.exp as i64 + b.exp as i64,
        )
    }

    fn scatter_add_rows(
        &self,
        src: &Bfp,
        idx: &[u32],
        out_rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        const OP: &str = "scatter_add_rows";
        check_scatter_add_rows(src, idx, out_rows, cols)?;
        let (mant, shift) = ops::scatter_add_rows(&self.gpu, &src.mant, idx, out_rows, cols)
            .map_err(|e| kernel_error(OP, e))?;
        Ok(Bfp {
            mant,
            exp: checked_exp(OP, src.exp as i64, shift as i64)?,
        })
    }

    fn sum_squares(&self, x: &Bfp) -> Result<u128, KernelError> {
        const OP: &str = "sum_squares";
        check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
        ops::sum_squares(&self.gpu, &x.mant).map_err(|e| kernel_error(OP, e))
    }

    fn layernorm(&self, x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
        const OP: &str = "layernorm";
        if let Some(early) = check_layernorm(x, rows, cols)? {
            return Ok(early);
        }
        if cols > layernorm::LAYERNORM_COLS_MAX {
            return Err(self.unsupported(OP));
        }
        let (mant, shift, r) = layernorm::layernorm(&self.gpu, &x.mant, rows, cols)
            .map_err(|e| kernel_error(OP, e))?;
        Ok((
            Bfp {
                mant,
                exp: checked_exp(OP, -24, shift as i64)?,
            },
            r,
        ))
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
        const OP: &str = "layernorm_bwd";
        if let Some(early) = check_layernorm_bwd(dxhat, xhat, r, rows, cols)? {
            return Ok(early);
        }
        // The shift only matters on rows with R ≠ 0 (the others are 0); all-zero inputs give
        // xhat.exp = −24, i.e. a shift of 48 that is never used.
        let sh = (-2 * xhat.exp) as u32;
        let any_r = r.iter().any(|&v| v != 0);
        if cols > layernorm::LAYERNORM_COLS_MAX
            || (any_r && sh > layernorm::LAYERNORM_BWD_SHIFT_MAX)
            || r.iter()
                .any(|&v| v != 0 && !layernorm::LAYERNORM_BWD_R_RANGE.contains(&v))
        {
            return Err(self.unsupported(OP));
        }
        let sh = sh.min(layernorm::LAYERNORM_BWD_SHIFT_MAX);
        let (mant, shift) =
            layernorm::layernorm_bwd(&self.gpu, &dxhat.mant, &xhat.mant, r, sh, rows, cols)
                .map_err(|e| kernel_error(OP, e))?;
        let e = dxhat.exp as i64 + 2 * xhat.exp as i64 - x_exp as i64 + 16 - 24;
        Ok(Bfp {
            mant,
            exp: checked_exp(OP, e, shift as i64)?,
        })
    }

    fn softmax(
        &self,
        x: &Bfp,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        const OP: &str = "softmax";
        check_softmax(x, rows, cols)?;
        // 30 − exp, clamped: beyond ±100 every y is 0 (s ≥ 96) or saturated (E = 0), as on
        // the CPU.
        let s = (30 - x.exp as i64).clamp(-100, 100) as i32;
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::SOFTMAX,
                entry: "softmax_rows",
                in0: &x.mant,
                in1: &[],
                count: rows * cols,
                cols,
                rows,
                c: i64::from(scale_q16) | (i64::from(causal) << 32),
                k: s as u32,
                bits: 15,
            },
            -30,
        )
    }

    fn softmax_bwd(
        &self,
        p: &Bfp,
        dp: &Bfp,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        const OP: &str = "softmax_bwd";
        check_softmax_bwd(p, dp, rows, cols)?;
        let sh = (-p.exp) as u32;
        if sh > softmax_bwd::SOFTMAX_BWD_SHIFT_MAX || cols > softmax_bwd::SOFTMAX_BWD_COLS_MAX {
            return Err(self.unsupported(OP));
        }
        let (mant, shift) =
            softmax_bwd::softmax_bwd(&self.gpu, &p.mant, &dp.mant, rows, cols, sh, scale_q16)
                .map_err(|e| kernel_error(OP, e))?;
        let e = 2 * p.exp as i64 + dp.exp as i64 - 16;
        Ok(Bfp {
            mant,
            exp: checked_exp(OP, e, shift as i64)?,
        })
    }

    fn cross_entropy(
        &self,
        logits: &Bfp,
        targets: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<(i64, Bfp), KernelError> {
        const OP: &str = "cross_entropy";
        if let Some(early) = check_cross_entropy(logits, targets, rows, cols)? {
            return Ok(early);
        }
        let s = (30 - logits.exp as i64).clamp(-100, 100) as i32;
        let (loss, mant, shift) =
            cross_entropy::cross_entropy(&self.gpu, &logits.mant, targets, rows, cols, s)
                .map_err(|e| kernel_error(OP, e))?;
        Ok((
            loss,
            Bfp {
                mant,
                exp: checked_exp(OP, -40, shift as i64)?,
            },
        ))
    }

    fn adamw(
        &self,
        p: &Bfp,
        g: &Bfp,
        m: &Bfp,
        r: &Bfp,
        st: &AdamStep,
    ) -> Result<(Bfp, Bfp, Bfp), KernelError> {
        const OP: &str = "adamw";
        check_adamw(p, g, m, r)?;
        let one = 1i64 << 30;
        let beta = |b: i64| (0..=one).contains(&b).then_some(b as u32);
        let (Some(b1), Some(b2)) = (beta(st.beta1_q30), beta(st.beta2_q30)) else {
            return Err(self.unsupported(OP));
        };
        let bits = |v: i64| 64 - v.unsigned_abs().leading_zeros();
        if bits(st.alpha_q40) > adamw::ADAM_ALPHA_BITS_MAX
            || bits(st.decay_q40) > adamw::ADAM_DECAY_BITS_MAX
        {
            return Err(self.unsupported(OP));
        }
        let e0 = align_exp(m.exp, g.exp) as i64;
        let (er, eg) = (2 * r.exp as i64, 2 * g.exp as i64);
        let e1 = er.min(eg).max(er.max(eg) - ADD_ALIGN_BITS_MAX as i64);
        let mut ev = e1 - 30;
        let odd = ev % 2 != 0;
        if odd {
            ev -= 1;
        }
        let mo = adamw::moments(
            &self.gpu,
            &g.mant,
            &m.mant,
            &r.mant,
            [
                adamw::align_shifts(m.exp as i64, e0),
                adamw::align_shifts(g.exp as i64, e0),
            ],
            [adamw::align_shifts(er, e1), adamw::align_shifts(eg, e1)],
            odd,
            (b1, b2),
        )
        .map_err(|e| kernel_error(OP, e))?;
        let m2 = Bfp::new(mo.m.0, checked_exp(OP, e0 - 30, mo.m.1 as i64)?);
        let r2 = Bfp::new(mo.r.0, checked_exp(OP, ev / 2 - mo.s, mo.r.1 as i64)?);
        let ea = m2.exp as i64 - r2.exp as i64 - 70;
        let sh = (p.exp as i64 - 16) - ea;
        // |a| ≤ |alpha| · max|m'| · 2^30 / 2^sh must stay within ADAM_UPDATE_BITS_MAX bits.
        let m_bits = bits(m2.mant.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as i64);
        if m_bits > 0
            && bits(st.alpha_q40) as i64 + m_bits as i64 + 30 - sh > adamw::ADAM_UPDATE_BITS_MAX
        {
            return Err(self.unsupported(OP));
        }
        let sh = sh.clamp(-128, 127) as i32;
        let (mant, shift) = adamw::params(
            &self.gpu,
            &p.mant,
            &m2.mant,
            &r2.mant,
            sh,
            st.alpha_q40,
            st.decay_q40,
        )
        .map_err(|e| kernel_error(OP, e))?;
        let p2 = Bfp::new(mant, checked_exp(OP, p.exp as i64 - 16, shift as i64)?);
        Ok((p2, m2, r2))
    }

    fn gelu(&self, x: &Bfp) -> Result<Bfp, KernelError> {
        const OP: &str = "gelu";
        check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::GELU,
                entry: "gelu",
                in0: &x.mant,
                in1: &[],
                count: x.len(),
                cols: 0,
                rows: 0,
                c: 0,
                k: x.exp as u32,
                bits: 15,
            },
            x.exp as i64 - 31,
        )
    }

    fn gelu_bwd(&self, x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
        const OP: &str = "gelu_bwd";
        check_gelu_bwd(x, dy)?;
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::GELU,
                entry: "gelu_bwd",
                in0: &x.mant,
                in1: &dy.mant,
                count: x.len(),
                cols: 0,
                rows: 0,
                c: 0,
                k: x.exp as u32,
                bits: 15,
            },
            dy.exp as i64 - 31,
        )
    }

    fn scale(&self, x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
        const OP: &str = "scale";
        check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
        if c_q30.unsigned_abs() > ops::SCALE_C_ABS_MAX {
            return Err(self.unsupported(OP));
        }
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::OPS,
                k: 0,
                entry: "scale",
                in0: &x.mant,
                in1: &[],
                count: x.len(),
                cols: 0,
                rows: 0,
                c: c_q30,
                bits: 15,
            },
            x.exp as i64 - 30,
        )
    }
}

impl GpuKernels {
    /// Runs a wide op and applies its shift to `base_exp` like `requant_wide` does.
    fn wide_op(
        &self,
        op: &'static str,
        w: ops::WideOp<'_>,
        base_exp: i64,
    ) -> Result<Bfp, KernelError> {
        let (mant, shift) = ops::wide(&self.gpu, w).map_err(|e| kernel_error(op, e))?;
        Ok(Bfp {
            mant,
            exp: checked_exp(op, base_exp, shift as i64)?,
        })
    }
}
