//! The decoder's costs on the real SmolLM2-135M-Instruct, LoRA r = 8, alpha 16 on q and v.
//! Prints one JSON line per measured step, for `tools/decoder_paired.py`, which runs it
//! alternately with `tools/reference/decoder_step.py` (transformers + peft on the same
//! GGUF and shapes). Three measurements:
//!
//! - (default) one training step at the decoder issue's shape, batch 8 x 96 tokens
//!   (left-padded, seeded ids), the lettered head's two answer tokens at the last
//!   position, cross-entropy, AdamW; and one detached forward of the same batch
//!   (prediction: 8 examples);
//! - `--cloze`: one training step of the cloze head, 4 questions of 4 choices (16
//!   sequences of up to 64 tokens, choices of 1 to 6 tokens), cross-entropy over each
//!   question's choices;
//! - `--samples`: the predictive of 10 IVON samples for the 8 x 96 batch, one sample
//!   at a time against all 10 stacked in one forward pass (ours only).
//!
//! `bash scripts/fetch-assets.sh --llm`, then
//! `cargo run --release --example decoder_step -- STEPS [--cloze | --samples]` (default
//! 5 steps, after a warm-up). `--random` takes random weights of SmolLM2's shape instead
//! of the file, for a machine the 98 MB model cannot travel to (the GPU bundle's); with
//! `--features cuda` it runs on GPU 0. `--bf16` stores the base in bf16.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use varlora::lora::LoraConfig;
use varlora::lora::TargetModules;
use varlora::models::{
    AdapterSpec, AnswerTokens, ClozeBatch, GgufDecoder, LlamaConfig, LlamaDecoder,
};
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{predictive, predictive_stacked};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 8;
const TOKENS: usize = 96;
const GGUF: &str = "assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `rows` sequences of `tokens` ids, row `r` left-padded with id 2 by `pad(r)` and its
/// real tokens drawn in [100, 49152) from one seeded xorshift, row by row.
fn seeded_rows(
    rows: usize,
    tokens: usize,
    pad: impl Fn(usize) -> usize,
    dev: &Device,
) -> Res<(Tensor, Tensor)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in 0..rows {
        for t in 0..tokens {
            let real = t >= pad(row);
            ids.push(if real {
                100 + (next() % 49_000) as u32
            } else {
                2
            });
            mask.push(u32::from(real));
        }
    }
    Ok((
        Tensor::from_vec(ids, (rows, tokens), dev)?,
        Tensor::from_vec(mask, (rows, tokens), dev)?,
    ))
}

/// The lettered batch: rows of 96 - 4i real tokens, labels alternating.
fn batch(dev: &Device) -> Res<(Tensor, Tensor, Tensor)> {
    let (ids, mask) = seeded_rows(BATCH, TOKENS, |row| 4 * row, dev)?;
    let labels = (0..BATCH as u32).map(|i| i % 2).collect::<Vec<_>>();
    Ok((ids, mask, Tensor::new(labels, dev)?))
}

/// The cloze batch: 4 questions of 4 choices, sequence `r` padded by `3r mod 12` and its
/// choice the last `1 + r mod 6` tokens; question `q`'s answer is choice `q`.
fn cloze_batch(dev: &Device) -> Res<ClozeBatch> {
    let (ids, mask) = seeded_rows(16, 64, |row| (3 * row) % 12, dev)?;
    Ok(ClozeBatch {
        ids,
        mask,
        choice_lens: (0..16).map(|r| 1 + r % 6).collect(),
        choices: 4,
    })
}

/// SmolLM2-135M's configuration and random weights of its shapes: matrices N(0, 1 /
/// fan_in), embeddings N(0, 1), norms 1.
fn random_smollm2(dev: &Device) -> Res<(LlamaConfig, HashMap<String, Tensor>)> {
    let config = LlamaConfig {
        model_type: "llama".into(),
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: Some(3),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: Some(1e5),
        rope_parameters: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        hidden_act: "silu".into(),
    };
    let (h, wide, kv) = (576, 1536, 3 * 64);
    let matrix = |rows: usize, cols: usize| {
        Tensor::randn(0f32, (1. / cols as f64).sqrt() as f32, (rows, cols), dev)
    };
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        Tensor::randn(0f32, 1., (49152, h), dev)?,
    );
    w.insert(
        "model.norm.weight".to_string(),
        Tensor::ones(h, DType::F32, dev)?,
    );
    for i in 0..30 {
        let p = |n: &str| format!("model.layers.{i}.{n}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(
                p(&format!("{norm}.weight")),
                Tensor::ones(h, DType::F32, dev)?,
            );
        }
        for (name, rows, cols) in [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", wide, h),
            ("mlp.up_proj", wide, h),
            ("mlp.down_proj", h, wide),
        ] {
            w.insert(p(&format!("{name}.weight")), matrix(rows, cols)?);
        }
    }
    Ok((config, w))
}

