//! Learning-rate schedules, kept apart from the update rules: a [`Schedule`] says how the
//! rate moves with the step, and [`Scheduled`] drives any optimizer's
//! `set_learning_rate` with it (IVON, candle-nn's AdamW, both of BLoB's rates).

use candle_core::backprop::GradStore;
use candle_core::Var;
use candle_nn::Optimizer;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the learning rate moves over `total_steps` steps, as a factor of the base rate.
///
/// ```
/// use varlora::optim::Schedule;
///
/// // Hugging Face's linear schedule with warm-up: 0 at step 0, 1 after 10 steps, 0 at 100.
/// let s = Schedule::LinearWarmupDecay { warmup_steps: 10, total_steps: 100 };
/// assert_eq!(s.factor(0), 0.0);
/// assert_eq!(s.factor(5), 0.5);
/// assert_eq!(s.factor(10), 1.0);
/// assert_eq!(s.factor(55), 0.5);
/// assert_eq!(s.factor(100), 0.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Linear warm-up from 0 over `warmup_steps`, then linear decay to 0 at
    /// `total_steps` (transformers' `get_linear_schedule_with_warmup`, which BLoB's
    /// reference uses with 6% warm-up).
    LinearWarmupDecay {
        /// Steps of the warm-up.
        warmup_steps: u64,
        /// Steps in all, warm-up included.
        total_steps: u64,
    },
    /// Linear warm-up, then half a cosine from the base rate to 0 at `total_steps`
    /// (transformers' `get_cosine_schedule_with_warmup`).
    Cosine {
        /// Steps of the warm-up.
        warmup_steps: u64,
        /// Steps in all, warm-up included.
        total_steps: u64,
    },
}

