//! The switch and seeded stream that a model's stochastic layers share (BLoB's weight
//! noise, MC dropout's masks): whether forwards sample, and the draws they take. Sample
//! `k` and the point estimate run a closure in a mode and stream of their own and restore
//! the previous ones afterwards.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::noise::PhiloxNormal;
use crate::{Error, Result};

#[derive(Debug)]
struct State {
    sampling: bool,
    stream: PhiloxNormal,
    /// The factor on the noise of the forwards now running: 1 in training,
    /// `prediction_scale` within a prediction sample.
    scale: f64,
    prediction_scale: f64,
}

/// Clones share the state; what a call must restore lives in that call's guard, so calls
/// through different clones nest.
#[derive(Clone, Debug)]
pub(crate) struct SampleSwitch {
    seed: u64,
    prediction_salt: u64,
    state: Arc<Mutex<State>>,
}

impl SampleSwitch {
    /// Sampling `on` or off outside [`Self::with_sample`], training draws from `seed`;
    /// prediction samples from `seed ^ prediction_salt`, so that they leave the training
    /// stream alone.
    pub(crate) fn new(seed: u64, prediction_salt: u64, sampling: bool) -> Self {
        Self {
            seed,
            prediction_salt,
            state: Arc::new(Mutex::new(State {
                sampling,
                stream: PhiloxNormal::new(seed),
                scale: 1.0,
                prediction_scale: 1.0,
            })),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::InvalidState("the sampler's lock is poisoned"))
    }

    pub(crate) fn set_sampling(&self, on: bool) -> Result<()> {
        self.lock()?.sampling = on;
        Ok(())
    }

    pub(crate) fn is_sampling(&self) -> Result<bool> {
        Ok(self.lock()?.sampling)
    }

    /// Sets the factor on the noise of prediction samples; errors unless finite and
    /// >= 0.
    pub(crate) fn set_prediction_scale(&self, scale: f64) -> Result<()> {
        crate::predict::check_prediction_scale(scale)?;
        self.lock()?.prediction_scale = scale;
        Ok(())
    }

    /// Whether `other` is a clone of this switch (they share one state).
    pub(crate) fn shares_state(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// The training stream's seed and position, for a checkpoint.
    pub(crate) fn training_stream(&self) -> Result<(u64, u64)> {
        let st = self.lock()?;
        Ok((st.stream.seed(), st.stream.block()))
    }

    /// Moves the training stream to `block` of this switch's seed.
    pub(crate) fn set_training_stream(&self, block: u64) -> Result<()> {
        self.lock()?.stream = PhiloxNormal::at(self.seed, block);
        Ok(())
    }

    /// The stream, locked: draw from it and drop the guard.
    pub(crate) fn stream(&self) -> Result<StreamGuard<'_>> {
        Ok(StreamGuard(self.lock()?))
    }

    /// Runs `f` sampling from sample `k`'s stream (2^40 blocks per sample: far more than
    /// one forward of any model draws).
    pub(crate) fn with_sample<R>(
        &mut self,
        k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        let stream = PhiloxNormal::at(self.seed ^ self.prediction_salt, (k as u64) << 40);
        let scale = self.lock()?.prediction_scale;
        self.run_with(true, stream, scale, f)
    }

    /// Runs `f` with sampling off.
    pub(crate) fn with_point_estimate<R>(
        &mut self,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        let stream = self.lock()?.stream.clone();
        self.run_with(false, stream, 1.0, f)
    }

    /// Runs `f` in the given mode and stream, then restores the previous ones, also when
    /// `f` errs or panics.
    fn run_with<R>(
        &mut self,
        sampling: bool,
        stream: PhiloxNormal,
        scale: f64,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        let saved = {
            let mut st = self.lock()?;
            let saved = (st.sampling, st.stream.clone(), st.scale);
            (st.sampling, st.stream, st.scale) = (sampling, stream, scale);
            saved
        };
        let _restore = Restore {
            state: &self.state,
            saved: Some(saved),
        };
        Ok(f()?)
    }
}

/// The locked stream of a [`SampleSwitch`].
pub(crate) struct StreamGuard<'a>(MutexGuard<'a, State>);

impl StreamGuard<'_> {
    /// The factor on the noise of the forwards now running.
    pub(crate) fn scale(&self) -> f64 {
        self.0.scale
    }
}

impl std::ops::Deref for StreamGuard<'_> {
    type Target = PhiloxNormal;
    fn deref(&self) -> &PhiloxNormal {
        &self.0.stream
    }
}

impl std::ops::DerefMut for StreamGuard<'_> {
    fn deref_mut(&mut self) -> &mut PhiloxNormal {
        &mut self.0.stream
    }
}

/// Puts the mode and stream back when dropped, on unwinding too.
struct Restore<'a> {
    state: &'a Mutex<State>,
    saved: Option<(bool, PhiloxNormal, f64)>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Some((sampling, stream, scale)) = self.saved.take() {
            // A panic while a layer held the lock poisoned it; the state restored here is
            // whole again, so the poison is cleared.
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (st.sampling, st.stream, st.scale) = (sampling, stream, scale);
            drop(st);
            self.state.clear_poison();
        }
    }
}
