//! Accuracy, negative log-likelihood and Brier score.

use candle_core::Tensor;

use super::{argmax, rows_and_labels};
use crate::Result;

/// Fraction of examples whose argmax (ties to the lowest class) equals the label.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let p = Tensor::new(&[[0.7f32, 0.3], [0.5, 0.5]], &Device::Cpu)?;
/// let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
/// assert_eq!(varlora::metrics::accuracy(&p, &y)?, 0.5);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn accuracy(probs: &Tensor, labels: &Tensor) -> Result<f64> {
    let (rows, labels) = rows_and_labels(probs, labels)?;
    let hits = rows
        .iter()
        .zip(&labels)
        .filter(|(r, &y)| argmax(r) == y)
        .count();
    Ok(hits as f64 / labels.len() as f64)
}

/// Mean of `-log p_bar[y]`, from log-probabilities (e.g. `log_softmax` of logits, or the
/// log of a Monte Carlo average computed with logsumexp), so that it is finite for finite
/// inputs.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let logp = Tensor::new(&[[0.5f64.ln(), 0.5f64.ln()]], &Device::Cpu)?;
/// let y = Tensor::new(&[1u32], &Device::Cpu)?;
/// assert!((varlora::metrics::nll(&logp, &y)? - 2f64.ln()).abs() < 1e-12);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn nll(log_probs: &Tensor, labels: &Tensor) -> Result<f64> {
    let (rows, labels) = rows_and_labels(log_probs, labels)?;
    let total: f64 = rows.iter().zip(&labels).map(|(r, &y)| -r[y]).sum();
    Ok(total / labels.len() as f64)
}

/// Mean over examples of `sum_c (p_c - 1[c = y])^2`, in [0, 2].
///
/// ```
/// use candle_core::{Device, Tensor};
/// let p = Tensor::new(&[[1f32, 0.], [0.5, 0.5]], &Device::Cpu)?;
/// let y = Tensor::new(&[0u32, 0], &Device::Cpu)?;
/// assert_eq!(varlora::metrics::brier(&p, &y)?, 0.25);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn brier(probs: &Tensor, labels: &Tensor) -> Result<f64> {
    let (rows, labels) = rows_and_labels(probs, labels)?;
    let total: f64 = rows
        .iter()
        .zip(&labels)
        .map(|(r, &y)| {
            r.iter()
                .enumerate()
                .map(|(c, &p)| (p - f64::from(u8::from(c == y))).powi(2))
                .sum::<f64>()
        })
        .sum();
    Ok(total / labels.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use candle_core::Device;

    #[test]
    fn hand_computed_values() {
        let dev = Device::Cpu;
        let p = Tensor::new(
            &[[0.2f64, 0.5, 0.3], [0.6, 0.2, 0.2], [0.4, 0.4, 0.2]],
            &dev,
        )
        .unwrap();
        let y = Tensor::new(&[1u32, 2, 1], &dev).unwrap();
        // argmax: 1 (hit), 0 (miss), tie 0/1 -> 0 (miss).
        assert_abs_diff_eq!(accuracy(&p, &y).unwrap(), 1.0 / 3.0, epsilon = 1e-15);
        // (0.04 + 0.25 + 0.09) + (0.36 + 0.04 + 0.64) + (0.16 + 0.36 + 0.04) = 1.98.
        assert_abs_diff_eq!(brier(&p, &y).unwrap(), 1.98 / 3.0, epsilon = 1e-12);
        let expected_nll = -(0.5f64.ln() + 0.2f64.ln() + 0.4f64.ln()) / 3.0;
        assert_abs_diff_eq!(
            nll(&p.log().unwrap(), &y).unwrap(),
            expected_nll,
            epsilon = 1e-12
        );
    }

    #[test]
    fn certain_predictions_and_bad_input() {
        let dev = Device::Cpu;
        let p = Tensor::new(&[[0f32, 1.]], &dev).unwrap();
        assert_eq!(
            brier(&p, &Tensor::new(&[0u32], &dev).unwrap()).unwrap(),
            2.0
        );
        assert_eq!(
            brier(&p, &Tensor::new(&[1u32], &dev).unwrap()).unwrap(),
            0.0
        );
        let nan = Tensor::new(&[[f32::NAN, 1.]], &dev).unwrap();
        assert!(accuracy(&nan, &Tensor::new(&[0u32], &dev).unwrap()).is_err());
        assert!(accuracy(&p, &Tensor::new(&[2u32], &dev).unwrap()).is_err());
        assert!(accuracy(&p, &Tensor::new(&[0u32, 1], &dev).unwrap()).is_err());
    }
}
