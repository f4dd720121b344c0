//! Host side of `adamw.wgsl`: two submissions (moments, then parameters), see the shader.

use super::device::{Gpu, GpuError, Pool};
use super::exec::{grid_1d, quant_shift, submit, u32_of, Dispatch, WideOut};
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
    pub(crate) m: (Vec<i32>, u32),
    pub(crate) r: (Vec<i32>, u32),
    pub(crate) s: i64,
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
    g: &[i32],
    m: &[i32],
    r: &[i32],
    shifts_m: [(u32, u32); 2],
    shifts_v: [(u32, u32); 2],
    odd: bool,
    betas: (u32, u32),
) -> Result<Moments, GpuError> {
    let count = g.len();
    if count == 0 {
        return Ok(Moments {
            m: (Vec::new(), 0),
            r: (Vec::new(), 0),
            s: 50,
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
    let tail = WideOut::new(gpu, count, 15)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&p))?;
    let (bm, bg, br) = (
        gpu.upload(bytemuck::cast_slice(m))?,
        gpu.upload(bytemuck::cast_slice(g))?,
        gpu.upload(bytemuck::cast_slice(r))?,
    );
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
    let res = submit(
        gpu,
        "adamw",
        &[&key_m, &maxbits, &tail.key],
        &[
            d(
                "adam_m",
                vec![
                    (0, &uniform, 80),
                    (1, &bm, n4),
                    (2, &bg, n4),
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
                    (2, &bg, n4),
                    (3, &br, n4),
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
        &[
            (&out_m, n4),
            (&key_m, 4),
            (&maxbits, 4),
            (&tail.out, n4),
            (&tail.key, 4),
        ],
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    gpu.recycle(
        Pool::Storage,
        [bm, bg, br, wide_m, wide_v, key_m, maxbits, out_m],
    );
    let (res, extra) = match res {
        Ok(v) => {
            let mut it = v.into_iter();
            let om = it.next().unwrap_or_default();
            let km = it.next().unwrap_or_default();
            let mb = it.next().unwrap_or_default();
            (Ok(it.collect::<Vec<_>>()), Some((om, km, mb)))
        }
        Err(e) => (Err(e), None),
    };
    let r_out = tail.finish(gpu, res)?;
    let (om, km, mb) = extra.unwrap_or_default();
    let key_m: u32 = bytemuck::pod_read_unaligned(&km[..4]);
    let mbits: u32 = bytemuck::pod_read_unaligned(&mb[..4]);
    Ok(Moments {
        m: (bytemuck::pod_collect_to_vec(&om), quant_shift(key_m, 15)),
        r: r_out,
        s: (100 - i64::from(mbits)).max(0) / 2,
    })
}

/// Submission 2: `(p' mantissas, shift)` with `exp = p.exp − 16 + shift` (the caller
/// checked the bounds above).
pub(crate) fn params(
    gpu: &Gpu,
    p: &[i32],
    m2: &[i32],
    r2: &[i32],
    sh: i32,
    alpha_q40: i64,
    decay_q40: i64,
) -> Result<(Vec<i32>, u32), GpuError> {
    let count = p.len();
    if count == 0 {
        return Ok((Vec::new(), 0));
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
    let tail = WideOut::new(gpu, count, 23)?;
    let uniform = gpu.uniform(bytemuck::cast_slice(&u))?;
    let (bp, bm, br) = (
        gpu.upload(bytemuck::cast_slice(p))?,
        gpu.upload(bytemuck::cast_slice(m2))?,
        gpu.upload(bytemuck::cast_slice(r2))?,
    );
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
                    (1, &bm, n4),
                    (3, &br, n4),
                    (4, &bp, n4),
                    (9, &tail.sums, count as u64 * 8),
                    (10, &tail.key, 4),
                ],
                groups,
            },
            tail.dispatch(),
        ],
        &tail.reads(),
    );
    gpu.recycle(Pool::Uniform, [uniform]);
    gpu.recycle(Pool::Storage, [bp, bm, br]);
    tail.finish(gpu, res)
}
