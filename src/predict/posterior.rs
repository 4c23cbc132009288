//! The one interface every posterior offers to prediction.

use crate::Result;

/// A distribution over a model's weights that prediction can sample from: IVON's Gaussian,
/// and the Bayesian LoRA layers and ensembles to come.
///
/// Implementations set the model's weights, run the closure, and put the weights back
/// where they were, also when the closure fails.
pub trait Posterior {
    /// Runs `f` with the weights at posterior sample `k`. The same `k` gives the same
    /// weights while the posterior does not change, so a test set evaluated batch by batch
    /// sees one set of samples. (BLoB's Flipout samples per example instead: see
    /// [`crate::lora::BlobSampler`].)
    fn with_posterior_sample<R>(
        &mut self,
        k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R>;

    /// Runs `f` at the point estimate (the posterior mean, for IVON).
    fn with_point_estimate<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R>;
}

/// A test-time scale of a posterior's standard deviation must be finite and >= 0.
pub(crate) fn check_prediction_scale(scale: f64) -> Result<()> {
    if scale.is_finite() && scale >= 0.0 {
        return Ok(());
    }
    Err(crate::Error::InvalidConfig {
        field: "prediction_scale",
        value: scale.to_string(),
        expected: "finite, >= 0",
    })
}

/// A deterministic model as a posterior: every sample is the model itself, so its
/// epistemic uncertainty is zero. For baselines such as AdamW.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use varlora::predict::{predictive, PointMass};
/// let logits = Tensor::new(&[[2f32, 0.0]], &Device::Cpu)?;
/// let p = predictive(&mut PointMass, 4, false, || Ok(logits.clone()))?;
/// assert!(p.epistemic.to_vec1::<f64>()?[0] < 1e-12);
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct PointMass;

impl Posterior for PointMass {
    fn with_posterior_sample<R>(
        &mut self,
        _k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        Ok(f()?)
    }

    fn with_point_estimate<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        Ok(f()?)
    }
}
