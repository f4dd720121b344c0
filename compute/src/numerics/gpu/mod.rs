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
mod clip;
pub(crate) mod cross_entropy;
mod device;
mod exec;
mod exps;
mod fallback;
mod layernorm;
mod layout;
mod matmul;
mod ops;
mod resident;
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
    check_scatter_add_rows, check_softmax, check_softmax_bwd, AdamStep, Bfp, KernelError, Kernels,
    MatmulShape, ADD_ALIGN_BITS_MAX,
};

/// Most significant bits of an aligned `add` operand on the GPU (the sum of two then stays
/// below 2^62 in the emulated signed 64-bit arithmetic).
const ADD_BITS_MAX: i64 = 61;
use device::Gpu;
use exec::{Mant, Src, WideResult};
use exps::{DevExp, Exp, Formula, Key, Patch, PatchKind};
pub use fallback::WithCpuFallback;
pub use resident::{AdamwItem, DevIds, DevScalar, DevStats, DevTensor, Resident};

/// The wgpu backend on one adapter.
#[derive(Debug)]
pub struct GpuKernels {
    gpu: Gpu,
}

/// Most range checks one deferred stretch holds (a nanoGPT step records a few hundred); past
/// it the stretch counts as failed and is replayed on the checked path.
const STRETCH_CHECKS_MAX: usize = 1 << 16;

/// The range checks of one deferred stretch (`numerics::tensor::Exec::deferred`): ops
/// recorded before the host knew their inputs' exponents take their shifts from the device,
/// and the checks the host would have made before them wait here for the stretch's end. Each
/// executor has its own, so executors sharing a backend never see each other's.
#[derive(Default)]
pub(crate) struct Stretch {
    checks: std::sync::Mutex<Vec<Check>>,
    overflow: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Stretch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stretch").finish_non_exhaustive()
    }
}

/// A check on exponents the host learns when the batch has run: `ok` on their
/// `(exponent, bound)`s; every one of them must also evaluate (in range).
struct Check {
    op: &'static str,
    ins: Vec<Exp>,
    ok: CheckFn,
}

/// A range check on its inputs' `(exponent, bound)`s.
type CheckFn = Box<dyn Fn(&[(i32, u32)]) -> bool + Send + Sync>;

impl Stretch {
    /// A range check for when `ins` are known.
    pub(crate) fn check(
        &self,
        op: &'static str,
        ins: Vec<Exp>,
        ok: impl Fn(&[(i32, u32)]) -> bool + Send + Sync + 'static,
    ) {
        use std::sync::atomic::Ordering;
        let mut v = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= STRETCH_CHECKS_MAX {
            self.overflow.store(true, Ordering::SeqCst);
        } else {
            v.push(Check {
                op,
                ins,
                ok: Box::new(ok),
            });
        }
    }

