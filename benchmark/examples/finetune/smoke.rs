//! The whole pipeline end to end on a tiny random BERT and generated corpora: every
//! method trains a few steps, is evaluated and writes its JSON, whose schema, ranges and
//! metrics are then checked against the predictions it wrote, recomputed here.

use std::path::{Path, PathBuf};

use clap::Parser;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::Tokenizer;

#[path = "../../../tests/common/mod.rs"]
mod common;

/// Words of the generated sentences: the first half lean positive, the rest negative.
const WORDS: [&str; 16] = [
    "good", "great", "fine", "warm", "bright", "fun", "kind", "calm", "bad", "dull", "cold",
    "grim", "sad", "weak", "poor", "slow",
];

/// A folder of its own under the system's temporary folder, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("varlora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `assets/` as `scripts/fetch-assets.sh` lays it out, with a tiny random BERT (the
/// encoder tests' config and weights), a WordPiece tokenizer of its 50 ids, and corpora of
/// generated sentences of the sizes the split needs.
fn tiny_assets(root: &Path) {
    let model = root.join("all-minilm-l6-v2");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("config.json"), common::tiny_bert::TINY).unwrap();
    let weights = common::tiny_bert::frozen_weights(&common::tiny_bert::tiny_config());
    candle_core::safetensors::save(&weights, model.join("model.safetensors")).unwrap();

    // vocab.txt as BERT's: one token a line, its id the line's number.
    let vocab: Vec<&str> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"]
        .into_iter()
        .chain(WORDS)
        .collect();
    let vocab_path = model.join("vocab.txt");
    std::fs::write(&vocab_path, vocab.join("\n") + "\n").unwrap();
    let wordpiece = WordPiece::from_file(vocab_path.to_str().unwrap())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tokenizer = Tokenizer::new(wordpiece);
    tokenizer
        .with_normalizer(Some(BertNormalizer::default()))
        .unwrap()
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), 3),
            ("[CLS]".into(), 2),
        )));
    tokenizer.save(model.join("tokenizer.json"), false).unwrap();

    let corpora = root.join("corpora");
    std::fs::create_dir_all(&corpora).unwrap();
    let sentence = |i: usize| -> String {
        (0..3 + i % 4)
            .map(|k| WORDS[(i * 7 + k * 5) % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let polarity: String = (0..1600)
        .map(|i| {
            let text = sentence(i);
            let positive = (i * 7) % WORDS.len() < WORDS.len() / 2;
            format!("\"{}\",\"{text}\"\n", if positive { "1" } else { "-1" })
        })
        .collect();
    std::fs::write(corpora.join("polarity-en-pang&lee2.csv"), polarity).unwrap();
    let wiki: String = (0..800)
        .map(|i| format!("\"0\",\"the {} the\"\n", sentence(i + 3)))
        .collect();
    std::fs::write(corpora.join("uncertainty-conll2010.csv"), wiki).unwrap();
}

/// One run of `finetune` with `flags` on the tiny assets, a few steps; its JSON and the
/// predictions it wrote.
fn run(assets: &Path, out: &Path, flags: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let base = [
        "finetune",
        "--limit",
        "48",
        "--train-size",
        "32",
        "--epochs",
        "2",
        "--batch",
        "8",
        "--max-tokens",
        "12",
        "--test-samples",
        "3",
        "--members",
        "2",
        "--student-samples",
        "5",
        "--student-epochs",
        "1",
        "--hydra-epochs",
        "1",
        "--predictions",
        "--assets",
        assets.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let args = super::Args::try_parse_from(base.iter().chain(flags)).unwrap();
    super::run(args).unwrap_or_else(|e| panic!("finetune {flags:?}: {e}"));
    let stem = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().ends_with("-predictions.json"))
        .expect("no predictions file written");
    let predictions = serde_json::from_str(&std::fs::read_to_string(&stem).unwrap()).unwrap();
    let json_path = PathBuf::from(stem.to_str().unwrap().replace("-predictions.json", ".json"));
    let json = serde_json::from_str(&std::fs::read_to_string(json_path).unwrap()).unwrap();
    (json, predictions)
}

/// Accuracy, NLL, 15-bin ECE (on the top class) and Brier, written out from their
/// definitions, independently of `varlora::metrics`.
fn metrics_of(probs: &[Vec<f64>], labels: &[usize]) -> [f64; 4] {
    let n = labels.len() as f64;
    let top = |p: &[f64]| (0..p.len()).fold(0, |b, c| if p[c] > p[b] { c } else { b });
    let mut bins = [(0.0, 0.0, 0.0); 15];
    let (mut hits, mut nll, mut brier) = (0.0, 0.0, 0.0);
    for (p, &y) in probs.iter().zip(labels) {
        let (c, right) = (top(p), f64::from(u8::from(top(p) == y)));
        hits += right;
        nll -= p[y].ln();
        brier += (0..p.len())
            .map(|k| (p[k] - f64::from(u8::from(k == y))).powi(2))
            .sum::<f64>();
        let b = ((p[c] * 15.0) as usize).min(14);
        bins[b] = (bins[b].0 + 1.0, bins[b].1 + p[c], bins[b].2 + right);
    }
    let ece = bins
        .iter()
        .map(|&(count, conf, hits)| (hits - conf).abs() / n * f64::from(u8::from(count > 0.0)))
        .sum();
    [hits / n, nll / n, ece, brier / n]
}

/// The run's JSON has the fields the results tools read, every metric in its range, and
/// the evaluation metrics equal to those recomputed from its predictions.
fn check(flags: &[&str], json: &serde_json::Value, predictions: &serde_json::Value) {
    for key in [
        "optimizer",
        "seed",
        "epochs",
        "train_sentences",
        "eval_set",
        "args",
    ] {
        assert!(json.get(key).is_some(), "{flags:?}: no {key}");
    }
    let positive = |k: &str| json[k].as_f64().is_some_and(|v| v.is_finite() && v >= 0.0);
    for key in [
        "ms_per_step",
        "train_loss",
        "eval_sentences",
        "ood_sentences",
    ] {
        assert!(positive(key), "{flags:?}: {key} = {}", json[key]);
    }
    let labels: Vec<usize> = serde_json::from_value(predictions["labels"].clone()).unwrap();
    assert_eq!(json["eval_sentences"].as_u64(), Some(labels.len() as u64));
    let rows = json["results"].as_array().unwrap();
    let written = predictions["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{flags:?}: no rows");
    assert_eq!(
        rows.len(),
        written.len(),
        "{flags:?}: a row without predictions"
    );
    for (row, pred) in rows.iter().zip(written) {
        let name = row["model"].as_str().unwrap();
        assert_eq!(pred["model"].as_str(), Some(name));
        let probs: Vec<Vec<f64>> = serde_json::from_value(pred["probs"].clone()).unwrap();
        assert_eq!(probs.len(), labels.len());
        for p in &probs {
            let sum: f64 = p.iter().sum();
            assert!(
                (sum - 1.0).abs() < 1e-5,
                "{name}: probabilities sum to {sum}"
            );
        }
        let f = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{name}: no {k}"));
        for key in ["accuracy", "ece", "auroc_msp", "auroc_entropy", "auroc_mi"] {
            assert!((0.0..=1.0).contains(&f(key)), "{name}: {key} = {}", f(key));
        }
        assert!(
            f("nll") >= 0.0 && (0.0..=2.0).contains(&f("brier")),
            "{name}"
        );
        let ours = metrics_of(&probs, &labels);
        for (key, expected) in ["accuracy", "nll", "ece", "brier"].iter().zip(ours) {
            assert!(
                (f(key) - expected).abs() < 1e-6,
                "{flags:?} {name}: {key} {} in the JSON, {expected} from its predictions",
                f(key)
            );
        }
        let bins = row["reliability"].as_array().unwrap();
        let counted: u64 = bins.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(counted, labels.len() as u64, "{name}: reliability counts");
    }
}

/// Every method, with TS, distillation and Hydra's two selections among them, runs end
/// to end and reports metrics that its own predictions reproduce.
#[test]
fn every_method_runs_end_to_end_and_reports_consistent_metrics() {
    let assets = scratch("smoke-assets");
    tiny_assets(&assets);
    let runs: [&[&str]; 8] = [
        &["--optimizer", "adamw"],
        &["--optimizer", "ivon"],
        &["--optimizer", "blob"],
        &["--optimizer", "mc-dropout"],
        &["--optimizer", "lora-ensemble"],
        &[
            "--optimizer",
            "hydra",
            "--hydra-selection",
            "weighted,top-k",
        ],
        &["--optimizer", "multi-ivon"],
        &["--distill-from", "ivon"],
    ];
    for (i, flags) in runs.iter().enumerate() {
        let out = assets.join(format!("out{i}"));
        let (json, predictions) = run(&assets, &out, flags);
        check(flags, &json, &predictions);
    }
    let _ = std::fs::remove_dir_all(&assets);
}
