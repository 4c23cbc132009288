//! IVON's API contract: where the weights stand, errors that change nothing,
//! checkpoints that resume bit-identically.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use varlora::noise::NoiseSource;
use varlora::optim::{Ivon, IvonConfig, NonFinite, ParamGroup, Position, Schedule, Scheduled};
use varlora::Error;

/// A tiny regression model: y = x w + b.
struct Model {
    w: Var,
    b: Var,
    x: Tensor,
    y: Tensor,
}

impl Model {
    fn new(seed: u64) -> Model {
        let dev = Device::Cpu;
        let det = |n: usize, k: u64| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u64 + 1) * (k + 7) * 2654435761 % 1000) as f32 / 500.0) - 1.0)
                .collect()
        };
        Model {
            w: Var::from_vec(det(12, seed), (4, 3), &dev).unwrap(),
            b: Var::from_vec(det(3, seed + 1), 3, &dev).unwrap(),
            x: Tensor::from_vec(det(32, 11), (8, 4), &dev).unwrap(),
            y: Tensor::from_vec(det(24, 13), (8, 3), &dev).unwrap(),
        }
    }

    fn vars(&self) -> Vec<Var> {
        vec![self.w.clone(), self.b.clone()]
    }

    fn loss(&self) -> Tensor {
        let pred = self
            .x
            .matmul(self.w.as_tensor())
            .unwrap()
            .broadcast_add(self.b.as_tensor())
            .unwrap();
        (pred - &self.y).unwrap().sqr().unwrap().mean_all().unwrap()
    }

    fn grads(&self) -> GradStore {
        self.loss().backward().unwrap()
    }
}

fn config() -> IvonConfig {
    IvonConfig::new(0.05, 100.0).hess_init(0.5).seed(3)
}

fn values(vars: &[Var]) -> Vec<Vec<f32>> {
    vars.iter()
        .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

/// Everything observable about the optimizer, bit for bit.
fn snapshot(opt: &Ivon) -> Vec<Vec<u32>> {
    let mut out = vec![vec![
        opt.step_count() as u32,
        opt.samples_collected() as u32,
        opt.skipped_steps() as u32,
    ]];
    for gi in 0..opt.num_groups() {
        for p in opt.group_params(gi).unwrap() {
            let mut ts = vec![
                p.var().as_tensor().clone(),
                p.mean().unwrap(),
                p.hess().unwrap(),
                p.momentum().unwrap(),
            ];
            ts.extend(p.noise().unwrap());
            ts.extend(p.avg_grad().cloned());
            for t in ts {
                out.push(
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect(),
                );
            }
        }
    }
    out
}

fn temp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("varlora-test-{}-{name}", std::process::id()))
}

#[test]
fn weights_stand_at_a_sample_between_steps_and_at_the_mean_on_request() {
    let model = Model::new(0);
    let init = values(&model.vars());
    let mut opt = Ivon::new(model.vars(), config()).unwrap();
    assert_eq!(opt.position(), Position::Sample);
    assert_ne!(
        values(&model.vars()),
        init,
        "new() draws the first sample into the vars"
    );
    let mean = opt.with_mean(|| Ok(values(&model.vars()))).unwrap();
    assert_eq!(mean, init);
    opt.backward_step(&model.loss()).unwrap();
    assert_eq!(opt.step_count(), 1);
    assert_eq!(opt.position(), Position::Sample);
    let sample = values(&model.vars());
    // with_sample draws a different weight and puts the training sample back.
    let other = opt.with_sample(|| Ok(values(&model.vars()))).unwrap();
    assert_ne!(other, sample);
    assert_eq!(values(&model.vars()), sample);
    opt.restore_mean().unwrap();
    assert_eq!(opt.position(), Position::Mean);
    let m: Vec<Vec<f32>> = opt
        .group_params(0)
        .unwrap()
        .iter()
        .map(|p| p.mean().unwrap().flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(values(&model.vars()), m);
}

#[test]
fn closures_restore_the_weights_on_error_and_on_panic() {
    let model = Model::new(1);
    let mut opt = Ivon::new(model.vars(), config()).unwrap();
    let before = values(&model.vars());
    let err = opt.with_mean(|| -> candle_core::Result<()> { candle_core::bail!("boom") });
    assert!(matches!(err, Err(Error::Candle(_))));
    assert_eq!(values(&model.vars()), before);
    let err = opt.with_sample(|| -> candle_core::Result<()> { candle_core::bail!("boom") });
    assert!(err.is_err());
    assert_eq!(values(&model.vars()), before);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = opt.with_mean(|| -> candle_core::Result<()> { panic!("user code panicked") });
    }));
    assert!(caught.is_err());
    assert_eq!(values(&model.vars()), before);
}

