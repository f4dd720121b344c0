//! GELU and its backward pass on the CPU: the sigmoid form in Q31 from exp2, tabulated per
//! exponent for every B16 mantissa.

use super::rounding::{div_rhe_small, requant_f64_1, requant_f64_2, requant_i64, round_f64_1};
use super::tables::{exp2_q31, Exp2Tables, TableCache};
use super::PAR_MIN_LEN;
use crate::numerics::fixed::{bitlen, exp2_tables, requant_shift, rhe64, B16_MANT_MAX, LOG2E_Q30};
use crate::numerics::kernels::{
    check_gelu_bwd, check_mant, Bfp, KernelError, EXP_ARG_SAT, GELU_K_Q16,
};
use rayon::prelude::*;
use std::sync::Arc;

/// GELU's `(σ, g)` for one mantissa (`σ` the Q31 sigmoid of [`crate::numerics::kernels::Kernels::gelu`],
/// `g` the derivative factor of `gelu_bwd`), in i64. Bounds: `|m·GELU_K_Q16| < 2^32`; after
/// the shift and clamp `|z| ≤ 2^40`. For `|z| ≥ 2^22`, `y = rhe(|z|·LOG2E_Q30, 30) ≥ 1.44·2^22
/// − 1/2 ≥ 2^22`, so `E = 0` (the exp2 integer part is `≥ 64`), hence `σ ∈ {0, 2^31}` and
/// `t = σ·(2^31 − σ) = 0`; otherwise `|z|·LOG2E_Q30 < 2^53` and `|z·t| < 2^22·2^29`. `E ≤ 2^31`,
/// so `E·2^31`, `2^62` and `σ·(2^31 − σ) ≤ 2^60` fit in i64.
pub(super) fn gelu_sg(t: &Exp2Tables, m: i32, exp: i32) -> (i64, i64) {
    const Z_E_ZERO_MIN: i64 = 1 << 22;
    let x = m as i64 * GELU_K_Q16;
    let sh = -(exp as i64);
    let z = if sh >= 0 {
        rhe64(x, sh.min(127) as u32)
    } else if x == 0 {
        0
    } else if bitlen(x.unsigned_abs() as u128) as i64 - sh > 40 {
        x.signum() * EXP_ARG_SAT as i64
    } else {
        x << (-sh)
    };
    let e = if z.abs() >= Z_E_ZERO_MIN {
        0
    } else {
        exp2_q31(t, rhe64(z.abs() * LOG2E_Q30 as i64, 30))
    };
    let one = 1i64 << 31;
    let s = if z >= 0 {
        div_rhe_small(1 << 62, one + e)
    } else {
        div_rhe_small(e << 31, one + e)
    };
    let tt = rhe64(s * (one - s), 31);
    let g = if tt == 0 {
        s
    } else {
        debug_assert!(z.abs() < Z_E_ZERO_MIN);
        s + rhe64(z * tt, 16)
    };
    (s, g)
}

/// Number of distinct B16 mantissas, the length of a GELU table.
const GELU_TABLE_LEN: usize = 2 * B16_MANT_MAX as usize + 1;

/// Smallest tensor for which a (not yet cached) GELU table is built: building costs about as
/// much as evaluating this many elements directly.
pub(super) const GELU_TABLE_BUILD_MIN_LEN: usize = GELU_TABLE_LEN / 2;

/// Number of GELU tables kept (one per input exponent, most recently used first).
const GELU_CACHE_LEN: usize = 8;

/// `(σ, g)` of every B16 mantissa for one exponent: a pure function of `(m, exp)`, so looking
/// it up gives the same bits as computing it.
struct GeluTable {
    /// `σ ∈ [0, 2^31]`, so u32 (a quarter of the cache footprint of `(i64, i64)`).
    sigma: Vec<u32>,
    /// `g` (`|g| < 2^36`, an exact f64).
    g: Vec<f64>,
    /// `pos_max[j] = max |i·σ(i)|` over `0 ≤ i ≤ j` (exact f64, see [`gelu`]).
    pos_max: Vec<f64>,
    /// `neg_max[j] = max |i·σ(i)|` over `−j ≤ i ≤ 0`.
    neg_max: Vec<f64>,
}

impl GeluTable {
    /// `m·σ(m)`, exact in f64 (`|m·σ| ≤ 2^15·2^31 < 2^51`).
    #[inline]
    fn value(&self, m: i32) -> f64 {
        m as f64 * self.sigma[(m + B16_MANT_MAX) as usize] as f64
    }

    /// The running maxima of `|m·σ(m)|` outwards from 0, one per sign.
    fn prefix_max(sigma: &[u32]) -> (Vec<f64>, Vec<f64>) {
        let run = |ms: &mut dyn Iterator<Item = i32>| -> Vec<f64> {
            let mut acc = 0f64;
            ms.map(|m| {
                acc = acc.max((m as f64 * sigma[(m + B16_MANT_MAX) as usize] as f64).abs());
                acc
            })
            .collect()
        };
        (
            run(&mut (0..=B16_MANT_MAX)),
            run(&mut (0..=B16_MANT_MAX).map(|j| -j)),
        )
    }
}

