//! BLoB: Bayesian LoRA by Backpropagation (Wang et al., NeurIPS 2024).
//!
//! Followed from the reference repository Wang-ML-Lab/bayesian-peft,
//! `modelwrappers/blob.py`: the Gaussian over `A` with `std = G^2` (softplus(G) when
//! `bayes_eps < 0`), `G ~ U(eps / sqrt 2, eps)` (`U(eps - 1, eps)` when negative), the
//! Flipout forward with one draw of `E` per call and fresh signs per example (and per
//! token), a dropout mask of its own on the noise path, the closed-form KL against
//! `N(0, beta^2)` computed in f64 with the reference's 1e-6 guards, and the KL reweighting
//! schedule (`fit` and `prepare_for_fit_evaluate`).

use std::sync::Arc;

use candle_core::{DType, ModuleT, Tensor};
use candle_nn::{init::Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::dropout::unseeded_dropout;
use super::init::{init_lora_pair, kaiming_uniform_bound, set_uniform, var_name};
use super::sampler::SampleSwitch;
use super::{Adapter, LoraConfig};
use crate::kernels::layers::FrozenLinear;
use crate::predict::Posterior;
use crate::{Error, Result};

/// BLoB's settings on top of the LoRA ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlobConfig {
    /// Rank, scale and dropout of the adapter.
    pub lora: LoraConfig,
    /// Initial scale of `G` (`bayes_eps`, 0.05); negative selects `std = softplus(G)`.
    #[serde(default = "default_eps")]
    pub bayes_eps: f64,
    /// Standard deviation `beta` of the prior `N(0, beta^2)` on `A` (`bayes_beta`, 0.2).
    #[serde(default = "default_beta")]
    pub prior_std: f64,
}

fn default_eps() -> f64 {
    0.05
}

fn default_beta() -> f64 {
    0.2
}

