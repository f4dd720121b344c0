//! Host side of `cross_entropy.wgsl`: gradient as wide values (requantized by the shared
//! tail) and the per-row losses, added on the device (integers: any order gives the same sum).

use std::sync::{Arc, OnceLock};

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, release, submit, u32_of, Dispatch, Src, WideOut, WideResult};
use super::exps::{self, Patch};
use super::shaders::{CROSS_ENTROPY, OPS};

/// The loss sum in Q16 nats: read back with the gradient, or (kept on the device) its two
/// 32-bit halves, read when the batch runs.
pub(crate) enum Loss {
    Now(i64),
    Later([Arc<OnceLock<u32>>; 2]),
}

/// `(loss sum, gradient mantissas, shift)`; gradient `exp = −40 + shift`.
/// The caller checked lengths, bounds and targets; `rows ≥ 1`, `cols ≥ 1`.
#[allow(clippy::too_many_arguments)] // the kernel's operands and scalars, plus `keep` and `patch`
pub(crate) fn cross_entropy(
    gpu: &Gpu,
    logits: Src<'_>,
    targets: Src<'_, u32>,
    rows: usize,
    cols: usize,
    s: i32,
    keep: bool,
    patch: Option<&Patch<'_>>,
) -> Result<(Loss, WideResult), GpuError> {
    let count = rows * cols;
    let (groups, gx) = grid_1d(gpu, "cross_entropy", rows)?;
    let p: [u32; 8] = [
        u32_of("rows", rows)?,
        u32_of("columns", cols)?,
        15,
        gx,
        s as u32,
        0,
        0,
        0,
    ];
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, count, 15, keep)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    if let Some(patch) = patch {
        exps::pre(gpu, patch, &uniform)?;
    }
    let bl = logits.bind(gpu)?;
    let bt = targets.bind(gpu)?;
    let loss_bytes = rows as u64 * 8;
    let bloss = gpu.buffer(Pool::Storage, loss_bytes)?;
    // The row losses are added on the device (`sum_partials` of ops.wgsl: 64-bit two's
    // complement, the host's i64 addition): 8 bytes come back.
    let p_sum: [u32; 8] = [u32_of("rows", rows)?, 0, 0, 0, 0, 0, 0, 1];
    let u_sum = gpu.uniform(bytemuck::cast_slice(&p_sum))?;
    let total = gpu.buffer(Pool::Storage, 8)?;
    // Kept on the device, the loss waits for the batch like the keys do.
    let mut reads = tail.reads(false);
    if !keep {
        reads.push((&total, 8));
    }
    let res = submit(
        gpu,
        "cross_entropy",
        &[&tail.key],
        &[
            Dispatch {
                shader: &CROSS_ENTROPY,
                entry: "cross_entropy_rows",
                bindings: vec![
                    (0, &uniform, 32),
                    (1, bl.buf(), logits.bytes()),
                    (3, &tail.sums, count as u64 * 8),
                    (4, &tail.key, 4),
                    (6, bt.buf(), targets.bytes()),
                    (11, &bloss, loss_bytes),
                ],
                groups,
            },
            Dispatch {
                shader: &OPS,
                entry: "sum_partials",
                bindings: vec![(0, &u_sum, 32), (3, &total, 8), (8, &bloss, loss_bytes)],
                groups: [1, 1, 1],
            },
            tail.dispatch(),
        ],
        &reads,
    );
    gpu.recycle(Pool::Uniform, [uniform, u_sum]);
    release(gpu, [bl, bt]);
    let (res, loss) = match (res, keep) {
        (Ok(v), true) => (
            Ok(v),
            Loss::Later([gpu.defer_word(&total, 0), gpu.defer_word(&total, 4)]),
        ),
        (Ok(mut v), false) => {
            let l: i64 = bytemuck::pod_read_unaligned(&v.pop().unwrap_or_default()[..8]);
            (Ok(v), Loss::Now(l))
        }
        (Err(e), _) => (Err(e), Loss::Now(0)),
    };
    gpu.recycle(Pool::Storage, [bloss, total]);
    Ok((loss, tail.finish(gpu, res)?))
}
