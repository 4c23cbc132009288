//! Posterior samples evaluated in one forward pass (stacked as LoRA-Ensemble's members)
//! give the predictive that evaluating them one at a time gives.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::tiny_bert::{frozen_weights, inputs, query_value_output, tiny_config};
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{AdapterSpec, BertClassifier, BertEncoder};
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{predictive, predictive_stacked, GaussianPosterior, Predictive};

/// Stacked and one-by-one differ by the batched matmuls' summation order and by
/// `alpha / r` folded into `B`: f32 rounding of logits of order 1.
const TOL: f64 = 1e-5;

fn classifier(spec: &AdapterSpec, adapted_head: bool) -> (BertClassifier, VarMap) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let config = tiny_config();
    let base = VarBuilder::from_tensors(frozen_weights(&config), DType::F32, &dev);
    let encoder =
        BertEncoder::load(base, vb.clone(), &config, Some(spec), &query_value_output()).unwrap();
    let model = if adapted_head {
        BertClassifier::with_adapted_head(encoder, 3, vb, spec, 0).unwrap()
    } else {
        BertClassifier::new(encoder, 3, vb).unwrap()
    };
    model.init(0).unwrap();
    (model, varmap)
}

/// Every var under its name, sorted, with `B` given a value (it starts at zero).
fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap();
    let mut vars: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (name, v)) in vars.iter().enumerate() {
        if name.ends_with("lora_b") {
            v.set(&common::randn(50 + i as u64, 0.3, v.dims(), DType::F32))
                .unwrap();
        }
    }
    vars
}

/// A posterior over every var of `varmap`, in two groups, means at the vars and standard
/// deviations of varied size, large enough that the samples disagree.
fn posterior(varmap: &VarMap) -> GaussianPosterior {
    let entries: Vec<_> = named_vars(varmap)
        .into_iter()
        .enumerate()
        .map(|(i, (name, var))| {
            let std = common::randn(i as u64, 0.3, var.dims(), DType::F32)
                .abs()
                .unwrap();
            let mean = var.as_tensor().copy().unwrap();
            (name, var, mean, std)
        })
        .collect();
    let half = entries.len() / 2;
    let mut first = entries;
    let second = first.split_off(half);
    GaussianPosterior::new(vec![first, second], 7, Default::default()).unwrap()
}

fn one_by_one(model: &BertClassifier, p: &mut GaussianPosterior, samples: usize) -> Predictive {
    let (ids, types, mask) = inputs();
    predictive(p, samples, true, || {
        model
            .forward_t(&ids, &types, &mask, false)
            .map_err(candle_core::Error::wrap)
    })
    .unwrap()
}

fn stacked(
    model: &BertClassifier,
    p: &GaussianPosterior,
    samples: usize,
    chunk: usize,
) -> varlora::Result<Predictive> {
    let (ids, types, mask) = inputs();
    predictive_stacked(samples, chunk, true, |ks| {
        let weights = p.stacked_samples(ks.clone())?;
        let sampled = model.with_stacked_weights(&weights, ks.len())?;
        sampled.forward_t(&ids, &types, &mask, false)
    })
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap();
    d.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_same(a: &Predictive, b: &Predictive) {
    let pairs = [
        ("probs", &a.probs, &b.probs),
        ("total", &a.total, &b.total),
        ("aleatoric", &a.aleatoric, &b.aleatoric),
        ("epistemic", &a.epistemic, &b.epistemic),
        (
            "samples",
            a.samples.as_ref().unwrap(),
            b.samples.as_ref().unwrap(),
        ),
    ];
    for (what, x, y) in pairs {
        let d = max_diff(x, y);
        assert!(d < TOL, "{what} differs by {d:e}");
    }
}

/// The samples must disagree, or a stacked forward that ignored them would pass.
fn assert_epistemic(p: &Predictive) {
    let e: Vec<f64> = p.epistemic.to_vec1().unwrap();
    assert!(e.iter().all(|&x| x > 1e-3), "epistemic {e:?}");
}

#[test]
fn stacked_samples_give_the_one_by_one_predictive() {
    let spec = AdapterSpec::Lora(LoraConfig::new(2).alpha(4.0));
    for adapted_head in [false, true] {
        let (model, varmap) = classifier(&spec, adapted_head);
        let mut p = posterior(&varmap);
        let reference = one_by_one(&model, &mut p, 5);
        assert_epistemic(&reference);
        // Chunks of 2 (the last one short), one at a time, and all at once.
        for chunk in [2, 1, 8] {
            assert_same(&stacked(&model, &p, 5, chunk).unwrap(), &reference);
        }
    }
}

/// An optimizer's posterior carries its prediction scale, so its stacked samples are the
/// optimizer's own samples.
#[test]
fn ivon_posterior_stacks_the_optimizers_samples() {
    let spec = AdapterSpec::Lora(LoraConfig::new(2));
    let (model, varmap) = classifier(&spec, false);
    named_vars(&varmap);
    let mut ivon = Ivon::from_varmap(&varmap, IvonConfig::new(0.1, 20.0)).unwrap();
    ivon.set_prediction_scale(2.0).unwrap();
    let (ids, types, mask) = inputs();
    let reference = predictive(&mut ivon, 3, true, || {
        model
            .forward_t(&ids, &types, &mask, false)
            .map_err(candle_core::Error::wrap)
    })
    .unwrap();
    assert_epistemic(&reference);
    assert_same(
        &stacked(&model, &ivon.posterior().unwrap(), 3, 2).unwrap(),
        &reference,
    );
}

#[test]
fn what_cannot_be_stacked_is_an_error() {
    let blob = AdapterSpec::Blob(BlobConfig::new(LoraConfig::new(2)), BlobSampler::new(0));
    let (model, _) = classifier(&blob, false);
    let err = model
        .with_stacked_weights(&Default::default(), 2)
        .unwrap_err();
    assert!(err.to_string().contains("sample by sample"), "{err}");
    assert!(matches!(err, varlora::Error::Unsupported(_)), "{err:?}");

    let spec = AdapterSpec::Lora(LoraConfig::new(2));
    let (model, varmap) = classifier(&spec, false);
    let p = posterior(&varmap);
    assert!(model.with_stacked_weights(&Default::default(), 0).is_err());
    let err = p.stacked_samples(3..3).unwrap_err();
    assert!(err.to_string().contains("stack at least one"), "{err}");
    // Stacked samples of another count than the forward is told.
    let weights = p.stacked_samples(0..3).unwrap();
    let err = model.with_stacked_weights(&weights, 2).unwrap_err();
    assert!(err.to_string().contains("expected [2,"), "{err}");
    // Samples of a var the model does not use under that name would be left out unseen.
    let mut renamed = weights.clone();
    let b = renamed.remove("classifier.bias").unwrap();
    renamed.insert("head.bias".into(), b);
    let err = model.with_stacked_weights(&renamed, 3).unwrap_err();
    assert!(err.to_string().contains("head.bias"), "{err}");
    assert!(matches!(err, varlora::Error::NotFound(_)), "{err:?}");
    // A stacked model has no member dimension left for another stacking.
    let sampled = model.with_stacked_weights(&weights, 3).unwrap();
    assert!(sampled.with_stacked_weights(&weights, 3).is_err());
    // Logits that are not one row per sample of the chunk.
    assert!(stacked(&model, &p, 4, 0).is_err());
    let wrong = predictive_stacked(4, 2, false, |_| {
        Ok(Tensor::zeros((3, 2, 3), DType::F32, &Device::Cpu)?)
    });
    assert!(wrong.is_err());
}
