//! BLoB's training step (Wang et al., NeurIPS 2024) as one optimizer: the reference's two
//! optimizers (bayesian-peft `modelwrappers/blob.py`) and its KL reweighting, behind
//! `candle_nn::Optimizer`.
//!
//! Per step, given the gradients of the NLL at a sampled forward:
//! 1. AdamW on the NLL for every var but `G`: the means `M`, `B`, heads;
//! 2. the KL of every BLoB layer against its prior, at the updated means;
//! 3. SGD with rate `kl_lr` on `pi_t * KL` for `M` and `G`, `G` also taking its NLL
//!    gradient (the reference never clears it). `B` and the heads have no KL gradient.
//!
//! `pi_t` is the reweighting schedule [`kl_weight`] over a period `K`, by default the
//! reference's dataset rescaling [`kl_period`]. Both rates follow one schedule: setting
//! the learning rate to `f * lr` sets the KL rate to `f * kl_lr`, as the reference's two
//! linear warm-up schedulers do.

mod checkpoint;
mod rule;

use std::collections::HashSet;

use candle_core::backprop::GradStore;
use candle_core::{TensorId, Var};
use candle_nn::{Optimizer, ParamsAdamW};

use super::adamw::AdamW;
use super::shell::{self, Counts, NonFinite, Slot, Verdict};
use serde::{Deserialize, Serialize};

use crate::lora::{kl_period, kl_weight, BlobLayerVars, BlobSampler};
use crate::{Error, Result};

/// BLoB's training hyperparameters, with the reference's defaults.
///
/// | field | default | reference | valid |
/// |---|---|---|---|
/// | `n_train` | required | dataset size | > 0 |
/// | `batch_size` | required | `batch_size` | > 0 |
/// | `lr` | 1e-4 | Llama scripts' `lr` | finite, > 0 |
/// | `kl_lr` | 0.01 | Llama scripts' `bayes_kllr` (parser default 0.02) | finite, >= 0 |
/// | `beta1`, `beta2` | 0.9, 0.999 | torch AdamW | [0, 1) |
/// | `eps` | 1e-6 | `adam_epsilon` | finite, > 0 |
/// | `weight_decay` | 0 | `opt_wd` | finite, >= 0 |
/// | `kl_reweighting` | true | `bayes_klreweighting` (on in every script) | |
/// | `dataset_rescaling` | true | `bayes_datasetrescaling` (on in every script) | |
/// | `gamma` | 8 | `bayes_gamma` | finite, > 0 |
/// | `kl_period` | none | | > 0 |
/// | `on_nonfinite` | `Error` | (the reference has none) | |
///
/// The KL period `K` is `kl_period` when set; else, with `dataset_rescaling`,
/// `int(100 * n_train^(pi / gamma) / batch_size)`; else the batches per epoch. Without
/// `kl_reweighting` every step weighs the KL by `1 / K`.
///
/// ```
/// use varlora::optim::BlobOptimConfig;
///
/// let c = BlobOptimConfig::new(3200, 32).lr(5e-4).kl_lr(1e-3);
/// assert_eq!(c.period(), 74); // 100 * 3200^(pi / 8) / 32
/// c.validate()?;
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlobOptimConfig {
    /// Training examples per epoch.
    pub n_train: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// AdamW's learning rate (the means, `B`, heads).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// SGD's learning rate on the weighted KL (and on `G`'s NLL gradient).
    #[serde(default = "default_kl_lr")]
    pub kl_lr: f64,
    /// AdamW's first-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// AdamW's second-moment decay.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// AdamW's epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Weigh the KL by the reweighting schedule (else by `1 / K`).
    #[serde(default = "yes")]
    pub kl_reweighting: bool,
    /// The period `K` by dataset rescaling (else the batches per epoch).
    #[serde(default = "yes")]
    pub dataset_rescaling: bool,
    /// `gamma` of the dataset rescaling.
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    /// A period `K` of your own, overriding both rules.
    #[serde(default)]
    pub kl_period: Option<u64>,
    /// What a step whose gradients hold NaN or Inf does: fail, changing nothing, or be
    /// skipped and counted in [`Blob::skipped_steps`].
    #[serde(default)]
    pub on_nonfinite: NonFinite,
}

fn default_lr() -> f64 {
    1e-4
}
fn default_kl_lr() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-6
}
fn default_gamma() -> f64 {
    8.0
}
fn yes() -> bool {
    true
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $($(#[$doc])* pub fn $name(mut self, value: $ty) -> Self {
            self.$name = value;
            self
        })*
    };
}

impl BlobOptimConfig {
    /// The reference's defaults for a training set of `n_train` examples in batches of
    /// `batch_size`.
    pub fn new(n_train: usize, batch_size: usize) -> Self {
        Self {
            n_train,
            batch_size,
            lr: default_lr(),
            kl_lr: default_kl_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: 0.0,
            kl_reweighting: true,
            dataset_rescaling: true,
            gamma: default_gamma(),
            kl_period: None,
            on_nonfinite: NonFinite::Error,
        }
    }

