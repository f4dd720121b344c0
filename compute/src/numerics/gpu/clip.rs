//! Global gradient-norm clipping on the device (`clip.wgsl`): the coefficient of
//! [`crate::model::optim::clip_coeff_q30`], computed from every gradient's sum of squares
//! and device exponent, then every gradient scaled by it, all in the open batch. A training
//! step then needs no round trip between its backward pass and its AdamW update.
//!
//! Clipping is data-dependent: it applies only when the norm exceeds the clip. The scale op
//! takes its constant from the coefficient buffer (`exp_pre`, [`PatchKind::Clip`]): `c` when
//! clipping, else 1 with the exponent offset 0 instead of −30 ([`Formula::clip`]), which
//! returns the gradient's own mantissas and exponent (`|m| < 2^15` needs no shift). The host
//! learns whether it clipped with the batch's keys (the word `applied`).

use std::sync::{Arc, OnceLock};

use super::device::{Gpu, GpuError, Pool};
use super::exec::{submit, u32_of, Dispatch, Src};
use super::exps::{Formula, Key, Patch, PatchKind, EXP_BYTES};
use super::resident::DevTensor;
use super::shaders::CLIP;
use super::{kernel_error, ops, Arg, GpuKernels};
use crate::numerics::kernels::{KernelError, Kernels};

/// Most gradients one clip takes: bounds the shader's single-invocation loops and its
/// buffers (the model has 2 + 6 · layers tensors; 256 layers is the model limit).
pub(crate) const CLIP_TENSORS_MAX: usize = 4096;
/// Largest clip (Q30) the shader takes: `HyperQ`'s clip is at most `10^6 · 2^30 < 2^50`, and
/// `clip · 2^60` must stay below 2^127.
pub(crate) const CLIP_Q30_MAX: i64 = (1 << 51) - 1;
/// Bytes of the coefficient buffer: `[applied, c, 0, 0]` as `u32`.
const COEFF_BYTES: u64 = 16;

/// The coefficient on the device and the host's cell for its word `applied`.
struct Coeff {
    buf: wgpu::Buffer,
    applied: Arc<OnceLock<u32>>,
}

/// Records the sums of squares of `xs`, the gather of their exponent buffers `exps` and
/// `clip_coeff` into the open batch.
fn coeff(
    gpu: &Gpu,
    xs: &[Src<'_>],
    exps: &[&wgpu::Buffer],
    clip_q30: i64,
) -> Result<Coeff, GpuError> {
    let n = xs.len() as u64;
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let sums = gpu.buffer(Pool::Storage, (n * 8).max(8))?;
    let gexps = gpu.buffer(Pool::Storage, (n * EXP_BYTES).max(EXP_BYTES))?;
    let out = gpu.buffer(Pool::Storage, COEFF_BYTES)?;
    let p: [u32; 4] = [
        u32_of("gradients", xs.len())?,
        clip_q30 as u32,
        (clip_q30 >> 32) as u32,
        0,
    ];
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let res = (|| {
        ops::record_sum_squares(gpu, xs, &sums)?;
        gpu.record("clip", |enc| {
            for (i, e) in exps.iter().enumerate() {
                enc.copy_buffer_to_buffer(e, 0, &gexps, i as u64 * EXP_BYTES, EXP_BYTES);
            }
        })?;
        submit(
            gpu,
            "clip",
            &[],
            &[Dispatch {
                shader: &CLIP,
                entry: "clip_coeff",
                bindings: vec![
                    (0, &uniform, 16),
                    (1, &sums, (n * 8).max(8)),
                    (2, &gexps, (n * EXP_BYTES).max(EXP_BYTES)),
                    (3, &out, COEFF_BYTES),
                ],
                groups: [1, 1, 1],
            }],
            &[],
        )
    })();
    gpu.recycle(Pool::Uniform, [uniform]);
    gpu.recycle(Pool::Storage, [sums, gexps]);
    match res {
        Ok(_) => {
            let applied = gpu.defer_word(&out, 0);
            Ok(Coeff { buf: out, applied })
        }
        Err(e) => {
            gpu.recycle(Pool::Storage, [out]);
            Err(e)
        }
    }
}

impl GpuKernels {
    /// Clips the resident gradients `gs` to the global norm `clip_q30`: each result is
    /// `scale(g, c)` when the norm exceeds the clip, else `g`'s own mantissas and exponent.
    /// Also returns the cell of the word `applied` (1 when clipped), filled when the batch
    /// runs. The caller checks the operands (`Resident::clip`).
    pub(crate) fn clip_on(
        &self,
        gs: &[Arg<'_>],
        clip_q30: i64,
    ) -> Result<(Vec<DevTensor>, Arc<OnceLock<u32>>), KernelError> {
        const OP: &str = "clip";
        if gs.len() > CLIP_TENSORS_MAX || !(0..=CLIP_Q30_MAX).contains(&clip_q30) {
            return Err(self.unsupported(OP));
        }
        let srcs: Vec<Src<'_>> = gs.iter().map(|a| a.src).collect();
        let exps = self.bufs(&gs.iter().collect::<Vec<_>>());
        let c = coeff(&self.gpu, &srcs, &exps, clip_q30).map_err(|e| kernel_error(OP, e))?;
        let out = gs
            .iter()
            .map(|x| {
                let patch = Patch {
                    kind: PatchKind::Clip,
                    c: 0,
                    ins: vec![&c.buf],
                    offset: None,
                };
                let w = ops::scale_op(x.src, 0, true, Some(patch));
                let r = ops::wide(&self.gpu, w).map_err(|e| kernel_error(OP, e))?;
                let key2 = Key {
                    cell: Arc::clone(&c.applied),
                    buf: Some(c.buf.clone()),
                };
                let f = Formula::clip(x.exp_term());
                self.res_keys(OP, r, x.len(), f, &[x], Some(key2))?.dev()
            })
            .collect::<Result<Vec<_>, _>>();
        self.gpu.recycle(Pool::Storage, [c.buf]);
        Ok((out?, c.applied))
    }
}