#[test]
fn posterior_samples_have_the_posterior_spread() {
    let dev = Device::Cpu;
    let w = Var::zeros(1000, DType::F32, &dev).unwrap();
    let mut opt = Ivon::new(
        vec![w.clone()],
        IvonConfig::new(0.1, 50.0).hess_init(2.0).weight_decay(0.0),
    )
    .unwrap();
    let draws: Vec<Vec<f32>> = (0..20)
        .map(|_| opt.with_sample(|| w.as_tensor().to_vec1()).unwrap())
        .collect();
    let all: Vec<f32> = draws.concat();
    let n = all.len() as f64;
    let mean = all.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = all
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let expected = 1.0 / (50.0 * 2.0);
    assert!(mean.abs() < 4.0 * (expected / n).sqrt(), "mean {mean}");
    assert!(
        (var / expected - 1.0).abs() < 0.05,
        "variance {var} vs {expected}"
    );
    let std: Vec<f32> = opt.posterior_std(0, 0).unwrap().to_vec1().unwrap();
    assert!((f64::from(std[0]) - expected.sqrt()).abs() < 1e-6);
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let run = |seed: u64| {
        let model = Model::new(2);
        let mut opt = Ivon::new(model.vars(), config().seed(seed)).unwrap();
        for _ in 0..5 {
            opt.backward_step(&model.loss()).unwrap();
        }
        snapshot(&opt)
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn missing_gradient_counts_as_zero() {
    let run = |explicit_zero: bool| {
        let model = Model::new(3);
        let mut opt = Ivon::new(model.vars(), config()).unwrap();
        for _ in 0..3 {
            let mut grads = model.grads();
            grads.remove(model.b.as_tensor());
            if explicit_zero {
                grads.insert(
                    model.b.as_tensor(),
                    model.b.as_tensor().zeros_like().unwrap(),
                );
            }
            opt.step(&grads).unwrap();
        }
        snapshot(&opt)
    };
    assert_eq!(run(false), run(true));
}

#[test]
fn nonfinite_gradient_is_an_error_that_changes_nothing() {
    let model = Model::new(4);
    let mut opt = Ivon::new(model.vars(), config()).unwrap();
    opt.backward_step(&model.loss()).unwrap();
    let before = snapshot(&opt);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut grads = model.grads();
        let g = grads.get(model.w.as_tensor()).unwrap();
        let mut v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        v[5] = bad;
        grads.insert(
            model.w.as_tensor(),
            Tensor::from_vec(v, (4, 3), &Device::Cpu).unwrap(),
        );
        match opt.try_step(&grads) {
            Err(Error::NonFiniteGradient {
                group: 0, var: 0, ..
            }) => {}
            other => panic!("expected NonFiniteGradient, got {other:?}"),
        }
        assert_eq!(snapshot(&opt), before);
    }
    // The same optimizer carries on from where it stood.
    opt.backward_step(&model.loss()).unwrap();
    assert_eq!(opt.step_count(), 2);
}

#[test]
fn skip_mode_drops_the_step_and_counts_it() {
    let model = Model::new(5);
    let mut opt = Ivon::new(
        model.vars(),
        config().on_nonfinite(NonFinite::SkipStep).mc_samples(2),
    )
    .unwrap();
    opt.backward_step(&model.loss()).unwrap();
    assert_eq!(opt.samples_collected(), 1);
    let means = |opt: &Ivon| snapshot(opt)[2].clone();
    let m0 = means(&opt);
    let mut grads = model.grads();
    grads.insert(
        model.b.as_tensor(),
        Tensor::new(&[f32::NAN, 0., 0.], &Device::Cpu).unwrap(),
    );
    opt.step(&grads).unwrap();
    assert_eq!(opt.skipped_steps(), 1);
    assert_eq!(
        opt.samples_collected(),
        0,
        "the step's earlier sample is dropped too"
    );
    assert_eq!(opt.step_count(), 0);
    assert_eq!(means(&opt), m0);
    assert_eq!(
        opt.position(),
        Position::Sample,
        "a fresh sample is drawn for the next try"
    );
}

#[test]
fn api_misuse_is_reported() {
    let model = Model::new(6);
    let mut opt = Ivon::new(model.vars(), config()).unwrap();
    assert!(matches!(opt.update(), Err(Error::NoSample(_))));
    opt.restore_mean().unwrap();
    let before = snapshot(&opt);
    assert!(matches!(
        opt.accumulate(&model.grads()),
        Err(Error::NoSample(_))
    ));
    assert_eq!(snapshot(&opt), before);

    opt.resample().unwrap();
    let before = snapshot(&opt);
    let mut grads = model.grads();
    grads.insert(
        model.w.as_tensor(),
        Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.accumulate(&grads),
        Err(Error::GradientMismatch {
            group: 0,
            var: 0,
            ..
        })
    ));
    grads.insert(
        model.w.as_tensor(),
        Tensor::zeros((4, 3), DType::F64, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.accumulate(&grads),
        Err(Error::GradientMismatch { .. })
    ));
    assert_eq!(snapshot(&opt), before);

    // An invalid learning rate set through the trait fails the next update, changing nothing.
    opt.set_learning_rate(-1.0);
    opt.accumulate(&model.grads()).unwrap();
    let before = snapshot(&opt);
    assert!(matches!(
        opt.update(),
        Err(Error::InvalidConfig { field: "lr", .. })
    ));
    assert_eq!(snapshot(&opt), before);
    opt.set_learning_rate(0.05);
    opt.update().unwrap();
    assert!(matches!(
        opt.set_group_lr(0, f64::NAN),
        Err(Error::InvalidConfig { field: "lr", .. })
    ));
}

