//! Predicts sentences with a fine-tuned MiniLM classifier and its uncertainty: reads
//! sentences (text lines, CSV or JSON Lines, from a file or stdin) and writes one JSON
//! line per sentence with its label, probabilities, and total, aleatoric and epistemic
//! uncertainty (nats).
//!
//! ```text
//! cargo run --release --example finetune -- --optimizer ivon --save runs/ivon
//! echo "a gripping, funny film" | cargo run --release --example predict -- \
//!     --adapter runs/ivon --posterior runs/ivon/posterior.safetensors --samples 10
//! ```
//!
//! The model is either `--adapter DIR`, peft's layout (`adapter_config.json`,
//! `adapter_model.safetensors`), or `--classifier FILE` (`classifier.safetensors`), both
//! as `finetune --save` writes them. A BLoB classifier file is its own posterior; an
//! IVON adapter takes `--posterior`; otherwise the weights give one deterministic
//! prediction (epistemic 0).

mod input;
#[path = "../minilm/mod.rs"]
mod minilm;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokenizers::Tokenizer;
use varlora::files::peft::PeftAdapter;
use varlora::lora::BlobSampler;
use varlora::models::{AdapterSpec, BertClassifier, BertConfig, BertEncoder, SavedClassifier};
use varlora::predict::{
    predictive, predictive_stacked, GaussianPosterior, PointMass, Posterior, Predictive,
};

use input::{Format, Sentence};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["adapter", "classifier"])))]
struct Args {
    /// The base model: a directory with config.json, model.safetensors and tokenizer.json.
    #[arg(long, default_value = "assets/all-minilm-l6-v2")]
    model: PathBuf,
    /// The fine-tuned LoRA adapter, a directory in peft's layout.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The fine-tuned classifier, one file (`classifier.safetensors`); a BLoB one is
    /// sampled `--samples` times.
    #[arg(long)]
    classifier: Option<PathBuf>,
    /// IVON's posterior file (`finetune --optimizer ivon --save`) to average `--samples`
    /// samples over, with `--adapter` or a LoRA `--classifier`.
    #[arg(long)]
    posterior: Option<PathBuf>,
    /// Posterior samples per sentence (with `--posterior` or a BLoB classifier).
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// IVON's samples per forward pass (with `--posterior`), stacked in the batch
    /// dimension. On a CPU that pays for a few sentences (10 samples of one sentence cost
    /// 3.6 forwards stacked, 10.8 one at a time) and not for full batches (64 sentences:
    /// 11.1 against 10.2), so by default a forward holds up to 32 sentences' worth:
    /// `32 / sentences in the batch` samples. 1 evaluates them one at a time.
    #[arg(long)]
    stack: Option<usize>,
    /// Number of classes of the adapter's head (with `--adapter`).
    #[arg(long, default_value_t = 2)]
    classes: usize,
    /// Sentences to read (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
    /// How the input holds sentences (default: from the file's extension, else text).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Report malformed lines on stderr and predict the rest, instead of stopping at the
    /// first.
    #[arg(long)]
    skip_malformed: bool,
    /// Tokens per sentence, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

/// The sentences of the input, after its malformed lines are reported or refused.
fn sentences(args: &Args) -> Res<Vec<Sentence>> {
    let format = args.format.unwrap_or_else(|| {
        args.input
            .as_deref()
            .map_or(Format::Text, Format::from_path)
    });
    let reader: Box<dyn BufRead> = match &args.input {
        Some(p) => Box::new(BufReader::new(
            std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let (ok, bad) = input::read(reader, format)?;
    if let Some(first) = bad.first() {
        if !args.skip_malformed {
            return Err(format!("{first} (--skip-malformed skips such lines)").into());
        }
        for m in &bad {
            eprintln!("skipped {m}");
        }
    }
    Ok(ok)
}

/// The classifier of `--adapter` or `--classifier` on the base model, its adapter vars,
/// the tokenizer and, for a BLoB classifier, its posterior.
struct Served {
    model: BertClassifier,
    varmap: VarMap,
    tokenizer: Tokenizer,
    blob: Option<BlobSampler>,
}

fn load_model(args: &Args, dev: &Device) -> Res<Served> {
    let need = |name: &str| -> Res<PathBuf> {
        let path = args.model.join(name);
        if path.exists() {
            Ok(path)
        } else {
            Err(format!(
                "{} is missing: --model names the base model's directory",
                path.display()
            )
            .into())
        }
    };
    let config: BertConfig = serde_json::from_str(&std::fs::read_to_string(need("config.json")?)?)?;
    let weights = need("model.safetensors")?;
    let tokenizer = minilm::tokenizer(&args.model, args.max_tokens)?;
    // SAFETY: the weights file is not modified while mapped.
    let base = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, dev)? };
    if let Some(path) = &args.classifier {
        let loaded = SavedClassifier::load(path, base, &config)?;
        return Ok(Served {
            model: loaded.model,
            varmap: loaded.varmap,
            tokenizer,
            blob: loaded.sampler,
        });
    }
    load_peft(args, base, &config, tokenizer, dev)
}

/// A classifier built from a PEFT LoRA adapter directory (`--adapter`) over the base model.
fn load_peft(
    args: &Args,
    base: VarBuilder<'static>,
    config: &BertConfig,
    tokenizer: Tokenizer,
    dev: &Device,
) -> Res<Served> {
    let dir = args
        .adapter
        .as_deref()
        .ok_or("give --adapter or --classifier")?;
    let adapter = PeftAdapter::read_config(dir)?;
    let varmap = VarMap::new();
    let adapters = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let spec = AdapterSpec::Lora(adapter.lora.clone());
    let encoder = BertEncoder::load(
        base,
        adapters.clone(),
        config,
        Some(&spec),
        &adapter.targets,
    )?;
    let model = BertClassifier::new(encoder, args.classes, adapters)?;
    PeftAdapter::load(dir, &varmap)?;
    Ok(Served {
        model,
        varmap,
        tokenizer,
        blob: None,
    })
}

/// One JSON line per sentence of the batch.
fn write_rows(out: &mut impl Write, batch: &[Sentence], p: &Predictive) -> Res<()> {
    let probs: Vec<Vec<f64>> = p.probs.to_dtype(DType::F64)?.to_vec2()?;
    let column =
        |t: &Tensor| -> candle_core::Result<Vec<f64>> { t.to_dtype(DType::F64)?.to_vec1() };
    let (total, aleatoric, epistemic) = (
        column(&p.total)?,
        column(&p.aleatoric)?,
        column(&p.epistemic)?,
    );
    for (i, s) in batch.iter().enumerate() {
        let label = (0..probs[i].len())
            .max_by(|&a, &b| probs[i][a].total_cmp(&probs[i][b]))
            .unwrap_or(0);
        let row = serde_json::json!({
            "line": s.line,
            "label": label,
            "probs": probs[i],
            "total": total[i],
            "aleatoric": aleatoric[i],
            "epistemic": epistemic[i],
        });
        writeln!(out, "{row}")?;
    }
    Ok(())
}

fn progress_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} sentences ({eta} left)") {
        bar.set_style(style);
    }
    bar
}

