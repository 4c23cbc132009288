//! What LoRA-Ensemble costs: one training step (forward, backward, AdamW) and the
//! parameter memory of M members in one batched model against M separate LoRA models, on
//! a randomly initialised encoder of all-MiniLM-L6-v2's shape (6 layers, hidden 384).
//!
//! `cargo run --release --example lora_ensemble_cost`

mod minilm_shape;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, VarBuilder, VarMap};
use varlora::lora::LoraConfig;
use varlora::models::{AdapterSpec, AdapterTargets, BertClassifier, BertEncoder};

const BATCH: usize = 4;
const SEQ: usize = 32;
const RANK: usize = 8;
const STEPS: usize = 3;

fn bytes(ts: impl Iterator<Item = Tensor>) -> usize {
    ts.map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Reuse freed tensor memory instead of page-faulting it in again every step.
    varlora::alloc::keep_freed_memory();
    let dev = Device::Cpu;
    let config = minilm_shape::config();
    let weights = minilm_shape::frozen_weights(&config, &dev)?;
    let frozen_bytes = bytes(weights.values().cloned());
    let targets = AdapterTargets {
        query: true,
        key: true,
        value: true,
        attention_output: true,
        intermediate: false,
        output: false,
    };
    let ids = Tensor::arange(0u32, (BATCH * SEQ) as u32, &dev)?.reshape((BATCH, SEQ))?;
    let types = ids.zeros_like()?;
    let mask = ids.ones_like()?;
    let y = Tensor::new(&[0u32, 1, 0, 1], &dev)?;
    let model = |spec: &AdapterSpec, vars: &VarMap| -> varlora::Result<BertClassifier> {
        let vb = VarBuilder::from_varmap(vars, DType::F32, &dev);
        let base = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
        BertClassifier::new(
            BertEncoder::load(base, vb.clone(), &config, Some(spec), targets)?,
            2,
            vb,
        )
    };
    println!("encoder of all-MiniLM-L6-v2's shape, LoRA rank {RANK} on q, k, v, out; batch {BATCH} x {SEQ} tokens; mean of {STEPS} steps after one warm-up\n");
    println!("| members | one batched model: step | memory (frozen + adapters) | M separate models: step | memory |");
    println!("|--------:|------------------------:|---------------------------:|------------------------:|-------:|");
    for members in [1usize, 4, 16] {
        // One batched model.
        let vars = VarMap::new();
        let ens = model(
            &AdapterSpec::Ensemble {
                members,
                rank: RANK,
            },
            &vars,
        )?;
        let mut opt = AdamW::new_lr(vars.all_vars(), 1e-3)?;
        let mut step = || -> Result<(), Box<dyn std::error::Error>> {
            let logits = ens.forward_t(&ids, &types, &mask, true)?;
            let logits = if members == 1 {
                logits.unsqueeze(0)?
            } else {
                logits
            };
            let losses = (0..members)
                .map(|m| loss::cross_entropy(&logits.get(m)?, &y))
                .collect::<candle_core::Result<Vec<_>>>()?;
            opt.backward_step(&Tensor::stack(&losses, 0)?.mean_all()?)?;
            Ok(())
        };
        step()?;
        let start = Instant::now();
        for _ in 0..STEPS {
            step()?;
        }
        let batched = start.elapsed().as_secs_f64() / STEPS as f64;
        let batched_mem =
            frozen_bytes + bytes(vars.all_vars().into_iter().map(|v| v.as_tensor().clone()));
        // M separate LoRA models (scale 1, as the ensemble). Here they share the frozen
        // tensors, which does not change their speed; the memory column counts the M
        // copies that M independent models hold.
        let mut separate = Vec::new();
        for _ in 0..members {
            let vars = VarMap::new();
            let m = model(
                &AdapterSpec::Lora(LoraConfig::new(RANK).alpha(RANK as f64)),
                &vars,
            )?;
            let opt = AdamW::new_lr(vars.all_vars(), 1e-3)?;
            separate.push((m, vars, opt));
        }
        let mut step_all = || -> Result<(), Box<dyn std::error::Error>> {
            for (m, _, opt) in separate.iter_mut() {
                opt.backward_step(&loss::cross_entropy(
                    &m.forward_t(&ids, &types, &mask, true)?,
                    &y,
                )?)?;
            }
            Ok(())
        };
        step_all()?;
        let start = Instant::now();
        for _ in 0..STEPS {
            step_all()?;
        }
        let apart = start.elapsed().as_secs_f64() / STEPS as f64;
        let apart_mem: usize = members * frozen_bytes
            + separate
                .iter()
                .map(|(_, v, _)| bytes(v.all_vars().into_iter().map(|v| v.as_tensor().clone())))
                .sum::<usize>();
        println!(
            "| {members:>7} | {:>20.0} ms | {:>23.1} MB | {:>20.0} ms | {:>4.1} MB |",
            batched * 1e3,
            batched_mem as f64 / 1e6,
            apart * 1e3,
            apart_mem as f64 / 1e6
        );
    }
    println!("\nmemory: parameters only (f32), not activations or optimizer state; separate models counted with a frozen copy each");
    Ok(())
}
