//! BLoB: the KL against a Monte Carlo estimate, the Flipout forward's mean and variance,
//! sampling switches, and the KL schedule.

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use varlora::lora::{
    kl_period, kl_weight, BayesianLoraLinear, BlobConfig, BlobSampler, LoraConfig,
};
use varlora::predict::Posterior;

const IN: usize = 4;
const OUT: usize = 3;
const RANK: usize = 2;

/// A layer with chosen M, G and B (f64 for precise statistics).
fn layer(sampler: &BlobSampler, m: &[f64], g: &[f64], b: &[f64]) -> (BayesianLoraLinear, VarMap) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
    let w = Tensor::from_vec(
        (0..OUT * IN)
            .map(|i| i as f64 * 0.1 - 0.5)
            .collect::<Vec<_>>(),
        (OUT, IN),
        &dev,
    )
    .unwrap();
    let config = BlobConfig::new(LoraConfig::new(RANK).alpha(4.0));
    let layer =
        BayesianLoraLinear::new(Linear::new(w, None), config, vb.pp("fc"), sampler).unwrap();
    let data = varmap.data().lock().unwrap();
    data["fc.lora_a"]
        .set(&Tensor::from_vec(m.to_vec(), (RANK, IN), &dev).unwrap())
        .unwrap();
    data["fc.lora_a_g"]
        .set(&Tensor::from_vec(g.to_vec(), (RANK, IN), &dev).unwrap())
        .unwrap();
    data["fc.lora_b"]
        .set(&Tensor::from_vec(b.to_vec(), (OUT, RANK), &dev).unwrap())
        .unwrap();
    drop(data);
    (layer, varmap)
}

const M: [f64; 8] = [0.3, -0.1, 0.05, 0.2, -0.25, 0.15, 0.0, 0.1];
const G: [f64; 8] = [0.3, 0.4, 0.2, 0.5, 0.35, 0.25, 0.45, 0.3];
const B: [f64; 6] = [0.5, -0.3, 0.2, 0.8, -0.6, 0.1];

/// One input row.
fn one_row() -> Tensor {
    Tensor::from_vec(vec![0.5f64, -1.0, 2.0, 0.25], (1, IN), &Device::Cpu).unwrap()
}

