//! IVON, the Improved Variational Online Newton optimizer (Shen et al., ICML 2024).

mod checkpoint;
mod config;
mod math;

pub use config::{GroupSettings, HessApprox, IvonConfig, NonFinite, ParamGroup};

use std::collections::HashSet;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::noise::{NoiseSource, PhiloxNormal};
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

/// The state IVON keeps for one var.
#[derive(Clone, Debug)]
pub struct ParamState {
    name: Option<String>,
    var: Var,
    mean: Tensor,
    hess: Tensor,
    momentum: Tensor,
    noise: Option<Tensor>,
    avg_grad: Option<Tensor>,
    avg_hess: Option<Tensor>,
}

impl ParamState {
    /// The var's name, if its group was built from names.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// The var this state belongs to.
    pub fn var(&self) -> &Var {
        &self.var
    }
    /// The posterior mean `m`.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }
    /// The Hessian-diagonal estimate `h`.
    pub fn hess(&self) -> &Tensor {
        &self.hess
    }
    /// The gradient momentum `g`.
    pub fn momentum(&self) -> &Tensor {
        &self.momentum
    }
    /// The current training sample's offset from the mean, `theta - m`, while the vars
    /// stand at a sample.
    pub fn noise(&self) -> Option<&Tensor> {
        self.noise.as_ref()
    }
    /// The running mean of the gradients collected for the current step.
    pub fn avg_grad(&self) -> Option<&Tensor> {
        self.avg_grad.as_ref()
    }
}

