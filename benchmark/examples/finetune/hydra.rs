//! Hydra: prune the fine-tuned LoRA model (merged) into differently pruned members, merge
//! them into one grouped network, and fine-tune it briefly on the mean of their losses.

use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use tokenizers::Tokenizer;
use varlora::hydra::{
    plan_members, HydraClassifier, Importance, LabelledBatch, PruneConfig, Selection,
};
use varlora::models::{BertClassifier, BertConfig};
use varlora::optim::{Schedule, Scheduled};

use crate::data::{batches, Batch};
use crate::train::nll;

/// How the members are made and trained.
pub struct Recipe {
    pub members: usize,
    /// Fraction of each layer's heads and neurons a member keeps.
    pub keep: f64,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
}

/// The dense merged `model` and its Taylor importance on `calibration`, from which every
/// selection's members are pruned.
pub struct Source {
    weights: std::collections::HashMap<String, candle_core::Tensor>,
    importance: Importance,
}

impl Source {
    pub fn new(
        model: &BertClassifier,
        config: &BertConfig,
        calibration: &[Batch],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let weights = model.merged_tensors()?;
        let dense = HydraClassifier::dense(&weights, config, false)?;
        let labelled: Vec<LabelledBatch> = calibration.iter().map(labelled).collect();
        let importance = dense.taylor_importance(&labelled)?;
        Ok(Self {
            weights,
            importance,
        })
    }

    /// The merged network of `recipe.members` members chosen by `selection`.
    pub fn build(
        &self,
        config: &BertConfig,
        recipe: &Recipe,
        selection: Selection,
    ) -> Result<HydraClassifier, Box<dyn std::error::Error>> {
        let keep = |n: usize| ((recipe.keep * n as f64).round() as usize).clamp(1, n);
        let prune = PruneConfig {
            members: recipe.members,
            keep_heads: keep(config.num_attention_heads),
            keep_neurons: keep(config.intermediate_size),
            selection,
        };
        let plans = plan_members(std::slice::from_ref(&self.importance), &prune)?;
        Ok(HydraClassifier::new(&self.weights, config, &plans, true)?)
    }
}

fn labelled(b: &Batch) -> LabelledBatch {
    LabelledBatch {
        input_ids: b.ids.clone(),
        token_type_ids: b.types.clone(),
        attention_mask: b.mask.clone(),
        labels: b.labels.clone(),
    }
}

/// AdamW on the mean of the members' cross-entropies, linearly decayed over
/// `recipe.epochs` over `train`; milliseconds per step.
pub fn train(
    net: &HydraClassifier,
    train: &[(String, u32)],
    recipe: &Recipe,
    tokenizer: &Tokenizer,
    rng: &mut StdRng,
) -> Result<f64, Box<dyn std::error::Error>> {
    let steps_per_epoch = train.len() / recipe.batch;
    let total = steps_per_epoch * recipe.epochs;
    if total == 0 {
        return Ok(0.0);
    }
    let params = ParamsAdamW {
        lr: recipe.lr,
        weight_decay: 0.0,
        eps: 1e-6,
        ..Default::default()
    };
    let adamw = AdamW::new(net.vars().to_vec(), params)?;
    let schedule = Schedule::linear_with_warmup_ratio(0.0, total as u64)?;
    let mut opt = Scheduled::new(adamw, schedule)?;
    let dev = candle_core::Device::Cpu;
    let start = std::time::Instant::now();
    for epoch in 0..recipe.epochs {
        let mut order = train.to_vec();
        order.shuffle(rng);
        let rows = &order[..steps_per_epoch * recipe.batch];
        for b in batches(tokenizer, rows, recipe.batch, &dev)? {
            opt.backward_step(&nll(&net.forward(&b.ids, &b.types, &b.mask)?, &b.labels)?)?;
        }
        println!("hydra fine-tuning epoch {} of {}", epoch + 1, recipe.epochs);
    }
    Ok(1e3 * start.elapsed().as_secs_f64() / total as f64)
}