fn main() -> Res<()> {
    varlora::alloc::keep_freed_memory();
    varlora::threads::short_candle_spin();
    let steps: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| format!("steps: {a:?} is not a count"))?,
        None => 5,
    };
    // GPU 0 in a build with `--features cuda`.
    let dev = Device::cuda_if_available(0)?;
    let flag = |f: &str| std::env::args().any(|a| a == f);
    let dtype = if flag("--bf16") {
        DType::BF16
    } else {
        DType::F32
    };
    let (config, weights) = if flag("--random") {
        random_smollm2(&dev)?
    } else {
        let gguf = GgufDecoder::read_as(GGUF.as_ref(), dtype, &dev)
            .map_err(|e| format!("{e} (bash scripts/fetch-assets.sh --llm fetches it)"))?;
        (gguf.config, gguf.tensors)
    };
    let varmap = VarMap::new();
    let model = LlamaDecoder::load(
        VarBuilder::from_tensors(weights, dtype, &dev),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        &config,
        Some(&AdapterSpec::Lora(LoraConfig::new(8).alpha(16.0))),
        &TargetModules::new(["q_proj", "v_proj"]),
    )?;
    model.init(0)?;
    eprintln!("the base stored in {dtype:?}");
    let mode = std::env::args()
        .skip(2)
        .find(|a| a != "--random" && a != "--bf16");
    match mode.as_deref() {
        None => lettered(&model, &varmap, steps, &dev),
        Some("--cloze") => cloze(&model, &varmap, steps, &dev),
        Some("--samples") => samples(&model, &varmap, steps, &dev),
        Some(other) => Err(format!("unknown mode {other:?}: --cloze or --samples").into()),
    }
}

/// " A" and " B": two single tokens of SmolLM2's vocabulary.
fn answers() -> Res<AnswerTokens> {
    Ok(AnswerTokens::new(vec![330, 389])?)
}

/// The lettered training step and the detached forward (prediction) of the same batch.
fn lettered(model: &LlamaDecoder, varmap: &VarMap, steps: usize, dev: &Device) -> Res<()> {
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
    let (ids, mask, labels) = batch(dev)?;
    let answers = answers()?;
    let detached = model.detach();
    let mut step = || -> Res<f64> {
        let start = Instant::now();
        let logits = model.answer_logits(&ids, &mask, &answers, true)?;
        opt.backward_step(&loss::cross_entropy(&logits, &labels)?)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let forward = || -> Res<f64> {
        let start = Instant::now();
        detached.answer_logits(&ids, &mask, &answers, false)?;
        Ok(start.elapsed().as_secs_f64())
    };
    step()?;
    forward()?;
    for _ in 0..steps {
        let (train, predict) = (step()?, forward()?);
        println!(
            "{{\"impl\": \"varlora\", \"device\": \"{dev:?}\", \"step_s\": {train:.4}, \"forward_s\": {predict:.4}, \"peak_rss_mb\": {:.0}}}",
            peak_rss_mb()
        );
    }
    Ok(())
}

/// The cloze head's training step.
fn cloze(model: &LlamaDecoder, varmap: &VarMap, steps: usize, dev: &Device) -> Res<()> {
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
    let batch = cloze_batch(dev)?;
    let labels = Tensor::new(&[0u32, 1, 2, 3], dev)?;
    let mut step = || -> Res<f64> {
        let start = Instant::now();
        let logits = model.cloze_logits(&batch, true)?;
        opt.backward_step(&loss::cross_entropy(&logits, &labels)?)?;
        Ok(start.elapsed().as_secs_f64())
    };
    step()?;
    for _ in 0..steps {
        let train = step()?;
        println!(
            "{{\"impl\": \"varlora\", \"device\": \"{dev:?}\", \"cloze_step_s\": {train:.4}, \"peak_rss_mb\": {:.0}}}",
            peak_rss_mb()
        );
    }
    Ok(())
}

/// The predictive of 10 IVON samples of the LoRA factors, one at a time and stacked, in
/// alternating order.
fn samples(model: &LlamaDecoder, varmap: &VarMap, steps: usize, dev: &Device) -> Res<()> {
    const SAMPLES: usize = 10;
    let mut ivon = Ivon::from_varmap(varmap, IvonConfig::new(0.03, 1e6))?;
    let posterior = ivon.posterior()?;
    let (ids, mask, _) = batch(dev)?;
    let answers = answers()?;
    let detached = model.detach();
    let logits = || detached.answer_logits(&ids, &mask, &answers, false);
    let mut one_at_a_time = || -> Res<f64> {
        let start = Instant::now();
        predictive(&mut ivon, SAMPLES, false, || {
            logits().map_err(candle_core::Error::wrap)
        })?;
        Ok(start.elapsed().as_secs_f64())
    };
    let stacked = || -> Res<f64> {
        let start = Instant::now();
        predictive_stacked(SAMPLES, SAMPLES, false, |ks| {
            let weights = posterior.stacked_samples(ks.clone())?;
            let sampled = detached.with_stacked_weights(&weights, ks.len())?;
            let z = sampled.answer_logits(&ids, &mask, &answers, false)?;
            Ok(z.reshape((ks.len(), BATCH, 2))?)
        })?;
        Ok(start.elapsed().as_secs_f64())
    };
    one_at_a_time()?;
    stacked()?;
    for i in 0..steps {
        let (one, all) = if i % 2 == 0 {
            let one = one_at_a_time()?;
            (one, stacked()?)
        } else {
            let all = stacked()?;
            (one_at_a_time()?, all)
        };
        println!(
            "{{\"impl\": \"varlora\", \"device\": \"{dev:?}\", \"one_at_a_time_s\": {one:.4}, \"stacked_s\": {all:.4}, \"peak_rss_mb\": {:.0}}}",
            peak_rss_mb()
        );
    }
    Ok(())
}

/// Peak resident memory of this process, from /proc (Linux); 0 elsewhere.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
