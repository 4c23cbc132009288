//! The merged network: every member's pruned copy of a BERT classifier in one forward.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use super::attention::{GroupedAttention, Layout};
use super::{grouped_layer_norm, GroupedLinear, MemberPlan};
use crate::models::{BertConfig, BertEncoder, Embeddings, Norm};
use crate::{Error, Result};

/// A member-wise layer norm's scale and shift, `(members, hidden)`.
#[derive(Clone, Debug)]
struct GroupedNorm {
    weight: Tensor,
    bias: Tensor,
}

#[derive(Clone, Debug)]
struct HydraLayer {
    attention: GroupedAttention,
    attention_norm: GroupedNorm,
    intermediate: GroupedLinear,
    output: GroupedLinear,
    output_norm: GroupedNorm,
}

/// Per-sequence gates on every head and neuron, for Taylor importance.
pub(crate) struct Gates {
    /// Per layer, `(members * batch, heads)`.
    pub heads: Vec<Tensor>,
    /// Per layer, `(members * batch, neurons)`.
    pub neurons: Vec<Tensor>,
}

/// Hydra's merged network: `M` members, each a BERT classifier with its own subset of
/// attention heads and feed-forward neurons kept (a [`MemberPlan`]), run as one network
/// whose projections are grouped (block-diagonal, one block per member). Each member
/// carries its own residual stream, so the merged forward equals the `M` pruned models
/// run one by one; its cost is the sum of the members' kept widths, about one model's
/// when they keep `1/M` of each layer each.
///
/// The logits come out as `(members, batch, classes)`, the layout of LoRA-Ensemble:
/// [`crate::predict::predictive_from_samples`] gives the ensemble's predictive and its
/// uncertainty split.
///
/// ```no_run
/// use varlora::hydra::{plan_members, HydraClassifier, PruneConfig, Selection};
/// # fn fine_tuned() -> varlora::models::BertClassifier { unimplemented!() }
/// # fn calibration() -> Vec<varlora::hydra::LabelledBatch> { unimplemented!() }
/// let model = fine_tuned();
/// let weights = model.merged_tensors()?; // LoRA folded in
/// let config = model.encoder().config().clone();
/// let dense = HydraClassifier::dense(&weights, &config, false)?;
/// let importance = dense.taylor_importance(&calibration())?;
/// let prune = PruneConfig { members: 4, keep_heads: 4, keep_neurons: 512,
///                           selection: Selection::Weighted { seed: 0 } };
/// let hydra = HydraClassifier::new(&weights, &config, &plan_members(&[importance], &prune)?, true)?;
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct HydraClassifier {
    embeddings: Embeddings,
    layers: Vec<HydraLayer>,
    head: GroupedLinear,
    config: BertConfig,
    plans: Vec<MemberPlan>,
    vars: Vec<Var>,
}

/// Looks up a tensor by its Hugging Face name, with or without the `bert.` prefix.
fn get<'a>(weights: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    weights
        .get(name)
        .or_else(|| weights.get(&format!("bert.{name}")))
        .ok_or_else(|| Error::NotFound(format!("the weights have no `{name}`")))
}

/// `t`'s `index` entries along `dim`, padded with zeros to `len` entries.
fn gather_padded(t: &Tensor, dim: usize, index: &[usize], len: usize) -> Result<Tensor> {
    let idx: Vec<u32> = index.iter().map(|&i| i as u32).collect();
    let idx = Tensor::from_vec(idx, index.len(), t.device())?;
    let kept = t.index_select(&idx, dim)?;
    if index.len() == len {
        return Ok(kept);
    }
    let mut pad = t.dims().to_vec();
    pad[dim] = len - index.len();
    Ok(Tensor::cat(
        &[kept, Tensor::zeros(pad, t.dtype(), t.device())?],
        dim,
    )?)
}

/// The rows (in `0..width*units`) of the kept units of `width` each.
fn unit_rows(units: &[usize], width: usize) -> Vec<usize> {
    units
        .iter()
        .flat_map(|&u| u * width..(u + 1) * width)
        .collect()
}

/// Builds the grouped tensors, as vars when they are to be trained.
struct Builder<'a> {
    weights: &'a HashMap<String, Tensor>,
    plans: &'a [MemberPlan],
    trainable: bool,
    vars: Vec<Var>,
}

