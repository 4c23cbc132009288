//! The optimizer of each method behind one `step`, on a linear (or constant) schedule.

use std::time::Instant;

use candle_core::Tensor;
use candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use varlora::lora::BlobLayerVars;
use varlora::models::BertClassifier;
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig, ParamGroup, Schedule, Scheduled};

use super::{progress, sorted_vars, Args, Inputs, Method};
use crate::data::batches;

/// AdamW (plain LoRA and LoRA-Ensemble), IVON or BLoB, each under the run's schedule.
pub enum Trainer {
    Adamw(Scheduled<AdamW>),
    Ivon(Scheduled<Ivon>),
    Blob(Scheduled<Blob>),
}

/// What a run's optimizer is built from.
pub struct Setup<'a> {
    pub method: Method,
    pub args: &'a Args,
    pub varmap: &'a VarMap,
    pub blob_layers: Vec<BlobLayerVars>,
    pub n_train: usize,
    pub total_steps: usize,
}

impl Trainer {
    pub fn new(s: Setup<'_>) -> Result<Self, Box<dyn std::error::Error>> {
        let args = s.args;
        let lr = args.lr.unwrap_or(match s.method {
            Method::Ivon | Method::MultiIvon => 0.03,
            _ => 5e-4,
        });
        let schedule = if args.constant_lr {
            Schedule::Constant
        } else {
            Schedule::linear_with_warmup_ratio(args.warmup_ratio(s.method), s.total_steps as u64)?
        };
        Ok(match s.method {
            Method::Ivon | Method::MultiIvon => {
                let c = IvonConfig::new(lr, args.ess())
                    .hess_init(args.hess_init)
                    .weight_decay(0.0)
                    .rescale_lr(false)
                    .clip_radius(args.clip_radius)
                    .beta2(args.beta2)
                    .mc_samples(args.train_samples)
                    .seed(args.seed);
                let groups = ivon_groups(s.varmap, (args.head_beta2, args.head_ess))?;
                let ivon = Scheduled::new(Ivon::with_groups(groups, c)?, schedule)?;
                Trainer::Ivon(ivon)
            }
            Method::Blob => {
                let c = BlobOptimConfig::new(s.n_train, args.batch)
                    .lr(lr)
                    .kl_lr(args.kl_lr());
                let blob = Blob::new(sorted_vars(s.varmap, |_| true)?, s.blob_layers, c)?;
                Trainer::Blob(Scheduled::new(blob, schedule)?)
            }
            Method::Adamw | Method::LoraEnsemble | Method::McDropout | Method::Hydra => {
                let p = ParamsAdamW {
                    lr,
                    weight_decay: 0.0,
                    eps: 1e-6,
                    ..Default::default()
                };
                let adamw = AdamW::new(sorted_vars(s.varmap, |_| true)?, p)?;
                Trainer::Adamw(Scheduled::new(adamw, schedule)?)
            }
        })
    }

    /// One step on the NLL `nll`.
    pub fn step(&mut self, nll: &Tensor) -> candle_core::Result<()> {
        match self {
            Trainer::Adamw(o) => o.backward_step(nll),
            Trainer::Ivon(o) => o.backward_step(nll),
            Trainer::Blob(o) => o.backward_step(nll),
        }
    }

    /// The IVON optimizer, whose posterior the evaluation samples.
    pub fn ivon_mut(&mut self) -> Option<&mut Ivon> {
        match self {
            Trainer::Ivon(o) => Some(o.inner_mut()),
            _ => None,
        }
    }
}

/// What a training run measured: milliseconds per step, and the mean training NLL over
/// the last epoch's batches (of the weights as they were at each batch).
pub struct Measured {
    pub ms_per_step: f64,
    pub last_epoch_loss: f64,
}

