//! Cheap, deterministic straw2 draws.
//!
//! The ring is rebuilt independently on every node, so a draw must come out
//! bit-identical everywhere. Only integer mixing and basic IEEE-754 operations
//! (+, -, *, /, which are correctly rounded on every supported target) are used;
//! the platform `ln` is avoided because libm implementations may differ in the
//! last bit, which could flip a near-tie between two candidates.

use std::f64::consts::{LN_2, SQRT_2};

/// Golden-ratio increment: spreads consecutive partition numbers over the
/// whole 64-bit space before mixing.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Salts keep partition keys and disk keys from being the same function, so
/// partition `n` and disk `n` do not collide.
const PART_SALT: u64 = 0x5bd1_e995_2c6b_a1f3;
const DISK_SALT: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The splitmix64 finaliser: a bijection with full avalanche, so distinct
/// inputs give distinct, well-spread outputs.
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Per-partition half of a draw's input, computed once per partition.
pub(crate) fn part_key(part: u32) -> u64 {
    mix64(u64::from(part).wrapping_mul(GOLDEN) ^ PART_SALT)
}

/// Per-disk half of a draw's input, computed once per ring.
pub(crate) fn disk_key(id: u64) -> u64 {
    mix64(id ^ DISK_SALT)
}

/// The straw2 draw of one disk for one partition: `ln(u) / weight` with `u`
/// uniform in (0, 1]. The largest draw wins. Since `-ln(u)` is exponential,
/// the winner among any set of disks is disk `i` with probability
/// `w_i / sum(w)`, and changing one disk's weight only moves that disk's draw.
pub(crate) fn draw(part_key: u64, disk_key: u64, weight: f64) -> f64 {
    ln_unit(mix64(part_key ^ disk_key)) / weight
}

/// `ln(u)` for `u = ((h >> 11) + 1) / 2^53`, a uniform in (0, 1] taken from
/// the top 53 bits of `h`.
pub(crate) fn ln_unit(h: u64) -> f64 {
    let x = (h >> 11) + 1;
    // x = m * 2^exp with m in [1, 2); both conversions and the division are exact.
    let mut exp = 63 - x.leading_zeros() as i32;
    let mut m = x as f64 / (1u64 << exp) as f64;
    // Centre m on 1 so the series below converges fast.
    if m > SQRT_2 {
        m *= 0.5;
        exp += 1;
    }
    f64::from(exp - 53) * LN_2 + ln_near_one(m)
}

/// `ln(m)` for m in [sqrt(1/2), sqrt(2)] via `2 * atanh((m - 1) / (m + 1))`.
/// There |s| <= 0.172, so nine terms leave an error below 1e-15.
fn ln_near_one(m: f64) -> f64 {
    const COEFFS: [f64; 9] = [
        1.0,
        1.0 / 3.0,
        1.0 / 5.0,
        1.0 / 7.0,
        1.0 / 9.0,
        1.0 / 11.0,
        1.0 / 13.0,
        1.0 / 15.0,
        1.0 / 17.0,
    ];
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let series = COEFFS.iter().rev().fold(0.0, |acc, c| acc * z + c);
    2.0 * s * series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_unit_matches_std_ln() {
        let mut h = 1u64;
        for _ in 0..100_000 {
            h = mix64(h.wrapping_add(GOLDEN));
            let u = ((h >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let ours = ln_unit(h);
            let std = u.ln();
            assert!(
                (ours - std).abs() <= 1e-13 * std.abs().max(1e-3),
                "{h:x}: {ours} vs {std}"
            );
        }
    }

    #[test]
    fn ln_unit_edges() {
        assert_eq!(ln_unit(u64::MAX), 0.0);
        let smallest = ln_unit(0);
        assert!((smallest - (-53.0 * LN_2)).abs() < 1e-12);
        assert!(smallest.is_finite());
    }

    #[test]
    fn draws_are_uniform_enough() {
        // Mean of -ln(u) for uniform u is 1.
        let pk = part_key(7);
        let n = 200_000u64;
        let mean = (0..n).map(|d| -draw(pk, disk_key(d), 1.0)).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn keys_differ_between_partition_and_disk() {
        assert_ne!(part_key(5), disk_key(5));
        assert_ne!(part_key(0), part_key(1));
    }
}