impl Schedule {
    /// Linear warm-up over `warmup_ratio` of `total_steps` (rounded down), then linear
    /// decay: the reference's `warmup_ratio` setting.
    pub fn linear_with_warmup_ratio(warmup_ratio: f64, total_steps: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&warmup_ratio) {
            return Err(Error::InvalidConfig {
                field: "warmup_ratio",
                value: warmup_ratio.to_string(),
                expected: "a value in [0, 1]",
            });
        }
        let s = Schedule::LinearWarmupDecay {
            warmup_steps: (warmup_ratio * total_steps as f64) as u64,
            total_steps,
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the step counts: `warmup_steps <= total_steps`, `total_steps > 0`.
    pub fn validate(&self) -> Result<()> {
        match self.steps() {
            Some((warmup_steps, total_steps)) if total_steps == 0 || warmup_steps > total_steps => {
                Err(Error::InvalidConfig {
                    field: "warmup_steps",
                    value: format!("{warmup_steps} of {total_steps} steps"),
                    expected: "total_steps > 0 and warmup_steps <= total_steps",
                })
            }
            _ => Ok(()),
        }
    }

    /// `(warmup_steps, total_steps)`; none for a constant rate.
    fn steps(&self) -> Option<(u64, u64)> {
        match *self {
            Schedule::Constant => None,
            Schedule::LinearWarmupDecay {
                warmup_steps,
                total_steps,
            }
            | Schedule::Cosine {
                warmup_steps,
                total_steps,
            } => Some((warmup_steps, total_steps)),
        }
    }

    /// The factor of the base rate at `step` (counted from 0, the first step).
    pub fn factor(&self, step: u64) -> f64 {
        let Some((warmup_steps, total_steps)) = self.steps() else {
            return 1.0;
        };
        if step < warmup_steps {
            return step as f64 / warmup_steps as f64;
        }
        let progress =
            (step - warmup_steps) as f64 / total_steps.saturating_sub(warmup_steps).max(1) as f64;
        match self {
            Schedule::Cosine { .. } => {
                0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
            }
            _ => (1.0 - progress).max(0.0),
        }
    }
}

/// How many calls of `step` an optimizer takes per update of its weights: 1 for most,
/// `mc_samples` for IVON. [`Scheduled`] advances its schedule once per update, so that a
/// schedule's `total_steps` counts updates. Implement it (the default is 1) to put an
/// optimizer of your own under a schedule.
pub trait CallsPerUpdate {
    /// Calls of `step` per update.
    fn calls_per_update(&self) -> u64 {
        1
    }
}

impl CallsPerUpdate for candle_nn::AdamW {}
impl CallsPerUpdate for candle_nn::SGD {}
impl CallsPerUpdate for super::Blob {}

impl CallsPerUpdate for super::Ivon {
    /// `mc_samples`: IVON updates after each round of that many samples.
    fn calls_per_update(&self) -> u64 {
        self.config().mc_samples as u64
    }
}

impl<O: Optimizer + CallsPerUpdate> CallsPerUpdate for Scheduled<O> {
    fn calls_per_update(&self) -> u64 {
        self.calls_per_update
    }
}

/// An optimizer whose learning rate follows a [`Schedule`]: before step `t` (from 0) it
/// sets the rate to `base_lr * schedule.factor(t)`.
///
/// A step is one update of the inner optimizer: one call of `step`, or a round of
/// [`CallsPerUpdate::calls_per_update`] calls (IVON with `mc_samples` > 1), which the
/// schedule learns from the optimizer it wraps.
///
/// ```
/// use candle_core::{DType, Device};
/// use candle_nn::{AdamW, Optimizer, VarBuilder, VarMap};
/// use varlora::optim::{Schedule, Scheduled};
///
/// let varmap = VarMap::new();
/// let _ = candle_nn::linear(3, 2, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
/// let adamw = AdamW::new_lr(varmap.all_vars(), 1e-3)?;
/// let schedule = Schedule::linear_with_warmup_ratio(0.06, 1000)?;
/// let mut opt = Scheduled::new(adamw, schedule)?;
/// assert_eq!(opt.learning_rate(), 0.0); // the first step of a warm-up
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Scheduled<O: Optimizer> {
    inner: O,
    schedule: Schedule,
    base_lr: f64,
    /// Calls of `step` so far.
    calls: u64,
    calls_per_update: u64,
}

impl<O: Optimizer + CallsPerUpdate> Scheduled<O> {
    /// Wraps `inner`, whose current learning rate becomes the base rate, and whose
    /// [`CallsPerUpdate`] makes one step of the schedule.
    pub fn new(mut inner: O, schedule: Schedule) -> Result<Self> {
        schedule.validate()?;
        let base_lr = inner.learning_rate();
        inner.set_learning_rate(base_lr * schedule.factor(0));
        let calls_per_update = inner.calls_per_update().max(1);
        Ok(Self {
            inner,
            schedule,
            base_lr,
            calls: 0,
            calls_per_update,
        })
    }
}

impl<O: Optimizer> Scheduled<O> {
    /// Advances the schedule once every `calls` calls of `step`, overriding what the
    /// inner optimizer's [`CallsPerUpdate`] said. Set it before the first call, so that
    /// the rounds line up with the optimizer's.
    ///
    /// ```
    /// use candle_core::{DType, Device, Var};
    /// use candle_nn::Optimizer;
    /// use varlora::optim::{CallsPerUpdate, Ivon, IvonConfig, Schedule, Scheduled};
    ///
    /// let w = Var::zeros(4, DType::F32, &Device::Cpu)?;
    /// let ivon = Ivon::new(vec![w], IvonConfig::new(0.1, 100.0).mc_samples(2))?;
    /// let schedule = Schedule::LinearWarmupDecay { warmup_steps: 0, total_steps: 50 };
    /// let opt = Scheduled::new(ivon, schedule)?; // 50 updates of 2 calls: learned from IVON
    /// assert_eq!(CallsPerUpdate::calls_per_update(&opt), 2);
    /// let opt = opt.calls_per_update(2)?; // the same, said by hand
    /// assert_eq!(opt.learning_rate(), 0.1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn calls_per_update(mut self, calls: u64) -> Result<Self> {
        if calls == 0 {
            return Err(Error::InvalidConfig {
                field: "calls_per_update",
                value: calls.to_string(),
                expected: "at least 1 (the inner optimizer's calls per update)",
            });
        }
        self.calls_per_update = calls;
        self.apply_rate();
        Ok(self)
    }

