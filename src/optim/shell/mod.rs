//! The plumbing every optimizer shares, written once: gathering and checking the
//! gradients of its vars, the policy for a gradient that holds NaN or Inf, its update and
//! skip counts, what it asks of its ranks in a data-parallel run, and the record a
//! checkpoint is written as. Each optimizer keeps its update rule (`ivon/math.rs`,
//! `adamw.rs`, `blob/rule.rs`) and what its record holds.

mod counts;
mod finite;
mod gradients;
pub(crate) mod ranks;
pub(crate) mod record;

pub use record::Resumable;

pub(crate) use counts::Counts;
pub use finite::NonFinite;
pub(crate) use finite::{screen, Verdict};
pub(crate) use gradients::{gather, Slot};
