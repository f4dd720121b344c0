// The uniform of the `OpParams` programs (ops.wgsl, gelu.wgsl, softmax.wgsl): the layout of
// `ops::params` on the host. c_lo/c_hi is a signed 64-bit constant (lo, hi) or, per kernel,
// two u32 arguments; k a shift or exponent; groups_x the x extent of the dispatch grid.

struct OpParams {
    count: u32,
    cols: u32,
    rows: u32,
    bits: u32,
    c_lo: u32,
    c_hi: u32,
    k: u32,
    groups_x: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> op: OpParams;

// Linear invocation index of a 1-D dispatch laid out as a 2-D grid of workgroups.
fn index1(w: vec3<u32>, l: u32) -> u32 {
    return (w.y * op.groups_x + w.x) * WG + l;
}