    /// After the batch has run: `None` if every check holds, i.e. every op recorded in the
    /// stretch computed what the checked path computes, else the op of the first that
    /// failed. Clears the checks.
    pub(crate) fn failure(&self) -> Option<&'static str> {
        use std::sync::atomic::Ordering;
        let checks = std::mem::take(&mut *self.checks.lock().unwrap_or_else(|p| p.into_inner()));
        if self.overflow.swap(false, Ordering::SeqCst) {
            return Some("deferred checks");
        }
        checks.iter().find_map(|c| {
            let v: Option<Vec<(i32, u32)>> =
                c.ins.iter().map(|e| e.now().and_then(Result::ok)).collect();
            (!v.is_some_and(|v| (c.ok)(&v))).then_some(c.op)
        })
    }
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

    fn device_backend(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn matmul(&self, a: &Bfp, b: &Bfp, shape: MatmulShape) -> Result<Bfp, KernelError> {
        check_matmul(a, b, shape)?;
        self.matmul_on(Arg::host(a), Arg::host(b), shape, false)?
            .host()
    }

    fn add(&self, a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
        check_add(a, b)?;
        self.add_on(Arg::host(a), Arg::host(b), false)?.host()
    }

    fn requant(&self, x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
        self.requant_on(Arg::host(x), mant_max, false)?.host()
    }

    fn rescale(&self, x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
        check_rescale(x, exp)?;
        self.rescale_on(Arg::host(x), exp, false)?.host()
    }

    fn mul_cols(&self, x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        check_mul_cols(x, w, rows, cols)?;
        self.mul_cols_on(Arg::host(x), Arg::host(w), rows, cols, false)?
            .host()
    }

    fn col_dot(&self, a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        check_col_dot(a, b, rows, cols)?;
        self.col_dot_on(Arg::host(a), Arg::host(b), rows, cols, false)?
            .host()
    }

    fn scatter_add_rows(
        &self,
        src: &Bfp,
        idx: &[u32],
        out_rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        check_scatter_add_rows(src, idx, out_rows, cols)?;
        self.scatter_add_rows_on(Arg::host(src), Src::Host(idx), out_rows, cols, false)?
            .host()
    }

    fn sum_squares(&self, x: &Bfp) -> Result<u128, KernelError> {
        const OP: &str = "sum_squares";
        check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
        ops::sum_squares(&self.gpu, Src::Host(&x.mant)).map_err(|e| kernel_error(OP, e))
    }

    fn layernorm(&self, x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
        if let Some(early) = check_layernorm(x, rows, cols)? {
            return Ok(early);
        }
        let (y, stats) = self.layernorm_on(Arg::host(x), rows, cols, false)?;
        let layernorm::Stats::Host(r) = stats else {
            unreachable!("layernorm without `keep` reads its statistics back")
        };
        Ok((y.host()?, r))
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
        let any_r = r.iter().any(|&v| v != 0);
        if (any_r && (-2 * xhat.exp) as u32 > layernorm::LAYERNORM_BWD_SHIFT_MAX)
            || r.iter()
                .any(|&v| v != 0 && !layernorm::LAYERNORM_BWD_R_RANGE.contains(&v))
        {
            return Err(self.unsupported(OP));
        }
        let x = Arg {
            src: Src::Host(&[]),
            exp: x_exp,
            bits: None,
            dev: None,
            known: true,
            stretch: None,
        };
        self.layernorm_bwd_on(
            Arg::host(dxhat),
            Arg::host(xhat),
            Src::Host(r),
            x,
            rows,
            cols,
            false,
        )?
        .host()
    }

    fn softmax(
        &self,
        x: &Bfp,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        check_softmax(x, rows, cols)?;
        self.softmax_on(Arg::host(x), rows, cols, causal, scale_q16, false)?
            .host()
    }

    fn softmax_bwd(
        &self,
        p: &Bfp,
        dp: &Bfp,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        check_softmax_bwd(p, dp, rows, cols)?;
        self.softmax_bwd_on(Arg::host(p), Arg::host(dp), rows, cols, scale_q16, false)?
            .host()
    }

    fn cross_entropy(
        &self,
        logits: &Bfp,
        targets: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<(i64, Bfp), KernelError> {
        if let Some(early) = check_cross_entropy(logits, targets, rows, cols)? {
            return Ok(early);
        }
        let (loss, d) =
            self.cross_entropy_on(Arg::host(logits), Src::Host(targets), rows, cols, false)?;
        let cross_entropy::Loss::Now(loss) = loss else {
            unreachable!("a cross-entropy read back reads its loss")
        };
        Ok((loss, d.host()?))
    }

    fn adamw(
        &self,
        p: &Bfp,
        g: &Bfp,
        m: &Bfp,
        r: &Bfp,
        st: &AdamStep,
    ) -> Result<(Bfp, Bfp, Bfp), KernelError> {
        check_adamw(p, g, m, r)?;
        let [p2, m2, r2] = self.adamw_on(
            Arg::host(p),
            Arg::host(g),
            Arg::host(m),
            Arg::host(r),
            st,
            false,
        )?;
        Ok((p2.host()?, m2.host()?, r2.host()?))
    }

    fn gelu(&self, x: &Bfp) -> Result<Bfp, KernelError> {
        check_mant("gelu", "x", &x.mant, B16_MANT_MAX)?;
        self.gelu_on(Arg::host(x), false)?.host()
    }

    fn gelu_bwd(&self, x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
        check_gelu_bwd(x, dy)?;
        self.gelu_bwd_on(Arg::host(x), Arg::host(dy), false)?.host()
    }

    fn scale(&self, x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
        check_mant("scale", "x", &x.mant, B16_MANT_MAX)?;
        self.scale_on(Arg::host(x), c_q30, false)?.host()
    }
}

/// An operand of a wgpu kernel: mantissas on the host or on the device, their exponent, and
/// (on the device) a bound of their bit length from the key of the op that wrote them.
#[derive(Clone, Copy)]
pub(crate) struct Arg<'a> {
    src: Src<'a>,
    exp: i32,
    bits: Option<u32>,
    /// A resident operand's exponent.
    dev: Option<&'a DevExp>,
    /// Whether `exp` holds the exponent (else it is 0: the host did not know it when the
    /// operand was taken).
    known: bool,
    /// The deferred stretch the op is recorded in, if any.
    stretch: Option<&'a Stretch>,
}