impl BlobConfig {
    /// The reference defaults around a LoRA configuration.
    pub fn new(lora: LoraConfig) -> Self {
        Self {
            lora,
            bayes_eps: default_eps(),
            prior_std: default_beta(),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.lora.validate()?;
        if !self.bayes_eps.is_finite() || self.bayes_eps == 0.0 {
            return Err(Error::InvalidConfig {
                field: "bayes_eps",
                value: self.bayes_eps.to_string(),
                expected: "a finite, non-zero value",
            });
        }
        if !(self.prior_std.is_finite() && self.prior_std > 0.0) {
            return Err(Error::InvalidConfig {
                field: "prior_std",
                value: self.prior_std.to_string(),
                expected: "a finite value > 0",
            });
        }
        Ok(())
    }
}

/// The KL weight `pi` of step `step` (counted from 1) with reweighting over a period of
/// `period` steps: `i = step mod period` (`period` when 0), `pi = 2^i / (2^(period+1) - 1)`,
/// computed without overflow.
pub fn kl_weight(step: u64, period: u64) -> f64 {
    let period = period.max(1);
    let i = match step % period {
        0 => period,
        r => r,
    } as f64;
    let k = period as f64;
    (i - k - 1.0).exp2() / (1.0 - (-k - 1.0).exp2())
}

/// The reference's reweighting period with dataset rescaling:
/// `int(100 * n_train^(pi / gamma) / batch_size)`, at least 1 (`gamma` = 8 there).
pub fn kl_period(n_train: usize, batch_size: usize, gamma: f64) -> u64 {
    let m = 100.0 * (n_train as f64).powf(std::f64::consts::PI / gamma) / batch_size.max(1) as f64;
    (m as u64).max(1)
}

/// The vars of one BLoB layer and what its KL needs: see
/// [`BayesianLoraLinear::posterior_vars`].
#[derive(Clone, Debug)]
pub struct BlobLayerVars {
    /// The mean `M` of `A` ("lora_a").
    pub a_mean: candle_core::Var,
    /// `G`, whose square (or softplus) is the standard deviation of `A` ("lora_a_g").
    pub a_g: candle_core::Var,
    /// `B` ("lora_b"), deterministic.
    pub b: candle_core::Var,
    /// The prior's standard deviation `beta`.
    pub prior_std: f64,
    /// `S = softplus(G)` (`bayes_eps < 0`) rather than `G^2`.
    pub softplus: bool,
    /// The sampler the layer draws from, whose training stream [`crate::optim::Blob`]
    /// saves and restores with the run.
    pub sampler: BlobSampler,
}

impl BlobLayerVars {
    /// The gradients of `KL(q(A) || N(0, beta^2))` with respect to `M` and `G`, in f64
    /// and returned in the vars' dtype. With the reference's guards,
    /// `KL = ln(beta + eps) - ln(S + eps) + (S^2 + M^2) / (2 beta^2 + eps) - 1/2`, so
    /// `dKL/dM = 2 M / (2 beta^2 + eps)` and
    /// `dKL/dS = 2 S / (2 beta^2 + eps) - 1 / (S + eps)`, with `dS/dG = 2 G` (or
    /// `sigmoid(G)` for softplus).
    pub fn kl_grads(&self) -> Result<(Tensor, Tensor)> {
        let denom = 2.0 * self.prior_std * self.prior_std + KL_EPS;
        let dtype = self.a_mean.dtype();
        let m = self.a_mean.as_tensor().to_dtype(DType::F64)?;
        let g = self.a_g.as_tensor().to_dtype(DType::F64)?;
        let s = std_of(&g, self.softplus)?;
        let ds_dg = if self.softplus {
            (g.neg()?.exp()? + 1.0)?.recip()?
        } else {
            (&g * 2.0)?
        };
        let d_m = (m * (2.0 / denom))?;
        let d_s = ((&s * (2.0 / denom))? - (s + KL_EPS)?.recip()?)?;
        let d_g = (d_s * ds_dg)?;
        Ok((d_m.to_dtype(dtype)?, d_g.to_dtype(dtype)?))
    }

    /// The standard deviation `S` of `A`: `G^2`, or `softplus(G)`.
    pub fn a_std(&self) -> Result<Tensor> {
        std_of(self.a_g.as_tensor(), self.softplus)
    }

    /// The layer's KL against its prior, as a number (f64).
    pub fn kl(&self) -> Result<f64> {
        let m = self.a_mean.as_tensor().to_dtype(DType::F64)?;
        let s = std_of(&self.a_g.as_tensor().to_dtype(DType::F64)?, self.softplus)?;
        Ok(gaussian_kl(&m, &s, self.prior_std)?.to_scalar::<f64>()?)
    }
}

/// The reference's guard against `ln 0` and a zero prior variance.
const KL_EPS: f64 = 1e-6;

/// `S` from `G`: `G^2`, or `softplus(G) = ln(1 + e^G)` (the reference's
/// `log1p(exp(g))`).
fn std_of(g: &Tensor, softplus: bool) -> Result<Tensor> {
    if softplus {
        Ok((g.exp()? + 1.0)?.log()?)
    } else {
        Ok(g.sqr()?)
    }
}

/// `sum ln(beta + eps) - ln(S + eps) + (S^2 + M^2) / (2 beta^2 + eps) - 1/2` over the
/// elements, as the reference's `kl_div_stable` computes it.
fn gaussian_kl(m: &Tensor, s: &Tensor, beta: f64) -> Result<Tensor> {
    let log_s = (s + KL_EPS)?.log()?;
    let quad = ((s.sqr()? + m.sqr()?)? / (2.0 * beta * beta + KL_EPS))?;
    let kl = ((quad - log_s)? + ((beta + KL_EPS).ln() - 0.5))?;
    Ok(kl.sum_all()?)
}

/// Salt that separates BLoB's prediction samples from its training draws.
const PREDICTION_STREAM: u64 = 0x626c_6f62_7072_6564;

/// The switch and random stream shared by every BLoB layer of a model: whether forwards
/// sample, and the seeded draws they use. Clones share the same state.
///
/// It is the model's [`Posterior`]: sample `k` runs the closure with the layers sampling
/// from a stream positioned by `k`, and the point estimate runs it with sampling off (the
/// mean of `A`, "BLoB N = 0"). Sample `k` repeats exactly for the same inputs. Unlike
/// IVON's, it is not one set of weights for every batch: Flipout draws random signs per
/// example (and per token), from the same stream as the next layer's noise, so the draws
/// of sample `k` depend on the batch's shape, and each example sees its own sign-flipped
/// perturbation of `E`. Each call restores the mode and stream it found, also when the
/// closure errs or panics, and calls nest through clones.
#[derive(Clone, Debug)]
pub struct BlobSampler(SampleSwitch);

impl BlobSampler {
    /// A sampler that samples (training mode), from a stream seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(SampleSwitch::new(seed, PREDICTION_STREAM, true))
    }

