//! The statistical quality of `PhiloxNormal`'s draws, the noise behind every IVON sample:
//! moments, a Kolmogorov-Smirnov test against N(0, 1) and tail frequencies on 1e7 draws.
//! It guards any faster generator (fewer rounds, cheaper ln/sincos) against bias. Each
//! bound is 5 standard errors (or the KS test at p = 0.001) wide, for one fixed seed.

use candle_core::{DType, Device};
use varlora::noise::{NoiseSource, PhiloxNormal};

const N: usize = 10_000_000;

fn draws() -> Vec<f64> {
    let mut noise = PhiloxNormal::new(20261201);
    let z = noise.standard_normal(N, DType::F32, &Device::Cpu).unwrap();
    z.to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

#[test]
fn the_first_four_moments_are_the_standard_normals() {
    let z = draws();
    let n = N as f64;
    let mean = z.iter().sum::<f64>() / n;
    let central = |k: i32| z.iter().map(|x| (x - mean).powi(k)).sum::<f64>() / n;
    let var = central(2);
    let skew = central(3) / var.powf(1.5);
    let excess_kurtosis = central(4) / (var * var) - 3.0;
    // Standard errors of the sample moments of N(0, 1).
    for (what, got, se) in [
        ("mean", mean, (1.0 / n).sqrt()),
        ("variance - 1", var - 1.0, (2.0 / n).sqrt()),
        ("skewness", skew, (6.0 / n).sqrt()),
        ("excess kurtosis", excess_kurtosis, (24.0 / n).sqrt()),
    ] {
        assert!(
            got.abs() < 5.0 * se,
            "{what} {got:.2e}, 5 standard errors {:.2e}",
            5.0 * se
        );
    }
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn a_kolmogorov_smirnov_test_does_not_reject_the_standard_normal() {
    let mut z = draws().to_vec();
    z.sort_unstable_by(f64::total_cmp);
    let n = N as f64;
    let d = z
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = normal_cdf(x);
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max);
    // sqrt(n) D's critical value at p = 0.001 is 1.95.
    assert!(n.sqrt() * d < 1.95, "sqrt(n) D = {:.3}", n.sqrt() * d);
}

#[test]
fn tail_frequencies_match_the_normals_beyond_4_and_5_sigma() {
    let z = draws();
    for (sigma, p) in [
        (4.0, 6.334_248e-5),
        (4.5, 6.795_346e-6),
        (5.0, 5.733_031e-7),
    ] {
        let count = z.iter().filter(|x| x.abs() > sigma).count() as f64;
        let expected = p * N as f64;
        // Poisson: 5 standard deviations, and at least one draw where 5.7 are expected,
        // so that a generator whose tail stops short fails.
        let (lo, hi) = (
            expected - 5.0 * expected.sqrt(),
            expected + 5.0 * expected.sqrt(),
        );
        assert!(
            count >= lo.max(1.0) && count <= hi,
            "{count} draws beyond {sigma} sigma, expected {expected:.1}"
        );
    }
}
