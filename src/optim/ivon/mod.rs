//! IVON, the Improved Variational Online Newton optimizer (Shen et al., ICML 2024).

mod checkpoint;
mod config;
mod math;
mod noise;
mod param;
mod sampling;
mod step;
mod sync;

pub use config::{GroupSettings, HessApprox, IvonConfig, ParamGroup};
pub use param::ParamState;

use noise::Noise;

use std::collections::HashSet;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::collective::Collective;
use crate::noise::{NoiseSource, PhiloxNormal};
use crate::optim::shell::Counts;
use crate::{Error, Result};

/// Where the vars stand between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// The vars hold the posterior mean `m`.
    Mean,
    /// The vars hold a training sample `m + noise`, whose gradient the next
    /// [`Ivon::accumulate`] (or `step`) collects.
    Sample,
}

struct Group {
    settings: GroupSettings,
    params: Vec<ParamState>,
}

impl Group {
    /// The number of parameters: one draw of the group's noise.
    fn numel(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }
}

/// IVON: a Gaussian posterior `N(m, 1 / (ess (h + wd)))` per weight, learned at about the
/// cost of AdamW. A drop-in replacement for candle-nn's `AdamW`.
///
/// # Where the weights stand
/// - After [`Ivon::new`] and after every `step` (and `backward_step`), the vars hold a
///   fresh **training sample** `m + noise`, so the next forward pass is at a sample, as the
///   algorithm needs ([`Position::Sample`]).
/// - `step(&grads)` collects the gradient at that sample; every `mc_samples`-th call it
///   then updates `m`, `h` and the momentum; finally it draws the next sample.
/// - To evaluate or save the mean, use [`Ivon::with_mean`] (restores the sample
///   afterwards) or [`Ivon::restore_mean`] (leaves the vars at the mean, e.g. before
///   `varmap.save`). Training then resumes with [`Ivon::resample`].
/// - [`Ivon::with_sample`] runs a closure at a fresh posterior sample, for prediction.
///
/// A var whose gradient is absent from the `GradStore` (frozen, or unused by the loss) is
/// given a zero gradient, as the reference does for parameters that do not require grad:
/// its mean still moves under weight decay.
///
/// Parameters must be f32 or f64, all of one dtype and on one device; `m`, `h` and the
/// momentum are kept in that dtype. f16/bf16 vars are rejected with
/// [`Error::UnsupportedDType`].
///
/// # Example: swapping AdamW for IVON
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{linear, loss, Module, Optimizer, VarBuilder, VarMap};
/// use varlora::optim::{Ivon, IvonConfig};
///
/// let dev = Device::Cpu;
/// let varmap = VarMap::new();
/// let model = linear(4, 2, VarBuilder::from_varmap(&varmap, DType::F32, &dev).pp("fc"))?;
/// // let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-3)?;
/// let mut opt = Ivon::new(varmap.all_vars(), IvonConfig::new(0.1, 100.0))?;
/// let x = Tensor::randn(0f32, 1., (8, 4), &dev)?;
/// let y = Tensor::new(&[0u32, 1, 0, 1, 0, 1, 0, 1], &dev)?;
/// for _ in 0..3 {
///     let loss = loss::cross_entropy(&model.forward(&x)?, &y)?;
///     opt.backward_step(&loss)?;
/// }
/// let logits_at_mean = opt.with_mean(|| model.forward(&x))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Ivon {
    config: IvonConfig,
    groups: Vec<Group>,
    counts: Counts,
    count: usize,
    fused_steps: u64,
    position: Position,
    noise: Noise,
    dtype: DType,
    device: Device,
    prediction_scale: f64,
    collective: Option<Arc<dyn Collective>>,
}

