//! Python's peft reads an adapter file written here as we do: the logits that
//! `PeftModel.from_pretrained` computes from it (recorded by
//! `tools/reference/peft_logits.py` into `tests/fixtures/peft/`) equal ours.
//!
//! To record again: `cargo test --test peft_reference -- --ignored` writes the tiny base
//! model, the inputs and the adapter, then the Python script adds `peft_logits.safetensors`.

mod common;

use common::tiny_bert::{frozen_weights, inputs, query_value_output, rel_error, tiny_config, TINY};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use varlora::files::peft::PeftAdapter;
use varlora::lora::LoraConfig;
use varlora::models::{AdapterSpec, BertClassifier, BertEncoder};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft")
}

fn lora() -> PeftAdapter {
    PeftAdapter::new(
        LoraConfig::new(2).alpha(4.0).dropout(0.0),
        query_value_output(),
    )
}

/// A classifier over `base` with empty adapters and head, in the returned VarMap.
fn classifier(base: HashMap<String, Tensor>) -> (BertClassifier, VarMap) {
    let dev = Device::Cpu;
    let config = tiny_config();
    let varmap = VarMap::new();
    let adapters = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let base = VarBuilder::from_tensors(base, DType::F32, &dev);
    let spec = AdapterSpec::Lora(lora().lora);
    let encoder = BertEncoder::load(
        base,
        adapters.clone(),
        &config,
        Some(&spec),
        &query_value_output(),
    )
    .unwrap();
    let model = BertClassifier::new(encoder, 3, adapters).unwrap();
    (model, varmap)
}

/// peft's logits for `inputs()`, computed by Python from the files in the fixture.
#[test]
fn python_peft_computes_our_logits_from_our_adapter_file() {
    let dir = fixture();
    let base = candle_core::safetensors::load(dir.join("base.safetensors"), &Device::Cpu).unwrap();
    let (model, vars) = classifier(base);
    assert_eq!(
        PeftAdapter::load(dir.join("adapter"), &vars).unwrap(),
        lora()
    );
    let (ids, types, mask) = inputs();
    let ours = model.forward_t(&ids, &types, &mask, false).unwrap();
    let peft =
        candle_core::safetensors::load(dir.join("peft_logits.safetensors"), &Device::Cpu).unwrap();
    let err = rel_error(&ours, &peft["logits"]);
    assert!(err < 1e-5, "relative error {err} against peft's logits");
    // peft's adapter changes the logits, so the comparison says something about it.
    let (plain, _) = classifier(
        candle_core::safetensors::load(dir.join("base.safetensors"), &Device::Cpu).unwrap(),
    );
    let head_only = rel_error(
        &plain.forward_t(&ids, &types, &mask, false).unwrap(),
        &peft["logits"],
    );
    assert!(
        head_only > 1e-2,
        "the fixture's adapter hardly matters ({head_only})"
    );
}

/// The files in the fixture are what this crate writes today for those vars: the same
/// config, and the same metadata and tensors (safetensors writes metadata in hash order,
/// so the bytes themselves differ from run to run).
#[test]
fn the_fixture_adapter_is_what_we_write() {
    let dir = fixture();
    let base = candle_core::safetensors::load(dir.join("base.safetensors"), &Device::Cpu).unwrap();
    let (_, vars) = classifier(base);
    PeftAdapter::load(dir.join("adapter"), &vars).unwrap();
    let out = std::env::temp_dir().join(format!("varlora-peft-ref-{}", std::process::id()));
    lora().save(&out, &vars).unwrap();
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    let config = "adapter_config.json";
    assert!(read(&out, config) == read(&dir.join("adapter"), config));
    let weights = "adapter_model.safetensors";
    let (ours, recorded) = (read(&out, weights), read(&dir.join("adapter"), weights));
    let parse = |b: &[u8]| {
        let (_, meta) = safetensors::SafeTensors::read_metadata(b).unwrap();
        let file = safetensors::SafeTensors::deserialize(b).unwrap();
        let mut tensors: Vec<_> = file
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        (meta.metadata().clone(), tensors)
    };
    assert!(
        parse(&ours) == parse(&recorded),
        "{weights} differs from the recorded one"
    );
    std::fs::remove_dir_all(out).unwrap();
}