/// The first training forward of `x` through a layer whose sampler of `seed` nothing
/// else has touched: what a restored stream must draw next.
fn first_training_forward(seed: u64, x: &Tensor) -> Vec<f64> {
    let (layer, _) = layer(&BlobSampler::new(seed), &M, &G, &B);
    let y = layer.forward_t(x, false).unwrap();
    y.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn kl_matches_a_monte_carlo_estimate() {
    let sampler = BlobSampler::new(0);
    let (layer, _) = layer(&sampler, &M, &G, &B);
    let kl: f64 = layer.kl().unwrap().to_scalar().unwrap();
    let beta = 0.2f64;
    // Exact Gaussian KL, without the reference's guards.
    let exact: f64 = M
        .iter()
        .zip(&G)
        .map(|(m, g)| {
            let s = g * g;
            (beta / s).ln() + (s * s + m * m) / (2.0 * beta * beta) - 0.5
        })
        .sum();
    assert!((kl - exact).abs() < 1e-4 * exact.abs(), "{kl} vs {exact}");
    // E_q[log q(a) - log p(a)] by sampling a ~ q, per element.
    let mut rng = StdRng::seed_from_u64(1);
    let n = 200_000;
    let (mut mean, mut sq) = (0.0, 0.0);
    for _ in 0..n {
        let mut total = 0.0;
        for (m, g) in M.iter().zip(&G) {
            let s = g * g;
            let a = Normal::new(*m, s).unwrap().sample(&mut rng);
            let log_q = -((a - m) / s).powi(2) / 2.0 - s.ln();
            let log_p = -(a / beta).powi(2) / 2.0 - beta.ln();
            total += log_q - log_p;
        }
        mean += total;
        sq += total * total;
    }
    mean /= n as f64;
    let se = ((sq / n as f64 - mean * mean) / n as f64).sqrt();
    assert!(
        (mean - kl).abs() < 4.0 * se,
        "MC {mean} +- {se} vs closed form {kl}"
    );
}

#[test]
fn kl_gradient_reaches_mean_and_std() {
    let sampler = BlobSampler::new(0);
    let (layer, varmap) = layer(&sampler, &M, &G, &B);
    let grads = layer.kl().unwrap().backward().unwrap();
    for name in ["fc.lora_a", "fc.lora_a_g"] {
        let v = varmap.data().lock().unwrap()[name].clone();
        assert!(grads.get(v.as_tensor()).is_some(), "{name}");
    }
}

#[test]
fn flipout_mean_and_variance_match_the_closed_form() {
    let dev = Device::Cpu;
    let sampler = BlobSampler::new(3);
    let (layer, _) = layer(&sampler, &M, &G, &B);
    let x = [0.5f64, -1.0, 2.0, 0.25];
    // 8 copies of one example in a batch (each row gets its own signs), 5000 forwards
    // (each draws its own E).
    let rows = 8;
    let xb = Tensor::from_vec(x.repeat(rows), (rows, IN), &dev).unwrap();
    let mean_path: Vec<f64> = {
        sampler.set_sampling(false).unwrap();
        let y = layer
            .forward_t(&xb.narrow(0, 0, 1).unwrap(), false)
            .unwrap();
        sampler.set_sampling(true).unwrap();
        y.flatten_all().unwrap().to_vec1().unwrap()
    };
    let mut sum = [0.0; OUT];
    let mut sumsq = [0.0; OUT];
    let draws = 5000;
    for _ in 0..draws {
        let y: Vec<Vec<f64>> = layer.forward_t(&xb, false).unwrap().to_vec2().unwrap();
        assert!(
            y.iter().any(|r| r != &y[0]),
            "examples of one batch get their own noise"
        );
        for row in &y {
            for j in 0..OUT {
                let d = row[j] - mean_path[j];
                sum[j] += d;
                sumsq[j] += d * d;
            }
        }
    }
    let n = (rows * draws) as f64;
    let scale = 4.0 / RANK as f64;
    for j in 0..OUT {
        // Var(out_j) = scale^2 sum_k B_jk^2 sum_i x_i^2 S_ki^2, S = G^2.
        let var: f64 = (0..RANK)
            .map(|k| {
                B[j * RANK + k].powi(2)
                    * (0..IN)
                        .map(|i| x[i].powi(2) * G[k * IN + i].powi(4))
                        .sum::<f64>()
            })
            .sum::<f64>()
            * scale
            * scale;
        let mean = sum[j] / n;
        let observed = sumsq[j] / n - mean * mean;
        // Rows of one draw share E, so the effective sample is smaller than n; 10% and a
        // generous mean bound still catch a wrong scale or a missing sign flip.
        assert!(
            mean.abs() < 0.1 * var.sqrt(),
            "output {j}: mean offset {mean}, sd {}",
            var.sqrt()
        );
        assert!(
            (observed / var - 1.0).abs() < 0.1,
            "output {j}: variance {observed} vs {var}"
        );
    }
}

#[test]
fn sampling_switch_and_posterior_samples() {
    let mut sampler = BlobSampler::new(4);
    let (layer, _) = layer(&sampler, &M, &G, &B);
    let x = one_row();
    let f = || {
        layer
            .forward_t(&x, false)
            .and_then(|y| y.flatten_all()?.to_vec1::<f64>())
    };
    let s0 = sampler.with_posterior_sample(0, f).unwrap();
    let s1 = sampler.with_posterior_sample(1, f).unwrap();
    assert_ne!(s0, s1);
    assert_eq!(sampler.with_posterior_sample(0, f).unwrap(), s0);
    let point = sampler.with_point_estimate(f).unwrap();
    assert_eq!(sampler.with_point_estimate(f).unwrap(), point);
    assert!(
        sampler.is_sampling().unwrap(),
        "the training mode is restored"
    );
    // Training forwards keep drawing: two calls differ.
    assert_ne!(f().unwrap(), f().unwrap());
}

/// A closure that panics or errs still gets the sampler's mode and stream back: the
/// training forward after it draws what it would have drawn without the closure.
#[test]
fn the_sampler_is_restored_after_a_panic_or_an_error() {
    let x = one_row();
    let want = first_training_forward(9, &x);
    let mut sampler = BlobSampler::new(9);
    let (layer, _) = layer(&sampler, &M, &G, &B);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sampler.with_point_estimate(|| -> candle_core::Result<()> {
            layer.forward_t(&x, false)?;
            panic!("a model that panics")
        })
    }));
    assert!(panicked.is_err());
    let failed = sampler.with_posterior_sample(3, || -> candle_core::Result<()> {
        layer.forward_t(&x, false)?;
        candle_core::bail!("a model that errs")
    });
    assert!(failed.is_err());
    assert!(sampler.is_sampling().unwrap(), "the training mode is back");
    let got = layer.forward_t(&x, false).unwrap();
    let got: Vec<f64> = got.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got, want, "the stream is back");
}