    setters! {
        /// Sets `lr`.
        lr: f64,
        /// Sets `kl_lr`.
        kl_lr: f64,
        /// Sets `beta1`.
        beta1: f64,
        /// Sets `beta2`.
        beta2: f64,
        /// Sets `eps`.
        eps: f64,
        /// Sets `weight_decay`.
        weight_decay: f64,
        /// Sets `kl_reweighting`.
        kl_reweighting: bool,
        /// Sets `dataset_rescaling`.
        dataset_rescaling: bool,
        /// Sets `gamma`.
        gamma: f64,
        /// Sets `kl_period`.
        kl_period: Option<u64>,
        /// Sets `on_nonfinite`.
        on_nonfinite: NonFinite,
    }

    /// The KL period `K` these settings give.
    pub fn period(&self) -> u64 {
        match self.kl_period {
            Some(k) => k,
            None if self.dataset_rescaling => kl_period(self.n_train, self.batch_size, self.gamma),
            None => (self.n_train / self.batch_size.max(1)).max(1) as u64,
        }
    }

    /// The KL weight of step `step` (counted from 1).
    pub fn kl_weight(&self, step: u64) -> f64 {
        if self.kl_reweighting {
            kl_weight(step, self.period())
        } else {
            1.0 / self.period() as f64
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: String, expected: &'static str| {
            Err(Error::InvalidConfig {
                field,
                value,
                expected,
            })
        };
        if self.n_train == 0 {
            return bad("n_train", "0".into(), "> 0");
        }
        if self.batch_size == 0 {
            return bad("batch_size", "0".into(), "> 0");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", self.lr.to_string(), "finite, > 0");
        }
        if !(self.kl_lr.is_finite() && self.kl_lr >= 0.0) {
            return bad("kl_lr", self.kl_lr.to_string(), "finite, >= 0");
        }
        for (field, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(field, v.to_string(), "a value in [0, 1)");
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", self.eps.to_string(), "finite, > 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                self.weight_decay.to_string(),
                "finite, >= 0",
            );
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return bad("gamma", self.gamma.to_string(), "finite, > 0");
        }
        if self.kl_period == Some(0) {
            return bad("kl_period", "0".into(), "> 0");
        }
        Ok(())
    }
}

/// What [`Blob`] is built from through `candle_nn::Optimizer::new`: its settings and the
/// model's BLoB layers.
#[derive(Clone, Debug)]
pub struct BlobSetup {
    /// The hyperparameters.
    pub config: BlobOptimConfig,
    /// The BLoB layers, e.g. from `BertEncoder::blob_layers`.
    pub layers: Vec<BlobLayerVars>,
}

/// BLoB's optimizer: AdamW on the NLL plus SGD on the reweighted KL, as the reference
/// trains Bayesian LoRA. The model's BLoB layers tell it which vars are `M` and `G`.
///
/// ```
/// use candle_core::{DType, Device, Module, ModuleT, Tensor};
/// use candle_nn::{loss, Linear, Optimizer, VarBuilder, VarMap};
/// use varlora::lora::{BayesianLoraLinear, BlobConfig, BlobSampler, LoraConfig};
/// use varlora::optim::{Blob, BlobOptimConfig};
///
/// let dev = Device::Cpu;
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let sampler = BlobSampler::new(0);
/// let base = Linear::new(Tensor::randn(0f32, 1., (2, 5), &dev)?, None);
/// let layer = BayesianLoraLinear::new(base, BlobConfig::new(LoraConfig::new(2)), vb.pp("fc"), &sampler)?;
/// let config = BlobOptimConfig::new(64, 8).lr(1e-3);
/// let mut opt = Blob::new(varmap.all_vars(), vec![layer.posterior_vars()?], config)?;
/// let x = Tensor::randn(0f32, 1., (8, 5), &dev)?;
/// let y = Tensor::new(&[0u32, 1, 0, 1, 0, 1, 0, 1], &dev)?;
/// let nll = loss::cross_entropy(&layer.forward_t(&x, true)?, &y)?;
/// opt.backward_step(&nll)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Blob {
    config: BlobOptimConfig,
    adamw: AdamW,
    vars: Vec<Var>,
    layers: Vec<BlobLayerVars>,
    /// The layers' sampler (one for all), whose training stream a checkpoint keeps.
    sampler: Option<BlobSampler>,
    kl_lr: f64,
    counts: Counts,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("config", &self.config)
            .field("layers", &self.layers.len())
            .field("lr", &self.adamw.learning_rate())
            .field("kl_lr", &self.kl_lr)
            .field("step", &self.counts.step)
            .field("skipped_steps", &self.counts.skipped_steps)
            .finish()
    }
}

