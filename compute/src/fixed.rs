//! Exact integer numerics shared by every backend: rounding half to even, requantization of
//! wide integer sums to a bounded mantissa, integer square roots and a counter-based hash RNG.
//!
//! Everything here is pure integer arithmetic, so it gives the same bits on every platform.
//! See `specs/compute.md`, section "Numerics".

/// Largest mantissa magnitude of the default "B16" format (16-bit signed, never −32768).
pub const B16_MANT_MAX: i32 = 32_767;
/// Largest mantissa magnitude of the 24-bit master copy of parameters ("B24").
pub const B24_MANT_MAX: i32 = (1 << 23) - 1;

/// Number of significant bits of `x` (0 for 0): the `bitlen` of the numerics spec.
pub fn bitlen(x: u128) -> u32 {
    128 - x.leading_zeros()
}

/// `s / 2^k` rounded to the nearest integer, ties to even ("rhe"). `k = 0` returns `s`.
///
/// Works for any `k` (for `k ≥ 127` the result is 0 because `|s| < 2^127`).
pub fn rhe(s: i128, k: u32) -> i128 {
    if k == 0 {
        return s;
    }
    if k >= 127 {
        return 0;
    }
    let q = s >> k; // floor division by 2^k
    let r = s - (q << k); // 0 <= r < 2^k
    let half = 1i128 << (k - 1);
    if r > half || (r == half && (q & 1) == 1) {
        q + 1
    } else {
        q
    }
}

/// `n / d` rounded to the nearest integer, ties to even. `d` must be positive.
pub fn div_rhe(n: i128, d: i128) -> i128 {
    assert!(d > 0, "div_rhe: divisor must be positive");
    let q = n.div_euclid(d); // floor for positive d
    let r = n.rem_euclid(d); // 0 <= r < d
    let twice = 2 * r;
    if twice > d || (twice == d && (q & 1) == 1) {
        q + 1
    } else {
        q
    }
}

/// The shift `k` that requantizes values of largest magnitude `max_abs` to mantissas bounded
/// by `mant_max`: `k = max(0, bitlen(max_abs) − bitlen(mant_max))`, then `k += 1` if
/// `rhe(max_abs, k) > mant_max` (rounding can carry into one more bit).
pub fn requant_shift(max_abs: u128, mant_max: i32) -> u32 {
    let bits = bitlen(mant_max as u128);
    let mut k = bitlen(max_abs).saturating_sub(bits);
    // max_abs < 2^127 in every caller, so the cast is exact.
    if rhe(max_abs as i128, k) > mant_max as i128 {
        k += 1;
    }
    k
}

/// Requantizes wide exact values (`value = s · 2^exp`) to mantissas bounded by `mant_max`,
/// returning the mantissas and the new exponent `exp + k` with `k` from [`requant_shift`].
/// All zero gives all-zero mantissas and the unchanged `exp`.
pub fn requantize(wide: &[i64], exp: i32, mant_max: i32) -> (Vec<i32>, i32) {
    let max_abs = wide.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0);
    let k = requant_shift(max_abs as u128, mant_max);
    let out = wide
        .iter()
        .map(|&v| {
            let r = rhe(v as i128, k);
            debug_assert!(r.unsigned_abs() <= mant_max as u128);
            r as i32
        })
        .collect();
    (out, exp + k as i32)
}

/// Floor of the square root of `x`, exact (Newton iteration on integers).
pub fn isqrt(x: u128) -> u128 {
    if x < 2 {
        return x;
    }
    // Start above the root: 2^ceil(bitlen/2).
    let mut r = 1u128 << bitlen(x).div_ceil(2);
    loop {
        let next = (r + x / r) / 2;
        if next >= r {
            break;
        }
        r = next;
    }
    debug_assert!(r * r <= x && (r + 1) * (r + 1) > x);
    r
}

/// SplitMix64 finalizer: a bijective integer mix (Steele, Lea, Flood 2014).
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Counter-based random word from `(seed, stream, index)`: the same inputs give the same
/// word on every platform and in every thread order. `stream` separates uses (init of one
/// tensor, batch sampling of one step, sampling of one token…).
pub fn hash3(seed: u64, stream: u64, index: u64) -> u64 {
    mix64(mix64(mix64(seed) ^ stream) ^ index)
}

