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
//! The adapter directory is peft's layout (`adapter_config.json`,
//! `adapter_model.safetensors`), as `finetune --save` writes it; without `--posterior`
//! the adapter's weights give one deterministic prediction (epistemic 0).

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
use varlora::models::{AdapterSpec, BertClassifier, BertConfig, BertEncoder};
use varlora::predict::{predictive, GaussianPosterior, PointMass, Posterior, Predictive};

use input::{Format, Sentence};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
struct Args {
    /// The base model: a directory with config.json, model.safetensors and tokenizer.json.
    #[arg(long, default_value = "assets/all-minilm-l6-v2")]
    model: PathBuf,
    /// The fine-tuned LoRA adapter, a directory in peft's layout.
    #[arg(long)]
    adapter: PathBuf,
    /// A posterior file (`finetune --optimizer ivon --save`) to average `--samples`
    /// samples over.
    #[arg(long)]
    posterior: Option<PathBuf>,
    /// Posterior samples per sentence (with `--posterior`).
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Number of classes of the adapter's head.
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

/// The classifier with the adapter in `args.adapter` on the base model, its adapter vars
/// in the returned VarMap.
fn load_model(args: &Args, dev: &Device) -> Res<(BertClassifier, VarMap, Tokenizer)> {
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
    let adapter = PeftAdapter::read_config(&args.adapter)?;
    // SAFETY: the weights file is not modified while mapped.
    let base = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, dev)? };
    let varmap = VarMap::new();
    let adapters = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let spec = AdapterSpec::Lora(adapter.lora.clone());
    let encoder = BertEncoder::load(
        base,
        adapters.clone(),
        &config,
        Some(&spec),
        adapter.targets,
    )?;
    let model = BertClassifier::new(encoder, args.classes, adapters)?;
    PeftAdapter::load(&args.adapter, &varmap)?;
    Ok((model, varmap, tokenizer))
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

/// Predicts every sentence in batches, averaging `samples` draws of `posterior`.
fn run(
    args: &Args,
    posterior: &mut impl Posterior,
    samples: usize,
    (model, tokenizer): (&BertClassifier, &Tokenizer),
    sentences: &[Sentence],
    dev: &Device,
) -> Res<()> {
    let bar = progress_bar(sentences.len());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for batch in sentences.chunks(args.batch.max(1)) {
        let texts = batch.iter().map(|s| s.text.as_str()).collect();
        let (ids, types, mask) = minilm::encode(tokenizer, texts, dev)?;
        let p = predictive(posterior, samples, false, || {
            Ok(model.forward_t(&ids, &types, &mask, false)?)
        })?;
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

fn predict(args: &Args) -> Res<()> {
    if args.samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    let dev = Device::Cpu;
    let sentences = sentences(args)?;
    let (model, varmap, tokenizer) = load_model(args, &dev)?;
    let model = model.detach();
    let parts = (&model, &tokenizer);
    match &args.posterior {
        Some(path) => {
            let mut posterior = GaussianPosterior::load(path, &varmap)?;
            run(args, &mut posterior, args.samples, parts, &sentences, &dev)
        }
        None => run(args, &mut PointMass, 1, parts, &sentences, &dev),
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
