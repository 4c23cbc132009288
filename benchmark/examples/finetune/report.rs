//! Metrics of each evaluated model, written as JSON and a Markdown table.

use candle_core::Tensor;
use varlora::metrics;
use varlora::predict::Predictive;

use crate::data::Batch;

/// `row` in lower case with every run of other characters than letters and digits
/// turned into one `-`: "IVON 10 samples" -> "ivon-10-samples".
fn slug(row: &str) -> String {
    row.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join("-")
}

/// The mean over examples of the spread of a binary classifier's log-odds
/// `ln(p1 / p0)` across posterior samples, and of the mutual information: to second order
/// MI is `spread^2 p(1 - p) / 2`, so this says whether an OOD set's MI is low because the
/// samples agree there or because the predictions are confident. `None` without samples
/// or with more than two classes.
fn log_odds_spread(p: &Predictive) -> varlora::Result<Option<(f64, f64)>> {
    let Some(s) = &p.samples else {
        return Ok(None);
    };
    let (k, n, c) = s.dims3()?;
    if c != 2 || k < 2 || n == 0 {
        return Ok(None);
    }
    let s = s.to_dtype(candle_core::DType::F64)?;
    let z = (s.narrow(2, 1, 1)? / s.narrow(2, 0, 1)?)?
        .log()?
        .squeeze(2)?;
    let centred = z.broadcast_sub(&z.mean_keepdim(0)?)?;
    let sd = (centred.sqr()?.sum(0)? / (k - 1) as f64)?.sqrt()?;
    let spread = sd.mean_all()?.to_scalar::<f64>()?;
    let mi = p
        .epistemic
        .to_dtype(candle_core::DType::F64)?
        .mean_all()?
        .to_scalar::<f64>()?;
    Ok(Some((spread, mi)))
}

/// The rows of the results table.
pub struct Report {
    labels: Tensor,
    pub rows: Vec<serde_json::Value>,
    /// Each row's reliability diagram on the evaluation set, as SVG, with the row's name.
    pub svgs: Vec<(String, String)>,
    /// Each row's predictive probabilities on the evaluation set, with the row's name, for
    /// `--predictions`.
    probs: Vec<(String, Tensor)>,
}

/// What one model's predictions cost.
pub struct Cost {
    /// Milliseconds per training step.
    pub ms_per_step: f64,
    /// Milliseconds per evaluated sentence, all posterior samples included.
    pub ms_per_sentence: f64,
}

impl Report {
    pub fn new(eval: &[Batch]) -> varlora::Result<Self> {
        let labels = eval.iter().map(|b| b.labels.clone()).collect::<Vec<_>>();
        Ok(Self {
            labels: Tensor::cat(&labels, 0)?,
            rows: Vec::new(),
            svgs: Vec::new(),
            probs: Vec::new(),
        })
    }

    /// Adds a model's row: accuracy and calibration on `id`, OOD AUROC of `id` against
    /// each OOD set by 1 - max p, predictive entropy and mutual information (keys
    /// `auroc_msp` etc. for the Wikipedia set "wiki", `auroc_msp_multiemo` etc. for
    /// "multiemo").
    pub fn add(
        &mut self,
        name: String,
        id: &Predictive,
        ood: &[(&str, Predictive)],
        cost: Cost,
    ) -> varlora::Result<()> {
        let y = &self.labels;
        let msp =
            |p: &Predictive| -> varlora::Result<Tensor> { Ok((p.probs.max(1)?.neg()? + 1.0)?) };
        let ece = metrics::ece(&id.probs, y, 15)?;
        let bins = metrics::reliability(&id.probs, y, 15)?;
        self.svgs.push((
            name.clone(),
            metrics::reliability_svg(&bins, &format!("{name}: ECE {ece:.3}")),
        ));
        let mut row = serde_json::json!({
            "model": name,
            "reliability": bins,
            "accuracy": metrics::accuracy(&id.probs, y)?,
            "nll": metrics::nll(&id.log_probs, y)?,
            "ece": ece,
            "brier": metrics::brier(&id.probs, y)?,
            "ms_per_step": cost.ms_per_step,
            "ms_per_sentence": cost.ms_per_sentence,
        });
        if let Some((spread, mi)) = log_odds_spread(id)? {
            row["log_odds_spread"] = spread.into();
            row["mean_mi"] = mi.into();
        }
        for (set, p) in ood {
            let suffix = if *set == "wiki" {
                String::new()
            } else {
                format!("_{set}")
            };
            row[format!("auroc_msp{suffix}")] = metrics::auroc(&msp(id)?, &msp(p)?)?.into();
            row[format!("auroc_entropy{suffix}")] = metrics::auroc(&id.total, &p.total)?.into();
            row[format!("auroc_mi{suffix}")] = metrics::auroc(&id.epistemic, &p.epistemic)?.into();
            if let Some((spread, mi)) = log_odds_spread(p)? {
                row[format!("log_odds_spread_{set}")] = spread.into();
                row[format!("mean_mi_{set}")] = mi.into();
            }
        }
        self.rows.push(row);
        self.probs.push((name, id.probs.clone()));
        Ok(())
    }

