// 64-bit integer helpers for leam's bit-exact kernels.
// WGSL has no i64: a signed 64-bit value is (lo: u32, hi: i32) in two's complement, a magnitude
// is vec2<u32>(lo, hi). All integer operations below are exact (WGSL integer arithmetic wraps
// modulo 2^32 by spec, and carries are propagated explicitly). No floating point anywhere.

// s += p for a signed 32-bit p (sign-extended).
fn add64_i32(s: vec2<u32>, p: i32) -> vec2<u32> {
    let plo = bitcast<u32>(p);
    let phi = select(0u, 0xffffffffu, p < 0);
    let lo = s.x + plo;
    let carry = select(0u, 1u, lo < plo);
    return vec2<u32>(lo, s.y + phi + carry);
}

// s + t, both two's complement 64-bit.
fn add64(s: vec2<u32>, t: vec2<u32>) -> vec2<u32> {
    let lo = s.x + t.x;
    let carry = select(0u, 1u, lo < t.x);
    return vec2<u32>(lo, s.y + t.y + carry);
}

fn is_neg64(s: vec2<u32>) -> bool {
    return (s.y & 0x80000000u) != 0u;
}

// |s| of a two's complement 64-bit value (|i64::MIN| does not occur: sums stay below 2^62).
fn mag64(s: vec2<u32>) -> vec2<u32> {
    if (is_neg64(s)) {
        let lo = ~s.x + 1u;
        let hi = ~s.y + select(0u, 1u, lo == 0u);
        return vec2<u32>(lo, hi);
    }
    return s;
}

// Number of significant bits of a magnitude (0 for 0).
fn bitlen64(m: vec2<u32>) -> u32 {
    if (m.y != 0u) {
        return 64u - countLeadingZeros(m.y);
    }
    return 32u - countLeadingZeros(m.x);
}

// m >> s for 0 <= s < 64 (shift amounts of 32 or more are split: WGSL masks them).
fn shr64(m: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return m;
    }
    if (s >= 32u) {
        return vec2<u32>(m.y >> (s - 32u), 0u);
    }
    return vec2<u32>((m.x >> s) | (m.y << (32u - s)), m.y >> s);
}

// m << s for 0 <= s < 64, two's complement (the caller guarantees no overflow).
fn shl64(m: vec2<u32>, s: u32) -> vec2<u32> {
    if (s == 0u) {
        return m;
    }
    if (s >= 32u) {
        return vec2<u32>(0u, m.x << (s - 32u));
    }
    return vec2<u32>(m.x << s, (m.y << s) | (m.x >> (32u - s)));
}

// Whether any of the lowest n bits of m is set (0 <= n < 64).
fn low_bits_nonzero64(m: vec2<u32>, n: u32) -> bool {
    if (n == 0u) {
        return false;
    }
    if (n < 32u) {
        return (m.x & ((1u << n) - 1u)) != 0u;
    }
    if (n == 32u) {
        return m.x != 0u;
    }
    return m.x != 0u || (m.y & ((1u << (n - 32u)) - 1u)) != 0u;
}

// The requantization key of one exact sum for mantissas bounded by 2^bits - 1:
// 2 * bitlen(|s|) + f, where f = 1 when bitlen > bits and the top bits+1 bits of |s| are all
// ones (then |s| / 2^(bitlen - bits) rounds half to even up to 2^bits, one bit too many).
// The maximum key over a tensor gives bitlen(max|s|) and whether max|s| rounds up, so the
// integer atomicMax over keys (order-independent) decides the contract's shift exactly.
fn quant_key64(s: vec2<u32>, bits: u32) -> u32 {
    let m = mag64(s);
    let l = bitlen64(m);
    var f = 0u;
    if (l > bits) {
        let top = shr64(m, l - bits - 1u).x;
        if (top == (1u << (bits + 1u)) - 1u) {
            f = 1u;
        }
    }
    return l * 2u + f;
}

