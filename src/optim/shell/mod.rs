//! The plumbing every optimizer shares, written once: gathering and checking the
//! gradients of its vars, and the policy for a gradient that holds NaN or Inf. Each
//! optimizer keeps only its update rule (`ivon/math.rs`, `adamw.rs`, `blob/rule.rs`).

mod finite;
mod gradients;

pub use finite::NonFinite;
pub(crate) use finite::{screen, Verdict};
pub(crate) use gradients::{gather, Missing, Slot};
