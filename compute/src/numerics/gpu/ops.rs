//! Host side of `ops.wgsl`: elementwise and reduction kernels, each one submission.
//! Argument checks are done by the caller (`GpuKernels`), identically to `CpuKernels`.

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, submit, u32_of, Dispatch, WideOut};
use super::shaders::{Shader, OPS};

/// Largest `|c_q30|` the `scale` kernel takes: `|m · c| < 2^15 · 2^47 = 2^62` stays inside the
/// emulated 64-bit product.
pub(crate) const SCALE_C_ABS_MAX: u64 = (1 << 47) - 1;
/// Most source rows of `scatter_add_rows`: the i32 atomic sums stay below
/// `65535 · 32767 < 2^31`.
pub(crate) const SCATTER_ROWS_MAX: usize = 65_535;

/// Inputs of one wide op.
pub(crate) struct WideOp<'a> {
    pub(crate) shader: &'static Shader,
    pub(crate) entry: &'static str,
    pub(crate) in0: &'a [i32],
    pub(crate) in1: &'a [i32],
    pub(crate) count: usize,
    pub(crate) cols: usize,
    pub(crate) rows: usize,
    pub(crate) c: i64,
    pub(crate) k: u32,
    pub(crate) bits: u32,
}

fn params(count: u32, cols: u32, rows: u32, bits: u32, c: i64, k: u32, gx: u32) -> [u32; 8] {
    let c = c as u64;
    [count, cols, rows, bits, c as u32, (c >> 32) as u32, k, gx]
}

/// An entry of `ops.wgsl` that writes `count` wide values, then requantization to
/// `2^bits − 1`. The producer grid covers `max(count, cols)` items.
pub(crate) fn wide(gpu: &Gpu, op: WideOp<'_>) -> Result<(Vec<i32>, u32), GpuError> {
    if op.count == 0 {
        return Ok((Vec::new(), 0));
    }
    // One invocation per output element, except the row kernels (one per row).
    let items = if op.entry == "softmax_rows" {
        op.rows
    } else {
        op.count
    };
    let (groups, gx) = grid_1d(gpu, op.entry, items)?;
    let p = params(
        u32_of("elements", op.count)?,
        u32_of("columns", op.cols)?,
        u32_of("rows", op.rows)?,
        op.bits,
        op.c,
        op.k,
        gx,
    );
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, op.count, op.bits)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let b0 = gpu.upload(bytemuck::cast_slice(op.in0))?;
    // Entries that read `in1` need it bound even when it is empty (then nothing is read).
    let b1 = if matches!(op.entry, "add" | "mul_cols" | "col_dot" | "gelu_bwd") {
        Some(gpu.upload(bytemuck::cast_slice(op.in1))?)
    } else {
        None
    };
    let mut bindings = vec![
        (0, &uniform, 32),
        (1, &b0, op.in0.len() as u64 * 4),
        (3, &tail.sums, op.count as u64 * 8),
        (4, &tail.key, 4),
    ];
    if let Some(b1) = &b1 {
        bindings.push((2, b1, op.in1.len() as u64 * 4));
    }
    let res = submit(
        gpu,
        op.entry,
        &[&tail.key],
        &[
            Dispatch {
                shader: op.shader,
                entry: op.entry,
                bindings,
                groups,
            },
            tail.dispatch(),
        ],
        &tail.reads(),
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    gpu.recycle(Pool::Storage, [b0].into_iter().chain(b1));
    tail.finish(gpu, res)
}

