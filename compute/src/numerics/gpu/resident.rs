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
use super::exps::DevExp;
use super::{kernel_error, layernorm, layout, Arg, GpuKernels, Stretch};
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
    exp: DevExp,
    /// `bitlen(max|mant|) ≤ bound`, known when the op is recorded (its target width).
    bound: u32,
}

impl DevTensor {
    pub(crate) fn new(buf: Arc<DevBuf>, len: usize, exp: DevExp, bound: u32) -> Self {
        DevTensor {
            buf,
            len,
            exp,
            bound,
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
    /// An operand whose exponent enters the result's only as a term (`exp` 0 here): the op
    /// can be recorded before the exponent is known.
    pub(crate) fn arg_later(&self) -> Arg<'_> {
        Arg {
            src: Src::Dev(self.buf.buf(), self.len),
            exp: 0,
            bits: Some(self.bound),
            dev: Some(&self.exp),
            known: false,
            stretch: None,
        }
    }

    /// An operand with its exponent if the host knows it, else pending (`exp` 0).
    pub(crate) fn arg(&self) -> Arg<'_> {
        match self.exp.host.now() {
            Some(Ok(v)) => self.arg_of(v),
            _ => self.arg_later(),
        }
    }

    /// An operand with its exponent, which must be known (the batch has run).
    pub(crate) fn arg_known(&self, op: &'static str) -> Result<Arg<'_>, KernelError> {
        let v = self.exp.host.now().unwrap_or_else(|| {
            Err(KernelError::Device {
                op,
                detail: "an exponent was needed before the batch computing it ran".into(),
            })
        })?;
        Ok(self.arg_of(v))
    }

    fn arg_of(&self, (exp, bits): (i32, u32)) -> Arg<'_> {
        Arg {
            src: Src::Dev(self.buf.buf(), self.len),
            exp,
            bits: Some(bits),
            dev: Some(&self.exp),
            known: true,
            stretch: None,
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

/// A 64-bit result a resident kernel left on the device (cross-entropy's loss sum): read
/// when its batch runs ([`Resident::value`]).
#[derive(Clone, Debug)]
pub struct DevScalar {
    halves: Option<[Arc<std::sync::OnceLock<u32>>; 2]>,
    now: i64,
}

impl DevScalar {
    fn of(loss: super::cross_entropy::Loss) -> Self {
        match loss {
            super::cross_entropy::Loss::Now(v) => DevScalar {
                halves: None,
                now: v,
            },
            super::cross_entropy::Loss::Later(h) => DevScalar {
                halves: Some(h),
                now: 0,
            },
        }
    }

    /// A word the batch writes (read with its keys), as an unsigned value.
    fn word(cell: Arc<std::sync::OnceLock<u32>>) -> Self {
        DevScalar {
            halves: Some([cell, super::exec::known_key(0)]),
            now: 0,
        }
    }

    fn get(&self) -> Option<i64> {
        match &self.halves {
            None => Some(self.now),
            Some([lo, hi]) => Some((u64::from(*lo.get()?) | u64::from(*hi.get()?) << 32) as i64),
        }
    }
}

/// Layernorm's `R` per row, left on the device for the backward pass.
#[derive(Clone, Debug)]
pub struct DevStats {
    buf: Arc<DevBuf>,
    rows: usize,
}

/// One tensor's AdamW operands for [`Resident::adamw_many`].
#[derive(Clone, Copy, Debug)]
pub struct AdamwItem<'a> {
    /// Parameters (B24).
    pub p: &'a DevTensor,
    /// Gradient.
    pub g: &'a DevTensor,
    /// First moment.
    pub m: &'a DevTensor,
    /// Square root of the second moment.
    pub r: &'a DevTensor,
    /// The step's scalars.
    pub step: &'a AdamStep,
}

/// The resident kernels of one adapter ([`GpuKernels::resident_kernels`]).
#[derive(Clone, Copy, Debug)]
pub struct Resident<'a> {
    k: &'a GpuKernels,
    /// The deferred stretch its ops are recorded in ([`Stretch`]), if any.
    stretch: Option<&'a Stretch>,
}

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
    if t.bound > max_bits {
        return Err(g.unsupported(op));
    }
    Ok(())
}

