//! Prediction cost of a Hydra ensemble against one model, on all-MiniLM-L6-v2's shape
//! (random weights) at the fine-tuning example's evaluation batch of 64 sentences padded
//! to 48 tokens: one LoRA classifier's detached forward, the Hydra path with one unpruned
//! member (its overhead over the encoder's fused path), and 4 members each keeping a third
//! of every layer's heads and neurons (4 of 12 and 512 of 1536), the fine-tuning
//! benchmark's `--hydra-keep` default.
//!
//! `cargo bench --bench hydra_forward`

#[path = "../examples/minilm_shape/mod.rs"]
mod minilm_shape;

use candle_core::Device;
use candle_nn::VarMap;
use criterion::{criterion_group, criterion_main, Criterion};
use varlora::hydra::{plan_members, HydraClassifier, Importance, PruneConfig, Selection};
use varlora::lora::LoraConfig;
use varlora::models::AdapterSpec;

const BATCH: usize = 64;
const TOKENS: usize = 48;

fn hydra_forward(c: &mut Criterion) {
    varlora::alloc::keep_freed_memory();
    let dev = Device::Cpu;
    let config = minilm_shape::config();
    let frozen = minilm_shape::frozen_weights(&config, &dev).unwrap();
    let adapters = VarMap::new();
    let spec = AdapterSpec::Lora(LoraConfig::new(8).alpha(16.0));
    let model = minilm_shape::classifier(&spec, &frozen, &adapters, &dev).unwrap();
    let weights = model.merged_tensors().unwrap();
    let model = model.detach();

    let (ids, types, mask) = minilm_shape::padded_batch(BATCH, TOKENS, &dev).unwrap();

    let dense = HydraClassifier::dense(&weights, &config, false).unwrap();
    let flat = |n: usize| vec![(0..n).map(|i| 1.0 + i as f64).collect::<Vec<_>>(); 6];
    let importance = Importance {
        heads: flat(12),
        neurons: flat(1536),
    };
    let prune = PruneConfig {
        members: 4,
        keep_heads: 4,
        keep_neurons: 512,
        selection: Selection::Weighted { seed: 0 },
    };
    let plans = plan_members(&[importance], &prune).unwrap();
    let hydra = HydraClassifier::new(&weights, &config, &plans, false).unwrap();

    let mut group = c.benchmark_group("hydra_forward");
    group.sample_size(10);
    group.bench_function("lora_classifier", |b| {
        b.iter(|| model.forward_t(&ids, &types, &mask, false).unwrap());
    });
    group.bench_function("hydra_one_unpruned_member", |b| {
        b.iter(|| dense.forward(&ids, &types, &mask).unwrap());
    });
    group.bench_function("hydra_4_members_keep_1_3", |b| {
        b.iter(|| hydra.forward(&ids, &types, &mask).unwrap());
    });
    group.finish();
}

criterion_group!(benches, hydra_forward);
criterion_main!(benches);