/// A batch's token ids, type ids and mask.
type Encoded = (Tensor, Tensor, Tensor);

/// Predicts every sentence in batches, with `predict` on each encoded batch.
fn run(
    args: &Args,
    tokenizer: &Tokenizer,
    sentences: &[Sentence],
    dev: &Device,
    mut predict: impl FnMut(&Encoded) -> varlora::Result<Predictive>,
) -> Res<()> {
    let bar = progress_bar(sentences.len());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for batch in sentences.chunks(args.batch.max(1)) {
        let texts = batch.iter().map(|s| s.text.as_str()).collect();
        let p = predict(&minilm::encode(tokenizer, texts, dev)?)?;
        write_rows(&mut out, batch, &p)?;
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    out.flush()?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    match predict(&Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The predictive of a batch over `samples` draws of `posterior`, one forward each.
fn one_at_a_time<'a>(
    model: &'a BertClassifier,
    posterior: &'a mut impl Posterior,
    samples: usize,
) -> impl FnMut(&Encoded) -> varlora::Result<Predictive> + 'a {
    move |(ids, types, mask)| {
        predictive(posterior, samples, false, || {
            Ok(model.forward_t(ids, types, mask, false)?)
        })
    }
}

/// Sentences a forward pass holds by default when samples are stacked.
const STACKED_SENTENCES: usize = 32;

/// The predictive of a batch over `samples` draws of `posterior`, `stack` to a forward
/// (by default as many as [`STACKED_SENTENCES`] allow).
fn stacked<'a>(
    model: &'a BertClassifier,
    posterior: &'a GaussianPosterior,
    samples: usize,
    stack: Option<usize>,
) -> impl FnMut(&Encoded) -> varlora::Result<Predictive> + 'a {
    move |(ids, types, mask)| {
        let sentences = ids.dim(0)?.max(1);
        let stack = stack.unwrap_or((STACKED_SENTENCES / sentences).clamp(1, samples));
        predictive_stacked(samples, stack, false, |ks| {
            let weights = posterior.stacked_samples(ks.clone())?;
            let sampled = model.with_stacked_weights(&weights, ks.len())?;
            sampled.forward_t(ids, types, mask, false)
        })
    }
}

