//! MC dropout (Gal and Ghahramani, ICML 2016) over LoRA's dropout, with seeded masks.
//! candle's `Dropout` draws its masks from an unseeded generator on the CPU, so neither
//! training nor Monte Carlo prediction with it repeats.

use candle_core::Tensor;

use super::sampler::SampleSwitch;
use crate::predict::Posterior;
use crate::Result;

/// Salt that separates MC dropout's prediction masks from its training masks.
const PREDICTION_STREAM: u64 = 0x6d63_6472_6f70_7072;

/// The seeded dropout masks shared by every LoRA layer built with it, and the model's
/// [`Posterior`] for MC dropout: sample `k` evaluates with dropout on, its masks drawn
/// from a stream positioned by `k` (so sample `k` repeats for the same inputs), and the
/// point estimate evaluates without dropout. Training forwards always drop, with masks
/// from the training stream of `seed`; evaluation forwards outside those calls do not.
/// As with BLoB, the masks are drawn per element of each batch, so sample `k` depends on
/// the batch's shape. Clones share the state.
///
/// The reference (bayesian-peft's `mcdropout.py`) switches on every dropout module of the
/// model; this encoder has dropout on the adapters' inputs only.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{Linear, VarBuilder, VarMap};
/// use varlora::lora::{LoraConfig, LoraLinear, McDropout};
/// use varlora::predict::{predictive, Posterior};
///
/// let dev = Device::Cpu;
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
/// let mut mc = McDropout::new(0);
/// let base = Linear::new(Tensor::ones((3, 5), DType::F32, &dev)?, None);
/// let layer = LoraLinear::with_mc_dropout(base, LoraConfig::new(2).dropout(0.1), vb, &mc)?;
/// let x = Tensor::ones((4, 5), DType::F32, &dev)?;
/// let p = predictive(&mut mc, 8, false, || {
///     candle_nn::ops::log_softmax(&layer.forward_t(&x, false)?, 1)
/// })?;
/// # Ok::<(), varlora::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct McDropout(SampleSwitch);

impl McDropout {
    /// Masks seeded by `seed`; evaluation without dropout until a posterior sample.
    pub fn new(seed: u64) -> Self {
        Self(SampleSwitch::new(seed, PREDICTION_STREAM, false))
    }

    /// `x` with each element zeroed with probability `p` and the rest scaled by
    /// `1 / (1 - p)`, when training or sampling; `x` itself otherwise.
    pub(crate) fn apply(&self, x: &Tensor, p: f32, train: bool) -> candle_core::Result<Tensor> {
        if p == 0.0 || !(train || self.0.is_sampling()?) {
            return Ok(x.clone());
        }
        let mut u = vec![0f32; x.elem_count()];
        self.0.stream()?.fill_uniform(&mut u, 0.0, 1.0);
        let keep = 1.0 / (1.0 - p);
        let mask: Vec<f32> = u.iter().map(|&u| if u < p { 0.0 } else { keep }).collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
    }
}

impl Posterior for McDropout {
    fn with_posterior_sample<R>(
        &mut self,
        k: usize,
        f: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R> {
        self.0.with_sample(k, f)
    }

    fn with_point_estimate<R>(&mut self, f: impl FnOnce() -> candle_core::Result<R>) -> Result<R> {
        self.0.with_point_estimate(f)
    }
}

/// candle's unseeded dropout on the adapter's input when training with `p > 0`, and `x`
/// itself otherwise: candle's `Dropout` draws and multiplies a mask even at `p = 0`, two
/// full-size passes per layer for nothing (BLoB's reference runs at `p = 0`).
pub(crate) fn unseeded_dropout(x: &Tensor, p: f32, train: bool) -> candle_core::Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(x, p)
    } else {
        Ok(x.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn no_dropout_returns_the_input_itself() {
        let x = Tensor::ones((4, 8), DType::F32, &Device::Cpu).unwrap();
        for (p, train) in [(0.0, true), (0.5, false)] {
            assert_eq!(unseeded_dropout(&x, p, train).unwrap().id(), x.id());
        }
        let dropped = unseeded_dropout(&x, 0.5, true).unwrap();
        assert_ne!(dropped.id(), x.id());
        assert!(McDropout::new(0).apply(&x, 0.0, true).unwrap().id() == x.id());
    }

    #[test]
    fn masks_drop_p_and_rescale_the_rest() {
        let x = Tensor::ones(100_000, DType::F32, &Device::Cpu).unwrap();
        let mc = McDropout::new(3);
        let y: Vec<f32> = mc.apply(&x, 0.25, true).unwrap().to_vec1().unwrap();
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        // Binomial standard error 0.0014.
        assert!((dropped - 0.25).abs() < 0.007, "{dropped}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        // Evaluation outside a posterior sample keeps x; a second training mask differs.
        let eval: Vec<f32> = mc.apply(&x, 0.25, false).unwrap().to_vec1().unwrap();
        assert!(eval.iter().all(|&v| v == 1.0));
        let again: Vec<f32> = mc.apply(&x, 0.25, true).unwrap().to_vec1().unwrap();
        assert_ne!(again, y);
    }
}
