//! One LoRA training step's forward and backward pass through an encoder of
//! all-MiniLM-L6-v2's shape (6 layers, hidden 384, 12 heads, random frozen weights, rank 8
//! adapters on query and value), at the fine-tuning example's batch of 32 sentences padded
//! to 48 tokens, and the detached forward pass that prediction runs. Then whole training
//! steps (forward, backward, optimizer) as the fine-tuning example takes them, measured
//! in the same run: LoRA with AdamW, LoRA with IVON, and BLoB adapters with `optim::Blob`.
//!
//! `cargo bench --bench encoder_step`

#[path = "../examples/minilm_shape/mod.rs"]
mod minilm_shape;

use candle_core::{Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarMap};
use criterion::{criterion_group, criterion_main, Criterion};
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{AdapterSpec, BertClassifier};
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig};

const BATCH: usize = 32;
const TOKENS: usize = 48;

fn encoder_step(c: &mut Criterion) {
    varlora::alloc::keep_freed_memory();
    let dev = Device::Cpu;
    let frozen = minilm_shape::frozen_weights(&minilm_shape::config(), &dev).unwrap();
    let model_of = |spec: &AdapterSpec, adapters: &VarMap| {
        minilm_shape::classifier(spec, &frozen, adapters, &dev).unwrap()
    };
    let lora = LoraConfig::new(8).alpha(16.0).dropout(0.1);
    let adapters = VarMap::new();
    let model = model_of(&AdapterSpec::Lora(lora.clone()), &adapters);
    let (ids, types, mask) = minilm_shape::padded_batch(BATCH, TOKENS, &dev).unwrap();
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

    let nll = |m: &BertClassifier| {
        loss::cross_entropy(&m.forward_t(&ids, &types, &mask, true).unwrap(), &labels).unwrap()
    };
    let params = ParamsAdamW {
        lr: 1e-4,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut adamw = AdamW::new(adapters.all_vars(), params).unwrap();
    group.bench_function("adamw_lora_step", |b| {
        b.iter(|| adamw.backward_step(&nll(&model)).unwrap());
    });

    let ivon_vars = VarMap::new();
    let ivon_model = model_of(&AdapterSpec::Lora(lora.clone()), &ivon_vars);
    let mut ivon = Ivon::from_varmap(&ivon_vars, IvonConfig::new(0.03, 3200.0)).unwrap();
    group.bench_function("ivon_lora_step", |b| {
        b.iter(|| ivon.backward_step(&nll(&ivon_model)).unwrap());
    });

    let blob_vars = VarMap::new();
    let blob_spec = AdapterSpec::Blob(BlobConfig::new(lora.dropout(0.0)), BlobSampler::new(0));
    let blob_model = model_of(&blob_spec, &blob_vars);
    let layers = blob_model.encoder().blob_layers().unwrap();
    let config = BlobOptimConfig::new(3200, BATCH).lr(1e-4).kl_lr(1e-3);
    let mut blob = Blob::new(blob_vars.all_vars(), layers, config).unwrap();
    group.bench_function("blob_step", |b| {
        b.iter(|| blob.backward_step(&nll(&blob_model)).unwrap());
    });
    group.finish();
}

criterion_group!(benches, encoder_step);
criterion_main!(benches);
