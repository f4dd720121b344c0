//! Host side of `layout.wgsl`: the model's data movement on resident tensors (embedding row
//! gathers, attention head layouts), so that activations never leave the device between
//! kernels. Pure copies: `numerics::tensor::layout` does the same moves on the host.

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, release, submit, u32_of, Bound, Dispatch, Src};
use super::shaders::LAYOUT;

/// Which rows `gather_rows` reads.
pub(crate) enum Rows<'a> {
    /// `idx[r]` (token ids).
    Ids(Src<'a, u32>),
    /// `r % t` (positions).
    Positions(usize),
}

/// `out[r, c] = src[row(r), c]` for `out_rows` rows of `cols`; the result stays on the device.
pub(crate) fn gather_rows(
    gpu: &Gpu,
    src: &wgpu::Buffer,
    src_len: usize,
    rows: Rows<'_>,
    out_rows: usize,
    cols: usize,
) -> Result<wgpu::Buffer, GpuError> {
    let count = out_rows * cols;
    let (groups, gx) = grid_1d(gpu, "gather_rows", count)?;
    let modulus = match rows {
        Rows::Ids(_) => 0,
        Rows::Positions(t) => u32_of("positions", t)?,
    };
    let p: [u32; 8] = [
        u32_of("elements", count)?,
        u32_of("columns", cols)?,
        modulus,
        0,
        0,
        0,
        0,
        gx,
    ];
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let (ids, ids_bytes) = match rows {
        Rows::Ids(ids) => (ids.bind(gpu)?, ids.bytes()),
        // Bound but never read (the shader takes positions from `rows`). Not `src` itself:
        // the GL backend mishandles one buffer bound twice in a dispatch.
        Rows::Positions(_) => (Bound::Up(gpu.buffer(Pool::Storage, 4)?), 4),
    };
    let out = gpu.buffer(Pool::Storage, count as u64 * 4)?;
    let res = submit(
        gpu,
        "gather_rows",
        &[],
        &[Dispatch {
            shader: &LAYOUT,
            entry: "gather_rows",
            bindings: vec![
                (0, &uniform, 32),
                (1, src, src_len as u64 * 4),
                (6, ids.buf(), ids_bytes),
                (7, &out, count as u64 * 4),
            ],
            groups,
        }],
        &[],
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    release(gpu, [ids]);
    match res {
        Ok(_) => Ok(out),
        Err(e) => {
            gpu.recycle(Pool::Storage, [out]);
            Err(e)
        }
    }
}

/// Shape of a head-layout move: `[B·T, rowlen]` rows holding parts of width `H·hs` ↔
/// `[B·H, T, hs]`.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) h: usize,
    pub(crate) hs: usize,
}

impl Heads {
    fn count(&self) -> usize {
        self.b * self.h * self.t * self.hs
    }
    fn params(
        &self,
        gpu: &Gpu,
        rowlen: usize,
        off: usize,
        merge: bool,
    ) -> Result<([u32; 8], [u32; 3]), GpuError> {
        let (groups, gx) = grid_1d(gpu, "heads", self.count())?;
        Ok((
            [
                u32_of("elements", self.count())?,
                u32_of("head size", self.hs)?,
                u32_of("positions", self.t)?,
                u32_of("heads", self.h)?,
                u32_of("row width", rowlen)?,
                u32_of("column offset", off)?,
                u32::from(merge),
                gx,
            ],
            groups,
        ))
    }
}

/// Split: part `part` of width `H·hs` of each `[B·T, parts·H·hs]` row → `[B·H, T, hs]`; or
/// merge (`merge`): each source `[B·H, T, hs]` → part `i` of `[B·T, srcs·H·hs]` rows, recorded
/// together into the open batch. The result stays on the device.
pub(crate) fn heads(
    gpu: &Gpu,
    srcs: &[&wgpu::Buffer],
    shape: Heads,
    rowlen: usize,
    split_part: Option<usize>,
) -> Result<wgpu::Buffer, GpuError> {
    let c = shape.h * shape.hs;
    let count = shape.count();
    let out_len = if split_part.is_some() {
        count
    } else {
        count * srcs.len()
    };
    let src_len = if split_part.is_some() {
        shape.b * shape.t * rowlen
    } else {
        count
    };
    let mut uniforms = Vec::with_capacity(srcs.len());
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut groups = [1; 3];
    for i in 0..srcs.len() {
        let (p, g) = match split_part {
            Some(part) => shape.params(gpu, rowlen, part * c, false)?,
            None => shape.params(gpu, rowlen, i * c, true)?,
        };
        groups = g;
        uniforms.push(gpu.uniform(bytemuck::cast_slice(&p))?);
    }
    let out = gpu.buffer(Pool::Storage, out_len as u64 * 4)?;
    let dispatches: Vec<Dispatch<'_>> = srcs
        .iter()
        .zip(&uniforms)
        .map(|(s, u)| Dispatch {
            shader: &LAYOUT,
            entry: "heads",
            bindings: vec![
                (0, u, 32),
                (1, *s, src_len as u64 * 4),
                (7, &out, out_len as u64 * 4),
            ],
            groups,
        })
        .collect();
    let res = submit(gpu, "heads", &[], &dispatches, &[]);
    drop(dispatches);
    gpu.recycle(Pool::Uniform, uniforms);
    match res {
        Ok(_) => Ok(out),
        Err(e) => {
            gpu.recycle(Pool::Storage, [out]);
            Err(e)
        }
    }
}
