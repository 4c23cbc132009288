//! LoRA-Ensemble's batched forward and diversity, and distillation into a Laplace student.

mod common;

use common::{max_abs_diff, randn};

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{loss, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use varlora::ensemble::{
    distillation_loss, laplace_nll, laplace_predictive, laplace_samples, LoraEnsembleLinear,
};
use varlora::metrics::auroc;
use varlora::predict::predictive_from_samples;

const M: usize = 4;

/// Free Laplace parameters `(mu, log b)`, `(n, v)` zeros, and an AdamW over them.
fn laplace_params(n: usize, v: usize, dtype: DType) -> (Var, Var, AdamW) {
    let mu = Var::zeros((n, v), dtype, &Device::Cpu).unwrap();
    let log_b = Var::zeros((n, v), dtype, &Device::Cpu).unwrap();
    let params = ParamsAdamW {
        lr: 0.05,
        weight_decay: 0.0,
        ..Default::default()
    };
    let opt = AdamW::new(vec![mu.clone(), log_b.clone()], params).unwrap();
    (mu, log_b, opt)
}

fn ensemble(varmap: &VarMap) -> LoraEnsembleLinear {
    let dev = Device::Cpu;
    let base = Linear::new(
        randn(1, 0.5, &[3, 6], DType::F32),
        Some(randn(2, 0.5, &[3], DType::F32)),
    );
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &dev);
    LoraEnsembleLinear::new(base, M, 2, vb.pp("q")).unwrap()
}

#[test]
fn batched_forward_equals_separate_members() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let layer = ensemble(&varmap);
    varmap.data().lock().unwrap()["q.lora_b"]
        .set(&randn(3, 0.1, &[M, 3, 2], DType::F32))
        .unwrap();
    let x = randn(4, 1.0, &[M, 2, 5, 6], DType::F32);
    let y = layer.forward(&x).unwrap();
    assert_eq!(y.dims(), &[M, 2, 5, 3]);
    for m in 0..M {
        let xm = x.get(m).unwrap();
        let (a, b) = (layer.a().get(m).unwrap(), layer.b().get(m).unwrap());
        let single = (layer.base().forward(&xm).unwrap()
            + xm.broadcast_matmul(&a.t().unwrap())
                .unwrap()
                .broadcast_matmul(&b.t().unwrap())
                .unwrap())
        .unwrap();
        assert!(
            max_abs_diff(&y.get(m).unwrap(), &single) < 1e-5,
            "member {m}"
        );
    }
    // Xavier-uniform with gain 10 over (r, in) = (2, 6): bound 10 sqrt(6 / 8).
    let a_max: f32 = layer
        .a()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(a_max <= 10.0 * 0.75f32.sqrt() && a_max > 2.0, "{a_max}");
    assert!(layer
        .forward(&Tensor::zeros((M + 1, 6), DType::F32, &dev).unwrap())
        .is_err());
}

#[test]
fn members_start_equal_and_diverge_from_their_inits() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let layer = ensemble(&varmap);
    let x = LoraEnsembleLinear::repeat_members(&randn(5, 1.0, &[16, 6], DType::F32), M).unwrap();
    let y = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0], &dev).unwrap();
    let spread = |out: &Tensor| -> f32 {
        let mean = out.mean_keepdim(0).unwrap();
        out.broadcast_sub(&mean)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    assert_eq!(
        spread(&layer.forward(&x).unwrap()),
        0.0,
        "B = 0: all members equal at init"
    );
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..30 {
        let logits = layer.forward(&x).unwrap();
        // Mean of the members' cross-entropies on the same batch.
        let losses: Vec<Tensor> = (0..M)
            .map(|m| loss::cross_entropy(&logits.get(m).unwrap(), &y).unwrap())
            .collect();
        opt.backward_step(&(Tensor::stack(&losses, 0).unwrap().mean_all().unwrap()))
            .unwrap();
    }
    assert!(
        spread(&layer.forward(&x).unwrap()) > 1e-2,
        "members diverged"
    );
    let p = predictive_from_samples(&layer.forward(&x).unwrap(), false).unwrap();
    let mi: Vec<f64> = p.epistemic.to_vec1().unwrap();
    assert!(mi.iter().all(|&v| v >= 0.0) && mi.iter().any(|&v| v > 0.0));
}

