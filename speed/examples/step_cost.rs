//! What a whole training step (forward, backward, optimizer) costs with each method, as
//! paired ratios to AdamW's: LoRA with AdamW, LoRA with IVON and BLoB adapters with
//! `optim::Blob`, on a randomly initialised encoder of all-MiniLM-L6-v2's shape at the
//! fine-tuning example's batch (32 sentences padded to 48 tokens, rank 8 on query and
//! value; LoRA dropout 0.1, BLoB none, as the example runs them), and AdamW without
//! dropout, to show what the dropout mask costs.
//!
//! Each round takes one step of every method, in an order that rotates from round to
//! round, and the ratio is the median of the rounds' ratios (`paired`): this resolves
//! differences of a few percent that criterion's one-benchmark-after-another medians
//! (`cargo bench --bench encoder_step`) do not.
//!
//! `cargo run --release --example step_cost [-- ROUNDS]` (default 20 rounds)

mod minilm_shape;
mod paired;

use candle_core::{Device, Tensor};
use candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarMap};
use varlora::lora::{BlobConfig, BlobSampler, LoraConfig};
use varlora::models::{AdapterSpec, BertClassifier};
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig};

use paired::{Case, Res};

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

/// Each method: its name and a closure that takes one whole training step.
fn methods<'a>(batch: &'a Batch, dev: &Device) -> Res<Vec<Case<'a>>> {
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
            "LoRA, AdamW".into(),
            Box::new(move || Ok(adamw.backward_step(&batch.nll(&adamw_model)?)?)),
        ),
        (
            "LoRA, AdamW, no dropout".into(),
            Box::new(move || Ok(plain.backward_step(&batch.nll(&plain_model)?)?)),
        ),
        (
            "LoRA, IVON".into(),
            Box::new(move || Ok(ivon.backward_step(&batch.nll(&ivon_model)?)?)),
        ),
        (
            "BLoB, optim::Blob".into(),
            Box::new(move || Ok(blob.backward_step(&batch.nll(&blob_model)?)?)),
        ),
    ])
}

fn main() -> Res<()> {
    varlora::alloc::keep_freed_memory();
    let n = paired::count_arg(1, "rounds", 20)?;
    let dev = Device::Cpu;
    let batch = Batch::new(&dev)?;
    let mut methods = methods(&batch, &dev)?;
    let secs = paired::rounds(&mut methods, n)?;
    println!("{n} rounds, median step and paired ratio to AdamW (quartiles in brackets)\n");
    paired::print_table("whole step", &methods, &secs);
    Ok(())
}
