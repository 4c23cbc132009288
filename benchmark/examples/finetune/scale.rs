//! The posterior's scale after training, per adapter matrix: the root mean square of the
//! mean and of the standard deviation, so that a reader sees how wide the posterior is
//! relative to the weights it perturbs.

use candle_core::Tensor;
use serde::Serialize;
use varlora::lora::BlobLayerVars;
use varlora::optim::Ivon;

/// One matrix's scale.
#[derive(Debug, Serialize)]
pub struct Scale {
    pub name: String,
    pub rms_mean: f64,
    pub rms_std: f64,
}

fn rms(t: &Tensor) -> varlora::Result<f64> {
    let t = t.to_dtype(candle_core::DType::F64)?;
    Ok(t.sqr()?.mean_all()?.to_scalar::<f64>()?.sqrt())
}

/// IVON's `1 / sqrt(ess (h + weight_decay))` against its mean `m`, per var.
pub fn ivon(opt: &Ivon) -> varlora::Result<Vec<Scale>> {
    let mut out = Vec::new();
    for g in 0..opt.num_groups() {
        for (i, p) in opt.group_params(g).unwrap_or(&[]).iter().enumerate() {
            out.push(Scale {
                name: p.name().unwrap_or("?").to_owned(),
                rms_mean: rms(&p.mean()?)?,
                rms_std: rms(&opt.posterior_std(g, i)?)?,
            });
        }
    }
    Ok(out)
}

/// BLoB's `S` against `M` per layer (`B` is deterministic: its std is 0).
pub fn blob(layers: &[BlobLayerVars]) -> varlora::Result<Vec<Scale>> {
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        out.push(Scale {
            name: format!("layer {i} A"),
            rms_mean: rms(l.a_mean.as_tensor())?,
            rms_std: rms(&l.a_std()?)?,
        });
        out.push(Scale {
            name: format!("layer {i} B"),
            rms_mean: rms(l.b.as_tensor())?,
            rms_std: 0.0,
        });
    }
    Ok(out)
}

/// A one-line summary: the median of std / |mean| over the matrices that have a std.
pub fn summary(scales: &[Scale]) -> String {
    let mut ratios: Vec<f64> = scales
        .iter()
        .filter(|s| s.rms_std > 0.0 && s.rms_mean > 0.0)
        .map(|s| s.rms_std / s.rms_mean)
        .collect();
    ratios.sort_by(f64::total_cmp);
    match ratios.get(ratios.len() / 2) {
        Some(r) => format!(
            "posterior scale: median rms(std) / rms(mean) {r:.3} over {} matrices",
            ratios.len()
        ),
        None => "posterior scale: no matrix with a std".into(),
    }
}
