//! Selective prediction: how the error rate falls as the least confident examples are
//! set aside.

use candle_core::Tensor;

use super::{argmax, rows_and_labels};
use crate::Result;

/// Area under the risk-coverage curve: examples sorted by confidence (max probability)
/// descending, ties by index; `risk_k` = errors among the first `k` / `k`; the trapezoid
/// rule over the points `(k / N, risk_k)`, `k = 1..N` (the TorchUncertainty convention).
/// Lower is better.
///
/// ```
/// use candle_core::{Device, Tensor};
/// // Most confident first: right, wrong. Risks 0 then 1/2 at coverage 1/2 and 1.
/// let p = Tensor::new(&[[0.9f32, 0.1], [0.6, 0.4]], &Device::Cpu)?;
/// let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
/// assert_eq!(varlora::metrics::aurc(&p, &y)?, 0.125);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn aurc(probs: &Tensor, labels: &Tensor) -> Result<f64> {
    let (rows, labels) = rows_and_labels(probs, labels)?;
    let mut order: Vec<(f64, bool)> = rows
        .iter()
        .zip(&labels)
        .map(|(r, &y)| {
            let pred = argmax(r);
            (r[pred], pred != y)
        })
        .collect();
    // A stable sort keeps ties in index order.
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let n = order.len() as f64;
    let mut errors = 0usize;
    let mut risks = Vec::with_capacity(order.len());
    for (k, (_, wrong)) in order.iter().enumerate() {
        errors += usize::from(*wrong);
        risks.push(errors as f64 / (k + 1) as f64);
    }
    Ok(risks.windows(2).map(|w| 0.5 * (w[0] + w[1]) / n).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hand_computed_and_edges() {
        let dev = Device::Cpu;
        // Confidences 0.9 (wrong), 0.8 (right), 0.7 (right): risks 1, 1/2, 1/3.
        let p = Tensor::new(&[[0.9f64, 0.1], [0.8, 0.2], [0.7, 0.3]], &dev).unwrap();
        let y = Tensor::new(&[1u32, 0, 0], &dev).unwrap();
        let expected = (0.5 * (1.0 + 0.5) + 0.5 * (0.5 + 1.0 / 3.0)) / 3.0;
        assert!((aurc(&p, &y).unwrap() - expected).abs() < 1e-12);
        // Ties keep index order: the wrong one first here (index 0) gives risks 1, 1/2.
        let tie = Tensor::new(&[[0.6f64, 0.4], [0.6, 0.4]], &dev).unwrap();
        let y = Tensor::new(&[1u32, 0], &dev).unwrap();
        assert_eq!(aurc(&tie, &y).unwrap(), 0.5 * (1.0 + 0.5) / 2.0);
        // All right: zero risk everywhere; a single example has no area.
        let y = Tensor::new(&[0u32, 0], &dev).unwrap();
        assert_eq!(aurc(&tie, &y).unwrap(), 0.0);
        let one = Tensor::new(&[[1f64, 0.0]], &dev).unwrap();
        assert_eq!(
            aurc(&one, &Tensor::new(&[1u32], &dev).unwrap()).unwrap(),
            0.0
        );
    }
}