impl Blob {
    /// BLoB over `vars` (every trainable var of the model: the BLoB layers' `M`, `G`
    /// and `B`, other adapters, heads) with the given BLoB layers. Each layer's vars must
    /// be among `vars`, and every layer must draw from one [`BlobSampler`] (the model's),
    /// whose training stream [`Blob::save`] keeps with the run.
    pub fn new(
        vars: Vec<Var>,
        layers: Vec<BlobLayerVars>,
        config: BlobOptimConfig,
    ) -> Result<Self> {
        config.validate()?;
        let ids: HashSet<TensorId> = vars.iter().map(|v| v.id()).collect();
        let mut g_ids = HashSet::new();
        for (i, l) in layers.iter().enumerate() {
            for v in [&l.a_mean, &l.a_g, &l.b] {
                if !ids.contains(&v.id()) {
                    return Err(Error::VarMismatch(format!(
                        "BLoB layer {i} has a var (shape {:?}) missing from the vars given",
                        v.dims()
                    )));
                }
            }
            g_ids.insert(l.a_g.id());
        }
        let sampler = layers.first().map(|l| l.sampler.clone());
        if let Some(first) = &sampler {
            if let Some(i) = layers.iter().position(|l| !l.sampler.is(first)) {
                return Err(Error::VarMismatch(format!(
                    "BLoB layer {i} draws from another sampler than layer 0: build every \
                     layer of the model with one BlobSampler"
                )));
            }
        }
        let params = ParamsAdamW {
            lr: config.lr,
            beta1: config.beta1,
            beta2: config.beta2,
            eps: config.eps,
            weight_decay: config.weight_decay,
        };
        let adam_vars = vars
            .iter()
            .filter(|v| !g_ids.contains(&v.id()))
            .cloned()
            .collect();
        Ok(Self {
            adamw: AdamW::new(adam_vars, params)?,
            vars,
            kl_lr: config.kl_lr,
            layers,
            sampler,
            config,
            counts: Counts::default(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &BlobOptimConfig {
        &self.config
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.counts.step
    }

    /// Steps dropped for a NaN or Inf gradient under [`NonFinite::SkipStep`].
    pub fn skipped_steps(&self) -> u64 {
        self.counts.skipped_steps
    }

    /// The KL's learning rate of the next step.
    pub fn kl_learning_rate(&self) -> f64 {
        self.kl_lr
    }

    /// The summed KL of every BLoB layer against its prior, as a number (for logging).
    pub fn kl(&self) -> Result<f64> {
        let mut total = 0.0;
        for l in &self.layers {
            total += l.kl()?;
        }
        Ok(total)
    }

    /// The whole step for the NLL gradients `grads`: AdamW, then SGD on the reweighted KL
    /// (and `G`'s NLL gradient), as `blob/rule.rs` spells out. Before anything changes, a
    /// gradient that does not match its var is an [`Error::GradientMismatch`], and one
    /// with NaN or Inf an [`Error::NonFiniteGradient`] (`var`: its index in the vars
    /// given), or a skipped step under [`NonFinite::SkipStep`].
    pub fn try_step(&mut self, grads: &GradStore) -> Result<()> {
        let slots = self
            .vars
            .iter()
            .enumerate()
            .map(|(var, v)| (Slot { group: 0, var }, v));
        // A var without a gradient keeps its value, as torch's AdamW leaves it.
        let gathered = shell::gather(slots, grads)?;
        let present = gathered
            .iter()
            .enumerate()
            .filter_map(|(var, g)| Some((Slot { group: 0, var }, g.as_ref()?)));
        if shell::screen(present, self.config.on_nonfinite, Ok)? == Verdict::Skip {
            self.counts.skipped();
            return Ok(());
        }
        self.adamw.step(grads)?;
        self.counts.made(self.counts.next());
        let pi = self.config.kl_weight(self.counts.step);
        for l in &self.layers {
            let (m, g) = rule::kl_step(l, pi, self.kl_lr, grads.get(&l.a_g))?;
            l.a_mean.set(&m)?;
            l.a_g.set(&g)?;
        }
        Ok(())
    }
}

impl Optimizer for Blob {
    type Config = BlobSetup;

    fn new(vars: Vec<Var>, setup: BlobSetup) -> candle_core::Result<Self> {
        Ok(Blob::new(vars, setup.layers, setup.config)?)
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Ok(self.try_step(grads)?)
    }

    /// AdamW's learning rate.
    fn learning_rate(&self) -> f64 {
        self.adamw.learning_rate()
    }

    /// Sets AdamW's rate to `lr` and the KL rate to `kl_lr * lr / config.lr`, so that a
    /// schedule scales both.
    fn set_learning_rate(&mut self, lr: f64) {
        self.adamw.set_learning_rate(lr);
        self.kl_lr = self.config.kl_lr * lr / self.config.lr;
    }
}
