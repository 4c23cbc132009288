//! Pretrained models that carry adapters.

mod bert;
mod classifier;

pub use bert::{AdapterSpec, AdapterTargets, BertConfig, BertEncoder};
pub use classifier::BertClassifier;
