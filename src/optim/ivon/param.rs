//! The state IVON keeps for one var.

use candle_core::{Tensor, Var};

use crate::Result;

// The rows of the state, as the fused kernels read them (written once, in
// `kernels::contract`).
pub(super) use crate::kernels::{HESS, MEAN, MOMENTUM, NOISE, ROWS};

/// The state IVON keeps for one var: the posterior mean `m`, the Hessian estimate `h`, the
/// momentum and the current sample's noise, held as the rows of one `(ROWS, numel)`
/// tensor so that the fused kernel updates them in one pass, in place.
///
/// The accessors return views of that live state: the next step overwrites them in place.
/// Call `copy()` on one to keep a snapshot.
#[derive(Clone, Debug)]
pub struct ParamState {
    pub(super) name: Option<String>,
    pub(super) var: Var,
    pub(super) state: Tensor,
    pub(super) sampled: bool,
    pub(super) avg_grad: Option<Tensor>,
    pub(super) avg_hess: Option<Tensor>,
}

impl ParamState {
    /// State for `var`: mean at the var's value, `h = hess_init`, zero momentum.
    pub(super) fn new(name: Option<String>, var: Var, hess_init: f64) -> Result<Self> {
        let mean = var.as_tensor().flatten_all()?;
        let mut rows = vec![mean.zeros_like()?; ROWS];
        rows[HESS] = (mean.ones_like()? * hess_init)?;
        rows[MEAN] = mean;
        let state = Tensor::stack(&rows, 0)?;
        Ok(Self {
            name,
            var,
            state,
            sampled: false,
            avg_grad: None,
            avg_hess: None,
        })
    }

    /// Row `i` of the state, in the var's shape.
    pub(super) fn row(&self, i: usize) -> Result<Tensor> {
        Ok(self.state.get(i)?.reshape(self.var.shape())?)
    }

    /// Overwrites row `i` of the state with `t` (the var's shape, a storage of its own).
    pub(super) fn set_row(&self, i: usize, t: &Tensor) -> Result<()> {
        // An empty row has nothing to write, and candle's `slice_set` refuses one.
        if self.var.elem_count() == 0 {
            return Ok(());
        }
        Ok(self
            .state
            .slice_set(&t.flatten_all()?.unsqueeze(0)?, 0, i)?)
    }

    /// The var's name, if its group was built from names.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The var this state belongs to.
    pub fn var(&self) -> &Var {
        &self.var
    }

    /// The posterior mean `m`.
    pub fn mean(&self) -> Result<Tensor> {
        self.row(MEAN)
    }

    /// The Hessian-diagonal estimate `h`.
    pub fn hess(&self) -> Result<Tensor> {
        self.row(HESS)
    }

    /// The gradient momentum `g`.
    pub fn momentum(&self) -> Result<Tensor> {
        self.row(MOMENTUM)
    }

    /// The current training sample's offset from the mean, `theta - m`, while the vars
    /// stand at a training sample.
    pub fn noise(&self) -> Result<Option<Tensor>> {
        if self.sampled {
            Ok(Some(self.row(NOISE)?))
        } else {
            Ok(None)
        }
    }

    /// The running mean of the gradients collected for the next update.
    pub fn avg_grad(&self) -> Option<&Tensor> {
        self.avg_grad.as_ref()
    }
}
