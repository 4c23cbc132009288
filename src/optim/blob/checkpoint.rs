//! Saving and restoring a BLoB run: the optimizer's state (every var, AdamW's moments and
//! step, BLoB's step and rates) and the position of its layers' sampler in its training
//! stream, in one record (see [`crate::optim::Resumable`]), so that a resumed run
//! continues bit for bit.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Blob, BlobOptimConfig};
use crate::optim::shell::record::{mismatch, Format, Resumable};
use crate::optim::shell::Counts;
use crate::Result;

const FORMAT: Format = Format {
    kind: "blob-checkpoint",
    version: 1,
    header_key: "varlora.blob",
};

#[derive(Serialize, Deserialize)]
struct Header {
    config: BlobOptimConfig,
    #[serde(flatten)]
    counts: Counts,
    lr: f64,
    kl_lr: f64,
    adamw_step: u64,
    shapes: Vec<Vec<usize>>,
    /// The sampler's seed and position (0 and 0 for a run without BLoB layers).
    sampler_seed: u64,
    sampler_block: u64,
    /// A wrapper's record ([`crate::optim::Scheduled`]'s place), kept as it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<Value>,
}

impl Blob {
    /// Saves the run: every var's value, AdamW's moments and step, BLoB's step and
    /// current rates, and where the layers' sampler stands in its training stream. The
    /// file is written beside `path` and renamed into place.
    ///
    /// ```
    /// # use candle_core::{DType, Device, Tensor};
    /// # use candle_nn::{Linear, VarBuilder, VarMap};
    /// # use varlora::lora::{BayesianLoraLinear, BlobConfig, BlobSampler, LoraConfig};
    /// # use varlora::optim::{Blob, BlobOptimConfig};
    /// let varmap = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    /// let sampler = BlobSampler::new(0);
    /// let base = Linear::new(Tensor::ones((2, 3), DType::F32, &Device::Cpu)?, None);
    /// let layer = BayesianLoraLinear::new(base, BlobConfig::new(LoraConfig::new(1)), vb, &sampler)?;
    /// let config = BlobOptimConfig::new(8, 2);
    /// let opt = Blob::new(varmap.all_vars(), vec![layer.posterior_vars()?], config.clone())?;
    /// let path = std::env::temp_dir().join("varlora-doc-blob.safetensors");
    /// opt.save(&path)?;
    /// let mut resumed = Blob::new(varmap.all_vars(), vec![layer.posterior_vars()?], config)?;
    /// resumed.load_state(&path)?;
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path.as_ref(), None)
    }

    /// Restores a run written by [`Blob::save`] into this optimizer (built with the same
    /// configuration over vars of the same shapes, its layers' sampler of the same seed).
    /// A mismatch is an [`crate::Error::Checkpoint`], a corrupt file an
    /// [`crate::Error::File`]; either changes nothing. Under a
    /// [`crate::optim::Scheduled`], save and load through the `Scheduled`, so that the
    /// schedule's place is in the file too.
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.load_with(path.as_ref(), &mut |_| Ok(())).map(|_| ())
    }

    /// The saved run fits this optimizer and its sampler.
    fn check(&self, header: &Header) -> Result<()> {
        if header.config != self.config {
            return Err(mismatch(format!(
                "saved with {:?}, this optimizer has {:?}: build it with the saved settings",
                header.config, self.config
            )));
        }
        let shapes: Vec<Vec<usize>> = self.vars.iter().map(|v| v.dims().to_vec()).collect();
        if header.shapes != shapes {
            return Err(mismatch(format!(
                "saved vars of shapes {:?}, this optimizer's are {shapes:?}",
                header.shapes
            )));
        }
        if let Some(sampler) = &self.sampler {
            let (seed, _) = sampler.training_stream()?;
            if header.sampler_seed != seed {
                return Err(mismatch(format!(
                    "saved with a sampler of seed {}, this one's is {seed}",
                    header.sampler_seed
                )));
            }
        }
        if !(header.lr.is_finite() && header.kl_lr.is_finite()) {
            return Err(mismatch("saved learning rates are not finite"));
        }
        Ok(())
    }
}

impl Resumable for Blob {
    fn save_with(&self, path: &Path, schedule: Option<Value>) -> Result<()> {
        let (adamw_step, moments) = self.adamw.state();
        let (sampler_seed, sampler_block) = match &self.sampler {
            Some(s) => s.training_stream()?,
            None => (0, 0),
        };
        let header = Header {
            config: self.config.clone(),
            counts: self.counts,
            lr: self.adamw.learning_rate(),
            kl_lr: self.kl_lr,
            adamw_step,
            shapes: self.vars.iter().map(|v| v.dims().to_vec()).collect(),
            sampler_seed,
            sampler_block,
            schedule,
        };
        let mut tensors = Vec::new();
        for (i, v) in self.vars.iter().enumerate() {
            tensors.push((format!("var{i}"), v.as_tensor().copy()?));
        }
        for (j, (m, v)) in moments.iter().enumerate() {
            tensors.push((format!("adamw{j}.m"), m.clone()));
            tensors.push((format!("adamw{j}.v"), v.clone()));
        }
        FORMAT.write(path, &header, tensors)
    }

    fn load_with(
        &mut self,
        path: &Path,
        check: &mut dyn FnMut(Option<&Value>) -> Result<()>,
    ) -> Result<Option<Value>> {
        let device = match self.vars.first() {
            Some(v) => v.device().clone(),
            None => candle_core::Device::Cpu,
        };
        let (header, mut tensors) = FORMAT.read::<Header>(path, &device)?;
        self.check(&header)?;
        check(header.schedule.as_ref())?;
        let values = (0..self.vars.len())
            .map(|i| tensors.take(&format!("var{i}"), self.vars[i].as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        let (_, moments) = self.adamw.state();
        let moments = (0..moments.len())
            .map(|j| {
                let like = &moments[j].0;
                Ok((
                    tensors.take(&format!("adamw{j}.m"), like)?,
                    tensors.take(&format!("adamw{j}.v"), like)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        tensors.finish()?;
        // Everything is checked: from here on nothing fails half way.
        self.adamw.restore(header.adamw_step, moments)?;
        for (var, value) in self.vars.iter().zip(values) {
            var.set(&value)?;
        }
        if let Some(sampler) = &self.sampler {
            sampler.set_training_stream(header.sampler_block)?;
        }
        self.counts = header.counts;
        self.adamw.set_learning_rate(header.lr);
        self.kl_lr = header.kl_lr;
        Ok(header.schedule)
    }
}
