//! LoRA fine-tuning of all-MiniLM-L6-v2 for sentence polarity (Pang & Lee), with AdamW,
//! IVON or BLoB, evaluated for accuracy, calibration and OOD detection against Wikipedia
//! sentences (CoNLL-2010).
//!
//! Run `scripts/fetch-assets.sh` first, then for example
//! `cargo run --release --example finetune -- --optimizer ivon --seed 0`.
//! Results go to `results/` as JSON and a Markdown row.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap, SGD};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};
use varlora::lora::{kl_weight, BlobConfig, BlobSampler, LoraConfig};
use varlora::metrics;
use varlora::models::{AdapterSpec, AdapterTargets, BertClassifier, BertConfig, BertEncoder};
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{predictive, predictive_at_point, PointMass, Posterior, Predictive};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Method {
    Adamw,
    Ivon,
    Blob,
}

#[derive(Parser, Debug)]
struct Args {
    /// The optimizer / posterior.
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: Method,
    /// Seed of the split, the batch order, the adapters' init and the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Posterior samples at test time (IVON, BLoB).
    #[arg(long, default_value_t = 10)]
    test_samples: usize,
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Tokens per sentence, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Learning rate (default: 5e-4 AdamW, 0.03 IVON, 5e-4 BLoB's AdamW).
    #[arg(long)]
    lr: Option<f64>,
    /// IVON's initial Hessian.
    #[arg(long, default_value_t = 3e-4)]
    hess_init: f64,
    /// IVON's effective sample size (1e6 to 1e8 in ivon-lora; with hess_init 3e-4 the
    /// training-set size gives a posterior far too wide for LoRA weights).
    #[arg(long, default_value_t = 1e6)]
    ess: f64,
    /// IVON's clip radius (ivon-lora: 1e-3 over 10,000 steps; a short run needs more room).
    #[arg(long, default_value_t = 1e-3)]
    clip_radius: f64,
    /// LoRA dropout. candle draws dropout masks from an unseeded generator on the CPU, so
    /// only runs with 0 repeat exactly.
    #[arg(long, default_value_t = 0.1)]
    dropout: f32,
    /// BLoB's KL learning rate (SGD).
    #[arg(long, default_value_t = 0.01)]
    kl_lr: f64,
    /// Evaluate on 400 sentences held out of the training set instead of the test set
    /// (for choosing hyperparameters).
    #[arg(long)]
    validation: bool,
    /// Use only this many training and evaluation sentences (a smoke run).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value = "assets")]
    assets: PathBuf,
    #[arg(long, default_value = "results")]
    out: PathBuf,
}

/// Sentences and labels of a CSV with `"label","text"` rows (labels 1 / -1 -> 1 / 0).
fn read_corpus(path: &Path) -> Result<Vec<(String, u32)>, Box<dyn std::error::Error>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        let label = record
            .get(0)
            .ok_or("missing label")?
            .trim_start_matches('\u{feff}');
        let text = record.get(1).ok_or("missing text")?.to_string();
        rows.push((text, u32::from(label == "1")));
    }
    Ok(rows)
}

struct Batch {
    ids: Tensor,
    types: Tensor,
    mask: Tensor,
    labels: Tensor,
}

fn batches(
    tokenizer: &Tokenizer,
    rows: &[(String, u32)],
    size: usize,
    dev: &Device,
) -> Result<Vec<Batch>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for chunk in rows.chunks(size) {
        let texts: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
        let enc = tokenizer
            .encode_batch(texts, true)
            .map_err(|e| e.to_string())?;
        let field = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> candle_core::Result<Tensor> {
            let rows: Vec<Tensor> = enc
                .iter()
                .map(|e| Tensor::new(f(e), dev))
                .collect::<candle_core::Result<_>>()?;
            Tensor::stack(&rows, 0)
        };
        out.push(Batch {
            ids: field(&|e| e.get_ids())?,
            types: field(&|e| e.get_type_ids())?,
            mask: field(&|e| e.get_attention_mask())?,
            labels: Tensor::new(chunk.iter().map(|(_, y)| *y).collect::<Vec<_>>(), dev)?,
        });
    }
    Ok(out)
}

