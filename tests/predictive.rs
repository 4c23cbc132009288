//! The Monte Carlo predictive against closed forms, and IVON as a posterior.

use std::cell::RefCell;
use std::rc::Rc;

use approx::assert_abs_diff_eq;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{predictive, predictive_at_point, Posterior};
use varlora::Result;

/// A posterior whose sample k is a fixed logit table; the "model" reads `current`.
struct Table {
    logits: Vec<Vec<[f64; 2]>>,
    current: Rc<RefCell<Tensor>>,
}

impl Table {
    fn new(logits: Vec<Vec<[f64; 2]>>) -> (Table, impl FnMut() -> candle_core::Result<Tensor>) {
        let current = Rc::new(RefCell::new(
            Tensor::zeros(1, DType::F64, &Device::Cpu).unwrap(),
        ));
        let model = {
            let current = current.clone();
            move || Ok(current.borrow().clone())
        };
        (Table { logits, current }, model)
    }

    fn set(&self, rows: &[[f64; 2]]) {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        *self.current.borrow_mut() = Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap();
    }
}

impl Posterior for Table {
    fn with_posterior_sample<R>(
        &mut self,
        k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        self.set(&self.logits[k]);
        Ok(f()?)
    }

    fn with_point_estimate<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        self.set(&[[0.0, 0.0], [0.0, 0.0]]);
        Ok(f()?)
    }
}

fn softmax(z: [f64; 2]) -> [f64; 2] {
    let m = z[0].max(z[1]);
    let e = [(z[0] - m).exp(), (z[1] - m).exp()];
    [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])]
}

fn h(p: [f64; 2]) -> f64 {
    -p.iter()
        .filter(|&&v| v > 0.0)
        .map(|v| v * v.ln())
        .sum::<f64>()
}

#[test]
fn decomposition_matches_the_definitions() {
    // Example 0: samples disagree confidently (epistemic); example 1: they agree on 50/50
    // (aleatoric).
    let logits = vec![
        vec![[8.0, -8.0], [0.0, 0.0]],
        vec![[-8.0, 8.0], [0.0, 0.0]],
        vec![[3.0, 1.0], [0.0, 0.0]],
    ];
    let (mut post, model) = Table::new(logits.clone());
    let p = predictive(&mut post, 3, true, model).unwrap();
    let probs: Vec<Vec<f64>> = p.probs.to_vec2().unwrap();
    let (tu, au, mi): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        p.total.to_vec1().unwrap(),
        p.aleatoric.to_vec1().unwrap(),
        p.epistemic.to_vec1().unwrap(),
    );
    for i in 0..2 {
        let ps: Vec<[f64; 2]> = logits.iter().map(|s| softmax(s[i])).collect();
        let mean = [
            ps.iter().map(|p| p[0]).sum::<f64>() / 3.0,
            ps.iter().map(|p| p[1]).sum::<f64>() / 3.0,
        ];
        assert_abs_diff_eq!(probs[i][0], mean[0], epsilon = 1e-12);
        assert_abs_diff_eq!(probs[i][1], mean[1], epsilon = 1e-12);
        let expected_au = ps.iter().map(|&p| h(p)).sum::<f64>() / 3.0;
        assert_abs_diff_eq!(tu[i], h(mean), epsilon = 1e-12);
        assert_abs_diff_eq!(au[i], expected_au, epsilon = 1e-12);
        assert_abs_diff_eq!(mi[i], (h(mean) - expected_au).max(0.0), epsilon = 1e-12);
    }
    assert!(
        mi[0] > 0.5,
        "confident disagreement is epistemic: {}",
        mi[0]
    );
    assert_abs_diff_eq!(mi[1], 0.0, epsilon = 1e-12);
    assert_abs_diff_eq!(au[1], 2f64.ln(), epsilon = 1e-12);
    assert_eq!(p.samples.unwrap().dims(), &[3, 2, 2]);
}

#[test]
fn log_predictive_stays_finite_where_probabilities_underflow() {
    // p(class 1) = e^-800 in every sample: f64 probabilities are 0, the log is not.
    let logits = vec![vec![[400.0, -400.0]]; 2];
    let (mut post, model) = Table::new(logits);
    let p = predictive(&mut post, 2, false, model).unwrap();
    let lp: Vec<Vec<f64>> = p.log_probs.to_vec2().unwrap();
    assert_abs_diff_eq!(lp[0][1], -800.0, epsilon = 1e-9);
    assert!(p.samples.is_none());
}

#[test]
fn bad_logits_are_errors() {
    let (mut post, model) = Table::new(vec![vec![[f64::NAN, 0.0]]]);
    assert!(predictive(&mut post, 1, false, model).is_err());
    assert!(predictive(&mut post, 0, false, || Tensor::zeros(
        (1, 2),
        DType::F32,
        &Device::Cpu
    ))
    .is_err());
    let p = predictive_at_point(&mut post, || {
        Tensor::zeros((1, 2), DType::F32, &Device::Cpu)
    })
    .unwrap();
    assert_eq!(p.epistemic.to_vec1::<f64>().unwrap(), vec![0.0]);
}

