//! Exponents of device-resident tensors, on both sides (`exps.wgsl`).
//!
//! A resident tensor's exponent is data-dependent: `pre + shift(key)`, where `pre` follows
//! from its inputs' exponents ([`Formula`]) and the key is the requantization key its op
//! reduced on the device. The host knows it once the batch that computes the key has run
//! ([`Exp`]); the device knows it at once: `exp_post` writes it into the tensor's exponent
//! buffer ([`DevExp`]), right after the op, in the same batch. Ops whose shifts depend on their
//! inputs' exponents ([`PatchKind`]) get those shifts from `exp_pre`, copied into their
//! uniform block before they run, so a chain of such ops needs no round trip to the host.
//!
//! The two sides compute the same integers by the same formulas (this file and
//! `exps.wgsl`); a test compares every resident tensor's device exponent with the host's. The
//! host keeps the range checks: it evaluates them when the keys arrive (`resident::Deferred`)
//! and the caller replays the step on the checked path if one fails.

use std::sync::{Arc, OnceLock};

use super::device::{DevBuf, Gpu, GpuError, Pool};
use super::exec::{key_shift, Dispatch};
use super::shaders::EXPS;
use crate::numerics::kernels::{align_exp, checked_exp, KernelError, ADD_ALIGN_BITS_MAX};

/// Bytes of a tensor's exponent buffer: `[exponent, bit-length bound, 0, 0]` as `i32`.
pub(crate) const EXP_BYTES: u64 = 16;
/// Words `exp_pre` can write.
const REC_WORDS: u64 = 16;

/// How the exponent before the key follows from the inputs' (`exps.wgsl` uses the same
/// numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `c + Σ coef_i · e_i`.
    Linear = 0,
    /// `c + align_exp(e_0, e_1)` (add, AdamW's m').
    Align = 1,
    /// AdamW's r' (inputs r, g; the second key is `max bitlen` of the sums).
    AdamR = 2,
    /// `max e_i`, no key; the bound of input 0 (rescaling to a common exponent).
    Max = 3,
    /// Clipping: `e_0 − 30 · applied` (`applied`, 0 or 1, is the second key).
    Clip = 4,
}

/// A result's exponent before its requantization shift, from its inputs' exponents.
#[derive(Clone, Debug)]
pub(crate) struct Formula {
    kind: Kind,
    c: i64,
    coef: [i64; 3],
    ins: Vec<Exp>,
}

impl Formula {
    /// `c + Σ coef · e` over at most three inputs.
    pub(crate) fn linear(c: i64, terms: &[(i64, Exp)]) -> Self {
        assert!(
            terms.len() <= 3,
            "an exponent formula takes at most 3 inputs"
        );
        let mut coef = [0; 3];
        for (k, (cf, _)) in coef.iter_mut().zip(terms) {
            *k = *cf;
        }
        Formula {
            kind: Kind::Linear,
            c,
            coef,
            ins: terms.iter().map(|(_, e)| e.clone()).collect(),
        }
    }

    /// `c + align_exp(a, b)`.
    pub(crate) fn align(c: i64, a: Exp, b: Exp) -> Self {
        Formula {
            kind: Kind::Align,
            c,
            coef: [0; 3],
            ins: vec![a, b],
        }
    }

    /// AdamW's `r'`: `ev/2 − max(0, 100 − mbits)/2` (`mbits` is the second key).
    pub(crate) fn adam_r(r: Exp, g: Exp) -> Self {
        Formula {
            kind: Kind::AdamR,
            c: 0,
            coef: [0; 3],
            ins: vec![r, g],
        }
    }

    /// A gradient scaled by the clip coefficient: `g − 30` when clipped, `g` when not
    /// (`clip.rs`; whether it clipped is the second key).
    pub(crate) fn clip(g: Exp) -> Self {
        Formula {
            kind: Kind::Clip,
            c: 0,
            coef: [0; 3],
            ins: vec![g],
        }
    }

    /// The largest of the inputs' exponents (at most three).
    pub(crate) fn max(ins: Vec<Exp>) -> Self {
        assert!(
            !ins.is_empty() && ins.len() <= 3,
            "an exponent formula takes 1 to 3 inputs"
        );
        Formula {
            kind: Kind::Max,
            c: 0,
            coef: [0; 3],
            ins,
        }
    }

