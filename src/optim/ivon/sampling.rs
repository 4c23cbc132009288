//! Drawing weight samples and moving the vars between the mean and samples.

use candle_core::{DType, Device, Shape, Tensor};

use super::param::{MEAN, NOISE};
use super::{math, Group, Ivon, Position};
use crate::noise::NoiseSource;
use crate::predict::{prediction_normals, GaussianPosterior, Posterior};
use crate::{Error, Result};

/// One noise tensor per var of `group`, from one draw of the group's size.
fn group_noise(
    group: &Group,
    source: &mut dyn NoiseSource,
    dtype: DType,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let numel = group.numel();
    if numel == 0 {
        return group
            .params
            .iter()
            .map(|p| Ok(p.var.zeros_like()?))
            .collect();
    }
    let z = source.standard_normal(numel, dtype, device)?;
    if z.dims() != [numel] || z.dtype() != dtype || !z.device().same_device(device) {
        return Err(Error::ShapeMismatch(format!(
            "the noise source returned shape {:?} {:?} on {:?}; expected [{numel}] {:?} on {:?}",
            z.dims(),
            z.dtype(),
            z.device().location(),
            dtype,
            device.location()
        )));
    }
    let mut offset = 0;
    let mut out = Vec::with_capacity(group.params.len());
    for p in &group.params {
        let n = p.var.elem_count();
        let zp = z.narrow(0, offset, n)?.reshape(p.var.shape())?;
        out.push(math::noise(&zp, &p.hess()?, &group.settings)?);
        offset += n;
    }
    Ok(out)
}

impl Ivon {
    /// One noise tensor per var of group `gi`, from the training noise source.
    pub(super) fn draw_group_noise(&mut self, gi: usize) -> Result<Vec<Tensor>> {
        group_noise(
            &self.groups[gi],
            self.noise.source(),
            self.dtype,
            &self.device,
        )
    }

    fn draw_noise(&mut self) -> Result<Vec<Vec<Tensor>>> {
        (0..self.groups.len())
            .map(|gi| self.draw_group_noise(gi))
            .collect()
    }

    /// How far one draw of every group's noise moves a Philox stream (4 values a block).
    pub(super) fn blocks_per_sample(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| g.numel().div_ceil(4) as u64)
            .sum()
    }

    /// The noise of prediction sample `k`: its own Philox stream, keyed by the seed and
    /// positioned by `k`, so that sample `k` is the same weights every time it is asked for
    /// (while the posterior does not change) and training draws are untouched.
    fn prediction_noise(&self, k: usize) -> Result<Vec<Vec<Tensor>>> {
        let shapes: Vec<Vec<Shape>> = self
            .groups
            .iter()
            .map(|g| g.params.iter().map(|p| p.var.shape().clone()).collect())
            .collect();
        let z = prediction_normals(self.config.seed, k, &shapes, self.dtype, &self.device)?;
        self.groups
            .iter()
            .zip(z)
            .map(|(g, zs)| {
                g.params
                    .iter()
                    .zip(zs)
                    .map(|(p, z)| math::noise(&z, &p.hess()?, &g.settings))
                    .collect()
            })
            .collect()
    }

    /// Runs `f` with every var at `mean + noise`, then puts the vars back.
    fn run_at<R>(
        &self,
        noise: &[Vec<Tensor>],
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        let mut sampled = Vec::new();
        for (g, ns) in self.groups.iter().zip(noise) {
            for (p, n) in g.params.iter().zip(ns) {
                sampled.push((p.row(MEAN)? + n)?);
            }
        }
        let guard = Restore::new(self);
        for (p, w) in guard
            .ivon
            .groups
            .iter()
            .flat_map(|g| g.params.iter())
            .zip(sampled)
        {
            p.var.set(&w)?;
        }
        let out = f();
        guard.finish()?;
        Ok(out?)
    }

    /// Records `noise` as group `gi`'s training sample and writes `m + noise` to its vars.
    pub(super) fn set_sample(&mut self, gi: usize, noise: Vec<Tensor>) -> Result<()> {
        for (p, n) in self.groups[gi].params.iter_mut().zip(noise) {
            p.var.set(&(p.row(MEAN)? + &n)?)?;
            p.set_row(NOISE, &n)?;
            p.sampled = true;
        }
        Ok(())
    }

    /// Draws a fresh training sample and writes `m + noise` into the vars.
    pub fn resample(&mut self) -> Result<()> {
        let noise = self.draw_noise()?;
        for (gi, ns) in noise.into_iter().enumerate() {
            self.set_sample(gi, ns)?;
        }
        self.position = Position::Sample;
        Ok(())
    }

    /// Writes the means into the vars and forgets the current training sample.
    pub fn restore_mean(&mut self) -> Result<()> {
        for p in self.groups.iter_mut().flat_map(|g| g.params.iter_mut()) {
            p.var.set(&p.row(MEAN)?)?;
            p.sampled = false;
        }
        self.position = Position::Mean;
        Ok(())
    }

    /// Puts the vars back where `position` says they stand.
    pub(super) fn write_position(&self) -> Result<()> {
        for p in self.groups.iter().flat_map(|g| g.params.iter()) {
            let mean = p.row(MEAN)?;
            if p.sampled && self.position == Position::Sample {
                p.var.set(&(mean + p.row(NOISE)?)?)?;
            } else {
                p.var.set(&mean)?;
            }
        }
        Ok(())
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
        let guard = Restore::new(self);
        for p in guard.ivon.groups.iter().flat_map(|g| g.params.iter()) {
            p.var.set(&p.row(MEAN)?)?;
        }
        let out = f();
        guard.finish()?;
        Ok(out?)
    }

    /// Runs `f` with the vars at a fresh posterior sample (drawn from the noise source, so
    /// it advances the stream), then puts them back where they stood, also if `f` fails or
    /// panics. No gradient is collected: this is for prediction.
    pub fn with_sample<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        let noise = self.draw_noise()?;
        self.run_at(&noise, f)
    }
}