impl<'a> Arg<'a> {
    fn host(x: &'a Bfp) -> Self {
        Arg {
            src: Src::Host(&x.mant),
            exp: x.exp,
            bits: None,
            dev: None,
            known: true,
            stretch: None,
        }
    }

    /// This operand of an op recorded in `stretch`.
    fn within(mut self, stretch: Option<&'a Stretch>) -> Self {
        self.stretch = stretch;
        self
    }

    /// Whether this operand came without its exponent (its batch had not run): shifts that
    /// depend on it must come from the device. Fixed when the operand is taken, so that an
    /// op decides once even if another thread's submission makes the exponent known meanwhile.
    fn pending(&self) -> bool {
        !self.known
    }

    /// The exponent as an input of a result's [`Formula`].
    fn exp_term(&self) -> Exp {
        match self.dev {
            Some(d) => d.host.clone(),
            None => Exp::Known {
                exp: self.exp,
                bits: self.bits.unwrap_or(0),
            },
        }
    }

    /// The device buffer of a resident operand's exponent.
    fn exp_buf(&self) -> Option<&'a wgpu::Buffer> {
        self.dev.map(|d| d.buf.buf())
    }

    fn len(&self) -> usize {
        self.src.len()
    }

    /// `bitlen(max|m|)`: scanned on the host, the bound carried with a resident tensor.
    fn top_bits(&self) -> u32 {
        match (self.bits, self.src) {
            (Some(b), _) => b,
            (None, Src::Host(v)) => {
                let top = v.iter().map(|x| x.unsigned_abs()).max().unwrap_or(0);
                32 - top.leading_zeros()
            }
            (None, Src::Dev(..)) => 32,
        }
    }
}

/// A kernel result: read back (`keep = false`) or resident.
pub(crate) enum Res {
    Host(Bfp),
    Dev(DevTensor),
}

impl Res {
    fn host(self) -> Result<Bfp, KernelError> {
        match self {
            Res::Host(b) => Ok(b),
            Res::Dev(_) => unreachable!("a kernel called without `keep` reads its result back"),
        }
    }
    fn dev(self) -> Result<DevTensor, KernelError> {
        match self {
            Res::Dev(d) => Ok(d),
            Res::Host(_) => unreachable!("a kernel called with `keep` leaves its result resident"),
        }
    }
}

