//! A diagonal Gaussian over named vars, apart from any optimizer: what IVON learned, saved
//! to a file and loaded into a model for prediction.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::Posterior;
use crate::files::sealed;
use crate::noise::{NoiseSource, PhiloxNormal};
use crate::{Error, Result};

/// Salt that separates the prediction stream of posterior samples from training draws.
const PREDICTION_STREAM: u64 = 0x7072_6564_6963_7421;

const KIND: &str = "gaussian-posterior";
const VERSION: u32 = 1;
const HEADER_KEY: &str = "varlora.posterior";

/// One var's mean and standard deviation.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    var: Var,
    mean: Tensor,
    std: Tensor,
}

/// What the file says beside the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Header {
    /// The vars' names, group by group: each group is one draw of the noise.
    groups: Vec<Vec<String>>,
    seed: u64,
    /// Free-form settings of whoever learned the posterior (IVON's config and groups).
    settings: serde_json::Value,
}

/// A diagonal Gaussian `N(mean, std^2)` over named vars, usable as a [`Posterior`] without
/// the optimizer that learned it. [`crate::optim::Ivon::posterior`] makes one; sample `k`
/// is then the optimizer's sample `k`. [`Self::save`] writes it (means, standard
/// deviations, the seed and the optimizer's settings, with a checksum), and
/// [`Self::load`] attaches a saved one to the vars of a freshly built model.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use varlora::optim::{Ivon, IvonConfig};
/// use varlora::predict::{predictive, GaussianPosterior};
///
/// let varmap = VarMap::new();
/// let w = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu).get(3, "w")?;
/// let opt = Ivon::from_varmap(&varmap, IvonConfig::new(0.1, 10.0))?;
/// let path = std::env::temp_dir().join("varlora-doc-posterior.safetensors");
/// opt.posterior()?.save(&path)?;
///
/// // Later, in a process that serves predictions: a model with the same var names.
/// let served = VarMap::new();
/// let w = VarBuilder::from_varmap(&served, DType::F32, &Device::Cpu).get(3, "w")?;
/// let mut posterior = GaussianPosterior::load(&path, &served)?;
/// let p = predictive(&mut posterior, 8, false, || w.sum_keepdim(0)?.unsqueeze(0))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct GaussianPosterior {
    groups: Vec<Vec<Entry>>,
    seed: u64,
    settings: serde_json::Value,
    scale: f64,
}

fn invalid(msg: String) -> Error {
    Error::InvalidInput(msg)
}

impl GaussianPosterior {
    /// A posterior over `groups` of `(name, var, mean, std)`; every group is one draw of
    /// the noise, from the Philox stream of `seed`. Means and standard deviations must
    /// have their var's shape, dtype and device; standard deviations must be finite and
    /// non-negative.
    pub fn new(
        groups: Vec<Vec<(String, Var, Tensor, Tensor)>>,
        seed: u64,
        settings: serde_json::Value,
    ) -> Result<Self> {
        let groups = groups
            .into_iter()
            .map(|g| {
                g.into_iter()
                    .map(|(name, var, mean, std)| {
                        check(Entry {
                            name,
                            var,
                            mean,
                            std,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            groups,
            seed,
            settings,
            scale: 1.0,
        })
    }

    /// The vars' names with their means and standard deviations.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Tensor, &Tensor)> {
        self.groups
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), &e.mean, &e.std))
    }

    /// The settings saved with the posterior (IVON's configuration and group settings).
    pub fn settings(&self) -> &serde_json::Value {
        &self.settings
    }

    /// Multiplies the standard deviation of later samples by `scale` (a test-time
    /// temperature of the posterior; 1 is the learned posterior, 0 the mean).
    pub fn set_scale(&mut self, scale: f64) -> Result<()> {
        crate::predict::check_prediction_scale(scale)?;
        self.scale = scale;
        Ok(())
    }

