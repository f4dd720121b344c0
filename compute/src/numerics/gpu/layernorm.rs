//! Host side of `layernorm.wgsl`: normalized rows as wide values (requantized to B16 by the
//! shared tail) and `R` per row, in one submission.

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, release, submit, u32_of, Dispatch, Src, WideOut, WideResult};
use super::exps::{self, Patch};
use super::shaders::LAYERNORM;

/// Widest row the GPU layernorm takes: keeps `|d| · 2^40 < 2^64` and `S · 2^32 < 2^96` in the
/// emulated arithmetic (wider rows are left to the CPU reference).
pub(crate) const LAYERNORM_COLS_MAX: usize = 256;

/// `R` per row: read back, or left on the device with the result (`keep`).
pub(crate) enum Stats {
    Host(Vec<u64>),
    Dev(wgpu::Buffer),
}

/// `(result, R per row)`; `exp = −24 + shift`. `1 ≤ cols ≤ LAYERNORM_COLS_MAX`, `rows ≥ 1`.
pub(crate) fn layernorm(
    gpu: &Gpu,
    x: Src<'_>,
    rows: usize,
    cols: usize,
    keep: bool,
) -> Result<(WideResult, Stats), GpuError> {
    let count = rows * cols;
    if count == 0 && !keep {
        return Ok((WideResult::empty(gpu, false)?, Stats::Host(vec![0; rows])));
    }
    let (groups, gx) = grid_1d(gpu, "layernorm", rows)?;
    let p: [u32; 8] = [
        u32_of("rows", rows)?,
        u32_of("columns", cols)?,
        15,
        gx,
        0,
        0,
        0,
        0,
    ];
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, count, 15, keep)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let bx = x.bind(gpu)?;
    let r_bytes = rows as u64 * 8;
    let br = gpu.buffer(Pool::Storage, r_bytes)?;
    let mut reads = tail.reads(false);
    if !keep {
        reads.push((&br, r_bytes));
    }
    let res = submit(
        gpu,
        "layernorm",
        &[&tail.key],
        &[
            Dispatch {
                shader: &LAYERNORM,
                entry: "layernorm_rows",
                bindings: vec![
                    (0, &uniform, 32),
                    (1, bx.buf(), x.bytes()),
                    (3, &tail.sums, count as u64 * 8),
                    (4, &tail.key, 4),
                    (9, &br, r_bytes),
                ],
                groups,
            },
            tail.dispatch(),
        ],
        &reads,
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    release(gpu, [bx]);
    if keep {
        return match tail.finish(gpu, res) {
            Ok(out) => Ok((out, Stats::Dev(br))),
            Err(e) => {
                gpu.recycle(Pool::Storage, [br]);
                Err(e)
            }
        };
    }
    gpu.recycle(Pool::Storage, [br]);
    let (res, r) = match res {
        Ok(mut v) => {
            let r: Vec<u64> = bytemuck::pod_collect_to_vec(&v.pop().unwrap_or_default());
            (Ok(v), r)
        }
        Err(e) => (Err(e), Vec::new()),
    };
    Ok((tail.finish(gpu, res)?, Stats::Host(r)))
}

/// Largest `−2 · xhat.exp` the GPU backward takes (keeps `|n| < 2^55`).
pub(crate) const LAYERNORM_BWD_SHIFT_MAX: u32 = 30;
/// Range of nonzero `R` the GPU backward takes: from below, the quotient stays under 2^63
/// (every `R` the forward produces is at least 2^16); from above, the remainder of the
/// bit-serial division stays in 63 bits.
pub(crate) const LAYERNORM_BWD_R_RANGE: std::ops::Range<u64> = (1 << 16)..(1 << 62);

/// `(mantissas, shift)` of the backward; the caller checked lengths, bounds and the ranges
/// above (`1 ≤ cols ≤ LAYERNORM_COLS_MAX`).
#[allow(clippy::too_many_arguments)] // the kernel's operands and scalars, plus `keep`
pub(crate) fn layernorm_bwd(
    gpu: &Gpu,
    g: Src<'_>,
    h: Src<'_>,
    r: Src<'_, u64>,
    sh: u32,
    rows: usize,
    cols: usize,
    keep: bool,
    patch: Option<&Patch<'_>>,
) -> Result<WideResult, GpuError> {
    let count = rows * cols;
    if count == 0 {
        return WideResult::empty(gpu, keep);
    }
    let (groups, gx) = grid_1d(gpu, "layernorm_bwd", rows)?;
    let p: [u32; 8] = [
        u32_of("rows", rows)?,
        u32_of("columns", cols)?,
        15,
        gx,
        sh,
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
    let bg = g.bind(gpu)?;
    let bh = h.bind(gpu)?;
    let br = r.bind(gpu)?;
    let res = submit(
        gpu,
        "layernorm_bwd",
        &[&tail.key],
        &[
            Dispatch {
                shader: &LAYERNORM,
                entry: "layernorm_bwd_rows",
                bindings: vec![
                    (0, &uniform, 32),
                    (1, bg.buf(), g.bytes()),
                    (2, bh.buf(), h.bytes()),
                    (3, &tail.sums, count as u64 * 8),
                    (4, &tail.key, 4),
                    (10, br.buf(), r.bytes()),
                ],
                groups,
            },
            tail.dispatch(),
        ],
        &tail.reads(false),
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    release(gpu, [bg, bh, br]);
    tail.finish(gpu, res)
}
