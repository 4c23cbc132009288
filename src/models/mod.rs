//! Pretrained models that carry adapters.

mod adapter_spec;
mod bert;
mod classifier;
mod host;
mod input;
mod llama;
mod norm;
mod proj;
mod saved;

pub use adapter_spec::AdapterSpec;
pub use bert::{BertConfig, BertEncoder};
pub use classifier::BertClassifier;
pub(crate) use input::{Embeddings, Tokens};
pub use llama::{
    check_memory, gguf_tokenizer, AnswerTokens, ClozeBatch, GgufDecoder, LlamaConfig, LlamaDecoder,
    RopeParameters,
};
pub(crate) use norm::Norm;
pub use saved::{LoadedClassifier, SavedAdapter, SavedClassifier};