    /// Switches sampling on (training, Monte Carlo prediction) or off (the mean).
    pub fn set_sampling(&self, on: bool) -> Result<()> {
        self.0.set_sampling(on)
    }

    /// Whether forwards sample.
    pub fn is_sampling(&self) -> Result<bool> {
        self.0.is_sampling()
    }

    /// Whether `other` is a clone of this sampler: the same switch and stream.
    pub(crate) fn is(&self, other: &Self) -> bool {
        self.0.shares_state(&other.0)
    }

    /// The training stream's seed and position, for [`crate::optim::Blob::save`].
    pub(crate) fn training_stream(&self) -> Result<(u64, u64)> {
        self.0.training_stream()
    }

    /// Moves the training stream to `block`, for [`crate::optim::Blob::load_state`].
    pub(crate) fn set_training_stream(&self, block: u64) -> Result<()> {
        self.0.set_training_stream(block)
    }

    /// Multiplies the noise of prediction samples (the posterior's standard deviation)
    /// by `scale`: a test-time temperature of the posterior. Training draws are
    /// unchanged. 1 by default; errors unless finite and >= 0.
    pub fn set_prediction_scale(&self, scale: f64) -> Result<()> {
        self.0.set_prediction_scale(scale)
    }
}

impl Posterior for BlobSampler {
    fn with_posterior_sample<R>(
        &mut self,
        k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        self.0.with_sample(k, f)
    }

    fn with_point_estimate<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        self.0.with_point_estimate(f)
    }
}

/// A frozen `Linear` with a Bayesian LoRA update: `A ~ N(M, diag(S^2))` elementwise with
/// `S = G^2`, `B` deterministic. Forwards while the [`BlobSampler`] samples add the
/// Flipout noise term
/// `scale * B(((dropout(x) * r) E^T) * s)`, `E = S * z`, to the mean path
/// `W x + b + scale * B M dropout(x)`.
///
/// `M` ("lora_a"), `G` ("lora_a_g") and `B` ("lora_b") are the vars. The reference trains
/// `M` and `B` with AdamW on the NLL and every var with SGD on `pi * KL`
/// ([`kl_weight`]); `G` is not in AdamW.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{Linear, VarBuilder, VarMap};
/// use varlora::lora::{BayesianLoraLinear, BlobConfig, BlobSampler, LoraConfig};
///
/// let dev = Device::Cpu;
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let sampler = BlobSampler::new(0);
/// let base = Linear::new(Tensor::randn(0f32, 1., (3, 5), &dev)?, None);
/// let layer = BayesianLoraLinear::new(base, BlobConfig::new(LoraConfig::new(2)), vb.pp("fc"), &sampler)?;
/// let y = layer.forward_t(&Tensor::ones((4, 5), DType::F32, &dev)?, true)?;
/// let kl = layer.kl()?; // f64 scalar, differentiable
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BayesianLoraLinear {
    base: FrozenLinear,
    a_mean: Tensor,
    a_g: Tensor,
    b: Tensor,
    config: BlobConfig,
    sampler: BlobSampler,
    prefix: String,
}

