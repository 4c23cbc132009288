//! LoRA-Ensemble (Halbheer, Muhlematter et al., 2024; reference prs-eth/LoRA-Ensemble).

use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::{init::Init, Linear, VarBuilder};

use crate::kernels::layers::FrozenLinear;
use crate::lora::{init_lora_pair, members_forward, Adapter};
use crate::{Error, Result};

/// `M` LoRA adapters on one frozen `Linear`, all applied in one forward pass:
/// member `m` computes `W0 x + b + B_m A_m x` (no `alpha / r` scale, as the reference).
///
/// Inputs and outputs carry the member as their leading dimension: `(M, ..., in)` in,
/// `(M, ..., out)` out, so that a stack of layers keeps the members apart. The frozen
/// product is one GEMM over all rows; the adapters are batched matmuls over the stacked
/// `A` `(M, r, in)` and `B` `(M, out, r)`. Init as the reference: `B = 0`, `A`
/// Xavier-uniform with gain 10 (the members' diversity comes from these draws).
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{Linear, VarBuilder, VarMap};
/// use varlora::ensemble::LoraEnsembleLinear;
///
/// let dev = Device::Cpu;
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let base = Linear::new(Tensor::randn(0f32, 1., (3, 5), &dev)?, None);
/// let layer = LoraEnsembleLinear::new(base, 4, 2, vb.pp("q"))?;
/// let x = Tensor::ones((2, 5), DType::F32, &dev)?; // one batch for all members
/// let y = layer.forward(&LoraEnsembleLinear::repeat_members(&x, 4)?)?;
/// assert_eq!(y.dims(), &[4, 2, 3]);
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LoraEnsembleLinear {
    base: FrozenLinear,
    a: Tensor,
    b: Tensor,
    members: usize,
    prefix: String,
}

/// Xavier-uniform's bound for a member's `(r, in)` matrix with gain 10, the reference's
/// init of `A`: `10 sqrt(6 / (in + r))`.
fn xavier_bound(in_dim: usize, rank: usize) -> f64 {
    10.0 * (6.0 / (in_dim + rank) as f64).sqrt()
}

impl LoraEnsembleLinear {
    /// `members` adapters of rank `rank` on `base` (out x in), named "lora_a" `(M, r, in)`
    /// and "lora_b" `(M, out, r)` under `vb`.
    pub fn new(base: Linear, members: usize, rank: usize, vb: VarBuilder) -> Result<Self> {
        if members == 0 || rank == 0 {
            return Err(Error::InvalidConfig {
                field: if members == 0 { "members" } else { "rank" },
                value: "0".into(),
                expected: ">= 1",
            });
        }
        let (out_dim, in_dim) = base.weight().dims2()?;
        let bound = xavier_bound(in_dim, rank);
        let a = vb.get_with_hints(
            (members, rank, in_dim),
            "lora_a",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let b = vb.get_with_hints((members, out_dim, rank), "lora_b", Init::Const(0.0))?;
        Ok(Self {
            base: FrozenLinear::new(base),
            a,
            b,
            members,
            prefix: vb.prefix(),
        })
    }

    /// A copy for inference without gradient tracking, sharing the weights (see
    /// [`crate::lora::LoraLinear::detach`]).
    pub fn detach(&self) -> Self {
        Self {
            a: self.a.detach(),
            b: self.b.detach(),
            ..self.clone()
        }
    }

    /// The number of members `M`.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The stacked `A` `(M, r, in)`.
    pub fn a(&self) -> &Tensor {
        &self.a
    }

    /// The stacked `B` `(M, out, r)`.
    pub fn b(&self) -> &Tensor {
        &self.b
    }

    /// The frozen layer.
    pub fn base(&self) -> &Linear {
        self.base.linear()
    }

    /// `x` repeated for `members` members along a new leading dimension.
    pub fn repeat_members(x: &Tensor, members: usize) -> Result<Tensor> {
        let mut dims = vec![members];
        dims.extend_from_slice(x.dims());
        Ok(x.unsqueeze(0)?.broadcast_as(dims)?.contiguous()?)
    }
}

impl Module for LoraEnsembleLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        if dims.first() != Some(&self.members) || dims.len() < 2 {
            candle_core::bail!(
                "LoRA-Ensemble input of shape {dims:?}: expected ({}, ..., in)",
                self.members
            );
        }
        self.forward_rows(x, false)
    }
}

impl Adapter for LoraEnsembleLinear {
    /// Rows are member-major: `(M * batch, ..., in)` is read as `(M, batch * ..., in)`.
    /// There is no dropout to switch: the reference trains the members without it.
    fn forward_rows(&self, x: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        members_forward(&self.base, x, &self.a, &self.b)
    }

    fn detach(&self) -> Arc<dyn Adapter> {
        Arc::new(LoraEnsembleLinear::detach(self))
    }

    /// As the reference: each member's `A` Xavier-uniform with gain 10, `B` zero.
    fn init(&self, seed: u64) -> Result<()> {
        let (_, rank, in_dim) = self.a.dims3()?;
        let bound = xavier_bound(in_dim, rank);
        init_lora_pair(&self.prefix, seed, &self.a, bound, &self.b)
    }

    fn members(&self) -> usize {
        self.members
    }
}
