//! Temperature scaling: `softmax(z / T)` with `T` minimising the validation NLL.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::metrics::rows_and_labels;
use crate::{Error, Result};

/// The range searched for `ln T`: `T` in about [0.0009, 1100].
const LOG_T_RANGE: (f64, f64) = (-7.0, 7.0);
/// Golden-section steps: the bracket shrinks by 0.618 each, to below 1e-12 of `ln T`.
const STEPS: usize = 80;

/// One temperature `T > 0` for a classifier's logits: `softmax(z / T)`.
///
/// `fit` minimises the mean NLL of `softmax(z / T)` over `ln T` by golden-section search
/// on [-7, 7]. The NLL is convex in `1 / T`, hence unimodal in `ln T`, so the search
/// finds the minimum; where none exists inside (data that the logits separate perfectly,
/// or logits that are all equal), it returns the best end of the range, never NaN.
///
/// For a posterior, fit on the logarithm of the averaged predictive (the log-probabilities
/// `Predictive::log_probs`) and apply with [`TemperatureScaling::apply_log_probs`].
///
/// ```
/// use candle_core::{Device, Tensor};
/// use varlora::calibrate::TemperatureScaling;
///
/// let dev = Device::Cpu;
/// // Overconfident logits: right 3 times out of 4 with p = 0.99.
/// let z = Tensor::new(&[[4.6f32, 0.], [4.6, 0.], [4.6, 0.], [4.6, 0.]], &dev)?;
/// let y = Tensor::new(&[0u32, 0, 0, 1], &dev)?;
/// let ts = TemperatureScaling::fit(&z, &y)?;
/// assert!((ts.temperature - 4.6 / 3f64.ln()).abs() < 1e-6); // sigmoid(4.6 / T) = 3/4
/// let calibrated = ts.apply(&z)?; // logits / T
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemperatureScaling {
    /// `T`: above 1 softens the predictions, below 1 sharpens them.
    pub temperature: f64,
}

impl TemperatureScaling {
    /// A given temperature; errors unless finite and positive.
    pub fn new(temperature: f64) -> Result<Self> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::InvalidConfig {
                field: "temperature",
                value: temperature.to_string(),
                expected: "finite, > 0",
            });
        }
        Ok(Self { temperature })
    }

    /// Fits `T` on validation `logits` (n, classes) and `labels` (n,). Empty input, NaN
    /// or Inf logits and labels out of range are [`Error::InvalidInput`], mismatched
    /// shapes [`Error::ShapeMismatch`].
    pub fn fit(logits: &Tensor, labels: &Tensor) -> Result<Self> {
        let (rows, labels) = rows_and_labels(logits, labels)?;
        if rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::InvalidInput(
                "logits must be finite to fit a temperature (for log-probabilities, clamp \
                 zeros first)"
                    .into(),
            ));
        }
        let nll = |log_t: f64| mean_nll(&rows, &labels, (-log_t).exp());
        Ok(Self {
            temperature: golden_section_min(nll, LOG_T_RANGE).exp(),
        })
    }

    /// `logits / T`.
    pub fn apply(&self, logits: &Tensor) -> Result<Tensor> {
        Ok((logits / self.temperature)?)
    }

    /// The calibrated log-probabilities of an averaged predictive: `log_softmax(log p / T)`.
    pub fn apply_log_probs(&self, log_probs: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::log_softmax(
            &self.apply(log_probs)?,
            D::Minus1,
        )?)
    }

    /// The calibrated probabilities: `softmax(z / T)` of logits or log-probabilities.
    pub fn probs(&self, logits: &Tensor) -> Result<Tensor> {
        let scaled = self.apply(&logits.to_dtype(DType::F64)?)?;
        Ok(candle_nn::ops::softmax_last_dim(
            &scaled.to_dtype(logits.dtype())?,
        )?)
    }
}

/// Mean over rows of `logsumexp(beta z) - beta z_y`, the NLL of `softmax(beta z)`.
fn mean_nll(rows: &[Vec<f64>], labels: &[usize], beta: f64) -> f64 {
    let total: f64 = rows
        .iter()
        .zip(labels)
        .map(|(z, &y)| {
            let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(beta * v));
            let lse = max + z.iter().map(|&v| (beta * v - max).exp()).sum::<f64>().ln();
            lse - beta * z[y]
        })
        .sum();
    total / rows.len() as f64
}

/// The minimiser of a unimodal `f` on `range` by golden-section search; an end of the
/// range when `f` is monotone there, and 0 (`T = 1`) when `f` is flat.
fn golden_section_min(f: impl Fn(f64) -> f64, range: (f64, f64)) -> f64 {
    let ratio = (5f64.sqrt() - 1.0) / 2.0;
    let (mut lo, mut hi) = range;
    let mut a = hi - ratio * (hi - lo);
    let mut b = lo + ratio * (hi - lo);
    let (mut fa, mut fb) = (f(a), f(b));
    for _ in 0..STEPS {
        if fa <= fb {
            hi = b;
            (b, fb) = (a, fa);
            a = hi - ratio * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            (a, fa) = (b, fb);
            b = lo + ratio * (hi - lo);
            fb = f(b);
        }
    }
    let (best, f_best) = [0.5 * (lo + hi), range.0, range.1]
        .into_iter()
        .map(|x| (x, f(x)))
        .min_by(|p, q| p.1.total_cmp(&q.1))
        .unwrap_or((0.0, f64::INFINITY));
    // T = 1 when it is as good within rounding: a flat NLL has no better temperature.
    if f(0.0) <= f_best + 1e-12 * f_best.abs().max(1.0) {
        0.0
    } else {
        best
    }
}
