//! Batched B16 × B16 matmul on the GPU: exact 64-bit sums (`matmul.wgsl`), then
//! requantization to B16 with round-half-even (`requant.wgsl`), in one submission.

use super::device::{Gpu, GpuError, Pool};
use super::shaders::{MATMUL, REQUANT};

use crate::kernels::MatmulShape;

/// Matmul workgroup tile edge (must match `TILE` in `matmul.wgsl`).
const TILE: u64 = 16;
/// Requantization workgroup size (must match `WG` in `requant.wgsl`).
const REQUANT_WG: u64 = 256;

/// Result of [`matmul_b16`]: mantissas of `C` and the requantization shift `k`
/// (`exp_c = exp_a + exp_b + shift`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requantized {
    /// `batch · m · n` mantissas, |x| ≤ 32767.
    pub(crate) mant: Vec<i32>,
    /// The shift applied to every exact sum.
    pub(crate) shift: u32,
}

fn as_bytes(v: &[i32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

fn u32_of(what: &'static str, v: usize) -> Result<u32, GpuError> {
    u32::try_from(v).map_err(|_| GpuError::Limit {
        what,
        requested: v as u64,
        max: u64::from(u32::MAX),
    })
}

/// Runs the matmul on `gpu`. The caller has checked lengths and mantissa bounds
/// ([`crate::kernels::check_matmul`]); see [`MatmulShape`] for layouts.
pub(crate) fn matmul_b16(
    gpu: &Gpu,
    a: &[i32],
    b: &[i32],
    d: MatmulShape,
) -> Result<Requantized, GpuError> {
    const KERNEL: &str = "matmul";
    let count = d.batch * d.m * d.n;
    if count == 0 || d.k == 0 {
        return Ok(Requantized {
            mant: vec![0; count],
            shift: 0,
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
        KERNEL,
        [
            (d.n as u64).div_ceil(TILE),
            (d.m as u64).div_ceil(TILE),
            d.batch as u64,
        ],
    )?;
    let rq_groups_total = (count as u64).div_ceil(REQUANT_WG);
    let max_dim = u64::from(gpu.limits.max_compute_workgroups_per_dimension);
    let rq_x = rq_groups_total.min(max_dim);
    let rq_groups = gpu.check_groups("requant", [rq_x, rq_groups_total.div_ceil(rq_x), 1])?;
    let rq_params: [u32; 4] = [u32_of("requant elements", count)?, rq_groups[0], 0, 0];

    let _op = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    gpu.check_lost()?;
    let pipe_mm = gpu.pipeline(&MATMUL, "matmul_sums")?;
    let pipe_rq = gpu.pipeline(&REQUANT, "requant")?;
    let scopes = gpu.scopes();

    let u_mm = gpu.uniform(bytemuck::cast_slice(&params))?;
    let u_rq = gpu.uniform(bytemuck::cast_slice(&rq_params))?;
    let buf_a = gpu.upload(as_bytes(a))?;
    let buf_b = gpu.upload(as_bytes(b))?;
    let sums_bytes = count as u64 * 8;
    let buf_sums = gpu.buffer(Pool::Storage, sums_bytes)?;
    let buf_key = gpu.buffer(Pool::Storage, 4)?;
    let out_bytes = count as u64 * 4;
    let buf_out = gpu.buffer(Pool::Storage, out_bytes)?;

    let bind = |layout: &wgpu::BindGroupLayout, entries: &[(u32, &wgpu::Buffer, u64)]| {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
            .iter()
            .map(|(binding, buf, size)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: buf,
                    offset: 0,
                    size: wgpu::BufferSize::new(*size),
                }),
            })
            .collect();
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout,
            entries: &entries,
        })
    };
    let bg_mm = bind(
        &pipe_mm.get_bind_group_layout(0),
        &[
            (0, &u_mm, 48),
            (1, &buf_a, (a.len() as u64 * 4).max(4)),
            (2, &buf_b, (b.len() as u64 * 4).max(4)),
            (3, &buf_sums, sums_bytes),
            (4, &buf_key, 4),
        ],
    );
    let bg_rq = bind(
        &pipe_rq.get_bind_group_layout(0),
        &[
            (0, &u_rq, 16),
            (1, &buf_sums, sums_bytes),
            (2, &buf_key, 4),
            (3, &buf_out, out_bytes),
        ],
    );

    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(KERNEL),
        });
    enc.clear_buffer(&buf_key, 0, Some(4));
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(KERNEL),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipe_mm);
        pass.set_bind_group(0, &bg_mm, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        pass.set_pipeline(&pipe_rq);
        pass.set_bind_group(0, &bg_rq, &[]);
        pass.dispatch_workgroups(rq_groups[0], rq_groups[1], 1);
    }
    let res = gpu.finish(KERNEL, enc, scopes, &[(&buf_out, out_bytes), (&buf_key, 4)]);
    gpu.recycle(Pool::Uniform, [u_mm, u_rq]);
    gpu.recycle(Pool::Storage, [buf_a, buf_b, buf_sums, buf_key, buf_out]);
    let bytes = res?;
    let mant: Vec<i32> = bytemuck::pod_collect_to_vec(&bytes[0]);
    let key: u32 = bytemuck::pod_read_unaligned(&bytes[1][..4]);
    Ok(Requantized {
        mant,
        shift: quant_shift(key),
    })
}

/// Host mirror of `quant_shift` in `int64.wgsl`.
fn quant_shift(key: u32) -> u32 {
    let l = key >> 1;
    if l < 16 {
        0
    } else {
        l - 15 + (key & 1)
    }
}
