// Data movement of the model (no arithmetic, hence exact): row gathers of embeddings and the
// head layouts of attention. The uniform is `OpParams` (op_params.wgsl), used per entry as
// documented there.

@group(0) @binding(1) var<storage, read> src: array<i32>;
@group(0) @binding(6) var<storage, read> idx: array<u32>;
@group(0) @binding(7) var<storage, read_write> dst: array<i32>;

// out[r, c] = src[row(r), c] with row(r) = idx[r], or r % rows when rows > 0 (positions).
// count = output elements, cols = row width.
@compute @workgroup_size(256, 1, 1)
fn gather_rows(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i < op.count) {
        let r = i / op.cols;
        let c = i - r * op.cols;
        var row = 0u;
        if (op.rows > 0u) {
            row = r % op.rows;
        } else {
            row = idx[r];
        }
        dst[i] = src[row * op.cols + c];
    }
}

// Between the row layout [B·T, rowlen] (a part of width H·hs at column `off`) and the head
// layout [B·H, T, hs]. One invocation per head-layout element i = ((b·H + h)·T + t)·hs + s;
// j = (b·T + t)·rowlen + off + h·hs + s. k = 0: dst[i] = src[j] (split); k = 1: dst[j] = src[i]
// (merge). cols = hs, rows = T, bits = H, c_lo = rowlen, c_hi = off.
@compute @workgroup_size(256, 1, 1)
fn heads(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    let i = index1(w, l);
    if (i < op.count) {
        let s = i % op.cols;
        let q = i / op.cols;
        let t = q % op.rows;
        let q2 = q / op.rows;
        let h = q2 % op.bits;
        let b = q2 / op.bits;
        let j = (b * op.rows + t) * op.c_lo + op.c_hi + h * op.cols + s;
        if (op.k == 0u) {
            dst[i] = src[j];
        } else {
            dst[j] = src[i];
        }
    }
}
