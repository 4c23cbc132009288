//! An optimizer's record on disk, written and read one way for every optimizer: a sealed
//! safetensors file (its kind, format version and a CRC-32 of everything; see
//! [`crate::files`]) holding a JSON header and named tensors. Each optimizer says only
//! what its header and tensors are, and checks that they fit it before it changes.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
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
    /// Tensor `name` if the record holds it, which must have shape `dims` and `dtype`.
    pub fn take_optional(
        &mut self,
        name: &str,
        dims: &[usize],
        dtype: DType,
    ) -> Result<Option<Tensor>> {
        match self.0.remove(name) {
            Some(t) if t.dims() == dims && t.dtype() == dtype => Ok(Some(t)),
            Some(t) => Err(mismatch(format!(
                "{name} is {:?} {:?}, expected {dims:?} {dtype:?}",
                t.dims(),
                t.dtype()
            ))),
            None => Ok(None),
        }
    }

    /// Tensor `name`, which the record must hold with `like`'s shape and dtype.
    pub fn take(&mut self, name: &str, like: &Tensor) -> Result<Tensor> {
        self.take_optional(name, like.dims(), like.dtype())?
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
