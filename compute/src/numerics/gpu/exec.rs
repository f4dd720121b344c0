//! Recording helpers shared by the kernels: bind groups from explicit binding lists, 1-D grids
//! within the adapter's workgroup limits, and the "wide values → requantize" tail that every
//! requantizing kernel ends with (one submission per op).

use std::sync::{Arc, OnceLock};

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

/// Records `dispatches` in one compute pass after clearing `clear` into the open batch; with
/// `reads`, submits the batch and returns their bytes, else leaves it for a later submission
/// (a resident result nobody needs yet). The caller holds `gpu.op_lock`.
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
    let recorded = gpu.record(kernel, |enc| {
        for b in clear {
            enc.clear_buffer(b, 0, None);
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(kernel),
            timestamp_writes: None,
        });
        for ((d, p), g) in dispatches.iter().zip(&pipelines).zip(&groups) {
            pass.set_pipeline(p);
            pass.set_bind_group(0, g, &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
    });
    // Errors of this thread's bind groups and recording; those of the pass itself surface
    // when the batch is submitted.
    let (oom, validation) = scopes;
    let err = pollster::block_on(validation.pop()).or(pollster::block_on(oom.pop()));
    recorded?;
    if let Some(e) = err {
        return Err(GpuError::Device {
            kernel,
            reason: e.to_string(),
        });
    }
    if reads.is_empty() {
        return Ok(Vec::new());
    }
    gpu.flush_locked(kernel, reads)
}

/// A kernel operand: host values (mantissas, indices, row statistics), uploaded for the one
/// submission, or a buffer already on the device (resident data) with its element count.
pub(crate) enum Src<'a, T: bytemuck::Pod = i32> {
    Host(&'a [T]),
    Dev(&'a wgpu::Buffer, usize),
}

impl<T: bytemuck::Pod> Clone for Src<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: bytemuck::Pod> Copy for Src<'_, T> {}

impl<'a, T: bytemuck::Pod> Src<'a, T> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Src::Host(v) => v.len(),
            Src::Dev(_, n) => *n,
        }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn bytes(&self) -> u64 {
        (self.len() * std::mem::size_of::<T>()) as u64
    }
    /// Uploads a host operand; binds a resident one as it is.
    pub(crate) fn bind(self, gpu: &Gpu) -> Result<Bound<'a>, GpuError> {
        Ok(match self {
            Src::Host(v) => Bound::Up(gpu.upload(bytemuck::cast_slice(v))?),
            Src::Dev(b, _) => Bound::Dev(b),
        })
    }
}

/// An operand bound for one submission: uploaded (returned to the pool by [`release`]) or
/// borrowed from resident data.
pub(crate) enum Bound<'a> {
    Up(wgpu::Buffer),
    Dev(&'a wgpu::Buffer),
}

impl Bound<'_> {
    pub(crate) fn buf(&self) -> &wgpu::Buffer {
        match self {
            Bound::Up(b) => b,
            Bound::Dev(b) => b,
        }
    }
}

/// Returns the uploaded operands to the pool.
pub(crate) fn release<'a>(gpu: &Gpu, bound: impl IntoIterator<Item = Bound<'a>>) {
    gpu.recycle(
        Pool::Storage,
        bound.into_iter().filter_map(|b| match b {
            Bound::Up(b) => Some(b),
            Bound::Dev(_) => None,
        }),
    );
}

/// The mantissas an op produced: read back to the host, or left on the device.
pub(crate) enum Mant {
    Host(Vec<i32>),
    Dev(wgpu::Buffer),
}

impl Mant {
    /// The result of an op on no elements.
    pub(crate) fn empty(gpu: &Gpu, keep: bool) -> Result<Mant, GpuError> {
        Ok(if keep {
            Mant::Dev(gpu.buffer(Pool::Storage, 4)?)
        } else {
            Mant::Host(Vec::new())
        })
    }

    /// The output buffer of a submission that read it back unless `keep`.
    pub(crate) fn finish(
        gpu: &Gpu,
        out: wgpu::Buffer,
        keep: bool,
        res: Result<Vec<Vec<u8>>, GpuError>,
    ) -> Result<Mant, GpuError> {
        if keep {
            return match res {
                Ok(_) => Ok(Mant::Dev(out)),
                Err(e) => {
                    gpu.recycle(Pool::Storage, [out]);
                    Err(e)
                }
            };
        }
        gpu.recycle(Pool::Storage, [out]);
        Ok(Mant::Host(bytemuck::pod_collect_to_vec(&res?[0])))
    }
}

