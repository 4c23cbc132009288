//! The decoder's non-linear pieces, each differentiable: RMSNorm and rotary position
//! embeddings (on fused kernels) and the causal padding bias. (candle's fused `rms_norm`, `softmax_last_dim` and `rope` have no backward pass,
//! so they would stop the gradient on its way to the adapters.)

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::layers::rms_norm;
use crate::Result;

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`, with a frozen
/// weight (the fused kernel of `kernels::layers`).
#[derive(Clone, Debug)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// The norm `vb` holds, its weight in the dtype the model computes in.
    pub(crate) fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let dtype = compute_dtype(vb.dtype());
        Ok(Self {
            weight: vb.get(size, "weight")?.to_dtype(dtype)?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        rms_norm(x, &self.weight, self.eps)
    }
}

/// The dtype a model whose base is stored in `base` computes in: the base's, except that
/// a bf16 base computes in f32.
pub(crate) fn compute_dtype(base: DType) -> DType {
    if base == DType::BF16 {
        DType::F32
    } else {
        base
    }
}

/// Rotary position embeddings' tables in the layout of transformers' Llama, frequency `i`
/// being `base^(-2i / head_dim)`; `kernels::layers::rope` applies them (each head's first
/// half paired with its second half).
#[derive(Clone, Debug)]
pub(crate) struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub(crate) fn new(head_dim: usize, base: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| (1.0 / base.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        Self { inv_freq }
    }

    /// `cos` and `sin` of every position `0..len` and frequency, each `(len, head_dim)`
    /// with the frequencies repeated for the two halves.
    pub(crate) fn tables(&self, len: usize, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        // The angle in f32, as transformers computes it (position times inverse frequency).
        let angles: Vec<f32> = (0..len)
            .flat_map(|p| (0..2 * half).map(move |j| p as f32 * self.inv_freq[j % half]))
            .collect();
        let angles = Tensor::from_vec(angles, (len, 2 * half), dev)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// The tables of each sequence's own `positions` `(batch, len)` (u32): `cos` and `sin`
    /// each `(batch, len, head_dim)`.
    pub(crate) fn tables_at(&self, positions: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (batch, len) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let end = flat.max(0)?.to_scalar::<u32>()? as usize + 1;
        let (cos, sin) = self.tables(end, positions.device())?;
        let at = |t: Tensor| t.index_select(&flat, 0)?.reshape((batch, len, ()));
        Ok((at(cos)?, at(sin)?))
    }
}

/// The attention bias `(batch, len, len)`, shared by the heads: 0 where query `i` may read
/// key `j` (`j <= i` and `j` not padding), the lowest f32 elsewhere. A padding query reads
/// nothing, so its row is uniform and its output meaningless but finite.
pub(crate) fn causal_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, len) = mask.dims2()?;
    let keep: Vec<Vec<u32>> = mask.to_dtype(DType::U32)?.to_vec2()?;
    let mut bias = vec![f32::MIN; b * len * len];
    for (row, keep) in keep.iter().enumerate() {
        for i in 0..len {
            for (j, &k) in keep.iter().enumerate().take(i + 1) {
                if k != 0 {
                    bias[(row * len + i) * len + j] = 0.0;
                }
            }
        }
    }
    Ok(Tensor::from_vec(bias, (b, len, len), mask.device())?)
}