#[test]
fn construction_rejects_bad_vars_and_config() {
    let dev = Device::Cpu;
    let f32v = Var::zeros(3, DType::F32, &dev).unwrap();
    let f64v = Var::zeros(3, DType::F64, &dev).unwrap();
    let half = Var::zeros(3, DType::BF16, &dev).unwrap();
    assert!(matches!(
        Ivon::new(vec![f32v.clone(), f64v], config()),
        Err(Error::VarMismatch(_))
    ));
    assert!(matches!(
        Ivon::new(vec![half], config()),
        Err(Error::UnsupportedDType(DType::BF16))
    ));
    assert!(matches!(
        Ivon::new(vec![f32v.clone(), f32v.clone()], config()),
        Err(Error::VarMismatch(_))
    ));
    assert!(matches!(
        Ivon::new(vec![f32v.clone()], IvonConfig::new(0.1, -1.0)),
        Err(Error::InvalidConfig { field: "ess", .. })
    ));
    let group = ParamGroup::new(vec![f32v.clone()]).beta2(2.0);
    assert!(matches!(
        Ivon::with_groups(vec![group], config()),
        Err(Error::InvalidConfig { field: "beta2", .. })
    ));
    // Through the candle_nn trait the error keeps its message.
    let err = <Ivon as Optimizer>::new(vec![f32v], IvonConfig::new(0.1, 0.0)).unwrap_err();
    assert!(err.to_string().contains("`ess`"), "{err}");
}

