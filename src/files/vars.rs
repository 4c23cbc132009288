//! Setting a model's vars from a file's tensors, all or nothing.

use std::collections::HashMap;
use std::path::Path;

use std::sync::MutexGuard;

use candle_core::{Tensor, Var};

use crate::{Error, Result};

/// The vars of `varmap` by name, locked: an error, not a panic, if a thread panicked
/// while holding the lock.
pub(crate) fn lock_vars(
    varmap: &candle_nn::VarMap,
) -> Result<MutexGuard<'_, HashMap<String, Var>>> {
    varmap
        .data()
        .lock()
        .map_err(|_| Error::InvalidState("the VarMap's lock is poisoned"))
}

/// Sets each `(key, name, var)` of `vars` to the file's tensor `key` (the var's `name`
/// where the file names it differently), passed through `convert` and then to the var's
/// dtype and device. Every tensor is found and checked before any var changes; a missing
/// tensor, a shape that differs or a tensor of the file that no var takes is an error
/// naming `path`.
pub(crate) fn set_vars<'a>(
    path: &Path,
    mut file: HashMap<String, Tensor>,
    vars: impl IntoIterator<Item = (String, &'a str, &'a Var)>,
    convert: impl Fn(&str, Tensor) -> Result<Tensor>,
) -> Result<()> {
    let bad = |problem: String| Error::File {
        path: path.to_path_buf(),
        problem,
    };
    let mut updates = Vec::new();
    for (key, name, var) in vars {
        let for_var = if key == name {
            String::new()
        } else {
            format!(" (for var {name})")
        };
        let t = file
            .remove(&key)
            .ok_or_else(|| bad(format!("{key} is missing{for_var}")))?;
        let t = convert(name, t)?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "{key} has shape {:?}, var {name} {:?}",
                t.dims(),
                var.dims()
            )));
        }
        updates.push((var, t.to_dtype(var.dtype())?.to_device(var.device())?));
    }
    if let Some(extra) = file.keys().next() {
        return Err(bad(format!("{extra} matches no var of the model")));
    }
    for (var, t) in updates {
        var.set(&t)?;
    }
    Ok(())
}
