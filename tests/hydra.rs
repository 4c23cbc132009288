//! Hydra's grouped primitives and merged network against separate layers and separately
//! pruned BERT models, its importance against finite differences, and its member plans.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Module, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};
use common::tiny_bert::{frozen_weights, inputs, rel_error, tiny_config};
use varlora::hydra::{
    grouped_layer_norm, plan_members, GroupedLinear, HydraClassifier, Importance, LabelledBatch,
    MemberPlan, PruneConfig, Selection,
};
use varlora::lora::{AdapterBuilder, LoraConfig};
use varlora::models::{AdapterSpec, BertClassifier, BertConfig, BertEncoder};

const CLASSES: usize = 3;

fn config() -> BertConfig {
    tiny_config()
}

/// The tiny model's frozen weights plus a random head, in `dtype`.
fn weights(dtype: DType) -> HashMap<String, Tensor> {
    let mut w = frozen_weights(&config());
    let h = config().hidden_size;
    w.insert(
        "classifier.weight".into(),
        common::randn(7, 0.5, &[CLASSES, h], DType::F32),
    );
    w.insert(
        "classifier.bias".into(),
        common::randn(8, 0.1, &[CLASSES], DType::F32),
    );
    w.into_iter()
        .map(|(k, t)| (k, t.to_dtype(dtype).unwrap()))
        .collect()
}

/// Three members of unequal widths, so that padding is exercised (4 heads of 4, 32
/// neurons per layer).
fn plans() -> Vec<MemberPlan> {
    vec![
        MemberPlan {
            heads: vec![vec![0, 2], vec![1, 2, 3]],
            neurons: vec![(0..32).step_by(2).collect(), (0..20).collect()],
        },
        MemberPlan {
            heads: vec![vec![1], vec![0, 3]],
            neurons: vec![(5..30).collect(), vec![3, 9, 31]],
        },
        MemberPlan::full(2, 4, 32),
    ]
}

/// The model with a member's pruned units zeroed where they leave their layer (a head's
/// columns of the attention output, a neuron's column of the output dense): exactly the
/// pruned member, computed by the ordinary encoder.
fn pruned_weights(w: &HashMap<String, Tensor>, plan: &MemberPlan) -> HashMap<String, Tensor> {
    let mut w = w.clone();
    let c = config();
    let d = c.hidden_size / c.num_attention_heads;
    for l in 0..c.num_hidden_layers {
        let zero_cols = |t: &Tensor, keep: &[usize], width: usize| -> Tensor {
            let cols = t.dim(1).unwrap();
            let mask: Vec<f32> = (0..cols)
                .map(|j| f32::from(u8::from(keep.contains(&(j / width)))))
                .collect();
            let mask = Tensor::new(mask, t.device())
                .unwrap()
                .to_dtype(t.dtype())
                .unwrap();
            t.broadcast_mul(&mask).unwrap()
        };
        let o = format!("encoder.layer.{l}.attention.output.dense.weight");
        w.insert(o.clone(), zero_cols(&w[&o], &plan.heads[l], d));
        let f = format!("encoder.layer.{l}.output.dense.weight");
        w.insert(f.clone(), zero_cols(&w[&f], &plan.neurons[l], 1));
    }
    w
}

/// The ordinary encoder and head on `w`: logits `(batch, classes)`.
fn reference_logits(w: &HashMap<String, Tensor>, dtype: DType) -> Tensor {
    let vb = VarBuilder::from_tensors(w.clone(), dtype, &Device::Cpu);
    let varmap = VarMap::new();
    let adapters = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let encoder =
        BertEncoder::load(vb, adapters, &config(), None, &BertEncoder::query_value()).unwrap();
    let (ids, types, mask) = inputs();
    let hidden = encoder.forward_t(&ids, &types, Some(&mask), false).unwrap();
    let pooled = BertEncoder::mean_pool(&hidden, &mask).unwrap();
    let head = Linear::new(
        w["classifier.weight"].clone(),
        Some(w["classifier.bias"].clone()),
    );
    head.forward(&pooled).unwrap()
}

