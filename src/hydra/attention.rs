//! Grouped multi-head attention: each member's kept heads read only that member's
//! residual stream and write only to it.

use candle_core::Tensor;

use super::GroupedLinear;
use crate::kernels::layers::masked_softmax;
use crate::models::Tokens;
use crate::{Error, Result};

/// The members' attention layers: `heads` heads of `head_dim` per member (padded to the
/// member with the most), their projections grouped.
#[derive(Clone, Debug)]
pub struct GroupedAttention {
    pub(crate) query: GroupedLinear,
    pub(crate) key: GroupedLinear,
    pub(crate) value: GroupedLinear,
    pub(crate) output: GroupedLinear,
    pub(crate) heads: usize,
    pub(crate) head_dim: usize,
}

/// The padded layout of a batch: which rows are real tokens, and the key bias.
pub(crate) struct Layout<'a> {
    pub tokens: &'a Tokens,
    /// `(members * batch, seq)`: 0 for a token, a large negative value for padding.
    pub key_bias: &'a Tensor,
}

impl GroupedAttention {
    /// Checks that the four projections fit `heads` heads of `head_dim`.
    pub fn new(
        [query, key, value, output]: [GroupedLinear; 4],
        heads: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let inner = heads * head_dim;
        let fits = [&query, &key, &value]
            .iter()
            .all(|l| l.weight().dim(1).ok() == Some(inner))
            && output.weight().dim(2).ok() == Some(inner);
        if !fits {
            return Err(Error::InvalidInput(format!(
                "grouped attention of {heads} heads x {head_dim}: the projections must map to \
                 and from {inner} units"
            )));
        }
        Ok(Self {
            query,
            key,
            value,
            output,
            heads,
            head_dim,
        })
    }

    /// `x` `(members, tokens, hidden)` (real tokens only) to the attention output of the
    /// same shape. `gate` `(members * batch, heads)`, if given, scales each head's output
    /// per sequence: its gradient is the Taylor importance.
    pub(crate) fn forward(&self, x: &Tensor, at: &Layout, gate: Option<&Tensor>) -> Result<Tensor> {
        let (m, n, _) = x.dims3()?;
        let (seqs, t) = at.key_bias.dims2()?;
        let (k, d) = (self.heads, self.head_dim);
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(at
                .tokens
                .unpack(&y.reshape((m * n, k * d))?)?
                .reshape((seqs, t, k, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let key = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let probs = masked_softmax(&q.matmul(&key.t()?)?, at.key_bias, 1. / (d as f64).sqrt())?;
        let mut context = probs.matmul(&v)?;
        if let Some(g) = gate {
            context = context.broadcast_mul(&g.reshape((seqs, k, 1, 1))?)?;
        }
        let context = context
            .transpose(1, 2)?
            .contiguous()?
            .reshape((seqs * t, k * d))?;
        let context = at.tokens.pack(&context)?.reshape((m, n, k * d))?;
        self.output.forward(&context)
    }
}
