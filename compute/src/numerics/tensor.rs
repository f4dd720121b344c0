//! Tensors where the backend keeps them: [`Tensor`] is a host [`Bfp`] or a device-resident
//! [`DevTensor`], and [`Exec`] runs every kernel the model and the optimizer call on either.
//!
//! With a backend whose memory is the host's (the CPU reference), every tensor is a host
//! tensor and each call goes straight to the `Kernels` method: no copies, no extra work. With
//! wgpu, tensors stay on the device for a whole training run; a kernel that cannot take its
//! inputs there (an input outside the range its shaders emulate, `Unsupported`) runs on the
//! host interface instead and its result goes back up: same bits either way, and
//! [`Exec::fallbacks`] counts such trips so that none goes unseen.

use std::borrow::Cow;

use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::numerics::gpu::{
    AdamwItem, DevIds, DevScalar, DevStats, DevTensor, GpuKernels, Resident, Stretch,
};
use crate::numerics::kernels::{AdamStep, Bfp, KernelError, Kernels, MatmulShape};

/// A tensor on the host or on the device.
#[derive(Clone, Debug)]
pub enum Tensor {
    /// Host memory.
    Host(Bfp),
    /// Device memory (wgpu).
    Dev(DevTensor),
}

impl Tensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Tensor::Host(b) => b.len(),
            Tensor::Dev(d) => d.len(),
        }
    }
    /// The device tensor, if it is one.
    pub fn as_dev(&self) -> Option<&DevTensor> {
        match self {
            Tensor::Dev(d) => Some(d),
            Tensor::Host(_) => None,
        }
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Row indices (token ids, targets): always on the host, also on the device when resident.
#[derive(Clone, Debug)]
pub struct Ids<'a> {
    host: &'a [u32],
    dev: Option<DevIds>,
}

impl Ids<'_> {
    /// The ids.
    pub fn host(&self) -> &[u32] {
        self.host
    }
}

/// A 64-bit kernel result (the loss sum), where the kernel left it: read with
/// [`Exec::value`].
#[derive(Clone, Debug)]
pub enum Scalar {
    /// On the host.
    Host(i64),
    /// On the device until its batch runs.
    Dev(DevScalar),
}

/// Layernorm's `R` per row, where the forward left it.
#[derive(Clone, Debug)]
pub enum Stats {
    /// Host memory.
    Host(Vec<u64>),
    /// Device memory.
    Dev(DevStats),
}

/// Runs kernels on [`Tensor`]s with one backend.
pub struct Exec<'k> {
    k: &'k dyn Kernels,
    dev: Option<Resident<'k>>,
    /// The checks of the deferred stretch running (see [`Exec::deferred`]).
    stretch: Stretch,
    in_stretch: AtomicBool,
    fallbacks: AtomicU64,
    replays: AtomicU64,
}

impl<'k> Exec<'k> {
    /// Keeps tensors on the backend's device when it has one.
    pub fn new(k: &'k dyn Kernels) -> Self {
        let dev = k
            .device_backend()
            .and_then(|b| b.downcast_ref::<GpuKernels>())
            .map(GpuKernels::resident_kernels);
        Exec {
            k,
            dev,
            stretch: Stretch::default(),
            in_stretch: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
            replays: AtomicU64::new(0),
        }
    }

    /// Keeps every tensor on the host, even with a device backend (each kernel call then
    /// uploads its inputs and reads its result back): the baseline the resident path is
    /// measured against.
    pub fn host_only(k: &'k dyn Kernels) -> Self {
        Exec {
            k,
            dev: None,
            stretch: Stretch::default(),
            in_stretch: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
            replays: AtomicU64::new(0),
        }
    }

