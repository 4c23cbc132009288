//! Saving and resuming a scheduled run: the inner optimizer's checkpoint with the
//! schedule's place (its base rate and calls so far) in the same file, so that a resumed
//! run takes the rate the uninterrupted one would have taken, step for step.

use std::path::Path;

use super::schedule::ScheduleRecord;
use super::{Blob, Ivon, Scheduled};
use crate::lora::BlobSampler;
use crate::{Error, Result};

/// The record a checked load returned: `check` refuses a file without one, so `None`
/// cannot come back; said as an error rather than assumed.
fn checked(record: Option<ScheduleRecord>) -> Result<ScheduleRecord> {
    record.ok_or_else(|| Error::Checkpoint("the file holds no schedule".into()))
}

impl Scheduled<Ivon> {
    /// Saves IVON's whole state ([`Ivon::save`]) and the schedule's place in one file.
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
        self.inner().save_with(path.as_ref(), Some(self.record()))
    }

    /// Restores a file written by [`Scheduled::save`]: IVON's state and the schedule's
    /// place. The schedule must be the one saved, and a file of [`Ivon::save`] (no
    /// schedule) is an error; either changes nothing.
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let schedule = *self.schedule();
        let record = self
            .inner_mut()
            .load_with(path.as_ref(), |r| ScheduleRecord::check(r, &schedule))?;
        self.restore(checked(record)?);
        Ok(())
    }
}

impl Scheduled<Blob> {
    /// Saves BLoB's run ([`Blob::save`]) and the schedule's place in one file.
    pub fn save(&self, path: impl AsRef<Path>, sampler: &BlobSampler) -> Result<()> {
        self.inner()
            .save_with(path.as_ref(), sampler, Some(self.record()))
    }

    /// Restores a file written by [`Scheduled::save`]: BLoB's run and the schedule's
    /// place, as the IVON one does.
    pub fn load_state(&mut self, path: impl AsRef<Path>, sampler: &BlobSampler) -> Result<()> {
        let schedule = *self.schedule();
        let record = self.inner_mut().load_with(path.as_ref(), sampler, |r| {
            ScheduleRecord::check(r, &schedule)
        })?;
        self.restore(checked(record)?);
        Ok(())
    }
}
