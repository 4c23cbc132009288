//! IVON against closed forms, independent of the PyTorch reference: the Hessian estimate
//! of a quadratic, and the posterior of a linear-Gaussian regression.

use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;
use varlora::optim::{HessApprox, Ivon, IvonConfig};

/// On `0.5 * sum_i a_i w_i^2` the expected price estimate is exactly `a_i`, so `h`
/// settles at `a` whatever the mean does.
#[test]
fn hessian_estimate_converges_to_the_curvature_of_a_quadratic() {
    let dev = Device::Cpu;
    let a: Vec<f32> = (0..200).map(|i| 0.5 + 4.5 * i as f32 / 199.0).collect();
    let a_t = Tensor::new(a.as_slice(), &dev).unwrap();
    let w =
        Var::from_tensor(&Tensor::ones(a.len(), candle_core::DType::F32, &dev).unwrap()).unwrap();
    let config = IvonConfig::new(0.05, 1000.0)
        .hess_init(1.0)
        .beta2(0.999)
        .weight_decay(0.0)
        .hess_approx(HessApprox::Price)
        .seed(1);
    let mut opt = Ivon::new(vec![w.clone()], config).unwrap();
    for _ in 0..6000 {
        let loss = ((w.as_tensor().sqr().unwrap() * &a_t)
            .unwrap()
            .sum_all()
            .unwrap()
            * 0.5)
            .unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let h: Vec<f32> = opt.group_params(0).unwrap()[0]
        .hess()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ratio: Vec<f64> = h.iter().zip(&a).map(|(h, a)| f64::from(h / a)).collect();
    let mean_ratio = ratio.iter().sum::<f64>() / ratio.len() as f64;
    let max_rel = ratio.iter().map(|r| (r - 1.0).abs()).fold(0.0, f64::max);
    // Near the optimum each estimate is a * chi^2_1 (relative sd sqrt 2); beta2 = 0.999
    // averages ~2000 of them: relative sd ~0.03 per weight, ~0.002 over 200 weights.
    approx::assert_abs_diff_eq!(mean_ratio, 1.0, epsilon = 0.02);
    assert!(max_rel < 0.15, "max relative error {max_rel}");
    // The estimate tracks the curvature: far from the initial 1.0 at both ends.
    assert!(h[0] < 0.6 && h[199] > 4.4, "{} {}", h[0], h[199]);
}

/// Linear regression with unit noise, `n` points and orthogonal features: the exact
/// posterior under the prior `N(0, 1 / (n wd))` has precision `X^T X + n wd I`, diagonal
/// here, so mean-field IVON with `ess = n` should find its variance `1 / (n (c_i^2 + wd))`
/// and its mean, the ridge solution.
#[test]
fn posterior_of_linear_gaussian_regression_matches_the_exact_one() {
    let dev = Device::Cpu;
    let n = 256usize;
    let scales = [1.0f64, 2.0, 0.5, 3.0];
    // Rademacher functions (bit k + 1 of the index, as +-1): orthogonal over 256 points.
    let walsh = |k: usize, i: usize| if i & (1 << (k + 1)) == 0 { 1.0 } else { -1.0 };
    let x: Vec<f64> = (0..n)
        .flat_map(|i| scales.iter().enumerate().map(move |(k, c)| c * walsh(k, i)))
        .collect();
    let w_true = [0.5f64, -1.0, 2.0, 0.25];
    // Deterministic "noise" orthogonal to nothing in particular.
    let y: Vec<f64> = (0..n)
        .map(|i| {
            let clean: f64 = (0..4).map(|k| x[i * 4 + k] * w_true[k]).sum();
            clean + ((i * 7919) % 13) as f64 / 6.0 - 1.0
        })
        .collect();
    let wd = 1e-2;
    let x_t = Tensor::from_vec(x.clone(), (n, 4), &dev).unwrap();
    let y_t = Tensor::from_vec(y.clone(), (n, 1), &dev).unwrap();
    let w = Var::zeros((4, 1), candle_core::DType::F64, &dev).unwrap();
    let config = IvonConfig::new(0.5, n as f64)
        .hess_init(1.0)
        .beta2(0.998)
        .weight_decay(wd)
        .mc_samples(4)
        .seed(7);
    let mut opt = Ivon::new(vec![w.clone()], config).unwrap();
    for _ in 0..3000 {
        for _ in 0..4 {
            let r = (x_t.matmul(w.as_tensor()).unwrap() - &y_t).unwrap();
            let loss = (r.sqr().unwrap().sum_all().unwrap() * (0.5 / n as f64)).unwrap();
            opt.backward_step(&loss).unwrap();
        }
    }
    let var: Vec<f64> = opt
        .posterior_std(0, 0)
        .unwrap()
        .sqr()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mean: Vec<f64> = opt.group_params(0).unwrap()[0]
        .mean()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for k in 0..4 {
        let c2 = scales[k] * scales[k];
        let exact_var = 1.0 / (n as f64 * (c2 + wd));
        let xty: f64 = (0..n).map(|i| x[i * 4 + k] * y[i]).sum();
        let exact_mean = xty / (n as f64 * (c2 + wd));
        let rel_var = (var[k] - exact_var).abs() / exact_var;
        assert!(
            rel_var < 0.1,
            "feature {k}: variance {} vs exact {exact_var}",
            var[k]
        );
        // The mean wanders within the posterior: a few standard deviations at most.
        let z = (mean[k] - exact_mean).abs() / exact_var.sqrt();
        assert!(
            z < 3.0,
            "feature {k}: mean {} vs exact {exact_mean} ({z} sd)",
            mean[k]
        );
    }
}