/// `rhe(x, k)` per element (`k ≤ 63`).
pub(crate) fn rescale(gpu: &Gpu, x: &[i32], k: u32) -> Result<Vec<i32>, GpuError> {
    if x.is_empty() {
        return Ok(Vec::new());
    }
    let (groups, gx) = grid_1d(gpu, "rescale", x.len())?;
    let p = params(u32_of("elements", x.len())?, 0, 0, 0, 0, k.min(63), gx);
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let b0 = gpu.upload(bytemuck::cast_slice(x))?;
    let bytes = x.len() as u64 * 4;
    let out = gpu.buffer(Pool::Storage, bytes)?;
    let res = submit(
        gpu,
        "rescale",
        &[],
        &[Dispatch {
            shader: &OPS,
            entry: "rescale",
            bindings: vec![(0, &uniform, 32), (1, &b0, bytes), (7, &out, bytes)],
            groups,
        }],
        &[(&out, bytes)],
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    gpu.recycle(Pool::Storage, [b0, out]);
    Ok(bytemuck::pod_collect_to_vec(&res?[0]))
}

/// `s[idx[r], c] += src[r, c]`, then requantization to B16. `idx` is checked by the caller.
pub(crate) fn scatter_add_rows(
    gpu: &Gpu,
    src: &[i32],
    idx: &[u32],
    out_rows: usize,
    cols: usize,
) -> Result<(Vec<i32>, u32), GpuError> {
    if idx.len() > SCATTER_ROWS_MAX {
        return Err(GpuError::Limit {
            what: "scatter_add_rows source rows on wgpu",
            requested: idx.len() as u64,
            max: SCATTER_ROWS_MAX as u64,
        });
    }
    let count = out_rows * cols;
    if count == 0 {
        return Ok((Vec::new(), 0));
    }
    let (g_src, gx_src) = grid_1d(gpu, "scatter_add", src.len())?;
    let (g_out, gx_out) = grid_1d(gpu, "acc_wide", count)?;
    let c32 = u32_of("columns", cols)?;
    let p_src = params(u32_of("elements", src.len())?, c32, 0, 15, 0, 0, gx_src);
    let p_out = params(u32_of("elements", count)?, c32, 0, 15, 0, 0, gx_out);
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, count, 15)?;
    let u_src = gpu.uniform(bytemuck::cast_slice(&p_src))?;
    let u_out = gpu.uniform(bytemuck::cast_slice(&p_out))?;
    let b_src = gpu.upload(bytemuck::cast_slice(src))?;
    let b_idx = gpu.upload(bytemuck::cast_slice(idx))?;
    let acc = gpu.buffer(Pool::Storage, count as u64 * 4)?;
    let mut dispatches = Vec::new();
    if !src.is_empty() {
        dispatches.push(Dispatch {
            shader: &OPS,
            entry: "scatter_add",
            bindings: vec![
                (0, &u_src, 32),
                (1, &b_src, src.len() as u64 * 4),
                (5, &acc, count as u64 * 4),
                (6, &b_idx, idx.len() as u64 * 4),
            ],
            groups: g_src,
        });
    }
    dispatches.push(Dispatch {
        shader: &OPS,
        entry: "acc_wide",
        bindings: vec![
            (0, &u_out, 32),
            (3, &tail.sums, count as u64 * 8),
            (4, &tail.key, 4),
            (5, &acc, count as u64 * 4),
        ],
        groups: g_out,
    });
    dispatches.push(tail.dispatch());
    let res = submit(
        gpu,
        "scatter_add_rows",
        &[&tail.key, &acc],
        &dispatches,
        &tail.reads(),
    );
    gpu.recycle(Pool::Uniform, [u_src, u_out]);
    gpu.recycle(Pool::Storage, [b_src, b_idx, acc]);
    tail.finish(gpu, res)
}

/// Exact `Σ m²` (per-workgroup 64-bit partials on the GPU, added in u128 here).
pub(crate) fn sum_squares(gpu: &Gpu, x: &[i32]) -> Result<u128, GpuError> {
    if x.is_empty() {
        return Ok(0);
    }
    let (groups, gx) = grid_1d(gpu, "sum_squares", x.len())?;
    let n_groups = groups[0] as u64 * groups[1] as u64;
    let p = params(u32_of("elements", x.len())?, 0, 0, 0, 0, 0, gx);
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let b0 = gpu.upload(bytemuck::cast_slice(x))?;
    let partial = gpu.buffer(Pool::Storage, n_groups * 8)?;
    let res = submit(
        gpu,
        "sum_squares",
        &[&partial],
        &[Dispatch {
            shader: &OPS,
            entry: "sum_squares",
            bindings: vec![
                (0, &uniform, 32),
                (1, &b0, x.len() as u64 * 4),
                (8, &partial, n_groups * 8),
            ],
            groups,
        }],
        &[(&partial, n_groups * 8)],
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    gpu.recycle(Pool::Storage, [b0, partial]);
    let parts: Vec<u64> = bytemuck::pod_collect_to_vec(&res?[0]);
    Ok(parts.iter().map(|&v| u128::from(v)).sum())
}