    /// Writes the posterior to `path`: every var's `name.mean` and `name.std`, the groups,
    /// seed and settings, and a checksum over all of it.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors = Vec::new();
        for e in self.groups.iter().flatten() {
            tensors.push((format!("{}.mean", e.name), e.mean.clone()));
            tensors.push((format!("{}.std", e.name), e.std.clone()));
        }
        let header = Header {
            groups: self
                .groups
                .iter()
                .map(|g| g.iter().map(|e| e.name.clone()).collect())
                .collect(),
            seed: self.seed,
            settings: self.settings.clone(),
        };
        let meta = sealed::header_meta(HEADER_KEY, &header)?;
        sealed::write(path.as_ref(), KIND, VERSION, tensors, meta)
    }

    /// Reads a posterior written by [`Self::save`] and attaches it to the vars of
    /// `varmap` with the saved names, which are set to the mean. Every saved var must be
    /// in `varmap` with its shape (other vars of `varmap` are left alone); the tensors
    /// move to the var's dtype and device.
    pub fn load(path: impl AsRef<Path>, varmap: &VarMap) -> Result<Self> {
        let path = path.as_ref();
        let mut file = sealed::read(path, KIND, VERSION, &candle_core::Device::Cpu)?;
        let header: Header = file.header(HEADER_KEY, path)?;
        let vars = crate::files::lock_vars(varmap)?;
        let mut take = |name: &str, var: &Var, what: &str| -> Result<Tensor> {
            let key = format!("{name}.{what}");
            let t = file
                .tensors
                .remove(&key)
                .ok_or_else(|| invalid(format!("{} holds no {key}", path.display())))?;
            Ok(t.to_dtype(var.dtype())?.to_device(var.device())?)
        };
        let mut groups = Vec::new();
        for names in &header.groups {
            let mut group = Vec::new();
            for name in names {
                let var = vars.get(name).ok_or_else(|| {
                    invalid(format!(
                        "the posterior is over var {name}, which the model lacks"
                    ))
                })?;
                let (mean, std) = (take(name, var, "mean")?, take(name, var, "std")?);
                group.push((name.clone(), var.clone(), mean, std));
            }
            groups.push(group);
        }
        if let Some(extra) = file.tensors.keys().next() {
            return Err(invalid(format!("{extra} belongs to no var of the header")));
        }
        let posterior = Self::new(groups, header.seed, header.settings)?;
        posterior.write_mean()?;
        Ok(posterior)
    }

    fn write_mean(&self) -> Result<()> {
        for e in self.groups.iter().flatten() {
            e.var.set(&e.mean)?;
        }
        Ok(())
    }

    /// The weights of sample `k`, group by group and entry by entry.
    fn sample(&self, k: usize) -> Result<Vec<Vec<Tensor>>> {
        let shapes: Vec<Vec<Shape>> = self
            .groups
            .iter()
            .map(|g| g.iter().map(|e| e.mean.shape().clone()).collect())
            .collect();
        let Some(first) = self.groups.iter().flatten().next() else {
            return Ok(Vec::new());
        };
        let (dtype, device) = (first.mean.dtype(), first.mean.device());
        let z = prediction_normals(self.seed, k, &shapes, dtype, device)?;
        self.groups
            .iter()
            .zip(z)
            .map(|(g, zs)| {
                g.iter()
                    .zip(zs)
                    .map(|(e, z)| {
                        let noise = (z * &e.std)?;
                        let noise = if self.scale == 1.0 {
                            noise
                        } else {
                            (noise * self.scale)?
                        };
                        Ok((&e.mean + noise)?)
                    })
                    .collect()
            })
            .collect()
    }

    /// Samples `ks` of every var, stacked: its name to a `(ks.len(), ..var shape)` tensor
    /// whose row `j` is the weights [`Posterior::with_posterior_sample`] sets for sample
    /// `ks.start + j`. What [`crate::models::BertClassifier::with_stacked_weights`] takes
    /// to evaluate the samples in one forward pass; the vars are left alone.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor, Var};
    /// use varlora::predict::GaussianPosterior;
    ///
    /// let w = Var::zeros(3, DType::F32, &Device::Cpu)?;
    /// let (mean, std) = (w.zeros_like()?, w.ones_like()?);
    /// let posterior =
    ///     GaussianPosterior::new(vec![vec![("w".into(), w, mean, std)]], 0, Default::default())?;
    /// let stacked = posterior.stacked_samples(2..6)?;
    /// assert_eq!(stacked["w"].dims(), &[4, 3]);
    /// # Ok::<(), varlora::Error>(())
    /// ```
    pub fn stacked_samples(&self, ks: Range<usize>) -> Result<HashMap<String, Tensor>> {
        if ks.is_empty() {
            return Err(invalid(format!("no sample in {ks:?}: stack at least one")));
        }
        let samples: Vec<Vec<Tensor>> = ks
            .map(|k| Ok(self.sample(k)?.into_iter().flatten().collect()))
            .collect::<Result<_>>()?;
        self.groups
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, e)| {
                let rows: Vec<&Tensor> = samples.iter().map(|s| &s[i]).collect();
                Ok((e.name.clone(), Tensor::stack(&rows, 0)?))
            })
            .collect()
    }

    fn run_with<R>(
        &self,
        weights: &[Vec<Tensor>],
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        struct Restore<'a>(&'a GaussianPosterior);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                // Back to the mean, also when `f` panics.
                let _ = self.0.write_mean();
            }
        }
        let guard = Restore(self);
        for (e, w) in self.groups.iter().flatten().zip(weights.iter().flatten()) {
            e.var.set(w)?;
        }
        let out = f();
        drop(guard);
        Ok(out?)
    }
}

