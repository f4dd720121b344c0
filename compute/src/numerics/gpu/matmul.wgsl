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

// Each workgroup computes a 32 x 32 block of C with 8 x 8 invocations, each invocation a
// 4 x 4 sub-block (rows ly + 8i, columns lx + 8j): a quarter of the shared-memory loads per
// multiply of a one-output-per-invocation kernel. K advances in steps of 16.
const TILE: u32 = 32u;
const STEP: u32 = 8u;
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

@compute @workgroup_size(8, 8, 1)
fn matmul_sums(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let rb = wid.y * TILE;
    let cb = wid.x * TILE;
    let bt = wid.z;
    if (li == 0u) {
        atomicStore(&wg_key, 0u);
    }
    workgroupBarrier();
    var acc: array<vec2<u32>, 16>;
    for (var q = 0u; q < 16u; q = q + 1u) {
        acc[q] = vec2<u32>(0u, 0u);
    }
    let tiles = (p.k + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let k0 = t * TK;
        // A tile 32 x 16 and B tile 16 x 32: eight elements per invocation each.
        for (var e = 0u; e < 8u; e = e + 1u) {
            let idx = li + e * 64u;
            let ar = idx / TK;
            let ac = idx % TK;
            ta[ar][ac] = load_a(bt, rb + ar, k0 + ac);
            let br = idx / TILE;
            let bc = idx % TILE;
            tb[br][bc] = load_b(bt, k0 + br, cb + bc);
        }
        workgroupBarrier();
        for (var j = 0u; j < TK; j = j + 2u) {
            var av: array<vec2<i32>, 4>;
            var bv: array<vec2<i32>, 4>;
            for (var u = 0u; u < 4u; u = u + 1u) {
                av[u] = vec2<i32>(ta[lid.y + STEP * u][j], ta[lid.y + STEP * u][j + 1u]);
                bv[u] = vec2<i32>(tb[j][lid.x + STEP * u], tb[j + 1u][lid.x + STEP * u]);
            }
            for (var u = 0u; u < 4u; u = u + 1u) {
                for (var v = 0u; v < 4u; v = v + 1u) {
                    // Each pair of products is below 2^31 in magnitude: exact in i32.
                    let pair = av[u].x * bv[v].x + av[u].y * bv[v].y;
                    acc[u * 4u + v] = add64_i32(acc[u * 4u + v], pair);
                }
            }
        }
        workgroupBarrier();
    }
    for (var u = 0u; u < 4u; u = u + 1u) {
        for (var v = 0u; v < 4u; v = v + 1u) {
            store(bt, rb + lid.y + STEP * u, cb + lid.x + STEP * v, acc[u * 4u + v]);
        }
    }
    workgroupBarrier();
    if (li == 0u) {
        atomicMax(&key[0], atomicLoad(&wg_key));
    }
}
