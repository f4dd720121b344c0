// Row softmax exactly as Kernels::softmax specifies (kernels.rs, softmax_exps): per row the
// max mantissa over the used columns, t = mx - m, y = shift_sat(t * scale_q16 * LOG2E_Q30,
// 30 - x.exp) (a 96-bit product here), E = exp2_neg_q31(y) from the integer tables, and
// p = div_rhe(E * 2^30, sum E). One invocation per row; columns in index order.

// OpParams (op_params.wgsl): c_lo = scale_q16, c_hi = 1 when causal, k = 30 - x.exp as i32,
// clamped to [-100, 100] by the host (same results).

// E = exp2_neg_q31(y) is 0 once y >= 2^22 (y >> 16 >= 64).
const Y_ZERO_BITS: u32 = 22u;

@group(0) @binding(1) var<storage, read> in0: array<i32>;
@group(0) @binding(3) var<storage, read_write> sums: array<vec2<u32>>;
@group(0) @binding(4) var<storage, read_write> key: array<atomic<u32>, 1>;

var<workgroup> wkey: atomic<u32>;

// E for t = mx - m >= 0.
fn softmax_e(t: u32) -> u32 {
    if (t == 0u) {
        return exp2_neg_q31(0u);
    }
    let a = mul32x32(t, op.c_lo); // t * scale < 2^48
    let p = mul64x32(a, LOG2E_Q30); // < 2^79
    let s = bitcast<i32>(op.k);
    var y: u32;
    if (s > 0) {
        if (s >= 96) {
            y = 0u;
        } else {
            let q = rhe96(p, u32(s));
            if (q.y != 0u || q.z != 0u || q.x >= (1u << Y_ZERO_BITS)) {
                return 0u;
            }
            y = q.x;
        }
    } else {
        if (p.y != 0u || p.z != 0u || p.x >= (1u << Y_ZERO_BITS)) {
            return 0u;
        }
        let l = u32(-s);
        if (32u - countLeadingZeros(p.x) + l > Y_ZERO_BITS) {
            return 0u;
        }
        y = p.x << l;
    }
    return exp2_neg_q31(y);
}

@compute @workgroup_size(256, 1, 1)
fn softmax_rows(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) w: vec3<u32>) {
    if (l == 0u) {
        atomicStore(&wkey, 0u);
    }
    workgroupBarrier();
    let r = index1(w, l);
    if (r < op.rows && op.cols > 0u) {
        let base = r * op.cols;
        var used = op.cols;
        if (op.c_hi == 1u) {
            used = r % op.cols + 1u;
        }
        var mx = in0[base];
        for (var j = 1u; j < used; j = j + 1u) {
            mx = max(mx, in0[base + j]);
        }
        var total = vec2<u32>(0u, 0u);
        for (var j = 0u; j < used; j = j + 1u) {
            total = add64(total, vec2<u32>(softmax_e(u32(mx - in0[base + j])), 0u));
        }
        for (var j = 0u; j < op.cols; j = j + 1u) {
            var p = 0u;
            if (j < used) {
                let e = softmax_e(u32(mx - in0[base + j]));
                p = div_rhe64(vec2<u32>(e << 30u, e >> 2u), total);
            }
            let s = vec2<u32>(p, 0u);
            sums[base + j] = s;
            atomicMax(&wkey, quant_key64(s, op.bits));
        }
    }
    workgroupBarrier();
    if (l == 0u) {
        atomicMax(&key[0], atomicLoad(&wkey));
    }
}
