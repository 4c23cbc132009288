//! What a whole training step (forward, backward, optimizer) costs with each method, as
//! paired ratios to AdamW's: LoRA with AdamW, LoRA with IVON and BLoB adapters with
//! `optim::Blob`, on a randomly initialised encoder of all-MiniLM-L6-v2's shape at the
//! fine-tuning example's batch (32 sentences padded to 48 tokens, rank 8 on query and
//! value; LoRA dropout 0.1, BLoB none, as the example runs them), and AdamW without
//! dropout, to show what the dropout mask costs.
//!
//! Each round takes one step of every method, in an order that rotates from round to
//! round, and the ratio is the median of the rounds' ratios. On a shared machine whose
//! speed drifts over minutes, this pairing resolves differences of a few percent that
//! criterion's one-benchmark-after-another medians (`cargo bench --bench encoder_step`)
//! do not.
//!
//! `cargo run --release --example step_cost [-- ROUNDS]` (default 20 rounds)

mod minilm_shape;

use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarMap};
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{AdapterSpec, BertClassifier};
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 32;
const TOKENS: usize = 48;

/// The example's batch: token ids, type ids, mask and labels.
struct Batch {
    ids: Tensor,
    types: Tensor,
    mask: Tensor,
    labels: Tensor,
}

impl Batch {
    fn new(dev: &Device) -> Res<Self> {
        let (ids, types, mask) = minilm_shape::padded_batch(BATCH, TOKENS, dev)?;
        let labels = Tensor::new((0..BATCH as u32).map(|i| i % 2).collect::<Vec<_>>(), dev)?;
        Ok(Self {
            ids,
            types,
            mask,
            labels,
        })
    }

    fn nll(&self, model: &BertClassifier) -> candle_core::Result<Tensor> {
        let logits = model.forward_t(&self.ids, &self.types, &self.mask, true)?;
        loss::cross_entropy(&logits, &self.labels)
    }
}

/// One method: its name and a closure that takes one whole training step.
type Method<'a> = (&'static str, Box<dyn FnMut() -> Res<()> + 'a>);

fn methods<'a>(batch: &'a Batch, dev: &Device) -> Res<Vec<Method<'a>>> {
    let frozen = minilm_shape::frozen_weights(&minilm_shape::config(), dev)?;
    let model_of = |spec: &AdapterSpec, adapters: &VarMap| {
        minilm_shape::classifier(spec, &frozen, adapters, dev)
    };
    let lora = LoraConfig::new(8).alpha(16.0).dropout(0.1);
    let (adamw_vars, ivon_vars, blob_vars) = (VarMap::new(), VarMap::new(), VarMap::new());
    let adamw_model = model_of(&AdapterSpec::Lora(lora.clone()), &adamw_vars)?;
    let params = ParamsAdamW {
        lr: 1e-4,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut adamw = AdamW::new(adamw_vars.all_vars(), params.clone())?;
    // BLoB runs without dropout: what the mask costs AdamW's step.
    let plain_vars = VarMap::new();
    let plain_lora = AdapterSpec::Lora(lora.clone().dropout(0.0));
    let plain_model = model_of(&plain_lora, &plain_vars)?;
    let mut plain = AdamW::new(plain_vars.all_vars(), params)?;
    let ivon_model = model_of(&AdapterSpec::Lora(lora.clone()), &ivon_vars)?;
    let mut ivon = Ivon::from_varmap(&ivon_vars, IvonConfig::new(0.03, 3200.0))?;
    let blob_spec = AdapterSpec::Blob(BlobConfig::new(lora.dropout(0.0)), BlobSampler::new(0));
    let blob_model = model_of(&blob_spec, &blob_vars)?;
    let layers = blob_model.encoder().blob_layers()?;
    let config = BlobOptimConfig::new(3200, BATCH).lr(1e-4).kl_lr(1e-3);
    let mut blob = Blob::new(blob_vars.all_vars(), layers, config)?;
    Ok(vec![
        (
            "LoRA, AdamW",
            Box::new(move || Ok(adamw.backward_step(&batch.nll(&adamw_model)?)?)),
        ),
        (
            "LoRA, AdamW, no dropout",
            Box::new(move || Ok(plain.backward_step(&batch.nll(&plain_model)?)?)),
        ),
        (
            "LoRA, IVON",
            Box::new(move || Ok(ivon.backward_step(&batch.nll(&ivon_model)?)?)),
        ),
        (
            "BLoB, optim::Blob",
            Box::new(move || Ok(blob.backward_step(&batch.nll(&blob_model)?)?)),
        ),
    ])
}

/// The median and the quartiles of `v`.
fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.25), at(0.75)]
}

/// Seconds of each method's step in each round, after one warm-up step each.
fn rounds(methods: &mut [Method<'_>], rounds: usize) -> Res<Vec<Vec<f64>>> {
    let k = methods.len();
    let mut secs = vec![Vec::with_capacity(rounds); k];
    for (_, step) in methods.iter_mut() {
        step()?;
    }
    for r in 0..rounds {
        for i in 0..k {
            let m = (r + i) % k;
            let start = Instant::now();
            (methods[m].1)()?;
            secs[m].push(start.elapsed().as_secs_f64());
        }
    }
    Ok(secs)
}

fn main() -> Res<()> {
    varlora::alloc::keep_freed_memory();
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| format!("rounds: {a:?} is not a count"))?,
        None => 20,
    };
    if n == 0 {
        return Err("rounds: at least 1".into());
    }
    let dev = Device::Cpu;
    let batch = Batch::new(&dev)?;
    let mut methods = methods(&batch, &dev)?;
    let secs = rounds(&mut methods, n)?;
    println!("{n} rounds, median step and paired ratio to AdamW (quartiles in brackets)\n");
    println!("| whole step | median | vs AdamW, paired |");
    println!("|---|---:|---:|");
    for ((name, _), s) in methods.iter().zip(&secs) {
        let ratios = s.iter().zip(&secs[0]).map(|(a, b)| a / b).collect();
        let [ms, _, _] = quartiles(s.iter().map(|x| x * 1e3).collect());
        let [r, lo, hi] = quartiles(ratios);
        println!("| {name} | {ms:.0} ms | {r:.3} [{lo:.3}, {hi:.3}] |");
    }
    Ok(())
}