fn hydra_logits(net: &HydraClassifier) -> Tensor {
    let (ids, types, mask) = inputs();
    net.forward(&ids, &types, &mask).unwrap()
}

#[test]
fn grouped_linear_equals_separate_linears_forward_and_backward() {
    let (m, n, i, o) = (3, 5, 4, 6);
    let w = Var::from_tensor(&common::randn(1, 1.0, &[m, o, i], DType::F32)).unwrap();
    let b = Var::from_tensor(&common::randn(2, 1.0, &[m, o], DType::F32)).unwrap();
    let x = common::randn(3, 1.0, &[m, n, i], DType::F32);
    let grouped = GroupedLinear::new(w.as_tensor().clone(), b.as_tensor().clone()).unwrap();
    let y = grouped.forward(&x).unwrap();
    let weight_of_loss = common::randn(4, 1.0, &[m, n, o], DType::F32);
    let grads = (&y * &weight_of_loss)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for k in 0..m {
        let wk = Var::from_tensor(&w.as_tensor().get(k).unwrap()).unwrap();
        let bk = Var::from_tensor(&b.as_tensor().get(k).unwrap()).unwrap();
        let single = Linear::new(wk.as_tensor().clone(), Some(bk.as_tensor().clone()));
        let yk = single.forward(&x.get(k).unwrap()).unwrap();
        assert!(
            rel_error(&y.get(k).unwrap(), &yk) < 1e-6,
            "member {k}'s output"
        );
        let g = (&yk * weight_of_loss.get(k).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let gk = g.backward().unwrap();
        let ours = grads.get(w.as_tensor()).unwrap().get(k).unwrap();
        assert!(
            rel_error(&ours, gk.get(wk.as_tensor()).unwrap()) < 1e-6,
            "member {k}'s dW"
        );
        let ours = grads.get(b.as_tensor()).unwrap().get(k).unwrap();
        assert!(
            rel_error(&ours, gk.get(bk.as_tensor()).unwrap()) < 1e-6,
            "member {k}'s db"
        );
    }
}

#[test]
fn grouped_linear_and_norm_reject_mismatched_shapes() {
    let w = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(GroupedLinear::new(
        w.clone(),
        Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap()
    )
    .is_err());
    let g =
        GroupedLinear::new(w, Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
    assert!(g
        .forward(&Tensor::zeros((3, 5, 4), DType::F32, &Device::Cpu).unwrap())
        .is_err());
    assert!(g
        .forward(&Tensor::zeros((2, 5, 3), DType::F32, &Device::Cpu).unwrap())
        .is_err());
    let x = Tensor::zeros((2, 5, 4), DType::F32, &Device::Cpu).unwrap();
    let p = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(grouped_layer_norm(&x, &p, &p, 1e-5).is_err());
}

#[test]
fn grouped_layer_norm_equals_each_members_layer_norm() {
    let (m, n, h) = (3, 4, 8);
    let x = common::randn(5, 2.0, &[m, n, h], DType::F32);
    let w = common::randn(6, 1.0, &[m, h], DType::F32);
    let b = common::randn(7, 1.0, &[m, h], DType::F32);
    let y = grouped_layer_norm(&x, &w, &b, 1e-5).unwrap();
    for k in 0..m {
        let (wk, bk) = (w.get(k).unwrap(), b.get(k).unwrap());
        let want = candle_nn::ops::layer_norm_slow(&x.get(k).unwrap(), &wk, &bk, 1e-5).unwrap();
        assert!(rel_error(&y.get(k).unwrap(), &want) < 1e-6, "member {k}");
    }
}

#[test]
fn merged_forward_equals_each_separately_pruned_model() {
    let w = weights(DType::F32);
    let plans = plans();
    let net = HydraClassifier::new(&w, &config(), &plans, false).unwrap();
    let logits = hydra_logits(&net);
    assert_eq!(logits.dims(), &[3, 2, CLASSES]);
    for (m, plan) in plans.iter().enumerate() {
        let want = reference_logits(&pruned_weights(&w, plan), DType::F32);
        let err = rel_error(&logits.get(m).unwrap(), &want);
        assert!(err < 1e-5, "member {m}: relative error {err}");
    }
    // The members differ: pruning changed the predictions.
    assert!(rel_error(&logits.get(0).unwrap(), &logits.get(2).unwrap()) > 1e-3);
}

#[test]
fn pruning_a_head_from_one_member_changes_only_that_member() {
    let w = weights(DType::F32);
    let before = hydra_logits(&HydraClassifier::new(&w, &config(), &plans(), false).unwrap());
    let mut pruned = plans();
    pruned[1].heads[1] = vec![3];
    let after = hydra_logits(&HydraClassifier::new(&w, &config(), &pruned, false).unwrap());
    for m in [0, 2] {
        let err = rel_error(&after.get(m).unwrap(), &before.get(m).unwrap());
        assert!(err < 1e-6, "member {m} moved by {err}");
    }
    assert!(rel_error(&after.get(1).unwrap(), &before.get(1).unwrap()) > 1e-4);
}

#[test]
fn gradients_reach_every_members_weights_and_padding_stays_zero() {
    let w = weights(DType::F32);
    let net = HydraClassifier::new(&w, &config(), &plans(), true).unwrap();
    let logits = hydra_logits(&net);
    let labels = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
    let (m, n, _) = logits.dims3().unwrap();
    let flat = logits.reshape((m * n, CLASSES)).unwrap();
    let loss = candle_nn::loss::cross_entropy(&flat, &labels.repeat(m).unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    assert!(!net.vars().is_empty());
    for (i, v) in net.vars().iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("var {i}: no gradient"));
        for k in 0..m {
            let norm = abs_sum(&g.get(k).unwrap());
            assert!(norm > 0.0, "var {i}, member {k}: zero gradient");
        }
    }
    // Member 1 keeps one head of layer 0 where the widest keeps two: the padded head's
    // query rows (4..8 of member 1's query weight, the first var) get no gradient.
    let gq = grads.get(net.vars()[0].as_tensor()).unwrap();
    assert_eq!(abs_sum(&gq.i((1, 4..8)).unwrap()), 0.0);
    // The detached copy predicts the same without building a graph.
    let detached = net.detach();
    let same = hydra_logits(&detached);
    assert!(detached.vars().is_empty() && !same.track_op());
    assert_eq!(rel_error(&same, &logits), 0.0);
}

/// The sum of `|t|`.
fn abs_sum(t: &Tensor) -> f32 {
    t.abs().unwrap().sum_all().unwrap().to_scalar().unwrap()
}

#[test]
fn dense_network_of_merged_lora_tensors_equals_the_lora_classifier() {
    let dev = Device::Cpu;
    let base = VarBuilder::from_tensors(frozen_weights(&config()), DType::F32, &dev);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let spec = AdapterSpec::Lora(LoraConfig::new(2).alpha(4.0));
    let targets = BertEncoder::query_value();
    let encoder = BertEncoder::load(
        base,
        vb.clone(),
        &config(),
        Some(&spec as &dyn AdapterBuilder),
        &targets,
    )
    .unwrap();
    let model = BertClassifier::new(encoder, CLASSES, vb).unwrap();
    model.init(3).unwrap();
    for (i, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
        if name.ends_with("lora_b") {
            var.set(&common::randn(50 + i as u64, 0.3, var.dims(), DType::F32))
                .unwrap();
        }
    }
    let (ids, types, mask) = inputs();
    let want = model.forward_t(&ids, &types, &mask, false).unwrap();
    let net = HydraClassifier::dense(&model.merged_tensors().unwrap(), &config(), false).unwrap();
    let got = hydra_logits(&net).squeeze(0).unwrap();
    assert!(rel_error(&got, &want) < 1e-5, "{}", rel_error(&got, &want));
}

/// Sentence 0's cross-entropy with head `head` (or neuron) of layer `l` scaled by `s`.
fn loss_with_scaled_unit(l: usize, cols: std::ops::Range<usize>, key: &str, s: f64) -> f64 {
    let mut w = weights(DType::F64);
    let name = format!("encoder.layer.{l}.{key}.weight");
    let t = &w[&name];
    let scale: Vec<f64> = (0..t.dim(1).unwrap())
        .map(|j| if cols.contains(&j) { s } else { 1.0 })
        .collect();
    let scaled = t
        .broadcast_mul(&Tensor::new(scale, &Device::Cpu).unwrap())
        .unwrap();
    w.insert(name, scaled);
    let net = HydraClassifier::dense(&w, &config(), false).unwrap();
    let (ids, types, mask) = inputs();
    let z = net.forward(
        &ids.i(0..1).unwrap(),
        &types.i(0..1).unwrap(),
        &mask.i(0..1).unwrap(),
    );
    let logp = candle_nn::ops::log_softmax(&z.unwrap().i((0, 0)).unwrap(), 0).unwrap();
    -logp.to_vec1::<f64>().unwrap()[1]
}

#[test]
fn taylor_importance_equals_a_finite_difference_of_the_units_output_scale() {
    let net = HydraClassifier::dense(&weights(DType::F64), &config(), false).unwrap();
    let (ids, types, mask) = inputs();
    let batch = LabelledBatch {
        input_ids: ids.i(0..1).unwrap(),
        token_type_ids: types.i(0..1).unwrap(),
        attention_mask: mask.i(0..1).unwrap(),
        labels: Tensor::new(&[1u32], &Device::Cpu).unwrap(),
    };
    let imp = net.taylor_importance(&[batch]).unwrap();
    let d = 4;
    let eps = 1e-5;
    let fd = |l: usize, cols: std::ops::Range<usize>, key: &str| {
        let up = loss_with_scaled_unit(l, cols.clone(), key, 1.0 + eps);
        let down = loss_with_scaled_unit(l, cols, key, 1.0 - eps);
        ((up - down) / (2.0 * eps)).abs()
    };
    for (l, h) in [(0, 1), (1, 3)] {
        let want = fd(l, h * d..(h + 1) * d, "attention.output.dense");
        let got = imp.heads[l][h];
        assert!(
            (got - want).abs() <= 1e-6 * want.max(1e-3),
            "head {l}.{h}: {got} vs {want}"
        );
    }
    for (l, j) in [(0, 5), (1, 30)] {
        let want = fd(l, j..j + 1, "output.dense");
        let got = imp.neurons[l][j];
        assert!(
            (got - want).abs() <= 1e-6 * want.max(1e-3),
            "neuron {l}.{j}: {got} vs {want}"
        );
    }
}

#[test]
fn a_pruned_members_importance_is_indexed_by_unit_id() {
    let w = weights(DType::F64);
    let plan = plans()[1].clone();
    let pruned = HydraClassifier::new(&w, &config(), std::slice::from_ref(&plan), false).unwrap();
    // The same member as a dense model whose pruned units write nothing: its pruned
    // units' gates get no gradient, its kept units' the same as the pruned network's.
    let zeroed = HydraClassifier::dense(&pruned_weights(&w, &plan), &config(), false).unwrap();
    let (ids, types, mask) = inputs();
    let batch = LabelledBatch {
        input_ids: ids,
        token_type_ids: types,
        attention_mask: mask,
        labels: Tensor::new(&[1u32, 0], &Device::Cpu).unwrap(),
    };
    let got = pruned
        .taylor_importance(std::slice::from_ref(&batch))
        .unwrap();
    let want = zeroed.taylor_importance(&[batch]).unwrap();
    for (g, w) in [(&got.heads, &want.heads), (&got.neurons, &want.neurons)] {
        for (gl, wl) in g.iter().zip(w) {
            assert_eq!(gl.len(), wl.len());
            for (a, b) in gl.iter().zip(wl) {
                assert!((a - b).abs() <= 1e-9 + 1e-6 * b.abs(), "{a} against {b}");
            }
        }
    }
    assert_eq!(got.heads[0][0], 0.0, "head 0 of layer 0 is pruned");
    assert!(got.heads[0][1] > 0.0, "head 1 of layer 0 is kept");
}

#[test]
fn invalid_plans_and_weights_get_errors() {
    let w = weights(DType::F32);
    let mut bad = plans();
    bad[0].heads[0] = vec![2, 0];
    assert!(HydraClassifier::new(&w, &config(), &bad, false).is_err());
    let mut bad = plans();
    bad[1].neurons[1] = vec![32];
    assert!(HydraClassifier::new(&w, &config(), &bad, false).is_err());
    let mut bad = plans();
    bad[2].heads.pop();
    assert!(HydraClassifier::new(&w, &config(), &bad, false).is_err());
    assert!(HydraClassifier::new(&w, &config(), &[], false).is_err());
    let mut missing = w.clone();
    missing.remove("encoder.layer.1.output.dense.bias");
    let err = HydraClassifier::new(&missing, &config(), &plans(), false).unwrap_err();
    assert!(
        err.to_string()
            .contains("encoder.layer.1.output.dense.bias"),
        "{err}"
    );
}

fn importance() -> Importance {
    Importance {
        heads: vec![vec![4.0, 0.1, 2.0, 1.0]; 2],
        neurons: vec![(0..32).map(|j| 1.0 + j as f64).collect(); 2],
    }
}

#[test]
fn top_k_plans_are_identical_and_weighted_plans_differ_but_favour_important_units() {
    let mut config = PruneConfig {
        members: 4,
        keep_heads: 2,
        keep_neurons: 8,
        selection: Selection::TopK,
    };
    let top = plan_members(&[importance()], &config).unwrap();
    assert!(top.iter().all(|p| *p == top[0]));
    assert_eq!(top[0].heads[0], vec![0, 2]);
    assert_eq!(top[0].neurons[0], (24..32).collect::<Vec<_>>());

    config.members = 200;
    config.selection = Selection::Weighted { seed: 1 };
    let drawn = plan_members(&[importance()], &config).unwrap();
    assert_eq!(
        drawn,
        plan_members(&[importance()], &config).unwrap(),
        "seeded"
    );
    assert!(drawn.windows(2).any(|p| p[0] != p[1]), "members differ");
    let kept = |h: usize| drawn.iter().filter(|p| p.heads[0].contains(&h)).count();
    // Head 0 (score 4) is kept far more often than head 1 (score 0.1).
    assert!(kept(0) > 150 && kept(1) < 30, "{} {}", kept(0), kept(1));
    config.selection = Selection::Weighted { seed: 2 };
    assert_ne!(drawn, plan_members(&[importance()], &config).unwrap());
}

#[test]
fn invalid_prune_configs_and_scores_get_errors() {
    let ok = PruneConfig {
        members: 2,
        keep_heads: 2,
        keep_neurons: 8,
        selection: Selection::TopK,
    };
    for bad in [
        PruneConfig { members: 0, ..ok },
        PruneConfig {
            keep_heads: 0,
            ..ok
        },
        PruneConfig {
            keep_heads: 5,
            ..ok
        },
        PruneConfig {
            keep_neurons: 33,
            ..ok
        },
    ] {
        assert!(plan_members(&[importance()], &bad).is_err(), "{bad:?}");
    }
    assert!(plan_members(&[], &ok).is_err());
    let three = vec![importance(); 3];
    assert!(plan_members(&three, &ok).is_err());
    let mut nan = importance();
    nan.heads[1][2] = f64::NAN;
    assert!(plan_members(&[nan], &ok).is_err());
}