struct Group {
    settings: GroupSettings,
    params: Vec<ParamState>,
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
    step: u64,
    count: usize,
    skipped_steps: u64,
    position: Position,
    noise: Box<dyn NoiseSource>,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for Ivon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ivon")
            .field("config", &self.config)
            .field(
                "groups",
                &self.groups.iter().map(|g| &g.settings).collect::<Vec<_>>(),
            )
            .field("step", &self.step)
            .field("count", &self.count)
            .field("skipped_steps", &self.skipped_steps)
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
        let noise = Box::new(PhiloxNormal::new(config.seed));
        Self::with_noise(groups, config, noise)
    }

    /// IVON with a noise source of your own, e.g. to replay recorded draws.
    pub fn with_noise(
        groups: Vec<ParamGroup>,
        config: IvonConfig,
        noise: Box<dyn NoiseSource>,
    ) -> Result<Self> {
        config.validate()?;
        let first = groups.iter().flat_map(|g| g.vars.first()).next();
        let (dtype, device) = match first {
            Some(v) => (v.dtype(), v.device().clone()),
            None => (DType::F32, Device::Cpu),
        };
        let mut ivon = Self {
            config,
            groups: Vec::new(),
            step: 0,
            count: 0,
            skipped_steps: 0,
            position: Position::Mean,
            noise,
            dtype,
            device,
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
            let group = &mut self.groups[last];
            for (p, n) in group.params.iter_mut().zip(noise) {
                p.var.set(&(&p.mean + &n)?)?;
                p.noise = Some(n);
            }
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
            if !seen.insert(var.as_tensor().id()) {
                return Err(Error::VarMismatch(format!(
                    "a var of shape {:?} is given twice",
                    var.shape()
                )));
            }
            let mean = var.as_tensor().copy()?;
            let hess = (mean.ones_like()? * settings.hess_init)?;
            let momentum = mean.zeros_like()?;
            params.push(ParamState {
                name: names.next().flatten(),
                var,
                mean,
                hess,
                momentum,
                noise: None,
                avg_grad: None,
                avg_hess: None,
            });
        }
        self.groups.push(Group { settings, params });
        Ok(())
    }

    /// One noise tensor per var of group `gi`, from one draw of the group's size.
    fn draw_group_noise(&mut self, gi: usize) -> Result<Vec<Tensor>> {
        let group = &self.groups[gi];
        let numel: usize = group.params.iter().map(|p| p.mean.elem_count()).sum();
        if numel == 0 {
            return group
                .params
                .iter()
                .map(|p| Ok(p.mean.zeros_like()?))
                .collect();
        }
        let z = self
            .noise
            .standard_normal(numel, self.dtype, &self.device)?;
        if z.dims() != [numel] || z.dtype() != self.dtype || !z.device().same_device(&self.device) {
            return Err(Error::InvalidInput(format!(
                "the noise source returned shape {:?} {:?} on {:?}; expected [{numel}] {:?} on {:?}",
                z.dims(),
                z.dtype(),
                z.device().location(),
                self.dtype,
                self.device.location()
            )));
        }
        let mut offset = 0;
        let mut out = Vec::with_capacity(group.params.len());
        for p in &group.params {
            let n = p.mean.elem_count();
            let zp = z.narrow(0, offset, n)?.reshape(p.mean.shape())?;
            out.push(math::noise(&zp, &p.hess, &group.settings)?);
            offset += n;
        }
        Ok(out)
    }

    fn draw_noise(&mut self) -> Result<Vec<Vec<Tensor>>> {
        (0..self.groups.len())
            .map(|gi| self.draw_group_noise(gi))
            .collect()
    }

    /// Draws a fresh training sample and writes `m + noise` into the vars.
    pub fn resample(&mut self) -> Result<()> {
        let noise = self.draw_noise()?;
        let sampled = self.offset_means(&noise)?;
        for (group, (ns, ws)) in self.groups.iter_mut().zip(noise.into_iter().zip(sampled)) {
            for (p, (n, w)) in group.params.iter_mut().zip(ns.into_iter().zip(ws)) {
                p.var.set(&w)?;
                p.noise = Some(n);
            }
        }
        self.position = Position::Sample;
        Ok(())
    }

    fn offset_means(&self, noise: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>> {
        self.groups
            .iter()
            .zip(noise)
            .map(|(g, ns)| {
                g.params
                    .iter()
                    .zip(ns)
                    .map(|(p, n)| Ok((&p.mean + n)?))
                    .collect()
            })
            .collect()
    }

    /// Writes the means into the vars and forgets the current training sample.
    pub fn restore_mean(&mut self) -> Result<()> {
        for p in self.groups.iter_mut().flat_map(|g| g.params.iter_mut()) {
            p.var.set(&p.mean)?;
            p.noise = None;
        }
        self.position = Position::Mean;
        Ok(())
    }

    /// Puts the vars back where `position` says they stand.
    fn write_position(&self) -> Result<()> {
        for p in self.groups.iter().flat_map(|g| g.params.iter()) {
            match (&p.noise, self.position) {
                (Some(n), Position::Sample) => p.var.set(&(&p.mean + n)?)?,
                _ => p.var.set(&p.mean)?,
            }
        }
        Ok(())
    }

    /// The gradient of each var, validated; a missing one is zero.
    fn collect_grads(&self, grads: &GradStore) -> Result<Vec<Vec<Tensor>>> {
        let mut out = Vec::with_capacity(self.groups.len());
        for (gi, group) in self.groups.iter().enumerate() {
            let mut gs = Vec::with_capacity(group.params.len());
            for (vi, p) in group.params.iter().enumerate() {
                let mismatch = |detail: String| Error::GradientMismatch {
                    group: gi,
                    var: vi,
                    detail,
                };
                let g = match grads.get(p.var.as_tensor()) {
                    None => p.mean.zeros_like()?,
                    Some(g) => {
                        if g.shape() != p.mean.shape() {
                            return Err(mismatch(format!(
                                "shape {:?}, var {:?}",
                                g.shape(),
                                p.mean.shape()
                            )));
                        }
                        if g.dtype() != self.dtype {
                            return Err(mismatch(format!(
                                "dtype {:?}, var {:?}",
                                g.dtype(),
                                self.dtype
                            )));
                        }
                        if !g.device().same_device(&self.device) {
                            return Err(mismatch(format!(
                                "device {:?}, var {:?}",
                                g.device().location(),
                                self.device.location()
                            )));
                        }
                        g.clone()
                    }
                };
                gs.push(g);
            }
            out.push(gs);
        }
        Ok(out)
    }

    /// Collects the gradient at the current training sample into the running means of
    /// this step (Welford), then moves the vars back to the mean.
    ///
    /// Call it once per forward/backward pass at a sample: for several MC samples or for
    /// gradient accumulation over micro-batches, call [`Ivon::resample`], forward, backward
    /// and `accumulate` per sample, then [`Ivon::update`].
    ///
    /// Errors, with nothing changed, if the vars do not stand at a sample, if a gradient
    /// does not match its var, or if one holds NaN or Inf (unless
    /// [`NonFinite::SkipStep`], which drops the step's samples, counts the skip and moves
    /// the vars to the mean).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        if self.position != Position::Sample {
            return Err(Error::NoSample(
                "accumulate needs the vars at a training sample: call resample() before the forward pass",
            ));
        }
        let grads = self.collect_grads(grads)?;
        for (gi, gs) in grads.iter().enumerate() {
            for (vi, g) in gs.iter().enumerate() {
                if !math::all_finite(g)? {
                    if self.config.on_nonfinite == NonFinite::SkipStep {
                        self.discard_samples();
                        self.skipped_steps += 1;
                        return self.restore_mean();
                    }
                    return Err(Error::NonFiniteGradient {
                        group: gi,
                        var: vi,
                        shape: g.shape().clone(),
                    });
                }
            }
        }
        let count = self.count + 1;
        let approx = self.config.hess_approx;
        let mut new = Vec::new();
        for (group, gs) in self.groups.iter().zip(grads) {
            for (p, g) in group.params.iter().zip(gs) {
                let noise = p
                    .noise
                    .as_ref()
                    .ok_or(Error::NoSample("a var has no sample"))?;
                let hess_sample = match approx {
                    HessApprox::Price => (noise * &g)?,
                    HessApprox::Gradsq => g.sqr()?,
                };
                let avg_hess = math::welford(p.avg_hess.as_ref(), hess_sample, count)?;
                let avg_grad = math::welford(p.avg_grad.as_ref(), g, count)?;
                new.push((avg_grad, avg_hess));
            }
        }
        for (p, (avg_grad, avg_hess)) in self.params_mut().zip(new) {
            p.avg_grad = Some(avg_grad);
            p.avg_hess = Some(avg_hess);
        }
        self.count = count;
        self.restore_mean()
    }

    fn params_mut(&mut self) -> impl Iterator<Item = &mut ParamState> {
        self.groups.iter_mut().flat_map(|g| g.params.iter_mut())
    }

    fn discard_samples(&mut self) {
        self.count = 0;
        for p in self.params_mut() {
            p.avg_grad = None;
            p.avg_hess = None;
        }
    }

    /// Updates the momentum, `h` and `m` from the samples collected since the last update,
    /// advances the step counter and leaves the vars at the new mean.
    ///
    /// Errors, with nothing changed, if no sample was collected or a group's settings are
    /// invalid (e.g. a learning rate set through `set_learning_rate`).
    pub fn update(&mut self) -> Result<()> {
        if self.count == 0 {
            return Err(Error::NoSample(
                "update needs at least one gradient sample: call accumulate() after a backward pass at a sample",
            ));
        }
        for g in &self.groups {
            g.settings.validate(self.config.debias)?;
        }
        let t = self.step + 1;
        let mut new = Vec::new();
        for group in &self.groups {
            let s = &group.settings;
            let lr_t = if self.config.rescale_lr {
                s.lr * (s.hess_init + s.weight_decay)
            } else {
                s.lr
            };
            let bc = self.config.debias.then(|| 1.0 - s.beta1.powf(t as f64));
            for p in &group.params {
                let (Some(avg_grad), Some(avg_hess)) = (&p.avg_grad, &p.avg_hess) else {
                    return Err(Error::NoSample("a var has no gradient sample"));
                };
                let momentum = math::momentum(&p.momentum, avg_grad, s)?;
                let hess = math::hess(&p.hess, avg_hess, self.config.hess_approx, s)?;
                let mean = math::mean(&p.mean, &momentum, &hess, s, lr_t, bc)?;
                new.push((momentum, hess, mean));
            }
        }
        for (p, (momentum, hess, mean)) in self.params_mut().zip(new) {
            p.momentum = momentum;
            p.hess = hess;
            p.mean = mean;
        }
        self.step = t;
        self.discard_samples();
        self.restore_mean()
    }

    /// What `step` of [`candle_nn::Optimizer`] does, with a typed error: collect the
    /// gradient at the current sample, update if `mc_samples` samples are collected, and
    /// draw the next training sample.
    pub fn try_step(&mut self, grads: &GradStore) -> Result<()> {
        let skipped = self.skipped_steps;
        self.accumulate(grads)?;
        if self.skipped_steps == skipped && self.count >= self.config.mc_samples {
            self.update()?;
        }
        self.resample()
    }

    /// Runs `f` with the vars at the posterior mean, then puts them back where they stood,
    /// also if `f` fails or panics.
    ///
    /// ```
    /// # use candle_core::{DType, Device, Var};
    /// # use varlora::optim::{Ivon, IvonConfig};
    /// let w = Var::ones(3, DType::F32, &Device::Cpu)?;
    /// let mut opt = Ivon::new(vec![w.clone()], IvonConfig::new(0.1, 10.0))?;
    /// let at_mean = opt.with_mean(|| w.as_tensor().to_vec1::<f32>())?;
    /// assert_eq!(at_mean, vec![1.0; 3]);
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn with_mean<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        for p in self.groups.iter().flat_map(|g| g.params.iter()) {
            p.var.set(&p.mean)?;
        }
        let guard = Restore::new(self);
        let out = f();
        guard.finish()?;
        Ok(out?)
    }

    /// Runs `f` with the vars at a fresh posterior sample (drawn from the noise source, so
    /// it advances the stream), then puts them back where they stood, also if `f` fails or
    /// panics. No gradient is collected: this is for prediction.
    pub fn with_sample<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        let noise = self.draw_noise()?;
        let sampled = self.offset_means(&noise)?;
        let guard = Restore::new(self);
        for (group, ws) in guard.ivon.groups.iter().zip(sampled) {
            for (p, w) in group.params.iter().zip(ws) {
                p.var.set(&w)?;
            }
        }
        let out = f();
        guard.finish()?;
        Ok(out?)
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
            .ok_or_else(|| Error::InvalidInput(format!("no group {group}")))?;
        let p = g
            .params
            .get(index)
            .ok_or_else(|| Error::InvalidInput(format!("group {group} has no var {index}")))?;
        math::posterior_std(&p.hess, &g.settings)
    }

    /// Updates done so far (`t`); kept in checkpoints.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Gradient samples collected for the next update.
    pub fn samples_collected(&self) -> usize {
        self.count
    }

    /// Steps dropped for a NaN or Inf gradient under [`NonFinite::SkipStep`].
    pub fn skipped_steps(&self) -> u64 {
        self.skipped_steps
    }

    /// Where the vars stand.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Sets the learning rate of one group.
    pub fn set_group_lr(&mut self, group: usize, lr: f64) -> Result<()> {
        let mut settings = self
            .group_settings(group)
            .ok_or_else(|| Error::InvalidInput(format!("no group {group}")))?
            .clone();
        settings.lr = lr;
        settings.validate(self.config.debias)?;
        self.groups[group].settings = settings;
        Ok(())
    }
}

/// Puts the vars back where the optimizer's position says, on `finish` or on drop.
struct Restore<'a> {
    ivon: &'a Ivon,
    armed: bool,
}

impl<'a> Restore<'a> {
    fn new(ivon: &'a Ivon) -> Self {
        Self { ivon, armed: true }
    }

    fn finish(mut self) -> Result<()> {
        self.armed = false;
        self.ivon.write_position()
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Only reached while unwinding from a panic in the user's closure.
            let _ = self.ivon.write_position();
        }
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
