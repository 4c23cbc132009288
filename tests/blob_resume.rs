//! A BLoB run saved at step k and resumed (a fresh model, optimizer and sampler, then
//! `Blob::load_state`) equals the run that never stopped, bit for bit; a corrupt or
//! mismatched file is refused and changes nothing.

mod common;

use candle_core::{DType, Tensor};
use candle_nn::{Optimizer, VarMap};
use common::tiny_decoder::{expected, load};
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{AdapterSpec, AnswerTokens, LlamaDecoder};
use varlora::optim::{Blob, BlobOptimConfig, Schedule, Scheduled};
use varlora::Error;

const SEED: u64 = 2;

/// A tiny Llama with BLoB on q and v (its layers drawing from one sampler of `seed`), and
/// its optimizer.
fn run(seed: u64) -> (LlamaDecoder, VarMap, Blob) {
    let sampler = BlobSampler::new(seed);
    let spec = AdapterSpec::Blob(
        BlobConfig::new(LoraConfig::new(2).alpha(4.0)),
        sampler.clone(),
    );
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &["q_proj", "v_proj"]);
    let mut vars: Vec<_> = varmap.data().lock().unwrap().clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let vars = vars.into_iter().map(|(_, v)| v).collect();
    let config = BlobOptimConfig::new(8, 2).lr(1e-2).kl_lr(1e-2);
    let blob = Blob::new(vars, model.blob_layers().unwrap(), config).unwrap();
    (model, varmap, blob)
}

fn step(model: &LlamaDecoder, blob: &mut impl Optimizer) {
    let (ids, mask, _) = expected("llama");
    let answers = AnswerTokens::new(vec![5, 17, 3, 39]).unwrap();
    let logits = model.answer_logits(&ids, &mask, &answers, true).unwrap();
    let y = Tensor::new(&[1u32, 3], logits.device()).unwrap();
    blob.backward_step(&candle_nn::loss::cross_entropy(&logits, &y).unwrap())
        .unwrap();
}

/// Every var's bits, by name.
fn bits(varmap: &VarMap) -> Vec<(String, Vec<u32>)> {
    let data = varmap.data().lock().unwrap();
    let mut out: Vec<_> = data
        .iter()
        .map(|(k, v)| {
            let x: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            (k.clone(), x.iter().map(|f| f.to_bits()).collect())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_resumed_blob_run_equals_the_uninterrupted_one() {
    let (model, varmap, mut blob) = run(SEED);
    for _ in 0..6 {
        step(&model, &mut blob);
    }
    let uninterrupted = bits(&varmap);

    let dir = std::env::temp_dir().join(format!("varlora-blob-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blob.safetensors");
    let (model, _, mut blob) = run(SEED);
    for _ in 0..3 {
        step(&model, &mut blob);
    }
    blob.save(&path).unwrap();
    drop((model, blob));

    let (model, varmap, mut blob) = run(SEED);
    blob.load_state(&path).unwrap();
    assert_eq!(blob.step_count(), 3);
    for _ in 0..3 {
        step(&model, &mut blob);
    }
    assert!(bits(&varmap) == uninterrupted, "the resumed run differs");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_corrupt_or_mismatched_blob_file_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("varlora-blob-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blob.safetensors");
    let (model, _, mut blob) = run(SEED);
    step(&model, &mut blob);
    blob.save(&path).unwrap();

    let (_, varmap, mut fresh) = run(SEED);
    let before = bits(&varmap);
    let original = std::fs::read(&path).unwrap();
    for i in (0..original.len()).step_by(97) {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        match fresh.load_state(&path) {
            Err(Error::File { .. }) => {}
            other => panic!("byte {i} flipped: {other:?}"),
        }
    }
    assert!(bits(&varmap) == before && fresh.step_count() == 0);

    std::fs::write(&path, &original).unwrap();
    // A model whose layers draw from a sampler of another seed.
    let (_, other_varmap, mut other) = run(SEED + 1);
    let other_before = bits(&other_varmap);
    let err = other.load_state(&path).unwrap_err().to_string();
    assert!(err.contains("seed"), "{err}");
    assert!(bits(&other_varmap) == other_before && other.step_count() == 0);
    fresh.load_state(&path).unwrap();
    assert_eq!(fresh.step_count(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The same under a schedule: `Scheduled::save` keeps the schedule's place, so the resumed
/// run takes the rates the uninterrupted one took.
#[test]
fn a_resumed_scheduled_blob_run_equals_the_uninterrupted_one() {
    let schedule = Schedule::linear_with_warmup_ratio(0.3, 6).unwrap();
    let scheduled = |blob| Scheduled::new(blob, schedule).unwrap();
    let (model, varmap, blob) = run(SEED);
    let mut opt = scheduled(blob);
    for _ in 0..6 {
        step(&model, &mut opt);
    }
    let uninterrupted = bits(&varmap);

    let dir = std::env::temp_dir().join(format!("varlora-blob-sched-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("blob.safetensors");
    let (model, _, blob) = run(SEED);
    let mut opt = scheduled(blob);
    for _ in 0..3 {
        step(&model, &mut opt);
    }
    opt.save(&path).unwrap();

    let (model, varmap, blob) = run(SEED);
    let mut opt = scheduled(blob);
    opt.load_state(&path).unwrap();
    assert_eq!(opt.step_count(), 3);
    for _ in 0..3 {
        step(&model, &mut opt);
    }
    assert!(bits(&varmap) == uninterrupted, "the resumed run differs");
    std::fs::remove_dir_all(dir).unwrap();
}
