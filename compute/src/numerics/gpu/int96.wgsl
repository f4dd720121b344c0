// 96-bit unsigned helpers for leam's bit-exact kernels (prepended after int64.wgsl where a
// kernel needs them): a magnitude is vec3<u32>(lo, mid, hi). Integer only, exact.

fn add96(a: vec3<u32>, b: vec3<u32>) -> vec3<u32> {
    let x = a.x + b.x;
    let c0 = select(0u, 1u, x < a.x);
    let y1 = a.y + b.y;
    let c1a = select(0u, 1u, y1 < a.y);
    let y = y1 + c0;
    let c1b = select(0u, 1u, y < y1);
    return vec3<u32>(x, y, a.z + b.z + c1a + c1b);
}

fn sub96(a: vec3<u32>, b: vec3<u32>) -> vec3<u32> {
    let x = a.x - b.x;
    let br0 = select(0u, 1u, a.x < b.x);
    let y1 = a.y - b.y;
    let br1a = select(0u, 1u, a.y < b.y);
    let y = y1 - br0;
    let br1b = select(0u, 1u, y1 < br0);
    return vec3<u32>(x, y, a.z - b.z - br1a - br1b);
}

fn ge96(a: vec3<u32>, b: vec3<u32>) -> bool {
    if (a.z != b.z) {
        return a.z > b.z;
    }
    if (a.y != b.y) {
        return a.y > b.y;
    }
    return a.x >= b.x;
}

// p >> s for 0 <= s < 96.
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

// p << s for 0 <= s < 96 (bits above 2^96 are dropped).
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

fn bitlen96(m: vec3<u32>) -> u32 {
    if (m.z != 0u) {
        return 96u - countLeadingZeros(m.z);
    }
    if (m.y != 0u) {
        return 64u - countLeadingZeros(m.y);
    }
    return 32u - countLeadingZeros(m.x);
}

// The requantization key of a 96-bit magnitude (see quant_key64).
fn quant_key96(m: vec3<u32>, bits: u32) -> u32 {
    let l = bitlen96(m);
    var f = 0u;
    if (l > bits) {
        if (shr96(m, l - bits - 1u).x == (1u << (bits + 1u)) - 1u) {
            f = 1u;
        }
    }
    return l * 2u + f;
}

// m / 2^s rounded half to even, 0 <= s < 96, full 96-bit result.
fn rhe96(m: vec3<u32>, s: u32) -> vec3<u32> {
    if (s == 0u) {
        return m;
    }
    var q = shr96(m, s);
    let round_bit = shr96(m, s - 1u).x & 1u;
    let sticky = any(shl96(shr96(m, s - 1u), s - 1u) != m);
    if (round_bit == 1u && (sticky || (q.x & 1u) == 1u)) {
        q = add96(q, vec3<u32>(1u, 0u, 0u));
    }
    return q;
}

// 64-bit magnitude times u32: 96 bits.
fn mul64x32(a: vec2<u32>, b: u32) -> vec3<u32> {
    let m0 = mul32x32(a.x, b);
    let m1 = mul32x32(a.y, b);
    let mid = m0.y + m1.x;
    return vec3<u32>(m0.x, mid, m1.y + select(0u, 1u, mid < m0.y));
}
