//! The adapter-carrying BERT encoder: the gradient reaching every adapter through the
//! layer norms, padding, ensembles and BLoB. Its forward against candle-transformers'
//! BertModel is `benchmark/tests/bert_reference.rs`.

mod common;

use common::tiny_bert::{frozen_weights, inputs, rel_error, tiny_config};

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use varlora::lora::TargetModules;
use varlora::lora::{AdapterBuilder, BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{AdapterSpec, BertClassifier, BertEncoder};
use varlora::predict::Posterior;

/// An encoder over fresh random frozen weights, its adapters in the returned VarMap.
fn tiny_encoder(spec: Option<&AdapterSpec>, targets: TargetModules) -> (BertEncoder, VarMap) {
    let config = tiny_config();
    let weights = frozen_weights(&config);
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let base = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let adapters = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let spec = spec.map(|s| s as &dyn AdapterBuilder);
    let encoder = BertEncoder::load(base, adapters, &config, spec, &targets).unwrap();
    (encoder, varmap)
}

/// Every var has a non-zero gradient.
fn assert_every_var_has_a_gradient(
    vars: &HashMap<String, Var>,
    grads: &candle_core::backprop::GradStore,
) {
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn gradient_reaches_every_adapter_of_every_layer() {
    let dev = Device::Cpu;
    let spec = AdapterSpec::Lora(LoraConfig::new(2));
    let (encoder, varmap) = tiny_encoder(Some(&spec), BertEncoder::all_linears());
    let head = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = BertClassifier::new(encoder, 3, head).unwrap();
    // B starts at zero, which zeroes A's gradient: give every B a value first.
    common::randomize_lora_b(&varmap, 200, 0.1, DType::F32);
    let (ids, types, mask) = inputs();
    let logits = model.forward_t(&ids, &types, &mask, true).unwrap();
    let y = Tensor::new(&[0u32, 2], &dev).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    // 2 layers x 6 targets x (A, B) + the head's weight and bias.
    assert_eq!(data.len(), 2 * 6 * 2 + 2);
    assert_every_var_has_a_gradient(&data, &grads);
}

/// The fused CPU kernels of the frozen linear layers, layer norms and GELU against candle's
/// ops: the same weights loaded as plain tensors take the kernels, loaded as vars they take
/// candle's ops (whose gradients then reach the frozen weights too). The logits and every
/// adapter's gradient agree. (The attention softmax takes its kernel in both; its unit
/// test compares it with candle's ops.)
#[test]
fn fused_kernels_give_the_gradients_of_candles_ops() {
    let dev = Device::Cpu;
    let config = tiny_config();
    let weights = frozen_weights(&config);
    let tracked: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (k.clone(), Var::from_tensor(v).unwrap().as_tensor().clone()))
        .collect();
    // One set of adapters, shared by both models through the VarMap.
    let varmap = VarMap::new();
    let model = |w: &HashMap<String, Tensor>| {
        let adapters = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let encoder = BertEncoder::load(
            VarBuilder::from_tensors(w.clone(), DType::F32, &dev),
            adapters.clone(),
            &config,
            Some(&AdapterSpec::Lora(LoraConfig::new(2))),
            &BertEncoder::all_linears(),
        )
        .unwrap();
        BertClassifier::new(encoder, 3, adapters).unwrap()
    };
    let (fused, composed) = (model(&weights), model(&tracked));
    common::randomize_lora_b(&varmap, 200, 0.1, DType::F32);
    let (ids, types, mask) = inputs();
    let y = Tensor::new(&[0u32, 2], &dev).unwrap();
    let run = |m: &BertClassifier| {
        let logits = m.forward_t(&ids, &types, &mask, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        (logits, loss.backward().unwrap())
    };
    let ((ours, our_grads), (theirs, their_grads)) = (run(&fused), run(&composed));
    assert!(rel_error(&ours, &theirs) < 1e-5);
    let data = varmap.data().lock().unwrap();
    assert_eq!(data.len(), 2 * 6 * 2 + 2);
    for (name, var) in data.iter() {
        let g =
            |grads: &candle_core::backprop::GradStore| grads.get(var.as_tensor()).unwrap().clone();
        let err = rel_error(&g(&our_grads), &g(&their_grads));
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

#[test]
fn padding_does_not_change_the_pooled_output() {
    let dev = Device::Cpu;
    let (encoder, _) = tiny_encoder(None, BertEncoder::query_value());
    let pooled = |ids: &[u32], mask: &[u32]| {
        let ids = Tensor::new(ids, &dev).unwrap().unsqueeze(0).unwrap();
        let mask = Tensor::new(mask, &dev).unwrap().unsqueeze(0).unwrap();
        let h = encoder
            .forward_t(&ids, &ids.zeros_like().unwrap(), Some(&mask), false)
            .unwrap();
        BertEncoder::mean_pool(&h, &mask).unwrap()
    };
    let short = pooled(&[4, 8, 15], &[1, 1, 1]);
    let padded = pooled(&[4, 8, 15, 0, 0], &[1, 1, 1, 0, 0]);
    assert!(rel_error(&padded, &short) < 1e-5);
    let long = (0..20).collect::<Vec<u32>>();
    let ids = Tensor::new(long.as_slice(), &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    assert!(encoder
        .forward_t(&ids, &ids.zeros_like().unwrap(), None, false)
        .is_err());
}

/// LoRA-Ensemble on the encoder: member m of the one batched forward equals a LoRA model
/// with member m's adapters (scale 1) and head.
#[test]
fn ensemble_members_equal_separate_lora_models() {
    let config = tiny_config();
    let weights = frozen_weights(&config);
    let dev = Device::Cpu;
    let (members, rank) = (3, 2);
    let targets = BertEncoder::attention();
    let ens_vars = VarMap::new();
    let ens_vb = VarBuilder::from_varmap(&ens_vars, DType::F32, &dev);
    let spec = AdapterSpec::Ensemble { members, rank };
    let encoder = BertEncoder::load(
        VarBuilder::from_tensors(weights.clone(), DType::F32, &dev),
        ens_vb.clone(),
        &config,
        Some(&spec),
        &targets,
    )
    .unwrap();
    let ensemble = BertClassifier::new(encoder, 3, ens_vb).unwrap();
    // Give every member's B a value so that the members differ.
    common::randomize_lora_b(&ens_vars, 200, 0.05, DType::F32);
    let (ids, types, mask) = inputs();
    let logits = ensemble.forward_t(&ids, &types, &mask, false).unwrap();
    assert_eq!(logits.dims(), &[members, 2, 3]);
    let ens = ens_vars.data().lock().unwrap();
    for m in 0..members {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
        let single = BertEncoder::load(
            VarBuilder::from_tensors(weights.clone(), DType::F32, &dev),
            vb.clone(),
            &config,
            Some(&AdapterSpec::Lora(LoraConfig::new(rank).alpha(rank as f64))),
            &targets,
        )
        .unwrap();
        let single = BertClassifier::new(single, 3, vb).unwrap();
        for (name, var) in vars.data().lock().unwrap().iter() {
            var.set(
                &ens[name]
                    .as_tensor()
                    .get(m)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .reshape(var.shape())
                    .unwrap(),
            )
            .unwrap();
        }
        let expected = single.forward_t(&ids, &types, &mask, false).unwrap();
        let err = rel_error(&logits.get(m).unwrap(), &expected);
        assert!(err < 1e-5, "member {m}: relative error {err}");
    }
}

/// A detached copy computes the same outputs, sees later updates of the vars, and keeps
/// no graph (no gradient reaches the adapters through it).
#[test]
fn detached_copy_shares_weights_without_tracking() {
    let dev = Device::Cpu;
    let spec = AdapterSpec::Lora(LoraConfig::new(2));
    let (encoder, varmap) = tiny_encoder(Some(&spec), BertEncoder::query_value());
    let model = BertClassifier::new(
        encoder,
        3,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )
    .unwrap();
    let frozen = model.detach();
    let (ids, types, mask) = inputs();
    let run = |m: &BertClassifier| m.forward_t(&ids, &types, &mask, false).unwrap();
    assert_eq!(rel_error(&run(&frozen), &run(&model)), 0.0);
    common::randomize_lora_b(&varmap, 200, 0.1, DType::F32);
    let (after, tracked) = (run(&frozen), run(&model));
    assert_eq!(rel_error(&after, &tracked), 0.0, "the update shows through");
    let grads = after.sum_all().unwrap().backward().unwrap();
    for var in varmap.all_vars() {
        assert!(grads.get(var.as_tensor()).is_none());
    }
}

/// BLoB on every target of the encoder, with `B` != 0: at the mean it computes what the
/// LoRA encoder with `A = M` and the same `B` computes (seeded init gives LoRA's `A` and
/// BLoB's `M` the same draws, as both are PEFT's `lora_a`); sampling, sample `k` repeats
/// and differs from the mean and from sample `k + 1`; and the training loss's gradient
/// reaches `M`, `G` and `B` of every layer.
#[test]
fn blob_in_the_encoder_samples_around_the_lora_mean() {
    let dev = Device::Cpu;
    let build = |spec: &AdapterSpec| {
        let (encoder, varmap) = tiny_encoder(Some(spec), BertEncoder::all_linears());
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let model = BertClassifier::new(encoder, 3, vb).unwrap();
        model.init(8).unwrap();
        common::randomize_lora_b(&varmap, 200, 0.2, DType::F32);
        (model, varmap)
    };
    let (lora, _) = build(&AdapterSpec::Lora(LoraConfig::new(2)));
    let mut sampler = BlobSampler::new(3);
    let (blob, blob_vars) = build(&AdapterSpec::Blob(
        BlobConfig::new(LoraConfig::new(2)),
        sampler.clone(),
    ));
    let (ids, types, mask) = inputs();
    let logits = |m: &BertClassifier| m.forward_t(&ids, &types, &mask, false).unwrap();
    let want = logits(&lora);
    let mean = sampler.with_point_estimate(|| Ok(logits(&blob))).unwrap();
    assert!(
        rel_error(&mean, &want) < 1e-6,
        "{}",
        rel_error(&mean, &want)
    );

    let sample = |k| {
        sampler
            .clone()
            .with_posterior_sample(k, || Ok(logits(&blob)))
            .unwrap()
    };
    let (s0, s1) = (sample(0), sample(1));
    assert_eq!(rel_error(&sample(0), &s0), 0.0);
    assert!(rel_error(&s0, &mean) > 1e-4 && rel_error(&s0, &s1) > 1e-4);

    assert_eq!(blob.encoder().blob_layers().unwrap().len(), 2 * 6);
    let y = Tensor::new(&[0u32, 2], &dev).unwrap();
    let train_logits = blob.forward_t(&ids, &types, &mask, true).unwrap();
    let grads = candle_nn::loss::cross_entropy(&train_logits, &y)
        .unwrap()
        .backward()
        .unwrap();
    let data = blob_vars.data().lock().unwrap();
    assert_eq!(data.len(), 2 * 6 * 3 + 2);
    assert_every_var_has_a_gradient(&data, &grads);
}

/// The adapted head (bayesian-peft's `--apply-classhead-lora`): a frozen random head drawn
/// from the seed plus an adapter. Only the adapter is a var; the same seed gives the same
/// head; a BLoB head samples, and the optimizer finds its vars; ensembles are refused.
#[test]
fn an_adapted_head_is_frozen_plus_its_adapter() {
    let dev = Device::Cpu;
    let no_targets = TargetModules::new(Vec::<String>::new());
    let lora = AdapterSpec::Lora(LoraConfig::new(2));
    let build = |spec: &AdapterSpec, seed: u64| {
        let (encoder, varmap) = tiny_encoder(Some(spec), no_targets.clone());
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let model = BertClassifier::with_adapted_head(encoder, 3, vb, spec, seed).unwrap();
        model.init(seed).unwrap();
        (model, varmap)
    };
    let (ids, types, mask) = inputs();
    let logits = |m: &BertClassifier| m.forward_t(&ids, &types, &mask, false).unwrap();
    let (first, varmap) = build(&lora, 4);
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["classifier.lora_a", "classifier.lora_b"]);
    let (again, _) = build(&lora, 4);
    let (other, _) = build(&lora, 5);
    assert_eq!(rel_error(&logits(&again), &logits(&first)), 0.0);
    assert!(rel_error(&logits(&other), &logits(&first)) > 1e-3);

    // With B != 0 the adapter changes the logits and takes the gradient.
    let before = logits(&first);
    common::randomize_lora_b(&varmap, 200, 0.5, DType::F32);
    assert!(rel_error(&logits(&first), &before) > 1e-3);
    let y = Tensor::new(&[0u32, 2], &dev).unwrap();
    let train = first.forward_t(&ids, &types, &mask, true).unwrap();
    let grads = candle_nn::loss::cross_entropy(&train, &y)
        .unwrap()
        .backward()
        .unwrap();
    assert_every_var_has_a_gradient(&varmap.data().lock().unwrap(), &grads);

    let mut sampler = BlobSampler::new(1);
    let blob = AdapterSpec::Blob(BlobConfig::new(LoraConfig::new(2)), sampler.clone());
    let (bayes, blob_vars) = build(&blob, 4);
    common::randomize_lora_b(&blob_vars, 200, 0.5, DType::F32);
    assert_eq!(bayes.blob_layers().unwrap().len(), 1);
    let mean = sampler.with_point_estimate(|| Ok(logits(&bayes))).unwrap();
    let sample = sampler
        .with_posterior_sample(0, || Ok(logits(&bayes)))
        .unwrap();
    assert!(rel_error(&sample, &mean) > 1e-4, "the head samples");

    let ensemble = AdapterSpec::Ensemble {
        members: 2,
        rank: 2,
    };
    let (encoder, varmap) = tiny_encoder(Some(&ensemble), BertEncoder::query_value());
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    assert!(BertClassifier::with_adapted_head(encoder, 3, vb, &lora, 0).is_err());
}