/// Tables of recent exponents: the forward and backward of one layer share `x`, and
/// activations keep their exponent over many steps.
static GELU_CACHE: TableCache<i32, GeluTable, GELU_CACHE_LEN> = TableCache::new();

/// The cached table of `exp`, or a new one if the tensor is large enough to pay for it.
fn gelu_table(exp: i32, len: usize) -> Option<Arc<GeluTable>> {
    if let Some(table) = GELU_CACHE.get(&exp) {
        return Some(table);
    }
    if len < GELU_TABLE_BUILD_MIN_LEN {
        return None;
    }
    let t = exp2_tables();
    let (sigma, g): (Vec<u32>, Vec<f64>) = (0..GELU_TABLE_LEN)
        .into_par_iter()
        .with_min_len(PAR_MIN_LEN)
        .map(|i| {
            let (s, g) = gelu_sg(t, i as i32 - B16_MANT_MAX, exp);
            (s as u32, g as f64)
        })
        .unzip();
    let (pos_max, neg_max) = GeluTable::prefix_max(&sigma);
    let table = Arc::new(GeluTable {
        sigma,
        g,
        pos_max,
        neg_max,
    });
    GELU_CACHE.put(exp, table.clone());
    Some(table)
}

/// The requantization shift of GELU's `max |m·σ(m)|` over `x`, found from the smallest and
/// largest mantissa (one vectorized pass instead of a pass of table lookups), or `None` when
/// they do not decide it. The true maximum `M` lies between `lower`, the larger `|m·σ|` of the
/// two extreme mantissas (both present in `x`), and `upper`, the table's maximum over every
/// mantissa in `[lo, hi]` (a superset of those present); `requant_shift` is non-decreasing in
/// its argument, so when it agrees on both bounds it is also its value at `M`. In training the
/// positive tail (`σ ≈ 1`) dominates the bounded negative lobe and the bounds agree.
fn gelu_shift(tab: &GeluTable, x: &[i32]) -> Option<u32> {
    let (lo, hi) = x
        .par_chunks(PAR_MIN_LEN)
        .map(|c| {
            c.iter()
                .fold((0i32, 0i32), |(l, h), &m| (l.min(m), h.max(m)))
        })
        .reduce(|| (0, 0), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    // lo ≤ 0 ≤ hi (the folds start at 0; 0·σ(0) = 0 cannot raise the maximum), and
    // |lo|, hi ≤ B16_MANT_MAX (checked by the caller).
    let lower = tab.value(lo).abs().max(tab.value(hi).abs());
    let upper = tab.pos_max[hi as usize].max(tab.neg_max[lo.unsigned_abs() as usize]);
    let k = requant_shift(lower as u128, B16_MANT_MAX);
    (k == requant_shift(upper as u128, B16_MANT_MAX)).then_some(k)
}

/// [`crate::numerics::kernels::Kernels::gelu`]: `|m·σ| ≤ 2^15·2^31` fits in i64.
pub(super) fn gelu(x: &Bfp) -> Result<Bfp, KernelError> {
    const OP: &str = "gelu";
    check_mant(OP, "x", &x.mant, B16_MANT_MAX)?;
    let base = x.exp as i64 - 31;
    match gelu_table(x.exp, x.len()) {
        // |m·σ| ≤ 2^15·2^31 < 2^51: exact in f64.
        Some(tab) => {
            let f = |m: i32| tab.value(m);
            match gelu_shift(&tab, &x.mant) {
                Some(k) => round_f64_1(OP, &x.mant, base, k, f),
                None => requant_f64_1(OP, &x.mant, base, B16_MANT_MAX, f),
            }
        }
        None => {
            let t = exp2_tables();
            let wide: Vec<i64> = x
                .mant
                .par_iter()
                .with_min_len(PAR_MIN_LEN)
                .map(|&m| m as i64 * gelu_sg(t, m, x.exp).0)
                .collect();
            requant_i64(OP, &wide, base, B16_MANT_MAX)
        }
    }
}

/// [`crate::numerics::kernels::Kernels::gelu_bwd`]: `|g| < 2^31 + 2^35` (see [`gelu_sg`]), so
/// `|dy·g| < 2^51` fits in i64.
pub(super) fn gelu_bwd(x: &Bfp, dy: &Bfp) -> Result<Bfp, KernelError> {
    const OP: &str = "gelu_bwd";
    check_gelu_bwd(x, dy)?;
    let base = dy.exp as i64 - 31;
    match gelu_table(x.exp, x.len()) {
        // |dy·g| < 2^15·2^36 = 2^51: exact in f64.
        Some(tab) => requant_f64_2(OP, &x.mant, &dy.mant, base, B16_MANT_MAX, |m, d| {
            d as f64 * tab.g[(m + B16_MANT_MAX) as usize]
        }),
        None => {
            let t = exp2_tables();
            let wide: Vec<i64> = x
                .mant
                .par_iter()
                .zip(dy.mant.par_iter())
                .with_min_len(PAR_MIN_LEN)
                .map(|(&m, &d)| d as i64 * gelu_sg(t, m, x.exp).1)
                .collect();
            requant_i64(OP, &wide, base, B16_MANT_MAX)
        }
    }
}
