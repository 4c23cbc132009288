//! A Llama-family decoder (Llama 2/3, SmolLM2, Qwen2, Qwen3) whose linear layers can carry
//! adapters, for fine-tuning: the whole sequence's logits in one forward pass, with left
//! padding, and a backward pass to the adapters through every op.
//!
//! It computes what transformers' `LlamaForCausalLM` (and `Qwen2ForCausalLM`,
//! `Qwen3ForCausalLM`) computes from the same weights, which it loads by their Hugging
//! Face names: grouped-query attention with rotary position embeddings, a SwiGLU MLP,
//! RMSNorm, and tied or untied output matrices.

mod choices;
mod config;
mod gguf;
mod memory;
mod ops;
mod packing;
mod tokenizer;

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::VarBuilder;

pub use choices::{AnswerTokens, ClozeBatch};
pub use config::{LlamaConfig, RopeParameters};
pub use gguf::GgufDecoder;
pub use memory::check_memory;
use ops::{causal_bias, compute_dtype, RmsNorm, Rope};
pub use tokenizer::gguf_tokenizer;

use std::collections::HashMap;

use super::host::{self, LayerLinears, Linears};
use super::input::repeat_members;
use super::proj::Proj;
use crate::kernels::layers::{masked_softmax, rope, swiglu};
use crate::lora::{Adapter, AdapterBuilder, TargetModules};
use crate::{Error, Result};

/// One decoder layer's attention: projections, the optional per-head norms of Qwen3.
#[derive(Clone, Debug)]
struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
}

/// One decoder layer's SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Clone, Debug)]
struct Mlp {
    gate_proj: Proj,
    up_proj: Proj,
    down_proj: Proj,
}

#[derive(Clone, Debug)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// What each layer's loader needs besides its weights.
struct LayerSetup<'a> {
    config: &'a LlamaConfig,
    adapter: Option<&'a dyn AdapterBuilder>,
    targets: &'a TargetModules,
}

impl Layer {
    /// Layer `prefix` (`model.layers.{i}`) of `base`, with adapters under the same names in
    /// `adapters` on the modules `targets` names.
    fn load(
        prefix: &str,
        base: &VarBuilder,
        adapters: &VarBuilder,
        s: &LayerSetup,
    ) -> Result<Self> {
        let c = s.config;
        let (h, hd, wide) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.kv_heads() * hd);
        let proj = |module: &str, shape| {
            let name = format!("{prefix}.{module}");
            let adapter = s.adapter.filter(|_| s.targets.matches(&name));
            Proj::load(shape, &name, base, adapters, adapter)
        };
        let [q, k, v, o, gate, up, down] = LINEARS;
        let (qkv_bias, o_bias) = (c.qkv_bias(), c.output_bias());
        let head_norm = |which: &str| {
            c.qk_norm()
                .then(|| {
                    RmsNorm::load(
                        hd,
                        c.rms_norm_eps,
                        base.pp(format!("{prefix}.self_attn.{which}")),
                    )
                })
                .transpose()
        };
        Ok(Self {
            input_layernorm: RmsNorm::load(
                h,
                c.rms_norm_eps,
                base.pp(format!("{prefix}.input_layernorm")),
            )?,
            self_attn: Attention {
                q_proj: proj(q, (h, q_out, qkv_bias))?,
                k_proj: proj(k, (h, kv_out, qkv_bias))?,
                v_proj: proj(v, (h, kv_out, qkv_bias))?,
                o_proj: proj(o, (q_out, h, o_bias))?,
                q_norm: head_norm("q_norm")?,
                k_norm: head_norm("k_norm")?,
            },
            post_attention_layernorm: RmsNorm::load(
                h,
                c.rms_norm_eps,
                base.pp(format!("{prefix}.post_attention_layernorm")),
            )?,
            mlp: Mlp {
                gate_proj: proj(gate, (h, wide, false))?,
                up_proj: proj(up, (h, wide, false))?,
                down_proj: proj(down, (wide, h, false))?,
            },
        })
    }
}

