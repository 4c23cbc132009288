//! Reading a Llama-family GGUF file (llama.cpp's format: the `llama`, `qwen2` and `qwen3`
//! architectures) into the decoder's configuration and f32 weights under the Hugging
//! Face names, dequantized at load (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, F16, BF16
//! and F32, through candle's `gguf_file`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::memory::check_memory;
use crate::{Error, Result};

/// The configuration and the dequantized f32 weights of a GGUF decoder, named as
/// transformers names them, ready for `VarBuilder::from_tensors` and
/// [`super::LlamaDecoder::load`].
///
/// ```no_run
/// use candle_core::{DType, Device};
/// use candle_nn::{VarBuilder, VarMap};
/// use varlora::lora::TargetModules;
/// use varlora::models::{GgufDecoder, LlamaDecoder};
///
/// let dev = Device::Cpu;
/// let gguf = GgufDecoder::read("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &dev)?;
/// let varmap = VarMap::new();
/// let model = LlamaDecoder::load(
///     VarBuilder::from_tensors(gguf.tensors, DType::F32, &dev),
///     VarBuilder::from_varmap(&varmap, DType::F32, &dev),
///     &gguf.config,
///     None,
///     &TargetModules::new(["q_proj", "v_proj"]),
/// )?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct GgufDecoder {
    /// The configuration, from the file's metadata.
    pub config: LlamaConfig,
    /// Every tensor, dequantized (to f32, or the dtype [`Self::read_as`] was given), under
    /// its Hugging Face name.
    pub tensors: HashMap<String, Tensor>,
}

/// GGUF's per-block tensor names and transformers' for them.
const BLOCK_NAMES: [(&str, &str); 14] = [
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

impl GgufDecoder {
    /// Reads `path`, dequantized to f32. A file that is not GGUF, is truncated, holds a
    /// quantization candle cannot read or a tensor this mapping does not know, or
    /// describes another architecture is an [`Error::File`] that says which.
    pub fn read(path: &Path, dev: &Device) -> Result<Self> {
        Self::read_as(path, DType::F32, dev)
    }

    /// Reads `path`, each tensor dequantized to f32 and stored in `dtype`: `BF16` halves
    /// the base's memory (the decoder computes in f32 and widens the weights as it uses
    /// them). On the CPU, a model that will not fit the free memory in `dtype` is an
    /// [`Error::OutOfMemory`] before anything is read.
    pub fn read_as(path: &Path, dtype: DType, dev: &Device) -> Result<Self> {
        let fail = |problem: String| file_error(path, problem);
        let (mut file, content) = open(path)?;
        let meta = Metadata {
            map: &content.metadata,
        };
        let arch = meta.string("general.architecture").map_err(&fail)?;
        if !matches!(arch.as_str(), "llama" | "qwen2" | "qwen3") {
            return Err(fail(format!(
                "architecture `{arch}` is not supported: llama, qwen2 or qwen3"
            )));
        }
        let config = meta.config(&arch).map_err(&fail)?;
        if dev.is_cpu() {
            let elements: usize = content
                .tensor_infos
                .values()
                .map(|i| i.shape.elem_count())
                .sum();
            check_memory((elements * dtype.size_in_bytes()) as u64)?;
        }
        let mut tensors = HashMap::new();
        for (name, info) in &content.tensor_infos {
            let hf = hf_name(name).ok_or_else(|| fail(format!("unknown tensor `{name}`")))?;
            let q = info
                .read(&mut file, content.tensor_data_offset, dev)
                .map_err(|e| fail(format!("tensor `{name}` ({:?}): {e}", info.ggml_dtype)))?;
            let w = q.dequantize(dev)?;
            // llama.cpp interleaves each head's query and key rows for its RoPE layout
            // when it converts a Llama model; transformers pairs each half with the other.
            let w = match (arch.as_str(), name.rsplit('.').nth(1)) {
                ("llama", Some("attn_q")) => unpermute(&w, config.num_attention_heads)?,
                ("llama", Some("attn_k")) => unpermute(&w, config.kv_heads())?,
                _ => w,
            };
            tensors.insert(hf, w.to_dtype(dtype)?);
        }
        let mut config = config;
        config.tie_word_embeddings = !tensors.contains_key("lm_head.weight");
        config.validate().map_err(|e| fail(e.to_string()))?;
        Ok(Self { config, tensors })
    }
}

/// An [`Error::File`] about the GGUF file at `path`.
pub(super) fn file_error(path: &Path, problem: String) -> Error {
    Error::File {
        path: path.to_path_buf(),
        problem,
    }
}

/// Opens the GGUF file at `path` and reads its header: the open file (for the tensors)
/// and its metadata and tensor table.
pub(super) fn open(path: &Path) -> Result<(std::fs::File, Content)> {
    let mut file =
        std::fs::File::open(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
    let content = Content::read(&mut file)
        .map_err(|e| file_error(path, format!("not a readable GGUF file: {e}")))?;
    Ok((file, content))
}

/// transformers' name of GGUF tensor `name`, if it is one of a decoder's.
fn hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    BLOCK_NAMES
        .iter()
        .find(|(g, _)| *g == tail)
        .map(|(_, hf)| format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's permutation of a `(heads * head_dim, in)` query or key weight: its
/// rows of each head are in (pair, half) order, transformers' in (half, pair).
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))
}

