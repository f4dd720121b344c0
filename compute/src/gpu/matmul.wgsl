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

const TILE: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<i32>;
@group(0) @binding(2) var<storage, read> b: array<i32>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> key: array<atomic<u32>, 1>;

var<workgroup> ta: array<array<i32, 16>, 16>;
var<workgroup> tb: array<array<i32, 16>, 16>;
var<workgroup> wg_key: atomic<u32>;

@compute @workgroup_size(16, 16, 1)
fn matmul_sums(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let row = wid.y * TILE + lid.y;
    let col = wid.x * TILE + lid.x;
    let bt = wid.z;
    if (lid.x == 0u && lid.y == 0u) {
        atomicStore(&wg_key, 0u);
    }
    workgroupBarrier();
    let a_base = bt * p.a_bs;
    let b_base = bt * p.b_bs;
    var s = vec2<u32>(0u, 0u);
    let tiles = (p.k + TILE - 1u) / TILE;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let ka = t * TILE + lid.x;
        var va = 0;
        if (row < p.m && ka < p.k) {
            va = a[a_base + row * p.a_rs + ka * p.a_cs];
        }
        ta[lid.y][lid.x] = va;
        let kb = t * TILE + lid.y;
        var vb = 0;
        if (kb < p.k && col < p.n) {
            vb = b[b_base + kb * p.b_rs + col * p.b_cs];
        }
        tb[lid.y][lid.x] = vb;
        workgroupBarrier();
        for (var j = 0u; j < TILE; j = j + 2u) {
            // |pair| < 2^31: exact in i32.
            let pair = ta[lid.y][j] * tb[j][lid.x] + ta[lid.y][j + 1u] * tb[j + 1u][lid.x];
            s = add64_i32(s, pair);
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        sums[(bt * p.m + row) * p.n + col] = s;
        atomicMax(&wg_key, quant_key64(s, 15u));
    }
    workgroupBarrier();
    if (lid.x == 0u && lid.y == 0u) {
        atomicMax(&key[0], atomicLoad(&wg_key));
    }
}