#[test]
fn kl_schedule_matches_the_reference_formula() {
    for period in [1u64, 3, 7] {
        for step in 1..=3 * period {
            let i = match step % period {
                0 => period,
                r => r,
            };
            let direct = 2f64.powi(i as i32) / (2f64.powi(period as i32 + 1) - 1.0);
            assert!((kl_weight(step, period) - direct).abs() < 1e-15 * direct.max(1.0));
        }
    }
    // No overflow for long periods; the last step of a period weighs about one half.
    let w = kl_weight(5000, 5000);
    assert!((w - 0.5).abs() < 1e-12, "{w}");
    // Early steps of a long period underflow to exactly 0 rather than NaN; ten steps
    // before its end the weight is 2^-11 exactly.
    assert_eq!(kl_weight(1, 5000), 0.0);
    assert_eq!(kl_weight(4990, 5000), 2f64.powi(-11));
    // 100 * 3200^(pi / 8) / 32 = 74.4.
    assert_eq!(kl_period(3200, 32, 8.0), 74);
}

#[test]
fn invalid_configs_are_errors() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let base = Linear::new(Tensor::zeros((3, 4), DType::F32, &dev).unwrap(), None);
    let mut config = BlobConfig::new(LoraConfig::new(2));
    config.prior_std = 0.0;
    assert!(
        BayesianLoraLinear::new(base.clone(), config, vb.pp("a"), &BlobSampler::new(0)).is_err()
    );
    let mut config = BlobConfig::new(LoraConfig::new(2));
    config.bayes_eps = f64::NAN;
    assert!(BayesianLoraLinear::new(base, config, vb.pp("b"), &BlobSampler::new(0)).is_err());
}

/// At the mean (sampling off, "BLoB N = 0") a layer computes `W0 x + (alpha / r) B M x`,
/// here summed out by hand.
#[test]
fn mean_output_is_the_lora_update_of_the_means() {
    let dev = Device::Cpu;
    let mut sampler = BlobSampler::new(5);
    let (layer, _) = layer(&sampler, &M, &G, &B);
    let x = [0.5f64, -1.0, 2.0, 0.25, 1.5, 0.0, -0.5, 1.0];
    let xt = Tensor::from_vec(x.to_vec(), (2, IN), &dev).unwrap();
    let got = sampler
        .with_point_estimate(|| layer.forward_t(&xt, true))
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let scale = 4.0 / RANK as f64;
    for (row, xr) in x.chunks(IN).enumerate() {
        for o in 0..OUT {
            let base: f64 = (0..IN)
                .map(|i| ((o * IN + i) as f64 * 0.1 - 0.5) * xr[i])
                .sum();
            let mx: Vec<f64> = (0..RANK)
                .map(|r| (0..IN).map(|i| M[r * IN + i] * xr[i]).sum())
                .collect();
            let update: f64 = (0..RANK).map(|r| B[o * RANK + r] * mx[r]).sum();
            let want = base + scale * update;
            assert!(
                (got[row][o] - want).abs() < 1e-12,
                "row {row}, output {o}: {} vs {want}",
                got[row][o]
            );
        }
    }
}

