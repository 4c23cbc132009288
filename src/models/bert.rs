//! A BERT-family encoder (all-MiniLM-L6-v2 and kin) whose linear layers can carry LoRA or
//! BLoB adapters.
//!
//! It loads the Hugging Face safetensors weights by their names (with or without a `bert.`
//! prefix) and computes what candle-transformers' `BertModel` computes, but with a layer
//! norm built from differentiable ops: candle-nn's `LayerNorm` is a fused op without a
//! backward pass, which would silently stop the gradient at every layer.

use std::collections::HashMap;

use candle_core::{ModuleT, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::host::{self, LayerLinears, Linears};
use super::input::{repeat_members, Embeddings, Packed, Tokens};
use super::norm::Norm;
use super::proj::Proj;
use crate::kernels::layers::{gelu_erf, masked_softmax};
use crate::lora::{Adapter, AdapterBuilder, BlobLayerVars, TargetModules};
use crate::{Error, Result};

/// The fields of a BERT `config.json` the encoder uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Activation of the feed-forward layer: "gelu" (erf), "gelu_new" or "relu".
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Number of learned positions.
    pub max_position_embeddings: usize,
    /// Number of token types.
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    /// Epsilon of the layer norms.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// Checks what the encoder relies on: the heads divide the hidden size, and the
    /// activation is one it computes.
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::InvalidConfig {
                field: "num_attention_heads",
                value: self.num_attention_heads.to_string(),
                expected: "a divisor of hidden_size",
            });
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "relu") {
            return Err(Error::InvalidConfig {
                field: "hidden_act",
                value: self.hidden_act.clone(),
                expected: "gelu, gelu_new or relu",
            });
        }
        Ok(())
    }

    /// The configured activation of the feed-forward layer.
    pub(crate) fn activation(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.hidden_act.as_str() {
            "gelu" => gelu_erf(x),
            "gelu_new" => x.gelu(),
            _ => x.relu(),
        }
    }
}

