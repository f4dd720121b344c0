// One AdamW update exactly as Kernels::adamw / AdamStep specify (kernels.rs), in two
// submissions: (1) the new first moment m' (96-bit signed sums, own requantization) and the
// new sqrt of the second moment r' (128-bit sums, the tensor's max bit length by atomicMax,
// integer square root, requantization); (2) the parameter update from m', r' (64/96-bit,
// within the bounds the host checks). Integer only; one invocation per element.

struct AdParams {
    count: u32,
    groups_x: u32,
    bits: u32,
    odd: u32,
    la_m: u32,
    ra_m: u32,
    la_g: u32,
    ra_g: u32,
    la_r: u32,
    ra_r: u32,
    la_g2: u32,
    ra_g2: u32,
    b1: u32,
    b2: u32,
    sh: u32,
    _pad: u32,
    alpha_lo: u32,
    alpha_hi: u32,
    decay_lo: u32,
    decay_hi: u32,
}

const WG: u32 = 256u;
const ONE_Q30: u32 = 0x40000000u;

@group(0) @binding(0) var<uniform> ap: AdParams;
@group(0) @binding(1) var<storage, read> m_in: array<i32>;
@group(0) @binding(2) var<storage, read> g_in: array<i32>;
@group(0) @binding(3) var<storage, read> r_in: array<i32>;
@group(0) @binding(4) var<storage, read> p_in: array<i32>;
@group(0) @binding(5) var<storage, read_write> wide_m: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> key_m: array<atomic<u32>, 1>;
@group(0) @binding(7) var<storage, read_write> wide_v: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read_write> maxbits: array<atomic<u32>, 1>;
@group(0) @binding(9) var<storage, read_write> sums: array<vec2<u32>>;
@group(0) @binding(10) var<storage, read_write> key: array<atomic<u32>, 1>;
@group(0) @binding(11) var<storage, read_write> out_m: array<i32>;

fn index1(w: vec3<u32>, l: u32) -> u32 {
    return (w.y * ap.groups_x + w.x) * WG + l;
}

// ---- 128-bit magnitudes (vec4<u32>) ----
fn add128(a: vec4<u32>, b: vec4<u32>) -> vec4<u32> {
    var r = vec4<u32>(0u, 0u, 0u, 0u);
    var c = 0u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let s1 = a[i] + b[i];
        let c1 = select(0u, 1u, s1 < a[i]);
        let s2 = s1 + c;
        let c2 = select(0u, 1u, s2 < s1);
        r[i] = s2;
        c = c1 + c2;
    }
    return r;
}

fn sub128(a: vec4<u32>, b: vec4<u32>) -> vec4<u32> {
    var r = vec4<u32>(0u, 0u, 0u, 0u);
    var br = 0u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let d1 = a[i] - b[i];
        let b1 = select(0u, 1u, a[i] < b[i]);
        let d2 = d1 - br;
        let b2 = select(0u, 1u, d1 < br);
        r[i] = d2;
        br = b1 + b2;
    }
    return r;
}

fn ge128(a: vec4<u32>, b: vec4<u32>) -> bool {
    for (var i = 3; i >= 0; i = i - 1) {
        if (a[i] != b[i]) {
            return a[i] > b[i];
        }
    }
    return true;
}

fn shl128_1(a: vec4<u32>) -> vec4<u32> {
    return vec4<u32>(a.x << 1u, (a.y << 1u) | (a.x >> 31u), (a.z << 1u) | (a.y >> 31u), (a.w << 1u) | (a.z >> 31u));
}

fn shr128_1(a: vec4<u32>) -> vec4<u32> {
    return vec4<u32>((a.x >> 1u) | (a.y << 31u), (a.y >> 1u) | (a.z << 31u), (a.z >> 1u) | (a.w << 31u), a.w >> 1u);
}

fn shl128(a: vec4<u32>, s: u32) -> vec4<u32> {
    var r = a;
    for (var i = 0u; i < s; i = i + 1u) {
        r = shl128_1(r);
    }
    return r;
}

fn bitlen128(m: vec4<u32>) -> u32 {
    if (m.w != 0u) {
        return 128u - countLeadingZeros(m.w);
    }
    return bitlen96(m.xyz);
}

// 96-bit magnitude times u32: 128 bits.
fn mul96x32(a: vec3<u32>, b: u32) -> vec4<u32> {
    let m0 = mul32x32(a.x, b);
    let m1 = mul32x32(a.y, b);
    let m2 = mul32x32(a.z, b);
    let r = add128(vec4<u32>(m0.x, m0.y, m1.y, m2.y), vec4<u32>(0u, m1.x, m2.x, 0u));
    return r;
}

// floor(sqrt(t)) for t < 2^126, digit by digit (fixed::isqrt gives the same unique value).
fn isqrt128(t: vec4<u32>) -> vec4<u32> {
    var num = t;
    var res = vec4<u32>(0u, 0u, 0u, 0u);
    var bit = vec4<u32>(0u, 0u, 0u, 1u << 30u); // 2^126
    for (var i = 0u; i < 64u; i = i + 1u) {
        let rb = add128(res, bit);
        if (ge128(num, rb)) {
            num = sub128(num, rb);
            res = add128(shr128_1(res), bit);
        } else {
            res = shr128_1(res);
        }
        bit = shr128_1(shr128_1(bit));
    }
    return res;
}

// ---- submission 1 ----

