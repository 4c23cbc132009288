//! Pretrained models that carry adapters.

mod bert;

pub use bert::{AdapterSpec, AdapterTargets, BertClassifier, BertConfig, BertEncoder};