impl std::fmt::Debug for Ivon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ivon")
            .field("config", &self.config)
            .field(
                "groups",
                &self.groups.iter().map(|g| &g.settings).collect::<Vec<_>>(),
            )
            .field("step", &self.counts.step)
            .field("count", &self.count)
            .field("skipped_steps", &self.counts.skipped_steps)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl Ivon {
    /// IVON over `vars` in one group, with the seeded [`PhiloxNormal`] noise source.
    /// Draws the first training sample into the vars.
    ///
    /// The noise is drawn in the order of `vars`: `VarMap::all_vars` returns them in an
    /// order that changes from run to run, so prefer [`Ivon::from_varmap`] for
    /// reproducible runs and checkpoints.
    pub fn new(vars: Vec<Var>, config: IvonConfig) -> Result<Self> {
        Self::with_groups(vec![ParamGroup::new(vars)], config)
    }

    /// IVON over every var of `varmap`, sorted by name: the same seed gives the same run,
    /// and checkpoints are matched by name.
    pub fn from_varmap(varmap: &candle_nn::VarMap, config: IvonConfig) -> Result<Self> {
        Self::with_groups(vec![ParamGroup::from_varmap(varmap)?], config)
    }

    /// IVON over parameter groups with settings of their own.
    pub fn with_groups(groups: Vec<ParamGroup>, config: IvonConfig) -> Result<Self> {
        let noise = Noise::Philox(PhiloxNormal::new(config.seed));
        Self::build(groups, config, noise)
    }

    /// IVON with a noise source of your own, e.g. to replay recorded draws. Its steps take
    /// the unfused path (the fused kernel draws from IVON's own generator), with the same
    /// bits.
    pub fn with_noise(
        groups: Vec<ParamGroup>,
        config: IvonConfig,
        noise: Box<dyn NoiseSource>,
    ) -> Result<Self> {
        Self::build(groups, config, Noise::Custom(noise))
    }

    fn build(groups: Vec<ParamGroup>, config: IvonConfig, noise: Noise) -> Result<Self> {
        config.validate()?;
        let first = groups.iter().flat_map(|g| g.vars.first()).next();
        let (dtype, device) = match first {
            Some(v) => (v.dtype(), v.device().clone()),
            None => (DType::F32, Device::Cpu),
        };
        let mut ivon = Self {
            config,
            groups: Vec::new(),
            counts: Counts::default(),
            count: 0,
            fused_steps: 0,
            position: Position::Mean,
            noise,
            dtype,
            device,
            prediction_scale: 1.0,
            collective: None,
        };
        for group in groups {
            ivon.push_group(group)?;
        }
        ivon.resample()?;
        Ok(ivon)
    }

    /// Adds a parameter group (which the reference cannot do). Allowed only between
    /// updates, with no gradient sample collected; if the vars stand at a sample, the new
    /// group's vars are moved to a sample too.
    pub fn add_group(&mut self, group: ParamGroup) -> Result<()> {
        if self.count > 0 {
            return Err(Error::InvalidState(
                "add_group needs an empty sample buffer: call update() first",
            ));
        }
        if self.groups.iter().all(|g| g.params.is_empty()) {
            if let Some(v) = group.vars.first() {
                self.dtype = v.dtype();
                self.device = v.device().clone();
            }
        }
        self.push_group(group)?;
        if self.position == Position::Sample {
            let last = self.groups.len() - 1;
            let noise = self.draw_group_noise(last)?;
            self.set_sample(last, noise)?;
        }
        Ok(())
    }

    fn push_group(&mut self, group: ParamGroup) -> Result<()> {
        let settings = group.settings(&self.config);
        settings.validate(self.config.debias)?;
        if !group.names.is_empty() && group.names.len() != group.vars.len() {
            return Err(Error::VarMismatch(format!(
                "{} names for {} vars: name every var or none",
                group.names.len(),
                group.vars.len()
            )));
        }
        let mut names = group
            .names
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat(None));
        let mut seen: HashSet<_> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|p| p.var.as_tensor().id()))
            .collect();
        let mut params = Vec::with_capacity(group.vars.len());
        for var in group.vars {
            self.check_var(&var)?;
            if !seen.insert(var.as_tensor().id()) {
                return Err(Error::VarMismatch(format!(
                    "a var of shape {:?} is given twice",
                    var.shape()
                )));
            }
            params.push(ParamState::new(
                names.next().flatten(),
                var,
                settings.hess_init,
            )?);
        }
        self.groups.push(Group { settings, params });
        Ok(())
    }

    /// Refuses a var whose dtype or device differs from the optimizer's.
    fn check_var(&self, var: &Var) -> Result<()> {
        if !matches!(var.dtype(), DType::F32 | DType::F64) {
            return Err(Error::UnsupportedDType(var.dtype()));
        }
        if var.dtype() != self.dtype {
            return Err(Error::VarMismatch(format!(
                "dtypes {:?} and {:?}: all vars must share one dtype",
                self.dtype,
                var.dtype()
            )));
        }
        if !var.device().same_device(&self.device) {
            return Err(Error::VarMismatch(format!(
                "devices {:?} and {:?}: all vars must be on one device",
                self.device.location(),
                var.device().location()
            )));
        }
        Ok(())
    }

    fn params_mut(&mut self) -> impl Iterator<Item = &mut ParamState> {
        self.groups.iter_mut().flat_map(|g| g.params.iter_mut())
    }

    /// The configuration (global settings and group defaults).
    pub fn config(&self) -> &IvonConfig {
        &self.config
    }

    /// The number of parameter groups.
    pub fn num_groups(&self) -> usize {
        self.groups.len()
    }

    /// The settings of group `group`.
    pub fn group_settings(&self, group: usize) -> Option<&GroupSettings> {
        self.groups.get(group).map(|g| &g.settings)
    }

    /// The state of each var of group `group`, in order.
    pub fn group_params(&self, group: usize) -> Option<&[ParamState]> {
        self.groups.get(group).map(|g| g.params.as_slice())
    }

    /// The posterior standard deviation `1 / sqrt(ess (h + wd))` of var `index` of `group`.
    pub fn posterior_std(&self, group: usize, index: usize) -> Result<Tensor> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| Error::NotFound(format!("no group {group}")))?;
        let p = g
            .params
            .get(index)
            .ok_or_else(|| Error::NotFound(format!("group {group} has no var {index}")))?;
        math::posterior_std(&p.hess()?, &g.settings)
    }

    /// Updates done so far (`t`); kept in checkpoints.
    pub fn step_count(&self) -> u64 {
        self.counts.step
    }

    /// Steps taken by the fused kernel (the rest went through the tensor-op path).
    pub fn fused_steps(&self) -> u64 {
        self.fused_steps
    }

    /// Gradient samples collected for the next update.
    pub fn samples_collected(&self) -> usize {
        self.count
    }

    /// Steps dropped for a NaN or Inf gradient under
    /// [`NonFinite::SkipStep`](crate::optim::NonFinite::SkipStep).
    pub fn skipped_steps(&self) -> u64 {
        self.counts.skipped_steps
    }

    /// Where the vars stand.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Multiplies the standard deviation of prediction samples
    /// ([`crate::predict::Posterior::with_posterior_sample`]) by `scale`: a test-time
    /// temperature of the posterior, for asking how its scale drives the predictive.
    /// Training samples and the posterior itself are unchanged. 1 by default; errors
    /// unless finite and >= 0.
    ///
    /// ```
    /// # use candle_core::{DType, Device, Var};
    /// # use varlora::optim::{Ivon, IvonConfig};
    /// # let w = Var::zeros(4, DType::F32, &Device::Cpu)?;
    /// let mut opt = Ivon::new(vec![w], IvonConfig::new(0.1, 100.0))?;
    /// opt.set_prediction_scale(2.0)?; // samples twice as far from the mean
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn set_prediction_scale(&mut self, scale: f64) -> Result<()> {
        crate::predict::check_prediction_scale(scale)?;
        self.prediction_scale = scale;
        Ok(())
    }

    /// Sets the learning rate of one group.
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let mut settings = self
            .group_settings(group)
            .ok_or_else(|| Error::NotFound(format!("no group {group}")))?
            .clone();
        settings.lr = lr;
        settings.validate(self.config.debias)?;
        self.groups[group].settings = settings;
        Ok(())
    }
}

impl candle_nn::Optimizer for Ivon {
    type Config = IvonConfig;

    fn new(vars: Vec<Var>, config: IvonConfig) -> candle_core::Result<Self> {
        Ok(Ivon::new(vars, config)?)
    }

    /// See [`Ivon::try_step`].
    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        Ok(self.try_step(grads)?)
    }

    fn learning_rate(&self) -> f64 {
        self.groups
            .first()
            .map_or(self.config.lr, |g| g.settings.lr)
    }

    /// Sets the learning rate of every group. An invalid value makes the next update
    /// fail with [`Error::InvalidConfig`]; [`Ivon::set_group_lr`] checks at once.
    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
        for g in &mut self.groups {
            g.settings.lr = lr;
        }
    }
}
