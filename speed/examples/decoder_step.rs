//! One LoRA training step of the real SmolLM2-135M-Instruct at the decoder issue's shape:
//! batch 8 x 96 tokens (left-padded to 96, seeded ids), LoRA r = 8, alpha 16 on q and v,
//! the lettered head's two answer tokens at the last position, cross-entropy, AdamW;
//! and one detached forward of the same batch (prediction). Prints one JSON line per
//! measured step, for `tools/decoder_paired.py`, which runs it alternately with
//! `tools/reference/decoder_step.py` (transformers + peft on the same GGUF and shape).
//!
//! `bash scripts/fetch-assets.sh --llm`, then
//! `cargo run --release --example decoder_step -- STEPS` (default 5, after a warm-up).
//! `-- STEPS --random` takes random weights of SmolLM2's shape instead of the file, for a
//! machine the 98 MB model cannot travel to (the GPU bundle's); with `--features cuda`
//! it runs on GPU 0.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use varlora::lora::LoraConfig;
use varlora::lora::TargetModules;
use varlora::models::{AdapterSpec, AnswerTokens, GgufDecoder, LlamaConfig, LlamaDecoder};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 8;
const TOKENS: usize = 96;
const GGUF: &str = "assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Seeded ids in [100, 49152), rows of 96 - 4i real tokens left-padded with id 2.
fn batch(dev: &Device) -> Res<(Tensor, Tensor, Tensor)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in 0..BATCH {
        let pad = 4 * row;
        for t in 0..TOKENS {
            let real = t >= pad;
            ids.push(if real {
                100 + (next() % 49_000) as u32
            } else {
                2
            });
            mask.push(u32::from(real));
        }
    }
    let labels = (0..BATCH as u32).map(|i| i % 2).collect::<Vec<_>>();
    Ok((
        Tensor::from_vec(ids, (BATCH, TOKENS), dev)?,
        Tensor::from_vec(mask, (BATCH, TOKENS), dev)?,
        Tensor::new(labels, dev)?,
    ))
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
    let steps: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| format!("steps: {a:?} is not a count"))?,
        None => 5,
    };
    // GPU 0 in a build with `--features cuda`.
    let dev = Device::cuda_if_available(0)?;
    let (config, weights) = if std::env::args().any(|a| a == "--random") {
        random_smollm2(&dev)?
    } else {
        let gguf = GgufDecoder::read(GGUF.as_ref(), &dev)
            .map_err(|e| format!("{e} (bash scripts/fetch-assets.sh --llm fetches it)"))?;
        (gguf.config, gguf.tensors)
    };
    let varmap = VarMap::new();
    let model = LlamaDecoder::load(
        VarBuilder::from_tensors(weights, DType::F32, &dev),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        &config,
        Some(&AdapterSpec::Lora(LoraConfig::new(8).alpha(16.0))),
        &TargetModules::new(["q_proj", "v_proj"]),
    )?;
    model.init(0)?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
    let (ids, mask, labels) = batch(&dev)?;
    // " A" and " B": two single tokens of SmolLM2's vocabulary.
    let answers = AnswerTokens::new(vec![330, 389])?;
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
