//! Low-rank adapters (LoRA, Hu et al. 2021) on frozen linear layers, and their Bayesian
//! version BLoB.

mod blob;
mod linear;

pub use blob::{kl_period, kl_weight, BayesianLoraLinear, BlobConfig, BlobLayerVars, BlobSampler};
pub use linear::{LoraConfig, LoraLinear};
