//! Low-rank adapters (LoRA, Hu et al. 2021) on frozen linear layers, and their Bayesian
//! version BLoB.

mod adapter;
mod blob;
mod dropout;
mod init;
mod linear;
mod sampler;
mod stacked;
mod targets;

pub use adapter::{blob_layers, total_kl, Adapter, AdapterBuilder};
pub use blob::{kl_period, kl_weight, BayesianLoraLinear, BlobConfig, BlobLayerVars, BlobSampler};
pub use dropout::McDropout;
pub(crate) use init::{
    init_lora_pair, kaiming_uniform_bound, seeded_uniform, set_uniform, var_name,
};
pub use linear::{LoraConfig, LoraLinear};
pub(crate) use stacked::{members_forward, stacked_or_repeated};
pub use targets::TargetModules;
