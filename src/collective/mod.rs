//! Collective communication between the ranks of a data-parallel run: all-reduce and
//! barrier behind one [`Collective`] trait, with an in-process thread backend
//! ([`ThreadGroup`]) that the tests use and that serves multi-threaded CPU training, and
//! with the `nccl` feature an NCCL backend (`NcclCollective`), one process per GPU.
//!
//! [`crate::optim::Ivon::set_collective`] makes IVON average its gradient statistics
//! across ranks before each update.

#[cfg(feature = "nccl")]
mod nccl;
mod thread;

#[cfg(feature = "nccl")]
pub use nccl::{NcclCollective, NcclId};
pub use thread::{ThreadCollective, ThreadGroup};

use candle_core::Tensor;

use crate::Result;

/// How an all-reduce combines the ranks' buffers, elementwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum over ranks.
    Sum,
    /// The mean over ranks. The thread backend computes it as a running mean in rank
    /// order, `avg += (x_r - avg) / (r + 1)`: the same operations as IVON's running mean
    /// over samples, so `W` ranks of one sample each give the bits of one process with
    /// `W` samples.
    Mean,
    /// The maximum over ranks.
    Max,
}

/// The ranks of a data-parallel run, as one rank sees them.
///
/// Every rank calls the same operations in the same order with buffers of the same shape
/// and dtype; a backend reports what it can detect of a rank that does not (a timeout, a
/// mismatched buffer) as [`crate::Error::Collective`] on every rank instead of hanging.
pub trait Collective: Send + Sync + std::fmt::Debug {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// `t` (f32 or f64) combined elementwise across ranks by `op`; every rank gets the
    /// result, on `t`'s device.
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}
