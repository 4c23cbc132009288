//! The optimizer of each method behind one `step`, on a linear (or constant) schedule.

use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use varlora::lora::BlobLayerVars;
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig, Schedule, Scheduled};

use super::{sorted_vars, Args, Method};

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
            Method::Ivon => 0.03,
            _ => 5e-4,
        });
        let schedule = if args.constant_lr {
            Schedule::Constant
        } else {
            Schedule::linear_with_warmup_ratio(args.warmup_ratio(s.method), s.total_steps as u64)?
        };
        Ok(match s.method {
            Method::Ivon => {
                let c = IvonConfig::new(lr, args.ess())
                    .hess_init(args.hess_init)
                    .weight_decay(0.0)
                    .rescale_lr(false)
                    .clip_radius(args.clip_radius)
                    .beta2(args.beta2)
                    .seed(args.seed);
                Trainer::Ivon(Scheduled::new(Ivon::from_varmap(s.varmap, c)?, schedule)?)
            }
            Method::Blob => {
                let c = BlobOptimConfig::new(s.n_train, args.batch)
                    .lr(lr)
                    .kl_lr(args.kl_lr);
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
