//! Batched B16 × B16 matmul on the GPU: exact 64-bit sums (`matmul.wgsl`), then
//! requantization to B16 with round-half-even (`requant.wgsl`), in one submission.

use super::device::{Gpu, GpuError, Pool};
use super::exec::{release, submit, u32_of, Dispatch, Src, WideOut, WideResult};
use super::shaders::MATMUL;
use crate::numerics::kernels::MatmulShape;

/// Edge of the block of C one workgroup computes (must match `TILE` in `matmul.wgsl`).
const TILE: u64 = 32;
/// Mantissa bits of B16 (|x| ≤ 2^15 − 1).
const B16_BITS: u32 = 15;

/// Runs the matmul on `gpu`: `(mantissas, shift)` with `exp = a.exp + b.exp + shift`. The
/// caller has checked lengths and mantissa bounds ([`crate::numerics::kernels::check_matmul`]); see
/// [`MatmulShape`] for layouts.
pub(crate) fn matmul_b16(
    gpu: &Gpu,
    a: Src<'_>,
    b: Src<'_>,
    d: MatmulShape,
    keep: bool,
) -> Result<WideResult, GpuError> {
    const KERNEL: &str = "matmul";
    let count = d.batch * d.m * d.n;
    if count == 0 || d.k == 0 {
        // Resident callers never get here: they leave empty products to the host path.
        debug_assert!(!keep, "empty matmul asked to stay on the device");
        return Ok(WideResult {
            mant: super::exec::Mant::Host(vec![0; count]),
            key: super::exec::known_key(0),
            key_buf: None,
            target: 0,
        });
    }
    let m = u32_of("matmul rows", d.m)?;
    let n = u32_of("matmul columns", d.n)?;
    let k = u32_of("matmul inner dimension", d.k)?;
    let batch = u32_of("matmul batch", d.batch)?;
    let mk = u32_of("matmul A elements per batch", d.m * d.k)?;
    let kn = u32_of("matmul B elements per batch", d.k * d.n)?;
    let (a_rs, a_cs) = if d.trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if d.trans_b { (1, k) } else { (n, 1) };
    let params: [u32; 12] = [m, n, k, batch, a_rs, a_cs, mk, b_rs, b_cs, kn, 0, 0];
    let groups = gpu.check_groups(
        "matmul workgroups per dimension",
        [
            (d.n as u64).div_ceil(TILE),
            (d.m as u64).div_ceil(TILE),
            d.batch as u64,
        ],
    )?;

    let _op = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, count, B16_BITS, keep)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&params))?;
    let buf_a = a.bind(gpu)?;
    let buf_b = b.bind(gpu)?;
    let res = submit(
        gpu,
        KERNEL,
        &[&tail.key],
        &[
            Dispatch {
                shader: &MATMUL,
                entry: "matmul_sums",
                bindings: vec![
                    (0, &uniform, 48),
                    (1, buf_a.buf(), a.bytes()),
                    (2, buf_b.buf(), b.bytes()),
                    (3, &tail.sums, count as u64 * 8),
                    (4, &tail.key, 4),
                ],
                groups,
            },
            tail.dispatch(),
        ],
        &tail.reads(false),
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    release(gpu, [buf_a, buf_b]);
    tail.finish(gpu, res)
}
