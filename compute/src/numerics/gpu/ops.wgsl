// Elementwise and reduction kernels of the leam contract (see the doc comment of each
// `Kernels` method in kernels.rs). Each "wide" entry computes exact 64-bit values into `sums`
// and reduces the requantization key (quant_key64) with integer atomicMax; requant.wgsl then
// rounds them. Integer arithmetic only; no float, no subgroups.

@group(0) @binding(1) var<storage, read> in0: array<i32>;
@group(0) @binding(2) var<storage, read> in1: array<i32>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> key: array<atomic<u32>, 1>;
@group(0) @binding(5) var<storage, read_write> acc: array<atomic<i32>>;
@group(0) @binding(6) var<storage, read> idx: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<i32>;
@group(0) @binding(8) var<storage, read_write> partial: array<vec2<u32>>;

var<workgroup> wkey: atomic<u32>;
var<workgroup> wsum: array<vec2<u32>, 256>;

fn key_begin(l: u32) {
    if (l == 0u) {
        atomicStore(&wkey, 0u);
    }
    workgroupBarrier();
}

fn key_end(l: u32) {
    workgroupBarrier();
    if (l == 0u) {
        atomicMax(&key[0], atomicLoad(&wkey));
    }
}

fn put(i: u32, s: vec2<u32>) {
    sums[i] = s;
    atomicMax(&wkey, quant_key64(s, op.bits));
}

// Kernels::requant: s = x.
@compute @workgroup_size(256, 1, 1)
fn requant_in(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    key_begin(l);
    let i = index1(w, l);
    if (i < op.count) {
        put(i, sext64(in0[i]));
    }
    key_end(l);
}

// Kernels::mul_cols: s[r, c] = x[r, c] * w[c] (|s| < 2^30).
@compute @workgroup_size(256, 1, 1)
fn mul_cols(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    key_begin(l);
    let i = index1(w, l);
    if (i < op.count) {
        put(i, sext64(in0[i] * in1[i % op.cols]));
    }
    key_end(l);
}

// Kernels::scale: s = m * c with c = (c_lo, c_hi) two's complement, |c| < 2^47, |m| < 2^15.
@compute @workgroup_size(256, 1, 1)
fn scale(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    key_begin(l);
    let i = index1(w, l);
    if (i < op.count) {
        let c = vec2<u32>(op.c_lo, op.c_hi);
        let cm = mag64(c);
        let v = in0[i];
        let vm = u32(abs(v));
        let prod = add64(mul32x32(vm, cm.x), vec2<u32>(0u, vm * cm.y));
        let neg = (v < 0) != is_neg64(c);
        put(i, select(prod, neg64(prod), neg));
    }
    key_end(l);
}

// Kernels::col_dot: s[c] = sum_r a[r, c] * b[r, c], exact in 64 bits, rows in index order.
@compute @workgroup_size(256, 1, 1)
fn col_dot(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    key_begin(l);
    let c = index1(w, l);
    if (c < op.cols) {
        var s = vec2<u32>(0u, 0u);
        for (var r = 0u; r < op.rows; r = r + 1u) {
            let j = r * op.cols + c;
            s = add64_i32(s, in0[j] * in1[j]);
        }
        put(c, s);
    }
    key_end(l);
}

// Kernels::add: s = align(a) + align(b). The shifts travel in (cols, rows) for a and
// (c_lo, c_hi) for b; the host guarantees |s| < 2^62.
@compute @workgroup_size(256, 1, 1)
fn add(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    key_begin(l);
    let i = index1(w, l);
    if (i < op.count) {
        put(i, add64(align64(in0[i], op.cols, op.rows), align64(in1[i], op.c_lo, op.c_hi)));
    }
    key_end(l);
}

// Kernels::rescale: out = rhe(x, k), k clamped to 63 by the host (|x| < 2^31 gives 0 there).
@compute @workgroup_size(256, 1, 1)
fn rescale(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i < op.count) {
        out[i] = rhe64(sext64(in0[i]), op.k);
    }
}

// Kernels::scatter_add_rows, step 1: acc[idx[r], c] += src[r, c] with integer atomicAdd
// (exact and order-independent while rows * 2^15 < 2^31, which the host checks).
@compute @workgroup_size(256, 1, 1)
fn scatter_add(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i < op.count) {
        let r = i / op.cols;
        let c = i - r * op.cols;
        atomicAdd(&acc[idx[r] * op.cols + c], in0[i]);
    }
}

// Kernels::scatter_add_rows, step 2: the accumulated rows as wide values.
@compute @workgroup_size(256, 1, 1)
fn acc_wide(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    key_begin(l);
    let i = index1(w, l);
    if (i < op.count) {
        put(i, sext64(atomicLoad(&acc[i])));
    }
    key_end(l);
}

// The workgroup's 64-bit sum of each invocation's `s` (fixed tree order; exact, so any order
// would give the same bits). Called by every invocation, in uniform control flow.
fn tree_sum(l: u32, s: vec2<u32>) -> vec2<u32> {
    wsum[l] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        if (l < half) {
            wsum[l] = add64(wsum[l], wsum[l + half]);
        }
        workgroupBarrier();
    }
    return wsum[0];
}

// Kernels::sum_squares: per-workgroup exact 64-bit partial sums of m^2 (fixed tree order), then
// `sum_partials` adds them in one workgroup (the total stays below count * 2^30 <= 2^58).
@compute @workgroup_size(256, 1, 1)
fn sum_squares(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    var s = vec2<u32>(0u, 0u);
    if (i < op.count) {
        let v = in0[i];
        s = vec2<u32>(u32(v * v), 0u);
    }
    let total = tree_sum(l, s);
    if (l == 0u) {
        partial[w.y * op.groups_x + w.x] = total;
    }
}

// Kernels::sum_squares, step 2: one workgroup adds the op.count partials into sums[op.k], the
// tensor's slot (thread l takes partials l, l + 256, ..., then the tree; integer sums, so the
// order changes nothing).
@compute @workgroup_size(256, 1, 1)
fn sum_partials(@builtin(local_invocation_index) l: u32) {
    var s = vec2<u32>(0u, 0u);
    for (var j = l; j < op.count; j = j + WG) {
        s = add64(s, partial[j]);
    }
    let total = tree_sum(l, s);
    if (l == 0u) {
        sums[op.k] = total;
    }
}
