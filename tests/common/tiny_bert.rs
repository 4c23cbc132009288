//! A tiny random BERT (BertModel's names and shapes) and inputs, for the encoder tests.
//! `benchmark/tests/bert_reference.rs` checks that these are the names and shapes
//! candle-transformers' `BertModel` reads.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use varlora::lora::TargetModules;
use varlora::models::{BertConfig, BertEncoder};

/// The config, readable both as candle-transformers' `Config` and as our `BertConfig`.
pub const TINY: &str = r#"{
    "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 32, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "max_position_embeddings": 16, "type_vocab_size": 2, "initializer_range": 0.02,
    "layer_norm_eps": 1e-12, "pad_token_id": 0, "model_type": "bert",
    "classifier_dropout": null
}"#;

/// LoRA on query, value and the feed-forward output: `output.dense` is the target a list
/// of peft suffixes cannot name without `attention.output.dense`, so it is a pattern.
pub fn query_value_output() -> TargetModules {
    TargetModules::pattern(
        r".*\.layer\.\d+\.(attention\.self\.query|attention\.self\.value|output\.dense)",
    )
    .unwrap()
}

/// The tiny config as ours.
pub fn tiny_config() -> BertConfig {
    serde_json::from_str(TINY).unwrap()
}

/// Random frozen weights with BertModel's names (layer norms randomised too): every
/// tensor the encoder reads from its base model.
pub fn frozen_weights(config: &BertConfig) -> HashMap<String, Tensor> {
    let (base, adapters) = (VarMap::new(), VarMap::new());
    let vb = |m: &VarMap| VarBuilder::from_varmap(m, DType::F32, &Device::Cpu);
    let targets = BertEncoder::query_value();
    BertEncoder::load(vb(&base), vb(&adapters), config, None, &targets).unwrap();
    let data = base.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    // Seeded draws in place of candle's unseeded initialisers, at their scales:
    // embeddings N(0, 1), weights N(0, 1 / fan_in), biases N(0, 0.02^2).
    names
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let dims = data[k].dims().to_vec();
            let seed = 100 + i as u64;
            let t = if k.contains("LayerNorm") {
                (super::randn(seed, 0.2, &dims, DType::F32)
                    + if k.ends_with("weight") { 1.0 } else { 0.0 })
                .unwrap()
            } else if k.contains("embeddings") {
                super::randn(seed, 1.0, &dims, DType::F32)
            } else if dims.len() == 2 {
                super::randn(seed, 1.0 / (dims[1] as f64).sqrt(), &dims, DType::F32)
            } else {
                super::randn(seed, 0.02, &dims, DType::F32)
            };
            (k.clone(), t)
        })
        .collect()
}

/// Two sentences, the first padded.
pub fn inputs() -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 7, 22, 9, 0, 0], [3, 41, 5, 17, 8, 2]], &dev).unwrap();
    let types = Tensor::new(&[[0u32, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], &dev).unwrap();
    (ids, types, mask)
}

/// The Frobenius norm.
pub fn frobenius(t: &Tensor) -> f32 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .sqrt()
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// `|a - b| / |b|` in the Frobenius norm.
pub fn rel_error(a: &Tensor, b: &Tensor) -> f32 {
    frobenius(&(a - b).unwrap()) / frobenius(b)
}
