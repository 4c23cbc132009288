//! Several LoRA updates of one frozen layer in one forward pass, the rows carried
//! member-major: LoRA-Ensemble's members, or posterior samples of one LoRA evaluated
//! together ([`Adapter::with_stacked_weights`]).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Tensor;

use super::Adapter;
use crate::kernels::layers::FrozenLinear;
use crate::{Error, Result};

/// `W0 x + b + B_m A_m x` for `x` `(M * n, ..., in)`, its rows member-major (block `m`
/// of the leading rows for member `m`): the frozen product as one GEMM over all rows, the
/// updates as batched matmuls over `a` `(M, r, in)` and `b` `(M, out, r)`. Returns
/// `(M * n, ..., out)`.
pub(crate) fn members_forward(
    base: &FrozenLinear,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
) -> candle_core::Result<Tensor> {
    let (members, out_dim) = (a.dim(0)?, b.dim(1)?);
    let mut dims = x.dims().to_vec();
    let (rows, in_dim) = match dims.split_last() {
        Some((&in_dim, lead)) => (lead.iter().product::<usize>(), in_dim),
        None => candle_core::bail!("an adapter's input is a scalar"),
    };
    if rows % members != 0 {
        candle_core::bail!("{rows} rows do not split into {members} members");
    }
    let last = dims.len() - 1;
    dims[last] = out_dim;
    let x = x.reshape((members, rows / members, in_dim))?;
    let frozen = base.forward(&x)?;
    let delta = x.matmul(&a.transpose(1, 2)?)?.matmul(&b.transpose(1, 2)?)?;
    (frozen + delta)?.reshape(dims)
}

/// `S` weight samples of one [`super::LoraLinear`] evaluated in one forward pass: sample
/// `s` computes `W0 x + b + (alpha / r) B_s A_s x` on the `s`-th block of rows. Made by
/// [`Adapter::with_stacked_weights`], for prediction only.
#[derive(Clone, Debug)]
pub(crate) struct StackedLora {
    base: FrozenLinear,
    /// `(S, r, in)`.
    a: Tensor,
    /// `(S, out, r)`, the scale `alpha / r` folded in.
    b: Tensor,
}

impl StackedLora {
    /// The layer of `base` with `a` `(r, in)` and `b` `(out, r)` replaced by their stacked
    /// samples in `weights` under `a_name` and `b_name` (one that is not there, a tensor
    /// the posterior does not cover, is repeated), `samples` of each, `b` times `scale`.
    pub(crate) fn new(
        base: FrozenLinear,
        (a_name, a): (&str, &Tensor),
        (b_name, b): (&str, &Tensor),
        scale: f64,
        stacked: &mut HashMap<String, Tensor>,
        samples: usize,
    ) -> Result<Self> {
        let a = stacked_or_repeated(stacked, a_name, a, samples)?;
        let b = (stacked_or_repeated(stacked, b_name, b, samples)? * scale)?;
        Ok(Self { base, a, b })
    }
}

/// `stacked[name]`, taken out and checked to be `(samples, ..like)`, or `like` repeated
/// `samples` times.
pub(crate) fn stacked_or_repeated(
    stacked: &mut HashMap<String, Tensor>,
    name: &str,
    like: &Tensor,
    samples: usize,
) -> Result<Tensor> {
    let mut dims = vec![samples];
    dims.extend_from_slice(like.dims());
    let Some(t) = stacked.remove(name) else {
        return Ok(like
            .detach()
            .unsqueeze(0)?
            .broadcast_as(dims)?
            .contiguous()?);
    };
    if t.dims() != dims || t.dtype() != like.dtype() || !t.device().same_device(like.device()) {
        return Err(Error::ShapeMismatch(format!(
            "the stacked samples of {name} are {:?} {:?}: expected {dims:?} {:?} on the \
             layer's device",
            t.dims(),
            t.dtype(),
            like.dtype()
        )));
    }
    Ok(t.detach().contiguous()?)
}

impl Adapter for StackedLora {
    fn forward_rows(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        members_forward(&self.base, x, &self.a, &self.b)
    }

    fn detach(&self) -> Arc<dyn Adapter> {
        Arc::new(self.clone())
    }

    fn init(&self, _seed: u64) -> Result<()> {
        Err(Error::InvalidState(
            "stacked samples are for prediction: initialise the model they came from",
        ))
    }

    fn members(&self) -> usize {
        self.a.dims().first().copied().unwrap_or(1)
    }
}
