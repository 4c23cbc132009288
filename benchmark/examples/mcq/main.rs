//! The decoder's multiple-choice benchmark: SmolLM2-135M-Instruct (the Q4_1 GGUF,
//! dequantized, frozen) with LoRA r = 8, alpha 16 on q and v, fine-tuned on one task's
//! committed training split by AdamW, IVON, BLoB or MC dropout, then evaluated with 10
//! samples on its validation split (to choose settings) or its test split, there with
//! temperature scaling fitted on the validation split, and (`--shift`, after ARC-Easy) on ARC-Challenge and MMLU's
//! chemistry and physics.
//!
//! ```sh
//! bash scripts/fetch-assets.sh --llm --mcq
//! cargo run --release --example mcq -- --task piqa --scoring cloze --method ivon --seed 0
//! ```
//!
//! `mcq baselines --task TASK` prints, as JSON, each split's size and the accuracy of
//! guessing (the mean of 1 / choices) and of always giving the most common answer
//! position: what "the task is learned" is measured against.
//!
//! Writes `{out}/{task}-{scoring}-{method}-lr{lr}...-s{seed}.json` (settings, training
//! losses and one row per predictor: accuracy, NLL, 15-bin ECE, Brier, mean mutual
//! information, and under `--shift` the same per shifted set with the AUROC of telling it
//! from the test split), the rows as Markdown, and a reliability diagram per row.

mod data;
mod prompt;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use varlora::calibrate::TemperatureScaling;
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig, McDropout, TargetModules};
use varlora::metrics;
use varlora::models::{gguf_tokenizer, AdapterSpec, GgufDecoder, LlamaDecoder};
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig, Schedule, Scheduled};
use varlora::predict::{
    predictive, predictive_at_point, predictive_from_samples, PointMass, Posterior, Predictive,
};

use data::Question;
use prompt::{Scorer, Scoring};

