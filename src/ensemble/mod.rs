//! Cheap ensembles: LoRA-Ensemble (M adapters over one frozen model, one forward pass) and
//! ensemble distribution distillation into a single student with a Laplace head.

mod distill;
mod lora_ensemble;

pub use distill::{
    distillation_loss, laplace_nll, laplace_predictive, laplace_samples, LaplaceHead,
};
pub use lora_ensemble::LoraEnsembleLinear;
