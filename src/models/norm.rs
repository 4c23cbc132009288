//! Layer norm with frozen scale and shift, as the encoder's layers hold it.

use std::collections::HashMap;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::kernels::layers::layer_norm;
use crate::Result;

/// Layer norm over the last dimension, with a backward pass (candle-nn's fused
/// `LayerNorm` has none).
#[derive(Clone, Debug)]
pub(crate) struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    pub(crate) fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self {
            weight,
            bias,
            eps: eps as f32,
        }
    }

    pub(crate) fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self::new(
            vb.get(size, "weight")?,
            vb.get(size, "bias")?,
            eps,
        ))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    /// `weight` and `bias` under `prefix`.
    pub(crate) fn insert_into(&self, out: &mut HashMap<String, Tensor>, prefix: &str) {
        out.insert(format!("{prefix}.weight"), self.weight.clone());
        out.insert(format!("{prefix}.bias"), self.bias.clone());
    }
}
