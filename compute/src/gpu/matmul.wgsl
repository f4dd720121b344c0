// Batched integer matmul with exact 64-bit sums (leam contract "B16 x B16").
// C[b][i][j] = sum_t A[b][i][t] * B[b][t][j], with any strides (transposes are strides).
// Inputs are B16 mantissas (|x| <= 32767), so each product is below 2^30 in magnitude and two
// of them add without overflow in i32; pairs are then added into the 64-bit sum with explicit
// carries. The sums are exact, hence independent of tiling and order. The pass also reduces
// the requantization key (see quant_key64) with integer atomicMax, which is order-independent.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_rs: u32,
    a_cs: u32,
    a_bs: u32,
    b_rs: u32,
    b_cs: u32,
    b_bs: u32,
    _pad0: u32,
    _pad1: u32,
}

// Each workgroup computes a 32 x 32 block of C with 16 x 16 invocations, each invocation a
// 2 x 2 sub-block (rows ly, ly + 16; columns lx, lx + 16): half the shared-memory loads per
// multiply of a one-output-per-invocation kernel. K advances in steps of 16.
const TILE: u32 = 32u;
const HALF: u32 = 16u;
const TK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<i32>;
@group(0) @binding(2) var<storage, read> b: array<i32>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> key: array<atomic<u32>, 1>;

var<workgroup> ta: array<array<i32, 16>, 32>;
var<workgroup> tb: array<array<i32, 32>, 16>;
var<workgroup> wg_key: atomic<u32>;

fn load_a(bt: u32, row: u32, kk: u32) -> i32 {
    if (row < p.m && kk < p.k) {
        return a[bt * p.a_bs + row * p.a_rs + kk * p.a_cs];
    }
    return 0;
}

fn load_b(bt: u32, kk: u32, col: u32) -> i32 {
    if (kk < p.k && col < p.n) {
        return b[bt * p.b_bs + kk * p.b_rs + col * p.b_cs];
    }
    return 0;
}

fn store(bt: u32, row: u32, col: u32, s: vec2<u32>) {
    if (row < p.m && col < p.n) {
        sums[(bt * p.m + row) * p.n + col] = s;
        atomicMax(&wg_key, quant_key64(s, 15u));
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul_sums(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let r0 = wid.y * TILE + lid.y;
    let c0 = wid.x * TILE + lid.x;
    let bt = wid.z;
    if (lid.x == 0u && lid.y == 0u) {
        atomicStore(&wg_key, 0u);
    }
    workgroupBarrier();
    var s00 = vec2<u32>(0u, 0u);
    var s01 = vec2<u32>(0u, 0u);
    var s10 = vec2<u32>(0u, 0u);
    var s11 = vec2<u32>(0u, 0u);
    let tiles = (p.k + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let k0 = t * TK;
        // A tile 32 x 16 and B tile 16 x 32: two elements per invocation each.
        ta[lid.y][lid.x] = load_a(bt, r0, k0 + lid.x);
        ta[lid.y + HALF][lid.x] = load_a(bt, r0 + HALF, k0 + lid.x);
        tb[lid.y][lid.x] = load_b(bt, k0 + lid.y, c0);
        tb[lid.y][lid.x + HALF] = load_b(bt, k0 + lid.y, c0 + HALF);
        workgroupBarrier();
        for (var j = 0u; j < TK; j = j + 2u) {
            let a0 = ta[lid.y][j];
            let a0n = ta[lid.y][j + 1u];
            let a1 = ta[lid.y + HALF][j];
            let a1n = ta[lid.y + HALF][j + 1u];
            let b0 = tb[j][lid.x];
            let b0n = tb[j + 1u][lid.x];
            let b1 = tb[j][lid.x + HALF];
            let b1n = tb[j + 1u][lid.x + HALF];
            // Each pair of products is below 2^31 in magnitude: exact in i32.
            s00 = add64_i32(s00, a0 * b0 + a0n * b0n);
            s01 = add64_i32(s01, a0 * b1 + a0n * b1n);
            s10 = add64_i32(s10, a1 * b0 + a1n * b0n);
            s11 = add64_i32(s11, a1 * b1 + a1n * b1n);
        }
        workgroupBarrier();
    }
    store(bt, r0, c0, s00);
    store(bt, r0, c0 + HALF, s01);
    store(bt, r0 + HALF, c0, s10);
    store(bt, r0 + HALF, c0 + HALF, s11);
    workgroupBarrier();
    if (lid.x == 0u && lid.y == 0u) {
        atomicMax(&key[0], atomicLoad(&wg_key));
    }
}