    /// The resident kernels, recording into this executor's deferred stretch while one runs.
    fn resident(&self) -> Option<Resident<'_>> {
        let r = self.dev?;
        Some(if self.in_stretch.load(Ordering::SeqCst) {
            r.in_stretch(&self.stretch)
        } else {
            r
        })
    }

    /// Whether tensors stay on a device.
    pub fn is_resident(&self) -> bool {
        self.dev.is_some()
    }

    /// The backend.
    pub fn kernels(&self) -> &'k dyn Kernels {
        self.k
    }

    /// Kernels that ran on the host interface because their inputs could not stay resident.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Runs `f` with the kernels recorded before the host knows their inputs' exponents (a
    /// resident executor; elsewhere `f` runs as it is): shifts that depend on exponents are
    /// taken on the device, so nothing waits for the host until `f` reads a value. Then the
    /// range checks the host could not make in time are made; `Ok(Err(op))` when one failed
    /// (or `f` did): what `f` computed must be discarded and computed again without
    /// deferring, which checks every op before it runs (counted in [`Exec::replays`]).
    pub fn deferred<T, E>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<Result<T, &'static str>, KernelError> {
        let Some(r) = self.dev else {
            return Ok(f().map_err(|_| "a kernel"));
        };
        if self.in_stretch.load(Ordering::SeqCst) {
            // Nested: part of the running stretch, checked when it ends.
            return Ok(f().map_err(|_| "a deferred kernel"));
        }
        /// Ends the stretch however `f` returns (a panic included).
        struct End<'a>(&'a AtomicBool);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.in_stretch.store(true, Ordering::SeqCst);
        let out = {
            let _end = End(&self.in_stretch);
            f()
        };
        let failed = r.stretch_failure(&self.stretch)?;
        Ok(match (out, failed) {
            (Ok(v), None) => Ok(v),
            (Err(_), _) => Err("a deferred kernel"),
            (_, Some(op)) => Err(op),
        }
        .inspect_err(|_| {
            self.replays.fetch_add(1, Ordering::Relaxed);
        }))
    }

    /// Deferred stretches ([`Exec::deferred`]) whose checks failed.
    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// The shared exponent of `t`. A resident tensor's may wait for the batch of kernels that
    /// computes it, which this then submits.
    pub fn exp(&self, t: &Tensor) -> Result<i32, KernelError> {
        match (t, self.resident()) {
            (Tensor::Host(b), _) => Ok(b.exp),
            (Tensor::Dev(d), Some(r)) => r.exp(d),
            (Tensor::Dev(_), None) => Err(self.k.unsupported("exponent")),
        }
    }

    /// A host tensor placed where this executor keeps tensors.
    pub fn put(&self, x: Bfp) -> Result<Tensor, KernelError> {
        match self.resident() {
            Some(d) => Ok(Tensor::Dev(d.upload(&x)?)),
            None => Ok(Tensor::Host(x)),
        }
    }

    /// A copy of a host tensor placed where this executor keeps tensors (uploaded without an
    /// intermediate clone).
    pub fn put_copy(&self, x: &Bfp) -> Result<Tensor, KernelError> {
        match self.resident() {
            Some(d) => Ok(Tensor::Dev(d.upload(x)?)),
            None => Ok(Tensor::Host(x.clone())),
        }
    }

    /// Ids placed where this executor keeps tensors.
    pub fn ids<'a>(&self, host: &'a [u32]) -> Result<Ids<'a>, KernelError> {
        let dev = match self.resident() {
            Some(d) => Some(d.upload_ids(host)?),
            None => None,
        };
        Ok(Ids { host, dev })
    }

    /// The tensor on the host (borrowed when it is there).
    pub fn get<'t>(&self, t: &'t Tensor) -> Result<Cow<'t, Bfp>, KernelError> {
        match (t, self.resident()) {
            (Tensor::Host(b), _) => Ok(Cow::Borrowed(b)),
            (Tensor::Dev(d), Some(r)) => Ok(Cow::Owned(r.download(d)?)),
            (Tensor::Dev(_), None) => Err(self.k.unsupported("download")),
        }
    }

    /// The tensor moved to the host.
    pub fn take(&self, t: Tensor) -> Result<Bfp, KernelError> {
        match t {
            Tensor::Host(b) => Ok(b),
            dev => Ok(self.get(&dev)?.into_owned()),
        }
    }

    /// The tensors moved to the host (resident ones read back in one submission).
    pub fn take_all(&self, ts: Vec<Tensor>) -> Result<Vec<Bfp>, KernelError> {
        let devs: Vec<&DevTensor> = ts.iter().filter_map(Tensor::as_dev).collect();
        let mut down = match (self.resident(), devs.is_empty()) {
            (_, true) => Vec::new(),
            (Some(r), false) => r.download_all(&devs)?,
            (None, false) => return Err(self.k.unsupported("download")),
        }
        .into_iter();
        Ok(ts
            .into_iter()
            .map(|t| match t {
                Tensor::Host(b) => b,
                Tensor::Dev(_) => down.next().expect("one read-back per resident tensor"),
            })
            .collect())
    }

    fn stats_host<'s>(&self, s: &'s Stats) -> Result<Cow<'s, [u64]>, KernelError> {
        match (s, self.resident()) {
            (Stats::Host(v), _) => Ok(Cow::Borrowed(v)),
            (Stats::Dev(d), Some(r)) => Ok(Cow::Owned(r.download_stats(d)?)),
            (Stats::Dev(_), None) => Err(self.k.unsupported("download")),
        }
    }

    /// A host result placed like its inputs: on the device if any was there.
    fn place(&self, b: Bfp, resident: bool) -> Result<Tensor, KernelError> {
        if resident {
            self.put(b)
        } else {
            Ok(Tensor::Host(b))
        }
    }

    /// The resident path when every input is on the device and it takes them; else the host
    /// interface (counted as a fallback when resident inputs had to come down), its result
    /// placed like the inputs.
    fn run<const N: usize>(
        &self,
        ins: [&Tensor; N],
        dev: impl FnOnce(Resident<'_>, [&DevTensor; N]) -> Result<DevTensor, KernelError>,
        host: impl FnOnce([&Bfp; N]) -> Result<Bfp, KernelError>,
    ) -> Result<Tensor, KernelError> {
        self.run_with(ins, dev, host, Tensor::Dev, |b, resident| {
            self.place(b, resident)
        })
    }

    /// [`Self::run`] for any result: `from_dev` wraps the resident path's, `from_host` places
    /// the host interface's (`true`: the inputs were resident).
    fn run_with<const N: usize, D, H, T>(
        &self,
        ins: [&Tensor; N],
        dev: impl FnOnce(Resident<'_>, [&DevTensor; N]) -> Result<D, KernelError>,
        host: impl FnOnce([&Bfp; N]) -> Result<H, KernelError>,
        from_dev: impl FnOnce(D) -> T,
        from_host: impl FnOnce(H, bool) -> Result<T, KernelError>,
    ) -> Result<T, KernelError> {
        // The CPU path: straight to the host interface, nothing allocated.
        if let Some(b) = all_of(ins, |t| match t {
            Tensor::Host(b) => Some(b),
            Tensor::Dev(_) => None,
        }) {
            return from_host(host(b)?, false);
        }
        if let (Some(r), Some(d)) = (self.resident(), all_dev(ins)) {
            match dev(r, d) {
                Err(KernelError::Unsupported { .. }) => {}
                other => return other.map(from_dev),
            }
        }
        // Some input is resident: the host interface, counted, and the result back up.
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let cows: Vec<Cow<'_, Bfp>> = ins.iter().map(|t| self.get(t)).collect::<Result<_, _>>()?;
        let refs: [&Bfp; N] = std::array::from_fn(|i| cows[i].as_ref());
        from_host(host(refs)?, true)
    }

    /// [`Kernels::matmul`].
    pub fn matmul(&self, a: &Tensor, b: &Tensor, s: MatmulShape) -> Result<Tensor, KernelError> {
        self.run(
            [a, b],
            |r, [a, b]| r.matmul(a, b, s),
            |[a, b]| self.k.matmul(a, b, s),
        )
    }

    /// [`Kernels::add`].
    pub fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, KernelError> {
        self.run([a, b], |r, [a, b]| r.add(a, b), |[a, b]| self.k.add(a, b))
    }

    /// [`Kernels::requant`].
    pub fn requant(&self, x: &Tensor, mant_max: i32) -> Result<Tensor, KernelError> {
        self.run(
            [x],
            |r, [x]| r.requant(x, mant_max),
            |[x]| self.k.requant(x, mant_max),
        )
    }

    /// [`Kernels::rescale`].
    pub fn rescale(&self, x: &Tensor, exp: i32) -> Result<Tensor, KernelError> {
        self.run(
            [x],
            |r, [x]| r.rescale(x, exp),
            |[x]| self.k.rescale(x, exp),
        )
    }

    /// [`Kernels::mul_cols`].
    pub fn mul_cols(
        &self,
        x: &Tensor,
        w: &Tensor,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [x, w],
            |r, [x, w]| r.mul_cols(x, w, rows, cols),
            |[x, w]| self.k.mul_cols(x, w, rows, cols),
        )
    }

    /// [`Kernels::col_dot`].
    pub fn col_dot(
        &self,
        a: &Tensor,
        b: &Tensor,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [a, b],
            |r, [a, b]| r.col_dot(a, b, rows, cols),
            |[a, b]| self.k.col_dot(a, b, rows, cols),
        )
    }

    /// [`Kernels::scatter_add_rows`].
    pub fn scatter_add_rows(
        &self,
        src: &Tensor,
        idx: &Ids<'_>,
        out_rows: usize,
        cols: usize,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [src],
            |r, [s]| match &idx.dev {
                Some(ids) => r.scatter_add_rows(s, ids, out_rows, cols),
                None => Err(self.k.unsupported("scatter_add_rows")),
            },
            |[s]| self.k.scatter_add_rows(s, idx.host, out_rows, cols),
        )
    }

    /// [`Kernels::sum_squares`].
    pub fn sum_squares(&self, x: &Tensor) -> Result<u128, KernelError> {
        self.run_with(
            [x],
            |r, [d]| r.sum_squares(d),
            |[b]| self.k.sum_squares(b),
            |v| v,
            |v, _| Ok(v),
        )
    }

    /// [`Kernels::sum_squares`] of every tensor (resident ones in one submission).
    pub fn sum_squares_all(&self, xs: &[Tensor]) -> Vec<Result<u128, KernelError>> {
        if let Some(r) = self.resident() {
            let devs: Option<Vec<&DevTensor>> = xs.iter().map(Tensor::as_dev).collect();
            if let Some(devs) = devs {
                match r.sum_squares_many(&devs) {
                    Err(KernelError::Unsupported { .. }) => {}
                    Ok(v) => return v.into_iter().map(Ok).collect(),
                    Err(e) => return xs.iter().map(|_| Err(e.clone())).collect(),
                }
            }
        }
        // Tensors in parallel (most are too small to split well on their own).
        xs.par_iter().map(|x| self.sum_squares(x)).collect()
    }

    /// Global gradient-norm clipping of resident gradients on the device, with no round trip
    /// to the host: the gradients scaled by [`crate::model::optim::clip_coeff_q30`] (or as
    /// they are when it is `None`), and 1 if they were clipped, else 0. `None` when the
    /// gradients are not all resident or the shader cannot take them: the caller then
    /// computes the coefficient on the host.
    #[allow(clippy::type_complexity)] // the clipped tensors and the flag, or no resident path
    pub fn clip_resident(
        &self,
        grads: &[Tensor],
        clip_q30: i64,
    ) -> Option<Result<(Vec<Tensor>, Scalar), KernelError>> {
        let r = self.resident()?;
        let devs: Vec<&DevTensor> = grads.iter().map(Tensor::as_dev).collect::<Option<_>>()?;
        match r.clip(&devs, clip_q30) {
            Err(KernelError::Unsupported { .. }) => None,
            Ok((gs, flag)) => Some(Ok((
                gs.into_iter().map(Tensor::Dev).collect(),
                Scalar::Dev(flag),
            ))),
            Err(e) => Some(Err(e)),
        }
    }

    /// [`Kernels::layernorm`].
    pub fn layernorm(
        &self,
        x: &Tensor,
        rows: usize,
        cols: usize,
    ) -> Result<(Tensor, Stats), KernelError> {
        self.run_with(
            [x],
            |r, [d]| r.layernorm(d, rows, cols),
            |[b]| self.k.layernorm(b, rows, cols),
            |(y, s)| (Tensor::Dev(y), Stats::Dev(s)),
            |(y, s), resident| Ok((self.place(y, resident)?, Stats::Host(s))),
        )
    }

    /// [`Kernels::layernorm_bwd`]; `x` is the forward's input, whose exponent is the
    /// contract's `x_exp` (a resident one need not be known yet).
    #[allow(clippy::too_many_arguments)] // the contract's arguments
    pub fn layernorm_bwd(
        &self,
        dxhat: &Tensor,
        xhat: &Tensor,
        r: &Stats,
        x: &Tensor,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [dxhat, xhat, x],
            |dev, [d, xh, x]| match r {
                Stats::Dev(s) => dev.layernorm_bwd(d, xh, s, x, rows, cols),
                Stats::Host(_) => Err(self.k.unsupported("layernorm_bwd")),
            },
            |[d, xh, x]| {
                self.k
                    .layernorm_bwd(d, xh, &self.stats_host(r)?, x.exp, rows, cols)
            },
        )
    }

    /// Each of `parts` rescaled to their largest exponent ([`Kernels::rescale`]): on the
    /// device in a deferred stretch, else each to the largest exponent known to the host.
    pub fn rescale_to_max(&self, parts: &[&Tensor]) -> Result<Vec<Tensor>, KernelError> {
        if let (Some(r), Some(devs)) = (
            self.resident(),
            parts
                .iter()
                .map(|t| t.as_dev())
                .collect::<Option<Vec<&DevTensor>>>(),
        ) {
            match r.rescale_to_max(&devs) {
                Err(KernelError::Unsupported { .. }) => {}
                other => return Ok(other?.into_iter().map(Tensor::Dev).collect()),
            }
        }
        let e = parts
            .iter()
            .map(|p| self.exp(p))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        parts.iter().map(|p| self.rescale(p, e)).collect()
    }

    /// [`Kernels::softmax`].
    pub fn softmax(
        &self,
        x: &Tensor,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [x],
            |r, [x]| r.softmax(x, rows, cols, causal, scale_q16),
            |[x]| self.k.softmax(x, rows, cols, causal, scale_q16),
        )
    }

    /// [`Kernels::softmax_bwd`].
    pub fn softmax_bwd(
        &self,
        p: &Tensor,
        dp: &Tensor,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [p, dp],
            |r, [p, dp]| r.softmax_bwd(p, dp, rows, cols, scale_q16),
            |[p, dp]| self.k.softmax_bwd(p, dp, rows, cols, scale_q16),
        )
    }

    /// The value of a scalar a kernel returned (waiting for the device if it is still there).
    pub fn value(&self, v: &Scalar) -> Result<i64, KernelError> {
        match (v, self.resident()) {
            (Scalar::Host(x), _) => Ok(*x),
            (Scalar::Dev(d), Some(r)) => r.value(d),
            (Scalar::Dev(_), None) => Err(self.k.unsupported("value")),
        }
    }

    /// [`Kernels::cross_entropy`]; the loss sum may stay on the device until
    /// [`Exec::value`] asks for it.
    pub fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &Ids<'_>,
        rows: usize,
        cols: usize,
    ) -> Result<(Scalar, Tensor), KernelError> {
        self.run_with(
            [logits],
            |r, [d]| match &targets.dev {
                Some(t) => r.cross_entropy(d, t, rows, cols),
                None => Err(self.k.unsupported("cross_entropy")),
            },
            |[b]| self.k.cross_entropy(b, targets.host, rows, cols),
            |(loss, g)| (Scalar::Dev(loss), Tensor::Dev(g)),
            |(loss, g), resident| Ok((Scalar::Host(loss), self.place(g, resident)?)),
        )
    }

    /// [`Kernels::adamw`].
    pub fn adamw(
        &self,
        p: &Tensor,
        g: &Tensor,
        m: &Tensor,
        r: &Tensor,
        st: &AdamStep,
    ) -> Result<(Tensor, Tensor, Tensor), KernelError> {
        self.run_with(
            [p, g, m, r],
            |dev, [p, g, m, r]| dev.adamw(p, g, m, r, st),
            |[p, g, m, r]| self.k.adamw(p, g, m, r, st),
            |(a, b, c)| (Tensor::Dev(a), Tensor::Dev(b), Tensor::Dev(c)),
            |(a, b, c), resident| {
                Ok((
                    self.place(a, resident)?,
                    self.place(b, resident)?,
                    self.place(c, resident)?,
                ))
            },
        )
    }

    /// [`Kernels::adamw`] of every tensor `i` with scalars `steps[i]`: resident tensors
    /// together (one submission for all the moments' exponents), a tensor the device path
    /// refuses on the host interface. One result per tensor.
    #[allow(clippy::type_complexity)] // one (p, m, r) triple per tensor
    pub fn adamw_all(
        &self,
        p: &[Tensor],
        g: &[&Tensor],
        m: &[Tensor],
        r: &[Tensor],
        steps: &[&AdamStep],
    ) -> Vec<Result<(Tensor, Tensor, Tensor), KernelError>> {
        let n = p.len();
        if let Some(res) = self.resident() {
            let items: Option<Vec<AdamwItem<'_>>> = (0..n)
                .map(|i| {
                    Some(AdamwItem {
                        p: p[i].as_dev()?,
                        g: g[i].as_dev()?,
                        m: m[i].as_dev()?,
                        r: r[i].as_dev()?,
                        step: steps[i],
                    })
                })
                .collect();
            if let Some(items) = items {
                return res
                    .adamw_many(&items)
                    .into_iter()
                    .enumerate()
                    .map(|(i, out)| match out {
                        Err(KernelError::Unsupported { .. }) => {
                            self.adamw(&p[i], g[i], &m[i], &r[i], steps[i])
                        }
                        other => {
                            other.map(|(a, b, c)| (Tensor::Dev(a), Tensor::Dev(b), Tensor::Dev(c)))
                        }
                    })
                    .collect();
            }
        }
        // Tensors in parallel (most are too small for the kernels to split well on their own).
        (0..n)
            .into_par_iter()
            .map(|i| self.adamw(&p[i], g[i], &m[i], &r[i], steps[i]))
            .collect()
    }

    /// [`Kernels::gelu`].
    pub fn gelu(&self, x: &Tensor) -> Result<Tensor, KernelError> {
        self.run([x], |r, [x]| r.gelu(x), |[x]| self.k.gelu(x))
    }

    /// [`Kernels::gelu_bwd`].
    pub fn gelu_bwd(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor, KernelError> {
        self.run(
            [x, dy],
            |r, [x, dy]| r.gelu_bwd(x, dy),
            |[x, dy]| self.k.gelu_bwd(x, dy),
        )
    }

    /// [`Kernels::scale`].
    pub fn scale(&self, x: &Tensor, c_q30: i64) -> Result<Tensor, KernelError> {
        self.run(
            [x],
            |r, [x]| r.scale(x, c_q30),
            |[x]| self.k.scale(x, c_q30),
        )
    }

    /// Rows `ids[r]` of the `· × cols` tensor `src`.
    pub fn gather_rows(
        &self,
        src: &Tensor,
        cols: usize,
        ids: &Ids<'_>,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [src],
            |r, [s]| match &ids.dev {
                Some(d) => r.gather_rows(s, cols, d),
                None => Err(self.k.unsupported("gather_rows")),
            },
            |[s]| {
                Ok(layout::gather_rows(
                    s,
                    cols,
                    ids.host.iter().map(|&i| i as usize),
                ))
            },
        )
    }

    /// Rows `r % t`, `r < out_rows`, of the `· × cols` tensor `src`.
    pub fn gather_positions(
        &self,
        src: &Tensor,
        cols: usize,
        t: usize,
        out_rows: usize,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [src],
            |r, [s]| r.gather_positions(s, cols, t, out_rows),
            |[s]| Ok(layout::gather_rows(s, cols, (0..out_rows).map(|r| r % t))),
        )
    }

    /// Part `part` (width `h·hs`) of each `[b·t, rowlen]` row → `[b·h, t, hs]`.
    pub fn split_heads(
        &self,
        x: &Tensor,
        shape: (usize, usize, usize, usize),
        rowlen: usize,
        part: usize,
    ) -> Result<Tensor, KernelError> {
        self.run(
            [x],
            |r, [x]| r.split_heads(x, shape, rowlen, part),
            |[x]| Ok(layout::split_heads(x, shape, rowlen, part)),
        )
    }

    /// `[b·h, t, hs]` tensors of one exponent → the parts of `[b·t, parts·h·hs]` rows.
    pub fn merge_heads(
        &self,
        parts: &[&Tensor],
        shape: (usize, usize, usize, usize),
    ) -> Result<Tensor, KernelError> {
        let resident = parts.iter().any(|t| t.as_dev().is_some());
        if let Some(r) = self.resident() {
            let devs: Option<Vec<&DevTensor>> = parts.iter().map(|t| t.as_dev()).collect();
            if let Some(devs) = devs {
                match r.merge_heads(&devs, shape) {
                    Err(KernelError::Unsupported { .. }) => {}
                    other => return other.map(Tensor::Dev),
                }
            }
        }
        if resident {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        let cows: Vec<Cow<'_, Bfp>> = parts
            .iter()
            .map(|t| self.get(t))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Bfp> = cows.iter().map(|c| c.as_ref()).collect();
        self.place(layout::merge_heads(&refs, shape), resident)
    }
}

