//! LoRA-Ensemble's members and IVON's stacked samples on the decoder. Both ride in its
//! batch dimension, member-major; each member (or sample) must compute what a single LoRA
//! model with its weights computes, through the logits and both multiple-choice heads.

mod common;

use candle_core::{DType, Tensor};
use common::tiny_decoder::{expected, load};
use common::{max_abs, max_abs_diff};
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{AdapterSpec, AnswerTokens, LlamaDecoder};
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{predictive, predictive_stacked, Predictive};

const TARGETS: [&str; 2] = ["q_proj", "v_proj"];
/// Members against single models differ by the batched matmuls' summation order: f32
/// rounding, relative to the largest value.
const TOL: f32 = 1e-5;

/// The three outputs whose member blocks are compared: every logit, the lettered head's
/// and the cloze head's log-likelihoods.
fn outputs(model: &LlamaDecoder) -> [Tensor; 3] {
    let (ids, mask, _) = expected("llama");
    let answers = AnswerTokens::new(vec![5, 17, 3, 39]).unwrap();
    [
        model.logits(&ids, &mask, false).unwrap(),
        model.answer_logits(&ids, &mask, &answers, false).unwrap(),
        model
            .choice_log_likelihoods(&ids, &mask, &[2, 3], false)
            .unwrap(),
    ]
}

fn assert_close(ours: &Tensor, single: &Tensor, what: &str) {
    let (ours, single) = (&f32_of(ours), &f32_of(single));
    let err = max_abs_diff(ours, single) / max_abs(single);
    assert!(err < TOL, "{what}: relative difference {err:e}");
}

fn f32_of(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

#[test]
fn ensemble_members_equal_separate_lora_models() {
    let (members, rank) = (3, 2);
    let spec = AdapterSpec::Ensemble { members, rank };
    let (ensemble, ens_vars) = load("llama", DType::F32, Some(&spec), &TARGETS);
    assert_eq!(ensemble.members(), members);
    common::randomize_lora_b(&ens_vars, 40, 0.3, DType::F32);
    let ens = outputs(&ensemble);
    assert_eq!(ens[0].dim(0).unwrap(), members * 2);
    let ens_data = ens_vars.data().lock().unwrap();
    let mut member_outputs = Vec::new();
    for m in 0..members {
        let lora = AdapterSpec::Lora(LoraConfig::new(rank).alpha(rank as f64));
        let (single, vars) = load("llama", DType::F32, Some(&lora), &TARGETS);
        for (name, var) in vars.data().lock().unwrap().iter() {
            let member = ens_data[name].as_tensor().get(m).unwrap();
            var.set(&member.reshape(var.shape()).unwrap()).unwrap();
        }
        let one = outputs(&single);
        for (what, (e, s)) in ["logits", "lettered", "cloze"]
            .iter()
            .zip(ens.iter().zip(&one))
        {
            assert_close(
                &e.narrow(0, 2 * m, 2).unwrap(),
                s,
                &format!("member {m} {what}"),
            );
        }
        member_outputs.push(one);
    }
    // The members disagree, or an ensemble that ran one member three times would pass.
    let spread = max_abs_diff(&member_outputs[0][1], &member_outputs[1][1]);
    assert!(spread > 1e-3, "members 0 and 1 agree ({spread:e})");
}

/// IVON's posterior, stacked: one forward pass over 2 samples at a time gives the
/// predictive that sampling one at a time gives, through the lettered head.
#[test]
fn stacked_ivon_samples_give_the_one_at_a_time_predictive() {
    let spec = AdapterSpec::Lora(LoraConfig::new(4).alpha(8.0));
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &TARGETS);
    common::randomize_lora_b(&varmap, 40, 0.3, DType::F32);
    let mut ivon = Ivon::from_varmap(&varmap, IvonConfig::new(0.03, 1e3)).unwrap();
    let (ids, mask, _) = expected("llama");
    let answers = AnswerTokens::new(vec![5, 17, 3, 39]).unwrap();
    let samples = 5;
    let reference = predictive(&mut ivon, samples, true, || {
        model
            .answer_logits(&ids, &mask, &answers, false)
            .map_err(candle_core::Error::wrap)
    })
    .unwrap();
    let posterior = ivon.posterior().unwrap();
    let stacked = predictive_stacked(samples, 2, true, |ks| {
        let weights = posterior.stacked_samples(ks.clone())?;
        let sampled = model.with_stacked_weights(&weights, ks.len())?;
        let logits = sampled.answer_logits(&ids, &mask, &answers, false)?;
        Ok(logits.reshape((ks.len(), 2, answers.ids().len()))?)
    })
    .unwrap();
    let e: Vec<f64> = reference.epistemic.to_vec1().unwrap();
    assert!(e.iter().all(|&x| x > 1e-4), "the samples agree: {e:?}");
    let pick = |p: &Predictive| {
        [
            p.probs.clone(),
            p.epistemic.clone(),
            p.samples.clone().unwrap(),
        ]
    };
    for (what, (a, b)) in ["probs", "epistemic", "samples"]
        .iter()
        .zip(pick(&stacked).iter().zip(&pick(&reference)))
    {
        assert_close(a, b, what);
    }
}

#[test]
fn what_cannot_be_stacked_on_the_decoder_is_an_error() {
    let blob = AdapterSpec::Blob(BlobConfig::new(LoraConfig::new(2)), BlobSampler::new(0));
    let (model, _) = load("llama", DType::F32, Some(&blob), &TARGETS);
    let err = model
        .with_stacked_weights(&Default::default(), 2)
        .unwrap_err();
    assert!(err.to_string().contains("sample by sample"), "{err}");
    let ensemble = AdapterSpec::Ensemble {
        members: 2,
        rank: 2,
    };
    let (model, _) = load("llama", DType::F32, Some(&ensemble), &TARGETS);
    let err = model
        .with_stacked_weights(&Default::default(), 2)
        .unwrap_err();
    assert!(err.to_string().contains("not an ensemble"), "{err}");
    let lora = AdapterSpec::Lora(LoraConfig::new(2));
    let (model, _) = load("llama", DType::F32, Some(&lora), &TARGETS);
    let stray = [(
        "model.layers.9.self_attn.q_proj.lora_a".to_string(),
        Tensor::zeros((2, 2, 4), DType::F32, &candle_core::Device::Cpu).unwrap(),
    )];
    let err = model
        .with_stacked_weights(&stray.into_iter().collect(), 2)
        .unwrap_err();
    assert!(err.to_string().contains("model.layers.9"), "{err}");
}
