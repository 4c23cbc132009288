//! The Monte Carlo predictive and its uncertainty decomposition.

use std::ops::Range;

use candle_core::{DType, Tensor, D};

use super::Posterior;
use crate::{Error, Result};

/// The averaged predictive of a batch and its uncertainty, per example (natural logs).
#[derive(Clone, Debug)]
pub struct Predictive {
    /// `log p_bar`, `(n, classes)`: the log of the average of the samples' probabilities,
    /// computed with logsumexp so that it is finite for finite logits.
    pub log_probs: Tensor,
    /// `p_bar`, `(n, classes)`.
    pub probs: Tensor,
    /// Total uncertainty, `(n,)`: the entropy of `p_bar`.
    pub total: Tensor,
    /// Aleatoric uncertainty, `(n,)`: the mean over samples of each sample's entropy.
    pub aleatoric: Tensor,
    /// Epistemic uncertainty, `(n,)`: the mutual information `total - aleatoric`, clamped
    /// at 0.
    pub epistemic: Tensor,
    /// Each sample's probabilities, `(samples, n, classes)`, when asked for.
    pub samples: Option<Tensor>,
}

impl Predictive {
    /// The predictives of consecutive batches as one, example by example: every field
    /// concatenated along its example axis. Samples are kept only when every part kept
    /// them. Parts of different classes or sample counts are an error.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use varlora::predict::{predictive, PointMass, Predictive};
    /// let a = Tensor::new(&[[0f32, 1.]], &Device::Cpu)?;
    /// let b = Tensor::new(&[[2f32, 0.], [0., 0.]], &Device::Cpu)?;
    /// let parts = [a, b].map(|z| predictive(&mut PointMass, 1, false, || Ok(z.clone())));
    /// let all = Predictive::cat(&[parts[0].as_ref().unwrap().clone(), parts[1].as_ref().unwrap().clone()])?;
    /// assert_eq!(all.probs.dims(), &[3, 2]);
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn cat(parts: &[Predictive]) -> Result<Predictive> {
        if parts.is_empty() {
            return Err(Error::InvalidInput("no predictives to concatenate".into()));
        }
        let cat = |f: &dyn Fn(&Predictive) -> &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0)?)
        };
        Ok(Predictive {
            log_probs: cat(&|p| &p.log_probs)?,
            probs: cat(&|p| &p.probs)?,
            total: cat(&|p| &p.total)?,
            aleatoric: cat(&|p| &p.aleatoric)?,
            epistemic: cat(&|p| &p.epistemic)?,
            samples: parts
                .iter()
                .map(|p| p.samples.clone())
                .collect::<Option<Vec<_>>>()
                .map(|s| Tensor::cat(&s, 1))
                .transpose()?,
        })
    }
}

/// Averages the predictive of `logits` (which returns `(n, classes)` logits for the batch
/// at the current weights) over posterior samples `0..mc_samples`, in f64.
///
/// Memory stays at a few `(n, classes)` tensors however many samples are drawn, unless
/// `keep_samples` asks for all of them. The weights are restored afterwards, also on
/// error.
///
/// ```
/// use candle_core::{DType, Device, Tensor, Var};
/// use varlora::optim::{Ivon, IvonConfig};
/// use varlora::predict::predictive;
///
/// let w = Var::zeros((2, 3), DType::F32, &Device::Cpu)?;
/// let mut opt = Ivon::new(vec![w.clone()], IvonConfig::new(0.1, 10.0))?;
/// let x = Tensor::ones((4, 2), DType::F32, &Device::Cpu)?;
/// let p = predictive(&mut opt, 16, false, || x.matmul(w.as_tensor()))?;
/// assert_eq!(p.probs.dims(), &[4, 3]);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn predictive<P: Posterior>(
    posterior: &mut P,
    mc_samples: usize,
    keep_samples: bool,
    mut logits: impl FnMut() -> candle_core::Result<Tensor>,
) -> Result<Predictive> {
    if mc_samples == 0 {
        return Err(Error::InvalidInput(
            "mc_samples must be at least 1; use predictive_at_point for the point estimate".into(),
        ));
    }
    let mut acc = Running::new(keep_samples);
    for k in 0..mc_samples {
        acc.add(&posterior.with_posterior_sample(k, &mut logits)?)?;
    }
    acc.finish(mc_samples)
}

