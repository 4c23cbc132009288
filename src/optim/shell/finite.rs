//! The non-finite policy: a step whose gradients hold NaN or Inf either fails, changing
//! nothing, or is skipped. The check returns a typed verdict, so that the caller never
//! infers a skip from a counter.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::Slot;
use crate::{kernels, Error, Result};

/// What to do when a gradient holds NaN or Inf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// Return [`Error::NonFiniteGradient`] and change nothing (the default).
    #[default]
    Error,
    /// Drop the whole step (for IVON, the samples collected for it too; the vars go back
    /// to the mean) and count it in the optimizer's `skipped_steps`.
    SkipStep,
}

/// What a step does with gradients that passed [`screen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) enum Verdict {
    /// Every gradient is finite (on every rank): update.
    Apply,
    /// One is not, and the policy is [`NonFinite::SkipStep`]: drop the step.
    Skip,
}

/// Checks each gradient for NaN or Inf. `any_rank` is told whether this process found one
/// and answers whether any rank did (the identity without ranks), so that every rank
/// takes the same verdict.
pub(crate) fn screen<'a>(
    grads: impl IntoIterator<Item = (Slot, &'a Tensor)>,
    policy: NonFinite,
    any_rank: impl FnOnce(bool) -> Result<bool>,
) -> Result<Verdict> {
    let mut first_bad = None;
    for (slot, g) in grads {
        if !kernels::all_finite(g)? {
            first_bad = Some((slot, g.shape().clone()));
            break;
        }
    }
    if !any_rank(first_bad.is_some())? {
        return Ok(Verdict::Apply);
    }
    if policy == NonFinite::SkipStep {
        return Ok(Verdict::Skip);
    }
    Err(match first_bad {
        Some((slot, shape)) => Error::NonFiniteGradient {
            group: slot.group,
            var: slot.var,
            shape,
        },
        None => Error::Collective(
            "another rank's gradient holds NaN or Inf: every rank fails this step, \
             nothing changed"
                .into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_policy_decides_between_an_error_and_a_skip() -> Result<()> {
        let dev = Device::Cpu;
        let good = Tensor::new(&[1f32, 2.], &dev)?;
        let bad = Tensor::new(&[1f32, f32::NAN], &dev)?;
        let at = |var| Slot { group: 1, var };
        let local = |found| Ok(found);
        let both = [(at(0), &good), (at(1), &bad)];
        assert_eq!(
            screen([(at(0), &good)], NonFinite::Error, local)?,
            Verdict::Apply
        );
        assert_eq!(screen(both, NonFinite::SkipStep, local)?, Verdict::Skip);
        assert!(matches!(
            screen(both, NonFinite::Error, local),
            Err(Error::NonFiniteGradient {
                group: 1,
                var: 1,
                ..
            })
        ));
        // Another rank's NaN: this rank, finite itself, takes the same verdict.
        let elsewhere = |_| Ok(true);
        assert_eq!(
            screen([(at(0), &good)], NonFinite::SkipStep, elsewhere)?,
            Verdict::Skip
        );
        assert!(matches!(
            screen([(at(0), &good)], NonFinite::Error, elsewhere),
            Err(Error::Collective(_))
        ));
        Ok(())
    }
}
