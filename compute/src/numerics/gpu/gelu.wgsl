// GELU (sigmoid form x * sigma(1.702 x)) and its backward, exactly as Kernels::gelu and
// Kernels::gelu_bwd specify (kernels.rs, gelu_sigma): Q16 argument z, Q16 power of two y,
// E = exp2_neg_q31(y) from the integer tables, sigma by rounded 64/64-bit division. Every
// intermediate is bounded so that emulated 64-bit arithmetic is exact (bounds noted inline).

// 1.702 in Q16 (kernels::GELU_K_Q16).
const GELU_K_Q16: u32 = 111542u;
// Clamp of z (kernels::EXP_ARG_SAT = 2^40), as its bit length.
const EXP_ARG_SAT_BITS: u32 = 40u;

@group(0) @binding(1) var<storage, read> in0: array<i32>;
@group(0) @binding(2) var<storage, read> in1: array<i32>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> key: array<atomic<u32>, 1>;

var<workgroup> wkey: atomic<u32>;

fn put(i: u32, s: vec2<u32>) {
    sums[i] = s;
    atomicMax(&wkey, quant_key64(s, op.bits));
}

struct Sigma {
    // |z| (Q16) and its sign; |z| <= 2^40.
    zmag: vec2<u32>,
    zneg: bool,
    // sigma in Q31, 0 <= sigma <= 2^31.
    s: u32,
}

// kernels::gelu_sigma(m, exp) with exp = op.k as i32.
fn gelu_sigma(m: i32) -> Sigma {
    let e = bitcast<i32>(op.k);
    let mk = mul32x32(u32(abs(m)), GELU_K_Q16); // < 2^32
    var zmag: vec2<u32>;
    if (e <= 0) {
        zmag = vec2<u32>(rhe64u(mk, min(u32(-e), 63u)), 0u);
    } else if (mk.x == 0u && mk.y == 0u) {
        zmag = mk;
    } else if (bitlen64(mk) + u32(e) > EXP_ARG_SAT_BITS) {
        zmag = vec2<u32>(0u, 1u << (EXP_ARG_SAT_BITS - 32u)); // saturated at 2^40
    } else {
        zmag = shl64(mk, u32(e));
    }
    let zneg = m < 0;
    // E = 0 once y >= 2^22, i.e. for every |z| >= 2^23 (|z| * log2(e) >= 2^22 there).
    let big = zmag.y != 0u || zmag.x >= (1u << 23u);
    var en = 0u;
    if (!big) {
        let y = rhe64u(mul32x32(zmag.x, LOG2E_Q30), 30u); // < 2^24
        en = exp2_neg_q31(y);
    }
    let d = add64(vec2<u32>(en, 0u), vec2<u32>(0x80000000u, 0u)); // 2^31 + E <= 2^32
    var s: u32;
    if (!zneg) {
        s = div_rhe64(vec2<u32>(0u, 0x40000000u), d); // 2^62 / d
    } else {
        s = div_rhe64(vec2<u32>(en << 31u, en >> 1u), d); // E * 2^31 / d
    }
    return Sigma(zmag, zneg, s);
}

// |a| * b as signed 64-bit for |a| < 2^32 given as (magnitude, sign) and b < 2^32.
fn signed_mul(amag: u32, aneg: bool, b: u32) -> vec2<u32> {
    let p = mul32x32(amag, b);
    return select(p, neg64(p), aneg);
}

// Kernels::gelu: out = m * sigma, wide, requantized from x.exp - 31.
@compute @workgroup_size(256, 1, 1)
fn gelu(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    if (l == 0u) {
        atomicStore(&wkey, 0u);
    }
    workgroupBarrier();
    let i = index1(w, l);
    if (i < op.count) {
        let m = in0[i];
        let sg = gelu_sigma(m);
        put(i, signed_mul(u32(abs(m)), m < 0, sg.s));
    }
    workgroupBarrier();
    if (l == 0u) {
        atomicMax(&key[0], atomicLoad(&wkey));
    }
}

// Kernels::gelu_bwd: t = rhe(s (2^31 - s), 31), g = s + rhe(z t, 16), out = dy * g.
@compute @workgroup_size(256, 1, 1)
fn gelu_bwd(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    if (l == 0u) {
        atomicStore(&wkey, 0u);
    }
    workgroupBarrier();
    let i = index1(w, l);
    if (i < op.count) {
        let sg = gelu_sigma(in0[i]);
        let t = rhe64u(mul32x32(sg.s, 0x80000000u - sg.s), 31u); // <= 2^30
        // t = 0 whenever |z| >= 2^23 (sigma is exactly 0 or 2^31 there), so z t < 2^53.
        var zt = vec2<u32>(0u, 0u);
        if (t != 0u) {
            zt = mul32x32(sg.zmag.x, t);
        }
        let r = rhe64m(zt, 16u);
        // g = s +- r as signed 64-bit (|g| < 2^38), then dy * g (< 2^53).
        let g = add64(vec2<u32>(sg.s, 0u), select(r, neg64(r), sg.zneg));
        let gm = mag64(g);
        let d = in1[i];
        let dm = u32(abs(d));
        let p = add64(mul32x32(dm, gm.x), vec2<u32>(0u, dm * gm.y));
        put(i, select(p, neg64(p), (d < 0) != is_neg64(g)));
    }
    workgroupBarrier();
    if (l == 0u) {
        atomicMax(&key[0], atomicLoad(&wkey));
    }
}
