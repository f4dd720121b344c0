//! The kernel interface every backend implements, and [`CpuKernels`], the bit-exact reference.
//!
//! Tensors are block floating point ([`Bfp`]): `value[i] = mant[i] · 2^exp` with one exponent per
//! tensor. Every method's doc comment states its exact integer semantics; a backend is correct
//! only if it returns the same bits as [`CpuKernels`] for every input (see `specs/compute.md`).
//!
//! Rule for additions: every method added after the first version has a default body returning
//! [`KernelError::Unsupported`], so that other backends keep compiling until they port it.

use crate::fixed::{requant_shift, rhe, B16_MANT_MAX};
use ndarray::{linalg::general_mat_mul, Array2, ArrayView2, ShapeBuilder};
use rayon::prelude::*;

/// Largest inner dimension of a matmul: keeps `|Σ a·b| < 2^30 · 2^22 = 2^52`, so sums fit in
/// i64 and are exact in f64 (the CPU backend's dgemm trick needs `< 2^53`).
pub const MATMUL_K_MAX: usize = 1 << 22;
/// Largest number of elements of any tensor passed to or returned by a kernel.
pub const TENSOR_ELEMS_MAX: usize = 1 << 28;
/// Largest magnitude of a tensor exponent; beyond it a kernel reports `ExponentRange`.
pub const EXP_ABS_MAX: i64 = 1 << 24;

/// A block-floating-point tensor: `value[i] = mant[i] · 2^exp`. The shape is carried by the
/// caller (each kernel method takes the dimensions it needs).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bfp {
    /// Signed integer mantissas, row-major.
    pub mant: Vec<i32>,
    /// Power-of-two exponent shared by all elements.
    pub exp: i32,
}

impl Bfp {
    /// A tensor from mantissas and exponent.
    pub fn new(mant: Vec<i32>, exp: i32) -> Self {
        Self { mant, exp }
    }

    /// All-zero tensor of `len` elements with exponent `exp`.
    pub fn zeros(len: usize, exp: i32) -> Self {
        Self {
            mant: vec![0; len],
            exp,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.mant.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.mant.is_empty()
    }

    /// Value of element `i` as f64, for reporting and tests only (never in the hashed path).
    pub fn value(&self, i: usize) -> f64 {
        self.mant[i] as f64 * (self.exp as f64).exp2()
    }

    /// All values as f64, for reporting and tests only.
    pub fn to_f64(&self) -> Vec<f64> {
        let scale = (self.exp as f64).exp2();
        self.mant.iter().map(|&m| m as f64 * scale).collect()
    }
}

/// Dimensions of a (batched) matrix product `C[b] = op(A[b]) · op(B[b])`, `op(A)` being `m×k`
/// and `op(B)` being `k×n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    /// Number of independent products; operands and result are stored batch after batch.
    pub batch: usize,
    /// Rows of the result.
    pub m: usize,
    /// Inner (summed) dimension.
    pub k: usize,
    /// Columns of the result.
    pub n: usize,
    /// A is stored `k×m` row-major (so `op(A) = Aᵀ`) instead of `m×k`.
    pub trans_a: bool,
    /// B is stored `n×k` row-major (so `op(B) = Bᵀ`) instead of `k×n`.
    pub trans_b: bool,
}

impl MatmulShape {
    /// Plain `m×k · k×n` product, no batch, no transposes.
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        Self {
            batch: 1,
            m,
            k,
            n,
            trans_a: false,
            trans_b: false,
        }
    }
    /// Same shape with `trans_a` set.
    pub fn ta(mut self) -> Self {
        self.trans_a = true;
        self
    }
    /// Same shape with `trans_b` set.
    pub fn tb(mut self) -> Self {
        self.trans_b = true;
        self
    }
    /// Same shape with `batch` products.
    pub fn batched(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    /// Number of integer multiply-accumulates: `batch · m · k · n`.
    pub fn macs(&self) -> u64 {
        (self.batch as u64) * (self.m as u64) * (self.k as u64) * (self.n as u64)
    }
}