    /// Writes `summary` as `{stem}.json`, the rows as `{stem}.md`, each row's reliability
    /// diagram as `{stem}-{row}.svg` and, with `predictions`, the evaluation set's labels
    /// and each row's probabilities as `{stem}-predictions.json` into `dir`; returns the
    /// Markdown table.
    pub fn write(
        &self,
        dir: &std::path::Path,
        stem: &str,
        summary: &serde_json::Value,
        predictions: bool,
    ) -> Result<String, Box<dyn std::error::Error>> {
        if predictions {
            std::fs::write(
                dir.join(format!("{stem}-predictions.json")),
                serde_json::to_string(&self.predictions()?)?,
            )?;
        }
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(summary)?,
        )?;
        let md = self.markdown();
        std::fs::write(dir.join(format!("{stem}.md")), &md)?;
        for (row, svg) in &self.svgs {
            std::fs::write(dir.join(format!("{stem}-{}.svg", slug(row))), svg)?;
        }
        Ok(md)
    }

    /// `{"labels": [..], "rows": [{"model", "probs": [[..], ..]}, ..]}`, the probabilities
    /// widened to f64 exactly, so that a reader recomputes the metrics from the very values
    /// they were computed from.
    fn predictions(&self) -> varlora::Result<serde_json::Value> {
        let rows = self
            .probs
            .iter()
            .map(|(name, p)| {
                let probs = p.to_dtype(candle_core::DType::F64)?.to_vec2::<f64>()?;
                Ok(serde_json::json!({ "model": name, "probs": probs }))
            })
            .collect::<varlora::Result<Vec<_>>>()?;
        Ok(serde_json::json!({ "labels": self.labels.to_vec1::<u32>()?, "rows": rows }))
    }

    /// The rows as a Markdown table; the MultiEmo AUROCs as three more columns when any
    /// row has them.
    pub fn markdown(&self) -> String {
        let multiemo = self
            .rows
            .iter()
            .any(|r| r.get("auroc_msp_multiemo").is_some());
        let mut md = String::from(
            "| model | accuracy | NLL | ECE | Brier | AUROC MSP | AUROC entropy | AUROC MI |",
        );
        if multiemo {
            md.push_str(" MultiEmo AUROC MSP | MultiEmo AUROC entropy | MultiEmo AUROC MI |");
        }
        md.push_str(" ms/step | ms/sentence |\n|---|---|---|---|---|---|---|---|");
        md.push_str(if multiemo {
            "---|---|---|---|---|\n"
        } else {
            "---|---|\n"
        });
        let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        for r in &self.rows {
            md.push_str(&format!(
                "| {} | {:.2}% | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} | {:.3} |",
                r["model"].as_str().unwrap_or("?"),
                100.0 * f(r, "accuracy"),
                f(r, "nll"),
                f(r, "ece"),
                f(r, "brier"),
                f(r, "auroc_msp"),
                f(r, "auroc_entropy"),
                f(r, "auroc_mi"),
            ));
            if multiemo {
                md.push_str(&format!(
                    " {:.3} | {:.3} | {:.3} |",
                    f(r, "auroc_msp_multiemo"),
                    f(r, "auroc_entropy_multiemo"),
                    f(r, "auroc_mi_multiemo"),
                ));
            }
            md.push_str(&format!(
                " {:.0} | {:.2} |\n",
                f(r, "ms_per_step"),
                f(r, "ms_per_sentence")
            ));
        }
        md
    }
}

/// Peak resident memory of this process, from /proc (Linux).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
