//! What the MiniLM programs (finetune, predict) share: the tokenizer and its batches.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{Encoding, PaddingParams, Tokenizer, TruncationParams};

/// The model's tokenizer from `model_dir/tokenizer.json`, truncating to `max_tokens` and
/// padding each batch to its longest sentence.
pub fn tokenizer(
    model_dir: &Path,
    max_tokens: usize,
) -> Result<Tokenizer, Box<dyn std::error::Error>> {
    let path = model_dir.join("tokenizer.json");
    let mut tokenizer =
        Tokenizer::from_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_tokens,
            ..Default::default()
        }))
        .map_err(|e| e.to_string())?;
    tokenizer.with_padding(Some(PaddingParams::default()));
    Ok(tokenizer)
}

/// Token ids, token type ids and attention mask of `texts`, each `(texts, tokens)`.
pub fn encode(
    tokenizer: &Tokenizer,
    texts: Vec<&str>,
    dev: &Device,
) -> Result<(Tensor, Tensor, Tensor), Box<dyn std::error::Error>> {
    let enc = tokenizer
        .encode_batch(texts, true)
        .map_err(|e| e.to_string())?;
    let field = |f: &dyn Fn(&Encoding) -> &[u32]| -> candle_core::Result<Tensor> {
        let rows: Vec<Tensor> = enc
            .iter()
            .map(|e| Tensor::new(f(e), dev))
            .collect::<candle_core::Result<_>>()?;
        Tensor::stack(&rows, 0)
    };
    Ok((
        field(&|e| e.get_ids())?,
        field(&|e| e.get_type_ids())?,
        field(&|e| e.get_attention_mask())?,
    ))
}
