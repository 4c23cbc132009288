//! Monte Carlo prediction over a posterior, and the split of its uncertainty into
//! aleatoric and epistemic parts.

mod gaussian;
mod posterior;
mod predictive;

pub use gaussian::GaussianPosterior;
pub(crate) use gaussian::PREDICTION_STREAM;
pub use posterior::{PointMass, Posterior};
pub use predictive::{
    predictive, predictive_at_point, predictive_from_samples, sample_logits, Predictive,
};
