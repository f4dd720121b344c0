//! Host side of `adamw.wgsl`: two submissions (moments, then parameters), see the shader.

use std::sync::{Arc, OnceLock};

use super::device::{Gpu, GpuError, Pool};
use super::exec::{
    grid_1d, known_key, release, submit, u32_of, Dispatch, Mant, Src, WideOut, WideResult,
};
use super::exps::{self, Patch};
use super::shaders::ADAMW;

/// Largest bit length of `|alpha_q40|` the GPU update takes (the product `alpha · u` then
/// stays below 2^95).
pub(crate) const ADAM_ALPHA_BITS_MAX: u32 = 50;
/// Largest bit length of `|decay_q40|` (keeps `decay · p` below 2^63).
pub(crate) const ADAM_DECAY_BITS_MAX: u32 = 40;
/// Largest bit length of the update `a` after its shift (keeps `p'` in 62 bits).
pub(crate) const ADAM_UPDATE_BITS_MAX: i64 = 60;

/// Outcome of submission 1: `(m' mantissas, its shift)`, `(r' mantissas, its shift)` and the
/// `s` of the square root.
pub(crate) struct Moments {
    pub(crate) m: WideResult,
    pub(crate) r: WideResult,
    /// `max bitlen` of the `r` sums (`s = max(0, 100 − mbits) / 2` lowers `r'`'s exponent).
    pub(crate) mbits: Arc<OnceLock<u32>>,
    /// Its buffer while the batch that computes it is open.
    pub(crate) mbits_buf: Option<wgpu::Buffer>,
}

/// Shifts `(left, right)` aligning exponent `e` to `e0` (right shifts clamped to 63, which
/// rounds every value below 2^62 to 0 as a longer shift would).
pub(crate) fn align_shifts(e: i64, e0: i64) -> (u32, u32) {
    if e >= e0 {
        ((e - e0) as u32, 0)
    } else {
        (0, (e0 - e).min(63) as u32)
    }
}

/// Submission 1 (the caller checked lengths, bounds and `β ∈ [0, 2^30]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn moments(
    gpu: &Gpu,
    g: Src<'_>,
    m: Src<'_>,
    r: Src<'_>,
    shifts_m: [(u32, u32); 2],
    shifts_v: [(u32, u32); 2],
    odd: bool,
    betas: (u32, u32),
    keep: bool,
    patch: Option<&Patch<'_>>,
) -> Result<Moments, GpuError> {
    let count = g.len();
    if count == 0 {
        return Ok(Moments {
            m: WideResult::empty(gpu, keep)?,
            r: WideResult::empty(gpu, keep)?,
            mbits: known_key(0),
            mbits_buf: None,
        });
    }
    let (groups, gx) = grid_1d(gpu, "adamw", count)?;
    let [(la_m, ra_m), (la_g, ra_g)] = shifts_m;
    let [(la_r, ra_r), (la_g2, ra_g2)] = shifts_v;
    let p: [u32; 20] = [
        u32_of("elements", count)?,
        gx,
        15,
        u32::from(odd),
        la_m,
        ra_m,
        la_g,
        ra_g,
        la_r,
        ra_r,
        la_g2,
        ra_g2,
        betas.0,
        betas.1,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, count, 15, keep)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    if let Some(patch) = patch {
        exps::pre(gpu, patch, &uniform)?;
    }
    let (bm, bg, br) = (m.bind(gpu)?, g.bind(gpu)?, r.bind(gpu)?);
    let n4 = count as u64 * 4;
    let n16 = count as u64 * 16;
    let wide_m = gpu.buffer(Pool::Storage, n16)?;
    let wide_v = gpu.buffer(Pool::Storage, n16)?;
    let key_m = gpu.buffer(Pool::Storage, 4)?;
    let maxbits = gpu.buffer(Pool::Storage, 4)?;
    let out_m = gpu.buffer(Pool::Storage, n4)?;
    let d = |entry: &'static str, bindings| Dispatch {
        shader: &ADAMW,
        entry,
        bindings,
        groups,
    };
    // Kept results wait for the batch, keys included (AdamW of every tensor is recorded before
    // one submission); read back, everything comes at once.
    let mut reads = Vec::new();
    if !keep {
        reads = vec![(&key_m, 4), (&maxbits, 4), (&out_m, n4)];
    }
    reads.extend(tail.reads(false));
    let res = submit(
        gpu,
        "adamw",
        &[&key_m, &maxbits, &tail.key],
        &[
            d(
                "adam_m",
                vec![
                    (0, &uniform, 80),
                    (1, bm.buf(), n4),
                    (2, bg.buf(), n4),
                    (5, &wide_m, n16),
                    (6, &key_m, 4),
                ],
            ),
            d(
                "requant_m",
                vec![
                    (0, &uniform, 80),
                    (5, &wide_m, n16),
                    (6, &key_m, 4),
                    (11, &out_m, n4),
                ],
            ),
            d(
                "adam_v",
                vec![
                    (0, &uniform, 80),
                    (2, bg.buf(), n4),
                    (3, br.buf(), n4),
                    (7, &wide_v, n16),
                    (8, &maxbits, 4),
                ],
            ),
            d(
                "adam_sqrt",
                vec![
                    (0, &uniform, 80),
                    (7, &wide_v, n16),
                    (8, &maxbits, 4),
                    (9, &tail.sums, count as u64 * 8),
                    (10, &tail.key, 4),
                ],
            ),
            tail.dispatch(),
        ],
        &reads,
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    release(gpu, [bm, bg, br]);
    let (res, extra) = match (res, keep) {
        (Ok(v), false) => {
            let mut it = v.into_iter();
            let km = it.next().unwrap_or_default();
            let mb = it.next().unwrap_or_default();
            let om = it.next().unwrap_or_default();
            (Ok(it.collect::<Vec<_>>()), Some((km, mb, om)))
        }
        (other, _) => (other, None),
    };
    let (key_m_cell, mbits, m_mant, bufs) = match (&res, extra) {
        (Err(_), _) => {
            gpu.recycle(Pool::Storage, [wide_m, wide_v, key_m, maxbits, out_m]);
            return Err(tail.finish(gpu, res).err().unwrap_or(GpuError::Lost));
        }
        (Ok(_), Some((km, mb, om))) => {
            gpu.recycle(Pool::Storage, [out_m]);
            (
                known_key(bytemuck::pod_read_unaligned(&km[..4])),
                known_key(bytemuck::pod_read_unaligned(&mb[..4])),
                Mant::Host(bytemuck::pod_collect_to_vec(&om)),
                None,
            )
        }
        (Ok(_), None) => (
            gpu.defer_key(&key_m),
            gpu.defer_key(&maxbits),
            Mant::Dev(out_m),
            Some((key_m.clone(), maxbits.clone())),
        ),
    };
    let (key_m_buf, mbits_buf) = bufs.unzip();
    gpu.recycle(Pool::Storage, [wide_m, wide_v, key_m, maxbits]);
    let r_out = tail.finish(gpu, res)?;
    Ok(Moments {
        m: WideResult {
            mant: m_mant,
            key: key_m_cell,
            key_buf: key_m_buf,
            target: 15,
        },
        r: r_out,
        mbits,
        mbits_buf,
    })
}