impl Builder<'_> {
    fn param(&mut self, t: Tensor) -> Result<Tensor> {
        if !self.trainable {
            return Ok(t);
        }
        let v = Var::from_tensor(&t)?;
        let t = v.as_tensor().clone();
        self.vars.push(v);
        Ok(t)
    }

    /// Layer `name` once per member, stacked `(members, out, in)`: each member keeps the
    /// `unit`-wide blocks `keep` names, of the output (with the bias) or, with
    /// `input_side`, of the input; widths are zero-padded to the widest member (at least
    /// one unit).
    fn linear(
        &mut self,
        name: &str,
        keep: &dyn Fn(&MemberPlan) -> Vec<usize>,
        unit: usize,
        input_side: bool,
    ) -> Result<GroupedLinear> {
        let (w, b) = (
            get(self.weights, &format!("{name}.weight"))?,
            get(self.weights, &format!("{name}.bias"))?,
        );
        let kept: Vec<Vec<usize>> = self
            .plans
            .iter()
            .map(|p| unit_rows(&keep(p), unit))
            .collect();
        let len = kept.iter().map(Vec::len).max().unwrap_or(0).max(unit);
        let (mut ws, mut bs) = (Vec::new(), Vec::new());
        for idx in &kept {
            if input_side {
                ws.push(gather_padded(w, 1, idx, len)?);
                bs.push(b.clone());
            } else {
                ws.push(gather_padded(w, 0, idx, len)?);
                bs.push(gather_padded(b, 0, idx, len)?);
            }
        }
        let weight = self.param(Tensor::stack(&ws, 0)?)?;
        let bias = self.param(Tensor::stack(&bs, 0)?)?;
        GroupedLinear::new(weight, bias)
    }

    fn norm(&mut self, name: &str) -> Result<GroupedNorm> {
        let m = self.plans.len();
        let rep = |t: &Tensor| -> Result<Tensor> { Ok(t.unsqueeze(0)?.repeat((m, 1))?) };
        let weight = rep(get(self.weights, &format!("{name}.weight"))?)?;
        let bias = rep(get(self.weights, &format!("{name}.bias"))?)?;
        Ok(GroupedNorm {
            weight: self.param(weight)?,
            bias: self.param(bias)?,
        })
    }

    fn layer(&mut self, i: usize, head_dim: usize) -> Result<HydraLayer> {
        let p = format!("encoder.layer.{i}");
        let heads = move |plan: &MemberPlan| plan.heads[i].clone();
        let neurons = move |plan: &MemberPlan| plan.neurons[i].clone();
        let [query, key, value, output] = [
            ("attention.self.query", false),
            ("attention.self.key", false),
            ("attention.self.value", false),
            ("attention.output.dense", true),
        ]
        .map(|(name, input_side)| {
            self.linear(&format!("{p}.{name}"), &heads, head_dim, input_side)
        });
        let query = query?;
        // The padded head count is the widest member's, which `linear` padded to.
        let kept_heads = query.weight().dim(1)? / head_dim;
        let attention =
            GroupedAttention::new([query, key?, value?, output?], kept_heads, head_dim)?;
        Ok(HydraLayer {
            attention,
            attention_norm: self.norm(&format!("{p}.attention.output.LayerNorm"))?,
            intermediate: self.linear(&format!("{p}.intermediate.dense"), &neurons, 1, false)?,
            output: self.linear(&format!("{p}.output.dense"), &neurons, 1, true)?,
            output_norm: self.norm(&format!("{p}.output.LayerNorm"))?,
        })
    }

    /// The head, copied for every member: `(members, classes, hidden)`.
    fn head(&mut self) -> Result<GroupedLinear> {
        let m = self.plans.len();
        let w = get(self.weights, "classifier.weight")?;
        let b = get(self.weights, "classifier.bias")?;
        let weight = self.param(w.unsqueeze(0)?.repeat((m, 1, 1))?)?;
        let bias = self.param(b.unsqueeze(0)?.repeat((m, 1))?)?;
        GroupedLinear::new(weight, bias)
    }
}

impl HydraClassifier {
    /// The merged network of the members `plans` describe, from a BERT classifier's
    /// `weights` under their Hugging Face names (e.g.
    /// [`crate::models::BertClassifier::merged_tensors`]). With `trainable`, the grouped
    /// tensors (not the embeddings) become vars for a brief fine-tuning ([`Self::vars`]).
    pub fn new(
        weights: &HashMap<String, Tensor>,
        config: &BertConfig,
        plans: &[MemberPlan],
        trainable: bool,
    ) -> Result<Self> {
        config.validate()?;
        if plans.is_empty() {
            return Err(Error::InvalidInput(
                "Hydra needs at least one member plan".into(),
            ));
        }
        let heads = config.num_attention_heads;
        for p in plans {
            p.validate(config.num_hidden_layers, heads, config.intermediate_size)?;
        }
        let mut b = Builder {
            weights,
            plans,
            trainable,
            vars: Vec::new(),
        };
        let head_dim = config.hidden_size / heads;
        let layers = (0..config.num_hidden_layers)
            .map(|i| b.layer(i, head_dim))
            .collect::<Result<Vec<_>>>()?;
        let head = b.head()?;
        let e = |name: &str| get(weights, &format!("embeddings.{name}")).cloned();
        let norm = Norm::new(
            e("LayerNorm.weight")?,
            e("LayerNorm.bias")?,
            config.layer_norm_eps,
        );
        let embeddings = Embeddings::new(
            e("word_embeddings.weight")?,
            e("position_embeddings.weight")?,
            e("token_type_embeddings.weight")?,
            norm,
        )?;
        Ok(Self {
            embeddings,
            layers,
            head,
            config: config.clone(),
            plans: plans.to_vec(),
            vars: b.vars,
        })
    }

