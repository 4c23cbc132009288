//! Pretrained models that carry adapters.

mod bert;
mod classifier;

pub(crate) use bert::{repeat_members, Tokens};
pub use bert::{AdapterSpec, AdapterTargets, BertConfig, BertEncoder};
pub use classifier::BertClassifier;