// The shift k of the contract's requantization (fixed::requant_shift) from the tensor's
// maximum key: k = max(0, bitlen - bits), plus one when max|s| / 2^k rounds above 2^bits - 1.
fn quant_shift(key: u32, bits: u32) -> u32 {
    let l = key >> 1u;
    if (l <= bits) {
        return 0u;
    }
    return l - bits + (key & 1u);
}

// sign-extend an i32 to 64 bits.
fn sext64(x: i32) -> vec2<u32> {
    return vec2<u32>(bitcast<u32>(x), select(0u, 0xffffffffu, x < 0));
}

// Two's complement negation.
fn neg64(s: vec2<u32>) -> vec2<u32> {
    let lo = ~s.x + 1u;
    return vec2<u32>(lo, ~s.y + select(0u, 1u, lo == 0u));
}

// Full 32 x 32 -> 64-bit unsigned product from 16-bit halves (WGSL has no mul-high).
fn mul32x32(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

// Unsigned comparison a >= b of 64-bit magnitudes.
fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y > b.y || (a.y == b.y && a.x >= b.x);
}

// a - b modulo 2^64.
fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x - b.x;
    return vec2<u32>(lo, a.y - b.y - select(0u, 1u, a.x < b.x));
}

// m / 2^k rounded half to even for a magnitude, full 64 bits (0 <= k < 64).
fn rhe64m(m: vec2<u32>, k: u32) -> vec2<u32> {
    var q = shr64(m, k);
    if (k > 0u) {
        let round_bit = shr64(m, k - 1u).x & 1u;
        if (round_bit == 1u && (low_bits_nonzero64(m, k - 1u) || (q.x & 1u) == 1u)) {
            q = add64(q, vec2<u32>(1u, 0u));
        }
    }
    return q;
}

// m / 2^k rounded half to even for a magnitude, low 32 bits (the result is < 2^32).
fn rhe64u(m: vec2<u32>, k: u32) -> u32 {
    return rhe64m(m, k).x;
}

// s / 2^k rounded half to even (symmetric in the sign), for results that fit in i32.
fn rhe64(s: vec2<u32>, k: u32) -> i32 {
    let v = bitcast<i32>(rhe64u(mag64(s), k));
    return select(v, -v, is_neg64(s));
}

// x aligned to a common exponent: x << left (exact) or rhe(x, right).
fn align64(x: i32, left: u32, right: u32) -> vec2<u32> {
    if (left > 0u) {
        return shl64(sext64(x), left);
    }
    return sext64(rhe64(sext64(x), right));
}

// n / d rounded half to even (fixed::div_rhe) for a magnitude n < 2^nbits given as
// vec3<u32>(lo, mid, hi) (nbits <= 96), 0 < d < 2^63 and a quotient < 2^64: restoring long
// division, one numerator bit per step from the top (integer-exact, fixed order).
fn div_rhe_bits(n: vec3<u32>, nbits: u32, d: vec2<u32>) -> vec2<u32> {
    var r = vec2<u32>(0u, 0u);
    var q = vec2<u32>(0u, 0u);
    for (var i = 0u; i < nbits; i = i + 1u) {
        let b = nbits - 1u - i;
        let bit = (n[b / 32u] >> (b % 32u)) & 1u;
        r = shl64(r, 1u);
        r.x = r.x | bit;
        q = shl64(q, 1u);
        if (ge64(r, d)) {
            r = sub64(r, d);
            q.x = q.x | 1u;
        }
    }
    let twice = shl64(r, 1u);
    if (ge64(twice, d) && (twice.x != d.x || twice.y != d.y || (q.x & 1u) == 1u)) {
        q = add64(q, vec2<u32>(1u, 0u));
    }
    return q;
}

// div_rhe_bits for a 64-bit magnitude n.
fn div_rhe64q(n: vec2<u32>, d: vec2<u32>) -> vec2<u32> {
    return div_rhe_bits(vec3<u32>(n, 0u), 64u, d);
}

// div_rhe64q for quotients < 2^32 (its low word).
fn div_rhe64(n: vec2<u32>, d: vec2<u32>) -> u32 {
    return div_rhe64q(n, d).x;
}
