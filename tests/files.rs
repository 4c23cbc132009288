//! The crate's files: every byte of a checkpoint or adapter file is covered by its
//! checksum, and LoRA adapters round-trip through peft's layout.

mod common;

use common::tiny_bert::{frozen_weights, inputs, query_value_output, tiny_config};

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use varlora::files::peft::PeftAdapter;
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{
    AdapterSpec, BertClassifier, BertConfig, BertEncoder, SavedAdapter, SavedClassifier,
};
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{sample_logits, GaussianPosterior, Posterior};
use varlora::Error;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("varlora-files-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Flips one bit of every byte of `path` in turn; `load` must return an `Error::File`
/// for each. The file is restored afterwards.
fn assert_every_byte_is_covered(path: &Path, mut load: impl FnMut() -> varlora::Result<()>) {
    let original = std::fs::read(path).unwrap();
    load().expect("the intact file loads");
    for i in 0..original.len() {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        std::fs::write(path, &bytes).unwrap();
        match load() {
            Err(Error::File { .. }) => {}
            other => panic!("byte {i} of {} flipped: {other:?}", original.len()),
        }
    }
    std::fs::write(path, &original).unwrap();
}

fn ivon_with_state() -> (Ivon, Vec<Var>) {
    let dev = Device::Cpu;
    let vars = vec![
        Var::from_tensor(&common::randn(1, 1.0, &[3, 2], DType::F32)).unwrap(),
        Var::from_tensor(&common::randn(2, 1.0, &[4], DType::F32)).unwrap(),
    ];
    let mut opt = Ivon::new(vars.clone(), IvonConfig::new(0.1, 100.0)).unwrap();
    let x = Tensor::ones(2, DType::F32, &dev).unwrap();
    for _ in 0..2 {
        let loss = (vars[0]
            .as_tensor()
            .matmul(&x.unsqueeze(1).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            + vars[1].as_tensor().sqr().unwrap().sum_all().unwrap())
        .unwrap();
        opt.backward_step(&loss).unwrap();
    }
    (opt, vars)
}

#[test]
fn every_byte_of_an_ivon_checkpoint_is_checked_and_a_failed_load_changes_nothing() {
    let dir = scratch("ivon");
    let path = dir.join("ivon.safetensors");
    let (opt, _) = ivon_with_state();
    opt.save(&path).unwrap();
    let (mut target, vars) = ivon_with_state();
    let before: Vec<Vec<f32>> = vars
        .iter()
        .map(|v| v.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_every_byte_is_covered(&path, || target.load_state(&path));
    let after: Vec<Vec<f32>> = vars
        .iter()
        .map(|v| v.flatten_all().unwrap().to_vec1().unwrap())
        .collect();
    assert_eq!(before, after);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_ivon_checkpoint_of_another_kind_or_version_is_named_as_such() {
    let dir = scratch("kind");
    let path = dir.join("other.safetensors");
    let t = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let meta = std::collections::HashMap::from([
        ("varlora.kind".to_string(), "ivon-checkpoint".to_string()),
        ("varlora.version".to_string(), "1".to_string()),
    ]);
    safetensors::serialize_to_file([("x", &t)], Some(meta), &path).unwrap();
    let (mut opt, _) = ivon_with_state();
    let err = opt.load_state(&path).unwrap_err().to_string();
    assert!(err.contains("format version 1"), "{err}");
    safetensors::serialize_to_file([("x", &t)], None, &path).unwrap();
    let err = opt.load_state(&path).unwrap_err().to_string();
    assert!(
        err.contains("not written by this version of varlora"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A tiny classifier with rank-2 LoRA on `query_value_output()` and a head trained whole, its adapters
/// and head in the returned VarMap, initialised from `seed` with non-zero `B`s.
fn classifier(seed: u64) -> (BertClassifier, VarMap) {
    classifier_with(&AdapterSpec::Lora(LoraConfig::new(2).alpha(4.0)), seed)
}

/// The tiny pretrained weights and config.
fn tiny_base() -> (VarBuilder<'static>, BertConfig) {
    let config = tiny_config();
    let base = VarBuilder::from_tensors(frozen_weights(&config), DType::F32, &Device::Cpu);
    (base, config)
}

/// As [`classifier`], with the adapter `spec` makes.
fn classifier_with(spec: &AdapterSpec, seed: u64) -> (BertClassifier, VarMap) {
    let dev = Device::Cpu;
    let (base, config) = tiny_base();
    let varmap = VarMap::new();
    let adapters = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let encoder = BertEncoder::load(
        base,
        adapters.clone(),
        &config,
        Some(spec),
        &query_value_output(),
    )
    .unwrap();
    let model = BertClassifier::new(encoder, 3, adapters).unwrap();
    model.init(seed).unwrap();
    for (i, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
        if name.ends_with("lora_b") {
            var.set(&common::randn(
                seed * 100 + i as u64,
                0.1,
                var.dims(),
                DType::F32,
            ))
            .unwrap();
        }
    }
    (model, varmap)
}

/// Saves `vars` as `classifier`'s rank-2 peft adapter in `dir`; the weights file's path.
fn save_peft(dir: &Path, vars: &VarMap) -> PathBuf {
    PeftAdapter::new(LoraConfig::new(2).alpha(4.0), query_value_output())
        .save(dir, vars)
        .unwrap();
    dir.join("adapter_model.safetensors")
}

fn logits(model: &BertClassifier) -> Vec<Vec<f32>> {
    let (ids, types, mask) = inputs();
    model
        .forward_t(&ids, &types, &mask, false)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn a_lora_classifier_round_trips_through_peft_files() {
    let dir = scratch("peft");
    let (trained, trained_vars) = classifier(1);
    let adapter = PeftAdapter {
        base_model: Some("sentence-transformers/all-MiniLM-L6-v2".into()),
        ..PeftAdapter::new(LoraConfig::new(2).alpha(4.0), query_value_output())
    };
    adapter.save(&dir, &trained_vars).unwrap();
    let (fresh, fresh_vars) = classifier(2);
    assert_ne!(logits(&fresh), logits(&trained));
    assert_eq!(PeftAdapter::load(&dir, &fresh_vars).unwrap(), adapter);
    assert_eq!(logits(&fresh), logits(&trained));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn peft_files_use_peft_names_shapes_and_config_fields() {
    let dir = scratch("names");
    let (_, vars) = classifier(1);
    let path = save_peft(&dir, &vars);
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |k: &str| file.tensor(k).unwrap().shape().to_vec();
    let p = "base_model.model.encoder.layer.1.attention.self.query";
    assert_eq!(shape(&format!("{p}.lora_A.weight")), [2, 16]);
    assert_eq!(shape(&format!("{p}.lora_B.weight")), [16, 2]);
    assert_eq!(
        shape("base_model.model.encoder.layer.0.output.dense.lora_A.weight"),
        [2, 32]
    );
    assert_eq!(shape("base_model.model.classifier.weight"), [3, 16]);
    assert_eq!(shape("base_model.model.classifier.bias"), [3]);
    // Two layers, three targets, A and B, plus the head's two.
    assert_eq!(file.len(), 2 * 3 * 2 + 2);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 2);
    assert_eq!(config["lora_alpha"], 4.0);
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier"]));
    // peft matches a string target with re.fullmatch: the attention output is not hit.
    let re = config["target_modules"].as_str().unwrap();
    assert_eq!(
        re,
        r".*\.layer\.\d+\.(attention\.self\.query|attention\.self\.value|output\.dense)"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_byte_of_a_peft_weights_file_written_here_is_checked() {
    let dir = scratch("peft-bytes");
    let (_, vars) = classifier(1);
    let path = save_peft(&dir, &vars);
    let (_, target) = classifier(2);
    assert_every_byte_is_covered(&path, || PeftAdapter::load(&dir, &target).map(|_| ()));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_peft_file_without_our_checksum_loads_and_a_mismatched_one_changes_nothing() {
    let dir = scratch("foreign");
    let (trained, vars) = classifier(1);
    let path = save_peft(&dir, &vars);
    // Rewrite the weights as Python's peft would: the same tensors, only {"format": "pt"}.
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors.iter(), Some(meta.clone()), &path).unwrap();
    let (fresh, fresh_vars) = classifier(2);
    PeftAdapter::load(&dir, &fresh_vars).unwrap();
    assert_eq!(logits(&fresh), logits(&trained));
    // A file missing one tensor sets no var at all.
    tensors.remove("base_model.model.encoder.layer.1.attention.self.value.lora_B.weight");
    safetensors::serialize_to_file(tensors.iter(), Some(meta), &path).unwrap();
    let (other, other_vars) = classifier(3);
    let before = logits(&other);
    let err = PeftAdapter::load(&dir, &other_vars)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer.1.attention.self.value.lora_B.weight is missing"),
        "{err}"
    );
    assert_eq!(logits(&other), before);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn adapters_of_a_sequence_classification_model_load_and_its_pooler_head_is_refused() {
    let dir = scratch("seqcls");
    let (trained, vars) = classifier(1);
    let path = save_peft(&dir, &vars);
    // Rename as peft names a BertForSequenceClassification's encoder.
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let renamed = |keep_head: bool| {
        tensors
            .iter()
            .filter(|(k, _)| keep_head || !k.contains("classifier"))
            .map(|(k, v)| {
                let k = k.replace(
                    "base_model.model.encoder.",
                    "base_model.model.bert.encoder.",
                );
                (k, v.clone())
            })
            .collect::<std::collections::HashMap<_, _>>()
    };
    safetensors::serialize_to_file(renamed(true).iter(), None, &path).unwrap();
    let (_, fresh_vars) = classifier(2);
    let err = PeftAdapter::load(&dir, &fresh_vars)
        .unwrap_err()
        .to_string();
    assert!(err.contains("reads the pooler output"), "{err}");
    safetensors::serialize_to_file(renamed(false).iter(), None, &path).unwrap();
    let (fresh, fresh_vars) = classifier(2);
    fresh_vars
        .data()
        .lock()
        .unwrap()
        .retain(|k, _| !k.starts_with("classifier"));
    PeftAdapter::load(&dir, &fresh_vars).unwrap();
    // The encoder's adapters are the trained ones: only the heads differ.
    let (ids, types, mask) = inputs();
    let hidden = |m: &BertClassifier| {
        m.encoder()
            .forward_t(&ids, &types, Some(&mask), false)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(hidden(&fresh), hidden(&trained));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_transposed_lora_factor_is_refused_not_reshaped() {
    let dir = scratch("transposed");
    let (_, vars) = classifier(1);
    let path = save_peft(&dir, &vars);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let key = "base_model.model.encoder.layer.0.attention.self.query.lora_A.weight";
    let transposed = tensors[key].t().unwrap().contiguous().unwrap();
    tensors.insert(key.to_string(), transposed);
    safetensors::serialize_to_file(tensors.iter(), None, &path).unwrap();
    let (other, other_vars) = classifier(2);
    let before = logits(&other);
    let err = PeftAdapter::load(&dir, &other_vars)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{key} has shape [16, 2]")), "{err}");
    assert_eq!(logits(&other), before);
    std::fs::remove_dir_all(dir).unwrap();
}

fn write_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut c = serde_json::json!({
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
        "target_modules": ["query", "value"], "bias": "none", "use_rslora": false
    });
    edit(&mut c);
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
}

#[test]
fn peft_configs_from_python_are_read_and_unsupported_settings_named() {
    let dir = scratch("config");
    write_config(&dir, |_| {});
    let read = PeftAdapter::read_config(&dir).unwrap();
    assert_eq!(read.lora, LoraConfig::new(8).alpha(16.0).dropout(0.1));
    assert_eq!(read.targets, BertEncoder::query_value());
    write_config(&dir, |c| {
        c["target_modules"] = serde_json::json!(["output.dense"])
    });
    let t = PeftAdapter::read_config(&dir).unwrap().targets;
    // peft's suffix match: `output.dense` also hits `attention.output.dense`.
    let hit = |m: &str| t.matches(&format!("encoder.layer.1.{m}"));
    assert!(hit("output.dense") && hit("attention.output.dense") && !hit("intermediate.dense"));
    for (key, value, says) in [
        ("use_rslora", serde_json::json!(true), "use_rslora"),
        ("use_dora", serde_json::json!(true), "use_dora"),
        ("bias", serde_json::json!("all"), "bias"),
        ("fan_in_fan_out", serde_json::json!(true), "fan_in_fan_out"),
        (
            "rank_pattern",
            serde_json::json!({"query": 4}),
            "rank_pattern",
        ),
        (
            "alpha_pattern",
            serde_json::json!({"value": 32}),
            "alpha_pattern",
        ),
        ("peft_type", serde_json::json!("IA3"), "peft_type"),
        (
            "target_modules",
            serde_json::json!("(unclosed"),
            "target_modules",
        ),
        ("target_modules", serde_json::json!(3), "target_modules"),
        (
            "r",
            serde_json::json!("eight"),
            "r is missing or not a number",
        ),
    ] {
        write_config(&dir, |c| c[key] = value);
        let err = PeftAdapter::read_config(&dir).unwrap_err().to_string();
        assert!(err.contains(says), "{key}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// IVON over the tiny classifier's adapters and head after a few steps, with a
/// Hessian that has moved from its init.
fn trained_ivon(model: &BertClassifier, vars: &VarMap) -> Ivon {
    let config = IvonConfig::new(0.05, 50.0).hess_init(0.5).seed(3);
    let mut opt = Ivon::from_varmap(vars, config).unwrap();
    let (ids, types, mask) = inputs();
    let y = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
    for _ in 0..3 {
        let logits = model.forward_t(&ids, &types, &mask, false).unwrap();
        opt.backward_step(&candle_nn::loss::cross_entropy(&logits, &y).unwrap())
            .unwrap();
    }
    opt
}

fn sampled(posterior: &mut impl Posterior, model: &BertClassifier) -> Vec<f32> {
    let (ids, types, mask) = inputs();
    let z = sample_logits(posterior, 3, || {
        Ok(model.forward_t(&ids, &types, &mask, false)?)
    })
    .unwrap();
    z.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn a_saved_ivon_posterior_predicts_as_the_optimizer_in_another_model() {
    let dir = scratch("posterior");
    let path = dir.join("posterior.safetensors");
    let (model, vars) = classifier(1);
    let mut opt = trained_ivon(&model, &vars);
    opt.set_prediction_scale(2.0).unwrap();
    let theirs = sampled(&mut opt, &model);
    let at_mean = opt
        .with_point_estimate(|| {
            Ok(model.forward_t(&inputs().0, &inputs().1, &inputs().2, false)?)
        })
        .unwrap();
    opt.posterior().unwrap().save(&path).unwrap();
    let (fresh, fresh_vars) = classifier(2);
    let mut loaded = GaussianPosterior::load(&path, &fresh_vars).unwrap();
    assert!(loaded.set_scale(-1.0).is_err() && loaded.set_scale(f64::INFINITY).is_err());
    assert!(opt.set_prediction_scale(f64::NAN).is_err());
    loaded.set_scale(2.0).unwrap();
    let ours = sampled(&mut loaded, &fresh);
    // Sample k is the optimizer's sample k; std * z against z / sqrt(precision) differs
    // in the last bit.
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} against {b}");
    }
    assert_ne!(theirs[..6], theirs[6..12]);
    let ours_mean = loaded
        .with_point_estimate(|| {
            Ok(fresh.forward_t(&inputs().0, &inputs().1, &inputs().2, false)?)
        })
        .unwrap();
    assert_eq!(
        ours_mean.to_vec2::<f32>().unwrap(),
        at_mean.to_vec2::<f32>().unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_untrained_ivon_posterior_has_the_closed_form_std() {
    let (_, vars) = classifier(1);
    let opt = Ivon::from_varmap(
        &vars,
        IvonConfig::new(0.1, 200.0)
            .hess_init(0.3)
            .weight_decay(1e-2),
    )
    .unwrap();
    let posterior = opt.posterior().unwrap();
    let expected = 1.0 / (200.0f64 * (0.3 + 1e-2)).sqrt();
    let mut count = 0;
    for (_, _, std) in posterior.entries() {
        for s in std.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            assert!((s as f64 - expected).abs() < 1e-7, "{s} against {expected}");
            count += 1;
        }
    }
    assert!(count > 100);
}

#[test]
fn every_byte_of_a_posterior_file_is_checked_and_a_mismatched_model_is_named() {
    let dir = scratch("posterior-bytes");
    let path = dir.join("posterior.safetensors");
    let (model, vars) = classifier(1);
    trained_ivon(&model, &vars)
        .posterior()
        .unwrap()
        .save(&path)
        .unwrap();
    let (_, target) = classifier(2);
    assert_every_byte_is_covered(&path, || {
        GaussianPosterior::load(&path, &target).map(|_| ())
    });
    // A model without the adapted value layers.
    let dev = Device::Cpu;
    let other = VarMap::new();
    VarBuilder::from_varmap(&other, DType::F32, &dev)
        .get((1, 3, 16), "classifier.weight")
        .unwrap();
    let err = GaussianPosterior::load(&path, &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("which the model lacks"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_saved_blob_classifier_is_its_posterior_again() {
    let dir = scratch("blob");
    let path = dir.join("classifier.safetensors");
    let blob = BlobConfig::new(LoraConfig::new(2).alpha(4.0));
    let mut sampler = BlobSampler::new(5);
    let (model, vars) = classifier_with(&AdapterSpec::Blob(blob.clone(), sampler.clone()), 1);
    let saved = SavedClassifier {
        adapter: SavedAdapter::Blob { blob, seed: 5 },
        targets: query_value_output(),
        classes: 3,
    };
    saved.save(&path, &vars).unwrap();
    let (base, config) = tiny_base();
    let loaded = SavedClassifier::load(&path, base, &config).unwrap();
    assert_eq!(loaded.saved, saved);
    let mut their_sampler = loaded.sampler.clone().unwrap();
    let theirs = sampled(&mut their_sampler, &loaded.model);
    assert_eq!(sampled(&mut sampler, &model), theirs);
    assert_ne!(theirs[..6], theirs[6..12], "the samples differ");
    let (base, config) = tiny_base();
    assert_every_byte_is_covered(&path, || {
        SavedClassifier::load(&path, base.clone(), &config).map(|_| ())
    });
    // A file for another model: one var fewer.
    vars.data()
        .lock()
        .unwrap()
        .retain(|k, _| !k.ends_with("layer.1.output.dense.lora_b"));
    saved.save(&path, &vars).unwrap();
    let err = SavedClassifier::load(&path, base, &config)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("layer.1.output.dense.lora_b is missing"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Classifier files written before targets were peft's `target_modules` hold six BERT
/// flags; they read as the modules they named, the MLP's output without the attention's.
#[test]
fn targets_saved_as_bert_flags_read_as_the_modules_they_named() {
    let old = r#"{"query": true, "key": false, "value": true, "attention_output": false,
                  "intermediate": false, "output": true}"#;
    let t: varlora::lora::TargetModules = serde_json::from_str(old).unwrap();
    assert_eq!(t, query_value_output());
    let hit = |m: &str| t.matches(&format!("encoder.layer.3.{m}"));
    assert!(hit("attention.self.query") && hit("attention.self.value") && hit("output.dense"));
    assert!(!hit("attention.self.key") && !hit("attention.output.dense"));
    // Either of peft's forms round-trips through JSON as itself.
    for t in [query_value_output(), BertEncoder::attention()] {
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            serde_json::from_str::<varlora::lora::TargetModules>(&json).unwrap(),
            t
        );
    }
}