fn default_act() -> String {
    "gelu".into()
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

#[derive(Clone, Debug)]
struct Layer {
    query: Proj,
    key: Proj,
    value: Proj,
    attention_output: Proj,
    attention_norm: Norm,
    intermediate: Proj,
    output: Proj,
    output_norm: Norm,
}

/// The layer's linear layers under their names within it (peft's), in order.
const LINEARS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl Layer {
    /// Encoder layer `prefix` (`encoder.layer.{i}`) of `b` (base weights), with adapters
    /// under the same names in `a` on the linear layers `targets` names.
    fn load(
        prefix: &str,
        (b, a): (&VarBuilder, &VarBuilder),
        config: &BertConfig,
        adapter: Option<&dyn AdapterBuilder>,
        targets: &TargetModules,
    ) -> Result<Self> {
        let (h, wide, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        let proj = |name: &str, (fan_in, fan_out)| {
            let adapter = adapter.filter(|_| targets.matches(&format!("{prefix}.{name}")));
            Proj::load((fan_in, fan_out, true), name, b, a, adapter)
        };
        let [query, key, value, attention_output, intermediate, output] = LINEARS;
        Ok(Self {
            query: proj(query, (h, h))?,
            key: proj(key, (h, h))?,
            value: proj(value, (h, h))?,
            attention_output: proj(attention_output, (h, h))?,
            attention_norm: Norm::load(h, eps, b.pp("attention.output.LayerNorm"))?,
            intermediate: proj(intermediate, (h, wide))?,
            output: proj(output, (wide, h))?,
            output_norm: Norm::load(h, eps, b.pp("output.LayerNorm"))?,
        })
    }
}

impl LayerLinears for Layer {
    const NAMES: &'static [&'static str] = &LINEARS;

    fn projs(&self) -> Vec<&Proj> {
        vec![
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
    }

    fn try_map<E>(
        &self,
        f: &mut dyn FnMut(&Proj) -> std::result::Result<Proj, E>,
    ) -> std::result::Result<Self, E> {
        Ok(Self {
            query: f(&self.query)?,
            key: f(&self.key)?,
            value: f(&self.value)?,
            attention_output: f(&self.attention_output)?,
            intermediate: f(&self.intermediate)?,
            output: f(&self.output)?,
            ..self.clone()
        })
    }
}

impl Linears for BertEncoder {
    fn linears(&self) -> Vec<(String, &Proj)> {
        host::layer_linears("encoder.layer", &self.layers)
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

/// A BERT encoder with adapters. The frozen weights come from one `VarBuilder` (e.g.
/// memory-mapped safetensors), the adapters from another (a `VarMap`), so that
/// `varmap.all_vars()` holds exactly the trainable tensors.
#[derive(Clone, Debug)]
pub struct BertEncoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    config: BertConfig,
    members: usize,
}

impl BertEncoder {
    /// Loads the encoder; `adapter` (if any) goes on every linear layer whose full name
    /// (`encoder.layer.{i}.attention.self.query`, ..., `encoder.layer.{i}.output.dense`)
    /// `targets` matches, its vars named after the layer under `adapters`
    /// (`encoder.layer.{i}.attention.self.query.lora_a`, ...).
    pub fn load(
        base: VarBuilder,
        adapters: VarBuilder,
        config: &BertConfig,
        adapter: Option<&dyn AdapterBuilder>,
        targets: &TargetModules,
    ) -> Result<Self> {
        config.validate()?;
        let base = if base.contains_tensor("bert.embeddings.word_embeddings.weight") {
            base.pp("bert")
        } else {
            base
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let name = format!("encoder.layer.{i}");
                let vbs = (&base.pp(&name), &adapters.pp(&name));
                Layer::load(&name, vbs, config, adapter, targets)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::load(config, base.pp("embeddings"))?,
            layers,
            config: config.clone(),
            members: adapter.map_or(1, |a| a.members()),
        })
    }

    /// Query and value: the LoRA paper's targets and peft's default for BERT.
    ///
    /// ```
    /// let t = varlora::models::BertEncoder::query_value();
    /// assert!(t.matches("encoder.layer.0.attention.self.value"));
    /// ```
    pub fn query_value() -> TargetModules {
        TargetModules::new(["query", "value"])
    }

    /// Every linear layer of attention: query, key, value and the attention output, as
    /// LoRA-Ensemble's reference targets them.
    ///
    /// ```
    /// let t = varlora::models::BertEncoder::attention();
    /// assert!(t.matches("encoder.layer.0.attention.output.dense"));
    /// assert!(!t.matches("encoder.layer.0.output.dense"));
    /// ```
    pub fn attention() -> TargetModules {
        TargetModules::new(["query", "key", "value", "attention.output.dense"])
    }

    /// Every linear layer: attention's four and the MLP's two.
    ///
    /// ```
    /// let t = varlora::models::BertEncoder::all_linears();
    /// assert!(t.matches("encoder.layer.0.intermediate.dense"));
    /// ```
    pub fn all_linears() -> TargetModules {
        TargetModules::new(["query", "key", "value", "dense"])
    }

    /// The configuration.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// A copy for inference: the same weights (shared storage, so the optimizer's later
    /// updates and IVON's or BLoB's samples show through) without gradient tracking, so
    /// that a forward pass frees its intermediate tensors as it goes. Evaluating with the
    /// trainable copy keeps every layer's activations alive until the output is dropped:
    /// about 2 GB for all-MiniLM-L6-v2 at 64 x 64 tokens, against 0.1 GB detached.
    pub fn detach(&self) -> Self {
        host::detached(self)
    }

    /// A copy for inference that evaluates `samples` weight samples of the adapters in one
    /// forward pass, carried in the batch dimension as LoRA-Ensemble's members are (the
    /// frozen matmuls run on `samples` times the rows): `stacked` maps an adapter var's
    /// name to its samples stacked `(samples, ..var shape)`, as
    /// [`crate::predict::GaussianPosterior::stacked_samples`] gives them. A var it lacks
    /// is the same in every sample; an entry that is no adapter var of the encoder is an
    /// error. Errors too for adapters other than plain LoRA and for an encoder that
    /// already carries members.
    pub fn with_stacked_weights(
        &self,
        stacked: &HashMap<String, Tensor>,
        samples: usize,
    ) -> Result<Self> {
        host::take_all_stacked(stacked, |rest| host::stacked(self, rest, samples))
    }

    /// The KL divergence of every Bayesian adapter from its prior, summed (0 without
    /// one): the term BLoB's training adds, f64 and differentiable.
    pub fn blob_kl(&self) -> Result<Tensor> {
        crate::lora::total_kl(self.adapters(), self.embeddings.device())
    }

    /// The vars of every BLoB layer, in layer order (query, key, value, attention output,
    /// intermediate, output within each transformer layer): what
    /// [`crate::optim::Blob`] trains. Empty without BLoB adapters.
    pub fn blob_layers(&self) -> Result<Vec<BlobLayerVars>> {
        crate::lora::blob_layers(self.adapters())
    }

    /// Sets every adapter's trainable tensors to draws from `seed` (see
    /// [`Adapter::init`]): the same seed gives the same encoder.
    pub fn init(&self, seed: u64) -> Result<()> {
        host::init(self, seed)
    }

    /// The adapters, in layer order.
    pub fn adapters(&self) -> impl Iterator<Item = &dyn Adapter> {
        host::adapters(self).into_iter()
    }

    /// Every weight under its Hugging Face name (`embeddings.word_embeddings.weight`,
    /// `encoder.layer.0.attention.self.query.weight`, ...), with each adapter's update
    /// folded in (a posterior's mean): the fine-tuned model as one plain BERT, e.g. to
    /// prune into [`crate::hydra`] members. Frozen tensors share storage with the
    /// encoder. A LoRA-Ensemble, having no single model, gets an error.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        self.embeddings.insert_into(&mut out);
        for (name, proj) in self.linears() {
            insert_linear(&mut out, &name, &proj.merged()?);
        }
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            let norms = [
                ("attention.output.LayerNorm", &l.attention_norm),
                ("output.LayerNorm", &l.output_norm),
            ];
            for (name, norm) in norms {
                norm.insert_into(&mut out, &format!("{p}.{name}"));
            }
        }
        Ok(out)
    }

    /// The number of ensemble members carried in the batch dimension (1 unless
    /// LoRA-Ensemble).
    pub fn members(&self) -> usize {
        self.members
    }

    /// Hidden states `(batch, seq, hidden)` for `input_ids` and `token_type_ids`
    /// `(batch, seq)`, with `attention_mask` (1 for tokens, 0 for padding; all ones if
    /// `None`). `train` switches the adapters' dropout. With LoRA-Ensemble the output has
    /// `members * batch` rows, member-major.
    ///
    /// Padding is skipped: every per-token op (the linear layers, layer norms and GELU)
    /// runs on the real tokens only, and only attention sees the padded layout. The hidden
    /// states of padding positions are therefore zero (a padded batch of sentences of
    /// uneven length is often half padding).
    pub fn forward_t(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let Packed {
            mut x,
            tokens,
            key_bias,
        } = self.embeddings.pack(
            &self.config,
            input_ids,
            token_type_ids,
            attention_mask,
            self.members,
        )?;
        let h = self.config.hidden_size;
        for layer in &self.layers {
            x = self.layer(layer, &x, &key_bias, &tokens, train)?;
        }
        Ok(tokens.unpack(&x)?.reshape((batch * self.members, seq, h))?)
    }

    /// One transformer layer on the packed tokens `(tokens, hidden)`.
    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        bias: &Tensor,
        tokens: &Tokens,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t) = bias.dims2()?;
        let h = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let d = h / heads;
        let split = |y: Tensor| -> candle_core::Result<Tensor> {
            tokens
                .unpack(&y)?
                .reshape((b, t, heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(l.query.forward_t(x, train)?)?;
        let k = split(l.key.forward_t(x, train)?)?;
        let v = split(l.value.forward_t(x, train)?)?;
        let probs = masked_softmax(&q.matmul(&k.t()?)?, bias, 1. / (d as f64).sqrt())?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, h))?;
        let context = tokens.pack(&context)?;
        let attn = l
            .attention_norm
            .forward(&(l.attention_output.forward_t(&context, train)? + x)?)?;
        let inter = l.intermediate.forward_t(&attn, train)?;
        let inter = self.config.activation(&inter)?;
        Ok(l.output_norm
            .forward(&(l.output.forward_t(&inter, train)? + attn)?)?)
    }

    /// The mean of the hidden states over the tokens the mask keeps: `(batch, hidden)`
    /// (the mask is repeated for the members of a LoRA-Ensemble).
    pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let members = hidden.dim(0)? / attention_mask.dim(0)?.max(1);
        let mask = repeat_members(attention_mask, members)?
            .to_dtype(hidden.dtype())?
            .unsqueeze(D::Minus1)?;
        let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
        let count = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        Ok(sum.broadcast_div(&count)?)
    }
}

/// `weight` and, where there is one, `bias` under `prefix`.
pub(crate) fn insert_linear(out: &mut HashMap<String, Tensor>, prefix: &str, l: &Linear) {
    out.insert(format!("{prefix}.weight"), l.weight().clone());
    if let Some(b) = l.bias() {
        out.insert(format!("{prefix}.bias"), b.clone());
    }
}
