//! What a data-parallel optimizer asks of its ranks, written once: whether any rank found
//! a problem, and the mean over ranks of its statistics in one all-reduce. Without a
//! collective each is this rank's own answer.

use candle_core::{Device, Tensor};

use crate::collective::{Collective, ReduceOp};
use crate::{Error, Result};

/// Whether any rank says yes, given this rank's `here`.
pub(crate) fn any_rank(
    ranks: Option<&dyn Collective>,
    here: bool,
    device: &Device,
) -> Result<bool> {
    let Some(c) = ranks else {
        return Ok(here);
    };
    let flag = Tensor::new(&[f32::from(u8::from(here))], device)?;
    Ok(c.all_reduce(&flag, ReduceOp::Max)?.to_vec1::<f32>()?[0] > 0.0)
}

/// The mean over ranks of `tensors`, flattened and laid end to end in their order, from
/// one all-reduce; `None` without a collective or without tensors.
pub(crate) fn mean_over_ranks(
    ranks: Option<&dyn Collective>,
    tensors: &[Tensor],
) -> Result<Option<Tensor>> {
    let Some(c) = ranks else {
        return Ok(None);
    };
    if tensors.is_empty() {
        return Ok(None);
    }
    let parts = tensors
        .iter()
        .map(|t| t.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let flat = Tensor::cat(&parts, 0)?;
    let mean = c.all_reduce(&flat, ReduceOp::Mean)?;
    if mean.dtype() != flat.dtype() || mean.dims() != flat.dims() {
        return Err(Error::Collective(format!(
            "the all-reduce of {:?} {:?} returned {:?} {:?}",
            flat.dims(),
            flat.dtype(),
            mean.dims(),
            mean.dtype()
        )));
    }
    Ok(Some(mean))
}
