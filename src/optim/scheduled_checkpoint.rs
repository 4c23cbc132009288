//! Saving and resuming a scheduled run: the inner optimizer's record with the schedule's
//! place (its base rate and calls so far) in the same file, so that a resumed run takes
//! the rate the uninterrupted one would have taken, step for step.

use std::path::Path;

use candle_nn::Optimizer;
use serde_json::Value;

use super::schedule::ScheduleRecord;
use super::{Resumable, Scheduled};
use crate::{Error, Result};

/// The schedule's record as the inner optimizer's file holds it.
fn to_value(record: ScheduleRecord) -> Result<Value> {
    serde_json::to_value(record).map_err(|e| Error::Serialization(e.to_string()))
}

fn from_value(value: Option<&Value>) -> Result<Option<ScheduleRecord>> {
    value
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| Error::Checkpoint(format!("an unreadable schedule record: {e}")))
        })
        .transpose()
}

impl<O: Optimizer + Resumable> Scheduled<O> {
    /// Saves the inner optimizer's run ([`Resumable::save_with`], e.g.
    /// [`crate::optim::Ivon::save`]) and the schedule's place in one file.
    ///
    /// ```
    /// # use candle_core::{DType, Device, Var};
    /// # use varlora::optim::{Ivon, IvonConfig, Schedule, Scheduled};
    /// let w = Var::zeros(3, DType::F32, &Device::Cpu)?;
    /// let schedule = Schedule::linear_with_warmup_ratio(0.1, 100)?;
    /// let ivon = || Ivon::new(vec![w.clone()], IvonConfig::new(0.1, 10.0));
    /// let opt = Scheduled::new(ivon()?, schedule)?;
    /// let path = std::env::temp_dir().join("varlora-doc-scheduled.safetensors");
    /// opt.save(&path)?;
    /// let mut resumed = Scheduled::new(ivon()?, schedule)?;
    /// resumed.load_state(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.inner()
            .save_with(path.as_ref(), Some(to_value(self.record())?))
    }

    /// Restores a file written by [`Scheduled::save`]: the inner optimizer's run and the
    /// schedule's place. The schedule must be the one saved, and a file of the bare
    /// optimizer's `save` (no schedule) is an error; either changes nothing.
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let schedule = *self.schedule();
        let mut record = None;
        self.inner_mut().load_with(path.as_ref(), &mut |value| {
            let r = from_value(value)?;
            ScheduleRecord::check(r.as_ref(), &schedule)?;
            record = r;
            Ok(())
        })?;
        let record =
            record.ok_or_else(|| Error::Checkpoint("the file holds no schedule".into()))?;
        self.restore(record);
        Ok(())
    }
}