/// Submission 2: `(p' mantissas, shift)` with `exp = p.exp − 16 + shift` (the caller
/// checked the bounds above).
#[allow(clippy::too_many_arguments)] // the kernel's operands and scalars, plus `keep`
pub(crate) fn params(
    gpu: &Gpu,
    p: Src<'_>,
    m2: Src<'_>,
    r2: Src<'_>,
    sh: i32,
    alpha_q40: i64,
    decay_q40: i64,
    keep: bool,
    patch: Option<&Patch<'_>>,
) -> Result<WideResult, GpuError> {
    let count = p.len();
    if count == 0 {
        return WideResult::empty(gpu, keep);
    }
    let (groups, gx) = grid_1d(gpu, "adamw", count)?;
    let (al, dc) = (alpha_q40 as u64, decay_q40 as u64);
    let u: [u32; 20] = [
        u32_of("elements", count)?,
        gx,
        23,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        sh as u32,
        0,
        al as u32,
        (al >> 32) as u32,
        dc as u32,
        (dc >> 32) as u32,
    ];
    let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
    let tail = WideOut::new(gpu, count, 23, keep)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&u))?;
    if let Some(patch) = patch {
        exps::pre(gpu, patch, &uniform)?;
    }
    let (bp, bm, br) = (p.bind(gpu)?, m2.bind(gpu)?, r2.bind(gpu)?);
    let n4 = count as u64 * 4;
    let res = submit(
        gpu,
        "adamw",
        &[&tail.key],
        &[
            Dispatch {
                shader: &ADAMW,
                entry: "adam_p",
                bindings: vec![
                    (0, &uniform, 80),
                    (1, bm.buf(), n4),
                    (3, br.buf(), n4),
                    (4, bp.buf(), n4),
                    (9, &tail.sums, count as u64 * 8),
                    (10, &tail.key, 4),
                ],
                groups,
            },
            tail.dispatch(),
        ],
        &tail.reads(false),
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    release(gpu, [bp, bm, br]);
    tail.finish(gpu, res)
}
