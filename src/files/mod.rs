//! Files the crate writes and reads: every one carries its kind, a format version and a
//! CRC-32 of its metadata and tensors, checked on loading, and LoRA
//! adapters in PEFT's layout (see [`peft`]).

pub mod peft;
pub(crate) mod sealed;
mod vars;

pub(crate) use vars::{lock_vars, set_vars};
