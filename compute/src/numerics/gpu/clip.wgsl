// Global gradient-norm clipping coefficient on the device (clip.rs): the integers of
// model::optim::clip_coeff_q30, from every gradient's sum of squares and device exponent, so
// that a training step needs no round trip to the host before its AdamW update. One
// invocation (a few hundred 128-bit steps). Writes [applied, c, 0, 0]: applied = 1 when the
// gradients are scaled by c · 2^-30 (c < 2^30), 0 when they stay as they are.
// 128-bit magnitudes are vec4<u32> (lowest word first). Integer only.

struct ClipParams {
    // gradients
    n: u32,
    // the clip in Q30 (< 2^51), lo and hi words
    clip_lo: u32,
    clip_hi: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> cp: ClipParams;
// Σ m² per gradient (< 2^58), 64-bit (lo, hi)
@group(0) @binding(1) var<storage, read> sums: array<vec2<u32>>;
// each gradient's exponent buffer (exps.rs: [exponent, bound, 0, 0])
@group(0) @binding(2) var<storage, read> gexps: array<vec4<i32>>;
@group(0) @binding(3) var<storage, read_write> coeff: array<u32, 4>;

fn u128_of(x: vec2<u32>) -> vec4<u32> {
    return vec4<u32>(x.x, x.y, 0u, 0u);
}

fn is_zero128(a: vec4<u32>) -> bool {
    return (a.x | a.y | a.z | a.w) == 0u;
}

fn add128(a: vec4<u32>, b: vec4<u32>) -> vec4<u32> {
    var r = vec4<u32>(0u);
    var carry = 0u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let s = a[i] + b[i];
        let s2 = s + carry;
        carry = select(0u, 1u, s < a[i]) + select(0u, 1u, s2 < s);
        r[i] = s2;
    }
    return r;
}

// a − b for a ≥ b.
fn sub128(a: vec4<u32>, b: vec4<u32>) -> vec4<u32> {
    var r = vec4<u32>(0u);
    var borrow = 0u;
    for (var i = 0u; i < 4u; i = i + 1u) {
        let d = a[i] - b[i];
        let d2 = d - borrow;
        borrow = select(0u, 1u, a[i] < b[i]) + select(0u, 1u, d < borrow);
        r[i] = d2;
    }
    return r;
}

// a ≥ b, and a = b.
fn ge128(a: vec4<u32>, b: vec4<u32>) -> bool {
    for (var j = 0u; j < 4u; j = j + 1u) {
        let i = 3u - j;
        if (a[i] != b[i]) {
            return a[i] > b[i];
        }
    }
    return true;
}

fn eq128(a: vec4<u32>, b: vec4<u32>) -> bool {
    return all(a == b);
}

fn bitlen128(a: vec4<u32>) -> u32 {
    for (var j = 0u; j < 4u; j = j + 1u) {
        let i = 3u - j;
        if (a[i] != 0u) {
            return 32u * i + 32u - countLeadingZeros(a[i]);
        }
    }
    return 0u;
}

// a << s (bits above 2^128 are lost; 0 for s ≥ 128).
fn shl128(a: vec4<u32>, s: u32) -> vec4<u32> {
    var r = vec4<u32>(0u);
    if (s >= 128u) {
        return r;
    }
    let w = s / 32u;
    let b = s % 32u;
    for (var i = w; i < 4u; i = i + 1u) {
        var v = a[i - w] << b;
        if (b > 0u && i > w) {
            v = v | (a[i - w - 1u] >> (32u - b));
        }
        r[i] = v;
    }
    return r;
}

// a >> s (0 for s ≥ 128).
fn shr128(a: vec4<u32>, s: u32) -> vec4<u32> {
    var r = vec4<u32>(0u);
    if (s >= 128u) {
        return r;
    }
    let w = s / 32u;
    let b = s % 32u;
    for (var i = 0u; i + w < 4u; i = i + 1u) {
        var v = a[i + w] >> b;
        if (b > 0u && i + w + 1u < 4u) {
            v = v | (a[i + w + 1u] << (32u - b));
        }
        r[i] = v;
    }
    return r;
}

