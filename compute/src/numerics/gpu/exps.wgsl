// Exponents of device-resident tensors, kept on the device (exps.rs). Each resident tensor has
// a 16-byte exponent buffer: [exponent, bit-length bound, 0, 0]. Two single-invocation entries:
// - exp_pre, before an op whose shifts depend on its inputs' exponents: computes those shifts
//   (the same formulas as the host's, in mod.rs) into `rec`, which the host then copies into
//   the op's uniform block inside the same batch;
// - exp_post, after an op: the result's exponent `pre + shift(key)` and bound `out_bits(key)`
//   from the inputs' exponents and the op's requantization key (exps::Formula on the host).
// Range checks stay on the host, which evaluates the same formulas once the batch has run and
// replays the step on its checked path if one fails; here every shift is clamped so that any
// input gives bounded work. Integer only.

struct XpParams {
    kind: u32,
    // requantization target width (post)
    width: u32,
    // post: 0 = no key (bound of input 0), 1 = key in k0, 2 = key given as key_val
    keyed: u32,
    key_val: u32,
    // second key (AdamW's r' reads max bitlen): 1 = in k1, 2 = given as key2_val
    keyed2: u32,
    key2_val: u32,
    n_in: u32,
    c: i32,
    coef: vec4<i32>,
}

@group(0) @binding(0) var<uniform> xp: XpParams;
@group(0) @binding(1) var<storage, read> x0: array<i32, 4>;
@group(0) @binding(2) var<storage, read> x1: array<i32, 4>;
@group(0) @binding(3) var<storage, read> x2: array<i32, 4>;
@group(0) @binding(4) var<storage, read> k0: array<u32, 1>;
@group(0) @binding(5) var<storage, read> k1: array<u32, 1>;
@group(0) @binding(6) var<storage, read_write> xout: array<i32, 4>;
@group(0) @binding(7) var<storage, read_write> rec: array<u32, 16>;

// Formula kinds (exps::Kind).
const LINEAR: u32 = 0u;
const ALIGN: u32 = 1u;
const ADAM_R: u32 = 2u;
const MAX: u32 = 3u;
const CLIP: u32 = 4u;
// Patch kinds (exps::PatchKind).
const P_ADD: u32 = 10u;
const P_EXP: u32 = 11u;
const P_SOFTMAX: u32 = 12u;
const P_NEG: u32 = 13u;
const P_LN_BWD: u32 = 14u;
const P_RESCALE: u32 = 15u;
const P_ADAM_M: u32 = 16u;
const P_ADAM_P: u32 = 17u;
const P_CLIP: u32 = 18u;

const ADD_ALIGN_BITS_MAX: i32 = 40;

// kernels::align_exp
fn align_exp(ea: i32, eb: i32) -> i32 {
    return max(min(ea, eb), max(ea, eb) - ADD_ALIGN_BITS_MAX);
}

// adamw::align_shifts: (left, right) aligning e to e0, the right shift clamped to 63 (the
// left one too: only a host-rejected input exceeds it).
fn align_shifts(e: i32, e0: i32) -> vec2<u32> {
    if (e >= e0) {
        return vec2<u32>(u32(min(e - e0, 63)), 0u);
    }
    return vec2<u32>(0u, u32(min(e0 - e, 63)));
}

fn ins(i: u32) -> vec2<i32> {
    if (i == 0u) {
        return vec2<i32>(x0[0], x0[1]);
    }
    if (i == 1u) {
        return vec2<i32>(x1[0], x1[1]);
    }
    return vec2<i32>(x2[0], x2[1]);
}

fn max_of_ins() -> i32 {
    var m = x0[0];
    if (xp.n_in > 1u) {
        m = max(m, x1[0]);
    }
    if (xp.n_in > 2u) {
        m = max(m, x2[0]);
    }
    return m;
}

// AdamW's r' exponent before its key: ev/2 with ev = e1 − 30 made even (e1 aligns 2·r.exp and
// 2·g.exp), minus s = max(0, 100 − mbits) / 2.
fn adam_ev(er: i32, eg: i32) -> i32 {
    let e1 = max(min(er, eg), max(er, eg) - ADD_ALIGN_BITS_MAX);
    var ev = e1 - 30;
    if (ev % 2 != 0) {
        ev = ev - 1;
    }
    return ev;
}