/// The standard-normal draws of prediction sample `k` from the stream of `seed`, one
/// tensor of each shape, group by group: each group is one draw of its total size, and
/// sample `k` starts where the draws of samples `0..k` end, so it is the same draws
/// whenever it is asked for. [`crate::optim::Ivon`]'s samples and a
/// [`GaussianPosterior`]'s both come from here, which makes their sample `k` the same.
pub(crate) fn prediction_normals(
    seed: u64,
    k: usize,
    groups: &[Vec<Shape>],
    dtype: DType,
    device: &Device,
) -> Result<Vec<Vec<Tensor>>> {
    let numel = |g: &[Shape]| g.iter().map(Shape::elem_count).sum::<usize>();
    let blocks: u64 = groups.iter().map(|g| numel(g).div_ceil(4) as u64).sum();
    let mut source = PhiloxNormal::at(seed ^ PREDICTION_STREAM, k as u64 * blocks);
    groups
        .iter()
        .map(|g| {
            let n = numel(g);
            if n == 0 {
                return g
                    .iter()
                    .map(|s| Ok(Tensor::zeros(s, dtype, device)?))
                    .collect();
            }
            let z = source.standard_normal(n, dtype, device)?;
            let mut offset = 0;
            g.iter()
                .map(|s| {
                    let part = z.narrow(0, offset, s.elem_count())?.reshape(s)?;
                    offset += s.elem_count();
                    Ok(part)
                })
                .collect()
        })
        .collect()
}

/// The mean and std fit their var.
fn check(e: Entry) -> Result<Entry> {
    for (what, t) in [("mean", &e.mean), ("std", &e.std)] {
        if t.dims() != e.var.dims()
            || t.dtype() != e.var.dtype()
            || !t.device().same_device(e.var.device())
        {
            return Err(invalid(format!(
                "the {what} of {} is {:?} {:?}; its var is {:?} {:?}",
                e.name,
                t.dims(),
                t.dtype(),
                e.var.dims(),
                e.var.dtype()
            )));
        }
    }
    let bad_std = e
        .std
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?;
    if bad_std.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
        return Err(invalid(format!(
            "the std of {} holds a negative, NaN or Inf value",
            e.name
        )));
    }
    if !crate::kernels::all_finite(&e.mean)? {
        return Err(invalid(format!("the mean of {} holds NaN or Inf", e.name)));
    }
    Ok(e)
}

impl Posterior for GaussianPosterior {
    fn with_posterior_sample<R>(
        &mut self,
        k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        let weights = self.sample(k)?;
        self.run_with(&weights, f)
    }

    fn with_point_estimate<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        self.write_mean()?;
        Ok(f()?)
    }
}
