//! A linear layer of a pretrained model: frozen, or carrying an adapter. Every model's
//! linear layers are these, so that what an adapter does is written once.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

use crate::kernels::layers::FrozenLinear;
use crate::lora::{Adapter, AdapterBuilder};
use crate::Result;

/// A linear layer, frozen or with an adapter.
#[derive(Clone, Debug)]
pub(crate) enum Proj {
    Frozen(FrozenLinear),
    Adapted(Arc<dyn Adapter>),
}

impl Proj {
    /// The `(d_in, d_out, bias)` layer `name` of `base`, with an adapter from `builder`
    /// under `adapters.pp(name)` if one is given.
    pub(crate) fn load(
        (d_in, d_out, bias): (usize, usize, bool),
        name: &str,
        base: &VarBuilder,
        adapters: &VarBuilder,
        builder: Option<&dyn AdapterBuilder>,
    ) -> Result<Self> {
        let frozen = if bias {
            linear(d_in, d_out, base.pp(name))?
        } else {
            linear_no_bias(d_in, d_out, base.pp(name))?
        };
        // A bf16 base keeps its weight in bf16 (the frozen kernel widens it as it goes)
        // and its bias, which is small, in f32.
        let frozen = match frozen.bias() {
            Some(b) if b.dtype() == DType::BF16 => {
                Linear::new(frozen.weight().clone(), Some(b.to_dtype(DType::F32)?))
            }
            _ => frozen,
        };
        Ok(match builder {
            None => Proj::Frozen(FrozenLinear::new(frozen)),
            Some(b) => Proj::Adapted(b.build(frozen, adapters.pp(name))?),
        })
    }

    pub(crate) fn detach(&self) -> Self {
        match self {
            Proj::Frozen(l) => Proj::Frozen(l.clone()),
            Proj::Adapted(a) => Proj::Adapted(a.detach()),
        }
    }

    pub(crate) fn adapter(&self) -> Option<&dyn Adapter> {
        match self {
            Proj::Frozen(_) => None,
            Proj::Adapted(a) => Some(a.as_ref()),
        }
    }

    /// The layer for `samples` stacked weight samples (see
    /// [`Adapter::with_stacked_weights`]).
    pub(crate) fn stacked(
        &self,
        stacked: &mut HashMap<String, Tensor>,
        samples: usize,
    ) -> Result<Self> {
        Ok(match self {
            Proj::Frozen(l) => Proj::Frozen(l.clone()),
            Proj::Adapted(a) => Proj::Adapted(a.with_stacked_weights(stacked, samples)?),
        })
    }

    /// The layer with its adapter's update folded in.
    pub(crate) fn merged(&self) -> Result<Linear> {
        match self {
            Proj::Frozen(l) => Ok(l.linear().clone()),
            Proj::Adapted(a) => a.merged_linear(),
        }
    }
}

impl ModuleT for Proj {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Proj::Frozen(l) => l.forward(x),
            Proj::Adapted(a) => a.forward_rows(x, train),
        }
    }
}