fn ivon(seed: u64, ess: f64) -> (Var, Ivon) {
    let w = Var::from_vec(
        vec![0.5f32, -0.25, 1.0, 0.0, 0.75, -1.0],
        (2, 3),
        &Device::Cpu,
    )
    .unwrap();
    let opt = Ivon::new(
        vec![w.clone()],
        IvonConfig::new(0.1, ess).hess_init(1.0).seed(seed),
    )
    .unwrap();
    (w, opt)
}

#[test]
fn ivon_sample_k_is_reproducible_and_restores_the_weights() {
    let (w, mut opt) = ivon(1, 50.0);
    let before: Vec<Vec<f32>> = w.as_tensor().to_vec2().unwrap();
    let read = || w.as_tensor().to_vec2::<f32>();
    let s0 = opt.with_posterior_sample(0, read).unwrap();
    let s1 = opt.with_posterior_sample(1, read).unwrap();
    assert_ne!(s0, s1);
    assert_eq!(opt.with_posterior_sample(0, read).unwrap(), s0);
    assert_eq!(
        w.as_tensor().to_vec2::<f32>().unwrap(),
        before,
        "training sample restored"
    );
    // Prediction draws do not consume the training stream: training is unchanged.
    let (w2, mut fresh) = ivon(1, 50.0);
    let loss = |w: &Var| w.as_tensor().sqr().unwrap().sum_all().unwrap();
    opt.backward_step(&loss(&w)).unwrap();
    fresh.backward_step(&loss(&w2)).unwrap();
    assert_eq!(
        w.as_tensor().to_vec2::<f32>().unwrap(),
        w2.as_tensor().to_vec2::<f32>().unwrap()
    );
    // Errors inside the closure still restore.
    let err =
        opt.with_posterior_sample(3, || -> candle_core::Result<()> { candle_core::bail!("x") });
    assert!(err.is_err());
    assert_eq!(
        w.as_tensor().to_vec2::<f32>().unwrap(),
        w2.as_tensor().to_vec2::<f32>().unwrap()
    );
}

#[test]
fn ivon_epistemic_uncertainty_shrinks_with_more_data() {
    let x = Tensor::new(&[[1f32, 2.0], [-1.0, 0.5], [3.0, -2.0]], &Device::Cpu).unwrap();
    let mi = |ess: f64| {
        let (w, mut opt) = ivon(2, ess);
        let p = predictive(&mut opt, 64, false, || x.matmul(w.as_tensor())).unwrap();
        let sums: Vec<f64> = p.probs.sum(1).unwrap().to_vec1().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12));
        let mi: Vec<f64> = p.epistemic.to_vec1().unwrap();
        assert!(mi.iter().all(|&v| v >= 0.0));
        mi.iter().sum::<f64>()
    };
    let (few, many) = (mi(10.0), mi(1e5));
    assert!(
        many < few / 100.0,
        "MI {many} with ess 1e5 vs {few} with ess 10"
    );
}

#[test]
fn sample_logits_stack_what_predictive_averages() {
    let x = Tensor::new(&[[1f32, 2.0], [-1.0, 0.5]], &Device::Cpu).unwrap();
    let (w, mut opt) = ivon(3, 20.0);
    let stacked = varlora::predict::sample_logits(&mut opt, 5, || x.matmul(w.as_tensor())).unwrap();
    assert_eq!(stacked.dims(), &[5, 2, 3]);
    let direct = predictive(&mut opt, 5, false, || x.matmul(w.as_tensor())).unwrap();
    let from_stack = varlora::predict::predictive_from_samples(&stacked, false).unwrap();
    let diff: f64 = (direct.probs - from_stack.probs)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-12, "{diff}");
}

/// The predictive keeps no autograd graph: over a model whose weights are tracked vars,
/// none of its tensors tracks an op, so the samples' forward passes are freed as it goes
/// (a decoder's graph is gigabytes a sample).
#[test]
fn predictive_keeps_no_graph_of_tracked_weights() {
    let (w, mut opt) = ivon(0, 10.0);
    let x = Tensor::new(&[[1f32, 2.0], [0.5, -1.0]], &Device::Cpu).unwrap();
    let logits = || x.matmul(w.as_tensor());
    assert!(logits().unwrap().track_op());
    let p = predictive(&mut opt, 3, true, logits).unwrap();
    for t in [&p.log_probs, &p.probs, &p.total, &p.aleatoric, &p.epistemic] {
        assert!(!t.track_op());
    }
    assert!(!p.samples.unwrap().track_op());
}
