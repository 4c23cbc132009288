//! What LoRA-Ensemble costs: one training step (forward, backward, AdamW), one prediction
//! (a detached forward) and the parameter memory of M members in one batched model against
//! M separate LoRA models, on a randomly initialised encoder of all-MiniLM-L6-v2's shape
//! (6 layers, hidden 384).
//!
//! Posterior samples stacked as members in one forward are timed by
//! `examples/mc_prediction_cost.rs`.
//!
//! `cargo run --release --example lora_ensemble_cost`

mod minilm_shape;

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, VarBuilder, VarMap};
use varlora::lora::LoraConfig;
use varlora::models::{AdapterSpec, BertClassifier, BertConfig, BertEncoder};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 4;
const SEQ: usize = 32;
const RANK: usize = 8;
const STEPS: usize = 3;

fn bytes(ts: impl Iterator<Item = Tensor>) -> usize {
    ts.map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
}

fn var_bytes(vars: &VarMap) -> usize {
    bytes(vars.all_vars().into_iter().map(|v| v.as_tensor().clone()))
}

/// Mean seconds of `f` over `STEPS` runs after one warm-up.
fn mean_secs(mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    f()?;
    let start = Instant::now();
    for _ in 0..STEPS {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() / STEPS as f64)
}

/// A batch and the frozen encoder every model shares.
struct Bench {
    dev: Device,
    config: BertConfig,
    weights: HashMap<String, Tensor>,
    ids: Tensor,
    types: Tensor,
    mask: Tensor,
    labels: Tensor,
}

/// One model's (or M models') step and prediction times and parameter bytes.
struct Cost {
    step: f64,
    predict: f64,
    bytes: usize,
}

impl Bench {
    fn new() -> Res<Self> {
        let dev = Device::Cpu;
        let config = minilm_shape::config();
        let weights = minilm_shape::frozen_weights(&config, &dev)?;
        let ids = Tensor::arange(0u32, (BATCH * SEQ) as u32, &dev)?.reshape((BATCH, SEQ))?;
        Ok(Self {
            types: ids.zeros_like()?,
            mask: ids.ones_like()?,
            labels: Tensor::new(&[0u32, 1, 0, 1], &dev)?,
            ids,
            dev,
            config,
            weights,
        })
    }

    fn frozen_bytes(&self) -> usize {
        bytes(self.weights.values().cloned())
    }

    fn model(&self, spec: &AdapterSpec, vars: &VarMap) -> varlora::Result<BertClassifier> {
        let vb = VarBuilder::from_varmap(vars, DType::F32, &self.dev);
        let base = VarBuilder::from_tensors(self.weights.clone(), DType::F32, &self.dev);
        let encoder = BertEncoder::load(
            base,
            vb.clone(),
            &self.config,
            Some(spec),
            &BertEncoder::attention(),
        )?;
        BertClassifier::new(encoder, 2, vb)
    }

    fn logits(&self, model: &BertClassifier, train: bool) -> varlora::Result<Tensor> {
        model.forward_t(&self.ids, &self.types, &self.mask, train)
    }

    /// M members as one batched model, trained on the mean of their losses.
    fn batched(&self, members: usize) -> Res<Cost> {
        let vars = VarMap::new();
        let spec = AdapterSpec::Ensemble {
            members,
            rank: RANK,
        };
        let ens = self.model(&spec, &vars)?;
        let mut opt = AdamW::new_lr(vars.all_vars(), 1e-3)?;
        let step = mean_secs(|| {
            let logits = self.logits(&ens, true)?;
            let logits = if members == 1 {
                logits.unsqueeze(0)?
            } else {
                logits
            };
            let losses = (0..members)
                .map(|m| loss::cross_entropy(&logits.get(m)?, &self.labels))
                .collect::<candle_core::Result<Vec<_>>>()?;
            opt.backward_step(&Tensor::stack(&losses, 0)?.mean_all()?)?;
            Ok(())
        })?;
        let detached = ens.detach();
        let predict = mean_secs(|| Ok(self.logits(&detached, false).map(drop)?))?;
        Ok(Cost {
            step,
            predict,
            bytes: self.frozen_bytes() + var_bytes(&vars),
        })
    }

    /// M separate LoRA models (scale 1, as the ensemble). Here they share the frozen
    /// tensors, which does not change their speed; the bytes count the M copies that M
    /// independent models hold.
    fn separate(&self, members: usize) -> Res<Cost> {
        let mut models = Vec::new();
        for _ in 0..members {
            let vars = VarMap::new();
            let spec = AdapterSpec::Lora(LoraConfig::new(RANK).alpha(RANK as f64));
            let m = self.model(&spec, &vars)?;
            let opt = AdamW::new_lr(vars.all_vars(), 1e-3)?;
            models.push((m, vars, opt));
        }
        let step = mean_secs(|| {
            for (m, _, opt) in models.iter_mut() {
                let loss = loss::cross_entropy(&self.logits(m, true)?, &self.labels)?;
                opt.backward_step(&loss)?;
            }
            Ok(())
        })?;
        let detached: Vec<_> = models.iter().map(|(m, _, _)| m.detach()).collect();
        let predict = mean_secs(|| {
            for m in &detached {
                self.logits(m, false)?;
            }
            Ok(())
        })?;
        let adapters: usize = models.iter().map(|(_, v, _)| var_bytes(v)).sum();
        Ok(Cost {
            step,
            predict,
            bytes: members * self.frozen_bytes() + adapters,
        })
    }
}

fn main() -> Res<()> {
    // Reuse freed tensor memory instead of page-faulting it in again every step.
    varlora::alloc::keep_freed_memory();
    let bench = Bench::new()?;
    println!("encoder of all-MiniLM-L6-v2's shape, LoRA rank {RANK} on q, k, v, out; batch {BATCH} x {SEQ} tokens; mean of {STEPS} runs after one warm-up\n");
    println!("| members | batched: step | predict | memory (frozen + adapters) | separate: step | predict | memory | predict, separate / batched |");
    println!("|--------:|--------------:|--------:|---------------------------:|---------------:|--------:|-------:|----------------------------:|");
    for members in [1usize, 4, 16] {
        let b = bench.batched(members)?;
        let s = bench.separate(members)?;
        println!(
            "| {members:>7} | {:>10.0} ms | {:>4.1} ms | {:>23.1} MB | {:>11.0} ms | {:>4.1} ms | {:>4.1} MB | {:>27.2} |",
            b.step * 1e3,
            b.predict * 1e3,
            b.bytes as f64 / 1e6,
            s.step * 1e3,
            s.predict * 1e3,
            s.bytes as f64 / 1e6,
            s.predict / b.predict,
        );
    }
    println!("\nmemory: parameters only (f32), not activations or optimizer state; separate models counted with a frozen copy each");
    Ok(())
}
