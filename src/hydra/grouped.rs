//! Grouped primitives: `M` independent layers run as one batched op, each member reading
//! and writing only its own slice (block-diagonal weights in one tensor).
//!
//! Activations are laid out member-major, `(members, rows, width)`. Members of unequal
//! width are padded with zero rows and columns to the widest; a zero unit's output is
//! exactly zero and, because both its incoming and outgoing weights are zero, its gradient
//! is zero too, so padding stays padding through training.

use candle_core::{Tensor, D};

use crate::{Error, Result};

/// `M` linear layers `y_m = x_m W_m^T + b_m` as one batched matmul: weight
/// `(members, out, in)`, bias `(members, out)`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use varlora::hydra::GroupedLinear;
///
/// let dev = Device::Cpu;
/// let w = Tensor::randn(0f32, 1., (4, 3, 5), &dev)?; // 4 members, 5 -> 3
/// let layer = GroupedLinear::new(w, Tensor::zeros((4, 3), candle_core::DType::F32, &dev)?)?;
/// let y = layer.forward(&Tensor::ones((4, 7, 5), candle_core::DType::F32, &dev)?)?;
/// assert_eq!(y.dims(), &[4, 7, 3]);
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct GroupedLinear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl GroupedLinear {
    /// Checks that `bias` is `(members, out)` for `weight` `(members, out, in)`.
    pub fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (m, out, _) = weight.dims3().map_err(|_| {
            Error::InvalidInput(format!(
                "a grouped weight is (members, out, in), got {:?}",
                weight.dims()
            ))
        })?;
        if bias.dims() != [m, out] {
            return Err(Error::InvalidInput(format!(
                "a grouped bias for weight {:?} is [{m}, {out}], got {:?}",
                weight.dims(),
                bias.dims()
            )));
        }
        Ok(Self { weight, bias })
    }

    /// The weight `(members, out, in)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `(members, out)`.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// `(members, rows, in)` to `(members, rows, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, _, i) = self.weight.dims3()?;
        match x.dims() {
            [xm, _, xi] if *xm == m && *xi == i => {}
            d => {
                return Err(Error::ShapeMismatch(format!(
                    "a grouped linear of {m} members with {i} inputs got input {d:?}"
                )))
            }
        }
        Ok(x.matmul(&self.weight.transpose(1, 2)?)?
            .broadcast_add(&self.bias.unsqueeze(1)?)?)
    }
}

/// Layer norm over the last dimension of `(members, rows, width)` with each member's own
/// scale and shift `(members, width)`.
pub fn grouped_layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let (m, _, w) = x.dims3()?;
    if weight.dims() != [m, w] || bias.dims() != [m, w] {
        return Err(Error::InvalidInput(format!(
            "grouped layer norm of input {:?} needs weight and bias [{m}, {w}], got {:?} and {:?}",
            x.dims(),
            weight.dims(),
            bias.dims()
        )));
    }
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed
        .broadcast_mul(&weight.unsqueeze(1)?)?
        .broadcast_add(&bias.unsqueeze(1)?)?)
}