/// Result of a requantizing op: mantissas and the requantization key, read back with the
/// result or, for a resident one, when the batch that computes it runs; the key gives the
/// shift and a bound of the result's bit length ([`key_shift`]).
pub(crate) struct WideResult {
    pub(crate) mant: Mant,
    pub(crate) key: Arc<OnceLock<u32>>,
    /// The key's buffer while the batch that computes it is open (for `exp_post`).
    pub(crate) key_buf: Option<wgpu::Buffer>,
    /// The requantization target (`2^target − 1`); also a bound of the result's bit length
    /// known before the key.
    pub(crate) target: u32,
}

/// `(shift, bit-length bound)` of a requantized result from its key.
pub(crate) fn key_shift(key: u32, target: u32) -> (u32, u32) {
    (quant_shift(key, target), out_bits(key, target))
}

/// A key known now.
pub(crate) fn known_key(key: u32) -> Arc<OnceLock<u32>> {
    let cell = OnceLock::new();
    let _ = cell.set(key);
    Arc::new(cell)
}

impl WideResult {
    /// The result of an op on no elements.
    pub(crate) fn empty(gpu: &Gpu, keep: bool) -> Result<WideResult, GpuError> {
        Ok(WideResult {
            mant: Mant::empty(gpu, keep)?,
            key: known_key(0),
            key_buf: None,
            target: 0,
        })
    }
}

/// Bit-length bound of a requantized result from its key: exact when nothing was shifted,
/// else the target width.
pub(crate) fn out_bits(key: u32, bits: u32) -> u32 {
    if quant_shift(key, bits) == 0 {
        key >> 1
    } else {
        bits
    }
}

/// Buffers of a requantizing op: the wide sums, the key and the output mantissas.
pub(crate) struct WideOut {
    pub(crate) sums: wgpu::Buffer,
    pub(crate) key: wgpu::Buffer,
    pub(crate) out: wgpu::Buffer,
    pub(crate) uniform: wgpu::Buffer,
    pub(crate) count: usize,
    pub(crate) bits: u32,
    /// Leave the output on the device and read back only the key.
    pub(crate) keep: bool,
    groups: [u32; 3],
}

impl WideOut {
    /// Allocates the tail for `count` wide values requantized to `2^bits − 1`, leaving the
    /// output on the device when `keep`.
    pub(crate) fn new(gpu: &Gpu, count: usize, bits: u32, keep: bool) -> Result<WideOut, GpuError> {
        let (groups, groups_x) = grid_1d(gpu, "requant", count)?;
        let params: [u32; 4] = [u32_of("requant elements", count)?, groups_x, bits, 0];
        Ok(WideOut {
            sums: gpu.buffer(Pool::Storage, count as u64 * 8)?,
            key: gpu.buffer(Pool::Storage, 4)?,
            out: gpu.buffer(Pool::Storage, count as u64 * 4)?,
            uniform: gpu.uniform(bytemuck::cast_slice(&params))?,
            count,
            bits,
            keep,
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

    /// The readbacks: output mantissas (unless kept on the device), then the key; for a kept
    /// output the key only if the op submits anyway (`flushing`: it reads something else),
    /// else the key waits for the batch ([`Gpu::defer_key`]).
    pub(crate) fn reads(&self, flushing: bool) -> Vec<(&wgpu::Buffer, u64)> {
        let mut r = Vec::with_capacity(2);
        if !self.keep {
            r.push((&self.out, self.count as u64 * 4));
        }
        if !self.keep || flushing {
            r.push((&self.key, 4));
        }
        r
    }

    /// Decodes the readbacks (those of [`WideOut::reads`], at the end of `bytes`) into the
    /// result and returns the other buffers to the pool.
    pub(crate) fn finish(
        self,
        gpu: &Gpu,
        bytes: Result<Vec<Vec<u8>>, GpuError>,
    ) -> Result<WideResult, GpuError> {
        let target = self.bits;
        let mut bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                gpu.recycle(Pool::Uniform, [self.uniform]);
                gpu.recycle(Pool::Storage, [self.sums, self.key, self.out]);
                return Err(e);
            }
        };
        let (key, key_buf, mant) = if self.keep {
            let (key, key_buf) = match bytes.pop() {
                Some(k) => (known_key(bytemuck::pod_read_unaligned(&k[..4])), None),
                None => (gpu.defer_key(&self.key), Some(self.key.clone())),
            };
            (key, key_buf, Mant::Dev(self.out))
        } else {
            let key_bytes = bytes.pop().unwrap_or_default();
            let key = known_key(bytemuck::pod_read_unaligned(&key_bytes[..4]));
            gpu.recycle(Pool::Storage, [self.out]);
            let mant = bytemuck::pod_collect_to_vec(&bytes.pop().unwrap_or_default());
            (key, None, Mant::Host(mant))
        };
        gpu.recycle(Pool::Uniform, [self.uniform]);
        gpu.recycle(Pool::Storage, [self.sums, self.key]);
        Ok(WideResult {
            mant,
            key,
            key_buf,
            target,
        })
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
