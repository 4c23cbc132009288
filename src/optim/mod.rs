//! Optimizers that learn a posterior over the weights.
//!
//! Where things are:
//! - each optimizer's math, unfused, in one place: IVON's in `ivon/math.rs` (its fused
//!   CPU and CUDA kernels in `kernels/`, their contract in `kernels/contract.rs`), AdamW's
//!   per-var rule in `adamw.rs`, BLoB's KL step in `blob/rule.rs`;
//! - the plumbing they share in `shell/`: each gradient gathered and checked against its
//!   var, the non-finite policy ([`NonFinite`]) as a typed verdict, the update and skip
//!   counts, what a data-parallel run asks of its ranks, and the record a checkpoint is
//!   written as ([`Resumable`]);
//! - wrappers: [`Scheduled`] (a learning-rate schedule over any optimizer, saved with any
//!   [`Resumable`] one).
//!
//! What stays IVON's own: parameter groups, Monte Carlo samples per update and the
//! training sample's position, which no other optimizer here has.

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
