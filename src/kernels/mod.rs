//! Fused kernels: IVON's update, one pass over memory per step and tensor, and the
//! layer ops of the models (linear, layer norm, softmax, GELU, token gather) with their
//! backward passes ([`layers`]).
//!
//! IVON's tensor-op path in `optim::ivon` is the readable reference; these kernels compute the
//! same floating-point operations in the same order, so their results are bit-identical
//! to it (the tests compare the two).

mod contract;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
#[cfg(test)]
mod cuda_source;
mod finite;
pub(crate) mod layers;

pub(crate) use contract::{HESS, MEAN, MOMENTUM, NOISE, ROWS};
pub(crate) use finite::all_finite;

use candle_core::{Tensor, Var};

/// One fused IVON step for one var, on the var's device: see [`cpu::ivon_step`] (and
/// `cuda::ivon_step` with the `cuda` feature).
pub(crate) fn ivon_step(
    var: &Var,
    state: &Tensor,
    grad: &Tensor,
    draws: Draws,
    c: &IvonCoeffs,
) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    if var.device().is_cuda() {
        return cuda::ivon_step(var, state, grad, draws, c);
    }
    cpu::ivon_step(var, state, grad, draws, c)
}

/// Whether the fused kernel runs on `device`: the CPU, and CUDA with the `cuda` feature.
pub(crate) fn fused_on(device: &candle_core::Device) -> bool {
    device.is_cpu() || (cfg!(feature = "cuda") && device.is_cuda())
}

/// IVON's scalar coefficients for one group and step, each rounded once from f64 to f32
/// as the tensor-op path rounds them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IvonCoeffs {
    pub beta1: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `0.5 (1 - beta2)^2`.
    pub correction: f32,
    pub weight_decay: f32,
    pub ess: f32,
    /// The learning rate after `rescale_lr`.
    pub lr: f32,
    /// `1 - beta1^t` with `debias`.
    pub debias: Option<f32>,
    /// Infinite for no clipping.
    pub clip_radius: f32,
    /// The price estimator (else gradsq).
    pub price: bool,
    /// The gradient buffer holds `2n` values: the ranks' mean gradient, then their mean
    /// Hessian statistic (data-parallel IVON), instead of this rank's `n` gradients.
    pub averaged: bool,
}

#[cfg(test)]
impl IvonCoeffs {
    /// Coefficients for the kernels' unit tests, the rest fixed at typical values.
    pub(crate) fn for_tests(price: bool, debias: Option<f32>, clip_radius: f32) -> Self {
        Self {
            beta1: 0.9,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 0.001,
            correction: 5e-7,
            weight_decay: 1e-4,
            ess: 1000.0,
            lr: 0.05,
            debias,
            clip_radius,
            price,
            averaged: false,
        }
    }
}

/// Where the next sample's standard-normal draws come from: the request of a group that
/// starts at counter `block` of `seed`'s Philox stream, from its element `offset` on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Draws {
    pub seed: u64,
    pub block: u64,
    pub offset: usize,
}