#[test]
fn laplace_fit_finds_median_and_mean_absolute_deviation() {
    let (m, n, v) = (7, 3, 4);
    let targets = randn(6, 1.0, &[m, n, v], DType::F64);
    let (mu, log_b, mut opt) = laplace_params(n, v, DType::F64);
    for step in 0..3000 {
        if step == 2000 {
            opt.set_learning_rate(0.005);
        }
        let loss = laplace_nll(&mu, &log_b, &targets)
            .unwrap()
            .sum_all()
            .unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let t: Vec<Vec<Vec<f64>>> = targets.to_vec3().unwrap();
    let fitted_mu: Vec<Vec<f64>> = mu.as_tensor().to_vec2().unwrap();
    let fitted_b: Vec<Vec<f64>> = log_b.as_tensor().exp().unwrap().to_vec2().unwrap();
    for i in 0..n {
        for j in 0..v {
            let mut col: Vec<f64> = (0..m).map(|k| t[k][i][j]).collect();
            col.sort_by(f64::total_cmp);
            let median = col[m / 2];
            let mad = col.iter().map(|c| (c - median).abs()).sum::<f64>() / m as f64;
            assert!(
                (fitted_mu[i][j] - median).abs() < 0.02,
                "mu {} vs median {median}",
                fitted_mu[i][j]
            );
            assert!(
                (fitted_b[i][j] - mad).abs() < 0.02 * mad.max(0.1),
                "b {} vs MAD {mad}",
                fitted_b[i][j]
            );
        }
    }
}

#[test]
fn student_mutual_information_ranks_ood_above_in_distribution() {
    // Teacher: 8 members over 40 examples; the first 20 (in-distribution) agree, the last
    // 20 (OOD) disagree.
    let dev = Device::Cpu;
    let (members, n, v) = (8, 40, 5);
    let center = randn(7, 2.0, &[1, n, v], DType::F32);
    let spread: Vec<f32> = (0..n).map(|i| if i < 20 { 0.1 } else { 3.0 }).collect();
    let spread = Tensor::from_vec(spread, (1, n, 1), &dev).unwrap();
    let teacher = center
        .broadcast_add(
            &randn(8, 1.0, &[members, n, v], DType::F32)
                .broadcast_mul(&spread)
                .unwrap(),
        )
        .unwrap();
    let teacher_mi = predictive_from_samples(&teacher, false).unwrap().epistemic;
    let (id, ood) = (
        teacher_mi.narrow(0, 0, 20).unwrap(),
        teacher_mi.narrow(0, 20, 20).unwrap(),
    );
    assert!(
        auroc(&id, &ood).unwrap() > 0.9,
        "the teacher separates the sets"
    );
    // Student: one Laplace per example (a student whose features identify the example).
    let (mu, log_b, mut opt) = laplace_params(n, v, DType::F32);
    for _ in 0..800 {
        opt.backward_step(&distillation_loss(&mu, &log_b, &teacher, 1.0, 1.0).unwrap())
            .unwrap();
    }
    let student = laplace_predictive(&mu, &log_b, 64, 0).unwrap();
    let mi = student.epistemic;
    let score = auroc(
        &mi.narrow(0, 0, 20).unwrap(),
        &mi.narrow(0, 20, 20).unwrap(),
    )
    .unwrap();
    assert!(score > 0.9, "student MI AUROC {score}");
}

fn log_softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().cloned().fold(f64::MIN, f64::max);
    let lse = max + z.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    z.iter().map(|x| x - lse).collect()
}