const B16_BITS: u32 = 32 - B16_MANT_MAX.leading_zeros();
const WIDE_BITS: u32 = 32 - WIDE_MANT_MAX.leading_zeros();

impl GpuKernels {
    /// The resident kernels of this adapter.
    pub fn resident_kernels(&self) -> Resident<'_> {
        Resident {
            k: self,
            stretch: None,
        }
    }
}

impl<'a> Resident<'a> {
    fn kernels(&self) -> &GpuKernels {
        self.k
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
        let g = &self.k.gpu;
        let buf = g
            .upload(bytemuck::cast_slice(&x.mant))
            .map_err(|e| kernel_error(OP, e))?;
        let top = x.mant.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
        let bits = 32 - top.leading_zeros();
        let buf = g.keep(buf);
        let exp = DevExp::known(g, x.exp, bits).map_err(|e| kernel_error(OP, e))?;
        Ok(DevTensor::new(buf, x.len(), exp, bits))
    }

    /// Copies token ids to the device.
    pub fn upload_ids(&self, ids: &[u32]) -> Result<DevIds, KernelError> {
        let g = &self.k.gpu;
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
        let mant = self.read(&x.buf, x.len as u64 * 4)?;
        Ok(Bfp::new(mant, self.known(x, "download")?.exp))
    }

    /// Reads resident tensors back in one submission (after the batch that computes them).
    pub fn download_all(&self, xs: &[&DevTensor]) -> Result<Vec<Bfp>, KernelError> {
        const OP: &str = "download";
        if xs.iter().any(|x| x.exp.host.now().is_none()) {
            self.k.gpu.sync(OP).map_err(|e| kernel_error(OP, e))?;
        }
        let exps = xs
            .iter()
            .map(|x| Ok(x.arg_known(OP)?.exp))
            .collect::<Result<Vec<i32>, KernelError>>()?;
        let reads: Vec<(&wgpu::Buffer, u64)> = xs
            .iter()
            .filter(|x| x.len > 0)
            .map(|x| (x.buf.buf(), x.len as u64 * 4))
            .collect();
        let g = &self.k.gpu;
        let mut bytes = {
            let _lock = g.op_lock.lock().unwrap_or_else(|p| p.into_inner());
            g.flush_locked(OP, &reads)
                .map_err(|e| kernel_error(OP, e))?
                .into_iter()
        };
        Ok(xs
            .iter()
            .zip(exps)
            .map(|(x, exp)| {
                let mant = if x.len > 0 {
                    bytemuck::pod_collect_to_vec(&bytes.next().unwrap_or_default())
                } else {
                    Vec::new()
                };
                Bfp::new(mant, exp)
            })
            .collect())
    }

    /// The exponent of a resident tensor (running the batch that computes it if need be).
    pub fn exp(&self, x: &DevTensor) -> Result<i32, KernelError> {
        Ok(self.known(x, "exponent")?.exp)
    }

    /// `(exponent, bit-length bound)` of `x` as the host computes them (running the batch
    /// that computes them if need be).
    pub fn exp_and_bound(&self, x: &DevTensor) -> Result<(i32, u32), KernelError> {
        let a = self.known(x, "exponent")?;
        Ok((a.exp, a.bits.unwrap_or(0)))
    }

    /// `(exponent, bit-length bound)` of `x` as the device computed them (its exponent
    /// buffer, read back): equal to [`Self::exp_and_bound`] unless the two sides' exponent
    /// arithmetic disagree.
    pub fn device_exp_and_bound(&self, x: &DevTensor) -> Result<(i32, u32), KernelError> {
        let v: Vec<i32> = self.read(&x.exp.buf, super::exps::EXP_BYTES)?;
        Ok((v[0], v[1] as u32))
    }

