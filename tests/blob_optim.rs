//! BLoB's optimizer against its step composed by hand from the AdamW and SGD formulas, its
//! KL gradient against finite differences, and the learning-rate schedules against their
//! closed forms.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{loss, Linear, Optimizer, VarBuilder, VarMap, SGD};
use varlora::lora::{BayesianLoraLinear, BlobConfig, BlobLayerVars, BlobSampler, LoraConfig};
use varlora::optim::{Blob, BlobOptimConfig, NonFinite, Schedule, Scheduled};
use varlora::Error;

const IN: usize = 4;
const OUT: usize = 3;
const RANK: usize = 2;

const M: [f64; 8] = [0.3, -0.1, 0.05, 0.2, -0.25, 0.15, 0.0, 0.1];
const G: [f64; 8] = [0.3, 0.4, 0.2, 0.5, 0.35, 0.25, 0.45, 0.3];
const B: [f64; 6] = [0.5, -0.3, 0.2, 0.8, -0.6, 0.1];
const HEAD: [f64; 6] = [0.4, -0.2, 0.1, 0.3, -0.5, 0.6];

/// A BLoB layer (M, G, B set) followed by a plain head var, in `dtype`.
struct Model {
    layer: BayesianLoraLinear,
    head: Var,
    varmap: VarMap,
}

