//! Host side of `cross_entropy.wgsl`: gradient as wide values (requantized by the shared
//! tail) and the per-row losses, added here (integers: any order gives the same sum).

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, submit, u32_of, Dispatch, WideOut};
use super::shaders::CROSS_ENTROPY;

/// `(loss sum in Q16 nats, gradient mantissas, shift)`; gradient `exp = −40 + shift`.
/// The caller checked lengths, bounds and targets; `rows ≥ 1`, `cols ≥ 1`.
pub(crate) fn cross_entropy(
    gpu: &Gpu,
    logits: &[i32],
    targets: &[u32],
    rows: usize,
    cols: usize,
    s: i32,
) -> Result<(i64, Vec<i32>, u32), GpuError> {
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
    let tail = WideOut::new(gpu, count, 15)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let bl = gpu.upload(bytemuck::cast_slice(logits))?;
    let bt = gpu.upload(bytemuck::cast_slice(targets))?;
    let loss_bytes = rows as u64 * 8;
    let bloss = gpu.buffer(Pool::Storage, loss_bytes)?;
    let [out_read, key_read] = tail.reads();
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
                    (1, &bl, logits.len() as u64 * 4),
                    (3, &tail.sums, count as u64 * 8),
                    (4, &tail.key, 4),
                    (6, &bt, targets.len() as u64 * 4),
                    (11, &bloss, loss_bytes),
                ],
                groups,
            },
            tail.dispatch(),
        ],
        &[out_read, key_read, (&bloss, loss_bytes)],
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    gpu.recycle(Pool::Storage, [bl, bt, bloss]);
    let (res, losses) = match res {
        Ok(mut v) => {
            let l: Vec<i64> = bytemuck::pod_collect_to_vec(&v.pop().unwrap_or_default());
            (Ok(v), l)
        }
        Err(e) => (Err(e), Vec::new()),
    };
    let (mant, shift) = tail.finish(gpu, res)?;
    Ok((losses.iter().sum(), mant, shift))
}