    /// `x` as an operand of an op whose shifts depend on its exponent: in a deferred stretch,
    /// as it is (the device supplies the shifts); else with its exponent known
    /// ([`Self::known`]).
    fn operand<'t>(&self, x: &'t DevTensor, op: &'static str) -> Result<Arg<'t>, KernelError>
    where
        'a: 't,
    {
        if self.stretch.is_some() {
            Ok(x.arg().within(self.stretch))
        } else {
            self.known(x, op)
        }
    }

    /// `x` as an operand whose exponent only enters the result's (it need not be known).
    fn later<'t>(&self, x: &'t DevTensor) -> Arg<'t>
    where
        'a: 't,
    {
        x.arg_later().within(self.stretch)
    }

    /// A range check for when the exponents `ins` are known (the stretch's end).
    fn defer_check(
        &self,
        op: &'static str,
        ins: Vec<super::exps::Exp>,
        ok: impl Fn(&[(i32, u32)]) -> bool + Send + Sync + 'static,
    ) {
        if let Some(s) = self.stretch {
            s.check(op, ins, ok);
        }
    }

    /// A copy of this handle whose ops are recorded in the deferred stretch `s`.
    pub(crate) fn in_stretch(self, s: &'a Stretch) -> Self {
        Resident {
            k: self.k,
            stretch: Some(s),
        }
    }

    /// Runs the open batch and makes the checks of `s`: `None` if all hold, else the op of
    /// the first that failed (see [`Stretch`]).
    pub(crate) fn stretch_failure(&self, s: &Stretch) -> Result<Option<&'static str>, KernelError> {
        self.k
            .gpu
            .sync("deferred checks")
            .map_err(|e| kernel_error("deferred checks", e))?;
        Ok(s.failure())
    }

    /// `x` as an operand with its exponent known: submits the open batch when the exponent
    /// waits for it (one of the few round trips of a resident step).
    fn known<'t>(&self, x: &'t DevTensor, op: &'static str) -> Result<Arg<'t>, KernelError> {
        if x.exp.host.now().is_none() {
            self.k.gpu.sync(op).map_err(|e| kernel_error(op, e))?;
        }
        x.arg_known(op)
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
        let g = &self.k.gpu;
        let _lock = g.op_lock.lock().unwrap_or_else(|p| p.into_inner());
        // After everything recorded so far (the batch may be what computes it).
        let out = g
            .flush_locked(OP, &[(buf.buf(), bytes)])
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
        g.matmul_on(self.later(a), self.later(b), shape, true)?
            .dev()
    }

    /// [`Kernels::add`].
    pub fn add(&self, a: &DevTensor, b: &DevTensor) -> Result<DevTensor, KernelError> {
        const OP: &str = "add";
        let g = self.kernels();
        want(g, OP, "a", a, a.len, WIDE_BITS)?;
        want(g, OP, "b", b, a.len, WIDE_BITS)?;
        g.add_on(self.operand(a, OP)?, self.operand(b, OP)?, true)?
            .dev()
    }

    /// [`Kernels::requant`].
    pub fn requant(&self, x: &DevTensor, mant_max: i32) -> Result<DevTensor, KernelError> {
        self.k.requant_on(self.later(x), mant_max, true)?.dev()
    }

    /// [`Kernels::rescale`].
    pub fn rescale(&self, x: &DevTensor, exp: i32) -> Result<DevTensor, KernelError> {
        let xa = self.known(x, "rescale")?;
        if exp < xa.exp {
            return Err(self.k.unsupported("rescale"));
        }
        self.k.rescale_on(xa, exp, true)?.dev()
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
        g.mul_cols_on(self.later(x), self.later(w), rows, cols, true)?
            .dev()
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
        g.col_dot_on(self.later(a), self.later(b), rows, cols, true)?
            .dev()
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
        g.scatter_add_rows_on(self.later(src), ids.src(), out_rows, cols, true)?
            .dev()
    }

    /// [`Kernels::sum_squares`] (per-workgroup partial sums are read back and added here).
    pub fn sum_squares(&self, x: &DevTensor) -> Result<u128, KernelError> {
        const OP: &str = "sum_squares";
        let g = self.kernels();
        want(g, OP, "x", x, x.len, B16_BITS)?;
        super::ops::sum_squares(&g.gpu, self.later(x).src).map_err(|e| kernel_error(OP, e))
    }

    /// Global gradient-norm clipping of `grads` to `clip_q30`, on the device (`clip.rs`): the
    /// clipped gradients (the same mantissas and exponents when the norm is within the clip)
    /// and 1 if they were clipped, else 0, read with the batch. Same integers as
    /// [`crate::model::optim::clip_coeff_q30`] followed by [`Kernels::scale`].
    pub fn clip(
        &self,
        grads: &[&DevTensor],
        clip_q30: i64,
    ) -> Result<(Vec<DevTensor>, DevScalar), KernelError> {
        const OP: &str = "clip";
        let g = self.kernels();
        for x in grads {
            want(g, OP, "gradient", x, x.len, B16_BITS)?;
        }
        let args: Vec<_> = grads.iter().map(|x| self.later(x)).collect();
        let (out, applied) = g.clip_on(&args, clip_q30)?;
        Ok((out, DevScalar::word(applied)))
    }

    /// [`Kernels::sum_squares`] of several tensors in one submission.
    pub fn sum_squares_many(&self, xs: &[&DevTensor]) -> Result<Vec<u128>, KernelError> {
        const OP: &str = "sum_squares";
        let g = self.kernels();
        for x in xs {
            want(g, OP, "x", x, x.len, B16_BITS)?;
        }
        let srcs: Vec<Src<'_>> = xs.iter().map(|x| self.later(x).src).collect();
        super::ops::sum_squares_many(&g.gpu, &srcs).map_err(|e| kernel_error(OP, e))
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
        let (y, stats) = g.layernorm_on(self.later(x), rows, cols, true)?;
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

    /// [`Kernels::layernorm_bwd`] with the forward's resident `R`; `x` is the forward's input
    /// (its exponent is the contract's `x_exp`).
    pub fn layernorm_bwd(
        &self,
        dxhat: &DevTensor,
        xhat: &DevTensor,
        r: &DevStats,
        x: &DevTensor,
        rows: usize,
        cols: usize,
    ) -> Result<DevTensor, KernelError> {
        const OP: &str = "layernorm_bwd";
        let g = self.kernels();
        want(g, OP, "dxhat", dxhat, rows * cols, B16_BITS)?;
        want(g, OP, "xhat", xhat, rows * cols, B16_BITS)?;
        if r.rows != rows || rows * cols == 0 {
            return Err(g.unsupported(OP));
        }
        let xa = self.operand(xhat, OP)?;
        // Without the host's look at R, the shift must be in range for every row.
        let in_range = |e: i32| e <= 0 && ((-2 * e) as u32) <= layernorm::LAYERNORM_BWD_SHIFT_MAX;
        if xa.pending() {
            self.defer_check(OP, vec![xa.exp_term()], move |v| in_range(v[0].0));
        } else if !in_range(xa.exp) {
            return Err(g.unsupported(OP));
        }
        g.layernorm_bwd_on(
            self.later(dxhat),
            xa,
            Src::Dev(r.buf.buf(), r.rows),
            self.later(x),
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
        g.softmax_on(self.operand(x, OP)?, rows, cols, causal, scale_q16, true)?
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
        let pa = self.operand(p, OP)?;
        let in_range = |e: i32| (-64..=0).contains(&e);
        if pa.pending() {
            self.defer_check(OP, vec![pa.exp_term()], move |v| {
                in_range(v[0].0) && (-v[0].0) as u32 <= super::softmax_bwd::SOFTMAX_BWD_SHIFT_MAX
            });
        } else if !in_range(pa.exp) {
            return Err(g.unsupported(OP));
        }
        g.softmax_bwd_on(pa, self.later(dp), rows, cols, scale_q16, true)?
            .dev()
    }

    /// The value of `v`, running the batch that computes it if need be.
    pub fn value(&self, v: &DevScalar) -> Result<i64, KernelError> {
        if let Some(x) = v.get() {
            return Ok(x);
        }
        self.k
            .gpu
            .sync("value")
            .map_err(|e| kernel_error("value", e))?;
        v.get().ok_or_else(|| KernelError::Device {
            op: "value",
            detail: "a value was not read with the batch that computes it".into(),
        })
    }

    /// [`Kernels::cross_entropy`] with resident targets; the loss sum waits on the device
    /// ([`Self::value`]).
    pub fn cross_entropy(
        &self,
        logits: &DevTensor,
        targets: &DevIds,
        rows: usize,
        cols: usize,
    ) -> Result<(DevScalar, DevTensor), KernelError> {
        const OP: &str = "cross_entropy";
        let g = self.kernels();
        want(g, OP, "logits", logits, rows * cols, B16_BITS)?;
        if targets.len != rows || !targets.below(cols) || rows == 0 {
            return Err(g.unsupported(OP));
        }
        let la = self.operand(logits, OP)?;
        let (loss, d) = g.cross_entropy_on(la, targets.src(), rows, cols, true)?;
        Ok((DevScalar::of(loss), d.dev()?))
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
        let (pa, ga) = (self.known(p, OP)?, self.known(grad, OP)?);
        let (ma, ra) = (self.known(m, OP)?, self.known(r, OP)?);
        let [p2, m2, r2] = g.adamw_on(pa, ga, ma, ra, st, true)?;
        Ok((p2.dev()?, m2.dev()?, r2.dev()?))
    }

    /// [`Kernels::adamw`] of several tensors: every tensor's moments recorded, then every
    /// tensor's parameters. The parameters' shifts depend on the moments' exponents: while
    /// deferring the device supplies them, else one submission makes them known to the host.
    /// One result per tensor.
    #[allow(clippy::type_complexity)] // one (p, m, r) triple per tensor
    pub fn adamw_many(
        &self,
        items: &[AdamwItem<'_>],
    ) -> Vec<Result<(DevTensor, DevTensor, DevTensor), KernelError>> {
        const OP: &str = "adamw";
        let g = self.kernels();
        let moments: Vec<Result<_, KernelError>> = items
            .iter()
            .map(|it| {
                for (name, t) in [("g", it.g), ("m", it.m), ("r", it.r)] {
                    want(g, OP, name, t, it.p.len, B16_BITS)?;
                }
                want(g, OP, "p", it.p, it.p.len, WIDE_BITS)?;
                let (ga, ma) = (self.operand(it.g, OP)?, self.operand(it.m, OP)?);
                let ra = self.operand(it.r, OP)?;
                g.adamw_moments_on(ga, ma, ra, it.step, true)
            })
            .collect();
        if self.stretch.is_none() {
            if let Err(e) = g.gpu.sync(OP) {
                let e = kernel_error(OP, e);
                return items.iter().map(|_| Err(e.clone())).collect();
            }
        }
        items
            .iter()
            .zip(moments)
            .map(|(it, mo)| {
                let (m2, r2) = mo?;
                let p2 = g.adamw_params_on(self.operand(it.p, OP)?, &m2, &r2, it.step, true)?;
                Ok((p2.dev()?, m2.dev()?, r2.dev()?))
            })
            .collect()
    }

    /// [`Kernels::gelu`].
    pub fn gelu(&self, x: &DevTensor) -> Result<DevTensor, KernelError> {
        let g = self.kernels();
        want(g, "gelu", "x", x, x.len, B16_BITS)?;
        g.gelu_on(self.operand(x, "gelu")?, true)?.dev()
    }

    /// [`Kernels::gelu_bwd`].
    pub fn gelu_bwd(&self, x: &DevTensor, dy: &DevTensor) -> Result<DevTensor, KernelError> {
        const OP: &str = "gelu_bwd";
        let g = self.kernels();
        want(g, OP, "x", x, x.len, B16_BITS)?;
        want(g, OP, "dy", dy, x.len, B16_BITS)?;
        g.gelu_bwd_on(self.operand(x, OP)?, self.later(dy), true)?
            .dev()
    }

    /// [`Kernels::scale`].
    pub fn scale(&self, x: &DevTensor, c_q30: i64) -> Result<DevTensor, KernelError> {
        let g = self.kernels();
        want(g, "scale", "x", x, x.len, B16_BITS)?;
        g.scale_on(self.later(x), c_q30, true)?.dev()
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
            return Err(self.k.unsupported(OP));
        }
        let buf = layout::gather_rows(
            &self.k.gpu,
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
            return Err(self.k.unsupported(OP));
        }
        let buf = layout::gather_rows(
            &self.k.gpu,
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
            return Err(self.k.unsupported(OP));
        }
        let buf = layout::heads(
            &self.k.gpu,
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
            return Err(self.k.unsupported(OP));
        };
        if n == 0 || parts.iter().any(|p| p.len != n) {
            return Err(self.k.unsupported(OP));
        }
        // One exponent for all parts: equal (a single part keeps its own), checked now or,
        // while deferring, when the batch has run.
        if parts.len() > 1 {
            if self.stretch.is_some() {
                let ins = parts.iter().map(|p| p.exp.host.clone()).collect();
                self.defer_check(OP, ins, |v| v.iter().all(|x| x.0 == v[0].0));
            } else {
                let e0 = self.known(first, OP)?.exp;
                for p in &parts[1..] {
                    if self.known(p, OP)?.exp != e0 {
                        return Err(self.k.unsupported(OP));
                    }
                }
            }
        }
        let bufs: Vec<&wgpu::Buffer> = parts.iter().map(|p| p.buf.buf()).collect();
        let buf = layout::heads(
            &self.k.gpu,
            &bufs,
            layout::Heads { b, t, h, hs },
            parts.len() * h * hs,
            None,
        )
        .map_err(|e| kernel_error(OP, e))?;
        let bound = parts.iter().map(|p| p.bound).max().unwrap_or(0);
        Ok(DevTensor::new(
            self.k.gpu.keep(buf),
            n * parts.len(),
            first.exp.clone(),
            bound,
        ))
    }

    /// `parts[i]` rescaled to the largest exponent of `parts` (at most 3), for each `i`, in a
    /// deferred stretch: the exponents are compared on the device. `Unsupported` outside one
    /// (then [`Self::rescale`] to the largest known exponent does it).
    pub fn rescale_to_max(&self, parts: &[&DevTensor]) -> Result<Vec<DevTensor>, KernelError> {
        const OP: &str = "rescale";
        if parts.is_empty() || parts.len() > 3 || self.stretch.is_none() {
            return Err(self.k.unsupported(OP));
        }
        (0..parts.len())
            .map(|i| {
                // The rescaled part first, then the others.
                let arg = |j: usize| parts[j].arg().within(self.stretch);
                let mut group: Vec<Arg<'_>> = vec![arg(i)];
                group.extend((0..parts.len()).filter(|&j| j != i).map(arg));
                self.k.rescale_max_on(&group)?.dev()
            })
            .collect()
    }

    /// A moved copy of (part of) `src`: same exponent and bound.
    fn derived(&self, buf: wgpu::Buffer, len: usize, src: &DevTensor) -> DevTensor {
        DevTensor::new(self.k.gpu.keep(buf), len, src.exp.clone(), src.bound)
    }
}