/// The range of `G`'s uniform init: U(eps / sqrt 2, eps), so that `S = G^2` starts in
/// [eps^2 / 2, eps^2]; with the softplus parameterisation (`eps < 0`), U(eps - 1, eps).
fn g_init_range(eps: f64) -> (f64, f64) {
    if eps < 0.0 {
        (eps - 1.0, eps)
    } else {
        (eps / 2f64.sqrt(), eps)
    }
}

impl BayesianLoraLinear {
    /// Wraps `base` (out x in); the vars are created through `vb`.
    pub fn new(
        base: Linear,
        config: BlobConfig,
        vb: VarBuilder,
        sampler: &BlobSampler,
    ) -> Result<Self> {
        config.validate()?;
        let (out_dim, in_dim) = base.weight().dims2()?;
        let r = config.lora.rank;
        let bound = kaiming_uniform_bound(in_dim);
        let a_mean = vb.get_with_hints(
            (r, in_dim),
            "lora_a",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let (lo, up) = g_init_range(config.bayes_eps);
        let a_g = vb.get_with_hints((r, in_dim), "lora_a_g", Init::Uniform { lo, up })?;
        let b = vb.get_with_hints((out_dim, r), "lora_b", Init::Const(0.0))?;
        Ok(Self {
            base: FrozenLinear::new(base),
            a_mean,
            a_g,
            b,
            config,
            sampler: sampler.clone(),
            prefix: vb.prefix(),
        })
    }

    /// A copy for inference without gradient tracking, sharing the weights and the
    /// sampler (see [`super::LoraLinear::detach`]).
    pub fn detach(&self) -> Self {
        Self {
            a_mean: self.a_mean.detach(),
            a_g: self.a_g.detach(),
            b: self.b.detach(),
            ..self.clone()
        }
    }

    /// The mean `M` of `A`.
    pub fn a_mean(&self) -> &Tensor {
        &self.a_mean
    }

    /// `B`.
    pub fn b(&self) -> &Tensor {
        &self.b
    }

    /// The standard deviation `S` of `A`: `G^2`, or `softplus(G)` when `bayes_eps < 0`.
    pub fn a_std(&self) -> Result<Tensor> {
        std_of(&self.a_g, self.config.bayes_eps < 0.0)
    }

    /// `KL(q(A) || N(0, beta^2))` summed over `A`'s elements, in f64:
    /// `log beta - log S + (S^2 + M^2) / (2 beta^2) - 1/2`, with the reference's 1e-6
    /// guards. Differentiable in `M` and `G`.
    pub fn kl(&self) -> Result<Tensor> {
        gaussian_kl(
            &self.a_mean.to_dtype(DType::F64)?,
            &self.a_std()?.to_dtype(DType::F64)?,
            self.config.prior_std,
        )
    }

    /// The trainable vars of this layer, for [`crate::optim::Blob`]: `M`, `G` and `B`
    /// with the prior and the parameterisation of `S`. Errors on a [`Self::detach`]ed
    /// copy, whose tensors are no longer vars.
    pub fn posterior_vars(&self) -> Result<BlobLayerVars> {
        let var = |t: &Tensor, name: &'static str| {
            if t.is_variable() {
                Ok(candle_core::Var::from_tensor(t)?)
            } else {
                Err(Error::InvalidState(name))
            }
        };
        const DETACHED: &str =
            "a detached BLoB layer has no vars: take them from the trained layer";
        Ok(BlobLayerVars {
            a_mean: var(&self.a_mean, DETACHED)?,
            a_g: var(&self.a_g, DETACHED)?,
            b: var(&self.b, DETACHED)?,
            prior_std: self.config.prior_std,
            softplus: self.config.bayes_eps < 0.0,
            sampler: self.sampler.clone(),
        })
    }

