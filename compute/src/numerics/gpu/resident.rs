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
use std::sync::OnceLock;

use super::exec::{key_shift, Src};
use super::{kernel_error, layernorm, layout, Arg, GpuKernels};
use crate::numerics::fixed::B16_MANT_MAX;
use crate::numerics::kernels::{
    checked_exp, AdamStep, Bfp, KernelError, Kernels, MatmulShape, TENSOR_ELEMS_MAX, WIDE_MANT_MAX,
};

/// The exponent of a resident tensor with a bound of its mantissas' bit length: known, or
/// waiting for the requantization key of the op that computes it (recorded in a batch that has
/// not run yet): `exp = base + Σ terms + shift(key)`.
#[derive(Clone, Debug)]
pub(crate) enum Exp {
    Known { exp: i32, bits: u32 },
    Later(Arc<LaterExp>),
}

#[derive(Debug)]
pub(crate) struct LaterExp {
    op: &'static str,
    base: i64,
    terms: Vec<Exp>,
    key: Arc<OnceLock<u32>>,
    target: u32,
    /// `(shift, bit-length bound)` from the key and the target.
    map: KeyMap,
    done: OnceLock<(i32, u32)>,
}

/// How a key becomes a shift and a bit-length bound.
pub(crate) type KeyMap = fn(u32, u32) -> (i64, u32);

/// A requantization key: the shift and bound of [`key_shift`].
pub(crate) fn requant_key(key: u32, target: u32) -> (i64, u32) {
    let (shift, bits) = key_shift(key, target);
    (i64::from(shift), bits)
}

impl Exp {
    /// `exp = base + Σ terms + shift(key)`, known at once if everything it needs is.
    pub(crate) fn of(
        op: &'static str,
        base: i64,
        terms: Vec<Exp>,
        key: Arc<OnceLock<u32>>,
        target: u32,
    ) -> Result<Exp, KernelError> {
        Self::of_map(op, base, terms, key, target, requant_key)
    }

    /// [`Exp::of`] with another reading of the key (`base + Σ terms + map(key).0`).
    pub(crate) fn of_map(
        op: &'static str,
        base: i64,
        terms: Vec<Exp>,
        key: Arc<OnceLock<u32>>,
        target: u32,
        map: KeyMap,
    ) -> Result<Exp, KernelError> {
        let e = Exp::Later(Arc::new(LaterExp {
            op,
            base,
            terms,
            key,
            target,
            map,
            done: OnceLock::new(),
        }));
        Ok(match e.now() {
            Some(r) => {
                let (exp, bits) = r?;
                Exp::Known { exp, bits }
            }
            None => e,
        })
    }

    /// `(exponent, bit-length bound)` if every key it depends on is known.
    pub(crate) fn now(&self) -> Option<Result<(i32, u32), KernelError>> {
        match self {
            Exp::Known { exp, bits } => Some(Ok((*exp, *bits))),
            Exp::Later(l) => {
                if let Some(&v) = l.done.get() {
                    return Some(Ok(v));
                }
                let key = *l.key.get()?;
                let mut e = l.base;
                for t in &l.terms {
                    match t.now()? {
                        Ok((x, _)) => e += i64::from(x),
                        Err(err) => return Some(Err(err)),
                    }
                }
                let (shift, bits) = (l.map)(key, l.target);
                Some(checked_exp(l.op, e, shift).map(|x| {
                    let _ = l.done.set((x, bits));
                    (x, bits)
                }))
            }
        }
    }
}

/// A block-floating-point tensor whose mantissas live on the device: `value[i] = mant[i] ·
/// 2^exp`. Cloning shares the buffer; the last handle returns it to the pool.
#[derive(Clone, Debug)]
pub struct DevTensor {
    buf: Arc<DevBuf>,
    len: usize,
    exp: Exp,
    /// `bitlen(max|mant|) ≤ bound`, known when the op is recorded (its target width).
    bound: u32,
}

