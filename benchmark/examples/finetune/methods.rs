//! Each method's rows of the report, from the trained model.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use tokenizers::Tokenizer;
use varlora::calibrate::TemperatureScaling;
use varlora::hydra::Selection;
use varlora::lora::{BlobSampler, McDropout};
use varlora::models::{BertClassifier, BertConfig};
use varlora::optim::Ivon;
use varlora::predict::{predictive_from_samples, PointMass, Posterior, Predictive};

use crate::data::{batches, Split};
use crate::evaluate::{evaluate, evaluate_member_samples, evaluate_members, Rows};
use crate::train::Trainer;
use crate::{hydra, Args, HydraSelection, Method};

/// What the rows are computed from.
pub struct Ctx<'a> {
    pub args: &'a Args,
    pub split: &'a Split,
    pub tokenizer: &'a Tokenizer,
    pub dev: &'a Device,
    pub config: &'a BertConfig,
    /// The trained model, detached.
    pub model: &'a BertClassifier,
    pub sampler: &'a BlobSampler,
    pub mc: &'a McDropout,
}

/// What some methods fit on the way, for the JSON summary.
#[derive(Default)]
pub struct Extras {
    pub temperature: Option<f64>,
    pub hydra_ms_per_step: Option<f64>,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Adds `method`'s rows.
pub fn add_rows(
    method: Method,
    ctx: &Ctx,
    rows: &mut Rows,
    trainer: &mut Trainer,
    rng: &mut StdRng,
) -> Res<Extras> {
    let s = ctx.args.test_samples;
    match method {
        Method::Adamw => adamw(ctx, rows),
        Method::McDropout => {
            let mut mc = ctx.mc.clone();
            let names = (
                "MC dropout @ no dropout".into(),
                format!("MC dropout {s} samples"),
            );
            posterior(ctx, rows, &mut mc, names)
        }
        Method::Ivon => {
            let opt = trainer.ivon_mut().ok_or("no IVON")?;
            let names = ("IVON @ mean".into(), format!("IVON {s} samples"));
            posterior(ctx, rows, opt, names)
        }
        Method::Blob => {
            let mut sampler = ctx.sampler.clone();
            let names = ("BLoB N = 0".into(), format!("BLoB N = {s}"));
            posterior(ctx, rows, &mut sampler, names)
        }
        Method::LoraEnsemble => lora_ensemble(ctx, rows),
        Method::Hydra => hydra_rows(ctx, rows, rng),
        Method::MultiIvon => {
            let opt = trainer.ivon_mut().ok_or("no IVON")?;
            multi_ivon(ctx, rows, opt)
        }
    }
}

/// MultiIVON's members averaged at the posterior mean, and over `--test-samples` draws
/// of every member (with a temperature where the run has calibration sentences).
fn multi_ivon(ctx: &Ctx, rows: &mut Rows, opt: &mut Ivon) -> Res<Extras> {
    let (model, s, m) = (ctx.model, ctx.args.test_samples, ctx.args.members);
    rows.add(format!("MultiIVON M = {m} @ mean"), &mut |b| {
        evaluate_member_samples(&mut *opt, model, b, 0)
    })?;
    let name = format!("MultiIVON M = {m}, {s} samples");
    let averaged = with_temperature(ctx, rows, name, &mut |b| {
        evaluate_member_samples(&mut *opt, model, b, s)
    })?;
    Ok(Extras {
        temperature: averaged.temperature,
        ..Extras::default()
    })
}

/// The ensemble's averaged predictive, and the same temperature-scaled.
fn lora_ensemble(ctx: &Ctx, rows: &mut Rows) -> Res<Extras> {
    let name = format!("LoRA-Ensemble M = {}", ctx.args.members);
    let averaged = with_temperature(ctx, rows, name, &mut |b| {
        evaluate_members(b, |b| ctx.model.forward_t(&b.ids, &b.types, &b.mask, false))
    })?;
    Ok(Extras {
        temperature: averaged.temperature,
        ..Extras::default()
    })
}

/// What [`with_temperature`] evaluated: the averaged predictive on the evaluation set and
/// each OOD set, its cost, and the temperature fitted on it.
struct Averaged {
    predictives: Vec<Predictive>,
    ms_per_sentence: f64,
    temperature: Option<f64>,
}

/// Adds the row `name` of a predictive averaged over samples (or members), and where the
/// run has calibration sentences a "+ TS" row: a temperature fitted on that averaged
/// predictive over them, applied with the samples' mutual information kept.
fn with_temperature(
    ctx: &Ctx,
    rows: &mut Rows,
    name: String,
    predict: &mut dyn FnMut(&[crate::data::Batch]) -> varlora::Result<Predictive>,
) -> Res<Averaged> {
    let mut kept = Vec::new();
    let ms_per_sentence = rows.add(name.clone(), &mut |b| {
        let p = predict(b)?;
        kept.push(p.clone());
        Ok(p)
    })?;
    let ts = fit_temperature(ctx, &mut *predict)?;
    if let Some(ts) = &ts {
        let name = format!("{name} + TS");
        rows.add_derived(name, kept.clone(), ms_per_sentence, |p| {
            temperature_scaled(p, ts)
        })?;
    }
    Ok(Averaged {
        predictives: kept,
        ms_per_sentence,
        temperature: ts.map(|t| t.temperature),
    })
}

/// AdamW, and AdamW with a temperature fitted on the calibration sentences.
fn adamw(ctx: &Ctx, rows: &mut Rows) -> Res<Extras> {
    let model = ctx.model;
    rows.add("AdamW".into(), &mut |b| {
        evaluate(&mut PointMass, model, b, 0)
    })?;
    let Some(ts) = fit_temperature(ctx, |b| evaluate(&mut PointMass, model, b, 0))? else {
        return Ok(Extras::default());
    };
    rows.add("AdamW + TS".into(), &mut |b| {
        let p = evaluate(&mut PointMass, model, b, 0)?;
        predictive_from_samples(&ts.apply_log_probs(&p.log_probs)?.unsqueeze(0)?, false)
    })?;
    Ok(Extras {
        temperature: Some(ts.temperature),
        ..Extras::default()
    })
}

/// A posterior whose samples can be drawn at a multiple of its scale.
trait Scalable: Posterior {
    fn set_scale(&mut self, c: f64) -> varlora::Result<()>;
}

impl Scalable for Ivon {
    fn set_scale(&mut self, c: f64) -> varlora::Result<()> {
        self.set_prediction_scale(c)
    }
}

impl Scalable for BlobSampler {
    fn set_scale(&mut self, c: f64) -> varlora::Result<()> {
        self.set_prediction_scale(c)
    }
}

impl Scalable for McDropout {
    fn set_scale(&mut self, _: f64) -> varlora::Result<()> {
        Err(varlora::Error::InvalidInput(
            "MC dropout has no posterior scale".into(),
        ))
    }
}

/// The point estimate, `--test-samples` samples, the first of them for each
/// `--also-samples` count, and the samples at each `--posterior-scales` factor
/// (`Args::check_posterior_scales` has refused the factors for a posterior without a
/// scale before training).
fn posterior<P: Scalable>(
    ctx: &Ctx,
    rows: &mut Rows,
    post: &mut P,
    (point, sampled): (String, String),
) -> Res<Extras> {
    let (model, s) = (ctx.model, ctx.args.test_samples);
    rows.add(point, &mut |b| evaluate(&mut *post, model, b, 0))?;
    let averaged = with_temperature(ctx, rows, sampled.clone(), &mut |b| {
        evaluate(&mut *post, model, b, s)
    })?;
    for &k in &ctx.args.also_samples {
        let name = format!("{sampled}, first {k}");
        let ms_per_sentence = averaged.ms_per_sentence * k as f64 / s as f64;
        rows.add_derived(name, averaged.predictives.clone(), ms_per_sentence, |p| {
            first_samples(p, k)
        })?;
    }
    for &c in &ctx.args.posterior_scales {
        post.set_scale(c)?;
        let name = format!("{sampled}, std x {c}");
        rows.add(name, &mut |b| evaluate(&mut *post, model, b, s))?;
    }
    if !ctx.args.posterior_scales.is_empty() {
        post.set_scale(1.0)?;
    }
    Ok(Extras {
        temperature: averaged.temperature,
        ..Extras::default()
    })
}

/// The predictive of the first `k` of the samples `p` kept: what `k` draws of the same
/// posterior give, with the same seeds (`k` checked by `Args::check_also_samples`).
fn first_samples(p: &Predictive, k: usize) -> varlora::Result<Predictive> {
    let samples = p.samples.as_ref().ok_or_else(|| {
        varlora::Error::InvalidInput("the predictive kept no samples to take the first of".into())
    })?;
    let log_probs = samples.narrow(0, 0, k)?.log()?;
    predictive_from_samples(&log_probs, true)
}

/// A temperature fitted on the calibration sentences' predictive, or `None` where the
/// training set leaves none over.
fn fit_temperature(
    ctx: &Ctx,
    mut predict: impl FnMut(&[crate::data::Batch]) -> varlora::Result<Predictive>,
) -> Res<Option<TemperatureScaling>> {
    let calibration = &ctx.split.calibration;
    if calibration.is_empty() {
        return Ok(None);
    }
    let fitted = predict(&batches(ctx.tokenizer, calibration, 64, ctx.dev)?)?;
    let labels = Tensor::new(
        calibration.iter().map(|r| r.1).collect::<Vec<u32>>(),
        ctx.dev,
    )?;
    let ts = TemperatureScaling::fit(&fitted.log_probs, &labels)?;
    println!(
        "temperature fitted on the calibration set: {:.3}",
        ts.temperature
    );
    Ok(Some(ts))
}

/// A posterior's predictive with its averaged probabilities temperature-scaled and its
/// mutual information kept: the samples' disagreement still ranks the inputs, the
/// temperature calibrates the probabilities.
fn temperature_scaled(p: &Predictive, ts: &TemperatureScaling) -> varlora::Result<Predictive> {
    let scaled = ts.apply_log_probs(&p.log_probs)?.unsqueeze(0)?;
    let mut q = predictive_from_samples(&scaled, false)?;
    q.aleatoric = (&q.total - &p.epistemic)?.clamp(0.0, f64::INFINITY)?;
    q.epistemic = p.epistemic.clone();
    Ok(q)
}

/// The source LoRA model, and for each `--hydra-selection` its Hydra members before and
/// after their brief fine-tuning; the members of all selections are pruned from one
/// importance pass.
fn hydra_rows(ctx: &Ctx, rows: &mut Rows, rng: &mut StdRng) -> Res<Extras> {
    let args = ctx.args;
    rows.add("LoRA (Hydra's source)".into(), &mut |b| {
        evaluate(&mut PointMass, ctx.model, b, 0)
    })?;
    let recipe = hydra::Recipe {
        members: args.members,
        keep: args.hydra_keep,
        epochs: args.hydra_epochs,
        lr: args.hydra_lr,
        batch: args.batch,
    };
    let train = &ctx.split.train;
    let calibration = batches(
        ctx.tokenizer,
        &train[..train.len().min(512)],
        args.batch,
        ctx.dev,
    )?;
    let source = hydra::Source::new(ctx.model, ctx.config, &calibration)?;
    let mut extras = Extras::default();
    for &selection in &args.hydra_selection {
        let (chosen, label) = match selection {
            HydraSelection::Weighted => (Selection::Weighted { seed: args.seed }, ""),
            HydraSelection::TopK => (Selection::TopK, ", naive (top-k)"),
        };
        let net = source.build(ctx.config, &recipe, chosen)?;
        let name = format!("Hydra M = {}{label}", args.members);
        let before = net.detach();
        rows.add(format!("{name} before fine-tuning"), &mut |b| {
            evaluate_members(b, |b| before.forward(&b.ids, &b.types, &b.mask))
        })?;
        let ms = hydra::train(&net, train, &recipe, ctx.tokenizer, rng)?;
        let net = net.detach();
        rows.add(name, &mut |b| {
            evaluate_members(b, |b| net.forward(&b.ids, &b.types, &b.mask))
        })?;
        extras.hydra_ms_per_step.get_or_insert(ms);
    }
    Ok(extras)
}
