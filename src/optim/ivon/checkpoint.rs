//! Saving and restoring IVON's whole state: one checksummed safetensors file (see
//! [`crate::files`]) whose metadata holds the configuration and counters as JSON.

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::param::{HESS, MEAN, MOMENTUM, NOISE};
use super::{GroupSettings, Ivon, IvonConfig, Position};
use crate::optim::shell::record::{mismatch, Format, Resumable, Tensors};
use crate::optim::shell::Counts;
use crate::Result;

/// The file's format; version 2 added the checksum and moved the format out of the
/// header.
const FORMAT: Format = Format {
    kind: "ivon-checkpoint",
    version: 2,
    header_key: "varlora.ivon",
};

#[derive(Serialize, Deserialize)]
struct Header {
    config: IvonConfig,
    groups: Vec<GroupHeader>,
    #[serde(flatten)]
    counts: Counts,
    count: usize,
    position: Position,
    dtype: String,
    noise: serde_json::Value,
    /// A wrapper's record ([`crate::optim::Scheduled`]'s place), kept as it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<Value>,
}

#[derive(Serialize, Deserialize)]
struct GroupHeader {
    settings: GroupSettings,
    shapes: Vec<Vec<usize>>,
    /// Empty for unnamed vars.
    #[serde(default)]
    names: Vec<String>,
}

fn key(group: usize, var: usize, what: &str) -> String {
    format!("group{group}.var{var}.{what}")
}

impl Ivon {
    /// Saves the full state (configuration, group settings, step counter, `m`, `h`,
    /// momentum, the current sample and collected gradients, and the noise source's
    /// state) to a safetensors file. The file is written beside `path` and renamed into
    /// place, so an interrupted save leaves any earlier checkpoint whole.
    ///
    /// ```
    /// # use candle_core::{DType, Device, Var};
    /// # use varlora::optim::{Ivon, IvonConfig};
    /// let w = Var::zeros(3, DType::F32, &Device::Cpu)?;
    /// let opt = Ivon::new(vec![w.clone()], IvonConfig::new(0.1, 10.0))?;
    /// let path = std::env::temp_dir().join("varlora-doc-ivon.safetensors");
    /// opt.save(&path)?;
    /// let mut resumed = Ivon::new(vec![w], IvonConfig::new(0.1, 10.0))?;
    /// resumed.load_state(&path)?;
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path.as_ref(), None)
    }

    /// Restores a state written by [`Ivon::save`] into this optimizer, whose vars must have
    /// the saved groups' shapes and dtype, and their names where both sides have names
    /// (unnamed vars are matched by position). The vars are set to the saved position (mean or
    /// the very same sample), so training continues bit-identically to a run that never
    /// stopped. A mismatch is an [`Error::Checkpoint`](crate::Error::Checkpoint), a corrupt file (any byte changed)
    /// an [`Error::File`](crate::Error::File); either changes nothing.
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.load_with(path.as_ref(), &mut |_| Ok(())).map(|_| ())
    }

    /// The saved optimizer fits this one: a valid configuration, the dtype, the groups.
    fn check_header(&self, header: &Header) -> Result<()> {
        header.config.validate()?;
        if header.dtype != self.dtype.as_str() {
            return Err(mismatch(format!(
                "saved dtype {}, but the vars are {}",
                header.dtype,
                self.dtype.as_str()
            )));
        }
        if header.groups.len() != self.groups.len() {
            return Err(mismatch(format!(
                "{} groups saved, the optimizer has {}",
                header.groups.len(),
                self.groups.len()
            )));
        }
        Ok(())
    }

    /// Saved group `gi` fits this optimizer's: valid settings, the same names (where
    /// both sides have names) and shapes.
    fn check_group(&self, gi: usize, gh: &GroupHeader, debias: bool) -> Result<()> {
        let group = &self.groups[gi];
        gh.settings.validate(debias)?;
        let names: Vec<String> = group.params.iter().flat_map(|p| p.name.clone()).collect();
        if !names.is_empty() && !gh.names.is_empty() && names != gh.names {
            return Err(mismatch(format!(
                "group {gi} was saved with vars {:?}, the optimizer has {:?}",
                gh.names, names
            )));
        }
        let dims: Vec<&[usize]> = group.params.iter().map(|p| p.var.dims()).collect();
        if gh.shapes.len() != dims.len() || gh.shapes.iter().zip(&dims).any(|(a, b)| a != b) {
            return Err(mismatch(format!(
                "group {gi} was saved with shapes {:?}, the vars have {:?}",
                gh.shapes, dims
            )));
        }
        Ok(())
    }

    /// Var `vi` of group `gi`'s saved tensors, checked against its shape, dtype and the
    /// saved position and count, and taken out of `tensors`.
    fn take_var(
        &self,
        tensors: &mut Tensors,
        gi: usize,
        vi: usize,
        header: &Header,
    ) -> Result<Restored> {
        // The var has the optimizer's dtype, and every row of its state the var's shape.
        let var = self.groups[gi].params[vi].var.as_tensor();
        let mut required = |what| tensors.take(&key(gi, vi, what), var);
        let (mean, hess, momentum) = (required("mean")?, required("hess")?, required("momentum")?);
        let mut take = |what| tensors.take_optional(&key(gi, vi, what), var);
        if !crate::kernels::all_finite(&mean)? || !crate::kernels::all_finite(&hess)? {
            return Err(mismatch(format!(
                "group {gi}, var {vi}: the mean or Hessian holds NaN or Inf"
            )));
        }
        let r = Restored {
            mean,
            hess,
            momentum,
            noise: take("noise")?,
            avg_grad: take("avg_grad")?,
            avg_hess: take("avg_hess")?,
        };
        if r.noise.is_some() != (header.position == Position::Sample)
            || r.avg_grad.is_some() != (header.count > 0)
            || r.avg_hess.is_some() != (header.count > 0)
        {
            return Err(mismatch(format!(
                "group {gi}, var {vi}: the sample tensors do not match position {:?} and count {}",
                header.position, header.count
            )));
        }
        Ok(r)
    }

    /// Writes the checked state into the optimizer and moves the vars where it stood.
    fn apply(&mut self, header: Header, restored: Vec<Restored>) -> Result<()> {
        for (p, r) in self.params_mut().zip(restored) {
            p.set_row(MEAN, &r.mean)?;
            p.set_row(HESS, &r.hess)?;
            p.set_row(MOMENTUM, &r.momentum)?;
            p.sampled = r.noise.is_some();
            if let Some(noise) = r.noise {
                p.set_row(NOISE, &noise)?;
            }
            (p.avg_grad, p.avg_hess) = (r.avg_grad, r.avg_hess);
        }
        for (g, gh) in self.groups.iter_mut().zip(header.groups) {
            g.settings = gh.settings;
        }
        self.config = header.config;
        self.counts = header.counts;
        self.count = header.count;
        self.position = header.position;
        self.write_position()
    }
}

