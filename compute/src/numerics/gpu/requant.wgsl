// Requantization of exact 64-bit sums to B16 mantissas (leam contract):
// mantissas bounded by 2^bits - 1: k = quant_shift(max key, bits), out[i] = rhe(s[i], k). Integer only; each element independent.

struct RequantParams {
    count: u32,
    groups_x: u32,
    bits: u32,
    _pad1: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> rp: RequantParams;
@group(0) @binding(1) var<storage, read> rsums: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read> rkey: array<u32, 1>;
@group(0) @binding(3) var<storage, read_write> rout: array<i32>;

@compute @workgroup_size(256, 1, 1)
fn requant(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let i = (wid.y * rp.groups_x + wid.x) * WG + lid.x;
    if (i >= rp.count) {
        return;
    }
    rout[i] = rhe64(rsums[i], quant_shift(rkey[0], rp.bits));
}
