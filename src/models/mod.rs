//! Pretrained models that carry adapters.

mod bert;
mod classifier;
mod input;
mod norm;
mod saved;

pub use bert::{AdapterSpec, AdapterTargets, BertConfig, BertEncoder};
pub use classifier::BertClassifier;
pub(crate) use input::{Embeddings, Tokens};
pub(crate) use norm::Norm;
pub use saved::{LoadedClassifier, SavedAdapter, SavedClassifier};
