//! The fields of a Llama-family `config.json` (Llama 2/3, SmolLM2, Qwen2, Qwen3) that the
//! decoder uses.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A Llama-family decoder's configuration, read from Hugging Face's `config.json`.
///
/// `model_type` picks the architecture's variations: `qwen2` adds biases to the query,
/// key and value projections, `qwen3` a per-head RMSNorm on queries and keys. RoPE's base
/// is `rope_theta`, at the top level or (transformers 5) under `rope_parameters`.
///
/// ```
/// let json = r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
///     "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
///     "num_key_value_heads": 3, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
///     "max_position_embeddings": 8192, "tie_word_embeddings": true}"#;
/// let config: varlora::models::LlamaConfig = serde_json::from_str(json)?;
/// config.validate()?;
/// assert_eq!(config.head_dim(), 64);
/// assert_eq!(config.rope_base(), 1e5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `qwen2` or `qwen3`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key and value heads (grouped-query attention); the query heads' count by default.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Width of each head; `hidden_size / num_attention_heads` by default.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm's epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE's base (older configs).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE's settings (transformers 5); only the default RoPE is supported.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// The longest sequence the model takes.
    pub max_position_embeddings: usize,
    /// Whether the output matrix is the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on the query, key, value and output projections (Llama's option).
    #[serde(default)]
    pub attention_bias: bool,
    /// The MLP's activation; only `silu` (SwiGLU) is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

/// transformers 5's `rope_parameters`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// RoPE's base.
    pub rope_theta: f64,
    /// `default`; scaled variants are not supported.
    #[serde(default = "default_rope_type")]
    pub rope_type: String,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_rope_type() -> String {
    "default".into()
}

impl LlamaConfig {
    /// The width of each attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The key and value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// RoPE's base: `rope_parameters.rope_theta`, else `rope_theta`, else Llama's 10000.
    pub fn rope_base(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .map(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    /// Whether the query, key and value projections have biases (Qwen2, or
    /// `attention_bias`).
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    /// Whether the output projection has a bias (`attention_bias`; Qwen2's has none).
    pub fn output_bias(&self) -> bool {
        self.attention_bias && self.model_type != "qwen2"
    }

    /// Whether queries and keys get a per-head RMSNorm (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.model_type == "qwen3"
    }

    /// The number of the base model's weights: what its memory is in units of its dtype
    /// (134,515,008 for SmolLM2-135M).
    ///
    /// ```
    /// # let json = r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
    /// #     "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    /// #     "num_key_value_heads": 3, "max_position_embeddings": 8192,
    /// #     "tie_word_embeddings": true}"#;
    /// let smollm2: varlora::models::LlamaConfig = serde_json::from_str(json)?;
    /// assert_eq!(smollm2.parameter_count(), 134_515_008);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn parameter_count(&self) -> u64 {
        let (h, hd, wide) = (self.hidden_size, self.head_dim(), self.intermediate_size);
        let (q_out, kv_out) = (self.num_attention_heads * hd, self.kv_heads() * hd);
        let bias = |on: bool, n: usize| if on { n } else { 0 };
        let attention = h * (q_out + 2 * kv_out)
            + bias(self.qkv_bias(), q_out + 2 * kv_out)
            + q_out * h
            + bias(self.output_bias(), h)
            + bias(self.qk_norm(), 2 * hd);
        let layer = attention + 3 * h * wide + 2 * h;
        let embeddings = self.vocab_size * h * if self.tie_word_embeddings { 1 } else { 2 };
        (self.num_hidden_layers * layer + embeddings + h) as u64
    }

    /// Checks that the configuration describes a model this crate runs, naming the
    /// field that does not.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: String, expected| {
            Err(Error::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if !matches!(self.model_type.as_str(), "llama" | "qwen2" | "qwen3") {
            return bad(
                "model_type",
                self.model_type.clone(),
                "llama, qwen2 or qwen3",
            );
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, value) in positive {
            if value == 0 {
                return bad(field, "0".into(), "at least 1");
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(
                "num_key_value_heads",
                self.kv_heads().to_string(),
                "a divisor of num_attention_heads",
            );
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(
                "hidden_size",
                self.hidden_size.to_string(),
                "a multiple of num_attention_heads, or a head_dim given",
            );
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return bad(
                "head_dim",
                self.head_dim().to_string(),
                "even and positive (RoPE pairs)",
            );
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return bad("rms_norm_eps", self.rms_norm_eps.to_string(), "positive");
        }
        if !(self.rope_base() > 1.0 && self.rope_base().is_finite()) {
            return bad("rope_theta", self.rope_base().to_string(), "above 1");
        }
        if let Some(r) = &self.rope_parameters {
            if r.rope_type != "default" {
                return bad(
                    "rope_parameters.rope_type",
                    r.rope_type.clone(),
                    "default (scaled RoPE is not supported)",
                );
            }
        }
        if self.hidden_act != "silu" {
            return bad("hidden_act", self.hidden_act.clone(), "silu");
        }
        Ok(())
    }
}
