//! Host side of `softmax_bwd.wgsl`: 96-bit wide values, their own requantization pass.

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, known_key, release, submit, u32_of, Dispatch, Mant, Src, WideResult};
use super::exps::{self, Patch};
use super::shaders::SOFTMAX_BWD;

/// Largest `−p.exp` the GPU backward takes (keeps `|w| < 2^94`; larger is left to the CPU).
pub(crate) const SOFTMAX_BWD_SHIFT_MAX: u32 = 30;
/// Widest row the GPU backward takes (keeps `|D| < 2^46`).
pub(crate) const SOFTMAX_BWD_COLS_MAX: usize = (1 << 16) - 1;

/// `(mantissas, shift)`: `exp = 2·p.exp + dp.exp − 16 + shift`. The caller checked lengths,
/// bounds and the limits above.
#[allow(clippy::too_many_arguments)] // the kernel's operands and scalars, plus `keep`
pub(crate) fn softmax_bwd(
    gpu: &Gpu,
    p: Src<'_>,
    dp: Src<'_>,
    rows: usize,
    cols: usize,
    sh: u32,
    scale_q16: u32,
    keep: bool,
    patch: Option<&Patch<'_>>,
) -> Result<WideResult, GpuError> {
    let count = rows * cols;
    if count == 0 {
        return WideResult::empty(gpu, keep);
    }
    let (g_rows, gx_rows) = grid_1d(gpu, "softmax_bwd", rows)?;
    let (g_all, gx_all) = grid_1d(gpu, "softmax_bwd requant", count)?;
    let (r32, c32, n32) = (
        u32_of("rows", rows)?,
        u32_of("columns", cols)?,
        u32_of("elements", count)?,
    );
    let p_rows: [u32; 8] = [r32, c32, 15, gx_rows, sh, scale_q16, n32, 0];
    let p_all: [u32; 8] = [r32, c32, 15, gx_all, sh, scale_q16, n32, 0];
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let u_rows = gpu.uniform(bytemuck::cast_slice(&p_rows))?;
    let u_all = gpu.uniform(bytemuck::cast_slice(&p_all))?;
    if let Some(patch) = patch {
        exps::pre(gpu, patch, &u_rows)?;
        exps::pre(gpu, patch, &u_all)?;
    }
    let bp = p.bind(gpu)?;
    let bd = dp.bind(gpu)?;
    let wide_bytes = count as u64 * 16;
    let wide = gpu.buffer(Pool::Storage, wide_bytes)?;
    let key = gpu.buffer(Pool::Storage, 4)?;
    let out_bytes = count as u64 * 4;
    let out = gpu.buffer(Pool::Storage, out_bytes)?;
    let res = submit(
        gpu,
        "softmax_bwd",
        &[&key],
        &[
            Dispatch {
                shader: &SOFTMAX_BWD,
                entry: "softmax_bwd_rows",
                bindings: vec![
                    (0, &u_rows, 32),
                    (1, bp.buf(), p.bytes()),
                    (2, bd.buf(), dp.bytes()),
                    (3, &wide, wide_bytes),
                    (4, &key, 4),
                ],
                groups: g_rows,
            },
            Dispatch {
                shader: &SOFTMAX_BWD,
                entry: "requant96",
                bindings: vec![
                    (0, &u_all, 32),
                    (3, &wide, wide_bytes),
                    (4, &key, 4),
                    (7, &out, out_bytes),
                ],
                groups: g_all,
            },
        ],
        &if keep {
            vec![]
        } else {
            vec![(&out, out_bytes), (&key, 4)]
        },
    );
    gpu.recycle(Pool::Uniform, [u_rows, u_all]);
    release(gpu, [bp, bd]);
    let mut bytes = match res {
        Ok(b) => b,
        Err(e) => {
            gpu.recycle(Pool::Storage, [wide, key, out]);
            return Err(e);
        }
    };
    let (k, key_buf, mant) = if keep {
        (gpu.defer_key(&key), Some(key.clone()), Mant::Dev(out))
    } else {
        let k = known_key(bytemuck::pod_read_unaligned(
            &bytes.pop().unwrap_or_default()[..4],
        ));
        gpu.recycle(Pool::Storage, [out]);
        (
            k,
            None,
            Mant::Host(bytemuck::pod_collect_to_vec(
                &bytes.pop().unwrap_or_default(),
            )),
        )
    };
    gpu.recycle(Pool::Storage, [wide, key]);
    Ok(WideResult {
        mant,
        key: k,
        key_buf,
        target: 15,
    })
}
