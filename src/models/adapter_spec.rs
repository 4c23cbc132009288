//! The crate's own adapters as one [`AdapterBuilder`], for any model that takes one.

use std::sync::Arc;

use candle_nn::{Linear, VarBuilder};

use crate::ensemble::LoraEnsembleLinear;
use crate::lora::{
    Adapter, AdapterBuilder, BayesianLoraLinear, BlobConfig, BlobSampler, LoraConfig, LoraLinear,
    McDropout,
};
use crate::Result;

/// The crate's adapters, to put on the targeted layers; it is an [`AdapterBuilder`], so
/// an adapter of your own can take its place.
#[derive(Clone, Debug)]
pub enum AdapterSpec {
    /// Plain LoRA.
    Lora(LoraConfig),
    /// LoRA whose dropout masks come from the model's [`McDropout`]: MC dropout.
    McDropout(LoraConfig, McDropout),
    /// BLoB, drawing from the model's sampler.
    Blob(BlobConfig, BlobSampler),
    /// LoRA-Ensemble: `members` adapters of rank `rank` per targeted layer (the reference
    /// targets query, key, value and attention output). The encoder then carries the
    /// members in its batch dimension, member-major: its outputs have `members * batch`
    /// rows.
    Ensemble {
        /// Number of members `M`.
        members: usize,
        /// Rank of each member's adapter.
        rank: usize,
    },
}

impl AdapterBuilder for AdapterSpec {
    fn build(&self, base: Linear, vb: VarBuilder) -> Result<Arc<dyn Adapter>> {
        Ok(match self {
            AdapterSpec::Lora(c) => Arc::new(LoraLinear::new(base, c.clone(), vb)?),
            AdapterSpec::McDropout(c, mc) => {
                Arc::new(LoraLinear::with_mc_dropout(base, c.clone(), vb, mc)?)
            }
            AdapterSpec::Blob(c, s) => Arc::new(BayesianLoraLinear::new(base, c.clone(), vb, s)?),
            AdapterSpec::Ensemble { members, rank } => {
                Arc::new(LoraEnsembleLinear::new(base, *members, *rank, vb)?)
            }
        })
    }

    fn members(&self) -> usize {
        match self {
            AdapterSpec::Ensemble { members, .. } => *members,
            _ => 1,
        }
    }
}