/// A GGUF file's metadata, read by key, each misfit a message naming the key.
pub(super) struct Metadata<'a> {
    pub(super) map: &'a HashMap<String, Value>,
}

impl Metadata<'_> {
    pub(super) fn get(&self, key: &str) -> std::result::Result<&Value, String> {
        self.map
            .get(key)
            .ok_or_else(|| format!("no metadata `{key}`"))
    }

    pub(super) fn string(&self, key: &str) -> std::result::Result<String, String> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|e| format!("`{key}`: {e}"))
    }

    /// An array of strings.
    pub(super) fn strings(&self, key: &str) -> std::result::Result<Vec<String>, String> {
        let values = self
            .get(key)?
            .to_vec()
            .map_err(|e| format!("`{key}`: {e}"))?;
        values
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| format!("`{key}`: {e}")))
            .collect()
    }

    fn usize(&self, key: &str) -> std::result::Result<usize, String> {
        let v = self.get(key)?;
        let n = match v {
            Value::U8(x) => u64::from(*x),
            Value::U16(x) => u64::from(*x),
            Value::U32(x) => u64::from(*x),
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => return Err(format!("`{key}` is {other:?}, not a count")),
        };
        usize::try_from(n).map_err(|_| format!("`{key}` = {n} is too large"))
    }

    fn f64(&self, key: &str) -> std::result::Result<f64, String> {
        match self.get(key)? {
            Value::F32(x) => Ok(f64::from(*x)),
            Value::F64(x) => Ok(*x),
            other => Err(format!("`{key}` is {other:?}, not a number")),
        }
    }

    fn optional<T>(
        &self,
        key: &str,
        read: impl Fn(&Self, &str) -> std::result::Result<T, String>,
    ) -> std::result::Result<Option<T>, String> {
        if self.map.contains_key(key) {
            read(self, key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The configuration under `arch.*`; the vocabulary's size from the tokenizer's
    /// tokens where the file gives none of its own.
    fn config(&self, arch: &str) -> std::result::Result<LlamaConfig, String> {
        let key = |k: &str| format!("{arch}.{k}");
        let vocab_size = match self.optional(&key("vocab_size"), Self::usize)? {
            Some(n) => n,
            None => self
                .get("tokenizer.ggml.tokens")?
                .to_vec()
                .map_err(|e| e.to_string())?
                .len(),
        };
        Ok(LlamaConfig {
            model_type: arch.to_string(),
            vocab_size,
            hidden_size: self.usize(&key("embedding_length"))?,
            intermediate_size: self.usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.usize(&key("block_count"))?,
            num_attention_heads: self.usize(&key("attention.head_count"))?,
            num_key_value_heads: self.optional(&key("attention.head_count_kv"), Self::usize)?,
            head_dim: self.optional(&key("attention.key_length"), Self::usize)?,
            rms_norm_eps: self.f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: self.optional(&key("rope.freq_base"), Self::f64)?,
            rope_parameters: None,
            max_position_embeddings: self.usize(&key("context_length"))?,
            tie_word_embeddings: false,
            attention_bias: false,
            hidden_act: "silu".into(),
        })
    }
}