type Res<T> = Result<T, Box<dyn std::error::Error>>;
/// The predictive of some questions with some posterior samples (0: the point estimate).
type Predict<'a> = dyn FnMut(&[&Question], usize) -> Res<Predictive> + 'a;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Method {
    Adamw,
    Ivon,
    Blob,
    McDropout,
    /// LoRA-Ensemble: `--members` adapters of rank 8 per layer, trained by AdamW on the
    /// mean of the members' losses, their probabilities averaged.
    LoraEnsemble,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum EvalSplit {
    Validation,
    Test,
}

/// The decoder's multiple-choice benchmark (see the file's documentation).
#[derive(Parser, Debug, serde::Serialize)]
struct Args {
    /// A task of benchmark/data/mcq/splits (arc_easy, boolq, openbookqa, piqa, winogrande).
    #[arg(long)]
    task: String,
    #[arg(long, value_enum)]
    scoring: Scoring,
    #[arg(long, value_enum)]
    method: Method,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Questions per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// The learning rate (AdamW, MC dropout and BLoB 1e-4, IVON 0.03 by default).
    #[arg(long)]
    lr: Option<f64>,
    /// IVON's effective sample size.
    #[arg(long, default_value_t = 1e6)]
    ess: f64,
    /// IVON's initial Hessian (ivon-lora: 3e-4 or 1e-3).
    #[arg(long, default_value_t = 3e-4)]
    hess_init: f64,
    /// BLoB's KL learning rate.
    #[arg(long, default_value_t = 0.01)]
    kl_lr: f64,
    /// LoRA-Ensemble's members.
    #[arg(long, default_value_t = 4)]
    members: usize,
    /// MC dropout's dropout rate.
    #[arg(long, default_value_t = 0.1)]
    dropout: f32,
    /// Posterior samples at test time.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Tokens per sequence; longer prompts lose their beginning.
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    /// The split the rows are computed on; on test, each row gets a twin with a temperature
    /// fitted on validation.
    #[arg(long, value_enum, default_value_t = EvalSplit::Validation)]
    eval: EvalSplit,
    /// Evaluate on the first N questions of each evaluated split only.
    #[arg(long)]
    limit: Option<usize>,
    /// Also evaluate on the shift sets (ARC-Challenge, MMLU chemistry and physics).
    #[arg(long)]
    shift: bool,
    #[arg(long, default_value = "runs/mcq")]
    out: PathBuf,
    #[arg(
        long,
        default_value = "assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    model: PathBuf,
    #[arg(long, default_value = "assets/mcq")]
    assets: PathBuf,
    #[arg(long, default_value = "benchmark/data/mcq/splits")]
    splits: PathBuf,
}

impl Args {
    fn lr(&self) -> f64 {
        self.lr.unwrap_or(match self.method {
            Method::Ivon => 0.03,
            _ => 1e-4,
        })
    }

    fn adapter(&self) -> (AdapterSpec, Option<Sampler>) {
        let lora = LoraConfig::new(8).alpha(16.0);
        match self.method {
            Method::Adamw | Method::Ivon => (AdapterSpec::Lora(lora), None),
            Method::LoraEnsemble => (
                AdapterSpec::Ensemble {
                    members: self.members,
                    rank: 8,
                },
                None,
            ),
            Method::McDropout => {
                let mc = McDropout::new(self.seed);
                let spec = AdapterSpec::McDropout(lora.dropout(self.dropout), mc.clone());
                (spec, Some(Sampler::Dropout(mc)))
            }
            Method::Blob => {
                let s = BlobSampler::new(self.seed);
                (
                    AdapterSpec::Blob(BlobConfig::new(lora), s.clone()),
                    Some(Sampler::Blob(s)),
                )
            }
        }
    }
}

/// The posterior a method predicts with besides the optimizer's own.
enum Sampler {
    Dropout(McDropout),
    Blob(BlobSampler),
}

enum Trainer {
    Adamw(Scheduled<AdamW>),
    Ivon(Scheduled<Ivon>),
    Blob(Scheduled<Blob>),
}

impl Trainer {
    fn new(args: &Args, model: &LlamaDecoder, varmap: &VarMap, n_train: usize) -> Res<Self> {
        // BLoB's 6% warm-up for AdamW, MC dropout and BLoB; ivon-lora's decay alone for
        // IVON.
        let warmup = if args.method == Method::Ivon {
            0.0
        } else {
            0.06
        };
        let schedule = Schedule::linear_with_warmup_ratio(warmup, args.steps as u64)?;
        let mut vars: Vec<_> = varmap
            .data()
            .lock()
            .map_err(|_| "poisoned")?
            .clone()
            .into_iter()
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let vars: Vec<_> = vars.into_iter().map(|(_, v)| v).collect();
        Ok(match args.method {
            Method::Ivon => {
                // ivon-lora's settings.
                let c = IvonConfig::new(args.lr(), args.ess)
                    .hess_init(args.hess_init)
                    .weight_decay(0.0)
                    .rescale_lr(false)
                    .beta2(0.99999)
                    .clip_radius(1e-3)
                    .seed(args.seed);
                Trainer::Ivon(Scheduled::new(Ivon::new(vars, c)?, schedule)?)
            }
            Method::Blob => {
                let c = BlobOptimConfig::new(n_train, args.batch)
                    .lr(args.lr())
                    .kl_lr(args.kl_lr);
                Trainer::Blob(Scheduled::new(
                    Blob::new(vars, model.blob_layers()?, c)?,
                    schedule,
                )?)
            }
            Method::Adamw | Method::McDropout | Method::LoraEnsemble => {
                let p = ParamsAdamW {
                    lr: args.lr(),
                    weight_decay: 0.0,
                    ..Default::default()
                };
                Trainer::Adamw(Scheduled::new(AdamW::new(vars, p)?, schedule)?)
            }
        })
    }

    fn step(&mut self, loss: &Tensor) -> candle_core::Result<()> {
        match self {
            Trainer::Adamw(o) => o.backward_step(loss),
            Trainer::Ivon(o) => o.backward_step(loss),
            Trainer::Blob(o) => o.backward_step(loss),
        }
    }
}

/// `mcq baselines`: a task's splits and their baselines, without a model.
#[derive(Parser, Debug)]
struct BaselinesArgs {
    #[arg(long)]
    task: String,
    #[arg(long, default_value = "assets/mcq")]
    assets: PathBuf,
    #[arg(long, default_value = "benchmark/data/mcq/splits")]
    splits: PathBuf,
}

/// A split's size, the accuracy of guessing (the mean of 1 / choices) and that of always
/// giving its most common answer position.
fn split_baselines(qs: &[Question]) -> serde_json::Value {
    let n = qs.len().max(1) as f64;
    let width = qs.iter().map(|q| q.choices.len()).max().unwrap_or(0);
    let most = (0..width)
        .map(|k| qs.iter().filter(|q| q.answer == k).count())
        .max()
        .unwrap_or(0);
    json!({
        "questions": qs.len(),
        "chance": qs.iter().map(|q| 1.0 / q.choices.len() as f64).sum::<f64>() / n,
        "majority": most as f64 / n,
    })
}

/// Prints `{"task", "train" | "validation" | "test": {"questions", "chance",
/// "majority"}}`.
fn baselines(args: BaselinesArgs) -> Res<()> {
    let split = data::load_task(&args.assets, &args.splits, &args.task)?;
    let out = json!({
        "task": args.task,
        "train": split_baselines(&split.train),
        "validation": split_baselines(&split.validation),
        "test": split_baselines(&split.test),
    });
    println!("{out}");
    Ok(())
}

fn main() -> Res<()> {
    varlora::alloc::keep_freed_memory();
    varlora::threads::short_candle_spin();
    if std::env::args().nth(1).as_deref() == Some("baselines") {
        return baselines(BaselinesArgs::parse_from(std::env::args().skip(1)));
    }
    let args = Args::parse();
    let split = data::load_task(&args.assets, &args.splits, &args.task)?;
    if split.train.is_empty() {
        return Err(format!(
            "task {} has no training split: it is a shift set",
            args.task
        )
        .into());
    }
    let dev = Device::Cpu;
    let gguf = GgufDecoder::read(&args.model, &dev)
        .map_err(|e| format!("{e} (bash scripts/fetch-assets.sh --llm fetches it)"))?;
    let tokenizer = gguf_tokenizer(&args.model)?;
    let varmap = VarMap::new();
    let (spec, sampler) = args.adapter();
    let model = LlamaDecoder::load(
        VarBuilder::from_tensors(gguf.tensors, DType::F32, &dev),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        &gguf.config,
        Some(&spec),
        &TargetModules::new(["q_proj", "v_proj"]),
    )?;
    model.init(args.seed)?;
    let all = split
        .train
        .iter()
        .chain(&split.validation)
        .chain(&split.test);
    let scorer = Scorer {
        tokenizer: &tokenizer,
        scoring: args.scoring,
        width: all.map(|q| q.choices.len()).max().unwrap_or(2),
        max_len: args.max_len,
    };
    let mut trainer = Trainer::new(&args, &model, &varmap, split.train.len())?;
    let (losses, ms_per_step) = train(&args, &model, &scorer, &split.train, &mut trainer)?;

    let detached = model.detach();
    let (scorer, detached) = (&scorer, &detached);
    let mut posterior: Box<Predict> = match (&mut trainer, sampler) {
        (Trainer::Ivon(o), _) => {
            Box::new(move |qs, s| predict(o.inner_mut(), scorer, detached, qs, s))
        }
        (_, Some(Sampler::Blob(mut b))) => {
            Box::new(move |qs, s| predict(&mut b, scorer, detached, qs, s))
        }
        (_, Some(Sampler::Dropout(mut d))) => {
            Box::new(move |qs, s| predict(&mut d, scorer, detached, qs, s))
        }
        _ if detached.members() > 1 => Box::new(move |qs, _| {
            let z = scorer.logits(detached, qs, false)?;
            let c = z.dim(1)?;
            Ok(predictive_from_samples(
                &z.reshape((detached.members(), qs.len(), c))?,
                true,
            )?)
        }),
        _ => Box::new(move |qs, _| predict(&mut PointMass, scorer, detached, qs, 0)),
    };
    let limit = |qs: &[Question]| qs[..qs.len().min(args.limit.unwrap_or(usize::MAX))].to_vec();
    let eval_set = limit(match args.eval {
        EvalSplit::Validation => &split.validation,
        EvalSplit::Test => &split.test,
    });
    let validation = limit(&split.validation);
    let mut shift_sets = Vec::new();
    if args.shift {
        for task in ["arc_challenge", "mmlu_chemistry", "mmlu_physics"] {
            shift_sets.push((
                task,
                limit(&data::load_task(&args.assets, &args.splits, task)?.test),
            ));
        }
    }
    let (mut rows, mut svgs) = (Vec::new(), Vec::new());
    let point_and_samples: &[(String, usize)] = &match args.method {
        Method::Adamw => vec![("AdamW".into(), 0)],
        Method::Ivon => vec![
            ("IVON".into(), args.samples),
            ("IVON at the mean".into(), 0),
        ],
        Method::Blob => vec![
            (format!("BLoB N={}", args.samples), args.samples),
            ("BLoB N=0".into(), 0),
        ],
        Method::McDropout => vec![(format!("MC dropout N={}", args.samples), args.samples)],
        Method::LoraEnsemble => vec![(format!("LoRA-Ensemble M={}", args.members), 0)],
    };
    for (name, samples) in point_and_samples {
        let start = Instant::now();
        let p = evaluate(&mut posterior, &eval_set, *samples, name)?;
        let ms_per_question = 1e3 * start.elapsed().as_secs_f64() / eval_set.len().max(1) as f64;
        let shifted = shift_sets
            .iter()
            .map(|(task, qs)| {
                Ok((
                    *task,
                    qs,
                    evaluate(&mut posterior, qs, *samples, &format!("{name} on {task}"))?,
                ))
            })
            .collect::<Res<Vec<_>>>()?;
        let mut row = metrics_row(name, &p, &eval_set)?;
        row["ms_per_question"] = ms_per_question.into();
        add_shift(&mut row, &p, &shifted)?;
        rows.push(row);
        svgs.push((name.clone(), diagram(&p, &eval_set, name)?));
        // A temperature fitted on validation; not when the rows are on validation
        // themselves, which would score it on the data it was fitted on.
        if args.eval == EvalSplit::Validation {
            continue;
        }
        let what = format!("{name} (validation, for TS)");
        let val = evaluate(&mut posterior, &validation, *samples, &what)?;
        let ts = TemperatureScaling::fit(&val.log_probs, &labels(&validation)?)?;
        let scaled = |p: &Predictive| -> varlora::Result<Predictive> {
            predictive_from_samples(&ts.apply_log_probs(&p.log_probs)?.unsqueeze(0)?, false)
        };
        let mut row = metrics_row(&format!("{name} + TS"), &scaled(&p)?, &eval_set)?;
        row["temperature"] = ts.temperature.into();
        let shifted_ts = shifted
            .iter()
            .map(|(t, qs, sp)| Ok((*t, *qs, scaled(sp)?)))
            .collect::<Res<Vec<_>>>()?;
        add_shift(&mut row, &scaled(&p)?, &shifted_ts)?;
        rows.push(row);
        let ts_name = format!("{name} + TS");
        svgs.push((ts_name.clone(), diagram(&scaled(&p)?, &eval_set, &ts_name)?));
    }
    write(&args, &losses, ms_per_step, &rows, &svgs)
}

/// The predictive of `qs` under `posterior`: at its point estimate for `samples` 0, else
/// averaged over `samples` draws.
fn predict<P: Posterior>(
    posterior: &mut P,
    scorer: &Scorer,
    model: &LlamaDecoder,
    qs: &[&Question],
    samples: usize,
) -> Res<Predictive> {
    let logits = || {
        scorer
            .logits(model, qs, false)
            .map_err(candle_core::Error::wrap)
    };
    Ok(if samples == 0 {
        predictive_at_point(posterior, logits)?
    } else {
        predictive(posterior, samples, true, logits)?
    })
}

/// Trains for `args.steps` steps of `args.batch` questions drawn without replacement
/// (reshuffled each epoch); the per-step losses and milliseconds per step.
fn train(
    args: &Args,
    model: &LlamaDecoder,
    scorer: &Scorer,
    train: &[Question],
    trainer: &mut Trainer,
) -> Res<(Vec<f32>, f64)> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut order: Vec<usize> = Vec::new();
    let bar = ProgressBar::new(args.steps as u64).with_style(ProgressStyle::with_template(
        "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]",
    )?);
    bar.set_prefix(format!("{:?} {}", args.method, args.task));
    let (mut losses, start) = (Vec::new(), Instant::now());
    for step in 0..args.steps {
        if order.len() < args.batch {
            let mut fresh: Vec<usize> = (0..train.len()).collect();
            fresh.shuffle(&mut rng);
            order.extend(fresh);
        }
        let qs: Vec<&Question> = order.drain(..args.batch).map(|i| &train[i]).collect();
        let logits = scorer.logits(model, &qs, true)?;
        // A LoRA-Ensemble's members come member-major: each member's labels in turn, so
        // that the loss is the mean of the members' losses.
        let members = logits.dim(0)? / qs.len();
        let labels = labels_of(&qs)?.repeat(members)?;
        let nll = loss::cross_entropy(&logits, &labels)?;
        let value = nll.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(
                format!("step {step}: the loss is {value}; lower the learning rate").into(),
            );
        }
        trainer.step(&nll)?;
        losses.push(value);
        let recent = &losses[losses.len().saturating_sub(20)..];
        let secs = start.elapsed().as_secs_f64();
        let msg = format!(
            "loss {:.3} | {:.1} questions/s",
            recent.iter().sum::<f32>() / recent.len() as f32,
            ((step + 1) * args.batch) as f64 / secs
        );
        // Without a terminal (a run in the background) the bar is hidden: a line instead.
        if bar.is_hidden() && (step + 1) % 25 == 0 {
            eprintln!("step {}/{}: {msg}", step + 1, args.steps);
        }
        bar.set_message(msg);
        bar.inc(1);
    }
    bar.finish();
    Ok((
        losses,
        1e3 * start.elapsed().as_secs_f64() / args.steps.max(1) as f64,
    ))
}

