//! An optimizer's record on disk, written and read one way for every optimizer: a sealed
//! safetensors file (its kind, format version and a CRC-32 of everything; see
//! [`crate::files`]) holding a JSON header and named tensors. Each optimizer says only
//! what its header and tensors are, and checks that they fit it before it changes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::files::sealed;
use crate::{Error, Result};

/// An optimizer whose whole run one file holds, so that a wrapper around it
/// ([`crate::optim::Scheduled`]) keeps its own place in the same file: IVON and BLoB, or
/// an optimizer of your own.
///
/// The optimizers' own `save` and `load_state` are these with no wrapper record.
///
/// # Example: an optimizer of your own under a resumable schedule
/// ```
/// use std::path::Path;
/// use candle_core::{backprop::GradStore, DType, Device, Var};
/// use candle_nn::Optimizer;
/// use serde_json::{json, Value};
/// use varlora::optim::{CallsPerUpdate, Resumable, Schedule, Scheduled};
/// use varlora::{Error, Result};
///
/// /// SGD that counts its steps; its record is that count.
/// struct Counted { sgd: candle_nn::SGD, steps: u64 }
///
/// impl Optimizer for Counted {
///     type Config = f64;
///     fn new(vars: Vec<Var>, lr: f64) -> candle_core::Result<Self> {
///         Ok(Self { sgd: candle_nn::SGD::new(vars, lr)?, steps: 0 })
///     }
///     fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
///         self.steps += 1;
///         self.sgd.step(grads)
///     }
///     fn learning_rate(&self) -> f64 { self.sgd.learning_rate() }
///     fn set_learning_rate(&mut self, lr: f64) { self.sgd.set_learning_rate(lr) }
/// }
/// impl CallsPerUpdate for Counted {}
///
/// impl Resumable for Counted {
///     fn save_with(&self, path: &Path, wrapper: Option<Value>) -> Result<()> {
///         let text = json!({ "steps": self.steps, "wrapper": wrapper }).to_string();
///         Ok(std::fs::write(path, text)?)
///     }
///     fn load_with(
///         &mut self,
///         path: &Path,
///         check: &mut dyn FnMut(Option<&Value>) -> Result<()>,
///     ) -> Result<Option<Value>> {
///         let file: Value = serde_json::from_str(&std::fs::read_to_string(path)?)
///             .map_err(|e| Error::Checkpoint(e.to_string()))?;
///         let wrapper = file.get("wrapper").filter(|w| !w.is_null()).cloned();
///         check(wrapper.as_ref())?; // before anything changes
///         self.steps = file["steps"].as_u64().ok_or(Error::Checkpoint("no steps".into()))?;
///         Ok(wrapper)
///     }
/// }
///
/// let w = Var::zeros(2, DType::F32, &Device::Cpu)?;
/// let schedule = Schedule::linear_with_warmup_ratio(0.5, 4)?;
/// let mut opt = Scheduled::new(Counted::new(vec![w.clone()], 0.1)?, schedule)?;
/// opt.backward_step(&w.as_tensor().sum_all()?)?;
/// let path = std::env::temp_dir().join("varlora-doc-counted.json");
/// opt.save(&path)?;
/// let mut resumed = Scheduled::new(Counted::new(vec![w], 0.1)?, schedule)?;
/// resumed.load_state(&path)?;
/// assert_eq!((resumed.inner().steps, resumed.step_count()), (1, 1));
/// assert_eq!(resumed.learning_rate(), opt.learning_rate());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Resumable {
    /// Saves the run to `path`, with `wrapper` (a wrapper's record, as JSON) in the file,
    /// to be given back as it was by [`Resumable::load_with`].
    fn save_with(&self, path: &Path, wrapper: Option<Value>) -> Result<()>;

    /// Restores a run saved by [`Resumable::save_with`]. `check` sees the file's wrapper
    /// record once the run itself is known to fit, and may refuse it; any error changes
    /// nothing. Returns the wrapper record.
    fn load_with(
        &mut self,
        path: &Path,
        check: &mut dyn FnMut(Option<&Value>) -> Result<()>,
    ) -> Result<Option<Value>>;
}

/// A record's format: the file's kind, its version and the metadata key of its header.
pub(crate) struct Format {
    pub kind: &'static str,
    pub version: u32,
    pub header_key: &'static str,
}

impl Format {
    /// Writes `header` and `tensors` to `path`, beside it first and renamed into place, so
    /// that an interrupted save leaves any earlier record whole.
    pub fn write(
        &self,
        path: &Path,
        header: &impl Serialize,
        tensors: Vec<(String, Tensor)>,
    ) -> Result<()> {
        let meta = sealed::header_meta(self.header_key, header)?;
        sealed::write(path, self.kind, self.version, tensors, meta)
    }

    /// The header and tensors of the record at `path`, on `device`. Another kind, another
    /// version or a changed byte is an [`Error::File`].
    pub fn read<H: DeserializeOwned>(&self, path: &Path, device: &Device) -> Result<(H, Tensors)> {
        let file = sealed::read(path, self.kind, self.version, device)?;
        Ok((file.header(self.header_key, path)?, Tensors(file.tensors)))
    }
}

/// A record that does not fit the optimizer loading it: an [`Error::Checkpoint`].
pub(crate) fn mismatch(problem: impl Into<String>) -> Error {
    Error::Checkpoint(problem.into())
}

/// A record's tensors, taken out one by one, each checked against what it restores.
pub(crate) struct Tensors(HashMap<String, Tensor>);

impl Tensors {
    /// Tensor `name` if the record holds it, which must have `like`'s shape and dtype.
    pub fn take_optional(&mut self, name: &str, like: &Tensor) -> Result<Option<Tensor>> {
        match self.0.remove(name) {
            Some(t) if t.dims() == like.dims() && t.dtype() == like.dtype() => Ok(Some(t)),
            Some(t) => Err(mismatch(format!(
                "{name} is {:?} {:?}, expected {:?} {:?}",
                t.dims(),
                t.dtype(),
                like.dims(),
                like.dtype()
            ))),
            None => Ok(None),
        }
    }

    /// Tensor `name`, which the record must hold with `like`'s shape and dtype.
    pub fn take(&mut self, name: &str, like: &Tensor) -> Result<Tensor> {
        self.take_optional(name, like)?
            .ok_or_else(|| mismatch(format!("{name} is missing")))
    }

    /// Errors on a tensor that nothing took: the record holds more than this optimizer.
    pub fn finish(self) -> Result<()> {
        match self.0.keys().next() {
            Some(extra) => Err(mismatch(format!("unexpected tensor {extra}"))),
            None => Ok(()),
        }
    }
}