impl Ivon {
    /// The posterior as it stands, apart from the optimizer: every var's mean and standard
    /// deviation `1 / sqrt(ess (h + wd))`, its group, the seed of the prediction samples
    /// (sample `k` is this optimizer's sample `k`, at its prediction scale) and the
    /// configuration and group settings. Save it with [`GaussianPosterior::save`] to serve
    /// predictions without the optimizer. The vars must have names ([`Ivon::from_varmap`],
    /// [`crate::optim::ParamGroup::from_varmap`]), by which a loaded posterior finds them.
    pub fn posterior(&self) -> Result<GaussianPosterior> {
        let mut groups = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let mut group = Vec::new();
            for (vi, p) in g.params.iter().enumerate() {
                let name = p.name.clone().ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "group {gi}, var {vi} has no name: build the optimizer with \
                         Ivon::from_varmap or ParamGroup::from_varmap to export its posterior"
                    ))
                })?;
                let ones = p.var.ones_like()?;
                let std = math::noise(&ones, &p.hess()?, &g.settings)?;
                group.push((name, p.var.clone(), p.row(MEAN)?, std));
            }
            groups.push(group);
        }
        let settings = serde_json::json!({
            "optimizer": "ivon",
            "config": self.config,
            "groups": self.groups.iter().map(|g| &g.settings).collect::<Vec<_>>(),
            "step": self.counts.step,
        });
        let mut posterior = GaussianPosterior::new(groups, self.config.seed, settings)?;
        posterior.set_scale(self.prediction_scale)?;
        Ok(posterior)
    }
}

/// Sample `k` is a fixed draw from a stream of its own, keyed by the seed (see
/// [`Ivon::with_sample`] for fresh draws from the training stream); the point estimate is
/// the mean.
impl Posterior for Ivon {
    fn with_posterior_sample<R>(
        &mut self,
        k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        let mut noise = self.prediction_noise(k)?;
        if self.prediction_scale != 1.0 {
            for n in noise.iter_mut().flatten() {
                *n = (&*n * self.prediction_scale)?;
            }
        }
        self.run_at(&noise, f)
    }

    fn with_point_estimate<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        self.with_mean(f)
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
