// Layer normalization exactly as Kernels::layernorm specifies (kernels.rs): per row
// A = sum m, d = C m - A, S = sum d^2, R = isqrt(floor(S 2^32 / C)), w = div_rhe(d 2^40, R).
// One invocation per row, columns in index order. The host admits C <= 256, which bounds
// |d| < 2^24, S < 2^56, S 2^32 < 2^88 (96-bit), R < 2^44 and |d| 2^40 < 2^64.

struct LnParams {
    rows: u32,
    cols: u32,
    bits: u32,
    groups_x: u32,
    // backward: -2 * xhat.exp (the host admits <= 30)
    sh: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> lp: LnParams;
@group(0) @binding(1) var<storage, read> x: array<i32>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> key: array<atomic<u32>, 1>;
@group(0) @binding(9) var<storage, read_write> rout: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> hin: array<i32>;
@group(0) @binding(10) var<storage, read> rin: array<vec2<u32>>;

var<workgroup> wkey: atomic<u32>;

// Fixed one- and two-bit right shifts of 96-bit magnitudes (isqrt96's inner loop).
fn shr96_1(a: vec3<u32>) -> vec3<u32> {
    return vec3<u32>((a.x >> 1u) | (a.y << 31u), (a.y >> 1u) | (a.z << 31u), a.z >> 1u);
}

fn shr96_2(a: vec3<u32>) -> vec3<u32> {
    return vec3<u32>((a.x >> 2u) | (a.y << 30u), (a.y >> 2u) | (a.z << 30u), a.z >> 2u);
}

// floor(sqrt(t)) for t < 2^94, digit by digit (fixed::isqrt gives the same unique value).
fn isqrt96(t: vec3<u32>) -> vec3<u32> {
    var num = t;
    var res = vec3<u32>(0u, 0u, 0u);
    var bit = vec3<u32>(0u, 0u, 1u << 30u); // 2^94
    for (var i = 0u; i < 48u; i = i + 1u) {
        if (ge96(num, add96(res, bit))) {
            num = sub96(num, add96(res, bit));
            res = add96(shr96_1(res), bit);
        } else {
            res = shr96_1(res);
        }
        bit = shr96_2(bit);
    }
    return res;
}

// floor(t / c) for 96-bit t and 0 < c <= 256, one bit per step.
fn div96_small(t: vec3<u32>, c: u32) -> vec3<u32> {
    var q = vec3<u32>(0u, 0u, 0u);
    var r = 0u;
    for (var i = 0u; i < 96u; i = i + 1u) {
        let limb = 2u - i / 32u;
        let sh = 31u - i % 32u;
        let bit = (t[limb] >> sh) & 1u;
        r = (r << 1u) | bit;
        var qb = 0u;
        if (r >= c) {
            r = r - c;
            qb = 1u;
        }
        q = vec3<u32>(q.x << 1u, (q.y << 1u) | (q.x >> 31u), (q.z << 1u) | (q.y >> 31u));
        q.x = q.x | qb;
    }
    return q;
}

@compute @workgroup_size(256, 1, 1)
fn layernorm_rows(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    if (l == 0u) {
        atomicStore(&wkey, 0u);
    }
    workgroupBarrier();
    let row = (w.y * lp.groups_x + w.x) * WG + l;
    if (row < lp.rows) {
        let c = lp.cols;
        let base = row * c;
        var a = 0;
        for (var j = 0u; j < c; j = j + 1u) {
            a = a + x[base + j];
        }
        var s = vec2<u32>(0u, 0u);
        for (var j = 0u; j < c; j = j + 1u) {
            let d = i32(c) * x[base + j] - a;
            let dm = u32(abs(d));
            s = add64(s, mul32x32(dm, dm));
        }
        if (s.x == 0u && s.y == 0u) {
            rout[row] = vec2<u32>(0u, 0u);
            for (var j = 0u; j < c; j = j + 1u) {
                sums[base + j] = vec2<u32>(0u, 0u);
            }
        } else {
            let r96 = isqrt96(div96_small(vec3<u32>(0u, s.x, s.y), c));
            let r = vec2<u32>(r96.x, r96.y);
            rout[row] = r;
            for (var j = 0u; j < c; j = j + 1u) {
                let d = i32(c) * x[base + j] - a;
                let q = div_rhe64(vec2<u32>(0u, u32(abs(d)) << 8u), r);
                let v = select(vec2<u32>(q, 0u), neg64(vec2<u32>(q, 0u)), d < 0);
                sums[base + j] = v;
                atomicMax(&wkey, quant_key64(v, lp.bits));
            }
        }
    }
    workgroupBarrier();
    if (l == 0u) {
        atomicMax(&key[0], atomicLoad(&wkey));
    }
}

// Kernels::layernorm_bwd: per row with R != 0, A = sum g, B = sum g h,
// n = ((C g - A) << sh) - h B (|n| < 2^55), w = div_rhe(n << 24, R).
@compute @workgroup_size(256, 1, 1)
fn layernorm_bwd_rows(
    @builtin(local_invocation_index) l: u32,
    @builtin(workgroup_id) w: vec3<u32>,
) {
    if (l == 0u) {
        atomicStore(&wkey, 0u);
    }
    workgroupBarrier();
    let row = (w.y * lp.groups_x + w.x) * WG + l;
    if (row < lp.rows) {
        let c = lp.cols;
        let base = row * c;
        let rr = rin[row];
        if (rr.x == 0u && rr.y == 0u) {
            for (var j = 0u; j < c; j = j + 1u) {
                sums[base + j] = vec2<u32>(0u, 0u);
            }
        } else {
            var a = 0;
            var bsum = vec2<u32>(0u, 0u);
            for (var j = 0u; j < c; j = j + 1u) {
                a = a + x[base + j];
                bsum = add64_i32(bsum, x[base + j] * hin[base + j]);
            }
            let bm = mag64(bsum); // < 2^38
            for (var j = 0u; j < c; j = j + 1u) {
                let t = shl64(sext64(i32(c) * x[base + j] - a), lp.sh);
                let h = hin[base + j];
                let hm = u32(abs(h));
                let hb = add64(mul32x32(hm, bm.x), vec2<u32>(0u, hm * bm.y));
                let hb_neg = (h < 0) != is_neg64(bsum);
                let n = add64(t, select(neg64(hb), hb, hb_neg));
                let nm = mag64(n);
                // |n| << 24 as 96 bits.
                let n96 = vec3<u32>(nm.x << 24u, (nm.y << 24u) | (nm.x >> 8u), nm.y >> 8u);
                let q = div_rhe_bits(n96, 96u, rr); // 2^16 <= R < 2^62, quotient < 2^63
                let v = select(q, neg64(q), is_neg64(n));
                sums[base + j] = v;
                atomicMax(&wkey, quant_key64(v, lp.bits));
            }
        }
    }
    workgroupBarrier();
    if (l == 0u) {
        atomicMax(&key[0], atomicLoad(&wkey));
    }
}
