//! Collecting gradients and updating the posterior: the tensor-op path, and the fused
//! CPU kernel that does a whole one-sample step in one pass.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use super::config::HessApprox;
use super::param::{HESS, MEAN, MOMENTUM, NOISE};
use super::{math, Ivon, Position};
use crate::kernels::{self, Draws};
use crate::optim::shell::{self, ranks, Slot, Verdict};
use crate::{Error, Result};

impl Ivon {
    /// The gradient of each var, checked against it, by group. A missing one is zero, as
    /// ivon-opt gives parameters that do not require grad: weight decay still moves them.
    fn collect_grads(&self, grads: &GradStore) -> Result<Vec<Vec<Tensor>>> {
        let mut out = Vec::with_capacity(self.groups.len());
        for (group, g) in self.groups.iter().enumerate() {
            let slots = g.params.iter().enumerate();
            let slots = slots.map(|(var, p)| (Slot { group, var }, &p.var));
            let gs = shell::gather(slots, grads)?
                .into_iter()
                .zip(&g.params)
                .map(|(grad, p)| grad.map_or_else(|| p.var.zeros_like(), Ok))
                .collect::<candle_core::Result<_>>()?;
            out.push(gs);
        }
        Ok(out)
    }

    /// The non-finite policy on every rank. A skipped step is dropped here: its samples
    /// discarded, the mean restored, the skip counted.
    fn screen(&mut self, grads: &[Vec<Tensor>]) -> Result<Verdict> {
        let slots = grads.iter().enumerate().flat_map(|(group, gs)| {
            gs.iter()
                .enumerate()
                .map(move |(var, g)| (Slot { group, var }, g))
        });
        let verdict = shell::screen(slots, self.config.on_nonfinite, |here| {
            ranks::any_rank(self.peers(), here, &self.device)
        })?;
        if verdict == Verdict::Skip {
            self.discard_samples();
            self.counts.skipped();
            self.restore_mean()?;
        }
        Ok(verdict)
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
    /// [`NonFinite::SkipStep`](crate::optim::NonFinite::SkipStep), which drops the step's samples, counts the skip and moves
    /// the vars to the mean).
    pub fn accumulate(&mut self, grads: &GradStore) -> Result<()> {
        self.collect(grads).map(|_| ())
    }

    /// [`Ivon::accumulate`], saying whether the sample was kept or its step skipped.
    fn collect(&mut self, grads: &GradStore) -> Result<Verdict> {
        if self.position != Position::Sample {
            return Err(Error::NoSample(
                "accumulate needs the vars at a training sample: call resample() before the forward pass",
            ));
        }
        let grads = self.collect_grads(grads)?;
        if self.screen(&grads)? == Verdict::Skip {
            return Ok(Verdict::Skip);
        }
        let count = self.count + 1;
        let approx = self.config.hess_approx;
        let mut new = Vec::new();
        for (group, gs) in self.groups.iter().zip(grads) {
            for (p, g) in group.params.iter().zip(gs) {
                let hess_sample = math::hess_sample(&p.row(NOISE)?, &g, approx)?;
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
        self.restore_mean()?;
        Ok(Verdict::Apply)
    }

    /// Checks every group's settings, which `set_learning_rate` may have made invalid.
    fn validate_groups(&self) -> Result<()> {
        for g in &self.groups {
            g.settings.validate(self.config.debias)?;
        }
        Ok(())
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
        self.validate_groups()?;
        self.average_over_ranks()?;
        let t = self.counts.next();
        let mut new = Vec::new();
        for group in &self.groups {
            let s = &group.settings;
            let (lr_t, bc) = math::step_scalars(s, &self.config, t);
            for p in &group.params {
                let (Some(avg_grad), Some(avg_hess)) = (&p.avg_grad, &p.avg_hess) else {
                    return Err(Error::NoSample("a var has no gradient sample"));
                };
                let momentum = math::momentum(&p.row(MOMENTUM)?, avg_grad, s)?;
                let hess = math::hess(&p.row(HESS)?, avg_hess, self.config.hess_approx, s)?;
                let mean = math::mean(&p.row(MEAN)?, &momentum, &hess, s, lr_t, bc)?;
                new.push((momentum, hess, mean));
            }
        }
        for (p, (momentum, hess, mean)) in self.params_mut().zip(new) {
            p.set_row(MOMENTUM, &momentum)?;
            p.set_row(HESS, &hess)?;
            p.set_row(MEAN, &mean)?;
        }
        self.counts.made(t);
        self.discard_samples();
        self.restore_mean()
    }

    /// What `step` of [`candle_nn::Optimizer`] does, with a typed error: collect the
    /// gradient at the current sample, update if `mc_samples` samples are collected, and
    /// draw the next training sample.
    ///
    /// With one sample per step, f32 vars on the CPU (or CUDA, with the `cuda` feature)
    /// and the default noise source, this runs the fused kernel: one pass per var that
    /// updates the state and writes the next sample, with the same bits as the tensor-op
    /// path.
    pub fn try_step(&mut self, grads: &GradStore) -> Result<()> {
        if self.fusable() {
            let collected = self.collect_grads(grads)?;
            if collected.iter().flatten().all(|g| g.is_contiguous()) {
                self.validate_groups()?;
                if self.screen(&collected)? == Verdict::Skip {
                    return self.resample();
                }
                let stats = self.fused_stats(collected)?;
                return self.fused_step(&stats);
            }
        }
        let verdict = self.collect(grads)?;
        if verdict == Verdict::Apply && self.count >= self.config.mc_samples {
            self.update()?;
        }
        self.resample()
    }

    fn fusable(&mut self) -> bool {
        self.config.fused
            && self.config.mc_samples == 1
            && self.count == 0
            && self.position == Position::Sample
            && self.dtype == DType::F32
            && kernels::fused_on(&self.device)
            && self.params_mut().all(|p| p.sampled)
            && self.noise.philox().is_some()
    }

    /// What the fused kernel reads beside each var: its gradient alone, or, in a
    /// data-parallel run, the ranks' mean gradient followed by their mean Hessian
    /// statistic (the statistics of one sample are the Welford means the unfused path
    /// averages).
    fn fused_stats(&self, grads: Vec<Vec<Tensor>>) -> Result<Vec<Vec<Tensor>>> {
        if self.peers().is_none() {
            return Ok(grads);
        }
        let mut stats = Vec::new();
        for (group, gs) in self.groups.iter().zip(&grads) {
            for (p, g) in group.params.iter().zip(gs) {
                let hess_sample = math::hess_sample(&p.row(NOISE)?, g, self.config.hess_approx)?;
                stats.extend([g.clone(), hess_sample]);
            }
        }
        let Some(mean) = ranks::mean_over_ranks(self.peers(), &stats)? else {
            return Ok(grads);
        };
        let mut offset = 0;
        let mut out = Vec::with_capacity(grads.len());
        for group in &self.groups {
            let mut stats = Vec::with_capacity(group.params.len());
            for p in &group.params {
                let n = p.var.elem_count();
                stats.push(mean.narrow(0, offset, 2 * n)?);
                offset += 2 * n;
            }
            out.push(stats);
        }
        Ok(out)
    }

    /// The fused step: validated, finite gradients (or the ranks' averaged statistics, see
    /// [`Self::fused_stats`]) in; every var updated and resampled.
    fn fused_step(&mut self, grads: &[Vec<Tensor>]) -> Result<()> {
        let t = self.counts.next();
        let price = self.config.hess_approx == HessApprox::Price;
        let averaged = self.peers().is_some();
        for (gi, gs) in grads.iter().enumerate() {
            let group = &self.groups[gi];
            let numel = group.numel();
            let philox = self.noise.philox().ok_or(Error::InvalidState(
                "the fused step needs the Philox noise source",
            ))?;
            let (seed, block) = (philox.seed(), philox.skip(numel));
            let coeffs = math::coeffs_f32(&group.settings, &self.config, t, price, averaged);
            let mut offset = 0;
            // candle refuses an in-place op on an empty tensor, and it has nothing to update.
            for (p, g) in group
                .params
                .iter()
                .zip(gs)
                .filter(|(p, _)| p.var.elem_count() > 0)
            {
                let draws = Draws {
                    seed,
                    block,
                    offset,
                };
                kernels::ivon_step(&p.var, &p.state, g, draws, &coeffs)?;
                offset += p.var.elem_count();
            }
        }
        self.counts.made(t);
        self.fused_steps += 1;
        Ok(())
    }
}
