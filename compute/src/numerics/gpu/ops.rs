//! Host side of `ops.wgsl`: elementwise and reduction kernels, each one submission.
//! Argument checks are done by the caller (`GpuKernels`), identically to `CpuKernels`.

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, release, submit, u32_of, Dispatch, Mant, Src, WideOut, WideResult};
use super::exps::{self, Patch};
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
    pub(crate) in0: Src<'a>,
    pub(crate) in1: Src<'a>,
    pub(crate) count: usize,
    pub(crate) cols: usize,
    pub(crate) rows: usize,
    pub(crate) c: i64,
    pub(crate) k: u32,
    pub(crate) bits: u32,
    /// Leave the result on the device.
    pub(crate) keep: bool,
    /// Shifts the device computes from exponents the host does not know yet.
    pub(crate) patch: Option<Patch<'a>>,
}

/// `ops.wgsl`'s `scale` of `x` by `c_q30 · 2^−30`, requantized to B16 (`patch`: the constant
/// taken on the device instead, as clipping does).
pub(crate) fn scale_op<'a>(
    x: Src<'a>,
    c_q30: i64,
    keep: bool,
    patch: Option<Patch<'a>>,
) -> WideOp<'a> {
    WideOp {
        shader: &OPS,
        k: 0,
        entry: "scale",
        in0: x,
        in1: Src::Host(&[]),
        count: x.len(),
        cols: 0,
        rows: 0,
        c: c_q30,
        bits: 15,
        keep,
        patch,
    }
}

fn params(count: u32, cols: u32, rows: u32, bits: u32, c: i64, k: u32, gx: u32) -> [u32; 8] {
    let c = c as u64;
    [count, cols, rows, bits, c as u32, (c >> 32) as u32, k, gx]
}

