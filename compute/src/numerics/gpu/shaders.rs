//! Every WGSL program of the wgpu backend, assembled from the `.wgsl` files beside the Rust
//! modules that run them. The shared helpers are prepended as text because WGSL has no
//! `#include`: `int64.wgsl` (64-bit arithmetic, rounding, rounded long division) to every
//! program, `int96.wgsl` (96-bit magnitudes) to those with 96-bit intermediates,
//! `exp2.wgsl` (integer exp2 on `exp2_table.wgsl`) to those that exponentiate, and
//! `op_params.wgsl` (the uniform of `ops::params`) to ops, gelu and softmax. The
//! fingerprint hashes the assembled source, i.e. exactly what the driver compiles.

/// One WGSL program.
#[derive(Debug)]
pub struct Shader {
    /// Stable name (used in fingerprints, errors and the self-test).
    pub name: &'static str,
    /// The complete WGSL source handed to the driver.
    pub source: &'static str,
    /// Compute entry points in it.
    pub entries: &'static [&'static str],
}

/// Batched matmul producing exact 64-bit sums and the requantization key.
pub static MATMUL: Shader = Shader {
    name: "matmul",
    source: concat!(include_str!("int64.wgsl"), include_str!("matmul.wgsl")),
    entries: &["matmul_sums"],
};

/// Requantization of exact 64-bit sums to B16.
pub static REQUANT: Shader = Shader {
    name: "requant",
    source: concat!(include_str!("int64.wgsl"), include_str!("requant.wgsl")),
    entries: &["requant"],
};

/// Elementwise and reduction kernels (requant, add, mul_cols, scale, col_dot, rescale,
/// scatter_add_rows, sum_squares).
pub static OPS: Shader = Shader {
    name: "ops",
    source: concat!(
        include_str!("int64.wgsl"),
        include_str!("op_params.wgsl"),
        include_str!("ops.wgsl")
    ),
    entries: &[
        "requant_in",
        "add",
        "mul_cols",
        "scale",
        "col_dot",
        "rescale",
        "scatter_add",
        "acc_wide",
        "sum_squares",
        "sum_partials",
    ],
};

/// GELU forward and backward (integer exp2 tables, rounded long division).
pub static GELU: Shader = Shader {
    name: "gelu",
    source: concat!(
        include_str!("int64.wgsl"),
        include_str!("exp2_table.wgsl"),
        include_str!("exp2.wgsl"),
        include_str!("op_params.wgsl"),
        include_str!("gelu.wgsl")
    ),
    entries: &["gelu", "gelu_bwd"],
};

/// Row softmax (causal or not): 96-bit exponent argument, integer exp2 tables, rounded
/// long division.
pub static SOFTMAX: Shader = Shader {
    name: "softmax",
    source: concat!(
        include_str!("int64.wgsl"),
        include_str!("int96.wgsl"),
        include_str!("exp2_table.wgsl"),
        include_str!("exp2.wgsl"),
        include_str!("op_params.wgsl"),
        include_str!("softmax.wgsl")
    ),
    entries: &["softmax_rows"],
};

/// Layer normalization (96-bit integer square root and divisions).
pub static LAYERNORM: Shader = Shader {
    name: "layernorm",
    source: concat!(
        include_str!("int64.wgsl"),
        include_str!("int96.wgsl"),
        include_str!("layernorm.wgsl")
    ),
    entries: &["layernorm_rows", "layernorm_bwd_rows"],
};

/// Softmax backward (96-bit wide values and their own requantization).
pub static SOFTMAX_BWD: Shader = Shader {
    name: "softmax_bwd",
    source: concat!(
        include_str!("int64.wgsl"),
        include_str!("int96.wgsl"),
        include_str!("softmax_bwd.wgsl")
    ),
    entries: &["softmax_bwd_rows", "requant96"],
};

/// Cross-entropy loss and gradient (integer exp2 tables, integer log2 by squaring).
pub static CROSS_ENTROPY: Shader = Shader {
    name: "cross_entropy",
    source: concat!(
        include_str!("int64.wgsl"),
        include_str!("int96.wgsl"),
        include_str!("exp2_table.wgsl"),
        include_str!("exp2.wgsl"),
        include_str!("cross_entropy.wgsl")
    ),
    entries: &["cross_entropy_rows"],
};

/// AdamW (96/128-bit moments, integer square root, parameter update).
pub static ADAMW: Shader = Shader {
    name: "adamw",
    source: concat!(
        include_str!("int64.wgsl"),
        include_str!("int96.wgsl"),
        include_str!("adamw.wgsl")
    ),
    entries: &["adam_m", "requant_m", "adam_v", "adam_sqrt", "adam_p"],
};

/// Data movement of the model on resident tensors: embedding row gathers and attention head
/// layouts.
pub static LAYOUT: Shader = Shader {
    name: "layout",
    source: concat!(include_str!("op_params.wgsl"), include_str!("layout.wgsl")),
    entries: &["gather_rows", "heads"],
};

/// Exponents of resident tensors on the device: the shifts an op takes from its inputs'
/// exponents, and its result's exponent from its requantization key (`exps.rs`).
pub static EXPS: Shader = Shader {
    name: "exps",
    source: concat!(include_str!("int64.wgsl"), include_str!("exps.wgsl")),
    entries: &["exp_pre", "exp_post"],
};

/// Global gradient-norm clipping coefficient from the gradients' sums of squares and device
/// exponents (128-bit integer square root and rounded division; `clip.rs`).
pub static CLIP: Shader = Shader {
    name: "clip",
    source: concat!(include_str!("int64.wgsl"), include_str!("clip.wgsl")),
    entries: &["clip_coeff"],
};

/// The checked-in `exp2_table.wgsl`.
pub const EXP2_TABLE_WGSL: &str = include_str!("exp2_table.wgsl");

/// The text `exp2_table.wgsl` must have: [`crate::numerics::fixed::exp2_tables`] as WGSL constants
/// (the tables are generated once by integer code; the WGSL copy is checked against them).
pub fn exp2_table_wgsl() -> String {
    let (hi, lo) = crate::numerics::fixed::exp2_tables();
    let arr = |name: &str, v: &[i64]| {
        let rows: Vec<String> = v
            .chunks(8)
            .map(|c| {
                let items: Vec<String> = c.iter().map(|x| format!("{x}u")).collect();
                format!("    {},", items.join(", "))
            })
            .collect();
        format!(
            "const {name}: array<u32, 256> = array<u32, 256>(\n{}\n);\n",
            rows.join("\n")
        )
    };
    // The header keeps the generator's path from before `numerics/`: any change to a shader's
    // text changes its hash in every device fingerprint, hence the ids of GPU shard results.
    format!(
        "// GENERATED from leam_compute::fixed::exp2_tables() (checked by compute/tests/gpu_shaders.rs:\n\
         // regenerate with LEAM_REGEN_WGSL=1 cargo test -p leam-compute --test gpu_shaders).\n\
         // 2^(-i/256) and 2^(-j/65536) in Q31.\n{}{}",
        arr("EXP2_HI", hi),
        arr("EXP2_LO", lo)
    )
}

/// All programs, in fingerprint order.
pub static SHADERS: &[&Shader] = &[
    &MATMUL,
    &REQUANT,
    &OPS,
    &GELU,
    &SOFTMAX,
    &LAYERNORM,
    &SOFTMAX_BWD,
    &CROSS_ENTROPY,
    &ADAMW,
    &LAYOUT,
    &EXPS,
    &CLIP,
];