    /// The Flipout noise term for `x`, with a dropout mask of its own as the reference.
    fn noise(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let (lead, in_dim) = dims.split_at(dims.len() - 1);
        let r = self.config.lora.rank;
        let (z, r_signs, s_signs, scale) = {
            let mut stream = self.sampler.0.stream()?;
            let mut z = vec![0f32; r * in_dim[0]];
            stream.fill(&mut z);
            let lead_n: usize = lead.iter().product();
            let mut rs = vec![0f32; lead_n * in_dim[0]];
            stream.fill_signs(&mut rs);
            let mut ss = vec![0f32; lead_n * r];
            stream.fill_signs(&mut ss);
            (z, rs, ss, stream.scale())
        };
        let dev = x.device();
        let dtype = x.dtype();
        let z = Tensor::from_vec(z, (r, in_dim[0]), dev)?.to_dtype(dtype)?;
        let e = (self.a_std()? * (z * scale)?)?;
        let mut r_shape = lead.to_vec();
        r_shape.push(in_dim[0]);
        let mut s_shape = lead.to_vec();
        s_shape.push(r);
        let r_signs = Tensor::from_vec(r_signs, r_shape, dev)?.to_dtype(dtype)?;
        let s_signs = Tensor::from_vec(s_signs, s_shape, dev)?.to_dtype(dtype)?;
        let x = unseeded_dropout(x, self.config.lora.dropout, train)?;
        let u = ((x * r_signs)?.broadcast_matmul(&e.t()?)? * s_signs)?;
        u.broadcast_matmul(&self.b.t()?)? * self.config.lora.scale()
    }
}

impl ModuleT for BayesianLoraLinear {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let xd = unseeded_dropout(x, self.config.lora.dropout, train)?;
        let update = xd
            .broadcast_matmul(&self.a_mean.t()?)?
            .broadcast_matmul(&self.b.t()?)?;
        let mean = (self.base.forward(x)? + (update * self.config.lora.scale())?)?;
        if self.sampler.is_sampling()? {
            mean + self.noise(x, train)?
        } else {
            Ok(mean)
        }
    }
}

impl Adapter for BayesianLoraLinear {
    fn forward_rows(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.forward_t(x, train)
    }

    fn detach(&self) -> Arc<dyn Adapter> {
        Arc::new(BayesianLoraLinear::detach(self))
    }

    /// The posterior mean's layer: `W0 + (alpha / r) B M`.
    fn merged_linear(&self) -> Result<Linear> {
        let base = self.base.linear();
        let delta = (self.b.matmul(&self.a_mean)? * self.config.lora.scale())?;
        let delta = delta.to_dtype(base.weight().dtype())?;
        Ok(Linear::new((base.weight() + delta)?, base.bias().cloned()))
    }

    /// As the reference: `M` Kaiming-uniform (PEFT's `A`), `G` U(eps / sqrt 2, eps)
    /// (U(eps - 1, eps) for softplus), `B` zero.
    fn init(&self, seed: u64) -> Result<()> {
        let bound = kaiming_uniform_bound(self.a_mean.dim(1)?);
        init_lora_pair(&self.prefix, seed, &self.a_mean, bound, &self.b)?;
        let (lo, up) = g_init_range(self.config.bayes_eps);
        set_uniform(&self.a_g, &var_name(&self.prefix, "lora_a_g"), seed, lo, up)
    }

    fn kl(&self) -> Result<Option<Tensor>> {
        BayesianLoraLinear::kl(self).map(Some)
    }

    fn posterior_vars(&self) -> Result<Option<BlobLayerVars>> {
        BayesianLoraLinear::posterior_vars(self).map(Some)
    }
}