fn labels_of(qs: &[&Question]) -> candle_core::Result<Tensor> {
    Tensor::new(
        qs.iter().map(|q| q.answer as u32).collect::<Vec<_>>(),
        &Device::Cpu,
    )
}

fn labels(qs: &[Question]) -> candle_core::Result<Tensor> {
    labels_of(&qs.iter().collect::<Vec<_>>())
}

/// The predictive of `qs`, 8 questions a batch, with a progress bar. The batches take the
/// questions in order of length, so that each pads its sequences to a similar length (in
/// the task's order PIQA's batches held 2.4 times the characters of their sequences,
/// 1.1 times sorted); the predictive comes back in `qs`' order.
fn evaluate(predict: &mut Predict, qs: &[Question], samples: usize, what: &str) -> Res<Predictive> {
    let bar = ProgressBar::new(qs.len() as u64).with_style(ProgressStyle::with_template(
        "{prefix} {bar:30} {pos}/{len} [{elapsed} < {eta}]",
    )?);
    bar.set_prefix(what.to_string());
    let mut order: Vec<usize> = (0..qs.len()).collect();
    order.sort_by_key(|&i| longest(&qs[i]));
    let mut parts = Vec::new();
    for chunk in order.chunks(8) {
        let refs: Vec<&Question> = chunk.iter().map(|&i| &qs[i]).collect();
        parts.push(predict(&refs, samples)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    let mut back = vec![0u32; qs.len()];
    for (at, &i) in order.iter().enumerate() {
        back[i] = at as u32;
    }
    Ok(in_order(
        Predictive::cat(&parts)?,
        &Tensor::new(back, &Device::Cpu)?,
    )?)
}

/// A question's longest sequence, in characters: its context, text and longest choice.
fn longest(q: &Question) -> usize {
    let context = q.context.as_ref().map_or(0, |c| c.len());
    context + q.text.len() + q.choices.iter().map(|c| c.len()).max().unwrap_or(0)
}

/// `p` with its examples taken in the order `at` gives (example `i` is `p`'s `at[i]`).
fn in_order(p: Predictive, at: &Tensor) -> candle_core::Result<Predictive> {
    Ok(Predictive {
        log_probs: p.log_probs.index_select(at, 0)?,
        probs: p.probs.index_select(at, 0)?,
        total: p.total.index_select(at, 0)?,
        aleatoric: p.aleatoric.index_select(at, 0)?,
        epistemic: p.epistemic.index_select(at, 0)?,
        samples: p.samples.map(|s| s.index_select(at, 1)).transpose()?,
    })
}

/// Accuracy, NLL, 15-bin ECE (as bayesian-peft), Brier and mean mutual information.
fn metrics_row(name: &str, p: &Predictive, qs: &[Question]) -> Res<serde_json::Value> {
    let y = labels(qs)?;
    Ok(json!({
        "model": name,
        "questions": qs.len(),
        "accuracy": metrics::accuracy(&p.probs, &y)?,
        "nll": metrics::nll(&p.log_probs, &y)?,
        "ece": metrics::ece(&p.probs, &y, 15)?,
        "brier": metrics::brier(&p.probs, &y)?,
        "mean_mi": p.epistemic.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?,
        "reliability": metrics::reliability(&p.probs, &y, 15)?,
    }))
}

/// The reliability diagram of a row, as SVG.
fn diagram(p: &Predictive, qs: &[Question], name: &str) -> Res<String> {
    let y = labels(qs)?;
    let bins = metrics::reliability(&p.probs, &y, 15)?;
    let ece = metrics::ece(&p.probs, &y, 15)?;
    Ok(metrics::reliability_svg(
        &bins,
        &format!("{name}: ECE {ece:.3}"),
    ))
}

/// Each shifted set's metrics and the AUROC of telling it from the evaluated split by the
/// predictive entropy and by the mutual information, under `shift.{task}`.
fn add_shift(
    row: &mut serde_json::Value,
    id: &Predictive,
    shifted: &[(&str, &Vec<Question>, Predictive)],
) -> Res<()> {
    for (task, qs, p) in shifted {
        let mut r = metrics_row(task, p, qs)?;
        r["auroc_entropy"] = metrics::auroc(&id.total, &p.total)?.into();
        r["auroc_mi"] = metrics::auroc(&id.epistemic, &p.epistemic)?.into();
        row["shift"][*task] = r;
    }
    Ok(())
}

fn write(
    args: &Args,
    losses: &[f32],
    ms_per_step: f64,
    rows: &[serde_json::Value],
    svgs: &[(String, String)],
) -> Res<()> {
    std::fs::create_dir_all(&args.out)?;
    // The settings that vary between runs of one method are in the name, so that a
    // search over them keeps every run.
    let extra = match args.method {
        Method::Ivon => format!("-ess{:e}-h{:e}", args.ess, args.hess_init),
        Method::Blob => format!("-kl{}", args.kl_lr),
        Method::McDropout => format!("-p{}", args.dropout),
        Method::LoraEnsemble => format!("-m{}", args.members),
        Method::Adamw => String::new(),
    };
    let stem = format!(
        "{}-{}-{}-lr{}{extra}-s{}",
        args.task,
        serde_json::to_value(args.scoring)?.as_str().unwrap_or("?"),
        serde_json::to_value(args.method)?.as_str().unwrap_or("?"),
        args.lr(),
        args.seed
    );
    let summary = json!({
        "args": args,
        "lr": args.lr(),
        "ms_per_step": ms_per_step,
        "train_loss": losses,
        "rows": rows,
    });
    std::fs::write(
        args.out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let mut md = String::from(
        "| model | accuracy | NLL | ECE | Brier | mean MI |\n|---|---|---|---|---|---|\n",
    );
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1}% | {:.4} | {:.4} | {:.4} | {:.2e} |\n",
            r["model"].as_str().unwrap_or("?"),
            100.0 * f(r, "accuracy"),
            f(r, "nll"),
            f(r, "ece"),
            f(r, "brier"),
            f(r, "mean_mi"),
        ));
    }
    for (name, svg) in svgs {
        let slug: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        std::fs::write(args.out.join(format!("{stem}-{slug}.svg")), svg)?;
    }
    std::fs::write(args.out.join(format!("{stem}.md")), &md)?;
    println!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use data::Form;

    /// Guessing scores the mean of 1 / choices; the majority is the most common answer
    /// position's share.
    #[test]
    fn baselines_are_guessing_and_the_most_common_answer() {
        let q = |choices: usize, answer: usize| Question {
            context: None,
            text: "x".into(),
            choices: vec!["c".into(); choices],
            answer,
            form: Form::Question,
        };
        let b = split_baselines(&[q(2, 1), q(4, 1), q(4, 3), q(4, 1)]);
        assert_eq!(b["questions"], 4);
        assert!((b["chance"].as_f64().unwrap() - 0.3125).abs() < 1e-12);
        assert!((b["majority"].as_f64().unwrap() - 0.75).abs() < 1e-12);
    }

    /// Questions whose lengths are out of order, scored by a fake model that gives each
    /// question its own logits: the predictive comes back in the questions' order, and
    /// the batches went in order of length.
    #[test]
    fn evaluation_batches_by_length_and_answers_in_order() -> Res<()> {
        let qs: Vec<Question> = [30, 5, 17, 40, 2, 9, 33, 12, 25, 1]
            .iter()
            .map(|&n| Question {
                context: None,
                text: "x".repeat(n),
                choices: vec!["a".into(), "b".into()],
                answer: 0,
                form: Form::Question,
            })
            .collect();
        let mut seen = Vec::new();
        let mut fake = |batch: &[&Question], _: usize| -> Res<Predictive> {
            let lens: Vec<f32> = batch.iter().map(|q| q.text.len() as f32).collect();
            seen.extend(lens.iter().copied());
            let logits = Tensor::new(lens, &Device::Cpu)?
                .unsqueeze(1)?
                .affine(0.1, 0.0)?
                .pad_with_zeros(1, 0, 1)?;
            Ok(predictive_from_samples(&logits.unsqueeze(0)?, false)?)
        };
        let p = evaluate(&mut fake, &qs, 1, "test")?;
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        let first: Vec<f32> = p
            .probs
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?
            .iter()
            .map(|r| r[0])
            .collect();
        for (q, got) in qs.iter().zip(first) {
            let z = q.text.len() as f32 * 0.1;
            let want = 1.0 / (1.0 + (-z).exp());
            assert!(
                (got - want).abs() < 1e-6,
                "{} chars: {got} against {want}",
                q.text.len()
            );
        }
        Ok(())
    }
}