    /// Whether a requantization key enters (all but [`Kind::Max`]).
    fn keyed(&self) -> bool {
        self.kind != Kind::Max
    }

    /// The exponent before the key, from the inputs' `(exponent, bound)`.
    fn pre(&self, v: &[(i32, u32)], key2: u32) -> i64 {
        let e = |i: usize| i64::from(v[i].0);
        match self.kind {
            Kind::Linear => self.c + (0..v.len()).map(|i| self.coef[i] * e(i)).sum::<i64>(),
            Kind::Align => self.c + i64::from(align_exp(v[0].0, v[1].0)),
            Kind::AdamR => {
                let (er, eg) = (2 * e(0), 2 * e(1));
                let gap = i64::from(ADD_ALIGN_BITS_MAX);
                let e1 = er.min(eg).max(er.max(eg) - gap);
                let mut ev = e1 - 30;
                if ev % 2 != 0 {
                    ev -= 1;
                }
                ev / 2 - (100 - i64::from(key2)).max(0) / 2
            }
            Kind::Max => (0..v.len()).map(e).max().unwrap_or(0),
            Kind::Clip => e(0) - 30 * i64::from(key2.min(1)),
        }
    }
}

/// The exponent of a resident tensor as the host sees it, with a bound of its mantissas' bit
/// length: known, or waiting for the keys of the batch that computes it.
#[derive(Clone, Debug)]
pub(crate) enum Exp {
    Known { exp: i32, bits: u32 },
    Later(Arc<LaterExp>),
}

#[derive(Debug)]
pub(crate) struct LaterExp {
    op: &'static str,
    f: Formula,
    key: Arc<OnceLock<u32>>,
    key2: Option<Arc<OnceLock<u32>>>,
    target: u32,
    done: OnceLock<(i32, u32)>,
}

impl Exp {
    /// `f` plus the shift of `key` (requantization to `target` bits): known at once if
    /// everything it needs is.
    pub(crate) fn of(
        op: &'static str,
        f: Formula,
        key: Arc<OnceLock<u32>>,
        key2: Option<Arc<OnceLock<u32>>>,
        target: u32,
    ) -> Result<Exp, KernelError> {
        let e = Exp::Later(Arc::new(LaterExp {
            op,
            f,
            key,
            key2,
            target,
            done: OnceLock::new(),
        }));
        Ok(match e.now() {
            Some(r) => {
                let (exp, bits) = r?;
                Exp::Known { exp, bits }
            }
            None => e,
        })
    }

    /// `(exponent, bit-length bound)` if every key it depends on is known.
    pub(crate) fn now(&self) -> Option<Result<(i32, u32), KernelError>> {
        match self {
            Exp::Known { exp, bits } => Some(Ok((*exp, *bits))),
            Exp::Later(l) => {
                if let Some(&v) = l.done.get() {
                    return Some(Ok(v));
                }
                let key = if l.f.keyed() { *l.key.get()? } else { 0 };
                let key2 = match &l.key2 {
                    Some(k) => *k.get()?,
                    None => 0,
                };
                let mut v = Vec::with_capacity(l.f.ins.len());
                for t in &l.f.ins {
                    match t.now()? {
                        Ok(x) => v.push(x),
                        Err(err) => return Some(Err(err)),
                    }
                }
                let pre = l.f.pre(&v, key2);
                let (shift, bits) = if l.f.keyed() {
                    let (s, b) = key_shift(key, l.target);
                    (i64::from(s), b)
                } else {
                    (0, v[0].1)
                };
                Some(checked_exp(l.op, pre, shift).map(|x| {
                    let _ = l.done.set((x, bits));
                    (x, bits)
                }))
            }
        }
    }
}

/// A resident tensor's exponent: the host's view and the device buffer `exp_post` writes.
/// Copies of a tensor (gathers, head layouts) share it.
#[derive(Clone, Debug)]
pub(crate) struct DevExp {
    pub(crate) host: Exp,
    pub(crate) buf: Arc<DevBuf>,
}