/// An entry of `ops.wgsl` that writes `count` wide values, then requantization to
/// `2^bits − 1`. The producer grid covers `max(count, cols)` items.
pub(crate) fn wide(gpu: &Gpu, op: WideOp<'_>) -> Result<WideResult, GpuError> {
    if op.count == 0 {
        return WideResult::empty(gpu, op.keep);
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
    let tail = WideOut::new(gpu, op.count, op.bits, op.keep)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    if let Some(patch) = &op.patch {
        exps::pre(gpu, patch, &uniform)?;
    }
    let b0 = op.in0.bind(gpu)?;
    // Entries that read `in1` need it bound even when it is empty (then nothing is read).
    let b1 = if matches!(op.entry, "add" | "mul_cols" | "col_dot" | "gelu_bwd") {
        Some(op.in1.bind(gpu)?)
    } else {
        None
    };
    let mut bindings = vec![
        (0, &uniform, 32),
        (1, b0.buf(), op.in0.bytes()),
        (3, &tail.sums, op.count as u64 * 8),
        (4, &tail.key, 4),
    ];
    if let Some(b1) = &b1 {
        bindings.push((2, b1.buf(), op.in1.bytes()));
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
        &tail.reads(false),
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    release(gpu, [b0].into_iter().chain(b1));
    tail.finish(gpu, res)
}

/// `rhe(x, k)` per element (`k ≤ 63`).
pub(crate) fn rescale(
    gpu: &Gpu,
    x: Src<'_>,
    k: u32,
    keep: bool,
    patch: Option<&Patch<'_>>,
) -> Result<Mant, GpuError> {
    if x.is_empty() {
        return Mant::empty(gpu, keep);
    }
    let (groups, gx) = grid_1d(gpu, "rescale", x.len())?;
    let p = params(u32_of("elements", x.len())?, 0, 0, 0, 0, k.min(63), gx);
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    if let Some(patch) = patch {
        exps::pre(gpu, patch, &uniform)?;
    }
    let b0 = x.bind(gpu)?;
    let bytes = x.bytes();
    let out = gpu.buffer(Pool::Storage, bytes)?;
    let reads: &[(&wgpu::Buffer, u64)] = if keep { &[] } else { &[(&out, bytes)] };
    let res = submit(
        gpu,
        "rescale",
        &[],
        &[Dispatch {
            shader: &OPS,
            entry: "rescale",
            bindings: vec![(0, &uniform, 32), (1, b0.buf(), bytes), (7, &out, bytes)],
            groups,
        }],
        reads,
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    release(gpu, [b0]);
    Mant::finish(gpu, out, keep, res)
}

/// `s[idx[r], c] += src[r, c]`, then requantization to B16. `idx` is checked by the caller.
pub(crate) fn scatter_add_rows(
    gpu: &Gpu,
    src: Src<'_>,
    idx: Src<'_, u32>,
    out_rows: usize,
    cols: usize,
    keep: bool,
) -> Result<WideResult, GpuError> {
    if idx.len() > SCATTER_ROWS_MAX {
        return Err(GpuError::Limit {
            what: "scatter_add_rows source rows on wgpu",
            requested: idx.len() as u64,
            max: SCATTER_ROWS_MAX as u64,
        });
    }
    let count = out_rows * cols;
    if count == 0 {
        return WideResult::empty(gpu, keep);
    }
    let (g_src, gx_src) = grid_1d(gpu, "scatter_add", src.len())?;
    let (g_out, gx_out) = grid_1d(gpu, "acc_wide", count)?;
    let c32 = u32_of("columns", cols)?;
    let p_src = params(u32_of("elements", src.len())?, c32, 0, 15, 0, 0, gx_src);
    let p_out = params(u32_of("elements", count)?, c32, 0, 15, 0, 0, gx_out);
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, count, 15, keep)?;
    let u_src = gpu.uniform(bytemuck::cast_slice(&p_src))?;
    let u_out = gpu.uniform(bytemuck::cast_slice(&p_out))?;
    let b_src = src.bind(gpu)?;
    let b_idx = idx.bind(gpu)?;
    let acc = gpu.buffer(Pool::Storage, count as u64 * 4)?;
    let mut dispatches = Vec::new();
    if !src.is_empty() {
        dispatches.push(Dispatch {
            shader: &OPS,
            entry: "scatter_add",
            bindings: vec![
                (0, &u_src, 32),
                (1, b_src.buf(), src.bytes()),
                (5, &acc, count as u64 * 4),
                (6, b_idx.buf(), idx.len() as u64 * 4),
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
        &tail.reads(false),
    );
    gpu.recycle(Pool::Uniform, [u_src, u_out]);
    release(gpu, [b_src, b_idx]);
    gpu.recycle(Pool::Storage, [acc]);
    tail.finish(gpu, res)
}

/// Exact `Σ m²`: per-workgroup 64-bit partials, added on the device by a second dispatch; 8
/// bytes come back.
pub(crate) fn sum_squares(gpu: &Gpu, x: Src<'_>) -> Result<u128, GpuError> {
    Ok(sum_squares_many(gpu, &[x])?[0])
}

/// [`sum_squares`] of several tensors, recorded together and read back in one submission.
pub(crate) fn sum_squares_many(gpu: &Gpu, xs: &[Src<'_>]) -> Result<Vec<u128>, GpuError> {
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let bytes = (xs.len() as u64 * 8).max(8);
    let sums = gpu.buffer(Pool::Storage, bytes)?;
    let read = record_sum_squares(gpu, xs, &sums)
        .and_then(|()| gpu.flush_locked("sum_squares", &[(&sums, bytes)]));
    gpu.recycle(Pool::Storage, [sums]);
    let words: Vec<u64> = bytemuck::pod_collect_to_vec(&read?[0]);
    Ok(words.into_iter().take(xs.len()).map(u128::from).collect())
}

/// Records `Σ m²` of each of `xs` into the open batch, into its slot of `sums` (8 bytes each;
/// an empty tensor's slot is 0). The caller holds `op_lock`.
pub(crate) fn record_sum_squares(
    gpu: &Gpu,
    xs: &[Src<'_>],
    sums: &wgpu::Buffer,
) -> Result<(), GpuError> {
    let sums_bytes = (xs.len() as u64 * 8).max(8);
    gpu.record("sum_squares", |enc| enc.clear_buffer(sums, 0, None))?;
    for (slot, &x) in xs.iter().enumerate() {
        if x.is_empty() {
            continue;
        }
        let (groups, gx) = grid_1d(gpu, "sum_squares", x.len())?;
        let n_groups = groups[0] as u64 * groups[1] as u64;
        let p = params(u32_of("elements", x.len())?, 0, 0, 0, 0, 0, gx);
        let slot = u32_of("tensors", slot)?;
        let p2 = params(
            u32_of("partial sums", n_groups as usize)?,
            0,
            0,
            0,
            0,
            slot,
            1,
        );
        let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
        let u_sum = gpu.uniform(bytemuck::cast_slice(&p2))?;
        let b0 = x.bind(gpu)?;
        let partial = gpu.buffer(Pool::Storage, n_groups * 8)?;
        let res = submit(
            gpu,
            "sum_squares",
            &[],
            &[
                Dispatch {
                    shader: &OPS,
                    entry: "sum_squares",
                    bindings: vec![
                        (0, &uniform, 32),
                        (1, b0.buf(), x.bytes()),
                        (8, &partial, n_groups * 8),
                    ],
                    groups,
                },
                Dispatch {
                    shader: &OPS,
                    entry: "sum_partials",
                    bindings: vec![
                        (0, &u_sum, 32),
                        (3, sums, sums_bytes),
                        (8, &partial, n_groups * 8),
                    ],
                    groups: [1, 1, 1],
                },
            ],
            &[],
        );
        gpu.recycle(Pool::Uniform, [uniform, u_sum]);
        release(gpu, [b0]);
        gpu.recycle(Pool::Storage, [partial]);
        res?;
    }
    Ok(())
}