/// The layer's seven linear layers, attention's then the MLP's.
impl LayerLinears for Layer {
    const NAMES: &'static [&'static str] = &LINEARS;

    fn projs(&self) -> Vec<&Proj> {
        let (a, m) = (&self.self_attn, &self.mlp);
        vec![
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    fn try_map<E>(
        &self,
        f: &mut dyn FnMut(&Proj) -> std::result::Result<Proj, E>,
    ) -> std::result::Result<Self, E> {
        let (a, m) = (&self.self_attn, &self.mlp);
        Ok(Self {
            self_attn: Attention {
                q_proj: f(&a.q_proj)?,
                k_proj: f(&a.k_proj)?,
                v_proj: f(&a.v_proj)?,
                o_proj: f(&a.o_proj)?,
                ..a.clone()
            },
            mlp: Mlp {
                gate_proj: f(&m.gate_proj)?,
                up_proj: f(&m.up_proj)?,
                down_proj: f(&m.down_proj)?,
            },
            ..self.clone()
        })
    }
}

/// A layer's linear layers under their names within it (peft's), in order.
const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl Linears for LlamaDecoder {
    fn linears(&self) -> Vec<(String, &Proj)> {
        host::layer_linears("model.layers", &self.layers)
    }

    fn try_map_linears<E>(
        &self,
        f: &mut dyn FnMut(&Proj) -> std::result::Result<Proj, E>,
    ) -> std::result::Result<Self, E> {
        Ok(Self {
            layers: host::map_layers(&self.layers, f)?,
            ..self.clone()
        })
    }

    fn members(&self) -> usize {
        self.members
    }

    fn with_members(self, members: usize) -> Self {
        Self { members, ..self }
    }
}

/// Where a batch's tokens sit: their rotary tables, `(len, head_dim)` for positions
/// `0..len` in every sequence or `(batch, len, head_dim)` per sequence, and the attention
/// bias `(batch, len, len)` that says which keys each query reads.
struct Attend {
    cos: Tensor,
    sin: Tensor,
    bias: Tensor,
}

/// The shapes one forward pass works with.
struct Pass<'a> {
    batch: usize,
    len: usize,
    config: &'a LlamaConfig,
    cos: Tensor,
    sin: Tensor,
    bias: Tensor,
    train: bool,
}

impl Attention {
    /// `x` is `(batch * len, hidden)`; so is the output.
    fn forward(&self, x: &Tensor, p: &Pass) -> candle_core::Result<Tensor> {
        let c = p.config;
        let (hd, heads, kv) = (c.head_dim(), c.num_attention_heads, c.kv_heads());
        // (batch * len, heads * hd) -> (batch, heads, len, hd), normed per head (Qwen3)
        // and rotated.
        let split = |t: Tensor, n: usize, norm: &Option<RmsNorm>| -> candle_core::Result<Tensor> {
            let t = t
                .reshape((p.batch, p.len, n, hd))?
                .transpose(1, 2)?
                .contiguous()?;
            match norm {
                Some(norm) => norm.forward(&t),
                None => Ok(t),
            }
        };
        let q = split(self.q_proj.forward_t(x, p.train)?, heads, &self.q_norm)?;
        let k = split(self.k_proj.forward_t(x, p.train)?, kv, &self.k_norm)?;
        let v = split(self.v_proj.forward_t(x, p.train)?, kv, &None)?;
        let q = rope(&q, &p.cos, &p.sin)?;
        let k = rope(&k, &p.cos, &p.sin)?;
        // Query heads `kv * groups + g` share key head `kv`: seen as (batch, kv, groups *
        // len, hd), each group's queries meet their key and value head in one matmul,
        // with no copy of the keys and values per query head.
        let (b, t, groups) = (p.batch, p.len, heads / kv);
        let scores = q
            .reshape((b, kv, groups * t, hd))?
            .matmul(&k.t()?)?
            .reshape((b, heads, t, t))?;
        let weights = masked_softmax(&scores, &p.bias, 1. / (hd as f64).sqrt())?;
        let out = weights
            .reshape((b, kv, groups * t, t))?
            .matmul(&v)?
            .reshape((b, heads, t, hd))?
            .transpose(1, 2)?
            .reshape((b * t, heads * hd))?;
        self.o_proj.forward_t(&out, p.train)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward_t(x, train)?;
        let up = self.up_proj.forward_t(x, train)?;
        self.down_proj.forward_t(&swiglu(&gate, &up)?, train)
    }
}

