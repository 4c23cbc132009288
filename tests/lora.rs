//! LoRA layers: the update's algebra, merge/unmerge, what is trainable, and gradients.

mod common;

use common::{max_abs_diff, randn};

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};
use varlora::lora::{LoraConfig, LoraLinear};

fn base(dev: &Device) -> Linear {
    let w = randn(1, 0.5, &[5, 7], DType::F32).to_device(dev).unwrap();
    let b = randn(2, 0.5, &[5], DType::F32).to_device(dev).unwrap();
    Linear::new(w, Some(b))
}

/// A layer whose `B` is non-zero, so that the update shows.
fn trained(varmap: &VarMap, config: LoraConfig) -> LoraLinear {
    let dev = Device::Cpu;
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &dev);
    let layer = LoraLinear::new(base(&dev), config, vb.pp("q")).unwrap();
    let data = varmap.data().lock().unwrap();
    data["q.lora_b"]
        .set(&randn(3, 0.3, &[5, 2], DType::F32))
        .unwrap();
    drop(data);
    layer
}

#[test]
fn starts_as_the_frozen_layer_and_trains_only_the_adapters() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let frozen = base(&dev);
    let layer = LoraLinear::new(frozen.clone(), LoraConfig::new(2), vb.pp("q")).unwrap();
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["q.lora_a", "q.lora_b"]);
    let x = randn(4, 1.0, &[3, 7], DType::F32);
    let y = layer.forward_t(&x, false).unwrap();
    assert_eq!(
        max_abs_diff(&y, &candle_core::Module::forward(&frozen, &x).unwrap()),
        0.0
    );
    // PEFT's Kaiming-uniform bound for A: 1 / sqrt(in).
    let a_max: f32 = layer
        .a()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(a_max <= 1.0 / 7f32.sqrt() && a_max > 0.1, "{a_max}");
}

#[test]
fn forward_is_base_plus_scaled_low_rank_update() {
    let varmap = VarMap::new();
    let layer = trained(&varmap, LoraConfig::new(2).alpha(6.0));
    let x = randn(5, 1.0, &[2, 3, 7], DType::F32);
    let y = layer.forward_t(&x, false).unwrap();
    // By hand: x W^T + b + 3 * x A^T B^T, for a 3-D input.
    let w = layer.base().weight();
    let manual = (x
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(layer.base().bias().unwrap())
        .unwrap()
        + (x.broadcast_matmul(&layer.a().t().unwrap())
            .unwrap()
            .broadcast_matmul(&layer.b().t().unwrap())
            .unwrap()
            * 3.0)
            .unwrap())
    .unwrap();
    assert!(max_abs_diff(&y, &manual) < 1e-5);
}

#[test]
fn merge_and_unmerge_keep_the_function() {
    let varmap = VarMap::new();
    let mut layer = trained(&varmap, LoraConfig::new(2).alpha(4.0));
    let w0 = layer.base().weight().copy().unwrap();
    let x = randn(6, 1.0, &[4, 7], DType::F32);
    let before = layer.forward_t(&x, false).unwrap();
    layer.merge().unwrap();
    assert!(layer.merge().is_err());
    assert!(max_abs_diff(&layer.forward_t(&x, false).unwrap(), &before) < 1e-5);
    assert!(
        max_abs_diff(layer.base().weight(), &w0) > 1e-3,
        "the weight changed"
    );
    layer.unmerge().unwrap();
    assert!(layer.unmerge().is_err());
    assert!(max_abs_diff(layer.base().weight(), &w0) < 1e-6);
    assert!(max_abs_diff(&layer.forward_t(&x, false).unwrap(), &before) < 1e-5);
}

#[test]
fn gradients_reach_both_adapters_and_not_the_frozen_weight() {
    let varmap = VarMap::new();
    let layer = trained(&varmap, LoraConfig::new(2));
    let x = Var::from_tensor(&randn(7, 1.0, &[4, 7], DType::F32)).unwrap();
    let loss = layer
        .forward_t(&x, true)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for name in ["q.lora_a", "q.lora_b"] {
        let var = varmap.data().lock().unwrap()[name].clone();
        let g = grads.get(var.as_tensor()).expect("gradient");
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "{name}");
    }
    assert!(grads.get(layer.base().weight()).is_none());
}

