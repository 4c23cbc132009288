//! The tokenizer a GGUF file describes in its metadata, as a `tokenizers` tokenizer.
//!
//! The vocabulary and merges are the file's (`tokenizer.ggml.tokens`, `.merges`); the
//! pre-tokenizer is chosen by `tokenizer.ggml.pre`, which candle's own `TokenizerFromGguf`
//! ignores (it also adds a prefix space that SmolLM2's `add_space_prefix: false` rules
//! out). Only what is checked against transformers and the `tokenizers` package is
//! supported: byte-level BPE (`gpt2`) with one of these pre-tokenizers:
//!
//! - `smollm` (SmolLM2): every digit on its own, then byte-level splitting without a
//!   prefix space. SmolLM2's vocabulary has no token that holds a digit beside another
//!   character, so for it the digit step changes no id; it is kept because it is the
//!   model's definition.
//! - `qwen2` (Qwen2, Qwen2.5, Qwen3) and `llama-bpe` (Llama 3): the model's split
//!   expression (digits one by one for Qwen, in threes for Llama 3), then byte-level
//!   encoding of each piece.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::json;
use tokenizers::Tokenizer;

use super::gguf::{file_error, open, Metadata};
use crate::Result;

/// The tokenizer of the GGUF file at `path`: its vocabulary and merges, its control
/// tokens (llama.cpp's token type 3) as special tokens that are never split, and the
/// pre-tokenizer its `tokenizer.ggml.pre` names. It adds no BOS or EOS token. A file
/// whose tokenizer is another kind, whose pre-tokenizer is not supported, or that asks for
/// a BOS token to be added, is an [`crate::Error::File`] that says which.
///
/// ```no_run
/// let path = "assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
/// let tokenizer = varlora::models::gguf_tokenizer(path.as_ref())?;
/// let ids = tokenizer.encode("384,400 km", false).unwrap().get_ids().to_vec();
/// assert_eq!(&ids[..3], &[35, 40, 36]); // "3", "8", "4": one token a digit
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn gguf_tokenizer(path: &Path) -> Result<Tokenizer> {
    let fail = |problem: String| file_error(path, problem);
    let (_, content) = open(path)?;
    let meta = Metadata {
        map: &content.metadata,
    };
    let kind = meta.string("tokenizer.ggml.model").map_err(&fail)?;
    if kind != "gpt2" {
        return Err(fail(format!(
            "tokenizer `{kind}` is not supported: only byte-level BPE (gpt2)"
        )));
    }
    let pre = meta.string("tokenizer.ggml.pre").map_err(&fail)?;
    let pre_tokenizer = pre_tokenizer(&pre).ok_or_else(|| {
        fail(format!(
            "pre-tokenizer `{pre}` is not supported: smollm, qwen2 or llama-bpe"
        ))
    })?;
    if matches!(
        meta.map.get("tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true))
    ) {
        return Err(fail(
            "the file asks for a BOS token before every text, which this tokenizer does not \
             add"
            .into(),
        ));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens").map_err(&fail)?;
    let merges = meta.strings("tokenizer.ggml.merges").map_err(&fail)?;
    let types = match meta.map.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| fail(e.to_string()))?
            .iter()
            .map(|t| t.to_i32().map_err(|e| fail(e.to_string())))
            .collect::<Result<Vec<i32>>>()?,
        None => vec![1; tokens.len()],
    };
    let control: Vec<_> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == 3)
        .map(|(id, (t, _))| {
            json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), json!(id)))
        .collect();
    let spec = json!({
        "version": "1.0",
        "added_tokens": control,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| fail(format!("its tokenizer does not build: {e}")))
}

/// The split expressions of Qwen2's and Llama 3's tokenizers, as their Hugging Face
/// tokenizers (and llama.cpp) define them: contractions, letters with one leading
/// non-letter, digits (one by one, or up to three), punctuation runs, newlines and spaces.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizers` pre-tokenizer that `tokenizer.ggml.pre` names, if supported.
fn pre_tokenizer(name: &str) -> Option<serde_json::Value> {
    let split = |pattern: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}
        ]})
    };
    match name {
        "smollm" => Some(json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": true}
        ]})),
        "qwen2" => Some(split(QWEN2_SPLIT)),
        "llama-bpe" => Some(split(LLAMA3_SPLIT)),
        _ => None,
    }
}
