//! [`CpuKernels`], the bit-exact reference backend: its matmul is in `gemm` (the exact integer
//! SIMD paths and exact f64 dgemm), every other kernel in the file of its operation.
//!
//! Every non-matmul kernel returns the same bits (and the same errors) as the straightforward
//! i128 code it replaced, which is kept verbatim in the test-only `reference` module and
//! compared against them on random and extreme inputs (`tests`). The speed comes from:
//! - 64-bit arithmetic wherever a bound (stated at each use) proves that the exact value fits;
//!   i128 only where it may not, decided per tensor or per element;
//! - exact division by an f64 estimate of the quotient corrected by integer remainders
//!   ([`DivRhe`](rounding::DivRhe)) instead of i128 division;
//! - f64 arithmetic where every value is an integer below `2^51` (exact), rounding half to even
//!   by adding `1.5·2^52` ([`rhe_f64`](rounding::rhe_f64)): the elementwise loops vectorize;
//! - f64 quotients and roots taken only when provably farther from a rounding boundary than
//!   their error ([`DivRhe::div_est`](rounding::DivRhe::div_est), the AdamW roots), the exact
//!   path otherwise;
//! - recomputing cheap wide values in the requantization pass instead of collecting them into
//!   `Vec<i128>`, plain per-chunk loops (rayon's per-item closures were not inlined), and no
//!   per-row allocations;
//! - GELU tables cached per exponent across calls;
//! - rayon tasks of at least [`PAR_MIN_LEN`] elements, so small tensors do not pay fork/join.

use super::gemm::{matmul_with, Path};
use super::kernels::{AdamStep, Bfp, KernelError, Kernels, MatmulShape};

mod adamw;
mod elementwise;
mod gelu;
mod layernorm;
mod rounding;
mod softmax;
mod tables;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

/// Smallest number of elements per rayon task: below it, fork/join costs more than it saves.
const PAR_MIN_LEN: usize = 1 << 12;

/// Rows per rayon task for a row-wise op on `cols` columns.
fn rows_per_task(cols: usize) -> usize {
    (PAR_MIN_LEN / cols.max(1)).max(1)
}

/// The CPU reference backend: multi-threaded, bit-exact by construction.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuKernels;

impl CpuKernels {
    /// The CPU backend.
    pub fn new() -> Self {
        Self
    }
}

impl Kernels for CpuKernels {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn matmul(&self, a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<Bfp, KernelError> {
        // One hand-over to the thread pool for the whole product: called from outside the pool
        // (the training loop), each parallel pass (split/pack, tiles, requantization) would
        // otherwise queue its work and put this thread to sleep on its own, several context
        // switches per call.
        rayon::scope(|_| matmul_with(Path::detected(), a, b, s))
    }

    fn add(&self, a: &Bfp, b: &Bfp) -> Result<Bfp, KernelError> {
        elementwise::add(a, b)
    }

    fn requant(&self, x: &Bfp, mant_max: i32) -> Result<Bfp, KernelError> {
        elementwise::requant(x, mant_max)
    }

    fn rescale(&self, x: &Bfp, exp: i32) -> Result<Bfp, KernelError> {
        elementwise::rescale(x, exp)
    }

    fn mul_cols(&self, x: &Bfp, w: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        elementwise::mul_cols(x, w, rows, cols)
    }

    fn col_dot(&self, a: &Bfp, b: &Bfp, rows: usize, cols: usize) -> Result<Bfp, KernelError> {
        elementwise::col_dot(a, b, rows, cols)
    }

    fn layernorm(&self, x: &Bfp, rows: usize, cols: usize) -> Result<(Bfp, Vec<u64>), KernelError> {
        layernorm::layernorm(x, rows, cols)
    }

    fn layernorm_bwd(
        &self,
        dxhat: &Bfp,
        xhat: &Bfp,
        r: &[u64],
        x_exp: i32,
        rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        layernorm::layernorm_bwd(dxhat, xhat, r, x_exp, rows, cols)
    }

    fn softmax(
        &self,
        x: &Bfp,
        rows: usize,
        cols: usize,
        causal: bool,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        softmax::softmax(x, rows, cols, causal, scale_q16)
    }

    fn softmax_bwd(
        &self,
        p: &Bfp,
        dp: &Bfp,
        rows: usize,
        cols: usize,
        scale_q16: u32,
    ) -> Result<Bfp, KernelError> {
        softmax::softmax_bwd(p, dp, rows, cols, scale_q16)
    }

    fn cross_entropy(
        &self,
        logits: &Bfp,
        targets: &[u32],
        rows: usize,
        cols: usize,
    ) -> Result<(i64, Bfp), KernelError> {
        softmax::cross_entropy(logits, targets, rows, cols)
    }

    fn gelu(&self, x: &Bfp) -> Result<Bfp, KernelError> {
        gelu::gelu(x)
    }

    fn gelu_bwd(&self, x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
        gelu::gelu_bwd(x, dy)
    }

    fn scatter_add_rows(
        &self,
        src: &Bfp,
        idx: &[u32],
        out_rows: usize,
        cols: usize,
    ) -> Result<Bfp, KernelError> {
        elementwise::scatter_add_rows(src, idx, out_rows, cols)
    }

    fn sum_squares(&self, x: &Bfp) -> Result<u128, KernelError> {
        elementwise::sum_squares(x)
    }

    fn scale(&self, x: &Bfp, c_q30: i64) -> Result<Bfp, KernelError> {
        elementwise::scale(x, c_q30)
    }

    fn adamw(
        &self,
        p: &Bfp,
        g: &Bfp,
        m: &Bfp,
        r: &Bfp,
        st: &AdamStep,
    ) -> Result<(Bfp, Bfp, Bfp), KernelError> {
        adamw::adamw(p, g, m, r, st)
    }
}
