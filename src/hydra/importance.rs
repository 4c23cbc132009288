//! Taylor importance of heads and neurons: the first-order change of the loss when a unit
//! is removed.

use candle_core::{DType, Tensor, Var};
use candle_nn::ops::log_softmax;

use super::network::Gates;
use super::{HydraClassifier, Importance};
use crate::{Error, Result};

/// A batch of labelled sentences: what importance is scored on.
#[derive(Clone, Debug)]
pub struct LabelledBatch {
    /// `(batch, seq)` u32.
    pub input_ids: Tensor,
    /// `(batch, seq)` u32.
    pub token_type_ids: Tensor,
    /// `(batch, seq)` u32, 1 for tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// `(batch,)` u32 class indices.
    pub labels: Tensor,
}

impl HydraClassifier {
    /// Each unit's Taylor importance on `batches`, for a single-member network (e.g.
    /// [`Self::dense`]): for a head with output `a`, the mean over sentences `i` of
    /// `|sum(a * dL_i/da)|`, the first-order change of sentence `i`'s cross-entropy when
    /// the head is removed (Michel et al., 2019); for a feed-forward neuron the same with
    /// its activation. Computed as the gradient of a gate of 1 on each unit. Scores are
    /// indexed by unit id over the full width (`num_attention_heads`,
    /// `intermediate_size`); units the member has pruned score 0.
    pub fn taylor_importance(&self, batches: &[LabelledBatch]) -> Result<Importance> {
        if self.members() != 1 {
            return Err(Error::InvalidInput(format!(
                "importance is scored on one model; this network has {} members",
                self.members()
            )));
        }
        let layers = self.config().num_hidden_layers;
        let plan = &self.plans()[0];
        let mut heads: Vec<Vec<f64>> = plan.heads.iter().map(|h| vec![0.0; h.len()]).collect();
        let mut neurons: Vec<Vec<f64>> = plan.neurons.iter().map(|n| vec![0.0; n.len()]).collect();
        let mut sentences = 0usize;
        for b in batches {
            let n = b.input_ids.dim(0)?;
            let (gh, gn) = self.gate_gradients(b)?;
            for l in 0..layers {
                add_abs(&mut heads[l], &gh[l])?;
                add_abs(&mut neurons[l], &gn[l])?;
            }
            sentences += n;
        }
        if sentences == 0 {
            return Err(Error::InvalidInput("no calibration sentences".into()));
        }
        let mean = |sets: &mut Vec<Vec<f64>>| {
            sets.iter_mut()
                .flatten()
                .for_each(|v| *v /= sentences as f64)
        };
        mean(&mut heads);
        mean(&mut neurons);
        let c = self.config();
        Ok(Importance {
            heads: by_unit_id(heads, &plan.heads, c.num_attention_heads),
            neurons: by_unit_id(neurons, &plan.neurons, c.intermediate_size),
        })
    }

    /// The gradients of the summed cross-entropy with respect to per-sentence gates of 1
    /// on every head and neuron: per layer `(batch, units)`.
    fn gate_gradients(&self, b: &LabelledBatch) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let n = b.input_ids.dim(0)?;
        let dev = b.input_ids.device();
        let dtype = self.dtype();
        let ones = |units: usize| Var::ones((n, units), dtype, dev);
        let plan = &self.plans()[0];
        let heads = plan
            .heads
            .iter()
            .map(|h| ones(h.len().max(1)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let neurons = plan
            .neurons
            .iter()
            .map(|u| ones(u.len().max(1)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let gates = Gates {
            heads: heads.iter().map(|v| v.as_tensor().clone()).collect(),
            neurons: neurons.iter().map(|v| v.as_tensor().clone()).collect(),
        };
        let logits = self
            .forward_gated(
                &b.input_ids,
                &b.token_type_ids,
                &b.attention_mask,
                Some(&gates),
            )?
            .squeeze(0)?;
        let logp = log_softmax(&logits, 1)?;
        let labels = b.labels.to_dtype(DType::U32)?.unsqueeze(1)?;
        let loss = logp.gather(&labels, 1)?.sum_all()?.neg()?;
        let grads = loss.backward()?;
        let grad_of = |vars: &[Var]| -> Result<Vec<Tensor>> {
            vars.iter()
                .map(|v| {
                    grads
                        .get(v.as_tensor())
                        .cloned()
                        .ok_or_else(|| Error::InvalidState("a gate got no gradient"))
                })
                .collect()
        };
        Ok((grad_of(&heads)?, grad_of(&neurons)?))
    }
}

/// Per layer, the scores of the kept units (in the plan's order) placed at their unit ids
/// in a vector of `width` zeros.
fn by_unit_id(scores: Vec<Vec<f64>>, ids: &[Vec<usize>], width: usize) -> Vec<Vec<f64>> {
    scores
        .into_iter()
        .zip(ids)
        .map(|(s, ids)| {
            let mut full = vec![0.0; width];
            for (v, &u) in s.into_iter().zip(ids) {
                full[u] = v;
            }
            full
        })
        .collect()
}

/// `acc[u] += sum over rows of |g[row, u]|`.
fn add_abs(acc: &mut [f64], g: &Tensor) -> Result<()> {
    let sums = g.abs()?.sum(0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    for (a, s) in acc.iter_mut().zip(sums) {
        *a += s;
    }
    Ok(())
}