/// A Llama-family causal language model with adapters. The frozen weights come from one
/// `VarBuilder` (e.g. memory-mapped safetensors, under the Hugging Face names), the
/// adapters from another (a `VarMap`), so that `varmap.all_vars()` holds exactly the
/// trainable tensors.
///
/// ```no_run
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use varlora::lora::LoraConfig;
/// use varlora::lora::TargetModules;
/// use varlora::models::{AdapterSpec, LlamaConfig, LlamaDecoder};
///
/// let dev = Device::Cpu;
/// let config: LlamaConfig = serde_json::from_str(&std::fs::read_to_string("config.json")?)?;
/// // SAFETY: the weights file is not modified while mapped.
/// let base = unsafe {
///     VarBuilder::from_mmaped_safetensors(&["model.safetensors"], DType::F32, &dev)?
/// };
/// let varmap = VarMap::new();
/// let model = LlamaDecoder::load(
///     base,
///     VarBuilder::from_varmap(&varmap, DType::F32, &dev),
///     &config,
///     Some(&AdapterSpec::Lora(LoraConfig::new(8).alpha(16.0))),
///     &TargetModules::new(["q_proj", "v_proj"]),
/// )?;
/// model.init(0)?;
/// let ids = Tensor::new(&[[0u32, 0, 17, 4, 9], [3, 8, 2, 11, 5]], &dev)?; // left-padded
/// let mask = Tensor::new(&[[0u32, 0, 1, 1, 1], [1, 1, 1, 1, 1]], &dev)?;
/// let logits = model.logits(&ids, &mask, true)?; // (2, 5, vocab)
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct LlamaDecoder {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    rope: Rope,
    config: LlamaConfig,
    members: usize,
}