/// A requantization key for `exp_post`: its cell and, while the batch that computes it is
/// open, its buffer.
pub(crate) struct Key {
    pub(crate) cell: Arc<OnceLock<u32>>,
    pub(crate) buf: Option<wgpu::Buffer>,
}

impl Key {
    /// A key with no device buffer (known, or never needed).
    pub(crate) fn cell(cell: Arc<OnceLock<u32>>) -> Self {
        Key { cell, buf: None }
    }
}

impl DevExp {
    /// A known exponent, written to a new exponent buffer (the queue writes it before the
    /// batch; the buffer is fresh, so nothing recorded earlier reads it).
    pub(crate) fn known(gpu: &Gpu, exp: i32, bits: u32) -> Result<DevExp, GpuError> {
        let buf = gpu.buffer(Pool::Storage, EXP_BYTES)?;
        let words: [i32; 4] = [exp, bits as i32, 0, 0];
        gpu.queue
            .write_buffer(&buf, 0, bytemuck::cast_slice(&words));
        gpu.count_upload(EXP_BYTES);
        Ok(DevExp {
            host: Exp::Known { exp, bits },
            buf: gpu.keep(buf),
        })
    }

    /// The exponent of an op's result just recorded: `f` plus the shift of `key`, written on
    /// the device by `exp_post` in the same batch (or at once when the host already knows
    /// it). `bufs`: the exponent buffers of `f`'s inputs, in order.
    pub(crate) fn post(
        gpu: &Gpu,
        op: &'static str,
        f: Formula,
        bufs: &[&wgpu::Buffer],
        key: Key,
        key2: Option<Key>,
        target: u32,
    ) -> Result<DevExp, KernelError> {
        let err = |e| super::kernel_error(op, e);
        let host = Exp::of(
            op,
            f.clone(),
            Arc::clone(&key.cell),
            key2.as_ref().map(|k| Arc::clone(&k.cell)),
            target,
        )?;
        if let Exp::Known { exp, bits } = host {
            return DevExp::known(gpu, exp, bits).map_err(err);
        }
        assert_eq!(bufs.len(), f.ins.len(), "one exponent buffer per input");
        let out = gpu.buffer(Pool::Storage, EXP_BYTES).map_err(err)?;
        let _lock = gpu.op_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock: a key whose cell is still empty belongs to the open batch, so its
        // buffer has not gone back to the pool (it would have been read with the batch).
        let (keyed, key_val, k0) = key_source(f.keyed(), &key);
        let (keyed2, key2_val, k1) = match &key2 {
            Some(k) => key_source(true, k),
            None => (0, 0, None),
        };
        let mut p = [0u32; 12];
        p[0] = f.kind as u32;
        p[1] = target;
        p[2] = keyed;
        p[3] = key_val;
        p[4] = keyed2;
        p[5] = key2_val;
        p[6] = f.ins.len() as u32;
        p[7] = f.c as i32 as u32;
        for (w, c) in p[8..11].iter_mut().zip(f.coef) {
            *w = c as i32 as u32;
        }
        let uniform = gpu.uniform(bytemuck::cast_slice(&p)).map_err(err)?;
        let dummy = gpu.dummy();
        let x = |i: usize| bufs.get(i).copied().unwrap_or(dummy);
        let bindings = vec![
            (0, &uniform, 48),
            (1, x(0), EXP_BYTES),
            (2, x(1), EXP_BYTES),
            (3, x(2), EXP_BYTES),
            (4, k0.unwrap_or(dummy), 4),
            (5, k1.unwrap_or(dummy), 4),
            (6, &out, EXP_BYTES),
        ];
        let res = super::exec::submit(
            gpu,
            op,
            &[],
            &[Dispatch {
                shader: &EXPS,
                entry: "exp_post",
                bindings,
                groups: [1, 1, 1],
            }],
            &[],
        );
        gpu.recycle(Pool::Uniform, [uniform]);
        if let Err(e) = res {
            gpu.recycle(Pool::Storage, [out]);
            return Err(err(e));
        }
        Ok(DevExp {
            host,
            buf: gpu.keep(out),
        })
    }
}

