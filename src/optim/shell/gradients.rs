//! Each var's gradient from a `GradStore`, checked against the var before any state
//! changes: a gradient of another shape, dtype or device is a typed error naming the var.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{Error, Result};

/// Where a var sits: its group and its index in the group, as errors name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub group: usize,
    pub var: usize,
}

/// The gradient of each var in `vars`, checked; `None` for a var without one (frozen, or
/// unused by the loss), which each optimizer treats as its reference does.
pub(crate) fn gather<'a>(
    vars: impl IntoIterator<Item = (Slot, &'a Var)>,
    grads: &GradStore,
) -> Result<Vec<Option<Tensor>>> {
    vars.into_iter()
        .map(|(slot, var)| match grads.get(var.as_tensor()) {
            Some(g) => Ok(Some(checked(slot, var, g)?.clone())),
            None => Ok(None),
        })
        .collect()
}

/// `g`, if it has `var`'s shape, dtype and device.
fn checked<'g>(slot: Slot, var: &Var, g: &'g Tensor) -> Result<&'g Tensor> {
    let detail = if g.shape() != var.shape() {
        format!("shape {:?}, var {:?}", g.shape(), var.shape())
    } else if g.dtype() != var.dtype() {
        format!("dtype {:?}, var {:?}", g.dtype(), var.dtype())
    } else if !g.device().same_device(var.device()) {
        format!(
            "device {:?}, var {:?}",
            g.device().location(),
            var.device().location()
        )
    } else {
        return Ok(g);
    };
    Err(Error::GradientMismatch {
        group: slot.group,
        var: slot.var,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn slot(var: usize) -> Slot {
        Slot { group: 0, var }
    }

    #[test]
    fn missing_gradients_are_none_and_mismatches_name_the_var() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::ones(3, DType::F32, &dev)?;
        let b = Var::ones((2, 2), DType::F32, &dev)?;
        let loss = a.as_tensor().sum_all()?;
        let grads = loss.backward()?;
        let vars = [(slot(0), &a), (slot(1), &b)];
        let gathered = gather(vars, &grads)?;
        assert_eq!(
            gathered[0].as_ref().map(|g| g.dims().to_vec()),
            Some(vec![3])
        );
        assert!(gathered[1].is_none());

        let mut wrong = loss.backward()?;
        wrong.insert(b.as_tensor(), Tensor::ones(4, DType::F32, &dev)?);
        match gather(vars, &wrong) {
            Err(Error::GradientMismatch {
                group: 0,
                var: 1,
                detail,
            }) => {
                assert!(detail.contains("shape"), "{detail}")
            }
            other => panic!("expected a mismatch of var 1, got {other:?}"),
        }
        let mut wrong = loss.backward()?;
        wrong.insert(a.as_tensor(), Tensor::ones(3, DType::F64, &dev)?);
        assert!(matches!(
            gather(vars, &wrong),
            Err(Error::GradientMismatch { var: 0, .. })
        ));
        Ok(())
    }
}
