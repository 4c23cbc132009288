//! The `Adapter` trait: what a model asks of the trainable update on each adapted layer,
//! so that it holds LoRA, BLoB, LoRA-Ensemble or an adapter of your own alike.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use super::BlobLayerVars;
use crate::{Error, Result};

/// A frozen linear layer with a trainable update, as [`crate::models::BertEncoder`] holds
/// it on each targeted layer. [`super::LoraLinear`], [`super::BayesianLoraLinear`] and
/// [`crate::ensemble::LoraEnsembleLinear`] implement it.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{Linear, VarBuilder, VarMap};
/// use varlora::lora::{Adapter, LoraConfig, LoraLinear};
///
/// let dev = Device::Cpu;
/// let varmap = VarMap::new();
/// let base = Linear::new(Tensor::ones((4, 6), DType::F32, &dev)?, None);
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let layer = LoraLinear::new(base, LoraConfig::new(2), vb.pp("q"))?;
/// layer.init(7)?; // the same seed gives the same A
/// let y = layer.forward_rows(&Tensor::ones((2, 3, 6), DType::F32, &dev)?, false)?;
/// assert_eq!(y.dims(), &[2, 3, 4]);
/// assert!(layer.kl()?.is_none()); // not Bayesian
/// # Ok::<(), varlora::Error>(())
/// ```
pub trait Adapter: std::fmt::Debug + Send + Sync {
    /// The layer's output for `x` `(..., in)`, with dropout when `train`. An adapter with
    /// several members reads the leading rows as member-major: `M` blocks of equal size,
    /// block `m` for member `m`.
    fn forward_rows(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor>;

    /// A copy for inference without gradient tracking, sharing the weights.
    fn detach(&self) -> Arc<dyn Adapter>;

    /// Sets the trainable tensors to draws seeded by `seed` and each var's name, from the
    /// distributions of the method's reference implementation: the same seed and names
    /// give the same values. Errors on a layer whose tensors are not vars (a detached
    /// copy, or one built from loaded weights).
    fn init(&self, seed: u64) -> Result<()>;

    /// The KL divergence of a Bayesian adapter's posterior from its prior (an f64 scalar,
    /// differentiable); `None` for a deterministic one.
    fn kl(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The vars of a BLoB-style Gaussian posterior, for [`crate::optim::Blob`]; `None`
    /// for other adapters.
    fn posterior_vars(&self) -> Result<Option<BlobLayerVars>> {
        Ok(None)
    }

    /// The number of members carried in the rows (1 unless an ensemble).
    fn members(&self) -> usize {
        1
    }

    /// This layer for `samples` weight samples evaluated in one forward pass, with its
    /// rows carried member-major as an ensemble's members are: `stacked` maps a var's
    /// name to its samples stacked `(samples, ..var shape)`
    /// ([`crate::predict::GaussianPosterior::stacked_samples`]), and the layer takes the
    /// entries of its vars out of it; a var it lacks is the same in every sample.
    /// [`super::LoraLinear`] supports it; other adapters get an error (predict them
    /// sample by sample).
    fn with_stacked_weights(
        &self,
        _stacked: &mut HashMap<String, Tensor>,
        _samples: usize,
    ) -> Result<Arc<dyn Adapter>> {
        Err(Error::Unsupported(
            "only plain LoRA adapters evaluate stacked weight samples: predict this model \
             sample by sample (predict::predictive)"
                .into(),
        ))
    }

    /// The frozen layer with the update folded in (PEFT's `merge_and_unload`): for a
    /// posterior, its mean. An adapter without one merged weight (an ensemble's members)
    /// gets an error.
    fn merged_linear(&self) -> Result<Linear> {
        Err(Error::Unsupported(
            "this adapter has no single merged weight (an ensemble has one per member)".into(),
        ))
    }
}

/// Makes the adapter of each layer a model targets, from the frozen layer and a
/// `VarBuilder` positioned at the layer's name. [`crate::models::AdapterSpec`] builds the
/// crate's adapters; implement it to put your own on the encoder.
pub trait AdapterBuilder {
    /// The adapter for `base` (out x in), its vars created through `vb`.
    fn build(&self, base: Linear, vb: VarBuilder) -> Result<Arc<dyn Adapter>>;

    /// The number of members each adapter carries (1 unless an ensemble).
    fn members(&self) -> usize {
        1
    }
}

/// The vars of every BLoB layer among `adapters`, in their order: what
/// [`crate::optim::Blob`] trains. Empty without BLoB adapters. Each model's
/// `blob_layers` is this over its adapters.
pub fn blob_layers<'a>(
    adapters: impl IntoIterator<Item = &'a dyn Adapter>,
) -> Result<Vec<BlobLayerVars>> {
    let mut layers = Vec::new();
    for a in adapters {
        layers.extend(a.posterior_vars()?);
    }
    Ok(layers)
}

/// The KL divergence of every Bayesian adapter among `adapters` from its prior, summed
/// in f64 on `device` (0 without one): the term BLoB's training adds, differentiable.
pub fn total_kl<'a>(
    adapters: impl IntoIterator<Item = &'a dyn Adapter>,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let mut total = Tensor::new(0f64, device)?;
    for a in adapters {
        if let Some(kl) = a.kl()? {
            total = (total + kl)?;
        }
    }
    Ok(total)
}
