//! Drawing weight samples and moving the vars between the mean and samples.

use candle_core::Tensor;

use super::param::{MEAN, NOISE};
use super::{math, Ivon, Position};
use crate::{Error, Result};

impl Ivon {
    /// One noise tensor per var of group `gi`, from one draw of the group's size.
    pub(super) fn draw_group_noise(&mut self, gi: usize) -> Result<Vec<Tensor>> {
        let group = &self.groups[gi];
        let numel: usize = group.params.iter().map(|p| p.var.elem_count()).sum();
        if numel == 0 {
            return group
                .params
                .iter()
                .map(|p| Ok(p.var.zeros_like()?))
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
            let n = p.var.elem_count();
            let zp = z.narrow(0, offset, n)?.reshape(p.var.shape())?;
            out.push(math::noise(&zp, &p.hess()?, &group.settings)?);
            offset += n;
        }
        Ok(out)
    }

    fn draw_noise(&mut self) -> Result<Vec<Vec<Tensor>>> {
        (0..self.groups.len())
            .map(|gi| self.draw_group_noise(gi))
            .collect()
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
        let mut sampled = Vec::new();
        for (g, ns) in self.groups.iter().zip(&noise) {
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
