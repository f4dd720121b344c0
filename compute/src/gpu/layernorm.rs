//! Host side of `layernorm.wgsl`: normalized rows as wide values (requantized to B16 by the
//! shared tail) and `R` per row, in one submission.

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, submit, u32_of, Dispatch, WideOut};
use super::shaders::LAYERNORM;

/// Widest row the GPU layernorm takes: keeps `|d| · 2^40 < 2^64` and `S · 2^32 < 2^96` in the
/// emulated arithmetic (wider rows are left to the CPU reference).
pub(crate) const LAYERNORM_COLS_MAX: usize = 256;

/// `(mantissas, shift, R per row)`; `exp = −24 + shift`. `1 ≤ cols ≤ LAYERNORM_COLS_MAX`.
pub(crate) fn layernorm(
    gpu: &Gpu,
    x: &[i32],
    rows: usize,
    cols: usize,
) -> Result<(Vec<i32>, u32, Vec<u64>), GpuError> {
    let count = rows * cols;
    if count == 0 {
        return Ok((Vec::new(), 0, vec![0; rows]));
    }
    let (groups, gx) = grid_1d(gpu, "layernorm", rows)?;
    let p: [u32; 4] = [u32_of("rows", rows)?, u32_of("columns", cols)?, 15, gx];
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, count, 15)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let bx = gpu.upload(bytemuck::cast_slice(x))?;
    let r_bytes = rows as u64 * 8;
    let br = gpu.buffer(Pool::Storage, r_bytes)?;
    let [out_read, key_read] = tail.reads();
    let res = submit(
        gpu,
        "layernorm",
        &[&tail.key],
        &[
            Dispatch {
                shader: &LAYERNORM,
                entry: "layernorm_rows",
                bindings: vec![
                    (0, &uniform, 16),
                    (1, &bx, x.len() as u64 * 4),
                    (3, &tail.sums, count as u64 * 8),
                    (4, &tail.key, 4),
                    (9, &br, r_bytes),
                ],
                groups,
            },
            tail.dispatch(),
        ],
        &[out_read, key_read, (&br, r_bytes)],
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    gpu.recycle(Pool::Storage, [bx, br]);
    let (res, r) = match res {
        Ok(mut v) => {
            let r: Vec<u64> = bytemuck::pod_collect_to_vec(&v.pop().unwrap_or_default());
            (Ok(v), r)
        }
        Err(e) => (Err(e), Vec::new()),
    };
    let (mant, shift) = tail.finish(gpu, res)?;
    Ok((mant, shift, r))
}