impl DevTensor {
    pub(crate) fn new(buf: Arc<DevBuf>, len: usize, exp: Exp, bound: u32) -> Self {
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
            term: Some(&self.exp),
        }
    }

    /// An operand with its exponent, which must be known (the batch has run).
    pub(crate) fn arg_known(&self, op: &'static str) -> Result<Arg<'_>, KernelError> {
        let (exp, bits) = self.exp.now().unwrap_or_else(|| {
            Err(KernelError::Device {
                op,
                detail: "an exponent was needed before the batch computing it ran".into(),
            })
        })?;
        Ok(Arg {
            src: Src::Dev(self.buf.buf(), self.len),
            exp,
            bits: Some(bits),
            term: None,
        })
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
        let bits = 32 - top.leading_zeros();
        Ok(DevTensor::new(
            g.keep(buf),
            x.len(),
            Exp::Known { exp: x.exp, bits },
            bits,
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
        let mant = self.read(&x.buf, x.len as u64 * 4)?;
        Ok(Bfp::new(mant, self.known(x, "download")?.exp))
    }

    /// The exponent of a resident tensor (running the batch that computes it if need be).
    pub fn exp(&self, x: &DevTensor) -> Result<i32, KernelError> {
        Ok(self.known(x, "exponent")?.exp)
    }

    /// `x` as an operand with its exponent known: submits the open batch when the exponent
    /// waits for it (one of the few round trips of a resident step).
    fn known<'t>(&self, x: &'t DevTensor, op: &'static str) -> Result<Arg<'t>, KernelError> {
        if x.exp.now().is_none() {
            self.0.gpu.sync(op).map_err(|e| kernel_error(op, e))?;
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
        let g = &self.0.gpu;
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
        g.matmul_on(a.arg_later(), b.arg_later(), shape, true)?
            .dev()
    }

    /// [`Kernels::add`].
    pub fn add(&self, a: &DevTensor, b: &DevTensor) -> Result<DevTensor, KernelError> {
        const OP: &str = "add";
        let g = self.kernels();
        want(g, OP, "a", a, a.len, WIDE_BITS)?;
        want(g, OP, "b", b, a.len, WIDE_BITS)?;
        g.add_on(self.known(a, OP)?, self.known(b, OP)?, true)?
            .dev()
    }

    /// [`Kernels::requant`].
    pub fn requant(&self, x: &DevTensor, mant_max: i32) -> Result<DevTensor, KernelError> {
        self.0.requant_on(x.arg_later(), mant_max, true)?.dev()
    }

    /// [`Kernels::rescale`].
    pub fn rescale(&self, x: &DevTensor, exp: i32) -> Result<DevTensor, KernelError> {
        let xa = self.known(x, "rescale")?;
        if exp < xa.exp {
            return Err(self.0.unsupported("rescale"));
        }
        self.0.rescale_on(xa, exp, true)?.dev()
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
        g.mul_cols_on(x.arg_later(), w.arg_later(), rows, cols, true)?
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
        g.col_dot_on(a.arg_later(), b.arg_later(), rows, cols, true)?
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
        g.scatter_add_rows_on(src.arg_later(), ids.src(), out_rows, cols, true)?
            .dev()
    }

    /// [`Kernels::sum_squares`] (per-workgroup partial sums are read back and added here).
    pub fn sum_squares(&self, x: &DevTensor) -> Result<u128, KernelError> {
        const OP: &str = "sum_squares";
        let g = self.kernels();
        want(g, OP, "x", x, x.len, B16_BITS)?;
        super::ops::sum_squares(&g.gpu, x.arg_later().src).map_err(|e| kernel_error(OP, e))
    }

    /// [`Kernels::sum_squares`] of several tensors in one submission.
    pub fn sum_squares_many(&self, xs: &[&DevTensor]) -> Result<Vec<u128>, KernelError> {
        const OP: &str = "sum_squares";
        let g = self.kernels();
        for x in xs {
            want(g, OP, "x", x, x.len, B16_BITS)?;
        }
        let srcs: Vec<Src<'_>> = xs.iter().map(|x| x.arg_later().src).collect();
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
        let (y, stats) = g.layernorm_on(x.arg_later(), rows, cols, true)?;
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
        let xa = self.known(xhat, OP)?;
        // Without the host's look at R, the shift must be in range for every row.
        if r.rows != rows
            || rows * cols == 0
            || xa.exp > 0
            || ((-2 * xa.exp) as u32) > layernorm::LAYERNORM_BWD_SHIFT_MAX
        {
            return Err(g.unsupported(OP));
        }
        g.layernorm_bwd_on(
            dxhat.arg_later(),
            xa,
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
        g.softmax_on(self.known(x, OP)?, rows, cols, causal, scale_q16, true)?
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
        let pa = self.known(p, OP)?;
        if pa.exp > 0 || pa.exp < -64 {
            return Err(g.unsupported(OP));
        }
        g.softmax_bwd_on(pa, dp.arg_later(), rows, cols, scale_q16, true)?
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
        let la = self.known(logits, OP)?;
        let (loss, d) = g.cross_entropy_on(la, targets.src(), rows, cols, true)?;
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
        let (pa, ga) = (self.known(p, OP)?, self.known(grad, OP)?);
        let (ma, ra) = (self.known(m, OP)?, self.known(r, OP)?);
        let [p2, m2, r2] = g.adamw_on(pa, ga, ma, ra, st, true)?;
        Ok((p2.dev()?, m2.dev()?, r2.dev()?))
    }

    /// [`Kernels::adamw`] of several tensors: every tensor's moments recorded, one submission
    /// for their exponents, then every tensor's parameters recorded. One result per tensor.
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
                let (ga, ma) = (self.known(it.g, OP)?, self.known(it.m, OP)?);
                let ra = self.known(it.r, OP)?;
                g.adamw_moments_on(ga, ma, ra, it.step, true)
            })
            .collect();
        if let Err(e) = g.gpu.sync(OP) {
            let e = kernel_error(OP, e);
            return items.iter().map(|_| Err(e.clone())).collect();
        }
        items
            .iter()
            .zip(moments)
            .map(|(it, mo)| {
                let (m2, r2) = mo?;
                let p2 = g.adamw_params_on(self.known(it.p, OP)?, &m2, &r2, it.step, true)?;
                Ok((p2.dev()?, m2.dev()?, r2.dev()?))
            })
            .collect()
    }

    /// [`Kernels::gelu`].
    pub fn gelu(&self, x: &DevTensor) -> Result<DevTensor, KernelError> {
        let g = self.kernels();
        want(g, "gelu", "x", x, x.len, B16_BITS)?;
        g.gelu_on(self.known(x, "gelu")?, true)?.dev()
    }

    /// [`Kernels::gelu_bwd`].
    pub fn gelu_bwd(&self, x: &DevTensor, dy: &DevTensor) -> Result<DevTensor, KernelError> {
        const OP: &str = "gelu_bwd";
        let g = self.kernels();
        want(g, OP, "x", x, x.len, B16_BITS)?;
        want(g, OP, "dy", dy, x.len, B16_BITS)?;
        g.gelu_bwd_on(self.known(x, OP)?, dy.arg_later(), true)?
            .dev()
    }

    /// [`Kernels::scale`].
    pub fn scale(&self, x: &DevTensor, c_q30: i64) -> Result<DevTensor, KernelError> {
        let g = self.kernels();
        want(g, "scale", "x", x, x.len, B16_BITS)?;
        g.scale_on(x.arg_later(), c_q30, true)?.dev()
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
        if n == 0 || parts.iter().any(|p| p.len != n) {
            return Err(self.0.unsupported(OP));
        }
        // One exponent for all parts: known and equal (a single part keeps its own).
        if parts.len() > 1 {
            let e0 = self.known(first, OP)?.exp;
            for p in &parts[1..] {
                if self.known(p, OP)?.exp != e0 {
                    return Err(self.0.unsupported(OP));
                }
            }
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
        let bound = parts.iter().map(|p| p.bound).max().unwrap_or(0);
        Ok(DevTensor::new(
            self.0.gpu.keep(buf),
            n * parts.len(),
            first.exp.clone(),
            bound,
        ))
    }

    /// A moved copy of (part of) `src`: same exponent and bound.
    fn derived(&self, buf: wgpu::Buffer, len: usize, src: &DevTensor) -> DevTensor {
        DevTensor::new(self.0.gpu.keep(buf), len, src.exp.clone(), src.bound)
    }
}