/// Approximately standard-normal integer with standard deviation exactly `2^16`:
/// the Irwin–Hall sum of 12 uniform 16-bit words, centred (variance 12 · (2^32−1)/12 ≈ 2^32).
/// Range: |value| < 6 · 2^16. Used for parameter initialization.
pub fn normal_q16(seed: u64, stream: u64, index: u64) -> i64 {
    let a = hash3(seed, stream, 3 * index);
    let b = hash3(seed, stream, 3 * index + 1);
    let c = hash3(seed, stream, 3 * index + 2);
    let mut sum: i64 = 0;
    for w in [a, b, c] {
        for j in 0..4 {
            sum += ((w >> (16 * j)) & 0xFFFF) as i64;
        }
    }
    // Mean of 12 uniforms on [0, 65535] is 12 · 32767.5 = 6 · 65535.
    sum - 6 * 65_535
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rhe_ties_to_even() {
        assert_eq!(rhe(5, 1), 2); // 2.5 -> 2
        assert_eq!(rhe(7, 1), 4); // 3.5 -> 4
        assert_eq!(rhe(-5, 1), -2); // -2.5 -> -2
        assert_eq!(rhe(-7, 1), -4); // -3.5 -> -4
        assert_eq!(rhe(-6, 2), -2); // -1.5 -> -2
        assert_eq!(rhe(6, 2), 2); // 1.5 -> 2
        assert_eq!(rhe(5, 2), 1); // 1.25 -> 1
        assert_eq!(rhe(123, 0), 123);
        assert_eq!(rhe(i64::MAX as i128, 200), 0);
    }

    #[test]
    fn requant_shift_carries() {
        assert_eq!(requant_shift(32_767, B16_MANT_MAX), 0);
        assert_eq!(requant_shift(32_768, B16_MANT_MAX), 1);
        // 65535 / 2 = 32767.5 -> 32768 (even) > 32767, so one more bit.
        assert_eq!(requant_shift(65_535, B16_MANT_MAX), 2);
        assert_eq!(requant_shift(0, B16_MANT_MAX), 0);
    }

    #[test]
    fn normal_has_unit_scale() {
        let n = 20_000u64;
        let (mut s1, mut s2) = (0f64, 0f64);
        for i in 0..n {
            let v = normal_q16(7, 1, i) as f64 / 65_536.0;
            s1 += v;
            s2 += v * v;
        }
        let mean = s1 / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }

    proptest! {
        #[test]
        fn rhe_matches_rational_rounding(s in any::<i64>(), k in 0u32..70) {
            let r = rhe(s as i128, k);
            // |s/2^k - r| <= 1/2, i.e. |s - r·2^k| <= 2^(k-1), with ties to even.
            let err = s as i128 - (r << k.min(120));
            if k == 0 {
                prop_assert_eq!(err, 0);
            } else if k < 120 {
                let half = 1i128 << (k - 1);
                prop_assert!(err.abs() <= half);
                if err.abs() == half { prop_assert_eq!(r & 1, 0); }
            }
        }

        #[test]
        fn div_rhe_matches_rhe_for_powers_of_two(n in any::<i64>(), k in 0u32..40) {
            prop_assert_eq!(div_rhe(n as i128, 1i128 << k), rhe(n as i128, k));
        }

        #[test]
        fn isqrt_is_floor_sqrt(x in any::<u64>()) {
            let r = isqrt(x as u128);
            prop_assert!(r * r <= x as u128);
            prop_assert!((r + 1) * (r + 1) > x as u128);
        }

        #[test]
        fn requantize_bounds_and_is_nearest(v in proptest::collection::vec(-(1i64 << 50)..(1i64 << 50), 1..64)) {
            let (m, e) = requantize(&v, -3, B16_MANT_MAX);
            let k = (e + 3) as u32;
            for (x, q) in v.iter().zip(&m) {
                prop_assert!(q.unsigned_abs() <= B16_MANT_MAX as u32);
                prop_assert_eq!(*q as i128, rhe(*x as i128, k));
            }
            // Minimal shift: one bit less would overflow the bound (or k is already 0).
            let mx = v.iter().map(|x| x.unsigned_abs()).max().unwrap() as i128;
            if k > 0 { prop_assert!(rhe(mx, k - 1) > B16_MANT_MAX as i128); }
        }
    }
}