#[test]
fn f64_parameters_train() {
    let dev = Device::Cpu;
    let w = Var::ones(5, DType::F64, &dev).unwrap();
    let mut opt = Ivon::new(vec![w.clone()], IvonConfig::new(0.1, 100.0).hess_init(1.0)).unwrap();
    for _ in 0..200 {
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let m: Vec<f64> = opt.group_params(0).unwrap()[0]
        .mean()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(m.iter().all(|v| v.abs() < 0.2), "{m:?}");
}

#[test]
fn groups_can_be_added_between_updates() {
    let model = Model::new(7);
    let mut opt =
        Ivon::with_groups(vec![ParamGroup::new(vec![model.w.clone()])], config()).unwrap();
    let b_before = values(std::slice::from_ref(&model.b));
    opt.add_group(ParamGroup::new(vec![model.b.clone()]).lr(0.01))
        .unwrap();
    assert_eq!(opt.num_groups(), 2);
    assert_ne!(
        values(std::slice::from_ref(&model.b)),
        b_before,
        "the new group stands at a sample too"
    );
    assert!(matches!(
        opt.add_group(ParamGroup::new(vec![model.b.clone()])),
        Err(Error::VarMismatch(_))
    ));
    let cfg = config().mc_samples(2);
    let mut opt = Ivon::new(vec![model.w.clone()], cfg).unwrap();
    opt.backward_step(&model.loss()).unwrap();
    assert!(matches!(
        opt.add_group(ParamGroup::new(vec![model.b.clone()])),
        Err(Error::InvalidState(_))
    ));
}

/// Runs `steps` one-liner steps with the given mc_samples.
fn train(opt: &mut Ivon, model: &Model, steps: usize) {
    for _ in 0..steps {
        opt.backward_step(&model.loss()).unwrap();
    }
}

/// With `mc_samples` 2, a schedule that counts updates gives each update the rate of its
/// round: the same run as setting the rate by hand before each round.
#[test]
fn a_schedule_over_updates_advances_once_per_round_of_samples() {
    let schedule = Schedule::LinearWarmupDecay {
        warmup_steps: 1,
        total_steps: 4,
    };
    let (a, b) = (Model::new(12), Model::new(12));
    let ivon = Ivon::new(a.vars(), config().mc_samples(2)).unwrap();
    // The rounds of 2 are learned from IVON's mc_samples, not told.
    let mut scheduled = Scheduled::new(ivon, schedule).unwrap();
    let mut by_hand = Ivon::new(b.vars(), config().mc_samples(2)).unwrap();
    for call in 0..8u64 {
        let rate = 0.05 * schedule.factor(call / 2);
        by_hand.set_learning_rate(rate);
        assert_eq!(scheduled.learning_rate(), rate, "call {call}");
        scheduled.backward_step(&a.loss()).unwrap();
        by_hand.backward_step(&b.loss()).unwrap();
    }
    assert_eq!(scheduled.step_count(), 4);
    assert_eq!(snapshot(scheduled.inner()), snapshot(&by_hand));
    assert!(Scheduled::new(by_hand, schedule)
        .unwrap()
        .calls_per_update(0)
        .is_err());
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    for mc in [1, 3] {
        // Stop after 7 calls: with mc = 3 that is mid-step, with samples collected.
        let model = Model::new(8);
        let mut straight = Ivon::new(model.vars(), config().mc_samples(mc)).unwrap();
        train(&mut straight, &model, 7);
        let path = temp(&format!("resume-{mc}.safetensors"));
        straight.save(&path).unwrap();
        train(&mut straight, &model, 8);

        let fresh = Model::new(99);
        let mut resumed = Ivon::new(fresh.vars(), config().mc_samples(mc).seed(1234)).unwrap();
        resumed.load_state(&path).unwrap();
        train(&mut resumed, &fresh, 8);
        assert_eq!(snapshot(&resumed), snapshot(&straight), "mc_samples {mc}");
        assert_eq!(resumed.step_count(), straight.step_count());
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn bad_checkpoints_are_errors_that_change_nothing() {
    let model = Model::new(9);
    let mut opt = Ivon::new(model.vars(), config()).unwrap();
    train(&mut opt, &model, 3);
    let path = temp("bad.safetensors");
    opt.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    train(&mut opt, &model, 2);
    let before = snapshot(&opt);

    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", b"not a checkpoint at all".to_vec()),
    ];
    // A safetensors file without IVON metadata.
    let plain = temp("plain.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([(
            "x",
            Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
        )]),
        &plain,
    )
    .unwrap();
    cases.push(("no header", std::fs::read(&plain).unwrap()));
    // The header edited to claim another shape.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    cases.push((
        "wrong shapes",
        text.replacen("[4,3]", "[3,4]", 1).into_bytes(),
    ));
    for (what, data) in cases {
        let p = temp(&format!("case-{}", what.replace(' ', "-")));
        std::fs::write(&p, data).unwrap();
        assert!(opt.load_state(&p).is_err(), "{what} loaded");
        assert_eq!(snapshot(&opt), before, "{what} changed the state");
        std::fs::remove_file(p).unwrap();
    }
    // A missing file is named.
    let missing = opt.load_state(temp("missing")).unwrap_err();
    assert!(matches!(missing, Error::File { .. }), "{missing:?}");
    assert!(
        missing.to_string().contains("missing: cannot read"),
        "{missing}"
    );

    // Vars of other shapes.
    let dev = Device::Cpu;
    let mut other = Ivon::new(
        vec![Var::zeros((2, 2), DType::F32, &dev).unwrap()],
        config(),
    )
    .unwrap();
    assert!(matches!(other.load_state(&path), Err(Error::Checkpoint(_))));
    // A noise source that cannot save its state cannot checkpoint.
    struct Opaque;
    impl NoiseSource for Opaque {
        fn standard_normal(
            &mut self,
            n: usize,
            dtype: DType,
            dev: &Device,
        ) -> varlora::Result<Tensor> {
            Ok(Tensor::zeros(n, dtype, dev)?)
        }
    }
    let opaque = Ivon::with_noise(
        vec![ParamGroup::new(model.vars())],
        config(),
        Box::new(Opaque),
    )
    .unwrap();
    assert!(matches!(
        opaque.save(temp("opaque")),
        Err(Error::Checkpoint(_))
    ));
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(plain).unwrap();
}