/// The distillation loss summed out by hand from its definition: per example, the mean
/// over members of `KL(softmax(z_m / T) || softmax(mu))`, plus the weighted Laplace NLL
/// of the tempered log-probabilities; then the mean over examples.
#[test]
fn distillation_loss_matches_a_hand_computed_value() {
    let dev = Device::Cpu;
    let (n, v, t) = (2, 3, 2.0);
    let mu = [0.3, -1.2, 0.5, -0.4, 0.0, 1.1];
    let log_b = [-0.5, 0.2, 0.0, 0.3, -1.0, 0.4];
    let z = [
        [1.0, -0.5, 2.0, 0.2, 0.1, -1.5],
        [-0.3, 0.8, 1.4, 2.2, -0.7, 0.0],
    ];
    let tensor = |x: &[f64], shape: &[usize]| Tensor::from_vec(x.to_vec(), shape, &dev).unwrap();
    let members = tensor(&z.concat(), &[2, n, v]);
    for weight in [0.0, 0.7] {
        let got: f64 = distillation_loss(
            &tensor(&mu, &[n, v]),
            &tensor(&log_b, &[n, v]),
            &members,
            t,
            weight,
        )
        .unwrap()
        .to_scalar()
        .unwrap();
        let mut want = 0.0;
        for i in 0..n {
            let row = i * v..(i + 1) * v;
            let log_q = log_softmax(&mu[row.clone()]);
            let targets: Vec<Vec<f64>> = z
                .iter()
                .map(|zm| log_softmax(&zm[row.clone()].iter().map(|x| x / t).collect::<Vec<_>>()))
                .collect();
            let kl: f64 = targets
                .iter()
                .map(|l| (0..v).map(|c| l[c].exp() * (l[c] - log_q[c])).sum::<f64>())
                .sum::<f64>()
                / 2.0;
            let laplace: f64 = (0..v)
                .map(|c| {
                    let (m, lb) = (mu[i * v + c], log_b[i * v + c]);
                    let dev = targets.iter().map(|l| (l[c] - m).abs()).sum::<f64>() / 2.0;
                    dev / lb.exp() + lb + 2f64.ln()
                })
                .sum();
            want += (kl + weight * laplace) / n as f64;
        }
        assert!(
            (got - want).abs() < 1e-12,
            "weight {weight}: {got} vs {want}"
        );
    }
}

/// The student's logit samples follow Laplace(mu, b): median and mean `mu`, mean absolute
/// deviation `b`, and `P(|x - mu| > 2b) = e^-2`.
#[test]
fn laplace_samples_have_the_laplace_location_and_scale() {
    let dev = Device::Cpu;
    let (mu, b) = ([1.5f64, -2.0], [0.5f64, 2.0]);
    let log_b: Vec<f64> = b.iter().map(|x| x.ln()).collect();
    let n = 40_000;
    let draws = laplace_samples(
        &Tensor::new(&[mu], &dev).unwrap(),
        &Tensor::from_vec(log_b, (1, 2), &dev).unwrap(),
        n,
        7,
    )
    .unwrap()
    .reshape((n, 2))
    .unwrap()
    .to_vec2::<f64>()
    .unwrap();
    for c in 0..2 {
        let mut x: Vec<f64> = draws.iter().map(|row| row[c]).collect();
        let mean = x.iter().sum::<f64>() / n as f64;
        // Laplace(mu, b) has variance 2 b^2, and |x - mu| has mean b and variance b^2.
        let se = b[c] * (2.0 / n as f64).sqrt();
        assert!((mean - mu[c]).abs() < 5.0 * se, "mean {mean}");
        let mad = x.iter().map(|x| (x - mu[c]).abs()).sum::<f64>() / n as f64;
        assert!(
            (mad - b[c]).abs() < 5.0 * b[c] / (n as f64).sqrt(),
            "scale {mad}"
        );
        let tail = x.iter().filter(|x| (*x - mu[c]).abs() > 2.0 * b[c]).count() as f64 / n as f64;
        let p = (-2f64).exp();
        assert!(
            (tail - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(),
            "tail {tail}"
        );
        x.sort_by(f64::total_cmp);
        assert!(
            (x[n / 2] - mu[c]).abs() < 0.03 * b[c],
            "median {}",
            x[n / 2]
        );
    }
}
