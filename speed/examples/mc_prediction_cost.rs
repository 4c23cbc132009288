//! What Monte Carlo prediction costs against one prediction at the posterior mean: 10
//! samples of an IVON posterior over LoRA adapters and the head, evaluated one at a time
//! and stacked in one forward pass (`BertClassifier::with_stacked_weights`) a chunk at a
//! time, as paired ratios (see `paired`). The model is a randomly initialised encoder of
//! all-MiniLM-L6-v2's shape with rank-8 LoRA on query and value; the batch is the
//! fine-tuning example's evaluation batch (64 sentences padded to 48 tokens) unless
//! `BATCH` says otherwise.
//!
//! `cargo run --release --example mc_prediction_cost [-- ROUNDS [BATCH]]` (default 10
//! rounds of 64 sentences); with `--features cuda`, on GPU 0.

mod minilm_shape;
mod paired;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use varlora::lora::LoraConfig;
use varlora::models::{AdapterSpec, BertClassifier};
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{predictive, predictive_at_point, predictive_stacked, GaussianPosterior};

use paired::{Case, Res};

const TOKENS: usize = 48;
const SAMPLES: usize = 10;

/// The detached model, the posterior over its adapters and head, and a batch.
struct Setup {
    model: BertClassifier,
    posterior: GaussianPosterior,
    ids: Tensor,
    types: Tensor,
    mask: Tensor,
}

impl Setup {
    fn new(batch: usize, vars: &VarMap, dev: &Device) -> Res<Self> {
        let frozen = minilm_shape::frozen_weights(&minilm_shape::config(), dev)?;
        let spec = AdapterSpec::Lora(LoraConfig::new(8).alpha(16.0));
        let model = minilm_shape::classifier(&spec, &frozen, vars, dev)?.detach();
        let posterior = Ivon::from_varmap(vars, IvonConfig::new(0.03, 3200.0))?.posterior()?;
        let (ids, types, mask) = minilm_shape::padded_batch(batch, TOKENS, dev)?;
        Ok(Self {
            model,
            posterior,
            ids,
            types,
            mask,
        })
    }

    fn logits(&self, model: &BertClassifier) -> varlora::Result<Tensor> {
        model.forward_t(&self.ids, &self.types, &self.mask, false)
    }

    /// The predictive at the mean, over samples one at a time, and over samples stacked
    /// `chunk` to a forward for each chunk size.
    fn cases(&self, chunks: &[usize]) -> Vec<Case<'_>> {
        let logits = move || self.logits(&self.model).map_err(candle_core::Error::wrap);
        let (mut at_mean, mut one_by_one) = (self.posterior.clone(), self.posterior.clone());
        let mut cases: Vec<Case<'_>> = vec![
            (
                "mean, one forward".into(),
                Box::new(move || Ok(predictive_at_point(&mut at_mean, logits).map(drop)?)),
            ),
            (
                format!("{SAMPLES} samples, one at a time"),
                Box::new(
                    move || Ok(predictive(&mut one_by_one, SAMPLES, false, logits).map(drop)?),
                ),
            ),
        ];
        for &chunk in chunks {
            let run = move || {
                predictive_stacked(SAMPLES, chunk, false, |ks| {
                    let weights = self.posterior.stacked_samples(ks.clone())?;
                    self.logits(&self.model.with_stacked_weights(&weights, ks.len())?)
                })
            };
            let name = format!("{SAMPLES} samples, stacked {chunk} per forward");
            cases.push((name, Box::new(move || Ok(run().map(drop)?))));
        }
        cases
    }
}

fn main() -> Res<()> {
    varlora::alloc::keep_freed_memory();
    let n = paired::count_arg(1, "rounds", 10)?;
    let batch = paired::count_arg(2, "batch", 64)?;
    // GPU 0 in a build with `--features cuda`, where stacking should pay at any batch.
    let dev = Device::cuda_if_available(0)?;
    let vars = VarMap::new();
    let setup = Setup::new(batch, &vars, &dev)?;
    let mut cases = setup.cases(&[10, 5, 2]);
    let secs = paired::rounds(&mut cases, n)?;
    println!(
        "{n} rounds of {batch} sentences padded to {TOKENS} tokens on {dev:?}, median time and \
         paired ratio to the mean's prediction (quartiles in brackets)\n"
    );
    paired::print_table("prediction", &cases, &secs);
    Ok(())
}
