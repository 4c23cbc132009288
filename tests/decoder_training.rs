//! Every posterior of the crate trains the decoder: a few steps of AdamW (plain LoRA), MC
//! dropout, BLoB, IVON and LoRA-Ensemble on the tiny Llama bring the lettered head's loss
//! on a fixed batch well down, each at its point estimate (the mean; every member).

mod common;

use candle_core::{DType, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use common::tiny_decoder::{expected, load};
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig, McDropout};
use varlora::models::{AdapterSpec, AnswerTokens, LlamaDecoder};
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig};
use varlora::predict::Posterior;

const STEPS: usize = 40;
const TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// The lettered head's cross-entropy per member on the recorded batch, answers 1 and 3 of
/// four answer tokens: `(members,)`.
fn losses(model: &LlamaDecoder, train: bool) -> Tensor {
    let (ids, mask, _) = expected("llama");
    let answers = AnswerTokens::new(vec![5, 17, 3, 39]).unwrap();
    let logits = model.answer_logits(&ids, &mask, &answers, train).unwrap();
    let m = model.members();
    let log_p = candle_nn::ops::log_softmax(&logits.reshape((m, 2, 4)).unwrap(), 2).unwrap();
    let picked = Tensor::cat(
        &[
            log_p.narrow(1, 0, 1).unwrap().narrow(2, 1, 1).unwrap(),
            log_p.narrow(1, 1, 1).unwrap().narrow(2, 3, 1).unwrap(),
        ],
        1,
    )
    .unwrap();
    picked
        .neg()
        .unwrap()
        .reshape((m, 2))
        .unwrap()
        .mean(1)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_vec1().unwrap()
}

fn adamw(varmap: &VarMap) -> AdamW {
    let params = ParamsAdamW {
        lr: 2e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    AdamW::new(varmap.all_vars(), params).unwrap()
}

/// Trains `model` for [`STEPS`] steps of `step` and checks that every member's loss, with
/// `eval` giving the point estimate, fell to under half of where it started.
fn assert_learns(
    what: &str,
    model: &LlamaDecoder,
    mut step: impl FnMut(&Tensor),
    eval: impl Fn(&dyn Fn() -> Tensor) -> Tensor,
) {
    let before = values(&eval(&|| losses(model, false)));
    for _ in 0..STEPS {
        step(&losses(model, true).mean(0).unwrap());
    }
    let after = values(&eval(&|| losses(model, false)));
    eprintln!("{what}: loss {before:?} -> {after:?}");
    for (b, a) in before.iter().zip(&after) {
        assert!(a < &(0.5 * b), "{what}: loss {b} -> {a}");
    }
}

#[test]
fn adamw_and_mc_dropout_train_the_decoders_lora() {
    let specs = [
        ("AdamW", AdapterSpec::Lora(LoraConfig::new(4).alpha(8.0))),
        (
            "MC dropout",
            AdapterSpec::McDropout(
                LoraConfig::new(4).alpha(8.0).dropout(0.1),
                McDropout::new(1),
            ),
        ),
    ];
    for (what, spec) in specs {
        let (model, varmap) = load("llama", DType::F32, Some(&spec), &TARGETS);
        let mut opt = adamw(&varmap);
        assert_learns(
            what,
            &model,
            |loss| opt.backward_step(loss).unwrap(),
            |f| f(),
        );
    }
}

#[test]
fn lora_ensemble_trains_every_member() {
    let spec = AdapterSpec::Ensemble {
        members: 3,
        rank: 4,
    };
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &TARGETS);
    let mut opt = adamw(&varmap);
    assert_learns(
        "LoRA-Ensemble",
        &model,
        |loss| opt.backward_step(loss).unwrap(),
        |f| f(),
    );
}

#[test]
fn blob_trains_the_decoder() {
    let sampler = BlobSampler::new(2);
    let spec = AdapterSpec::Blob(
        BlobConfig::new(LoraConfig::new(4).alpha(8.0)),
        sampler.clone(),
    );
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &TARGETS);
    let config = BlobOptimConfig::new(2, 2).lr(2e-2);
    let mut opt = Blob::new(varmap.all_vars(), model.blob_layers().unwrap(), config).unwrap();
    let point = |f: &dyn Fn() -> Tensor| sampler.clone().with_point_estimate(|| Ok(f())).unwrap();
    assert_learns(
        "BLoB",
        &model,
        |loss| opt.backward_step(loss).unwrap(),
        point,
    );
}

#[test]
fn ivon_trains_the_decoder() {
    let spec = AdapterSpec::Lora(LoraConfig::new(4).alpha(8.0));
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &TARGETS);
    let mut ivon = Ivon::from_varmap(&varmap, IvonConfig::new(0.1, 1e4)).unwrap();
    let mut step = |loss: &Tensor| ivon.backward_step(loss).unwrap();
    let before = values(&losses(&model, false));
    for _ in 0..STEPS {
        step(&losses(&model, true).mean(0).unwrap());
    }
    let after = values(&ivon.with_mean(|| Ok(losses(&model, false))).unwrap());
    eprintln!("IVON: loss {before:?} -> {after:?}");
    assert!(
        after[0] < 0.5 * before[0],
        "IVON: loss {before:?} -> {after:?}"
    );
}

/// A NaN in the loss reaches the adapters' gradients: IVON and BLoB refuse the step with
/// an error that names it, and the adapters keep their values.
#[test]
fn a_nan_gradient_is_refused_and_changes_nothing() {
    let snapshot = |varmap: &VarMap| -> Vec<Vec<f32>> {
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<_> = data.keys().cloned().collect();
        names.sort();
        names
            .iter()
            .map(|n| {
                data[n]
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect()
    };
    let nan_loss =
        |model: &LlamaDecoder| (losses(model, true).mean(0).unwrap() * f64::NAN).unwrap();

    let spec = AdapterSpec::Lora(LoraConfig::new(4).alpha(8.0));
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &TARGETS);
    let mut ivon = Ivon::from_varmap(&varmap, IvonConfig::new(0.1, 1e4)).unwrap();
    let before = snapshot(&varmap);
    let err = ivon.backward_step(&nan_loss(&model)).unwrap_err();
    assert!(err.to_string().contains("NaN or Inf"), "{err}");
    assert_eq!(snapshot(&varmap), before, "IVON changed the adapters");

    let sampler = BlobSampler::new(2);
    let spec = AdapterSpec::Blob(BlobConfig::new(LoraConfig::new(4).alpha(8.0)), sampler);
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &TARGETS);
    let config = BlobOptimConfig::new(2, 2).lr(2e-2);
    let mut blob = Blob::new(varmap.all_vars(), model.blob_layers().unwrap(), config).unwrap();
    let before = snapshot(&varmap);
    let err = blob.backward_step(&nan_loss(&model)).unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
    assert_eq!(snapshot(&varmap), before, "BLoB changed the adapters");
}
