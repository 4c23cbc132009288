//! AdamW (Loshchilov and Hutter, 2019) as candle-nn's `AdamW` computes it, op for op, so
//! that the two agree bit for bit, but with its moments and step count in the open, so
//! that an optimizer built on it (BLoB) can save and restore them.
//!
//! Per var, at step `t` with learning rate `lr` and weight decay `wd`:
//!
//! ```text
//! m     <- beta1 m + (1 - beta1) g
//! v     <- beta2 v + (1 - beta2) g^2
//! theta <- theta (1 - lr wd) - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
//! ```

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::ParamsAdamW;

use crate::{Error, Result};

/// AdamW over a list of vars: the rule above and its state.
#[derive(Debug)]
pub(crate) struct AdamW {
    vars: Vec<Var>,
    /// First and second moments, one pair per var.
    moments: Vec<(Tensor, Tensor)>,
    step: u64,
    params: ParamsAdamW,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub(crate) fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let moments = vars
            .iter()
            .map(|v| Ok((v.zeros_like()?, v.zeros_like()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            vars,
            moments,
            step: 0,
            params,
        })
    }

    pub(crate) fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    pub(crate) fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// One step for the vars whose gradient `grads` holds; the others keep their values
    /// and moments, as candle-nn's `AdamW` leaves them. Every var's update is computed
    /// before any is written, so an error changes nothing.
    pub(crate) fn step(&mut self, grads: &GradStore) -> Result<()> {
        let t = self.step + 1;
        let mut next = Vec::with_capacity(self.vars.len());
        for (i, (var, moments)) in self.vars.iter().zip(&self.moments).enumerate() {
            if let Some(g) = grads.get(var) {
                next.push((i, rule(&self.params, t, var.as_tensor(), g, moments)?));
            }
        }
        for (i, (theta, moments)) in next {
            self.vars[i].set(&theta)?;
            self.moments[i] = moments;
        }
        self.step = t;
        Ok(())
    }

    /// The step count and each var's moments, for a checkpoint.
    pub(crate) fn state(&self) -> (u64, &[(Tensor, Tensor)]) {
        (self.step, &self.moments)
    }

    /// Restores a state from [`Self::state`]: every moment must have its var's shape and
    /// dtype, or nothing changes.
    pub(crate) fn restore(&mut self, step: u64, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.vars.len() {
            return Err(Error::Checkpoint(format!(
                "{} pairs of AdamW moments for {} vars",
                moments.len(),
                self.vars.len()
            )));
        }
        for (i, (var, (m, v))) in self.vars.iter().zip(&moments).enumerate() {
            for t in [m, v] {
                if t.shape() != var.shape() || t.dtype() != var.dtype() {
                    return Err(Error::Checkpoint(format!(
                        "AdamW moment of var {i} is {:?} {:?}, the var {:?} {:?}",
                        t.dtype(),
                        t.dims(),
                        var.dtype(),
                        var.dims()
                    )));
                }
            }
        }
        let device = self.vars.first().map(|v| v.device().clone());
        self.moments = match device {
            Some(dev) => moments
                .into_iter()
                .map(|(m, v)| Ok((m.to_device(&dev)?, v.to_device(&dev)?)))
                .collect::<Result<_>>()?,
            None => moments,
        };
        self.step = step;
        Ok(())
    }
}

/// The rule above for one var at step `t`: its next value and moments. Pure, in
/// candle-nn's op order.
fn rule(
    p: &ParamsAdamW,
    t: u64,
    theta: &Tensor,
    g: &Tensor,
    (m, v): &(Tensor, Tensor),
) -> Result<(Tensor, (Tensor, Tensor))> {
    let t = t as i32;
    let (scale_m, scale_v) = (1.0 / (1.0 - p.beta1.powi(t)), 1.0 / (1.0 - p.beta2.powi(t)));
    let next_m = ((m * p.beta1)? + (g * (1.0 - p.beta1))?)?;
    let next_v = ((v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
    let m_hat = (&next_m * scale_m)?;
    let v_hat = (&next_v * scale_v)?;
    let decayed = (theta * (1.0 - p.lr * p.weight_decay))?;
    let adjusted = (m_hat / (v_hat.sqrt()? + p.eps)?)?;
    Ok(((decayed - (adjusted * p.lr)?)?, (next_m, next_v)))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;

    use super::*;

    /// Five steps of ours and of candle-nn's AdamW from the same start, with weight decay
    /// and a var that gets no gradient on some steps: the same bits.
    #[test]
    fn matches_candle_nn_bit_for_bit() {
        let dev = Device::Cpu;
        let start = [
            Tensor::new(&[0.3f32, -1.2, 2.0], &dev).unwrap(),
            Tensor::new(&[[0.5f32, 0.1], [-0.7, 0.9]], &dev).unwrap(),
        ];
        let make = || -> Vec<Var> { start.iter().map(|t| Var::from_tensor(t).unwrap()).collect() };
        let (ours_vars, theirs_vars) = (make(), make());
        let params = ParamsAdamW {
            lr: 0.05,
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut ours = AdamW::new(ours_vars.clone(), params.clone()).unwrap();
        let mut theirs = candle_nn::AdamW::new(theirs_vars.clone(), params).unwrap();
        for step in 0..5 {
            let loss = |vars: &[Var]| {
                let a = vars[0].as_tensor().sqr().unwrap().sum_all().unwrap();
                if step % 2 == 0 {
                    let b = vars[1].as_tensor().exp().unwrap().sum_all().unwrap();
                    (a + b).unwrap()
                } else {
                    a
                }
            };
            ours.step(&loss(&ours_vars).backward().unwrap()).unwrap();
            theirs
                .step(&loss(&theirs_vars).backward().unwrap())
                .unwrap();
            for (a, b) in ours_vars.iter().zip(&theirs_vars) {
                let (a, b): (Vec<f32>, Vec<f32>) = (
                    a.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                    b.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "step {step}");
            }
        }
        let wrong = vec![
            (
                Tensor::zeros(2, DType::F32, &dev).unwrap(),
                Tensor::zeros(2, DType::F32, &dev).unwrap(),
            );
            2
        ];
        assert!(ours.restore(1, wrong).is_err());
    }
}