/// A VarMap holding `names` (inserted in the given order) with values from `Model`.
fn varmap(model: &Model, names: [&str; 2]) -> candle_nn::VarMap {
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for name in names {
            let var = if name.ends_with('w') {
                &model.w
            } else {
                &model.b
            };
            data.insert(name.to_string(), var.clone());
        }
    }
    varmap
}

#[test]
fn named_vars_make_runs_independent_of_insertion_order() {
    let run = |names: [&str; 2]| {
        let model = Model::new(10);
        let mut opt = Ivon::from_varmap(&varmap(&model, names), config()).unwrap();
        train(&mut opt, &model, 4);
        snapshot(&opt)
    };
    assert_eq!(run(["layer.w", "layer.b"]), run(["layer.b", "layer.w"]));
}

#[test]
fn checkpoints_of_named_vars_are_matched_by_name() {
    let model = Model::new(11);
    let mut opt = Ivon::from_varmap(&varmap(&model, ["a.w", "a.b"]), config()).unwrap();
    assert_eq!(opt.group_params(0).unwrap()[0].name(), Some("a.b"));
    train(&mut opt, &model, 2);
    let path = temp("named.safetensors");
    opt.save(&path).unwrap();
    let other = Model::new(12);
    let mut renamed = Ivon::from_varmap(&varmap(&other, ["z.w", "z.b"]), config()).unwrap();
    let before = snapshot(&renamed);
    match renamed.load_state(&path) {
        Err(Error::Checkpoint(msg)) => assert!(msg.contains("a.b"), "{msg}"),
        other => panic!("expected a name mismatch, got {other:?}"),
    }
    assert_eq!(snapshot(&renamed), before);
    let mut same = Ivon::from_varmap(&varmap(&other, ["a.b", "a.w"]), config()).unwrap();
    same.load_state(&path).unwrap();
    assert_eq!(snapshot(&same), snapshot(&opt));
    std::fs::remove_file(path).unwrap();
}

