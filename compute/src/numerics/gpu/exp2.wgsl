// Integer exp2 from the generated tables (exp2_table.wgsl), shared by the kernels that
// need fixed::exp2_neg_q31. Needs int64.wgsl (rhe64u, mul32x32).

// log2(e) in Q30 (fixed::LOG2E_Q30).
const LOG2E_Q30: u32 = 1549082005u;

// exp2_neg_q31(y) for 0 <= y < 2^32 (Q16): 2^(-y/65536) in Q31, 0 when y >> 16 >= 64.
fn exp2_neg_q31(y: u32) -> u32 {
    let n = y >> 16u;
    if (n >= 64u) {
        return 0u;
    }
    let f = y & 0xffffu;
    let v = rhe64u(mul32x32(EXP2_HI[f >> 8u], EXP2_LO[f & 255u]), 31u);
    return rhe64u(vec2<u32>(v, 0u), n);
}
