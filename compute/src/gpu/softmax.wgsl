// Row softmax exactly as Kernels::softmax specifies (kernels.rs, softmax_exps): per row the
// max mantissa over the used columns, t = mx - m, y = shift_sat(t * scale_q16 * LOG2E_Q30,
// 30 - x.exp) (a 96-bit product here), E = exp2_neg_q31(y) from the integer tables, and
// p = div_rhe(E * 2^30, sum E). One invocation per row; columns in index order.

struct OpParams {
    count: u32,
    cols: u32,
    rows: u32,
    bits: u32,
    // scale_q16
    c_lo: u32,
    // 1 when causal
    c_hi: u32,
    // 30 - x.exp as i32, clamped to [-100, 100] by the host (same results)
    k: u32,
    groups_x: u32,
}

const WG: u32 = 256u;
const LOG2E_Q30: u32 = 1549082005u;
// E = exp2_neg_q31(y) is 0 once y >= 2^22 (y >> 16 >= 64).
const Y_ZERO_BITS: u32 = 22u;

@group(0) @binding(0) var<uniform> op: OpParams;
@group(0) @binding(1) var<storage, read> in0: array<i32>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> key: array<atomic<u32>, 1>;

var<workgroup> wkey: atomic<u32>;

fn rhe64u(m: vec2<u32>, k: u32) -> u32 {
    var q = shr64(m, k).x;
    if (k > 0u) {
        let round_bit = shr64(m, k - 1u).x & 1u;
        if (round_bit == 1u && (low_bits_nonzero64(m, k - 1u) || (q & 1u) == 1u)) {
            q = q + 1u;
        }
    }
    return q;
}

fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x >= b.x);
}

fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x - b.x;
    return vec2<u32>(lo, a.y - b.y - select(0u, 1u, a.x < b.x));
}

// n / d rounded half to even for magnitudes, d > 0, quotient < 2^32 (restoring division).
fn div_rhe64(n: vec2<u32>, d: vec2<u32>) -> u32 {
    var r = vec2<u32>(0u, 0u);
    var q = 0u;
    for (var i = 0u; i < 64u; i = i + 1u) {
        let bit = shr64(n, 63u - i).x & 1u;
        r = shl64(r, 1u);
        r.x = r.x | bit;
        q = q << 1u;
        if (ge64(r, d)) {
            r = sub64(r, d);
            q = q | 1u;
        }
    }
    let twice = shl64(r, 1u);
    if (ge64(twice, d) && (twice.x != d.x || twice.y != d.y || (q & 1u) == 1u)) {
        q = q + 1u;
    }
    return q;
}

fn exp2_neg_q31(y: u32) -> u32 {
    let n = y >> 16u;
    if (n >= 64u) {
        return 0u;
    }
    let f = y & 0xffffu;
    let v = rhe64u(mul32x32(EXP2_HI[f >> 8u], EXP2_LO[f & 255u]), 31u);
    return rhe64u(vec2<u32>(v, 0u), n);
}

// 96-bit magnitudes as vec3<u32> (lo, mid, hi).
fn shr96(p: vec3<u32>, s: u32) -> vec3<u32> {
    var a = p;
    var k = s;
    if (k >= 64u) {
        a = vec3<u32>(a.z, 0u, 0u);
        k = k - 64u;
    } else if (k >= 32u) {
        a = vec3<u32>(a.y, a.z, 0u);
        k = k - 32u;
    }
    if (k == 0u) {
        return a;
    }
    return vec3<u32>((a.x >> k) | (a.y << (32u - k)), (a.y >> k) | (a.z << (32u - k)), a.z >> k);
}

fn shl96(p: vec3<u32>, s: u32) -> vec3<u32> {
    var a = p;
    var k = s;
    if (k >= 64u) {
        a = vec3<u32>(0u, 0u, a.x);
        k = k - 64u;
    } else if (k >= 32u) {
        a = vec3<u32>(0u, a.x, a.y);
        k = k - 32u;
    }
    if (k == 0u) {
        return a;
    }
    return vec3<u32>(a.x << k, (a.y << k) | (a.x >> (32u - k)), (a.z << k) | (a.y >> (32u - k)));
}

// p / 2^s rounded half to even (0 < s < 96).
fn rhe96(p: vec3<u32>, s: u32) -> vec3<u32> {
    var q = shr96(p, s);
    let round_bit = shr96(p, s - 1u).x & 1u;
    let below = shl96(shr96(p, s - 1u), s - 1u);
    let sticky = any(below != p);
    if (round_bit == 1u && (sticky || (q.x & 1u) == 1u)) {
        q.x = q.x + 1u;
        if (q.x == 0u) {
            q.y = q.y + 1u;
            if (q.y == 0u) {
                q.z = q.z + 1u;
            }
        }
    }
    return q;
}

// E for t = mx - m >= 0.
fn softmax_e(t: u32) -> u32 {
    if (t == 0u) {
        return exp2_neg_q31(0u);
    }
    let a = mul32x32(t, op.c_lo); // t * scale < 2^48
    let m0 = mul32x32(a.x, LOG2E_Q30);
    let m1 = mul32x32(a.y, LOG2E_Q30);
    let mid = m0.y + m1.x;
    let p = vec3<u32>(m0.x, mid, m1.y + select(0u, 1u, mid < m0.y)); // < 2^79
    let s = bitcast<i32>(op.k);
    var y: u32;
    if (s > 0) {
        if (s >= 96) {
            y = 0u;
        } else {
            let q = rhe96(p, u32(s));
            if (q.y != 0u || q.z != 0u || q.x >= (1u << Y_ZERO_BITS)) {
                return 0u;
            }
            y = q.x;
        }
    } else {
        if (p.y != 0u || p.z != 0u || p.x >= (1u << Y_ZERO_BITS)) {
            return 0u;
        }
        let l = u32(-s);
        if (32u - countLeadingZeros(p.x) + l > Y_ZERO_BITS) {
            return 0u;
        }
        y = p.x << l;
    }
    return exp2_neg_q31(y);
}

@compute @workgroup_size(256, 1, 1)
fn softmax_rows(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    if (l == 0u) {
        atomicStore(&wkey, 0u);
    }
    workgroupBarrier();
    let r = (w.y * op.groups_x + w.x) * WG + l;
    if (r < op.rows && op.cols > 0u) {
        let base = r * op.cols;
        var used = op.cols;
        if (op.c_hi == 1u) {
            used = r % op.cols + 1u;
        }
        var mx = in0[base];
        for (var j = 1u; j < used; j = j + 1u) {
            mx = max(mx, in0[base + j]);
        }
        var total = vec2<u32>(0u, 0u);
        for (var j = 0u; j < used; j = j + 1u) {
            total = add64(total, vec2<u32>(softmax_e(u32(mx - in0[base + j])), 0u));
        }
        for (var j = 0u; j < op.cols; j = j + 1u) {
            var p = 0u;
            if (j < used) {
                let e = softmax_e(u32(mx - in0[base + j]));
                p = div_rhe64(vec2<u32>(e << 30u, e >> 2u), total);
            }
            let s = vec2<u32>(p, 0u);
            sums[base + j] = s;
            atomicMax(&wkey, quant_key64(s, op.bits));
        }
    }
    workgroupBarrier();
    if (l == 0u) {
        atomicMax(&key[0], atomicLoad(&wkey));
    }
}