/// Concatenates per-batch predictives.
fn concat(parts: Vec<Predictive>) -> varlora::Result<Predictive> {
    let cat = |f: &dyn Fn(&Predictive) -> &Tensor| -> varlora::Result<Tensor> {
        Ok(Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), 0)?)
    };
    Ok(Predictive {
        log_probs: cat(&|p| &p.log_probs)?,
        probs: cat(&|p| &p.probs)?,
        total: cat(&|p| &p.total)?,
        aleatoric: cat(&|p| &p.aleatoric)?,
        epistemic: cat(&|p| &p.epistemic)?,
        samples: None,
    })
}

fn evaluate<P: Posterior>(
    posterior: &mut P,
    model: &BertClassifier,
    data: &[Batch],
    samples: usize,
) -> varlora::Result<Predictive> {
    let mut parts = Vec::new();
    for b in data {
        let logits = || {
            model
                .forward_t(&b.ids, &b.types, &b.mask, false)
                .map_err(candle_core::Error::wrap)
        };
        parts.push(if samples == 0 {
            predictive_at_point(posterior, logits)?
        } else {
            predictive(posterior, samples, false, logits)?
        });
    }
    concat(parts)
}

/// Re-initialises the trainable tensors from `seed` (candle's own initialisers are not
/// seedable on the CPU), with the distributions the layers use: LoRA's `A` and the head
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), BLoB's `G` U(eps / sqrt 2, eps) with eps = 0.05, `B`
/// zero.
fn seeded_init(varmap: &VarMap, seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    use rand_distr::{Distribution, Uniform};
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1417);
    let data = varmap.data().lock().map_err(|_| "poisoned")?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let fan_in = *var.dims().last().ok_or("scalar var")? as f32;
        let (lo, hi) = if name.ends_with("lora_b") {
            (0.0, 0.0)
        } else if name.ends_with("lora_a_g") {
            (0.05 / 2f32.sqrt(), 0.05)
        } else if name.ends_with("classifier.bias") {
            let h = 384f32;
            (-1.0 / h.sqrt(), 1.0 / h.sqrt())
        } else {
            (-1.0 / fan_in.sqrt(), 1.0 / fan_in.sqrt())
        };
        let values: Vec<f32> = if lo == hi {
            vec![lo; var.elem_count()]
        } else {
            let u = Uniform::new(lo, hi)?;
            (0..var.elem_count()).map(|_| u.sample(&mut rng)).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dev = Device::Cpu;
    let model_dir = args.assets.join("all-minilm-l6-v2");
    let corpora = args.assets.join("corpora");
    if !model_dir.join("model.safetensors").exists() || !corpora.exists() {
        return Err("missing assets: run scripts/fetch-assets.sh".into());
    }

    // Data: 800 test and 3200 training sentences (400 of them for validation on request).
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut polarity = read_corpus(&corpora.join("polarity-en-pang&lee2.csv"))?;
    polarity.shuffle(&mut rng);
    let (test, train) = polarity.split_at(800);
    let (train, eval) = if args.validation {
        train.split_at(train.len() - 400)
    } else {
        (train, test)
    };
    let mut wiki = read_corpus(&corpora.join("uncertainty-conll2010.csv"))?;
    wiki.shuffle(&mut rng);
    let limit = args.limit.unwrap_or(usize::MAX);
    let (train, eval) = (
        &train[..train.len().min(limit)],
        &eval[..eval.len().min(limit)],
    );
    let ood = &wiki[..eval.len().min(800)];

    let mut tokenizer =
        Tokenizer::from_file(model_dir.join("tokenizer.json")).map_err(|e| e.to_string())?;
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: args.max_tokens,
            ..Default::default()
        }))
        .map_err(|e| e.to_string())?;
    tokenizer.with_padding(Some(PaddingParams::default()));
    let eval_batches = batches(&tokenizer, eval, 64, &dev)?;
    let ood_batches = batches(&tokenizer, ood, 64, &dev)?;

    // Model: LoRA (or BLoB) rank 8, alpha 16, dropout 0.1 on query and value.
    let config: BertConfig =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
    let lora = LoraConfig::new(8).alpha(16.0).dropout(args.dropout);
    let sampler = BlobSampler::new(args.seed);
    let spec = match args.optimizer {
        Method::Blob => AdapterSpec::Blob(BlobConfig::new(lora), sampler.clone()),
        _ => AdapterSpec::Lora(lora),
    };
    let varmap = VarMap::new();
    let adapters = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    // SAFETY: the weights file is not modified while mapped.
    let base = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[model_dir.join("model.safetensors")],
            DType::F32,
            &dev,
        )?
    };
    let encoder = BertEncoder::load(
        base,
        adapters.clone(),
        &config,
        Some(&spec),
        AdapterTargets::default(),
    )?;
    let model = BertClassifier::new(encoder, 2, adapters)?;
    seeded_init(&varmap, args.seed)?;

    let n_train = train.len();
    let steps_per_epoch = n_train / args.batch;
    let total = steps_per_epoch * args.epochs;
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed}<{eta}] {per_sec} {msg}",
    )?);
    let mut ivon = None;
    let (mut adamw, mut kl_sgd) = (None, None);
    match args.optimizer {
        Method::Ivon => {
            let c = IvonConfig::new(args.lr.unwrap_or(0.03), args.ess)
                .hess_init(args.hess_init)
                .weight_decay(0.0)
                .rescale_lr(false)
                .clip_radius(args.clip_radius)
                .seed(args.seed);
            ivon = Some(Ivon::from_varmap(&varmap, c)?);
        }
        Method::Adamw | Method::Blob => {
            // BLoB: AdamW on everything but G; SGD on the reweighted KL for every var.
            let vars: Vec<_> = {
                let data = varmap.data().lock().map_err(|_| "poisoned")?;
                let mut named: Vec<_> = data.iter().collect();
                named.sort_by(|a, b| a.0.cmp(b.0));
                named
                    .into_iter()
                    .filter(|(k, _)| !k.ends_with("lora_a_g"))
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            let p = ParamsAdamW {
                lr: args.lr.unwrap_or(5e-4),
                weight_decay: 0.0,
                eps: 1e-6,
                ..Default::default()
            };
            adamw = Some(AdamW::new(vars, p)?);
            if args.optimizer == Method::Blob {
                kl_sgd = Some(SGD::new(varmap.all_vars(), args.kl_lr)?);
            }
        }
    }

    let start = Instant::now();
    let mut step = 0u64;
    for epoch in 0..args.epochs {
        let mut order = train.to_vec();
        order.shuffle(&mut rng);
        for b in batches(
            &tokenizer,
            &order[..steps_per_epoch * args.batch],
            args.batch,
            &dev,
        )? {
            let logits = model.forward_t(&b.ids, &b.types, &b.mask, true)?;
            let nll = loss::cross_entropy(&logits, &b.labels)?;
            let grads = nll.backward()?;
            if let Some(opt) = ivon.as_mut() {
                opt.step(&grads)?;
            } else if let Some(opt) = adamw.as_mut() {
                opt.step(&grads)?;
            }
            if let Some(sgd) = kl_sgd.as_mut() {
                // KL of every BLoB layer, reweighted over one epoch; G keeps its NLL gradient.
                let kl = model.encoder().blob_kl()?;
                let mut kl_grads = (kl * kl_weight(step + 1, steps_per_epoch as u64))?
                    .to_dtype(DType::F32)?
                    .backward()?;
                for (name, var) in varmap.data().lock().map_err(|_| "poisoned")?.iter() {
                    if name.ends_with("lora_a_g") {
                        if let Some(g) = grads.get(var.as_tensor()) {
                            let sum = match kl_grads.get(var.as_tensor()) {
                                Some(k) => (k + g)?,
                                None => g.clone(),
                            };
                            kl_grads.insert(var.as_tensor(), sum);
                        }
                    }
                }
                sgd.step(&kl_grads)?;
            }
            step += 1;
            bar.set_message(format!(
                "epoch {} loss {:.4}",
                epoch + 1,
                nll.to_scalar::<f32>()?
            ));
            bar.inc(1);
        }
    }
    bar.finish();

    let train_secs = start.elapsed().as_secs_f64();

    // Evaluation: point estimate, and posterior samples where there is a posterior, with a
    // detached copy of the model so that forwards keep no graph.
    let model = model.detach();
    let mut rows = Vec::new();
    let mut record =
        |name: String, id: Predictive, out: Predictive| -> varlora::Result<serde_json::Value> {
            let y = Tensor::cat(
                &eval_batches
                    .iter()
                    .map(|b| b.labels.clone())
                    .collect::<Vec<_>>(),
                0,
            )?;
            let msp =
                |p: &Predictive| -> varlora::Result<Tensor> { Ok((p.probs.max(1)?.neg()? + 1.0)?) };
            let r = serde_json::json!({
                "model": name,
                "accuracy": metrics::accuracy(&id.probs, &y)?,
                "nll": metrics::nll(&id.log_probs, &y)?,
                "ece": metrics::ece(&id.probs, &y, 15)?,
                "brier": metrics::brier(&id.probs, &y)?,
                "auroc_msp": metrics::auroc(&msp(&id)?, &msp(&out)?)?,
                "auroc_entropy": metrics::auroc(&id.total, &out.total)?,
                "auroc_mi": metrics::auroc(&id.epistemic, &out.epistemic)?,
            });
            rows.push(r.clone());
            Ok(r)
        };
    match args.optimizer {
        Method::Adamw => {
            let (id, out) = (
                evaluate(&mut PointMass, &model, &eval_batches, 0)?,
                evaluate(&mut PointMass, &model, &ood_batches, 0)?,
            );
            record("AdamW".into(), id, out)?;
        }
        Method::Ivon => {
            let opt = ivon.as_mut().ok_or("no IVON")?;
            let (id, out) = (
                evaluate(opt, &model, &eval_batches, 0)?,
                evaluate(opt, &model, &ood_batches, 0)?,
            );
            record("IVON @ mean".into(), id, out)?;
            let s = args.test_samples;
            let (id, out) = (
                evaluate(opt, &model, &eval_batches, s)?,
                evaluate(opt, &model, &ood_batches, s)?,
            );
            record(format!("IVON {s} samples"), id, out)?;
        }
        Method::Blob => {
            let mut post = sampler.clone();
            let (id, out) = (
                evaluate(&mut post, &model, &eval_batches, 0)?,
                evaluate(&mut post, &model, &ood_batches, 0)?,
            );
            record("BLoB N = 0".into(), id, out)?;
            let s = args.test_samples;
            let (id, out) = (
                evaluate(&mut post, &model, &eval_batches, s)?,
                evaluate(&mut post, &model, &ood_batches, s)?,
            );
            record(format!("BLoB N = {s}"), id, out)?;
        }
    }

    let per_step_ms = 1e3 * train_secs / total.max(1) as f64;
    let summary = serde_json::json!({
        "optimizer": format!("{:?}", args.optimizer).to_lowercase(),
        "seed": args.seed,
        "epochs": args.epochs,
        "train_sentences": n_train,
        "eval_set": if args.validation { "validation" } else { "test" },
        "eval_sentences": eval.len(),
        "ood_sentences": ood.len(),
        "ms_per_step": per_step_ms,
        "peak_rss_mb": peak_rss_mb(),
        "results": rows,
    });
    std::fs::create_dir_all(&args.out)?;
    let stem = format!(
        "{:?}-seed{}{}",
        args.optimizer,
        args.seed,
        if args.validation { "-val" } else { "" }
    )
    .to_lowercase();
    std::fs::write(
        args.out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let mut md = String::from("| model | accuracy | NLL | ECE | Brier | AUROC MSP | AUROC entropy | AUROC MI | ms/step |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in summary["results"].as_array().ok_or("results")? {
        md.push_str(&format!(
            "| {} | {:.2}% | {:.4} | {:.4} | {:.4} | {:.3} | {:.3} | {:.3} | {:.0} |\n",
            r["model"].as_str().unwrap_or("?"),
            100.0 * r["accuracy"].as_f64().unwrap_or(f64::NAN),
            r["nll"].as_f64().unwrap_or(f64::NAN),
            r["ece"].as_f64().unwrap_or(f64::NAN),
            r["brier"].as_f64().unwrap_or(f64::NAN),
            r["auroc_msp"].as_f64().unwrap_or(f64::NAN),
            r["auroc_entropy"].as_f64().unwrap_or(f64::NAN),
            r["auroc_mi"].as_f64().unwrap_or(f64::NAN),
            per_step_ms
        ));
    }
    std::fs::write(args.out.join(format!("{stem}.md")), &md)?;
    print!("{md}");
    println!(
        "peak memory {:.0} MB; results in {}",
        peak_rss_mb().unwrap_or(f64::NAN),
        args.out.display()
    );
    Ok(())
}
