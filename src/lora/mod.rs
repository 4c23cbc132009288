//! Low-rank adapters (LoRA, Hu et al. 2021) on frozen linear layers.

mod linear;

pub use linear::{LoraConfig, LoraLinear};
