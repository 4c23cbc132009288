//! Sources of the standard-normal draws that IVON turns into weight samples.
//!
//! The default, [`PhiloxNormal`], is a seeded counter-based generator: the same seed gives
//! the same draws on every run and platform, and its whole state is two integers, so a
//! checkpoint restores it exactly. Implement [`NoiseSource`] to supply draws of your own,
//! for example to replay a trajectory recorded from the PyTorch reference.

mod philox;

pub(crate) use philox::{normal_batch, BATCH_BLOCKS};
pub use philox::{philox4x32_10, PhiloxNormal};

use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// A supplier of independent standard-normal draws, `z ~ N(0, I)`.
///
/// IVON asks for one vector per parameter group and weight sample, of the group's total
/// number of elements, in group order (as the reference calls `torch.randn`).
///
/// ```
/// use candle_core::{DType, Device};
/// use varlora::noise::{NoiseSource, PhiloxNormal};
///
/// let mut noise = PhiloxNormal::new(42);
/// let z = noise.standard_normal(5, DType::F32, &Device::Cpu)?;
/// assert_eq!(z.dims(), &[5]);
/// # Ok::<(), varlora::Error>(())
/// ```
pub trait NoiseSource: Send {
    /// Returns `numel` draws as a 1-D tensor of `dtype` on `device`.
    fn standard_normal(&mut self, numel: usize, dtype: DType, device: &Device) -> Result<Tensor>;

    /// The source's state, for checkpoints; `None` if it cannot be saved (the default).
    fn state(&self) -> Option<serde_json::Value> {
        None
    }

    /// Restores a state returned by [`NoiseSource::state`].
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let _ = state;
        Err(Error::Checkpoint(
            "this noise source cannot restore a saved state; resume with the default PhiloxNormal source".into(),
        ))
    }
}