    /// One member keeping every head and neuron: the classifier itself, e.g. to score
    /// importance ([`Self::taylor_importance`]).
    pub fn dense(
        weights: &HashMap<String, Tensor>,
        config: &BertConfig,
        trainable: bool,
    ) -> Result<Self> {
        let c = config;
        let full = MemberPlan::full(
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size,
        );
        Self::new(weights, config, &[full], trainable)
    }

    /// A copy for inference: the same weights (shared storage, so later fine-tuning shows
    /// through) without gradient tracking, so that a forward pass builds no graph.
    pub fn detach(&self) -> Self {
        let lin = |l: &GroupedLinear| GroupedLinear {
            weight: l.weight.detach(),
            bias: l.bias.detach(),
        };
        let norm = |n: &GroupedNorm| GroupedNorm {
            weight: n.weight.detach(),
            bias: n.bias.detach(),
        };
        let layers = self
            .layers
            .iter()
            .map(|l| HydraLayer {
                attention: GroupedAttention {
                    query: lin(&l.attention.query),
                    key: lin(&l.attention.key),
                    value: lin(&l.attention.value),
                    output: lin(&l.attention.output),
                    ..l.attention.clone()
                },
                attention_norm: norm(&l.attention_norm),
                intermediate: lin(&l.intermediate),
                output: lin(&l.output),
                output_norm: norm(&l.output_norm),
            })
            .collect();
        Self {
            layers,
            head: lin(&self.head),
            vars: Vec::new(),
            ..self.clone()
        }
    }

    /// The number of members.
    pub fn members(&self) -> usize {
        self.plans.len()
    }

    /// The members' plans.
    pub fn plans(&self) -> &[MemberPlan] {
        &self.plans
    }

    /// The configuration of the model the members were pruned from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The dtype the network computes in (its embeddings').
    pub fn dtype(&self) -> DType {
        self.embeddings.dtype()
    }

    /// The trainable tensors (empty unless built `trainable`): for an optimizer.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Logits `(members, batch, classes)` for `input_ids`, `token_type_ids` and
    /// `attention_mask` `(batch, seq)`, member `m`'s at `[m]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        self.forward_gated(input_ids, token_type_ids, attention_mask, None)
    }

    pub(crate) fn forward_gated(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        gates: Option<&Gates>,
    ) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let m = self.members();
        let h = self.config.hidden_size;
        let packed = self.embeddings.pack(
            &self.config,
            input_ids,
            token_type_ids,
            Some(attention_mask),
            m,
        )?;
        let (tokens, mut x) = (&packed.tokens, packed.x.reshape((m, (), h))?);
        let at = Layout {
            tokens,
            key_bias: &packed.key_bias,
        };
        let sequence = match gates {
            Some(_) => Some(tokens.sequence_of_tokens(seq, x.device())?),
            None => None,
        };
        for (i, l) in self.layers.iter().enumerate() {
            let head_gate = gates.map(|g| &g.heads[i]);
            let neuron_gate = match (gates, &sequence) {
                (Some(g), Some(s)) => Some(g.neurons[i].index_select(s, 0)?),
                _ => None,
            };
            x = self.layer(l, &x, &at, head_gate, neuron_gate.as_ref())?;
        }
        let hidden = tokens
            .unpack(&x.reshape(((), h))?)?
            .reshape((m * batch, seq, h))?;
        let pooled = BertEncoder::mean_pool(&hidden, attention_mask)?.reshape((m, batch, h))?;
        self.head.forward(&pooled)
    }

    /// One transformer layer on `(members, tokens, hidden)`.
    fn layer(
        &self,
        l: &HydraLayer,
        x: &Tensor,
        at: &Layout,
        head_gate: Option<&Tensor>,
        neuron_gate: Option<&Tensor>,
    ) -> Result<Tensor> {
        let eps = self.config.layer_norm_eps;
        let norm = |y: &Tensor, n: &GroupedNorm| grouped_layer_norm(y, &n.weight, &n.bias, eps);
        let attn = norm(
            &(l.attention.forward(x, at, head_gate)? + x)?,
            &l.attention_norm,
        )?;
        let mut inter = self.config.activation(&l.intermediate.forward(&attn)?)?;
        if let Some(g) = neuron_gate {
            let (m, n, w) = inter.dims3()?;
            inter = (inter.reshape((m * n, w))? * g)?.reshape((m, n, w))?;
        }
        norm(&(l.output.forward(&inter)? + attn)?, &l.output_norm)
    }
}