// m' wide: b1 m + (2^30 - b1) g after alignment, as (|w|, sign) in 96 bits.
@compute @workgroup_size(256, 1, 1)
fn adam_m(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i >= ap.count) {
        return;
    }
    let ma = align64(m_in[i], ap.la_m, ap.ra_m);
    let ga = align64(g_in[i], ap.la_g, ap.ra_g);
    let tm = mul64x32(mag64(ma), ap.b1);
    let tg = mul64x32(mag64(ga), ONE_Q30 - ap.b1);
    let nm = is_neg64(ma);
    let ng = is_neg64(ga);
    var mag: vec3<u32>;
    var neg: bool;
    if (nm == ng) {
        mag = add96(tm, tg);
        neg = nm;
    } else if (ge96(tm, tg)) {
        mag = sub96(tm, tg);
        neg = nm;
    } else {
        mag = sub96(tg, tm);
        neg = ng;
    }
    neg = neg && any(mag != vec3<u32>(0u, 0u, 0u));
    wide_m[i] = vec4<u32>(mag, select(0u, 1u, neg));
    atomicMax(&key_m[0], quant_key96(mag, 15u));
}

@compute @workgroup_size(256, 1, 1)
fn requant_m(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i >= ap.count) {
        return;
    }
    let kv = atomicLoad(&key_m[0]);
    let e = wide_m[i];
    let q = bitcast<i32>(rhe96(e.xyz, quant_shift(kv, 15u)).x);
    out_m[i] = select(q, -q, e.w == 1u);
}

// r'^2 wide: b2 r^2 + (2^30 - b2) g^2 after alignment (<< 1 when the exponent is odd).
@compute @workgroup_size(256, 1, 1)
fn adam_v(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i >= ap.count) {
        return;
    }
    let r = r_in[i];
    let g = g_in[i];
    let r2 = u32(r * r);
    let g2 = u32(g * g);
    var ra: vec3<u32>;
    if (ap.la_r > 0u) {
        ra = shl96(vec3<u32>(r2, 0u, 0u), ap.la_r);
    } else {
        ra = vec3<u32>(u32(rhe64(vec2<u32>(r2, 0u), ap.ra_r)), 0u, 0u);
    }
    var ga: vec3<u32>;
    if (ap.la_g2 > 0u) {
        ga = shl96(vec3<u32>(g2, 0u, 0u), ap.la_g2);
    } else {
        ga = vec3<u32>(u32(rhe64(vec2<u32>(g2, 0u), ap.ra_g2)), 0u, 0u);
    }
    var v = add128(mul96x32(ra, ap.b2), mul96x32(ga, ONE_Q30 - ap.b2));
    if (ap.odd == 1u) {
        v = shl128_1(v);
    }
    wide_v[i] = v;
    atomicMax(&maxbits[0], bitlen128(v));
}

// q = isqrt(w << 2s), s = max(0, (100 - bitlen(max w)) / 2).
@compute @workgroup_size(256, 1, 1)
fn adam_sqrt(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i >= ap.count) {
        return;
    }
    let lb = atomicLoad(&maxbits[0]);
    var s = 0u;
    if (lb < 100u) {
        s = (100u - lb) / 2u;
    }
    let q = isqrt128(shl128(wide_v[i], 2u * s));
    let v = vec2<u32>(q.x, q.y);
    sums[i] = v;
    atomicMax(&key[0], quant_key64(v, 15u));
}

// ---- submission 2 ----

// p' = (p << 16) - rhe(decay p, 24) - shift_sat(alpha u, sh), u = div_rhe(m' 2^30, r' + 1);
// the host guarantees |alpha u| / 2^sh < 2^61, |alpha| < 2^50 and |decay| < 2^40.
@compute @workgroup_size(256, 1, 1)
fn adam_p(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i >= ap.count) {
        return;
    }
    let pm = p_in[i];
    let mm = m_in[i];
    let rm = r_in[i];
    // u (|u| < 2^45)
    let mmag = u32(abs(mm));
    let num = vec2<u32>(mmag << 30u, mmag >> 2u);
    let den = vec2<u32>(u32(rm) + 1u, 0u);
    let um = div_rhe64q(num, den);
    let un = mm < 0;
    // a = shift_sat(alpha u, sh)
    let al = vec2<u32>(ap.alpha_lo, ap.alpha_hi);
    let alm = mag64(al);
    let prod = add96(mul64x32(um, alm.x), shl96(mul64x32(um, alm.y), 32u)); // < 2^95
    let an = un != is_neg64(al);
    let sh = bitcast<i32>(ap.sh);
    var am: vec2<u32>;
    if (sh >= 96) {
        am = vec2<u32>(0u, 0u);
    } else if (sh >= 0) {
        let q = rhe96(prod, u32(sh));
        am = vec2<u32>(q.x, q.y);
    } else {
        let q = shl96(prod, u32(-sh));
        am = vec2<u32>(q.x, q.y);
    }
    let a = select(am, neg64(am), an);
    // d = rhe(decay p, 24)
    let dc = vec2<u32>(ap.decay_lo, ap.decay_hi);
    let dcm = mag64(dc);
    let pmag = u32(abs(pm));
    let dp = add64(mul32x32(dcm.x, pmag), vec2<u32>(0u, dcm.y * pmag)); // < 2^63
    let dm = rhe64m(dp, 24u);
    let d = select(dm, neg64(dm), (pm < 0) != is_neg64(dc));
    let np = add64(add64(shl64(sext64(pm), 16u), neg64(d)), neg64(a));
    sums[i] = np;
    atomicMax(&key[0], quant_key64(np, ap.bits));
}