impl std::fmt::Debug for Exec<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec")
            .field("backend", &self.k.name())
            .field("resident", &self.dev.is_some())
            .field("fallbacks", &self.fallbacks())
            .finish()
    }
}

/// `f` of every input, if it gives one for each.
fn all_of<'t, const N: usize, T>(
    ins: [&'t Tensor; N],
    f: impl Fn(&'t Tensor) -> Option<T>,
) -> Option<[T; N]> {
    let each = ins.map(f);
    if each.iter().all(Option::is_some) {
        Some(each.map(|x| x.expect("every input was checked above")))
    } else {
        None
    }
}

fn all_dev<const N: usize>(ins: [&Tensor; N]) -> Option<[&DevTensor; N]> {
    all_of(ins, Tensor::as_dev)
}

/// The model's data movement on the host (the resident path runs `layout.wgsl`).
pub mod layout {
    use crate::numerics::kernels::Bfp;

    /// Rows `idx` of the `· × cols` tensor `src`.
    pub fn gather_rows(src: &Bfp, cols: usize, idx: impl Iterator<Item = usize>) -> Bfp {
        let mut mant = Vec::new();
        for i in idx {
            mant.extend_from_slice(&src.mant[i * cols..(i + 1) * cols]);
        }
        Bfp::new(mant, src.exp)
    }

    /// Part `part` (width `h·hs`) of each `[b·t, rowlen]` row → `[b·h, t, hs]`.
    pub fn split_heads(
        x: &Bfp,
        (b, t, h, hs): (usize, usize, usize, usize),
        rowlen: usize,
        part: usize,
    ) -> Bfp {
        let c = h * hs;
        let mut out = vec![0; b * t * c];
        for bi in 0..b {
            for ti in 0..t {
                let row = &x.mant[(bi * t + ti) * rowlen..(bi * t + ti + 1) * rowlen];
                for hi in 0..h {
                    let dst = ((bi * h + hi) * t + ti) * hs;
                    let src = part * c + hi * hs;
                    out[dst..dst + hs].copy_from_slice(&row[src..src + hs]);
                }
            }
        }
        Bfp::new(out, x.exp)
    }

    /// `[b·h, t, hs]` tensors of one exponent → the parts of `[b·t, parts·h·hs]` rows.
    pub fn merge_heads(parts: &[&Bfp], (b, t, h, hs): (usize, usize, usize, usize)) -> Bfp {
        let c = h * hs;
        let rowlen = parts.len() * c;
        let mut out = vec![0; b * t * rowlen];
        for (pi, part) in parts.iter().enumerate() {
            for bi in 0..b {
                for hi in 0..h {
                    for ti in 0..t {
                        let src = ((bi * h + hi) * t + ti) * hs;
                        let dst = (bi * t + ti) * rowlen + pi * c + hi * hs;
                        out[dst..dst + hs].copy_from_slice(&part.mant[src..src + hs]);
                    }
                }
            }
        }
        Bfp::new(out, parts.first().map_or(0, |p| p.exp))
    }
}
