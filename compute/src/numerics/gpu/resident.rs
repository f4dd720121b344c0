//! Device-resident tensors: [`DevTensor`] keeps its mantissas in a device buffer, so that a
//! training step moves only token ids up and a few bytes per kernel (the requantization key,
//! the loss) down. [`Resident`] runs the kernels on them with the same shifts and exponents as
//! the host interface (both go through the `*_on` functions of `GpuKernels`): same bits.
//!
//! Inputs are checked by length, exponent and the bit-length bound each tensor carries; where
//! a bound cannot prove an input in range (or a kernel takes only part of the contract's
//! range) the op returns `Unsupported`, and the caller (`numerics::tensor`) runs it on the
//! host instead, which then names the offending element exactly.

use std::sync::Arc;

use super::device::DevBuf;
use super::exec::Src;
use super::{kernel_error, layernorm, layout, Arg, GpuKernels};
use crate::numerics::fixed::B16_MANT_MAX;
use crate::numerics::kernels::{
    AdamStep, Bfp, KernelError, Kernels, MatmulShape, TENSOR_ELEMS_MAX, WIDE_MANT_MAX,
};

/// A block-floating-point tensor whose mantissas live on the device: `value[i] = mant[i] ·
/// 2^exp`. Cloning shares the buffer; the last handle returns it to the pool.
#[derive(Clone, Debug)]
pub struct DevTensor {
    buf: Arc<DevBuf>,
    len: usize,
    exp: i32,
    /// `bitlen(max|mant|) ≤ bits`.
    bits: u32,
}

impl DevTensor {
    pub(crate) fn new(buf: Arc<DevBuf>, len: usize, exp: i32, bits: u32) -> Self {
        DevTensor {
            buf,
            len,
            exp,
            bits,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The shared exponent.
    pub fn exp(&self) -> i32 {
        self.exp
    }
    pub(crate) fn arg(&self) -> Arg<'_> {
        Arg {
            src: Src::Dev(self.buf.buf(), self.len),
            exp: self.exp,
            bits: Some(self.bits),
        }
    }
}

/// Token ids (or any row indices) on the device, with their largest value.
#[derive(Clone, Debug)]
pub struct DevIds {
    buf: Arc<DevBuf>,
    len: usize,
    max: Option<u32>,
}

impl DevIds {
    /// Number of ids.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn src(&self) -> Src<'_, u32> {
        Src::Dev(self.buf.buf(), self.len)
    }
    /// All ids are below `bound`.
    fn below(&self, bound: usize) -> bool {
        self.max.is_none_or(|m| (m as usize) < bound)
    }
}

/// Layernorm's `R` per row, left on the device for the backward pass.
#[derive(Clone, Debug)]
pub struct DevStats {
    buf: Arc<DevBuf>,
    rows: usize,
}

/// The resident kernels of one adapter ([`GpuKernels::resident`]).
#[derive(Clone, Copy, Debug)]
pub struct Resident<'a>(&'a GpuKernels);

/// `Shape` when `t` does not have `len` elements; `Unsupported` when its bit bound exceeds
/// `max_bits` (the host then checks the mantissas themselves).
fn want(
    g: &GpuKernels,
    op: &'static str,
    operand: &'static str,
    t: &DevTensor,
    len: usize,
    max_bits: u32,
) -> Result<(), KernelError> {
    if t.len != len {
        return Err(KernelError::Shape {
            op,
            operand,
            expected: len,
            found: t.len,
        });
    }
    if t.bits > max_bits {
        return Err(g.unsupported(op));
    }
    Ok(())
}

const B16_BITS: u32 = 32 - B16_MANT_MAX.leading_zeros();
const WIDE_BITS: u32 = 32 - WIDE_MANT_MAX.leading_zeros();

impl GpuKernels {
    /// The resident kernels of this adapter.
    pub fn resident_kernels(&self) -> Resident<'_> {
        Resident(self)
    }
}

