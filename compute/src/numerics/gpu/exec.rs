//! Recording helpers shared by the kernels: bind groups from explicit binding lists, 1-D grids
//! within the adapter's workgroup limits, and the "wide values → requantize" tail that every
//! requantizing kernel ends with (one submission per op).

use std::sync::Arc;

use super::device::{Gpu, GpuError, Pool};
use super::shaders::{Shader, REQUANT};

/// Workgroup size of the 1-D kernels (must match `WG` in `op_params.wgsl` and `requant.wgsl`).
pub(crate) const WG_1D: u64 = 256;

/// One dispatch: pipeline, `(binding, buffer, bytes)` list, workgroup counts.
pub(crate) struct Dispatch<'a> {
    pub(crate) shader: &'static Shader,
    pub(crate) entry: &'static str,
    pub(crate) bindings: Vec<(u32, &'a wgpu::Buffer, u64)>,
    pub(crate) groups: [u32; 3],
}

/// A 1-D grid over `count` items: `(groups, groups_x)`; item `i = (y·groups_x + x)·WG + l`.
pub(crate) fn grid_1d(
    gpu: &Gpu,
    what: &'static str,
    count: usize,
) -> Result<([u32; 3], u32), GpuError> {
    let total = (count as u64).div_ceil(WG_1D).max(1);
    let max_dim = u64::from(gpu.limits.max_compute_workgroups_per_dimension);
    let x = total.min(max_dim);
    let groups = gpu.check_groups(what, [x, total.div_ceil(x), 1])?;
    Ok((groups, groups[0]))
}

/// `u32` of a size, or a `Limit` error naming it.
pub(crate) fn u32_of(what: &'static str, v: usize) -> Result<u32, GpuError> {
    u32::try_from(v).map_err(|_| GpuError::Limit {
        what,
        requested: v as u64,
        max: u64::from(u32::MAX),
    })
}

fn bind_group(
    gpu: &Gpu,
    pipeline: &wgpu::ComputePipeline,
    bindings: &[(u32, &wgpu::Buffer, u64)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = bindings
        .iter()
        .map(|(binding, buf, size)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: buf,
                offset: 0,
                size: wgpu::BufferSize::new((*size).max(4)),
            }),
        })
        .collect();
    gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// Records `dispatches` in one compute pass after clearing `clear`, submits once, and reads
/// back `reads`. The caller holds `gpu.op_lock`.
pub(crate) fn submit(
    gpu: &Gpu,
    kernel: &'static str,
    clear: &[&wgpu::Buffer],
    dispatches: &[Dispatch<'_>],
    reads: &[(&wgpu::Buffer, u64)],
) -> Result<Vec<Vec<u8>>, GpuError> {
    gpu.check_lost()?;
    let pipelines: Vec<Arc<wgpu::ComputePipeline>> = dispatches
        .iter()
        .map(|d| gpu.pipeline(d.shader, d.entry))
        .collect::<Result<_, _>>()?;
    let scopes = gpu.scopes();
    let groups: Vec<wgpu::BindGroup> = dispatches
        .iter()
        .zip(&pipelines)
        .map(|(d, p)| bind_group(gpu, p, &d.bindings))
        .collect();
    let mut enc = gpu
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(kernel),
        });
    for b in clear {
        enc.clear_buffer(b, 0, None);
    }
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(kernel),
            timestamp_writes: None,
        });
        for ((d, p), g) in dispatches.iter().zip(&pipelines).zip(&groups) {
            pass.set_pipeline(p);
            pass.set_bind_group(0, g, &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
    }
    gpu.finish(kernel, enc, scopes, reads)
}

/// Buffers of a requantizing op: the wide sums, the key and the output mantissas.
pub(crate) struct WideOut {
    pub(crate) sums: wgpu::Buffer,
    pub(crate) key: wgpu::Buffer,
    pub(crate) out: wgpu::Buffer,
    pub(crate) uniform: wgpu::Buffer,
    pub(crate) count: usize,
    pub(crate) bits: u32,
    groups: [u32; 3],
}

impl WideOut {
    /// Allocates the tail for `count` wide values requantized to `2^bits − 1`.
    pub(crate) fn new(gpu: &Gpu, count: usize, bits: u32) -> Result<WideOut, GpuError> {
        let (groups, groups_x) = grid_1d(gpu, "requant", count)?;
        let params: [u32; 4] = [u32_of("requant elements", count)?, groups_x, bits, 0];
        Ok(WideOut {
            sums: gpu.buffer(Pool::Storage, count as u64 * 8)?,
            key: gpu.buffer(Pool::Storage, 4)?,
            out: gpu.buffer(Pool::Storage, count as u64 * 4)?,
            uniform: gpu.uniform(bytemuck::cast_slice(&params))?,
            count,
            bits,
            groups,
        })
    }

    /// The requantization dispatch (after the producers).
    pub(crate) fn dispatch(&self) -> Dispatch<'_> {
        Dispatch {
            shader: &REQUANT,
            entry: "requant",
            bindings: vec![
                (0, &self.uniform, 16),
                (1, &self.sums, self.count as u64 * 8),
                (2, &self.key, 4),
                (3, &self.out, self.count as u64 * 4),
            ],
            groups: self.groups,
        }
    }

    /// The readbacks: output mantissas, then the key.
    pub(crate) fn reads(&self) -> [(&wgpu::Buffer, u64); 2] {
        [(&self.out, self.count as u64 * 4), (&self.key, 4)]
    }

    /// Decodes the readbacks into `(mantissas, shift)` and returns the buffers to the pool.
    pub(crate) fn finish(
        self,
        gpu: &Gpu,
        bytes: Result<Vec<Vec<u8>>, GpuError>,
    ) -> Result<(Vec<i32>, u32), GpuError> {
        let bits = self.bits;
        gpu.recycle(Pool::Uniform, [self.uniform]);
        gpu.recycle(Pool::Storage, [self.sums, self.key, self.out]);
        let bytes = bytes?;
        let mant: Vec<i32> = bytemuck::pod_collect_to_vec(&bytes[0]);
        let key: u32 = bytemuck::pod_read_unaligned(&bytes[1][..4]);
        Ok((mant, quant_shift(key, bits)))
    }
}

/// Host mirror of `quant_shift` in `int64.wgsl`.
pub(crate) fn quant_shift(key: u32, bits: u32) -> u32 {
    let l = key >> 1;
    if l <= bits {
        0
    } else {
        l - bits + (key & 1)
    }
}
