//! Temperature scaling against closed forms and a brute-force grid, and its errors.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use varlora::calibrate::TemperatureScaling;
use varlora::Error;

/// Mean NLL of softmax(z / t), computed independently in f64.
fn nll(z: &[Vec<f64>], y: &[u32], t: f64) -> f64 {
    z.iter()
        .zip(y)
        .map(|(row, &c)| {
            let lse = row.iter().map(|v| (v / t).exp()).sum::<f64>().ln();
            lse - row[c as usize] / t
        })
        .sum::<f64>()
        / z.len() as f64
}

fn tensors(z: &[Vec<f64>], y: &[u32]) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let (n, c) = (z.len(), z.first().map_or(0, Vec::len));
    let flat: Vec<f64> = z.iter().flatten().copied().collect();
    (
        Tensor::from_vec(flat, (n, c), &dev).unwrap(),
        Tensor::new(y, &dev).unwrap(),
    )
}

/// Two classes, logits (s, 0), right a fraction q of the time: the NLL is minimal where
/// sigmoid(s / T) = q, so T = s / logit(q).
#[test]
fn fits_the_closed_form_optimum() {
    for (s, right, n) in [(5.0, 7, 10), (2.0, 9, 10), (0.5, 3, 4), (8.0, 51, 100)] {
        let z = vec![vec![s, 0.0]; n];
        let y: Vec<u32> = (0..n).map(|i| u32::from(i >= right)).collect();
        let (zt, yt) = tensors(&z, &y);
        let t = TemperatureScaling::fit(&zt, &yt).unwrap().temperature;
        let q = right as f64 / n as f64;
        let want = s / (q / (1.0 - q)).ln();
        assert!(
            (t - want).abs() < 1e-6 * want,
            "s {s}, q {q}: {t} vs {want}"
        );
    }
}

#[test]
fn matches_a_brute_force_grid() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for classes in [2usize, 5] {
        let n = 300;
        // Sharp logits whose labels follow a softer version: an overconfident model.
        let mut z = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let row: Vec<f64> = (0..classes).map(|_| rng.random::<f64>() * 6.0).collect();
            let soft: Vec<f64> = row.iter().map(|v| (v / 3.0).exp()).collect();
            let total: f64 = soft.iter().sum();
            let mut u = rng.random::<f64>() * total;
            let mut label = classes - 1;
            for (c, p) in soft.iter().enumerate() {
                if u < *p {
                    label = c;
                    break;
                }
                u -= p;
            }
            z.push(row);
            y.push(label as u32);
        }
        let (zt, yt) = tensors(&z, &y);
        let fitted = TemperatureScaling::fit(&zt, &yt).unwrap().temperature;
        let (best_t, best_nll) = (0..=20_000)
            .map(|i| (-3.0 + 6.0 * i as f64 / 20_000.0).exp())
            .map(|t| (t, nll(&z, &y, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert!(nll(&z, &y, fitted) <= best_nll + 1e-12, "{classes} classes");
        assert!(
            (fitted.ln() - best_t.ln()).abs() < 1e-3,
            "{fitted} vs grid {best_t}"
        );
        assert!(
            fitted > 1.5,
            "an overconfident model gets T > 1, got {fitted}"
        );
    }
}

#[test]
fn degenerate_inputs_give_a_finite_temperature() {
    // Perfectly separated: the NLL falls as T -> 0; the smallest temperature searched.
    let (z, y) = tensors(&[vec![3.0, 0.0], vec![0.0, 3.0]], &[0, 1]);
    let t = TemperatureScaling::fit(&z, &y).unwrap().temperature;
    assert!(t.is_finite() && t > 0.0 && t < 1e-2, "{t}");
    // Always wrong: the NLL falls as T grows; the largest searched.
    let (z, y) = tensors(&[vec![3.0, 0.0], vec![0.0, 3.0]], &[1, 0]);
    let t = TemperatureScaling::fit(&z, &y).unwrap().temperature;
    assert!(t.is_finite() && t > 1e2, "{t}");
    // Equal logits: every T is optimal, and T = 1 is returned.
    let (z, y) = tensors(&vec![vec![1.0, 1.0, 1.0]; 3], &[0, 1, 2]);
    assert_eq!(TemperatureScaling::fit(&z, &y).unwrap().temperature, 1.0);
}

#[test]
fn applies_to_logits_and_to_an_averaged_predictive() {
    let dev = Device::Cpu;
    let ts = TemperatureScaling::new(2.0).unwrap();
    let z = Tensor::new(&[[2f32, -1.0, 0.5]], &dev).unwrap();
    let scaled: Vec<f32> = ts
        .apply(&z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(scaled, vec![1.0, -0.5, 0.25]);
    // softmax(log p / T) is p^(1/T) renormalised.
    let p = [0.7f64, 0.2, 0.1];
    let lp = Tensor::new(&[[0.7f64.ln(), 0.2f64.ln(), 0.1f64.ln()]], &dev).unwrap();
    let got: Vec<f64> = ts
        .apply_log_probs(&lp)
        .unwrap()
        .exp()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let total: f64 = p.iter().map(|v| v.sqrt()).sum();
    for (g, v) in got.iter().zip(p) {
        assert!((g - v.sqrt() / total).abs() < 1e-12);
    }
    let probs: Vec<f64> = ts
        .probs(&lp)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!((probs[0] - got[0]).abs() < 1e-12);
}

#[test]
fn bad_input_is_an_error() {
    let dev = Device::Cpu;
    let y = Tensor::new(&[0u32, 1], &dev).unwrap();
    let cases = [
        (
            "empty",
            Tensor::zeros((0, 2), candle_core::DType::F32, &dev).unwrap(),
            Tensor::new(&[0u32; 0], &dev).unwrap(),
        ),
        (
            "NaN",
            Tensor::new(&[[f32::NAN, 0.0], [0.0, 1.0]], &dev).unwrap(),
            y.clone(),
        ),
        (
            "Inf",
            Tensor::new(&[[f32::NEG_INFINITY, 0.0], [0.0, 1.0]], &dev).unwrap(),
            y.clone(),
        ),
        (
            "label",
            Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap(),
            Tensor::new(&[0u32, 2], &dev).unwrap(),
        ),
        (
            "shape",
            Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap(),
            Tensor::new(&[0u32], &dev).unwrap(),
        ),
    ];
    for (what, z, y) in cases {
        match (what, TemperatureScaling::fit(&z, &y)) {
            ("shape", Err(Error::ShapeMismatch(_))) => {}
            (_, Err(Error::InvalidInput(_))) if what != "shape" => {}
            (_, other) => panic!("{what}: expected a typed input error, got {other:?}"),
        }
    }
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(TemperatureScaling::new(t).is_err(), "{t}");
    }
}
