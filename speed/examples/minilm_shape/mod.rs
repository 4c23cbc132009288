//! An encoder of all-MiniLM-L6-v2's shape with random frozen weights, for the cost
//! examples and the benches (which include this file by path): no model download.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use varlora::models::{AdapterSpec, BertClassifier, BertConfig, BertEncoder};

/// all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads), with a vocabulary of 1000.
pub fn config() -> BertConfig {
    BertConfig {
        vocab_size: 1000,
        hidden_size: 384,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        hidden_act: "gelu".into(),
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
    }
}

/// Random frozen weights under the Hugging Face names: created as vars by loading once,
/// then detached, as weights read from a file are (so the fused kernels take them).
pub fn frozen_weights(
    config: &BertConfig,
    dev: &Device,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let varmap = VarMap::new();
    BertEncoder::load(
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, dev),
        config,
        None,
        &BertEncoder::query_value(),
    )
    .map_err(candle_core::Error::wrap)?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::msg("poisoned"))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect())
}

/// A two-class classifier of this shape on `frozen` (from [`frozen_weights`]), with
/// `spec` on query and value, its adapters and head in `adapters`, initialised from seed 0.
#[allow(dead_code)] // the benches and the step cost example use it
pub fn classifier(
    spec: &AdapterSpec,
    frozen: &HashMap<String, Tensor>,
    adapters: &VarMap,
    dev: &Device,
) -> candle_core::Result<BertClassifier> {
    let encoder = BertEncoder::load(
        VarBuilder::from_tensors(frozen.clone(), DType::F32, dev),
        VarBuilder::from_varmap(adapters, DType::F32, dev),
        &config(),
        Some(spec),
        &BertEncoder::query_value(),
    )
    .map_err(candle_core::Error::wrap)?;
    let head = VarBuilder::from_varmap(adapters, DType::F32, dev);
    let model = BertClassifier::new(encoder, 2, head).map_err(candle_core::Error::wrap)?;
    model.init(0).map_err(candle_core::Error::wrap)?;
    Ok(model)
}

/// A batch of `batch` sentences of 8 to `tokens` tokens, padded to `tokens`: ids,
/// token types and mask `(batch, tokens)`. At 48 tokens about 40% is padding (batches of
/// 32 Pang & Lee sentences average 48%).
#[allow(dead_code)] // the benches use it; the cost example feeds unpadded batches
pub fn padded_batch(
    batch: usize,
    tokens: usize,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let ids: Vec<u32> = (0..batch * tokens).map(|i| (i * 7 % 1000) as u32).collect();
    let ids = Tensor::from_vec(ids, (batch, tokens), dev)?;
    let types = ids.zeros_like()?;
    let mask: Vec<u32> = (0..batch * tokens)
        .map(|i| u32::from(i % tokens < 8 + (i / tokens * 23) % 41))
        .collect();
    let mask = Tensor::from_vec(mask, (batch, tokens), dev)?;
    Ok((ids, types, mask))
}