/// `(keyed, value, buffer)` for `exp_post`: the value when the host has it, else the buffer.
fn key_source(keyed: bool, k: &Key) -> (u32, u32, Option<&wgpu::Buffer>) {
    if !keyed {
        return (0, 0, None);
    }
    match (k.cell.get(), &k.buf) {
        (Some(&v), _) => (2, v, None),
        (None, Some(b)) => (1, 0, Some(b)),
        (None, None) => unreachable!("a pending key comes with its buffer"),
    }
}

/// Shifts an op takes from its inputs' exponents (`exp_pre` in `exps.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    /// add: `la, ra, bits, lb, rb` (`c`: bits).
    Add = 10,
    /// gelu, gelu_bwd: `k = x.exp`.
    Exp = 11,
    /// softmax, cross-entropy: `s = clamp(30 − x.exp, −100, 100)`.
    Softmax = 12,
    /// softmax_bwd: `sh = −p.exp` within `[0, c]`.
    Neg = 13,
    /// layernorm_bwd: `sh = −2·xhat.exp` within `[0, c]`.
    LnBwd = 14,
    /// rescale to the largest exponent of the inputs (input 0 is rescaled).
    Rescale = 15,
    /// AdamW moments (inputs m, g, r): `odd` and the four alignments.
    AdamM = 16,
    /// AdamW parameters (inputs p, m', r'): `sh`.
    AdamP = 17,
    /// scale by the clip coefficient (input: its buffer `[applied, c, 0, 0]`): `c_lo, c_hi`
    /// = `c, 0` when clipping, else `1, 0`.
    Clip = 18,
}

impl PatchKind {
    /// Words written, and their byte offset in the op's uniform block.
    fn layout(self) -> (u64, u64) {
        match self {
            PatchKind::Add => (5, 4),
            PatchKind::Exp => (1, 24),
            PatchKind::Softmax => (1, 24),
            PatchKind::Neg => (1, 16),
            PatchKind::LnBwd => (1, 16),
            PatchKind::Rescale => (1, 24),
            PatchKind::AdamM => (9, 12),
            PatchKind::AdamP => (1, 56),
            PatchKind::Clip => (2, 16),
        }
    }
}

/// Shifts an op computes on the device from its inputs' exponent buffers, because the host
/// does not know those exponents yet.
pub(crate) struct Patch<'a> {
    pub(crate) kind: PatchKind,
    pub(crate) c: i32,
    pub(crate) ins: Vec<&'a wgpu::Buffer>,
    /// Byte offset of the first word in the uniform, when not the kind's usual one
    /// (cross-entropy's `s`).
    pub(crate) offset: Option<u64>,
}

/// Records `exp_pre` for `patch` and the copy of its words into `uniform`, before the op that
/// reads it (the caller holds `op_lock` and records the op next).
pub(crate) fn pre(gpu: &Gpu, patch: &Patch<'_>, uniform: &wgpu::Buffer) -> Result<(), GpuError> {
    let (words, offset) = patch.kind.layout();
    let offset = patch.offset.unwrap_or(offset);
    let mut p = [0u32; 12];
    p[0] = patch.kind as u32;
    p[6] = patch.ins.len() as u32;
    p[7] = patch.c as u32;
    let xu = gpu.uniform(bytemuck::cast_slice(&p))?;
    let rec = gpu.buffer(Pool::Storage, REC_WORDS * 4)?;
    let dummy = gpu.dummy();
    let x = |i: usize| patch.ins.get(i).copied().unwrap_or(dummy);
    let groups = [1, 1, 1];
    let res = super::exec::submit(
        gpu,
        "exp_pre",
        &[],
        &[Dispatch {
            shader: &EXPS,
            entry: "exp_pre",
            bindings: vec![
                (0, &xu, 48),
                (1, x(0), EXP_BYTES),
                (2, x(1), EXP_BYTES),
                (3, x(2), EXP_BYTES),
                (7, &rec, REC_WORDS * 4),
            ],
            groups,
        }],
        &[],
    )
    .and_then(|_| {
        gpu.record("exp_pre", |enc| {
            enc.copy_buffer_to_buffer(&rec, 0, uniform, offset, words * 4);
        })
    });
    gpu.recycle(Pool::Uniform, [xu]);
    gpu.recycle(Pool::Storage, [rec]);
    res
}