/// The kernels on [`Arg`]s, shared by the host interface ([`Kernels`]) and the resident one
/// (`resident.rs`): the callers check their inputs, these compute every shift and exponent.
impl GpuKernels {
    /// A range check for when the exponents `ins` are known, in the stretch of the pending
    /// operands `of`; `Unsupported` (the checked path) if none is in one.
    fn defer_check(
        &self,
        op: &'static str,
        of: &[&Arg<'_>],
        ins: Vec<Exp>,
        ok: impl Fn(&[(i32, u32)]) -> bool + Send + Sync + 'static,
    ) -> Result<(), KernelError> {
        match of.iter().find_map(|a| a.stretch) {
            Some(s) => {
                s.check(op, ins, ok);
                Ok(())
            }
            None => Err(self.unsupported(op)),
        }
    }

    /// The exponent buffers of resident operands.
    fn bufs<'b>(&self, ins: &[&Arg<'b>]) -> Vec<&'b wgpu::Buffer> {
        ins.iter()
            .map(|a| {
                a.exp_buf()
                    .expect("a device-side exponent needs a resident operand")
            })
            .collect()
    }

    /// Shifts taken on the device (`exp_pre`) when `pending`: the host does not know the
    /// exponents yet.
    fn patch<'b>(
        &self,
        pending: bool,
        kind: PatchKind,
        c: i32,
        ins: &[&Arg<'b>],
    ) -> Option<Patch<'b>> {
        pending.then(|| Patch {
            kind,
            c,
            ins: self.bufs(ins),
            offset: None,
        })
    }

    /// The result `r` of `len` elements with exponent `f + shift(key)`; `ins` are the
    /// operands whose exponents `f` reads, in its order (their device exponents feed
    /// `exp_post` when the result stays resident).
    fn res(
        &self,
        op: &'static str,
        r: WideResult,
        len: usize,
        f: Formula,
        ins: &[&Arg<'_>],
    ) -> Result<Res, KernelError> {
        self.res_keys(op, r, len, f, ins, None)
    }

    /// [`Self::res`] with a second key (AdamW's r').
    fn res_keys(
        &self,
        op: &'static str,
        r: WideResult,
        len: usize,
        f: Formula,
        ins: &[&Arg<'_>],
        key2: Option<Key>,
    ) -> Result<Res, KernelError> {
        match r.mant {
            Mant::Host(mant) => {
                let key2 = key2.map(|k| k.cell);
                match Exp::of(op, f, r.key, key2, r.target)? {
                    Exp::Known { exp, .. } => Ok(Res::Host(Bfp { mant, exp })),
                    Exp::Later(_) => {
                        unreachable!("a result read back has its key and known operands")
                    }
                }
            }
            Mant::Dev(buf) => {
                let buf = self.gpu.keep(buf);
                // Host operands of a resident op (none in the model) get exponent buffers.
                let tmp: Vec<Option<DevExp>> = ins
                    .iter()
                    .map(|a| match a.dev {
                        Some(_) => Ok(None),
                        None => DevExp::known(&self.gpu, a.exp, a.bits.unwrap_or(0)).map(Some),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| kernel_error(op, e))?;
                let bufs: Vec<&wgpu::Buffer> = ins
                    .iter()
                    .zip(&tmp)
                    .map(|(a, t)| match (a.exp_buf(), t) {
                        (Some(b), _) => b,
                        (None, Some(t)) => t.buf.buf(),
                        (None, None) => unreachable!("every operand has an exponent buffer"),
                    })
                    .collect();
                let key = Key {
                    cell: r.key,
                    buf: r.key_buf,
                };
                let exp = DevExp::post(&self.gpu, op, f, &bufs, key, key2, r.target)?;
                // In a stretch, a result exponent the host has not evaluated must be in range.
                if let (Some(s), Exp::Later(_)) = (ins.iter().find_map(|a| a.stretch), &exp.host) {
                    s.check(op, vec![exp.host.clone()], |_| true);
                }
                Ok(Res::Dev(DevTensor::new(buf, len, exp, r.target)))
            }
        }
    }

    /// Runs a wide op and applies its shift to `base_exp` like `requant_wide` does.
    fn wide_op(
        &self,
        op: &'static str,
        w: ops::WideOp<'_>,
        f: Formula,
        ins: &[&Arg<'_>],
    ) -> Result<Res, KernelError> {
        let len = w.count;
        let r = ops::wide(&self.gpu, w).map_err(|e| kernel_error(op, e))?;
        self.res(op, r, len, f, ins)
    }

    fn matmul_on(
        &self,
        a: Arg<'_>,
        b: Arg<'_>,
        shape: MatmulShape,
        keep: bool,
    ) -> Result<Res, KernelError> {
        const OP: &str = "matmul";
        let r = matmul::matmul_b16(&self.gpu, a.src, b.src, shape, keep)
            .map_err(|e| kernel_error(OP, e))?;
        let len = shape.batch * shape.m * shape.n;
        let f = Formula::linear(0, &[(1, a.exp_term()), (1, b.exp_term())]);
        self.res(OP, r, len, f, &[&a, &b])
    }

    fn add_on(&self, a: Arg<'_>, b: Arg<'_>, keep: bool) -> Result<Res, KernelError> {
        const OP: &str = "add";
        let pending = a.pending() || b.pending();
        let (la, ra, lb, rb) = if pending {
            // Shifts from the device's exponents (`exp_pre`); checked when the keys arrive.
            self.defer_check(OP, &[&a, &b], vec![a.exp_term(), b.exp_term()], |v| {
                add_shifts(v[0], v[1]).is_some()
            })?;
            (0, 0, 0, 0)
        } else {
            add_shifts((a.exp, a.top_bits()), (b.exp, b.top_bits()))
                .ok_or_else(|| self.unsupported(OP))?
        };
        let patch = self.patch(pending, PatchKind::Add, 15, &[&a, &b]);
        self.wide_op(
            OP,
            ops::WideOp {
                shader: &shaders::OPS,
                k: 0,
                entry: "add",
                in0: a.src,
                in1: b.src,
                count: a.len(),
                cols: la as usize,
                rows: ra as usize,
                c: (lb as i64) | ((rb as i64) << 32),
                bits: 15,
                keep,
                patch,
            },
            Formula::align(0, a.exp_term(), b.exp_term()),
            &[&a, &b],
        )
    }

    fn requant_on(&self, x: Arg<'_>, mant_max: i32, keep: bool) -> Result<Res, KernelError> {
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
                in0: x.src,
                in1: Src::Host(&[]),
                count: x.len(),
                cols: 0,
                rows: 0,
                c: 0,
                bits,
                keep,
                patch: None,
            },
            Formula::linear(0, &[(1, x.exp_term())]),
            &[&x],
        )
    }

    fn rescale_on(&self, x: Arg<'_>, exp: i32, keep: bool) -> Result<Res, KernelError> {
        const OP: &str = "rescale";
        let k = (exp as i64 - x.exp as i64).min(63) as u32;
        let mant =
            ops::rescale(&self.gpu, x.src, k, keep, None).map_err(|e| kernel_error(OP, e))?;
        Ok(match mant {
            Mant::Host(mant) => Res::Host(Bfp::new(mant, exp)),
            // Rounding to a coarser exponent never lengthens a mantissa.
            Mant::Dev(buf) => {
                let buf = self.gpu.keep(buf);
                let e =
                    DevExp::known(&self.gpu, exp, x.top_bits()).map_err(|e| kernel_error(OP, e))?;
                Res::Dev(DevTensor::new(buf, x.len(), e, x.top_bits()))
            }
        })
    }

    /// `group[0]` rescaled to the largest exponent of `group` (at most 3 resident tensors),
    /// the exponents taken on the device.
    fn rescale_max_on(&self, group: &[Arg<'_>]) -> Result<Res, KernelError> {
        const OP: &str = "rescale";
        let refs: Vec<&Arg<'_>> = group.iter().collect();
        let patch = self.patch(true, PatchKind::Rescale, 0, &refs);
        let x = &group[0];
        let mant = ops::rescale(&self.gpu, x.src, 0, true, patch.as_ref())
            .map_err(|e| kernel_error(OP, e))?;
        let Mant::Dev(buf) = mant else {
            unreachable!("a kept rescale stays on the device")
        };
        let buf = self.gpu.keep(buf);
        let f = Formula::max(group.iter().map(Arg::exp_term).collect());
        let key = Key::cell(exec::known_key(0));
        let e = DevExp::post(&self.gpu, OP, f, &self.bufs(&refs), key, None, 0)?;
        if let (Some(s), Exp::Later(_)) = (x.stretch, &e.host) {
            s.check(OP, vec![e.host.clone()], |_| true);
        }
        Ok(Res::Dev(DevTensor::new(buf, x.len(), e, x.top_bits())))
    }

    fn mul_cols_on(
        &self,
        x: Arg<'_>,
        w: Arg<'_>,
        rows: usize,
        cols: usize,
        keep: bool,
    ) -> Result<Res, KernelError> {
        self.wide_op(
            "mul_cols",
            ops::WideOp {
                shader: &shaders::OPS,
                k: 0,
                entry: "mul_cols",
                in0: x.src,
                in1: w.src,
                count: rows * cols,
                cols,
                rows,
                c: 0,
                bits: 15,
                keep,
                patch: None,
            },
            Formula::linear(0, &[(1, x.exp_term()), (1, w.exp_term())]),
            &[&x, &w],
        )
    }

    fn col_dot_on(
        &self,
        a: Arg<'_>,
        b: Arg<'_>,
        rows: usize,
        cols: usize,
        keep: bool,
    ) -> Result<Res, KernelError> {
        self.wide_op(
            "col_dot",
            ops::WideOp {
                shader: &shaders::OPS,
                k: 0,
                entry: "col_dot",
                in0: a.src,
                in1: b.src,
                count: cols,
                cols,
                rows,
                c: 0,
                bits: 15,
                keep,
                patch: None,
            },
            Formula::linear(0, &[(1, a.exp_term()), (1, b.exp_term())]),
            &[&a, &b],
        )
    }

    fn scatter_add_rows_on(
        &self,
        src: Arg<'_>,
        idx: Src<'_, u32>,
        out_rows: usize,
        cols: usize,
        keep: bool,
    ) -> Result<Res, KernelError> {
        const OP: &str = "scatter_add_rows";
        let r = ops::scatter_add_rows(&self.gpu, src.src, idx, out_rows, cols, keep)
            .map_err(|e| kernel_error(OP, e))?;
        let f = Formula::linear(0, &[(1, src.exp_term())]);
        self.res(OP, r, out_rows * cols, f, &[&src])
    }

    fn layernorm_on(
        &self,
        x: Arg<'_>,
        rows: usize,
        cols: usize,
        keep: bool,
    ) -> Result<(Res, layernorm::Stats), KernelError> {
        const OP: &str = "layernorm";
        if cols > layernorm::LAYERNORM_COLS_MAX {
            return Err(self.unsupported(OP));
        }
        let (r, stats) = layernorm::layernorm(&self.gpu, x.src, rows, cols, keep)
            .map_err(|e| kernel_error(OP, e))?;
        Ok((
            self.res(OP, r, rows * cols, Formula::linear(-24, &[]), &[])?,
            stats,
        ))
    }

    /// The caller checked `r`'s range (host), or `r` came from [`Self::layernorm_on`] on the
    /// device (always in range: `2^16 ≤ R < 2^62` for nonzero rows of width ≤ 256).
    #[allow(clippy::too_many_arguments)] // the contract's arguments, plus `keep`
    fn layernorm_bwd_on(
        &self,
        dxhat: Arg<'_>,
        xhat: Arg<'_>,
        r: Src<'_, u64>,
        x: Arg<'_>,
        rows: usize,
        cols: usize,
        keep: bool,
    ) -> Result<Res, KernelError> {
        const OP: &str = "layernorm_bwd";
        if cols > layernorm::LAYERNORM_COLS_MAX {
            return Err(self.unsupported(OP));
        }
        let max = layernorm::LAYERNORM_BWD_SHIFT_MAX;
        let sh = ((-2 * xhat.exp) as u32).min(max);
        let patch = self.patch(xhat.pending(), PatchKind::LnBwd, max as i32, &[&xhat]);
        let res = layernorm::layernorm_bwd(
            &self.gpu,
            dxhat.src,
            xhat.src,
            r,
            sh,
            rows,
            cols,
            keep,
            patch.as_ref(),
        )
        .map_err(|e| kernel_error(OP, e))?;
        let f = Formula::linear(
            16 - 24,
            &[
                (1, dxhat.exp_term()),
                (2, xhat.exp_term()),
                (-1, x.exp_term()),
            ],
        );
        self.res(OP, res, rows * cols, f, &[&dxhat, &xhat, &x])
    }

    fn softmax_on(
        &self,
        x: Arg<'_>,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
        keep: bool,
    ) -> Result<Res, KernelError> {
        // 30 − exp, clamped: beyond ±100 every y is 0 (s ≥ 96) or saturated (E = 0), as on
        // the CPU.
        let s = (30 - x.exp as i64).clamp(-100, 100) as i32;
        let patch = self.patch(x.pending(), PatchKind::Softmax, 0, &[&x]);
        self.wide_op(
            "softmax",
            ops::WideOp {
                shader: &shaders::SOFTMAX,
                entry: "softmax_rows",
                in0: x.src,
                in1: Src::Host(&[]),
                count: rows * cols,
                cols,
                rows,
                c: i64::from(scale_q16) | (i64::from(causal) << 32),
                k: s as u32,
                bits: 15,
                keep,
                patch,
            },
            Formula::linear(-30, &[]),
            &[],
        )
    }

    fn softmax_bwd_on(
        &self,
        p: Arg<'_>,
        dp: Arg<'_>,
        rows: usize,
        cols: usize,
        scale_q16: u32,
        keep: bool,
    ) -> Result<Res, KernelError> {
        const OP: &str = "softmax_bwd";
        let max = softmax_bwd::SOFTMAX_BWD_SHIFT_MAX;
        let pending = p.pending();
        let sh = (-p.exp) as u32;
        if (!pending && sh > max) || cols > softmax_bwd::SOFTMAX_BWD_COLS_MAX {
            return Err(self.unsupported(OP));
        }
        let patch = self.patch(pending, PatchKind::Neg, max as i32, &[&p]);
        let r = softmax_bwd::softmax_bwd(
            &self.gpu,
            p.src,
            dp.src,
            rows,
            cols,
            sh,
            scale_q16,
            keep,
            patch.as_ref(),
        )
        .map_err(|e| kernel_error(OP, e))?;
        let f = Formula::linear(-16, &[(2, p.exp_term()), (1, dp.exp_term())]);
        self.res(OP, r, rows * cols, f, &[&p, &dp])
    }

    fn cross_entropy_on(
        &self,
        logits: Arg<'_>,
        targets: Src<'_, u32>,
        rows: usize,
        cols: usize,
        keep: bool,
    ) -> Result<(cross_entropy::Loss, Res), KernelError> {
        const OP: &str = "cross_entropy";
        let s = (30 - logits.exp as i64).clamp(-100, 100) as i32;
        let mut patch = self.patch(logits.pending(), PatchKind::Softmax, 0, &[&logits]);
        if let Some(p) = patch.as_mut() {
            p.offset = Some(16);
        }
        let (loss, r) = cross_entropy::cross_entropy(
            &self.gpu,
            logits.src,
            targets,
            rows,
            cols,
            s,
            keep,
            patch.as_ref(),
        )
        .map_err(|e| kernel_error(OP, e))?;
        let f = Formula::linear(-40, &[]);
        Ok((loss, self.res(OP, r, rows * cols, f, &[])?))
    }

    /// AdamW in two halves: the moments (recorded; with `keep`, their exponents wait for the
    /// batch), then the parameters ([`Self::adamw_params_on`], which needs them).
    fn adamw_on(
        &self,
        p: Arg<'_>,
        g: Arg<'_>,
        m: Arg<'_>,
        r: Arg<'_>,
        st: &AdamStep,
        keep: bool,
    ) -> Result<[Res; 3], KernelError> {
        let (m2, r2) = self.adamw_moments_on(g, m, r, st, keep)?;
        if keep {
            self.gpu
                .sync("adamw")
                .map_err(|e| kernel_error("adamw", e))?;
        }
        let p2 = self.adamw_params_on(p, &m2, &r2, st, keep)?;
        Ok([p2, m2, r2])
    }

    /// Steps 1 and 2 of the AdamW contract: `m'` and `r'`.
    fn adamw_moments_on(
        &self,
        g: Arg<'_>,
        m: Arg<'_>,
        r: Arg<'_>,
        st: &AdamStep,
        keep: bool,
    ) -> Result<(Res, Res), KernelError> {
        const OP: &str = "adamw";
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
        let odd = (e1 - 30) % 2 != 0;
        let pending = m.pending() || g.pending() || r.pending();
        let patch = self.patch(pending, PatchKind::AdamM, 0, &[&m, &g, &r]);
        let mo = adamw::moments(
            &self.gpu,
            g.src,
            m.src,
            r.src,
            [
                adamw::align_shifts(m.exp as i64, e0),
                adamw::align_shifts(g.exp as i64, e0),
            ],
            [adamw::align_shifts(er, e1), adamw::align_shifts(eg, e1)],
            odd,
            (b1, b2),
            keep,
            patch.as_ref(),
        )
        .map_err(|e| kernel_error(OP, e))?;
        let len = g.len();
        let m2 = self.res(
            OP,
            mo.m,
            len,
            Formula::align(-30, m.exp_term(), g.exp_term()),
            &[&m, &g],
        )?;
        // r' has exponent ev/2 − s + shift, s = max(0, 100 − mbits) / 2 from the device.
        let mbits = Key {
            cell: mo.mbits,
            buf: mo.mbits_buf,
        };
        let f = Formula::adam_r(r.exp_term(), g.exp_term());
        let r2 = self.res_keys(OP, mo.r, len, f, &[&r, &g], Some(mbits))?;
        Ok((m2, r2))
    }

    /// Steps 3 to 5 of the AdamW contract: the new parameters, from the moments' results
    /// (whose exponents must be known by now).
    fn adamw_params_on(
        &self,
        p: Arg<'_>,
        m2: &Res,
        r2: &Res,
        st: &AdamStep,
        keep: bool,
    ) -> Result<Res, KernelError> {
        const OP: &str = "adamw";
        let (m2a, r2a) = (m2.arg(), r2.arg());
        let alpha = st.alpha_q40;
        let pending = p.pending() || m2a.pending() || r2a.pending();
        let sh = if pending {
            let ins = vec![p.exp_term(), m2a.exp_term(), r2a.exp_term()];
            self.defer_check(OP, &[&p, &m2a, &r2a], ins, move |v| {
                adam_shift(alpha, v[0].0, v[1], v[2].0).is_some()
            })?;
            0
        } else {
            adam_shift(alpha, p.exp, (m2a.exp, m2a.top_bits()), r2a.exp)
                .ok_or_else(|| self.unsupported(OP))?
        };
        let patch = self.patch(pending, PatchKind::AdamP, 0, &[&p, &m2a, &r2a]);
        let pr = adamw::params(
            &self.gpu,
            p.src,
            m2a.src,
            r2a.src,
            sh,
            st.alpha_q40,
            st.decay_q40,
            keep,
            patch.as_ref(),
        )
        .map_err(|e| kernel_error(OP, e))?;
        let f = Formula::linear(-16, &[(1, p.exp_term())]);
        self.res(OP, pr, p.len(), f, &[&p])
    }

    fn gelu_on(&self, x: Arg<'_>, keep: bool) -> Result<Res, KernelError> {
        let patch = self.patch(x.pending(), PatchKind::Exp, 0, &[&x]);
        self.wide_op(
            "gelu",
            ops::WideOp {
                shader: &shaders::GELU,
                entry: "gelu",
                in0: x.src,
                in1: Src::Host(&[]),
                count: x.len(),
                cols: 0,
                rows: 0,
                c: 0,
                k: x.exp as u32,
                bits: 15,
                keep,
                patch,
            },
            Formula::linear(-31, &[(1, x.exp_term())]),
            &[&x],
        )
    }

    fn gelu_bwd_on(&self, x: Arg<'_>, dy: Arg<'_>, keep: bool) -> Result<Res, KernelError> {
        let patch = self.patch(x.pending(), PatchKind::Exp, 0, &[&x]);
        self.wide_op(
            "gelu_bwd",
            ops::WideOp {
                shader: &shaders::GELU,
                entry: "gelu_bwd",
                in0: x.src,
                in1: dy.src,
                count: x.len(),
                cols: 0,
                rows: 0,
                c: 0,
                k: x.exp as u32,
                bits: 15,
                keep,
                patch,
            },
            Formula::linear(-31, &[(1, dy.exp_term())]),
            &[&dy],
        )
    }

    fn scale_on(&self, x: Arg<'_>, c_q30: i64, keep: bool) -> Result<Res, KernelError> {
        const OP: &str = "scale";
        if c_q30.unsigned_abs() > ops::SCALE_C_ABS_MAX {
            return Err(self.unsupported(OP));
        }
        self.wide_op(
            OP,
            ops::scale_op(x.src, c_q30, keep, None),
            Formula::linear(-30, &[(1, x.exp_term())]),
            &[&x],
        )
    }
}

impl Res {
    /// This result as an operand of the next kernel (its exponent known or pending).
    fn arg(&self) -> Arg<'_> {
        match self {
            Res::Host(b) => Arg::host(b),
            Res::Dev(d) => d.arg(),
        }
    }
}

/// `(left, right)` shifts of add's operands `(exp, bit-length bound)` to their common
/// exponent. A left-shifted operand must stay below 2^61 so that the sum fits the emulated
/// signed 64 bits (always true unless mantissas near 2^23 meet a 40-bit exponent gap; then
/// the op is left to the CPU reference: `None`).
fn add_shifts((ea, ba): (i32, u32), (eb, bb): (i32, u32)) -> Option<(u32, u32, u32, u32)> {
    let e0 = align_exp(ea, eb);
    let shifts = |e: i32, bits: u32| -> Option<(u32, u32)> {
        let d = e as i64 - e0 as i64;
        if d >= 0 {
            (bits as i64 + d <= ADD_BITS_MAX).then_some((d as u32, 0))
        } else {
            Some((0, (-d).min(63) as u32))
        }
    };
    let (la, ra) = shifts(ea, ba)?;
    let (lb, rb) = shifts(eb, bb)?;
    Some((la, ra, lb, rb))
}

/// AdamW's parameter shift `sh = (p.exp − 16) − (m'.exp − r'.exp − 70)`, clamped to
/// `[−128, 127]`, or `None` when the update `|a| ≤ |alpha| · max|m'| · 2^30 / 2^sh` could
/// exceed `ADAM_UPDATE_BITS_MAX` bits.
fn adam_shift(alpha_q40: i64, p_exp: i32, (m_exp, m_bits): (i32, u32), r_exp: i32) -> Option<i32> {
    let bits = |v: i64| 64 - v.unsigned_abs().leading_zeros();
    let ea = m_exp as i64 - r_exp as i64 - 70;
    let sh = (p_exp as i64 - 16) - ea;
    if m_bits > 0 && bits(alpha_q40) as i64 + m_bits as i64 + 30 - sh > adamw::ADAM_UPDATE_BITS_MAX
    {
        return None;
    }
    Some(sh.clamp(-128, 127) as i32)
}