fn predict(args: &Args) -> Res<()> {
    if args.samples == 0 || args.stack == Some(0) {
        return Err("--samples and --stack must be at least 1".into());
    }
    let dev = Device::Cpu;
    let sentences = sentences(args)?;
    let served = load_model(args, &dev)?;
    let model = served.model.detach();
    let (n, tokenizer) = (args.samples, &served.tokenizer);
    match (served.blob, &args.posterior) {
        (Some(_), Some(_)) => {
            Err("a BLoB classifier is its own posterior: leave out --posterior".into())
        }
        (Some(mut sampler), None) => {
            let predict = one_at_a_time(&model, &mut sampler, n);
            run(args, tokenizer, &sentences, &dev, predict)
        }
        (None, Some(path)) => {
            let mut posterior = GaussianPosterior::load(path, &served.varmap)?;
            if args.stack == Some(1) {
                let predict = one_at_a_time(&model, &mut posterior, n);
                return run(args, tokenizer, &sentences, &dev, predict);
            }
            let predict = stacked(&model, &posterior, n, args.stack);
            run(args, tokenizer, &sentences, &dev, predict)
        }
        (None, None) => {
            let mut point = PointMass;
            let predict = one_at_a_time(&model, &mut point, 1);
            run(args, tokenizer, &sentences, &dev, predict)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_directory_is_named() {
        let args = Args::parse_from([
            "predict",
            "--model",
            "/nonexistent/minilm",
            "--adapter",
            "x",
        ]);
        let err = load_model(&args, &Device::Cpu).err().unwrap().to_string();
        assert!(
            err.contains("/nonexistent/minilm/config.json is missing"),
            "{err}"
        );
    }

    #[test]
    fn zero_samples_or_zero_per_forward_are_refused_first() {
        for flag in ["--samples", "--stack"] {
            let args = Args::parse_from(["predict", "--adapter", "x", flag, "0"]);
            let err = predict(&args).err().unwrap().to_string();
            assert!(err.contains("--stack must be at least 1"), "{err}");
        }
    }

    #[test]
    fn the_model_comes_from_an_adapter_or_a_classifier_file_not_both() {
        assert!(Args::try_parse_from(["predict"]).is_err());
        let both = ["predict", "--adapter", "a", "--classifier", "c.safetensors"];
        assert!(Args::try_parse_from(both).is_err());
        assert!(Args::try_parse_from(["predict", "--classifier", "c.safetensors"]).is_ok());
    }

    #[test]
    fn a_missing_input_file_is_named() {
        let args = Args::parse_from(["predict", "--adapter", "x", "--input", "/nonexistent.csv"]);
        let err = sentences(&args).err().unwrap().to_string();
        assert!(err.starts_with("/nonexistent.csv: "), "{err}");
    }

    #[test]
    fn a_malformed_line_stops_the_run_unless_skipped() {
        let path =
            std::env::temp_dir().join(format!("varlora-predict-{}.jsonl", std::process::id()));
        std::fs::write(&path, "{\"text\": \"good\"}\n{\"text\": 1}\n").unwrap();
        let p = path.to_str().unwrap();
        let args = Args::parse_from(["predict", "--adapter", "x", "--input", p]);
        let err = sentences(&args).err().unwrap().to_string();
        assert!(err.starts_with("line 2: no string field"), "{err}");
        let args = Args::parse_from([
            "predict",
            "--adapter",
            "x",
            "--input",
            p,
            "--skip-malformed",
        ]);
        assert_eq!(sentences(&args).unwrap().len(), 1);
        std::fs::remove_file(path).unwrap();
    }
}