/// Writes the fixture's inputs for `tools/reference/peft_logits.py`: the tiny base model
/// (`base.safetensors`, `config.json`), the token ids and an adapter with seeded,
/// non-zero factors and head.
#[test]
#[ignore = "records the fixture; run tools/reference/peft_logits.py after it"]
fn record() {
    let dir = fixture();
    std::fs::create_dir_all(&dir).unwrap();
    let base = frozen_weights(&tiny_config());
    candle_core::safetensors::save(&base, dir.join("base.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), TINY).unwrap();
    let (ids, types, mask) = inputs();
    let ins = HashMap::from([
        ("input_ids".to_string(), ids),
        ("token_type_ids".to_string(), types),
        ("attention_mask".to_string(), mask),
    ]);
    candle_core::safetensors::save(&ins, dir.join("inputs.safetensors")).unwrap();
    let (model, vars) = classifier(base);
    model.init(7).unwrap();
    let mut names: Vec<_> = vars.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let var = vars.data().lock().unwrap()[name].clone();
        var.set(&common::randn(900 + i as u64, 0.3, var.dims(), DType::F32))
            .unwrap();
    }
    lora().save(dir.join("adapter"), &vars).unwrap();
}

/// The decoder's adapter in the fixture: LoRA on q, v and the MLP's down projection,
/// named by a list as peft users write it.
fn decoder_lora() -> PeftAdapter {
    let targets = varlora::lora::TargetModules::new(["q_proj", "v_proj", "down_proj"]);
    PeftAdapter::new(LoraConfig::new(2).alpha(6.0).dropout(0.0), targets)
}

/// The tiny Llama of `tests/fixtures/decoder/llama` with empty adapters.
fn decoder() -> (varlora::models::LlamaDecoder, VarMap) {
    let spec = AdapterSpec::Lora(decoder_lora().lora);
    let targets = ["q_proj", "v_proj", "down_proj"];
    common::tiny_decoder::load("llama", DType::F32, Some(&spec), &targets)
}

/// peft's `LlamaForCausalLM` with our decoder adapter file computes our logits (recorded
/// by `tools/reference/peft_decoder_logits.py`), at every real position.
#[test]
fn python_peft_computes_our_decoder_logits_from_our_adapter_file() {
    let dir = fixture().join("decoder");
    let (model, vars) = decoder();
    let (ids, mask, plain) = common::tiny_decoder::expected("llama");
    assert_eq!(
        PeftAdapter::load(dir.join("adapter"), &vars).unwrap(),
        decoder_lora()
    );
    let ours = model.logits(&ids, &mask, false).unwrap();
    let peft =
        candle_core::safetensors::load(dir.join("peft_logits.safetensors"), &Device::Cpu).unwrap();
    let theirs = &peft["logits"];
    // Padding positions read nothing: transformers and we give them different junk.
    let keep = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let real = |t: &Tensor| t.broadcast_mul(&keep).unwrap();
    let scale = common::max_abs(&real(theirs));
    let err = common::max_abs_diff(&real(&ours), &real(theirs)) / scale;
    eprintln!("largest difference from peft's logits / largest logit: {err:e}");
    assert!(err < 1e-5, "relative error {err} against peft's logits");
    // The adapter moves the logits, so the comparison says something about it.
    let moved = common::max_abs_diff(&real(&plain), &real(theirs)) / scale;
    assert!(
        moved > 1e-2,
        "the fixture's adapter hardly matters ({moved})"
    );
}

/// Writes the decoder adapter for `tools/reference/peft_decoder_logits.py`: seeded,
/// non-zero factors on the tiny Llama.
#[test]
#[ignore = "records the fixture; run tools/reference/peft_decoder_logits.py after it"]
fn record_decoder() {
    let (_, vars) = decoder();
    let mut names: Vec<_> = vars.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let var = vars.data().lock().unwrap()[name].clone();
        var.set(&common::randn(700 + i as u64, 0.3, var.dims(), DType::F32))
            .unwrap();
    }
    decoder_lora()
        .save(fixture().join("decoder/adapter"), &vars)
        .unwrap();
}