// fixed::rhe for a magnitude: a / 2^k rounded half to even (1 ≤ k ≤ 127).
fn rhe128(a: vec4<u32>, k: u32) -> vec4<u32> {
    let q = shr128(a, k);
    let r = sub128(a, shl128(q, k));
    let half = shl128(vec4<u32>(1u, 0u, 0u, 0u), k - 1u);
    if (ge128(r, half) && (!eq128(r, half) || (q.x & 1u) == 1u)) {
        return add128(q, vec4<u32>(1u, 0u, 0u, 0u));
    }
    return q;
}

// fixed::isqrt: ⌊√a⌋, one result bit per step from the top.
fn isqrt128(a: vec4<u32>) -> vec4<u32> {
    var rem = a;
    var res = vec4<u32>(0u);
    let top = bitlen128(a);
    if (top == 0u) {
        return res;
    }
    var bit = shl128(vec4<u32>(1u, 0u, 0u, 0u), (top - 1u) & ~1u);
    for (var i = 0u; i < 64u; i = i + 1u) {
        if (is_zero128(bit)) {
            break;
        }
        let t = add128(res, bit);
        if (ge128(rem, t)) {
            rem = sub128(rem, t);
            res = add128(shr128(res, 1u), bit);
        } else {
            res = shr128(res, 1u);
        }
        bit = shr128(bit, 2u);
    }
    return res;
}

// fixed::div_rhe for magnitudes, d > 0 and n < 2^127: restoring long division, then the
// remainder rounds half to even.
fn div_rhe128(n: vec4<u32>, d: vec4<u32>) -> vec4<u32> {
    var r = vec4<u32>(0u);
    var q = vec4<u32>(0u);
    let nb = bitlen128(n);
    for (var i = 0u; i < nb; i = i + 1u) {
        let b = nb - 1u - i;
        r = shl128(r, 1u);
        r.x = r.x | ((n[b / 32u] >> (b % 32u)) & 1u);
        q = shl128(q, 1u);
        if (ge128(r, d)) {
            r = sub128(r, d);
            q.x = q.x | 1u;
        }
    }
    let twice = shl128(r, 1u);
    if (ge128(twice, d) && (!eq128(twice, d) || (q.x & 1u) == 1u)) {
        q = add128(q, vec4<u32>(1u, 0u, 0u, 0u));
    }
    return q;
}

fn write_coeff(applied: bool, c: u32) {
    coeff[0] = select(0u, 1u, applied);
    coeff[1] = select(0u, c, applied);
    coeff[2] = 0u;
    coeff[3] = 0u;
}

@compute @workgroup_size(1, 1, 1)
fn clip_coeff() {
    // E0 = max(2·exp + bitlen(ss)) − 100 over the non-zero sums, made even.
    var any = false;
    var top = 0;
    for (var i = 0u; i < cp.n; i = i + 1u) {
        let ss = sums[i];
        if ((ss.x | ss.y) != 0u) {
            let t = 2 * gexps[i].x + i32(bitlen64(ss));
            top = select(t, max(top, t), any);
            any = true;
        }
    }
    if (!any) {
        write_coeff(false, 0u);
        return;
    }
    var e0 = top - 100;
    if (e0 % 2 != 0) {
        e0 = e0 - 1;
    }
    // total = Σ ss · 2^(2·exp − E0): a left shift, or rhe for negative shifts.
    var total = vec4<u32>(0u);
    for (var i = 0u; i < cp.n; i = i + 1u) {
        let ss = sums[i];
        if ((ss.x | ss.y) == 0u) {
            continue;
        }
        let sh = 2 * gexps[i].x - e0;
        if (sh >= 0) {
            total = add128(total, shl128(u128_of(ss), u32(sh)));
        } else {
            total = add128(total, rhe128(u128_of(ss), u32(min(-sh, 127))));
        }
    }
    // The norm is n · 2^half; the coefficient clip · 2^−30 / norm in Q30.
    let n = isqrt128(total);
    let half = e0 / 2;
    let clip = vec4<u32>(cp.clip_lo, cp.clip_hi, 0u, 0u);
    var c: vec4<u32>;
    if (half <= 0) {
        if (-half > 60) {
            // the norm is below 2^−60 · clip: no clipping
            write_coeff(false, 0u);
            return;
        }
        c = div_rhe128(shl128(clip, u32(-half)), n);
    } else {
        if (half > 60) {
            write_coeff(true, 0u);
            return;
        }
        c = div_rhe128(clip, shl128(n, u32(half)));
    }
    // Applied only if c < 2^30.
    write_coeff((c.y | c.z | c.w) == 0u && c.x < (1u << 30u), c.x);
}
