//! IVON's elementwise formulas as candle tensor ops, one function per line of the
//! reference (`ivon-opt` 0.1.3, `_ivon.py`).
//!
//! To agree with the reference in f32, each scalar coefficient is evaluated in f64 and
//! rounded once to the tensor's dtype (candle's `tensor * f64` does that), divisions by a
//! scalar are true divisions (candle's `tensor / f64` multiplies by the reciprocal, so it is
//! not used), and the reference's association order is kept.

use candle_core::Tensor;

use super::config::{GroupSettings, HessApprox, IvonConfig};
use crate::kernels::IvonCoeffs;
use crate::Result;

/// The learning rate after `rescale_lr` and the debias factor `1 - beta1^t` (`None`
/// without `debias`) of update `t`.
pub(super) fn step_scalars(s: &GroupSettings, config: &IvonConfig, t: u64) -> (f64, Option<f64>) {
    let lr = if config.rescale_lr {
        s.lr * (s.hess_init + s.weight_decay)
    } else {
        s.lr
    };
    (lr, config.debias.then(|| 1.0 - s.beta1.powf(t as f64)))
}

/// The coefficients of update `t` for the fused kernel, rounded as the tensor ops round
/// them.
pub(super) fn coeffs_f32(
    s: &GroupSettings,
    config: &IvonConfig,
    t: u64,
    price: bool,
    averaged: bool,
) -> IvonCoeffs {
    let (lr, debias) = step_scalars(s, config, t);
    IvonCoeffs {
        beta1: s.beta1 as f32,
        one_minus_beta1: (1.0 - s.beta1) as f32,
        beta2: s.beta2 as f32,
        one_minus_beta2: (1.0 - s.beta2) as f32,
        correction: (0.5 * (1.0 - s.beta2).powi(2)) as f32,
        weight_decay: s.weight_decay as f32,
        ess: s.ess as f32,
        lr: lr as f32,
        debias: debias.map(|bc| bc as f32),
        clip_radius: s.clip_radius as f32,
        price,
        averaged,
    }
}

/// A 0-d tensor of `like`'s dtype and device holding `value` rounded once.
fn scalar(value: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::new(value, like.device())?.to_dtype(like.dtype())?)
}

/// `z / sqrt(ess * (h + wd))`: a draw from N(0, 1 / (ess (h + wd))).
pub(super) fn noise(z: &Tensor, hess: &Tensor, s: &GroupSettings) -> Result<Tensor> {
    let precision = ((hess + s.weight_decay)? * s.ess)?;
    Ok(z.div(&precision.sqrt()?)?)
}

/// One sample's Hessian statistic: the noise times the gradient (the reparameterisation
/// or "price" estimator) or the squared gradient (gradsq).
pub(super) fn hess_sample(noise: &Tensor, g: &Tensor, approx: HessApprox) -> Result<Tensor> {
    Ok(match approx {
        HessApprox::Price => (noise * g)?,
        HessApprox::Gradsq => g.sqr()?,
    })
}

/// Welford's running mean: `new` if it is the first value, else `avg + (new - avg) / count`.
pub(super) fn welford(avg: Option<&Tensor>, new: Tensor, count: usize) -> Result<Tensor> {
    match avg {
        None => Ok(new),
        Some(avg) => {
            let step = (new - avg)?.broadcast_div(&scalar(count as f64, avg)?)?;
            Ok((avg + step)?)
        }
    }
}

/// `beta1 * g + (1 - beta1) * avg_grad`.
pub(super) fn momentum(g: &Tensor, avg_grad: &Tensor, s: &GroupSettings) -> Result<Tensor> {
    Ok(((g * s.beta1)? + (avg_grad * (1.0 - s.beta1))?)?)
}

/// The Hessian update with its second-order correction, which uses the old `h`:
/// `beta2 h + (1 - beta2) f + 0.5 (1 - beta2)^2 (h - f)^2 / (h + wd)`, where `f` is
/// `ess * avg_nxg * (h + wd)` (price) or `ess * avg_gsq` (gradsq).
pub(super) fn hess(
    h: &Tensor,
    avg_hess: &Tensor,
    approx: HessApprox,
    s: &GroupSettings,
) -> Result<Tensor> {
    let h_wd = (h + s.weight_decay)?;
    let f = match approx {
        HessApprox::Price => ((avg_hess * &h_wd)? * s.ess)?,
        HessApprox::Gradsq => (avg_hess * s.ess)?,
    };
    let correction = (((h - &f)?.sqr()? * (0.5 * (1.0 - s.beta2).powi(2)))? / &h_wd)?;
    Ok((((h * s.beta2)? + (f * (1.0 - s.beta2))?)? + correction)?)
}

/// `m - lr_t * clip((g / bc + wd m) / (h_new + wd), -clip_radius, clip_radius)`.
///
/// `lr_t` is `lr * (hess_init + wd)` with `rescale_lr`, and `bc` is `1 - beta1^t` with
/// `debias` (`None` without).
pub(super) fn mean(
    m: &Tensor,
    g: &Tensor,
    h_new: &Tensor,
    s: &GroupSettings,
    lr_t: f64,
    bc: Option<f64>,
) -> Result<Tensor> {
    let g = match bc {
        Some(bc) => g.broadcast_div(&scalar(bc, g)?)?,
        None => g.clone(),
    };
    let mut step = ((g + (m * s.weight_decay)?)? / (h_new + s.weight_decay)?)?;
    if s.clip_radius.is_finite() {
        step = step.clamp(-s.clip_radius, s.clip_radius)?;
    }
    Ok((m - (step * lr_t)?)?)
}

/// `1 / sqrt(ess * (h + wd))`, the posterior standard deviation.
pub(super) fn posterior_std(h: &Tensor, s: &GroupSettings) -> Result<Tensor> {
    Ok(((h + s.weight_decay)? * s.ess)?.sqrt()?.recip()?)
}