/// [`predictive`] with the samples evaluated `chunk` at a time: `logits` gets a range of
/// sample indices and returns their logits stacked, `(samples in range, n, classes)` (or
/// `(n, classes)` for a range of one), e.g. from one forward pass of a model that carries
/// the samples in its batch dimension ([`crate::models::BertClassifier::with_stacked_weights`]).
/// `chunk` bounds the memory: a forward holds `chunk` times a batch's activations.
///
/// Given the same samples, the predictive is [`predictive`]'s up to rounding: the
/// samples' log-probabilities are accumulated in the same order.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use varlora::predict::predictive_stacked;
/// // Sample k predicts logits (k, -k) for one example.
/// let p = predictive_stacked(4, 3, false, |ks| {
///     let z: Vec<f32> = ks.flat_map(|k| [k as f32, -(k as f32)]).collect();
///     let n = z.len() / 2;
///     Ok(Tensor::from_vec(z, (n, 1, 2), &Device::Cpu)?)
/// })?;
/// assert_eq!(p.probs.dims(), &[1, 2]);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn predictive_stacked(
    mc_samples: usize,
    chunk: usize,
    keep_samples: bool,
    mut logits: impl FnMut(Range<usize>) -> Result<Tensor>,
) -> Result<Predictive> {
    if mc_samples == 0 || chunk == 0 {
        return Err(Error::InvalidInput(format!(
            "mc_samples ({mc_samples}) and chunk ({chunk}) must be at least 1"
        )));
    }
    let mut acc = Running::new(keep_samples);
    for start in (0..mc_samples).step_by(chunk) {
        let ks = start..(start + chunk).min(mc_samples);
        let z = logits(ks.clone())?;
        let z = match z.rank() {
            2 if ks.len() == 1 => z.unsqueeze(0)?,
            3 if z.dim(0)? == ks.len() => z,
            _ => {
                return Err(Error::ShapeMismatch(format!(
                    "logits of shape {:?} for samples {ks:?}: expected ({}, n, classes)",
                    z.dims(),
                    ks.len()
                )))
            }
        };
        for j in 0..ks.len() {
            acc.add(&z.get(j)?)?;
        }
    }
    acc.finish(mc_samples)
}

/// The logits of posterior samples `0..samples`, stacked `(samples, n, classes)`: a
/// teacher's targets for distillation (`ensemble::distillation_loss`), from IVON, BLoB or
/// any other [`Posterior`].
pub fn sample_logits<P: Posterior>(
    posterior: &mut P,
    samples: usize,
    mut logits: impl FnMut() -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    if samples == 0 {
        return Err(Error::InvalidInput("samples must be at least 1".into()));
    }
    let all = (0..samples)
        .map(|k| posterior.with_posterior_sample(k, &mut logits))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&all, 0)?)
}

/// The predictive of logits already computed for every sample or member, `(samples, n,
/// classes)`: a LoRA-Ensemble's members from its one forward pass, or logit samples of a
/// distilled student.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // Two members that disagree completely on one example.
/// let z = Tensor::new(&[[[9f32, -9.0]], [[-9.0, 9.0]]], &Device::Cpu)?;
/// let p = varlora::predict::predictive_from_samples(&z, false)?;
/// assert!(p.epistemic.to_vec1::<f64>()?[0] > 0.69); // close to ln 2
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn predictive_from_samples(logits: &Tensor, keep_samples: bool) -> Result<Predictive> {
    let (s, _, _) = logits.dims3().map_err(|_| {
        Error::InvalidInput(format!(
            "sample logits must be (samples, n, classes), got {:?}",
            logits.dims()
        ))
    })?;
    if s == 0 {
        return Err(Error::InvalidInput("no samples".into()));
    }
    let mut acc = Running::new(keep_samples);
    for k in 0..s {
        acc.add(&logits.get(k)?)?;
    }
    acc.finish(s)
}

