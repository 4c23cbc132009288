//! Optimizers that learn a posterior over the weights.

mod adamw;
mod blob;
mod ivon;
mod schedule;
mod scheduled_checkpoint;
mod shell;

pub use blob::{Blob, BlobOptimConfig, BlobSetup};
pub use schedule::{CallsPerUpdate, Schedule, Scheduled};
pub use shell::{NonFinite, Resumable};

pub use ivon::{GroupSettings, HessApprox, Ivon, IvonConfig, ParamGroup, ParamState, Position};