/// Trains `model` for the run's epochs over shuffled batches of the training sentences.
/// A LoRA-Ensemble's `(M, B, C)` logits train on the mean of the members' losses.
pub fn epochs(
    model: &BertClassifier,
    trainer: &mut Trainer,
    inputs: &Inputs,
    args: &Args,
    rng: &mut StdRng,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let train = &inputs.split.train;
    let steps_per_epoch = train.len() / args.batch;
    let total = steps_per_epoch * args.epochs();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} [{elapsed}<{eta}] {per_sec} {msg}",
    )?);
    let dev = candle_core::Device::Cpu;
    let start = Instant::now();
    let mut step = 0usize;
    let ivon = matches!(trainer, Trainer::Ivon(_));
    let mut epoch_losses = Vec::new();
    for epoch in 0..args.epochs() {
        epoch_losses.clear();
        let mut order = train.clone();
        order.shuffle(rng);
        let rows = &order[..steps_per_epoch * args.batch];
        for b in batches(&inputs.tokenizer, rows, args.batch, &dev)? {
            let mut loss = f32::NAN;
            // IVON's `--train-samples`: one weight sample per run of the batch, one update.
            for _ in 0..args.train_samples {
                let logits = model.forward_t(&b.ids, &b.types, &b.mask, true)?;
                let nll = nll(&logits, &b.labels)?;
                trainer.step(&objective(&nll, &logits, ivon)?)?;
                loss = nll.to_scalar::<f32>()?;
            }
            epoch_losses.push(f64::from(loss));
            step += 1;
            bar.set_message(format!("epoch {} loss {loss:.4}", epoch + 1));
            bar.inc(1);
            progress(step, total, epoch, loss, "train");
        }
    }
    bar.finish();
    Ok(Measured {
        ms_per_step: 1e3 * start.elapsed().as_secs_f64() / total.max(1) as f64,
        last_epoch_loss: epoch_losses.iter().sum::<f64>() / epoch_losses.len().max(1) as f64,
    })
}

/// What the optimizer minimises: `nll`, except that with `sum_members` (IVON) an
/// ensemble's `(members, batch, classes)` logits train on the sum of the members' losses,
/// not their mean, so that each member's adapters get their own loss's gradient and
/// Hessian, as in separate runs. (AdamW's step does not depend on the loss's scale;
/// IVON's posterior does.)
fn objective(nll: &Tensor, logits: &Tensor, sum_members: bool) -> candle_core::Result<Tensor> {
    match logits.dims3() {
        Ok((members, _, _)) if sum_members => nll * members as f64,
        _ => Ok(nll.clone()),
    }
}

/// The cross-entropy of `(batch, classes)` logits, or for an ensemble's `(members, batch,
/// classes)` the mean of the members' cross-entropies.
pub fn nll(logits: &Tensor, labels: &Tensor) -> candle_core::Result<Tensor> {
    match logits.dims3() {
        Ok((m, n, c)) => {
            let labels = labels.unsqueeze(0)?.repeat((m, 1))?.flatten_all()?;
            loss::cross_entropy(&logits.reshape((m * n, c))?, &labels)
        }
        Err(_) => loss::cross_entropy(logits, labels),
    }
}

/// IVON's parameter groups: every var in one, or with a `head_beta2` or `head_ess` the
/// adapters in one and the classification head in another with that Hessian decay and
/// effective sample size.
fn ivon_groups(
    varmap: &VarMap,
    (head_beta2, head_ess): (Option<f64>, Option<f64>),
) -> varlora::Result<Vec<ParamGroup>> {
    let all = ParamGroup::from_varmap(varmap)?;
    if head_beta2.is_none() && head_ess.is_none() {
        return Ok(vec![all]);
    }
    let (head, adapters): (Vec<_>, Vec<_>) = all
        .names
        .into_iter()
        .zip(all.vars)
        .partition(|(name, _)| name.starts_with("classifier."));
    Ok(vec![
        ParamGroup::named(adapters),
        ParamGroup {
            beta2: head_beta2,
            ess: head_ess,
            ..ParamGroup::named(head)
        },
    ])
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use candle_nn::loss;

    use super::{nll, objective};

    #[test]
    fn ivon_over_members_minimises_the_sum_of_their_own_losses() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[
                [[2.0f32, -1.0], [0.5, 0.3], [-1.0, 1.5]],
                [[0.1, 0.2], [3.0, -2.0], [0.0, 0.7]],
            ],
            &dev,
        )?;
        let labels = Tensor::new(&[0u32, 1, 1], &dev)?;
        let per_member = (0..2)
            .map(|m| loss::cross_entropy(&logits.get(m)?, &labels)?.to_scalar::<f32>())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mean = nll(&logits, &labels)?;
        let summed = objective(&mean, &logits, true)?.to_scalar::<f32>()?;
        let averaged = objective(&mean, &logits, false)?.to_scalar::<f32>()?;
        let sum: f32 = per_member.iter().sum();
        assert!((summed - sum).abs() < 1e-5, "{summed} vs {sum}");
        assert!(
            (averaged - sum / 2.0).abs() < 1e-5,
            "{averaged} vs {}",
            sum / 2.0
        );
        // One model's logits are its own loss either way.
        let single = logits.get(0)?;
        let own = nll(&single, &labels)?;
        let value = objective(&own, &single, true)?.to_scalar::<f32>()?;
        assert!((value - per_member[0]).abs() < 1e-6);
        Ok(())
    }
}