#[test]
fn dropout_only_in_training() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let layer = trained(&varmap, LoraConfig::new(2).dropout(0.5));
    let x = Tensor::ones((64, 7), DType::F32, &dev).unwrap();
    let eval = layer.forward_t(&x, false).unwrap();
    assert_eq!(
        max_abs_diff(&eval, &layer.forward_t(&x, false).unwrap()),
        0.0
    );
    let train = layer.forward_t(&x, true).unwrap();
    assert!(
        max_abs_diff(&train, &eval) > 1e-3,
        "dropout changed the update"
    );
}

#[test]
fn bad_configs_and_parts_are_errors() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    assert!(LoraLinear::new(base(&dev), LoraConfig::new(0), vb.pp("a")).is_err());
    assert!(LoraLinear::new(base(&dev), LoraConfig::new(2).dropout(1.0), vb.pp("b")).is_err());
    let a = Tensor::zeros((2, 6), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((5, 2), DType::F32, &dev).unwrap();
    assert!(LoraLinear::from_parts(base(&dev), a, b, LoraConfig::new(2)).is_err());
}

/// MC dropout's masks come from its seed: two layers on the same seed train alike, sample
/// `k` repeats and differs from sample `k + 1`, and evaluation outside a sample (and the
/// point estimate) is the layer without dropout.
#[test]
fn mc_dropout_masks_are_seeded_and_switched_by_the_posterior() {
    use varlora::lora::McDropout;
    use varlora::predict::Posterior;
    let dev = Device::Cpu;
    let config = LoraConfig::new(2).dropout(0.3);
    let layer = |mc: &McDropout| {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let l = LoraLinear::with_mc_dropout(base(&dev), config.clone(), vb.pp("q"), mc).unwrap();
        varmap.data().lock().unwrap()["q.lora_a"]
            .set(&randn(5, 0.3, &[2, 7], DType::F32))
            .unwrap();
        varmap.data().lock().unwrap()["q.lora_b"]
            .set(&randn(3, 0.3, &[5, 2], DType::F32))
            .unwrap();
        (l, varmap)
    };
    let x = randn(4, 1.0, &[3, 7], DType::F32);
    let (mut mc, mc_b) = (McDropout::new(9), McDropout::new(9));
    let ((a, _), (b, _)) = (layer(&mc), layer(&mc_b));
    let f = |l: &LoraLinear, train| l.forward_t(&x, train).unwrap();
    assert_eq!(max_abs_diff(&f(&a, true), &f(&b, true)), 0.0);
    assert!(
        max_abs_diff(&f(&a, true), &f(&a, true)) > 1e-4,
        "fresh masks each step"
    );

    let plain = LoraLinear::from_parts(
        base(&dev),
        a.a().copy().unwrap(),
        a.b().copy().unwrap(),
        LoraConfig::new(2),
    )
    .unwrap();
    let no_dropout = f(&plain, false);
    assert_eq!(max_abs_diff(&f(&a, false), &no_dropout), 0.0);
    let point = mc.with_point_estimate(|| a.forward_t(&x, false)).unwrap();
    assert_eq!(max_abs_diff(&point, &no_dropout), 0.0);
    let s0 = mc
        .with_posterior_sample(0, || a.forward_t(&x, false))
        .unwrap();
    let s1 = mc
        .with_posterior_sample(1, || a.forward_t(&x, false))
        .unwrap();
    let again = mc
        .with_posterior_sample(0, || a.forward_t(&x, false))
        .unwrap();
    assert_eq!(max_abs_diff(&s0, &again), 0.0);
    assert!(max_abs_diff(&s0, &s1) > 1e-4 && max_abs_diff(&s0, &no_dropout) > 1e-4);
}
