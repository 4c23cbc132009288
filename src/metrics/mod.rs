//! Metrics of a predictive distribution: natural logs, computed on the averaged
//! predictive `p_bar`, with the conventions of uncertainty-baselines (ECE bin edges),
//! sklearn (AUROC ties, average precision) and TorchUncertainty (AURC).
//!
//! Inputs are `(n, classes)` tensors of probabilities (or log-probabilities for
//! [`nll`]) and `(n,)` integer labels. NaN in the inputs, mismatched shapes, labels out of
//! range or an empty batch are errors.

mod calibration;
mod classification;
mod ood;
mod plot;
mod selective;

pub use calibration::{ece, reliability, ReliabilityBin};
pub use classification::{accuracy, brier, nll};
pub use ood::{aupr_out, auroc, fpr_at_95_tpr};
pub use plot::{reliability_csv, reliability_svg};
pub use selective::aurc;

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Rows of `probs` (n, c) as f64 and the labels as usize, validated.
pub(crate) fn rows_and_labels(
    values: &Tensor,
    labels: &Tensor,
) -> Result<(Vec<Vec<f64>>, Vec<usize>)> {
    let (n, c) = values.dims2().map_err(|_| {
        Error::ShapeMismatch(format!("expected (n, classes), got {:?}", values.dims()))
    })?;
    if n == 0 || c == 0 {
        return Err(Error::InvalidInput("empty batch".into()));
    }
    if labels.dims() != [n] {
        return Err(Error::ShapeMismatch(format!(
            "labels have shape {:?}, expected [{n}]",
            labels.dims()
        )));
    }
    let rows = values.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    if rows.iter().flatten().any(|v| v.is_nan()) {
        return Err(Error::InvalidInput("NaN in the predictions".into()));
    }
    let labels: Vec<i64> = labels.to_dtype(DType::I64)?.to_vec1()?;
    let labels = labels
        .into_iter()
        .map(|y| {
            usize::try_from(y)
                .ok()
                .filter(|&y| y < c)
                .ok_or_else(|| Error::InvalidInput(format!("label {y} is outside 0..{c}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((rows, labels))
}

/// A 1-D tensor of scores as f64, validated: not empty, no NaN.
fn scores(t: &Tensor, what: &str) -> Result<Vec<f64>> {
    let v: Vec<f64> = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
    if v.is_empty() {
        return Err(Error::InvalidInput(format!("{what}: empty")));
    }
    if v.iter().any(|s| s.is_nan()) {
        return Err(Error::InvalidInput(format!("{what}: NaN")));
    }
    Ok(v)
}

/// The index of the largest value; ties go to the lowest index.
fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