@compute @workgroup_size(1, 1, 1)
fn exp_post() {
    let e0 = x0[0];
    let e1 = x1[0];
    let e2 = x2[0];
    var pre: i32;
    var key2 = xp.key2_val;
    if (xp.keyed2 == 1u) {
        key2 = k1[0];
    }
    switch xp.kind {
        case 1u: {
            pre = xp.c + align_exp(e0, e1);
        }
        case 2u: {
            pre = adam_ev(2 * e0, 2 * e1) / 2 - max(0, 100 - i32(key2)) / 2;
        }
        case 3u: {
            pre = max_of_ins();
        }
        // clipping: e0 − 30 · applied (the second key)
        case 4u: {
            pre = e0 - 30 * i32(min(key2, 1u));
        }
        default: {
            pre = xp.c;
            if (xp.n_in > 0u) {
                pre = pre + xp.coef.x * e0;
            }
            if (xp.n_in > 1u) {
                pre = pre + xp.coef.y * e1;
            }
            if (xp.n_in > 2u) {
                pre = pre + xp.coef.z * e2;
            }
        }
    }
    if (xp.keyed == 0u) {
        xout[0] = pre;
        xout[1] = x0[1];
    } else {
        var key = xp.key_val;
        if (xp.keyed == 1u) {
            key = k0[0];
        }
        let shift = quant_shift(key, xp.width);
        var bits = xp.width;
        if (shift == 0u) {
            bits = key >> 1u;
        }
        xout[0] = pre + i32(shift);
        xout[1] = i32(bits);
    }
    xout[2] = 0;
    xout[3] = 0;
}

@compute @workgroup_size(1, 1, 1)
fn exp_pre() {
    let a = ins(0u);
    let b = ins(1u);
    let c = ins(2u);
    switch xp.kind {
        // add: OpParams cols, rows, bits, c_lo, c_hi = la, ra, bits, lb, rb.
        case 10u: {
            let e = align_exp(a.x, b.x);
            let sa = align_shifts(a.x, e);
            let sb = align_shifts(b.x, e);
            rec[0] = sa.x;
            rec[1] = sa.y;
            rec[2] = u32(xp.c);
            rec[3] = sb.x;
            rec[4] = sb.y;
        }
        // gelu, gelu_bwd: k = x.exp
        case 11u: {
            rec[0] = bitcast<u32>(a.x);
        }
        // softmax, cross-entropy: s = clamp(30 − x.exp, −100, 100)
        case 12u: {
            rec[0] = bitcast<u32>(clamp(30 - a.x, -100, 100));
        }
        // softmax_bwd: sh = −p.exp, within [0, c]
        case 13u: {
            rec[0] = u32(clamp(-a.x, 0, xp.c));
        }
        // layernorm_bwd: sh = −2·xhat.exp, within [0, c]
        case 14u: {
            rec[0] = u32(clamp(-2 * a.x, 0, xp.c));
        }
        // rescale to the largest exponent of the inputs: k = min(max − x.exp, 63)
        case 15u: {
            rec[0] = u32(clamp(max_of_ins() - a.x, 0, 63));
        }
        // AdamW moments (inputs m, g, r): odd, then the four alignments.
        case 16u: {
            let e0 = align_exp(a.x, b.x);
            let er = 2 * c.x;
            let eg = 2 * b.x;
            let e1 = max(min(er, eg), max(er, eg) - ADD_ALIGN_BITS_MAX);
            let ev = e1 - 30;
            rec[0] = select(0u, 1u, ev % 2 != 0);
            let s0 = align_shifts(a.x, e0);
            let s1 = align_shifts(b.x, e0);
            let s2 = align_shifts(er, e1);
            let s3 = align_shifts(eg, e1);
            rec[1] = s0.x;
            rec[2] = s0.y;
            rec[3] = s1.x;
            rec[4] = s1.y;
            rec[5] = s2.x;
            rec[6] = s2.y;
            rec[7] = s3.x;
            rec[8] = s3.y;
        }
        // AdamW parameters (inputs p, m', r'): sh = (p.exp − 16) − (m'.exp − r'.exp − 70)
        case 17u: {
            rec[0] = bitcast<u32>(clamp((a.x - 16) - (b.x - c.x - 70), -128, 127));
        }
        // scale by the clip coefficient (input [applied, c, 0, 0]): c, or 1 when not clipping
        case 18u: {
            rec[0] = select(1u, bitcast<u32>(a.y), a.x == 1);
            rec[1] = 0u;
        }
        default: {}
    }
}