/// Why a kernel refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The backend does not implement this operation (yet).
    #[error("operation `{op}` is not supported by the {backend} backend")]
    Unsupported {
        /// Operation name (the `Kernels` method).
        op: &'static str,
        /// Backend name.
        backend: String,
    },
    /// A size exceeds a limit of the format or of the device.
    #[error("{what}: requested {requested}, the maximum is {max}")]
    Limit {
        /// What was too large.
        what: &'static str,
        /// Requested size.
        requested: u64,
        /// Largest allowed size.
        max: u64,
    },
    /// An operand's length does not match the shape.
    #[error("{op}: operand `{operand}` has {found} elements, expected {expected}")]
    Shape {
        /// Operation name.
        op: &'static str,
        /// Operand name.
        operand: &'static str,
        /// Expected number of elements.
        expected: usize,
        /// Actual number of elements.
        found: usize,
    },
    /// A mantissa is outside the range the operation accepts.
    #[error("{op}: operand `{operand}` element {index} has mantissa {found}, allowed magnitude is at most {max}")]
    MantissaRange {
        /// Operation name.
        op: &'static str,
        /// Operand name.
        operand: &'static str,
        /// Element index.
        index: usize,
        /// The offending mantissa.
        found: i64,
        /// Largest allowed magnitude.
        max: i64,
    },
    /// A result exponent is outside `±EXP_ABS_MAX`.
    #[error("{op}: result exponent {found} outside ±{max}")]
    ExponentRange {
        /// Operation name.
        op: &'static str,
        /// The exponent that would result.
        found: i64,
        /// Largest allowed magnitude.
        max: i64,
    },
    /// The device failed (lost, out of memory, mapping failed…).
    #[error("device error in {op}: {detail}")]
    Device {
        /// Operation name.
        op: &'static str,
        /// What the driver reported.
        detail: String,
    },
}

/// The operations the model needs, host slices in and out. Implementations must be
/// bit-identical to [`CpuKernels`].
pub trait Kernels: Send + Sync {
    /// Backend name, e.g. `"cpu"` or `"wgpu/Vulkan/llvmpipe"`.
    fn name(&self) -> String;

    /// Batched matrix product with exact integer accumulation and B16 requantization.
    ///
    /// Inputs: `a` holds `batch·m·k` mantissas (`batch` blocks, each `m×k` row-major, or `k×m`
    /// if `trans_a`), `b` holds `batch·k·n` (each `k×n`, or `n×k` if `trans_b`); every mantissa
    /// must satisfy `|x| ≤ 32767` (else `MantissaRange`); `k ≤ MATMUL_K_MAX`.
    ///
    /// Semantics: `s[b,i,j] = Σ_p A[b,i,p]·B[b,p,j]` computed exactly (each product `< 2^30`,
    /// the sum `< 2^52`: accumulate in 64 bits). Then over the WHOLE output (all batches):
    /// `mx = max|s|`, `k = max(0, bitlen(mx) − 15)`, and `k += 1` if `rhe(mx, k) > 32767`;
    /// `out = rhe(s, k)` where `rhe(s, k)` is `s / 2^k` rounded half to even (`k = 0`: `s`);
    /// `exp = a.exp + b.exp + k`. All zero (or empty): mantissas 0 and `exp = a.exp + b.exp`.
    fn matmul(&self, a: &Bfp, b: &Bfp, shape: MatmulShape) -> Result<Bfp, KernelError>;
}