impl LlamaDecoder {
    /// Loads the decoder; `adapter` (if any) goes on every linear layer whose full name
    /// (`model.layers.{i}.self_attn.q_proj`, `model.layers.{i}.mlp.up_proj`, ...) `targets`
    /// matches, its vars named after the layer under `adapters`.
    pub fn load(
        base: VarBuilder,
        adapters: VarBuilder,
        config: &LlamaConfig,
        adapter: Option<&dyn AdapterBuilder>,
        targets: &TargetModules,
    ) -> Result<Self> {
        config.validate()?;
        if !matches!(base.dtype(), DType::F32 | DType::BF16 | DType::F64) {
            return Err(Error::InvalidConfig {
                field: "base dtype",
                value: format!("{:?}", base.dtype()),
                expected: "f32 or bf16 (f64 for checks)",
            });
        }
        let setup = LayerSetup {
            config,
            adapter,
            targets,
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(&format!("model.layers.{i}"), &base, &adapters, &setup))
            .collect::<Result<Vec<_>>>()?;
        let (vocab, h) = (config.vocab_size, config.hidden_size);
        let embed_tokens = base.get((vocab, h), "model.embed_tokens.weight")?;
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            base.get((vocab, h), "lm_head.weight")?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::load(h, config.rms_norm_eps, base.pp("model.norm"))?,
            lm_head,
            rope: Rope::new(config.head_dim(), config.rope_base()),
            config: config.clone(),
            members: adapter.map_or(1, |a| a.members()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The dtype the model computes in: its base's, but f32 for a bf16 base, whose weights
    /// are widened as they are used.
    pub fn compute_dtype(&self) -> DType {
        compute_dtype(self.embed_tokens.dtype())
    }

    /// The output matrix's rows `rows` (all of them for `None`) in the compute dtype: a
    /// bf16 base's rows widened for this use only.
    pub(crate) fn output_rows(&self, rows: Option<&Tensor>) -> Result<Tensor> {
        let w = match rows {
            Some(r) => self.lm_head.index_select(r, 0)?,
            None => self.lm_head.clone(),
        };
        Ok(w.to_dtype(self.compute_dtype())?)
    }

    /// The number of ensemble members (or stacked samples) carried in the batch
    /// dimension: 1 unless LoRA-Ensemble or [`Self::with_stacked_weights`].
    pub fn members(&self) -> usize {
        self.members
    }

    /// Every adapter, layer by layer (within a layer: q, k, v, o, gate, up, down).
    pub fn adapters(&self) -> impl Iterator<Item = &dyn Adapter> {
        host::adapters(self).into_iter()
    }

    /// The vars of every BLoB layer, layer by layer: what [`crate::optim::Blob`] trains.
    /// Empty without BLoB adapters.
    pub fn blob_layers(&self) -> Result<Vec<crate::lora::BlobLayerVars>> {
        crate::lora::blob_layers(self.adapters())
    }

    /// The KL divergence of every Bayesian adapter from its prior, summed (0 without
    /// one): the term BLoB's training adds, f64 and differentiable.
    pub fn blob_kl(&self) -> Result<Tensor> {
        crate::lora::total_kl(self.adapters(), self.embed_tokens.device())
    }

    /// Sets every adapter's trainable tensors to draws from `seed` (see
    /// [`Adapter::init`]): the same seed gives the same model.
    pub fn init(&self, seed: u64) -> Result<()> {
        host::init(self, seed)
    }

    /// A copy for inference that shares the weights but keeps no autograd graph.
    pub fn detach(&self) -> Self {
        host::detached(self)
    }

    /// A copy for inference that evaluates `samples` weight samples of the adapters in one
    /// forward pass, carried in the batch dimension member-major as LoRA-Ensemble's
    /// members are: `stacked` maps an adapter var's name to its samples stacked
    /// `(samples, ..var shape)`, as
    /// [`crate::predict::GaussianPosterior::stacked_samples`] gives them. A var it lacks is
    /// the same in every sample; an entry that is no adapter var of the model is an error,
    /// and so are adapters other than plain LoRA and a model that already carries members.
    pub fn with_stacked_weights(
        &self,
        stacked: &HashMap<String, Tensor>,
        samples: usize,
    ) -> Result<Self> {
        host::take_all_stacked(stacked, |rest| host::stacked(self, rest, samples))
    }

    /// The final-normed hidden states `(batch, len, hidden)` (`(members * batch, len,
    /// hidden)`, member-major, for LoRA-Ensemble or stacked samples) of token ids `ids`
    /// `(batch, len)` whose `mask` (1 for tokens, 0 for padding, which goes on the left) says which
    /// are real; `train` turns on the adapters' dropout. Positions count from 0 at the
    /// first column, padding included, as transformers' forward does (RoPE's scores
    /// depend only on the distance, so a row's left padding does not change them).
    pub fn hidden_states(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        if mask.dims() != ids.dims() {
            return Err(Error::ShapeMismatch(format!(
                "a mask of shape {:?} for token ids of shape {:?}: give one entry per token",
                mask.dims(),
                ids.dims()
            )));
        }
        self.fits_context(len)?;
        let (cos, sin) = self.rope.tables(len, ids.device())?;
        let bias = causal_bias(mask)?;
        self.attend(ids, Attend { cos, sin, bias }, train)
    }

    /// Refuses positions `0..len` past the model's context.
    fn fits_context(&self, len: usize) -> Result<()> {
        if len > self.config.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "a sequence of {len} tokens is past the model's context of {}: truncate it",
                self.config.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// The final-normed hidden states of `ids` `(batch, len)`, each token at the rotary
    /// position and reading the keys that `at` gives it.
    fn attend(&self, ids: &Tensor, at: Attend, train: bool) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        let ids_flat = ids.flatten_all()?;
        let largest = ids_flat
            .max(0)?
            .to_dtype(candle_core::DType::U32)?
            .to_scalar::<u32>()?;
        if largest as usize >= self.config.vocab_size {
            return Err(Error::InvalidInput(format!(
                "token id {largest} is out of range for a vocabulary of {}",
                self.config.vocab_size
            )));
        }
        // The tables and the bias in the weights' dtype (f32, or f64 for checks); tables
        // per sequence are repeated for the members as the sequences are.
        let dtype = self.compute_dtype();
        let m = self.members;
        let per_member = |t: &Tensor| match t.rank() {
            3 => repeat_members(&t.to_dtype(dtype)?, m),
            _ => Ok(t.to_dtype(dtype)?),
        };
        let pass = Pass {
            batch: m * batch,
            len,
            config: &self.config,
            cos: per_member(&at.cos)?,
            sin: per_member(&at.sin)?,
            bias: repeat_members(&at.bias.to_dtype(dtype)?, m)?,
            train,
        };
        let x = self
            .embed_tokens
            .index_select(&ids_flat, 0)?
            .to_dtype(dtype)?;
        let mut x = repeat_members(&x.reshape((batch, len * self.config.hidden_size))?, m)?
            .reshape((m * batch * len, self.config.hidden_size))?;
        for layer in &self.layers {
            let attn = layer
                .self_attn
                .forward(&layer.input_layernorm.forward(&x)?, &pass)?;
            x = (x + attn)?;
            let mlp = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&x)?, train)?;
            x = (x + mlp)?;
        }
        Ok(self
            .norm
            .forward(&x)?
            .reshape((m * batch, len, self.config.hidden_size))?)
    }

    /// The logits `(batch, len, vocab)` of every position (see [`Self::hidden_states`]).
    pub fn logits(&self, ids: &Tensor, mask: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.hidden_states(ids, mask, train)?;
        Ok(h.broadcast_matmul(&self.output_rows(None)?.t()?)?)
    }
}
