//! Monte Carlo prediction over a posterior, and the split of its uncertainty into
//! aleatoric and epistemic parts.

mod gaussian;
mod posterior;
mod predictive;

pub(crate) use gaussian::prediction_normals;
pub use gaussian::GaussianPosterior;
pub(crate) use posterior::check_prediction_scale;
pub use posterior::{PointMass, Posterior};
pub use predictive::{
    predictive, predictive_at_point, predictive_from_samples, predictive_stacked, sample_logits,
    Predictive,
};
