//! One LoRA training step's forward and backward pass through an encoder of
//! all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, random frozen weights, rank 8
//! adapters on query and value), at the fine-tuning example's batch of 32 sentences padded
//! to 48 tokens, and the detached forward pass that prediction runs.
//!
//! `cargo bench --bench encoder_step`

#[path = "../examples/minilm_shape/mod.rs"]
mod minilm_shape;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use varlora::lora::LoraConfig;
use varlora::models::{AdapterSpec, AdapterTargets, BertClassifier, BertEncoder};

const BATCH: usize = 32;
const TOKENS: usize = 48;

fn encoder_step(c: &mut Criterion) {
    varlora::alloc::keep_freed_memory();
    let dev = Device::Cpu;
    let config = minilm_shape::config();
    let adapters = VarMap::new();
    let encoder = BertEncoder::load(
        VarBuilder::from_tensors(
            minilm_shape::frozen_weights(&config, &dev).unwrap(),
            DType::F32,
            &dev,
        ),
        VarBuilder::from_varmap(&adapters, DType::F32, &dev),
        &config,
        Some(&AdapterSpec::Lora(
            LoraConfig::new(8).alpha(16.0).dropout(0.1),
        )),
        AdapterTargets::default(),
    )
    .unwrap();
    let model = BertClassifier::new(
        encoder,
        2,
        VarBuilder::from_varmap(&adapters, DType::F32, &dev),
    )
    .unwrap();
    let ids: Vec<u32> = (0..BATCH * TOKENS).map(|i| (i * 7 % 1000) as u32).collect();
    let ids = Tensor::from_vec(ids, (BATCH, TOKENS), &dev).unwrap();
    let types = ids.zeros_like().unwrap();
    // Sentences of 8 to 48 tokens, padded to 48: about 40% padding (batches of 32 Pang &
    // Lee sentences average 48%).
    let mask: Vec<u32> = (0..BATCH * TOKENS)
        .map(|i| u32::from(i % TOKENS < 8 + (i / TOKENS * 23) % 41))
        .collect();
    let mask = Tensor::from_vec(mask, (BATCH, TOKENS), &dev).unwrap();
    let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 2).collect();
    let labels = Tensor::new(labels, &dev).unwrap();

    let mut group = c.benchmark_group("encoder_step");
    group.sample_size(10);
    group.bench_function("train_forward_backward", |b| {
        b.iter(|| {
            let logits = model.forward_t(&ids, &types, &mask, true).unwrap();
            loss::cross_entropy(&logits, &labels)
                .unwrap()
                .backward()
                .unwrap()
        });
    });
    let detached = model.detach();
    group.bench_function("eval_forward", |b| {
        b.iter(|| detached.forward_t(&ids, &types, &mask, false).unwrap());
    });
    group.finish();
}

criterion_group!(benches, encoder_step);
criterion_main!(benches);
