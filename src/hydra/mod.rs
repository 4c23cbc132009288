//! Hydra ensembles (Gabetni et al., ICLR 2026): members made by pruning a fine-tuned
//! transformer's attention heads and feed-forward neurons differently, merged into one
//! network with grouped layers, so that the ensemble predicts in one forward pass.
//!
//! 1. [`HydraClassifier::dense`] + [`HydraClassifier::taylor_importance`]: score every
//!    head and neuron of the fine-tuned model on calibration batches.
//! 2. [`plan_members`]: each member keeps its own subset ([`Selection::Weighted`] draws
//!    them by importance; [`Selection::TopK`] is the naive baseline).
//! 3. [`HydraClassifier::new`]: the merged network; train it briefly on the mean of the
//!    members' losses, predict with [`crate::predict::predictive_from_samples`].
//!
//! The choices the paper leaves open are in `docs/hydra.md`.

mod attention;
mod grouped;
mod importance;
mod network;
mod plan;

pub use attention::GroupedAttention;
pub use grouped::{grouped_layer_norm, GroupedLinear};
pub use importance::LabelledBatch;
pub use network::HydraClassifier;
pub use plan::{plan_members, Importance, MemberPlan, PruneConfig, Selection};