impl Resumable for Ivon {
    fn save_with(&self, path: &Path, schedule: Option<Value>) -> Result<()> {
        let noise = self.noise.state().ok_or_else(|| {
            mismatch("the noise source cannot save its state; use the default PhiloxNormal to checkpoint")
        })?;
        let header = Header {
            config: self.config.clone(),
            groups: self
                .groups
                .iter()
                .map(|g| GroupHeader {
                    settings: g.settings.clone(),
                    shapes: g.params.iter().map(|p| p.var.dims().to_vec()).collect(),
                    names: g.params.iter().flat_map(|p| p.name.clone()).collect(),
                })
                .collect(),
            counts: self.counts,
            count: self.count,
            position: self.position,
            dtype: self.dtype.as_str().into(),
            noise,
            schedule,
        };
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            for (vi, p) in g.params.iter().enumerate() {
                tensors.push((key(gi, vi, "mean"), p.mean()?));
                tensors.push((key(gi, vi, "hess"), p.hess()?));
                tensors.push((key(gi, vi, "momentum"), p.momentum()?));
                let optional = [
                    ("noise", p.noise()?),
                    ("avg_grad", p.avg_grad.clone()),
                    ("avg_hess", p.avg_hess.clone()),
                ];
                for (name, t) in optional {
                    if let Some(t) = t {
                        tensors.push((key(gi, vi, name), t));
                    }
                }
            }
        }
        FORMAT.write(path, &header, tensors)
    }

    fn load_with(
        &mut self,
        path: &Path,
        check: &mut dyn FnMut(Option<&Value>) -> Result<()>,
    ) -> Result<Option<Value>> {
        let (header, mut tensors) = FORMAT.read::<Header>(path, &self.device)?;
        self.check_header(&header)?;
        check(header.schedule.as_ref())?;
        let mut restored = Vec::new();
        for (gi, gh) in header.groups.iter().enumerate() {
            self.check_group(gi, gh, header.config.debias)?;
            for vi in 0..gh.shapes.len() {
                restored.push(self.take_var(&mut tensors, gi, vi, &header)?);
            }
        }
        tensors.finish()?;
        self.noise.load_state(&header.noise)?;
        let schedule = header.schedule.clone();
        self.apply(header, restored)?;
        Ok(schedule)
    }
}

/// One var's saved state.
struct Restored {
    mean: Tensor,
    hess: Tensor,
    momentum: Tensor,
    noise: Option<Tensor>,
    avg_grad: Option<Tensor>,
    avg_hess: Option<Tensor>,
}
