//! Expected calibration error and the reliability table behind it.

use candle_core::Tensor;
use serde::Serialize;

use super::{argmax, rows_and_labels};
use crate::{Error, Result};

/// One bin of a reliability diagram.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// Lower edge (inclusive).
    pub lo: f64,
    /// Upper edge (exclusive, but inclusive for the last bin).
    pub hi: f64,
    /// Examples whose confidence falls in the bin.
    pub count: usize,
    /// Mean confidence in the bin (0 if empty).
    pub confidence: f64,
    /// Accuracy in the bin (0 if empty).
    pub accuracy: f64,
}

/// Top-label reliability table with `bins` equal-width bins `[lo, hi)`, the last one
/// closed so that confidence 1.0 falls in it (the uncertainty-baselines convention;
/// torchmetrics puts 1.0 in an extra bin instead).
pub fn reliability(probs: &Tensor, labels: &Tensor, bins: usize) -> Result<Vec<ReliabilityBin>> {
    if bins == 0 {
        return Err(Error::InvalidInput("ECE needs at least one bin".into()));
    }
    let (rows, labels) = rows_and_labels(probs, labels)?;
    let mut sums = vec![(0usize, 0f64, 0usize); bins];
    for (row, &y) in rows.iter().zip(&labels) {
        let pred = argmax(row);
        let conf = row[pred];
        if !(0.0..=1.0).contains(&conf) {
            return Err(Error::InvalidInput(format!(
                "confidence {conf} is not a probability"
            )));
        }
        let b = ((conf * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += conf;
        sums[b].2 += usize::from(pred == y);
    }
    Ok(sums
        .into_iter()
        .enumerate()
        .map(|(b, (count, conf, hits))| {
            let mean = |v: f64| if count == 0 { 0.0 } else { v / count as f64 };
            ReliabilityBin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count,
                confidence: mean(conf),
                accuracy: mean(hits as f64),
            }
        })
        .collect())
}

/// Expected calibration error: `sum_b (n_b / N) |acc_b - conf_b|` over the bins of
/// [`reliability`]; empty bins weigh 0. The papers use 15 bins (ivon-lora reports 10).
///
/// ```
/// use candle_core::{Device, Tensor};
/// let p = Tensor::new(&[[0.9f32, 0.1], [0.8, 0.2]], &Device::Cpu)?;
/// let y = Tensor::new(&[0u32, 1], &Device::Cpu)?;
/// // Both fall in bins of 15; accuracy 1 at 0.9 and 0 at 0.8.
/// let e = varlora::metrics::ece(&p, &y, 15)?;
/// assert!((e - (0.1 + 0.8) / 2.0).abs() < 1e-6);
/// # Ok::<(), varlora::Error>(())
/// ```
pub fn ece(probs: &Tensor, labels: &Tensor, bins: usize) -> Result<f64> {
    let table = reliability(probs, labels, bins)?;
    let n: usize = table.iter().map(|b| b.count).sum();
    Ok(table
        .iter()
        .map(|b| b.count as f64 / n as f64 * (b.accuracy - b.confidence).abs())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two-class rows whose top label is class 0 with confidence `conf`, and labels that
    /// make each prediction right or wrong.
    fn binary(conf: &[f64], correct: &[bool]) -> (Tensor, Tensor) {
        let rows: Vec<f64> = conf.iter().flat_map(|&c| [c, 1.0 - c]).collect();
        let labels: Vec<u32> = correct.iter().map(|&ok| u32::from(!ok)).collect();
        (
            Tensor::from_vec(rows, (conf.len(), 2), &Device::Cpu).unwrap(),
            Tensor::new(labels.as_slice(), &Device::Cpu).unwrap(),
        )
    }

    #[test]
    fn spec_test_vector() {
        let (p, y) = binary(
            &[1.0, 1.0, 0.97, 0.9, 0.62, 0.41],
            &[true, false, true, true, false, true],
        );
        // 0.41 is not a top label of a two-class row; use three classes for it.
        let mut rows = p.to_vec2::<f64>().unwrap();
        rows[5] = vec![0.41, 0.3, 0.29];
        for r in rows.iter_mut().take(5) {
            r.push(0.0);
        }
        let p = Tensor::new(rows, &Device::Cpu).unwrap();
        let e = ece(&p, &y, 15).unwrap();
        assert!((e - 0.38).abs() < 1e-12, "{e}");
    }

    #[test]
    fn edges_and_empty_bins() {
        // Confidence exactly on an inner edge goes to the upper bin.
        let (p, y) = binary(&[0.6, 0.6], &[true, true]);
        let t = reliability(&p, &y, 5).unwrap();
        assert_eq!(t[3].count, 2);
        assert!(t.iter().enumerate().all(|(i, b)| i == 3 || b.count == 0));
        assert!((ece(&p, &y, 5).unwrap() - 0.4).abs() < 1e-12);
        // A perfectly calibrated pair: 0.5 confident, one right, one wrong.
        let (p, y) = binary(&[0.5, 0.5], &[true, false]);
        assert!(ece(&p, &y, 10).unwrap().abs() < 1e-12);
        assert!(ece(&p, &y, 0).is_err());
    }

    #[test]
    fn a_single_class_and_certain_predictions() {
        // Every label is class 0; predictions certain (1 and 0 exactly) and right.
        let (p, y) = binary(&[1.0, 1.0, 1.0], &[true, true, true]);
        assert_eq!(ece(&p, &y, 15).unwrap(), 0.0);
        assert_eq!(crate::metrics::brier(&p, &y).unwrap(), 0.0);
        assert_eq!(crate::metrics::accuracy(&p, &y).unwrap(), 1.0);
        // Certain and wrong: the last bin, accuracy 0, ECE 1, Brier 2.
        let (p, y) = binary(&[1.0, 1.0], &[false, false]);
        assert_eq!(ece(&p, &y, 15).unwrap(), 1.0);
        assert_eq!(crate::metrics::brier(&p, &y).unwrap(), 2.0);
        let t = reliability(&p, &y, 15).unwrap();
        assert_eq!(t[14].count, 2);
    }
}
