//! The adapter-carrying BERT encoder against candle-transformers' `BertModel`: the same
//! hidden states from the same weights, on the tiny random BERT the core crate's tests use
//! (so its names and shapes are `BertModel`'s) and on the real all-MiniLM-L6-v2. It lives
//! here so that the core crate's builds need not compile candle-transformers.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::tiny_bert::{frozen_weights, inputs, rel_error, TINY};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};
use varlora::lora::{AdapterBuilder, BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{AdapterSpec, BertConfig, BertEncoder};

/// BertModel's hidden states at the real tokens, zero at padding (as ours are).
fn at_tokens(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let mask = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    hidden.broadcast_mul(&mask).unwrap()
}

#[test]
fn matches_candle_transformers_bert_with_inert_adapters() {
    let theirs_config: Config = serde_json::from_str(TINY).unwrap();
    let ours_config: BertConfig = serde_json::from_str(TINY).unwrap();
    let weights = frozen_weights(&ours_config);
    let dev = Device::Cpu;
    let reference = BertModel::load(
        VarBuilder::from_tensors(weights.clone(), DType::F32, &dev),
        &theirs_config,
    )
    .unwrap();
    let (ids, types, mask) = inputs();
    let expected = at_tokens(
        &reference.forward(&ids, &types, Some(&mask)).unwrap(),
        &mask,
    );
    let specs = [
        None,
        Some(AdapterSpec::Lora(LoraConfig::new(4))),
        Some(AdapterSpec::Blob(
            BlobConfig::new(LoraConfig::new(4)),
            BlobSampler::new(0),
        )),
    ];
    for spec in specs {
        let varmap = VarMap::new();
        let base = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
        let adapters = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let encoder = BertEncoder::load(
            base,
            adapters,
            &ours_config,
            spec.as_ref().map(|s| s as &dyn AdapterBuilder),
            &BertEncoder::query_value(),
        )
        .unwrap();
        if let Some(AdapterSpec::Blob(_, sampler)) = &spec {
            // With B = 0 even the sampled BLoB update is zero; check at the mean too.
            sampler.set_sampling(false).unwrap();
        }
        let ours = encoder.forward_t(&ids, &types, Some(&mask), false).unwrap();
        let err = rel_error(&ours, &expected);
        assert!(err < 1e-5, "{spec:?}: relative error {err}");
        // Padding is skipped: its hidden states are exactly zero.
        assert_eq!(
            ours.i((0, 4..))
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.
        );
    }
}

/// The real all-MiniLM-L6-v2 against BertModel, from `assets/all-minilm-l6-v2/`. Ignored
/// by a plain `cargo test`, so that a missing model shows as a skip rather than a pass;
/// `.ci/run` runs it with `--ignored` when the files are there, and says so when not.
#[test]
#[ignore = "needs the real all-MiniLM-L6-v2: bash scripts/fetch-assets.sh, then \
            cargo test -p varlora-benchmark --test bert_reference -- --ignored"]
fn minilm_matches_bert_model() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/all-minilm-l6-v2");
    let (weights, config_path) = (dir.join("model.safetensors"), dir.join("config.json"));
    assert!(
        weights.exists() && config_path.exists(),
        "no model files in {}: run bash scripts/fetch-assets.sh",
        dir.display()
    );
    let dev = Device::Cpu;
    let json = std::fs::read_to_string(config_path).unwrap();
    let theirs_config: Config = serde_json::from_str(&json).unwrap();
    let config: BertConfig = serde_json::from_str(&json).unwrap();
    // SAFETY: the file is not modified while mapped.
    let vb =
        || unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &dev).unwrap() };
    let reference = BertModel::load(vb(), &theirs_config).unwrap();
    let varmap = VarMap::new();
    let encoder = BertEncoder::load(
        vb(),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        &config,
        Some(&AdapterSpec::Lora(LoraConfig::new(8))),
        &BertEncoder::query_value(),
    )
    .unwrap();
    let (ids, types, mask) = inputs();
    let expected = at_tokens(
        &reference.forward(&ids, &types, Some(&mask)).unwrap(),
        &mask,
    );
    let ours = encoder.forward_t(&ids, &types, Some(&mask), false).unwrap();
    let err = rel_error(&ours, &expected);
    eprintln!("all-MiniLM-L6-v2 against BertModel: relative error {err:e}");
    assert!(err < 1e-4, "relative error {err}");
}
