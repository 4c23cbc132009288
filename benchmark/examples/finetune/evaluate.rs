//! Evaluating a trained model: its predictive on the evaluation set (timed) and on each
//! OOD set, one row of the report at a time.

use std::time::Instant;

use candle_core::Tensor;
use varlora::models::BertClassifier;
use varlora::predict::{
    predictive, predictive_at_point, predictive_from_samples, sample_logits, Posterior, Predictive,
};

use crate::data::Batch;
use crate::report::{Cost, Report};

/// The OOD sets by name ("wiki", "multiemo").
pub type OodSets = Vec<(&'static str, Vec<Batch>)>;

/// The report being filled, and what each row is evaluated on.
pub struct Rows<'a> {
    pub report: Report,
    eval: &'a [Batch],
    ood: &'a OodSets,
    sentences: usize,
    ms_per_step: f64,
}

impl<'a> Rows<'a> {
    /// Rows on `eval` and `ood` of a model trained at `ms_per_step`.
    pub fn new(eval: &'a [Batch], ood: &'a OodSets, ms_per_step: f64) -> varlora::Result<Self> {
        let sentences = eval
            .iter()
            .map(|b| b.labels.dim(0))
            .sum::<candle_core::Result<usize>>()?;
        Ok(Self {
            report: Report::new(eval)?,
            eval,
            ood,
            sentences,
            ms_per_step,
        })
    }

    /// One row: `predict` timed on the evaluation set, then run on every OOD set. Returns
    /// its milliseconds per sentence.
    pub fn add(
        &mut self,
        name: String,
        predict: &mut dyn FnMut(&[Batch]) -> varlora::Result<Predictive>,
    ) -> varlora::Result<f64> {
        self.add_trained_at(name, self.ms_per_step, predict)
    }

    /// [`Self::add`] for a model trained at `ms_per_step` of its own (a student).
    pub fn add_trained_at(
        &mut self,
        name: String,
        ms_per_step: f64,
        predict: &mut dyn FnMut(&[Batch]) -> varlora::Result<Predictive>,
    ) -> varlora::Result<f64> {
        let (id, secs) = timed(|| predict(self.eval));
        let ood = self
            .ood
            .iter()
            .map(|(name, b)| Ok((*name, predict(b)?)))
            .collect::<varlora::Result<Vec<_>>>()?;
        let ms_per_sentence = 1e3 * secs / self.sentences.max(1) as f64;
        let cost = Cost {
            ms_per_step,
            ms_per_sentence,
        };
        self.report.add(name, &id?, &ood, cost)?;
        Ok(ms_per_sentence)
    }

    /// A row made from another row's predictives (the evaluation set's, then each OOD
    /// set's, as [`Self::add`] ran them) by `derive`, costed as that row: a temperature
    /// fitted on top of a posterior costs nothing per sentence.
    pub fn add_derived(
        &mut self,
        name: String,
        of: Vec<Predictive>,
        ms_per_sentence: f64,
        derive: impl Fn(&Predictive) -> varlora::Result<Predictive>,
    ) -> varlora::Result<()> {
        if of.len() != 1 + self.ood.len() {
            return Err(varlora::Error::InvalidInput(format!(
                "{} predictives for {} sets",
                of.len(),
                1 + self.ood.len()
            )));
        }
        let id = derive(&of[0])?;
        let ood = self
            .ood
            .iter()
            .zip(&of[1..])
            .map(|((name, _), p)| Ok((*name, derive(p)?)))
            .collect::<varlora::Result<Vec<_>>>()?;
        let cost = Cost {
            ms_per_step: self.ms_per_step,
            ms_per_sentence,
        };
        self.report.add(name, &id, &ood, cost)
    }
}

/// The predictive over `data`: at the point estimate (`samples` 0) or averaged over
/// `samples` posterior draws.
pub fn evaluate<P: Posterior>(
    posterior: &mut P,
    model: &BertClassifier,
    data: &[Batch],
    samples: usize,
) -> varlora::Result<Predictive> {
    per_batch(model, data, |logits| {
        if samples == 0 {
            predictive_at_point(posterior, logits)
        } else {
            predictive(posterior, samples, true, logits)
        }
    })
}

/// `predict` run on each batch of `data`, given the batch's detached forward, and the
/// batches' predictives concatenated.
fn per_batch(
    model: &BertClassifier,
    data: &[Batch],
    mut predict: impl FnMut(&dyn Fn() -> candle_core::Result<Tensor>) -> varlora::Result<Predictive>,
) -> varlora::Result<Predictive> {
    let parts = data
        .iter()
        .map(|b| {
            let logits = || {
                model
                    .forward_t(&b.ids, &b.types, &b.mask, false)
                    .map_err(candle_core::Error::wrap)
            };
            predict(&logits)
        })
        .collect::<varlora::Result<Vec<_>>>()?;
    Predictive::cat(&parts)
}

/// The predictive of an ensemble run as one network (LoRA-Ensemble, Hydra): its
/// members' probabilities averaged, from one forward per batch that `logits` gives as
/// `(members, batch, classes)`.
pub fn evaluate_members(
    data: &[Batch],
    logits: impl Fn(&Batch) -> varlora::Result<Tensor>,
) -> varlora::Result<Predictive> {
    let parts = data
        .iter()
        .map(|b| predictive_from_samples(&logits(b)?, true))
        .collect::<varlora::Result<Vec<_>>>()?;
    Predictive::cat(&parts)
}

/// The predictive of a posterior over an ensemble's members (MultiIVON): at the point
/// estimate (`samples` 0) the members averaged, else every member of each of `samples`
/// posterior draws, `samples * members` predictions averaged.
pub fn evaluate_member_samples<P: Posterior>(
    posterior: &mut P,
    model: &BertClassifier,
    data: &[Batch],
    samples: usize,
) -> varlora::Result<Predictive> {
    per_batch(model, data, |logits| {
        let members = if samples == 0 {
            posterior.with_point_estimate(logits)?
        } else {
            let all = sample_logits(posterior, samples, logits)?;
            let (_, m, n, c) = all.dims4()?;
            all.reshape((samples * m, n, c))?
        };
        predictive_from_samples(&members, true)
    })
}

/// `f` and the seconds it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed().as_secs_f64())
}