/// Flipout draws one `E` per forward, shared by every example and token, and signs per
/// row. With `B` = the first `RANK` unit vectors, scale 2 and input row `n` = `e_j`, row
/// `n`'s noise is `2 s_n[k] r_n[j] E[k, j]` in output `k < RANK` and 0 in the last: its
/// magnitude `2 |E[k, j]|` is the same for every row with the same `j`, while the signs
/// vary. A layer that drew `E` per example (or per token) would break the magnitudes.
#[test]
fn one_noise_draw_per_forward_shared_by_every_row() {
    let dev = Device::Cpu;
    let mut sampler = BlobSampler::new(12);
    let b = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
    let (layer, _) = layer(&sampler, &M, &G, &b);
    let (batch, tokens) = (4, 8);
    let rows: Vec<f64> = (0..batch * tokens)
        .flat_map(|n| (0..IN).map(move |i| if i == n % IN { 1.0 } else { 0.0 }))
        .collect();
    let x = Tensor::from_vec(rows, (batch, tokens, IN), &dev).unwrap();
    let flat = |y: Tensor| {
        y.reshape((batch * tokens, OUT))
            .unwrap()
            .to_vec2::<f64>()
            .unwrap()
    };
    let mean = flat(
        sampler
            .with_point_estimate(|| layer.forward_t(&x, false))
            .unwrap(),
    );
    let noise_of = |y: Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        y.iter()
            .zip(&mean)
            .map(|(s, m)| s.iter().zip(m).map(|(s, m)| s - m).collect())
            .collect()
    };
    let first = noise_of(flat(layer.forward_t(&x, false).unwrap()));
    let second = noise_of(flat(layer.forward_t(&x, false).unwrap()));
    for noise in [&first, &second] {
        let mut signs = std::collections::HashSet::new();
        for (n, row) in noise.iter().enumerate() {
            let j = n % IN;
            assert_eq!(row[OUT - 1], 0.0, "B's last row is zero");
            for k in 0..RANK {
                let want = noise[j][k].abs();
                assert!(
                    (row[k].abs() - want).abs() < 1e-12,
                    "row {n}, output {k}: |noise| {} but row {j} has {want}",
                    row[k].abs()
                );
                assert!(want > 0.0);
            }
            signs.insert((j, row[0] > 0.0, row[1] > 0.0));
        }
        assert!(signs.len() > IN, "the Flipout signs vary between rows");
    }
    // A fresh E per forward.
    assert_ne!(first[0][0].abs(), second[0][0].abs());
}

/// Clones share the mode and the stream, but each call keeps what it must restore: a
/// point estimate taken through one clone inside a posterior sample of another leaves
/// the sample, and afterwards the training mode and stream, as they were.
#[test]
fn nested_calls_through_clones_restore_their_own_state() {
    let x = one_row();
    let mut outer = BlobSampler::new(21);
    let mut inner = outer.clone();
    let (layer, _) = layer(&outer, &M, &G, &B);
    let f = || layer.forward_t(&x, false)?.flatten_all()?.to_vec1::<f64>();
    let direct = outer.with_posterior_sample(2, f).unwrap();
    let point = inner.with_point_estimate(f).unwrap();
    let (nested_point, nested_sample) = outer
        .with_posterior_sample(2, || {
            let p = inner
                .with_point_estimate(f)
                .map_err(candle_core::Error::wrap)?;
            Ok((p, f()?))
        })
        .unwrap();
    assert_eq!(nested_point, point);
    assert_eq!(nested_sample, direct, "the sample resumes where it was");
    assert!(inner.is_sampling().unwrap() && outer.is_sampling().unwrap());
    assert_eq!(
        f().unwrap(),
        first_training_forward(21, &x),
        "the stream is back"
    );
}

/// A prediction scale `c` multiplies sample `k`'s noise by `c` (the same draws), and
/// leaves the training draws alone.
#[test]
fn prediction_scale_multiplies_the_sample_noise() {
    let mut sampler = BlobSampler::new(30);
    let (layer, _) = layer(&sampler, &M, &G, &B);
    let x = one_row();
    let f = || layer.forward_t(&x, false)?.flatten_all()?.to_vec1::<f64>();
    let mean = sampler.with_point_estimate(f).unwrap();
    let one = sampler.with_posterior_sample(2, f).unwrap();
    sampler.set_prediction_scale(3.0).unwrap();
    let three = sampler.with_posterior_sample(2, f).unwrap();
    for ((a, b), m) in one.iter().zip(&three).zip(&mean) {
        assert!((b - m - 3.0 * (a - m)).abs() < 1e-12, "{a} {b} {m}");
    }
    assert_eq!(
        f().unwrap(),
        first_training_forward(30, &x),
        "training draws at scale 1"
    );
    assert!(sampler.set_prediction_scale(f64::NAN).is_err());
}
