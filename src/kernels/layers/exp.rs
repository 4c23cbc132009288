//! `e^x` for `x <= 0` without branches or calls, so that the loops of the softmax and the
//! GELU that use it vectorise (libm's `expf` is a call per element).

/// `e^x` for `x <= 0`, within 1 ulp (tested against f64 over the range): `x = k ln 2 + r`
/// with `|r| <= ln 2 / 2` (Cody and Waite's split of `ln 2`, so that `k ln 2` is exact),
/// `e^r` by its Taylor polynomial to degree 7 (remainder below 6e-9), times `2^k` built
/// from the bits. Below -87.33, where f32's normal range ends, the result is 0 (the true
/// value is below 1.2e-38); NaN stays NaN. Positive `x` is clamped to 0 (gives 1).
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts: LN2_HI has 9 trailing zero bits, so k * LN2_HI is exact for
    // |k| <= 127.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer, which then sits in the low bits.
    const ROUND: f32 = 12_582_912.0;
    const FLOOR: f32 = -87.33;
    let xc = x.clamp(FLOOR, 0.0);
    let shifted = xc * LOG2E + ROUND;
    let kf = shifted - ROUND;
    let k = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (xc - kf * LN2_HI) - kf * LN2_LO;
    // The two leading terms added last, to the small rest, so that their rounding
    // dominates.
    let rest = 0.5
        + r * (1.0 / 6.0
            + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))));
    let p = 1.0 + (r + (r * r) * rest);
    let scale = f32::from_bits(((k + 127) as u32) << 23);
    if x < FLOOR {
        0.0
    } else {
        p * scale
    }
}

#[cfg(test)]
mod tests {
    use super::exp_nonpositive;

    /// The distance in ulps between `y` and the f64 value `exact`, both positive.
    fn ulps(y: f32, exact: f64) -> f64 {
        let rounded = exact as f32;
        let ulp = f64::from(f32::from_bits(rounded.to_bits() + 1) - rounded);
        (f64::from(y) - exact).abs() / ulp
    }

    #[test]
    fn within_one_ulp_of_the_exact_value() {
        let mut worst = (0f64, 0f32);
        // A fine grid over the whole range, and the ends of every `k`'s interval.
        let grid = (0..=2_000_000).map(|i| -87.3 * i as f32 / 2e6);
        let ends = (0..=126).flat_map(|k| {
            let t = -(k as f32 + 0.5) * std::f32::consts::LN_2;
            [
                t,
                f32::from_bits(t.to_bits() + 1),
                f32::from_bits(t.to_bits() - 1),
            ]
        });
        for x in grid.chain(ends).filter(|&x| x >= -87.33) {
            let e = ulps(exp_nonpositive(x), f64::from(x).exp());
            if e > worst.0 {
                worst = (e, x);
            }
        }
        assert!(worst.0 <= 1.0, "{} ulp at {}", worst.0, worst.1);
    }

    #[test]
    fn ends_of_the_range() {
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(-87.34), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(f32::MIN), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert!(exp_nonpositive(-87.33) > 0.0);
    }
}