    /// Sets the inner rate for the next call: the schedule at the current update.
    fn apply_rate(&mut self) {
        let factor = self.schedule.factor(self.calls / self.calls_per_update);
        self.inner.set_learning_rate(self.base_lr * factor);
    }

    /// The wrapped optimizer.
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// The wrapped optimizer, mutably (e.g. for IVON's `with_mean`).
    pub fn inner_mut(&mut self) -> &mut O {
        &mut self.inner
    }

    /// Steps taken so far: calls of `step`, divided by
    /// [`calls_per_update`](Scheduled::calls_per_update).
    pub fn step_count(&self) -> u64 {
        self.calls / self.calls_per_update
    }

    /// The base rate that the schedule scales.
    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }
}

/// A schedule's place, kept in its optimizer's checkpoint by `Scheduled::save`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ScheduleRecord {
    schedule: Schedule,
    base_lr: f64,
    calls: u64,
    calls_per_update: u64,
}

impl ScheduleRecord {
    /// Errors unless `record` is there, is of `schedule`, and holds a valid state.
    pub(crate) fn check(record: Option<&Self>, schedule: &Schedule) -> Result<()> {
        let r = record.ok_or_else(|| {
            Error::Checkpoint(
                "the file holds no schedule (saved by the optimizer's own save, not \
                 Scheduled's): load it into the bare optimizer"
                    .into(),
            )
        })?;
        if r.schedule != *schedule {
            return Err(Error::Checkpoint(format!(
                "saved under {:?}, this schedule is {schedule:?}",
                r.schedule
            )));
        }
        if r.calls_per_update == 0 || !r.base_lr.is_finite() {
            return Err(Error::Checkpoint(format!(
                "a saved schedule of {} calls per update at base rate {}",
                r.calls_per_update, r.base_lr
            )));
        }
        Ok(())
    }
}

impl<O: Optimizer> Scheduled<O> {
    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Where the schedule stands, for a checkpoint.
    pub(crate) fn record(&self) -> ScheduleRecord {
        ScheduleRecord {
            schedule: self.schedule,
            base_lr: self.base_lr,
            calls: self.calls,
            calls_per_update: self.calls_per_update,
        }
    }

    /// Puts the schedule where `record` (checked) says, and the inner rate with it.
    pub(crate) fn restore(&mut self, record: ScheduleRecord) {
        self.base_lr = record.base_lr;
        self.calls = record.calls;
        self.calls_per_update = record.calls_per_update;
        self.apply_rate();
    }
}

impl<O: Optimizer + CallsPerUpdate> Optimizer for Scheduled<O> {
    /// The inner optimizer's config and the schedule.
    type Config = (O::Config, Schedule);

    fn new(vars: Vec<Var>, (config, schedule): Self::Config) -> candle_core::Result<Self> {
        Ok(Scheduled::new(O::new(vars, config)?, schedule)?)
    }

    /// Steps the inner optimizer at the scheduled rate; the step counts only if it
    /// succeeds.
    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.apply_rate();
        self.inner.step(grads)?;
        self.calls += 1;
        self.apply_rate();
        Ok(())
    }

    /// The rate of the next step.
    fn learning_rate(&self) -> f64 {
        self.inner.learning_rate()
    }

    /// Sets the base rate; the schedule keeps scaling it.
    fn set_learning_rate(&mut self, lr: f64) {
        self.base_lr = lr;
        self.apply_rate();
    }
}