/// The predictive at the point estimate alone (IVON at the mean, "BLoB N = 0"): its
/// epistemic part is zero.
pub fn predictive_at_point<P: Posterior>(
    posterior: &mut P,
    logits: impl FnOnce() -> candle_core::Result<Tensor>,
) -> Result<Predictive> {
    let z = posterior.with_point_estimate(logits)?;
    Accumulator::new(log_softmax_checked(&z, None)?, false)?.finish(1)
}

fn log_softmax_checked(z: &Tensor, expected: Option<&[usize]>) -> Result<Tensor> {
    let (n, c) = z.dims2().map_err(|_| {
        Error::ShapeMismatch(format!("logits must be (n, classes), got {:?}", z.dims()))
    })?;
    if let Some(dims) = expected {
        if dims != [n, c] {
            return Err(Error::ShapeMismatch(format!(
                "logits of shape {:?} after {:?}: every sample must give the same shape",
                z.dims(),
                dims
            )));
        }
    }
    let z = z.to_dtype(DType::F64)?;
    if (&z * 0.0)?.sum_all()?.to_scalar::<f64>()? != 0.0 {
        return Err(Error::InvalidInput(
            "the model returned NaN or Inf logits".into(),
        ));
    }
    Ok(candle_nn::ops::log_softmax(&z, D::Minus1)?)
}

/// `-sum_c p log p` over the last dimension, from log-probabilities (0 log 0 = 0).
fn entropy(logp: &Tensor) -> Result<Tensor> {
    Ok((logp.exp()? * logp)?.sum(D::Minus1)?.neg()?)
}

/// The samples' logits added one at a time: the first starts the [`Accumulator`], and
/// every later one must have its shape.
struct Running {
    acc: Option<Accumulator>,
    keep: bool,
}

impl Running {
    fn new(keep: bool) -> Self {
        Self { acc: None, keep }
    }

    fn add(&mut self, z: &Tensor) -> Result<()> {
        // A predictive is never differentiated: without the detach, each sample's running
        // sums would keep the whole forward graph behind its logits alive until the end
        // (for a decoder that is not detached, gigabytes per sample).
        let logp = log_softmax_checked(&z.detach(), self.acc.as_ref().map(|a| a.lse.dims()))?;
        match self.acc.as_mut() {
            None => self.acc = Some(Accumulator::new(logp, self.keep)?),
            Some(a) => a.add(logp)?,
        }
        Ok(())
    }

    fn finish(self, count: usize) -> Result<Predictive> {
        self.acc
            .ok_or(Error::InvalidInput("no sample".into()))?
            .finish(count)
    }
}

struct Accumulator {
    /// Running logsumexp of the samples' log-probabilities.
    lse: Tensor,
    /// Running sum of the samples' entropies.
    entropy_sum: Tensor,
    samples: Option<Vec<Tensor>>,
}

impl Accumulator {
    fn new(logp: Tensor, keep: bool) -> Result<Self> {
        Ok(Self {
            entropy_sum: entropy(&logp)?,
            samples: keep.then(|| vec![logp.clone()]),
            lse: logp,
        })
    }

    fn add(&mut self, logp: Tensor) -> Result<()> {
        self.entropy_sum = (&self.entropy_sum + entropy(&logp)?)?;
        let m = self.lse.maximum(&logp)?;
        let sum = ((&self.lse - &m)?.exp()? + (&logp - &m)?.exp()?)?;
        self.lse = (m + sum.log()?)?;
        if let Some(s) = self.samples.as_mut() {
            s.push(logp);
        }
        Ok(())
    }

    fn finish(self, count: usize) -> Result<Predictive> {
        let log_probs = (self.lse - (count as f64).ln())?;
        let total = entropy(&log_probs)?;
        let aleatoric = (self.entropy_sum / count as f64)?;
        let epistemic = (&total - &aleatoric)?.clamp(0.0, f64::INFINITY)?;
        let samples = match self.samples {
            Some(s) => Some(Tensor::stack(&s, 0)?.exp()?),
            None => None,
        };
        Ok(Predictive {
            probs: log_probs.exp()?,
            log_probs,
            total,
            aleatoric,
            epistemic,
            samples,
        })
    }
}