/// Gradient accumulation over micro-batches with the explicit API is the one-liner with
/// `mc_samples` equal to the number of micro-batches: each micro-batch gets its own sample
/// and the update uses the Welford mean.
#[test]
fn micro_batch_accumulation_equals_mc_samples() {
    let micro = [Model::new(20), Model::new(21), Model::new(22)];
    // One set of vars shared by the three micro-batch "models" (same x, y differ).
    let shared = |m: &Model, vars: &[Var]| Model {
        w: vars[0].clone(),
        b: vars[1].clone(),
        x: m.x.clone(),
        y: (&m.y * 0.5).unwrap(),
    };
    let base = Model::new(23);
    let run = |explicit: bool| {
        let vars = vec![
            Var::from_tensor(&base.w.as_tensor().copy().unwrap()).unwrap(),
            Var::from_tensor(&base.b.as_tensor().copy().unwrap()).unwrap(),
        ];
        let batches: Vec<Model> = micro.iter().map(|m| shared(m, &vars)).collect();
        let mut opt = Ivon::new(vars.clone(), config().mc_samples(3)).unwrap();
        for _ in 0..4 {
            if explicit {
                for (i, b) in batches.iter().enumerate() {
                    if i > 0 {
                        opt.resample().unwrap();
                    }
                    opt.accumulate(&b.grads()).unwrap();
                }
                opt.update().unwrap();
                opt.resample().unwrap();
            } else {
                for b in &batches {
                    opt.backward_step(&b.loss()).unwrap();
                }
            }
        }
        assert_eq!(opt.step_count(), 4);
        snapshot(&opt)
    };
    assert_eq!(run(true), run(false));
}

/// A prediction scale `c` moves sample `k` `c` times as far from the mean along the same
/// draw, and leaves the mean and the training sample alone.
#[test]
fn prediction_scale_stretches_the_samples_about_the_mean() {
    use varlora::predict::Posterior;
    let dev = Device::Cpu;
    let w = Var::zeros(64, DType::F32, &dev).unwrap();
    let mut opt = Ivon::new(vec![w.clone()], config()).unwrap();
    let training = w.as_tensor().to_vec1::<f32>().unwrap();
    let mean: Vec<f32> = opt.with_mean(|| w.as_tensor().to_vec1()).unwrap();
    let sample = |opt: &mut Ivon| -> Vec<f32> {
        opt.with_posterior_sample(3, || w.as_tensor().to_vec1())
            .unwrap()
    };
    let one = sample(&mut opt);
    opt.set_prediction_scale(2.5).unwrap();
    let stretched = sample(&mut opt);
    for ((s1, s2), m) in one.iter().zip(&stretched).zip(&mean) {
        assert!((s2 - m - 2.5 * (s1 - m)).abs() < 1e-6, "{s1} {s2} {m}");
    }
    assert!(one.iter().zip(&mean).any(|(s, m)| (s - m).abs() > 1e-3));
    assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), training);
    opt.set_prediction_scale(0.0).unwrap();
    assert_eq!(sample(&mut opt), mean);
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(opt.set_prediction_scale(bad).is_err());
    }
}