/// Checks lengths, limits and mantissa bounds of a matmul; shared by every backend.
pub fn check_matmul(a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<(), KernelError> {
    const OP: &str = "matmul";
    if s.k > MATMUL_K_MAX {
        return Err(KernelError::Limit {
            what: "matmul inner dimension k",
            requested: s.k as u64,
            max: MATMUL_K_MAX as u64,
        });
    }
    let elems = |x: usize, y: usize| -> Result<usize, KernelError> {
        let n = (s.batch as u128) * (x as u128) * (y as u128);
        if n > TENSOR_ELEMS_MAX as u128 {
            return Err(KernelError::Limit {
                what: "matmul tensor elements",
                requested: n.min(u64::MAX as u128) as u64,
                max: TENSOR_ELEMS_MAX as u64,
            });
        }
        Ok(n as usize)
    };
    let (na, nb) = (elems(s.m, s.k)?, elems(s.k, s.n)?);
    elems(s.m, s.n)?;
    for (operand, t, expected) in [("a", a, na), ("b", b, nb)] {
        if t.mant.len() != expected {
            return Err(KernelError::Shape {
                op: OP,
                operand,
                expected,
                found: t.mant.len(),
            });
        }
        check_mant(OP, operand, &t.mant, B16_MANT_MAX)?;
    }
    Ok(())
}

/// Returns `MantissaRange` for the first element with `|x| > max`.
pub fn check_mant(
    op: &'static str,
    operand: &'static str,
    mant: &[i32],
    max: i32,
) -> Result<(), KernelError> {
    match mant.iter().position(|x| x.unsigned_abs() > max as u32) {
        Some(index) => Err(KernelError::MantissaRange {
            op,
            operand,
            index,
            found: mant[index] as i64,
            max: max as i64,
        }),
        None => Ok(()),
    }
}

/// `base + k` as a tensor exponent, or `ExponentRange`.
pub fn checked_exp(op: &'static str, base: i64, k: i64) -> Result<i32, KernelError> {
    let e = base + k;
    if e.abs() > EXP_ABS_MAX {
        return Err(KernelError::ExponentRange {
            op,
            found: e,
            max: EXP_ABS_MAX,
        });
    }
    Ok(e as i32)
}

/// Requantizes exact i64 sums to B16 as specified for [`Kernels::matmul`], in parallel.
pub fn requantize_b16(op: &'static str, sums: &[i64], base_exp: i64) -> Result<Bfp, KernelError> {
    let mx = sums.par_iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    let k = requant_shift(mx as u128, B16_MANT_MAX);
    let mant = sums.par_iter().map(|&v| rhe(v as i128, k) as i32).collect();
    Ok(Bfp {
        mant,
        exp: checked_exp(op, base_exp, k as i64)?,
    })
}

/// Naive reference matmul: i64 loops in index order, then the specified requantization.
/// Slow; for tests of every backend.
pub fn matmul_naive(a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<Bfp, KernelError> {
    check_matmul(a, b, s)?;
    let mut sums = vec![0i64; s.batch * s.m * s.n];
    for bt in 0..s.batch {
        let (ao, bo) = (bt * s.m * s.k, bt * s.k * s.n);
        for i in 0..s.m {
            for j in 0..s.n {
                let mut acc: i64 = 0;
                for p in 0..s.k {
                    let x = if s.trans_a {
                        a.mant[ao + p * s.m + i]
                    } else {
                        a.mant[ao + i * s.k + p]
                    };
                    let y = if s.trans_b {
                        b.mant[bo + j * s.k + p]
                    } else {
                        b.mant[bo + p * s.n + j]
                    };
                    acc += x as i64 * y as i64;
                }
                sums[bt * s.m * s.n + i * s.n + j] = acc;
            }
        }
    }
    requantize_b16("matmul", &sums, a.exp as i64 + b.exp as i64)
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

/// View of one stored block as the logical `rows×cols` operand (transposed view if `trans`).
fn operand_view(data: &[f64], rows: usize, cols: usize, trans: bool) -> ArrayView2<'_, f64> {
    if trans {
        // Stored cols×rows row-major: element (r, c) at c·rows + r.
        ArrayView2::from_shape((rows, cols).strides((1, rows)), data)
            .expect("length checked by check_matmul")
    } else {
        ArrayView2::from_shape((rows, cols), data).expect("length checked by check_matmul")
    }
}

/// Exact product of one block through f64 dgemm. Every input is an integer with `|x| < 2^15`,
/// every product `< 2^30` and every partial sum `< 2^52`, all exactly representable in f64, so
/// whatever order, blocking or FMA use dgemm chooses, each addition is exact and the result is
/// the exact integer sum (proof in specs/compute.md).
fn block_dgemm(a: &[f64], b: &[f64], s: MatmulShape, out: &mut [i64]) {
    let av = operand_view(a, s.m, s.k, s.trans_a);
    let bv = operand_view(b, s.k, s.n, s.trans_b);
    let mut c = Array2::<f64>::zeros((s.m, s.n));
    general_mat_mul(1.0, &av, &bv, 0.0, &mut c);
    for (o, v) in out.iter_mut().zip(c.iter()) {
        *o = *v as i64;
    }
}

impl Kernels for CpuKernels {
    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn matmul(&self, a: &Bfp, b: &Bfp, s: MatmulShape) -> Result<Bfp, KernelError> {
        check_matmul(a, b, s)?;
        let mut sums = vec![0i64; s.batch * s.m * s.n];
        if s.m * s.n * s.batch > 0 && s.k > 0 {
            let af: Vec<f64> = a.mant.iter().map(|&x| x as f64).collect();
            let bf: Vec<f64> = b.mant.iter().map(|&x| x as f64).collect();
            let (sa, sb, sc) = (s.m * s.k, s.k * s.n, s.m * s.n);
            if s.batch == 1 {
                block_dgemm(&af, &bf, s, &mut sums);
            } else {
                sums.par_chunks_mut(sc)
                    .zip(af.par_chunks(sa))
                    .zip(bf.par_chunks(sb))
                    .for_each(|((out, ab), bb)| block_dgemm(ab, bb, s, out));
            }
        }
        requantize_b16("matmul", &sums, a.exp as i64 + b.exp as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_case() -> impl Strategy<Value = (Bfp, Bfp, MatmulShape)> {
        (
            1usize..4,
            0usize..9,
            0usize..70,
            0usize..9,
            any::<bool>(),
            any::<bool>(),
            -20i32..20,
            -20i32..20,
            0u32..16,
        )
            .prop_flat_map(|(batch, m, k, n, ta, tb, ea, eb, bits)| {
                let s = MatmulShape {
                    batch,
                    m,
                    k,
                    n,
                    trans_a: ta,
                    trans_b: tb,
                };
                let lim = (1i32 << bits) - 1;
                let lim = lim.min(B16_MANT_MAX);
                (
                    proptest::collection::vec(-lim..=lim, batch * m * k),
                    proptest::collection::vec(-lim..=lim, batch * k * n),
                )
                    .prop_map(move |(am, bm)| (Bfp::new(am, ea), Bfp::new(bm, eb), s))
            })
    }

    proptest! {
        #[test]
        fn cpu_matmul_equals_naive((a, b, s) in arb_case()) {
            let fast = CpuKernels.matmul(&a, &b, s).unwrap();
            let slow = matmul_naive(&a, &b, s).unwrap();
            prop_assert_eq!(fast, slow);
        }

        #[test]
        fn naive_matches_i128_rational((a, b, s) in arb_case()) {
            let out = matmul_naive(&a, &b, s).unwrap();
            let k = (out.exp - a.exp - b.exp) as u32;
            // Recompute each sum in i128 and check the requantization rule directly.
            let mut mx = 0u128;
            let mut sums = Vec::new();
            for bt in 0..s.batch { for i in 0..s.m { for j in 0..s.n {
                let mut acc = 0i128;
                for p in 0..s.k {
                    let x = if s.trans_a { a.mant[bt*s.m*s.k + p*s.m + i] } else { a.mant[bt*s.m*s.k + i*s.k + p] };
                    let y = if s.trans_b { b.mant[bt*s.k*s.n + j*s.k + p] } else { b.mant[bt*s.k*s.n + p*s.n + j] };
                    acc += x as i128 * y as i128;
                }
                mx = mx.max(acc.unsigned_abs());
                sums.push(acc);
            }}}
            for (q, sum) in out.mant.iter().zip(&sums) {
                prop_assert_eq!(*q as i128, rhe(*sum, k));
            }
            prop_assert!(out.mant.iter().all(|q| q.unsigned_abs() <= 32_767));
            if k > 0 { prop_assert!(rhe(mx as i128, k - 1) > 32_767); }
        }
    }

    #[test]
    fn extreme_values_stay_exact() {
        // K = 4096 products of 32767·32767: sum = 4096·(2^15−1)^2 ≈ 2^42, must be exact.
        let k = 4096;
        let a = Bfp::new(vec![B16_MANT_MAX; k], 0);
        let b = Bfp::new(vec![-B16_MANT_MAX; k], 0);
        let s = MatmulShape::new(1, k, 1);
        let out = CpuKernels.matmul(&a, &b, s).unwrap();
        assert_eq!(out, matmul_naive(&a, &b, s).unwrap());
        let exact = -(k as i128) * (B16_MANT_MAX as i128).pow(2);
        let sh = (out.exp) as u32;
        assert_eq!(out.mant[0] as i128, rhe(exact, sh));
    }

    #[test]
    fn bad_input_is_precise() {
        let s = MatmulShape::new(2, 3, 2);
        let a = Bfp::new(vec![0; 6], 0);
        let b = Bfp::new(vec![0; 5], 0);
        assert_eq!(
            CpuKernels.matmul(&a, &b, s),
            Err(KernelError::Shape {
                op: "matmul",
                operand: "b",
                expected: 6,
                found: 5
            })
        );
        let mut b = Bfp::new(vec![0; 6], 0);
        b.mant[4] = -32_768;
        assert_eq!(
            CpuKernels.matmul(&a, &b, s),
            Err(KernelError::MantissaRange {
                op: "matmul",
                operand: "b",
                index: 4,
                found: -32_768,
                max: 32_767
            })
        );
        let big = MatmulShape::new(1, MATMUL_K_MAX + 1, 1);
        assert!(matches!(
            CpuKernels.matmul(&a, &b, big),
            Err(KernelError::Limit { .. })
        ));
    }
}
