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
    /// sees one set of samples.
    fn with_posterior_sample<R>(
        &mut self,
        k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R>;

    /// Runs `f` at the point estimate (the posterior mean, for IVON).
    fn with_point_estimate<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R>;
}
