//! The counts every optimizer keeps and saves: the updates it made and the steps it
//! skipped for a non-finite gradient. A checkpoint header flattens them, so their JSON
//! keys (`step`, `skipped_steps`) are the ones files have always had.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counts {
    /// Updates made: `t` of the last one.
    pub step: u64,
    /// Steps dropped under [`super::NonFinite::SkipStep`]; absent from files written
    /// before an optimizer could skip.
    #[serde(default)]
    pub skipped_steps: u64,
}

impl Counts {
    /// The number of the update about to be made.
    pub fn next(&self) -> u64 {
        self.step + 1
    }

    /// Update `t` is made.
    pub fn made(&mut self, t: u64) {
        self.step = t;
    }

    /// A step was dropped.
    pub fn skipped(&mut self) {
        self.skipped_steps += 1;
    }
}
