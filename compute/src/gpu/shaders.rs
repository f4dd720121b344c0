//! Every WGSL program of the wgpu backend, assembled from the `.wgsl` files beside the Rust
//! modules that run them. The shared 64-bit helpers (`int64.wgsl`) are prepended as text
//! because WGSL has no `#include`; the fingerprint hashes the assembled source, i.e. exactly
//! what the driver compiles.

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
    source: concat!(include_str!("int64.wgsl"), include_str!("ops.wgsl")),
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
    ],
};

/// All programs, in fingerprint order.
pub static SHADERS: &[&Shader] = &[&MATMUL, &REQUANT, &OPS];