fn model(dtype: DType, bayes_eps: f64) -> Model {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &dev);
    let w: Vec<f64> = (0..OUT * IN).map(|i| i as f64 * 0.1 - 0.5).collect();
    let w = Tensor::from_vec(w, (OUT, IN), &dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let mut config = BlobConfig::new(LoraConfig::new(RANK).alpha(4.0));
    config.bayes_eps = bayes_eps;
    let layer = BayesianLoraLinear::new(
        Linear::new(w, None),
        config,
        vb.pp("fc"),
        &BlobSampler::new(7),
    )
    .unwrap();
    let head = vb
        .get_with_hints((OUT, 2), "head", candle_nn::init::ZERO)
        .unwrap();
    let set = |name: &str, v: &[f64], shape: (usize, usize)| {
        let t = Tensor::from_vec(v.to_vec(), shape, &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        varmap.data().lock().unwrap()[name].set(&t).unwrap();
    };
    set("fc.lora_a", &M, (RANK, IN));
    set("fc.lora_a_g", &G, (RANK, IN));
    set("fc.lora_b", &B, (OUT, RANK));
    set("head", &HEAD, (OUT, 2));
    Model {
        layer,
        head: Var::from_tensor(&head).unwrap(),
        varmap,
    }
}

impl Model {
    fn nll(&self) -> Tensor {
        let dev = Device::Cpu;
        let x: Vec<f64> = (0..8 * IN)
            .map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.2)
            .collect();
        let dtype = self.head.dtype();
        let x = Tensor::from_vec(x, (8, IN), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let y = Tensor::new(&[0u32, 1, 1, 0, 1, 0, 0, 1], &dev).unwrap();
        let h = self.layer.forward_t(&x, true).unwrap();
        loss::cross_entropy(&h.matmul(self.head.as_tensor()).unwrap(), &y).unwrap()
    }

    fn vars(&self) -> Vec<Var> {
        let data = self.varmap.data().lock().unwrap();
        let mut named: Vec<_> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    fn get(&self, name: &str) -> Vec<f64> {
        let data = self.varmap.data().lock().unwrap();
        data[name]
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// AdamW's first step from zero moments: `theta - lr g / (|g| + eps)` (bias-corrected
/// moments are g and g^2; no weight decay).
fn adamw_first_step(theta: &[f64], g: &[f64], lr: f64, eps: f64) -> Vec<f64> {
    theta
        .iter()
        .zip(g)
        .map(|(t, g)| t - lr * g / (g.abs() + eps))
        .collect()
}

fn assert_close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol, "{name}[{i}]: {a} vs {b}");
    }
}

#[test]
fn one_step_is_adamw_on_the_nll_then_sgd_on_the_reweighted_kl() {
    let model = model(DType::F32, 0.05);
    let (lr, kl_lr, n_train, batch) = (1e-2, 0.05, 3200, 32);
    let config = BlobOptimConfig::new(n_train, batch).lr(lr).kl_lr(kl_lr);
    let mut opt = Blob::new(
        model.vars(),
        vec![model.layer.posterior_vars().unwrap()],
        config,
    )
    .unwrap();
    let grads = model.nll().backward().unwrap();
    let grad = |name: &str| {
        let data = model.varmap.data().lock().unwrap();
        flat(grads.get(data[name].as_tensor()).unwrap())
    };
    let (gm, gg, gb, gh) = (
        grad("fc.lora_a"),
        grad("fc.lora_a_g"),
        grad("fc.lora_b"),
        grad("head"),
    );
    assert!(gb.iter().any(|x| *x != 0.0) && gm.iter().any(|x| *x != 0.0));
    opt.try_step(&grads).unwrap();

    // The reweighting period by dataset rescaling: int(100 * 3200^(pi / 8) / 32) = 74,
    // and the first step's weight 2 / (2^75 - 1).
    let k = (100.0 * (n_train as f64).powf(std::f64::consts::PI / 8.0) / batch as f64) as i32;
    assert_eq!(k, 74);
    let pi = 2.0 / (2f64.powi(k + 1) - 1.0);
    let (beta, eps) = (0.2f64, 1e-6);
    let denom = 2.0 * beta * beta + eps;

    let m_adam = adamw_first_step(&M, &gm, lr, 1e-6);
    let m_want: Vec<f64> = m_adam
        .iter()
        .map(|m| m - kl_lr * pi * 2.0 * m / denom)
        .collect();
    let g_want: Vec<f64> = G
        .iter()
        .zip(&gg)
        .map(|(g, nll)| {
            let s = g * g;
            let d_s = 2.0 * s / denom - 1.0 / (s + eps);
            g - kl_lr * (pi * d_s * 2.0 * g + nll)
        })
        .collect();
    assert_close("M", &model.get("fc.lora_a"), &m_want, 1e-6);
    assert_close("G", &model.get("fc.lora_a_g"), &g_want, 1e-6);
    assert_close(
        "B",
        &model.get("fc.lora_b"),
        &adamw_first_step(&B, &gb, lr, 1e-6),
        1e-6,
    );
    assert_close(
        "head",
        &model.get("head"),
        &adamw_first_step(&HEAD, &gh, lr, 1e-6),
        1e-6,
    );
    assert_eq!(opt.step_count(), 1);
}

/// Later in a period the KL weighs more: at step K it is about one half, and the step
/// pulls M toward 0 by that much more.
#[test]
fn the_kl_weight_follows_the_reweighting_schedule() {
    let model = model(DType::F64, 0.05);
    let config = BlobOptimConfig::new(64, 8)
        .lr(1e-9)
        .kl_lr(0.1)
        .kl_period(Some(3));
    let mut opt = Blob::new(
        model.vars(),
        vec![model.layer.posterior_vars().unwrap()],
        config,
    )
    .unwrap();
    let zero = GradStore::default();
    let denom = 2.0 * 0.2 * 0.2 + 1e-6;
    let mut m: Vec<f64> = M.to_vec();
    for step in 1..=6u64 {
        opt.try_step(&zero).unwrap();
        let i = match step % 3 {
            0 => 3,
            r => r,
        };
        let pi = 2f64.powi(i as i32) / 15.0;
        m = m.iter().map(|x| x - 0.1 * pi * 2.0 * x / denom).collect();
        assert_close(
            &format!("M after step {step}"),
            &model.get("fc.lora_a"),
            &m,
            1e-12,
        );
    }
    // Without reweighting every step weighs 1 / K.
    let mut flat_opt = Blob::new(
        model.vars(),
        vec![model.layer.posterior_vars().unwrap()],
        BlobOptimConfig::new(64, 8)
            .lr(1e-9)
            .kl_lr(0.1)
            .kl_period(Some(3))
            .kl_reweighting(false),
    )
    .unwrap();
    flat_opt.try_step(&zero).unwrap();
    let m: Vec<f64> = m.iter().map(|x| x - 0.1 / 3.0 * 2.0 * x / denom).collect();
    assert_close("M without reweighting", &model.get("fc.lora_a"), &m, 1e-12);
    // The default period by dataset rescaling, small enough here to weigh: 2 examples in
    // batches of 64 give K = int(100 * 2^(pi / 8) / 64) = 2, and step 1 weighs 2 / 7.
    let k = (100.0 * 2f64.powf(std::f64::consts::PI / 8.0) / 64.0) as i32;
    assert_eq!(k, 2);
    let mut rescaled = Blob::new(
        model.vars(),
        vec![model.layer.posterior_vars().unwrap()],
        BlobOptimConfig::new(2, 64).lr(1e-9).kl_lr(0.1),
    )
    .unwrap();
    rescaled.try_step(&zero).unwrap();
    let pi = 2.0 / (2f64.powi(k + 1) - 1.0);
    let m: Vec<f64> = m.iter().map(|x| x - 0.1 * pi * 2.0 * x / denom).collect();
    assert_close(
        "M with K by dataset rescaling",
        &model.get("fc.lora_a"),
        &m,
        1e-12,
    );
}

#[test]
fn kl_gradient_matches_finite_differences() {
    for bayes_eps in [0.05, -3.0] {
        let model = model(DType::F64, bayes_eps);
        let vars: BlobLayerVars = model.layer.posterior_vars().unwrap();
        // The same KL as the layer's differentiable one.
        let layer_kl: f64 = model.layer.kl().unwrap().to_scalar().unwrap();
        assert!((vars.kl().unwrap() - layer_kl).abs() < 1e-12 * layer_kl.abs().max(1.0));
        let (d_m, d_g) = vars.kl_grads().unwrap();
        for (var, grad) in [(&vars.a_mean, flat(&d_m)), (&vars.a_g, flat(&d_g))] {
            let base = flat(var.as_tensor());
            let h = 1e-6;
            for i in 0..base.len() {
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    vars.kl().unwrap()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                at(0.0);
                assert!(
                    (fd - grad[i]).abs() <= 1e-5 * fd.abs().max(1.0),
                    "eps {bayes_eps}, element {i}: finite difference {fd}, closed form {}",
                    grad[i]
                );
            }
        }
    }
}

/// `grads` with var `name`'s gradient replaced by `change` of it.
fn with_grad(
    model: &Model,
    grads: &GradStore,
    name: &str,
    change: impl FnOnce(Vec<f64>) -> Tensor,
) -> GradStore {
    let mut out = GradStore::default();
    for v in model.vars() {
        if let Some(g) = grads.get(v.as_tensor()) {
            out.insert(v.as_tensor(), g.clone());
        }
    }
    let var = model.varmap.data().lock().unwrap()[name].clone();
    let g = change(flat(out.get(var.as_tensor()).unwrap()));
    out.insert(var.as_tensor(), g.to_dtype(DType::F32).unwrap());
    out
}

/// The gradient `g` with a NaN at index 1, in `var`'s shape.
fn with_nan(mut g: Vec<f64>, shape: &[usize]) -> Tensor {
    g[1] = f64::NAN;
    Tensor::from_vec(g, shape, &Device::Cpu).unwrap()
}

fn blob(model: &Model, config: BlobOptimConfig) -> Blob {
    Blob::new(
        model.vars(),
        vec![model.layer.posterior_vars().unwrap()],
        config,
    )
    .unwrap()
}

fn values(model: &Model) -> Vec<Vec<f64>> {
    model.vars().iter().map(|v| flat(v.as_tensor())).collect()
}

#[test]
fn nonfinite_gradients_are_an_error_that_changes_nothing() {
    let model = model(DType::F32, 0.05);
    let mut opt = blob(&model, BlobOptimConfig::new(64, 8));
    let grads = model.nll().backward().unwrap();
    let before = values(&model);
    for (name, shape) in [("head", vec![OUT, 2]), ("fc.lora_a_g", vec![RANK, IN])] {
        let bad = with_grad(&model, &grads, name, |g| with_nan(g, &shape));
        match opt.try_step(&bad) {
            Err(Error::NonFiniteGradient { .. }) => {}
            other => panic!("a NaN in {name}: expected NonFiniteGradient, got {other:?}"),
        }
        assert_eq!(values(&model), before, "a NaN in {name} changed the vars");
        assert_eq!(opt.step_count(), 0);
    }
}

/// Under `SkipStep` a NaN step is dropped and counted, and the next good step is the
/// first one taken: the same bits as an optimizer that never saw the NaN.
#[test]
fn nonfinite_steps_are_skipped_under_skip_step() {
    let config = BlobOptimConfig::new(64, 8).on_nonfinite(NonFinite::SkipStep);
    let (skipping, plain) = (model(DType::F32, 0.05), model(DType::F32, 0.05));
    let mut opt = blob(&skipping, config.clone());
    let grads = skipping.nll().backward().unwrap();
    let before = values(&skipping);
    let bad = with_grad(&skipping, &grads, "head", |g| with_nan(g, &[OUT, 2]));
    opt.try_step(&bad).unwrap();
    assert_eq!(values(&skipping), before, "a skipped step changed the vars");
    assert_eq!((opt.step_count(), opt.skipped_steps()), (0, 1));

    opt.try_step(&grads).unwrap();
    let mut reference = blob(&plain, config);
    reference
        .try_step(&plain.nll().backward().unwrap())
        .unwrap();
    assert_eq!(values(&skipping), values(&plain));
    assert_eq!((opt.step_count(), opt.skipped_steps()), (1, 1));
}

/// A gradient of the wrong shape for the last var is refused before AdamW moves the
/// vars before it.
#[test]
fn a_mismatched_gradient_is_an_error_that_changes_nothing() {
    let model = model(DType::F32, 0.05);
    let mut opt = blob(&model, BlobOptimConfig::new(64, 8));
    let grads = model.nll().backward().unwrap();
    let before = values(&model);
    let bad = with_grad(&model, &grads, "head", |g| {
        Tensor::from_vec(g, OUT * 2, &Device::Cpu).unwrap()
    });
    match opt.try_step(&bad) {
        Err(Error::GradientMismatch { var: 3, detail, .. }) => {
            assert!(detail.contains("shape"), "{detail}")
        }
        other => panic!("expected a mismatch of the head (var 3), got {other:?}"),
    }
    assert_eq!(values(&model), before);
    assert_eq!(opt.step_count(), 0);
}

/// Two layers that draw from different samplers: a checkpoint could keep only one
/// stream, so `Blob::new` refuses them.
#[test]
fn layers_of_two_samplers_are_an_error() {
    let (a, b) = (model(DType::F32, 0.05), model(DType::F32, 0.05));
    let mut vars = a.vars();
    vars.extend(b.vars());
    let layers = vec![
        a.layer.posterior_vars().unwrap(),
        b.layer.posterior_vars().unwrap(),
    ];
    match Blob::new(vars, layers, BlobOptimConfig::new(64, 8)) {
        Err(Error::VarMismatch(m)) => assert!(m.contains("sampler"), "{m}"),
        other => panic!("expected VarMismatch, got {other:?}"),
    }
    let one = vec![a.layer.posterior_vars().unwrap(); 2];
    Blob::new(a.vars(), one, BlobOptimConfig::new(64, 8)).unwrap();
}

#[test]
fn configs_are_validated_and_serde() {
    let good = BlobOptimConfig::new(100, 10);
    good.validate().unwrap();
    let cases = [
        ("n_train", BlobOptimConfig::new(0, 10)),
        ("batch_size", BlobOptimConfig::new(100, 0)),
        ("lr", good.clone().lr(0.0)),
        ("kl_lr", good.clone().kl_lr(f64::NAN)),
        ("beta1", good.clone().beta1(1.0)),
        ("beta2", good.clone().beta2(-0.1)),
        ("eps", good.clone().eps(0.0)),
        ("weight_decay", good.clone().weight_decay(-1.0)),
        ("gamma", good.clone().gamma(0.0)),
        ("kl_period", good.clone().kl_period(Some(0))),
    ];
    for (field, c) in cases {
        match c.validate() {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        }
    }
    // The reference's defaults from a minimal JSON.
    let c: BlobOptimConfig = serde_json::from_str(r#"{"n_train": 100, "batch_size": 10}"#).unwrap();
    assert_eq!(c, good);
    assert_eq!((c.lr, c.kl_lr, c.eps, c.gamma), (1e-4, 0.01, 1e-6, 8.0));
    let back: BlobOptimConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    // Without dataset rescaling K is the batches per epoch.
    assert_eq!(good.clone().dataset_rescaling(false).period(), 10);
    // A bad config builds no optimizer.
    let model = model(DType::F32, 0.05);
    assert!(Blob::new(model.vars(), vec![], good.lr(-1.0)).is_err());
}

#[test]
fn a_layer_whose_vars_are_not_given_is_an_error() {
    let model = model(DType::F32, 0.05);
    let other = self::model(DType::F32, 0.05);
    match Blob::new(
        model.vars(),
        vec![other.layer.posterior_vars().unwrap()],
        BlobOptimConfig::new(64, 8),
    ) {
        Err(Error::VarMismatch(_)) => {}
        other => panic!("expected VarMismatch, got {other:?}"),
    }
    match model.layer.detach().posterior_vars() {
        Err(Error::InvalidState(_)) => {}
        other => panic!("expected InvalidState, got {other:?}"),
    }
}

#[test]
fn schedules_match_their_closed_forms() {
    let linear = Schedule::LinearWarmupDecay {
        warmup_steps: 6,
        total_steps: 100,
    };
    let cosine = Schedule::Cosine {
        warmup_steps: 6,
        total_steps: 100,
    };
    for t in [0u64, 3, 6, 30, 53, 99, 100, 150] {
        let warm = t as f64 / 6.0;
        let progress = (t as f64 - 6.0) / 94.0;
        let (lin, cos) = if t < 6 {
            (warm, warm)
        } else {
            (
                (1.0 - progress).max(0.0),
                0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
            )
        };
        assert!((linear.factor(t) - lin).abs() < 1e-12, "linear at {t}");
        assert!((cosine.factor(t) - cos).abs() < 1e-12, "cosine at {t}");
    }
    assert_eq!(Schedule::Constant.factor(1_000_000), 1.0);
    assert_eq!(
        Schedule::linear_with_warmup_ratio(0.06, 200).unwrap(),
        Schedule::LinearWarmupDecay {
            warmup_steps: 12,
            total_steps: 200
        }
    );
    assert!(Schedule::linear_with_warmup_ratio(1.5, 200).is_err());
    assert!(Scheduled::new(
        SGD::new(vec![], 0.1).unwrap(),
        Schedule::Cosine {
            warmup_steps: 5,
            total_steps: 4
        }
    )
    .is_err());
}

/// SGD with gradient 1 moves its var by exactly the scheduled rate at every step.
#[test]
fn scheduled_drives_the_inner_learning_rate() {
    let var = Var::new(&[0f64], &Device::Cpu).unwrap();
    let schedule = Schedule::LinearWarmupDecay {
        warmup_steps: 2,
        total_steps: 6,
    };
    let mut opt = Scheduled::new(SGD::new(vec![var.clone()], 0.5).unwrap(), schedule).unwrap();
    let mut grads = GradStore::default();
    grads.insert(var.as_tensor(), Tensor::new(&[1f64], &Device::Cpu).unwrap());
    let mut x = 0.0;
    for t in 0..8u64 {
        assert_eq!(opt.learning_rate(), 0.5 * schedule.factor(t));
        opt.step(&grads).unwrap();
        x -= 0.5 * schedule.factor(t);
        assert_eq!(var.as_tensor().to_vec1::<f64>().unwrap()[0], x);
    }
    // BLoB's KL rate follows AdamW's.
    let model = model(DType::F32, 0.05);
    let blob = Blob::new(
        model.vars(),
        vec![model.layer.posterior_vars().unwrap()],
        BlobOptimConfig::new(64, 8).lr(1e-3).kl_lr(0.02),
    )
    .unwrap();
    let mut opt = Scheduled::new(blob, schedule).unwrap();
    opt.step(&GradStore::default()).unwrap();
    assert!((opt.inner().kl_learning_rate() - 0.02 * 0.5).abs() < 1e-15);
    assert!((opt.learning_rate() - 1e-3 * 0.5).abs() < 1e-15);
}
