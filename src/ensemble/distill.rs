//! Ensemble distribution distillation in logit space (Fathullah, Xia and Gales, UAI 2023):
//! a student predicts a diagonal Laplace distribution over the logits, fitted to the
//! members' (or posterior samples') log-probabilities.

use candle_core::{Module, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

use crate::lora::{kaiming_uniform_bound, set_uniform, var_name};
use crate::noise::PhiloxNormal;
use crate::predict::{predictive_from_samples, Predictive};
use crate::{Error, Result};

/// The student's two heads on its final hidden state: the location `mu = W_out h` and the
/// log-scale `log b = W_s h` of a Laplace distribution over the logit vector.
#[derive(Clone, Debug)]
pub struct LaplaceHead {
    mu: Linear,
    log_scale: Linear,
    prefix: String,
}

impl LaplaceHead {
    /// Heads from `hidden` features to `classes` logits, named "mu" and "log_scale".
    pub fn new(hidden: usize, classes: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            mu: linear(hidden, classes, vb.pp("mu"))?,
            log_scale: linear(hidden, classes, vb.pp("log_scale"))?,
            prefix: vb.prefix(),
        })
    }

    /// Sets both heads' weights and biases to U(-1/sqrt(hidden), 1/sqrt(hidden)) draws
    /// (PyTorch's `nn.Linear` init) seeded by `seed` and the var names.
    pub fn init(&self, seed: u64) -> Result<()> {
        let bound = kaiming_uniform_bound(self.mu.weight().dim(1)?);
        for (head, name) in [(&self.mu, "mu"), (&self.log_scale, "log_scale")] {
            let head_name = var_name(&self.prefix, name);
            set_uniform(
                head.weight(),
                &var_name(&head_name, "weight"),
                seed,
                -bound,
                bound,
            )?;
            if let Some(bias) = head.bias() {
                set_uniform(bias, &var_name(&head_name, "bias"), seed, -bound, bound)?;
            }
        }
        Ok(())
    }

    /// A copy for inference without gradient tracking, sharing the weights (see
    /// [`crate::lora::LoraLinear::detach`]).
    pub fn detach(&self) -> Self {
        let detach = |l: &Linear| Linear::new(l.weight().detach(), l.bias().map(Tensor::detach));
        Self {
            mu: detach(&self.mu),
            log_scale: detach(&self.log_scale),
            prefix: self.prefix.clone(),
        }
    }

    /// `(mu, log b)` for hidden states `(n, hidden)`.
    pub fn forward(&self, h: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.mu.forward(h)?, self.log_scale.forward(h)?))
    }
}

/// The distillation loss, averaged over examples: `KL + laplace_weight * L_lap` with
/// targets `l_m = log_softmax(z_m / temperature)` of the members' logits `(M, n, V)`,
/// `L_lap = sum_v [mean_m |l_mv - mu_v| / b_v + log b_v + log 2]` (the Laplace negative
/// log-likelihood; its per-coordinate optimum is `mu` = the members' median and `b` = the
/// mean absolute deviation from it) and `KL = mean_m KL(softmax(l_m) || softmax(mu))`.
pub fn distillation_loss(
    mu: &Tensor,
    log_scale: &Tensor,
    member_logits: &Tensor,
    temperature: f64,
    laplace_weight: f64,
) -> Result<Tensor> {
    let (_, n, v) = member_logits.dims3().map_err(|_| {
        Error::InvalidInput(format!(
            "member logits must be (M, n, V), got {:?}",
            member_logits.dims()
        ))
    })?;
    if mu.dims() != [n, v] || log_scale.dims() != [n, v] {
        return Err(Error::InvalidInput(format!(
            "mu {:?} and log_scale {:?} must both be [{n}, {v}]",
            mu.dims(),
            log_scale.dims()
        )));
    }
    if !(temperature.is_finite() && temperature > 0.0 && laplace_weight.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "temperature {temperature} must be > 0 and laplace_weight {laplace_weight} finite"
        )));
    }
    let targets = candle_nn::ops::log_softmax(&(member_logits / temperature)?, D::Minus1)?;
    let laplace = laplace_nll(mu, log_scale, &targets)?;
    let log_q = candle_nn::ops::log_softmax(mu, D::Minus1)?;
    let kl = (targets.exp()? * targets.broadcast_sub(&log_q)?)?
        .sum(D::Minus1)?
        .mean(0)?;
    Ok((kl + (laplace * laplace_weight)?)?.mean_all()?)
}

/// The Laplace negative log-likelihood of targets `(M, n, V)` per example, `(n,)`:
/// `sum_v [mean_m |t_mv - mu_v| / b_v + log b_v + log 2]`.
pub fn laplace_nll(mu: &Tensor, log_scale: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let m = targets.dim(0)?;
    let dev = (targets.broadcast_sub(mu)?.abs()?.sum(0)? / m as f64)?;
    Ok(((dev / log_scale.exp()?)? + log_scale)?
        .affine(1.0, std::f64::consts::LN_2)?
        .sum(D::Minus1)?)
}

/// `samples` logit vectors `(samples, n, V)` drawn from `Laplace(mu, b)`, `b =
/// exp(log_scale)`: each coordinate as `b (z1 z2 - z3 z4) + mu` with standard-normal `z`
/// (the difference of two products of normals is Laplace(0, 1)), seeded by `seed`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let mu = Tensor::new(&[[1f32, -1.]], &Device::Cpu)?;
/// let log_b = Tensor::new(&[[0f32, -2.]], &Device::Cpu)?;
/// let z = varlora::ensemble::laplace_samples(&mu, &log_b, 16, 0)?;
/// assert_eq!(z.dims(), &[16, 1, 2]);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn laplace_samples(
    mu: &Tensor,
    log_scale: &Tensor,
    samples: usize,
    seed: u64,
) -> Result<Tensor> {
    let (n, v) = mu.dims2()?;
    if samples == 0 {
        return Err(Error::InvalidInput("samples must be at least 1".into()));
    }
    if log_scale.dims() != [n, v] {
        return Err(Error::ShapeMismatch(format!(
            "log_scale {:?} must have mu's shape [{n}, {v}]",
            log_scale.dims()
        )));
    }
    let count = samples * n * v;
    let mut z = vec![0f32; 4 * count];
    PhiloxNormal::new(seed).fill(&mut z);
    let unit: Vec<f32> = z
        .chunks_exact(4)
        .map(|q| q[0] * q[1] - q[2] * q[3])
        .collect();
    let unit = Tensor::from_vec(unit, (samples, n, v), mu.device())?.to_dtype(mu.dtype())?;
    Ok(unit.broadcast_mul(&log_scale.exp()?)?.broadcast_add(mu)?)
}

/// The predictive of one student forward: [`laplace_samples`] averaged as any
/// posterior's samples.
pub fn laplace_predictive(
    mu: &Tensor,
    log_scale: &Tensor,
    samples: usize,
    seed: u64,
) -> Result<Predictive> {
    predictive_from_samples(&laplace_samples(mu, log_scale, samples, seed)?, false)
}