impl Resident<'_> {
    fn kernels(&self) -> &GpuKernels {
        self.0
    }

    /// Copies a host tensor to the device.
    pub fn upload(&self, x: &Bfp) -> Result<DevTensor, KernelError> {
        const OP: &str = "upload";
        if x.len() > TENSOR_ELEMS_MAX {
            return Err(KernelError::Limit {
                what: "tensor elements",
                requested: x.len() as u64,
                max: TENSOR_ELEMS_MAX as u64,
            });
        }
        let g = &self.0.gpu;
        let buf = g
            .upload(bytemuck::cast_slice(&x.mant))
            .map_err(|e| kernel_error(OP, e))?;
        let top = x.mant.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        Ok(DevTensor::new(
            g.keep(buf),
            x.len(),
            x.exp,
            32 - top.leading_zeros(),
        ))
    }

    /// Copies token ids to the device.
    pub fn upload_ids(&self, ids: &[u32]) -> Result<DevIds, KernelError> {
        let g = &self.0.gpu;
        let buf = g
            .upload(bytemuck::cast_slice(ids))
            .map_err(|e| kernel_error("upload", e))?;
        Ok(DevIds {
            buf: g.keep(buf),
            len: ids.len(),
            max: ids.iter().copied().max(),
        })
    }

    /// Reads a resident tensor back.
    pub fn download(&self, x: &DevTensor) -> Result<Bfp, KernelError> {
        Ok(Bfp::new(self.read(&x.buf, x.len as u64 * 4)?, x.exp))
    }

    /// Reads layernorm statistics back.
    pub fn download_stats(&self, r: &DevStats) -> Result<Vec<u64>, KernelError> {
        self.read(&r.buf, r.rows as u64 * 8)
    }

    fn read<T: bytemuck::Pod>(&self, buf: &DevBuf, bytes: u64) -> Result<Vec<T>, KernelError> {
        const OP: &str = "download";
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let g = &self.0.gpu;
        let _lock = g.op_lock.lock().unwrap_or_else(|p| p.into_inner());
        let enc = g
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(OP) });
        let out = g
            .finish(OP, enc, g.scopes(), &[(buf.buf(), bytes)])
            .map_err(|e| kernel_error(OP, e))?;
        Ok(bytemuck::pod_collect_to_vec(&out[0]))
    }

    /// [`Kernels::matmul`].
    pub fn matmul(
        &self,
        a: &DevTensor,
        b: &DevTensor,
        shape: MatmulShape,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "matmul";
        let g = self.kernels();
        let (na, nb) = crate::numerics::kernels::matmul_limits(shape)?;
        want(g, OP, "a", a, na, B16_BITS)?;
        want(g, OP, "b", b, nb, B16_BITS)?;
        if shape.k == 0 || shape.batch * shape.m * shape.n == 0 {
            return Err(g.unsupported(OP));
        }
        g.matmul_on(a.arg(), b.arg(), shape, true)?.dev()
    }

    /// [`Kernels::add`].
    pub fn add(&self, a: &DevTensor, b: &DevTensor) -> Result<DevTensor, KernelError> {
        const OP: &str = "add";
        let g = self.kernels();
        want(g, OP, "a", a, a.len, WIDE_BITS)?;
        want(g, OP, "b", b, a.len, WIDE_BITS)?;
        g.add_on(a.arg(), b.arg(), true)?.dev()
    }

    /// [`Kernels::requant`].
    pub fn requant(&self, x: &DevTensor, mant_max: i32) -> Result<DevTensor, KernelError> {
        self.0.requant_on(x.arg(), mant_max, true)?.dev()
    }

    /// [`Kernels::rescale`].
    pub fn rescale(&self, x: &DevTensor, exp: i32) -> Result<DevTensor, KernelError> {
        if exp < x.exp {
            return Err(self.0.unsupported("rescale"));
        }
        self.0.rescale_on(x.arg(), exp, true)?.dev()
    }

    /// [`Kernels::mul_cols`].
    pub fn mul_cols(
        &self,
        x: &DevTensor,
        w: &DevTensor,
        rows: usize,
        cols: usize,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "mul_cols";
        let g = self.kernels();
        want(g, OP, "x", x, rows * cols, B16_BITS)?;
        want(g, OP, "w", w, cols, B16_BITS)?;
        g.mul_cols_on(x.arg(), w.arg(), rows, cols, true)?.dev()
    }

    /// [`Kernels::col_dot`].
    pub fn col_dot(
        &self,
        a: &DevTensor,
        b: &DevTensor,
        rows: usize,
        cols: usize,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "col_dot";
        let g = self.kernels();
        want(g, OP, "a", a, rows * cols, B16_BITS)?;
        want(g, OP, "b", b, rows * cols, B16_BITS)?;
        if cols == 0 {
            return Err(g.unsupported(OP));
        }
        g.col_dot_on(a.arg(), b.arg(), rows, cols, true)?.dev()
    }

    /// [`Kernels::scatter_add_rows`] with resident ids.
    pub fn scatter_add_rows(
        &self,
        src: &DevTensor,
        ids: &DevIds,
        out_rows: usize,
        cols: usize,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "scatter_add_rows";
        let g = self.kernels();
        want(g, OP, "src", src, ids.len * cols, B16_BITS)?;
        if !ids.below(out_rows) || out_rows * cols == 0 {
            return Err(g.unsupported(OP));
        }
        g.scatter_add_rows_on(src.arg(), ids.src(), out_rows, cols, true)?
            .dev()
    }

    /// [`Kernels::sum_squares`] (per-workgroup partial sums are read back and added here).
    pub fn sum_squares(&self, x: &DevTensor) -> Result<u128, KernelError> {
        const OP: &str = "sum_squares";
        let g = self.kernels();
        want(g, OP, "x", x, x.len, B16_BITS)?;
        super::ops::sum_squares(&g.gpu, x.arg().src).map_err(|e| kernel_error(OP, e))
    }

    /// [`Kernels::layernorm`]; `R` stays on the device.
    pub fn layernorm(
        &self,
        x: &DevTensor,
        rows: usize,
        cols: usize,
    ) -> Result<(DevTensor, DevStats), KernelError> {
        const OP: &str = "layernorm";
        let g = self.kernels();
        want(g, OP, "x", x, rows * cols, B16_BITS)?;
        if rows * cols == 0 {
            return Err(g.unsupported(OP));
        }
        let (y, stats) = g.layernorm_on(x.arg(), rows, cols, true)?;
        let layernorm::Stats::Dev(buf) = stats else {
            unreachable!("a resident layernorm keeps its statistics")
        };
        Ok((
            y.dev()?,
            DevStats {
                buf: g.gpu.keep(buf),
                rows,
            },
        ))
    }

    /// [`Kernels::layernorm_bwd`] with the forward's resident `R`.
    pub fn layernorm_bwd(
        &self,
        dxhat: &DevTensor,
        xhat: &DevTensor,
        r: &DevStats,
        x_exp: i32,
        rows: usize,
        cols: usize,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "layernorm_bwd";
        let g = self.kernels();
        want(g, OP, "dxhat", dxhat, rows * cols, B16_BITS)?;
        want(g, OP, "xhat", xhat, rows * cols, B16_BITS)?;
        // Without the host's look at R, the shift must be in range for every row.
        if r.rows != rows
            || rows * cols == 0
            || xhat.exp > 0
            || ((-2 * xhat.exp) as u32) > layernorm::LAYERNORM_BWD_SHIFT_MAX
        {
            return Err(g.unsupported(OP));
        }
        g.layernorm_bwd_on(
            dxhat.arg(),
            xhat.arg(),
            Src::Dev(r.buf.buf(), r.rows),
            x_exp,
            rows,
            cols,
            true,
        )?
        .dev()
    }

    /// [`Kernels::softmax`].
    pub fn softmax(
        &self,
        x: &DevTensor,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "softmax";
        let g = self.kernels();
        want(g, OP, "x", x, rows * cols, B16_BITS)?;
        if rows * cols == 0 {
            return Err(g.unsupported(OP));
        }
        g.softmax_on(x.arg(), rows, cols, causal, scale_q16, true)?
            .dev()
    }

    /// [`Kernels::softmax_bwd`].
    pub fn softmax_bwd(
        &self,
        p: &DevTensor,
        dp: &DevTensor,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "softmax_bwd";
        let g = self.kernels();
        want(g, OP, "p", p, rows * cols, B16_BITS)?;
        want(g, OP, "dp", dp, rows * cols, B16_BITS)?;
        if p.exp > 0 || p.exp < -64 {
            return Err(g.unsupported(OP));
        }
        g.softmax_bwd_on(p.arg(), dp.arg(), rows, cols, scale_q16, true)?
            .dev()
    }

    /// [`Kernels::cross_entropy`] with resident targets; the loss sum comes back.
    pub fn cross_entropy(
        &self,
        logits: &DevTensor,
        targets: &DevIds,
        rows: usize,
        cols: usize,
    ) -> Result<(i64, DevTensor), KernelError> {
        const OP: &str = "cross_entropy";
        let g = self.kernels();
        want(g, OP, "logits", logits, rows * cols, B16_BITS)?;
        if targets.len != rows || !targets.below(cols) || rows == 0 {
            return Err(g.unsupported(OP));
        }
        let (loss, d) = g.cross_entropy_on(logits.arg(), targets.src(), rows, cols, true)?;
        Ok((loss, d.dev()?))
    }

    /// [`Kernels::adamw`].
    pub fn adamw(
        &self,
        p: &DevTensor,
        grad: &DevTensor,
        m: &DevTensor,
        r: &DevTensor,
        st: &AdamStep,
    ) -> Result<(DevTensor, DevTensor, DevTensor), KernelError> {
        const OP: &str = "adamw";
        let g = self.kernels();
        for (name, t) in [("g", grad), ("m", m), ("r", r)] {
            want(g, OP, name, t, p.len, B16_BITS)?;
        }
        want(g, OP, "p", p, p.len, WIDE_BITS)?;
        let [p2, m2, r2] = g.adamw_on(p.arg(), grad.arg(), m.arg(), r.arg(), st, true)?;
        Ok((p2.dev()?, m2.dev()?, r2.dev()?))
    }

    /// [`Kernels::gelu`].
    pub fn gelu(&self, x: &DevTensor) -> Result<DevTensor, KernelError> {
        let g = self.kernels();
        want(g, "gelu", "x", x, x.len, B16_BITS)?;
        g.gelu_on(x.arg(), true)?.dev()
    }

    /// [`Kernels::gelu_bwd`].
    pub fn gelu_bwd(&self, x: &DevTensor, dy: &DevTensor) -> Result<DevTensor, KernelError> {
        const OP: &str = "gelu_bwd";
        let g = self.kernels();
        want(g, OP, "x", x, x.len, B16_BITS)?;
        want(g, OP, "dy", dy, x.len, B16_BITS)?;
        g.gelu_bwd_on(x.arg(), dy.arg(), true)?.dev()
    }

    /// [`Kernels::scale`].
    pub fn scale(&self, x: &DevTensor, c_q30: i64) -> Result<DevTensor, KernelError> {
        let g = self.kernels();
        want(g, "scale", "x", x, x.len, B16_BITS)?;
        g.scale_on(x.arg(), c_q30, true)?.dev()
    }

    /// Rows `ids[r]` of the `rows × cols` tensor `src` (an embedding lookup).
    pub fn gather_rows(
        &self,
        src: &DevTensor,
        cols: usize,
        ids: &DevIds,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "gather_rows";
        if cols == 0 || !ids.below(src.len / cols) || ids.len == 0 {
            return Err(self.0.unsupported(OP));
        }
        let buf = layout::gather_rows(
            &self.0.gpu,
            src.buf.buf(),
            src.len,
            layout::Rows::Ids(ids.src()),
            ids.len,
            cols,
        )
        .map_err(|e| kernel_error(OP, e))?;
        Ok(self.derived(buf, ids.len * cols, src))
    }

    /// Rows `r % t` for `r < out_rows` of `src` (positional embeddings of a batch).
    pub fn gather_positions(
        &self,
        src: &DevTensor,
        cols: usize,
        t: usize,
        out_rows: usize,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "gather_rows";
        if cols == 0 || t == 0 || t * cols > src.len || out_rows == 0 {
            return Err(self.0.unsupported(OP));
        }
        let buf = layout::gather_rows(
            &self.0.gpu,
            src.buf.buf(),
            src.len,
            layout::Rows::Positions(t),
            out_rows,
            cols,
        )
        .map_err(|e| kernel_error(OP, e))?;
        Ok(self.derived(buf, out_rows * cols, src))
    }

    /// Part `part` (of width `h·hs`) of each row of `x: [b·t, rowlen]` → `[b·h, t, hs]`.
    pub fn split_heads(
        &self,
        x: &DevTensor,
        (b, t, h, hs): (usize, usize, usize, usize),
        rowlen: usize,
        part: usize,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "heads";
        if x.len != b * t * rowlen || (part + 1) * h * hs > rowlen || x.len == 0 {
            return Err(self.0.unsupported(OP));
        }
        let buf = layout::heads(
            &self.0.gpu,
            &[x.buf.buf()],
            layout::Heads { b, t, h, hs },
            rowlen,
            Some(part),
        )
        .map_err(|e| kernel_error(OP, e))?;
        Ok(self.derived(buf, b * h * t * hs, x))
    }

    /// `[b·h, t, hs]` tensors (one exponent) → the parts of `[b·t, parts·h·hs]` rows, in order.
    pub fn merge_heads(
        &self,
        parts: &[&DevTensor],
        (b, t, h, hs): (usize, usize, usize, usize),
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "heads";
        let n = b * h * t * hs;
        let Some(first) = parts.first() else {
            return Err(self.0.unsupported(OP));
        };
        if n == 0 || parts.iter().any(|p| p.len != n || p.exp != first.exp) {
            return Err(self.0.unsupported(OP));
        }
        let bufs: Vec<&wgpu::Buffer> = parts.iter().map(|p| p.buf.buf()).collect();
        let buf = layout::heads(
            &self.0.gpu,
            &bufs,
            layout::Heads { b, t, h, hs },
            parts.len() * h * hs,
            None,
        )
        .map_err(|e| kernel_error(OP, e))?;
        let bits = parts.iter().map(|p| p.bits).max().unwrap_or(0);
        Ok(DevTensor::new(
            self.0.gpu.keep(buf),
            n * parts.len(),
            first.exp,
            bits,
        ))
    }

    /// A moved copy of (part of) `src`: same exponent and bound.
    fn derived(&self, buf: wgpu::Buffer, len: usize, src: &DevTensor) -> DevTensor {
        DevTensor::new(self.0.gpu.keep(buf), len, src.exp, src.bits)
    }
}
