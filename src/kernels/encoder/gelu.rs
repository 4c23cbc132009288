//! The erf GELU, `x Φ(x)`, forward and backward in one pass each.
//!
//! The forward computes what candle's `gelu_erf` computes, bit for bit; candle's backward
//! takes nine tensor ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, slice, TASK};

/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// GELU with the exact (erf) Φ, as BERT uses.
pub(crate) fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if !cpu_f32(&[x]) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}

/// `Φ(x)`, the standard normal CDF.
fn cdf(x: f32) -> f32 {
    (libm::erff(x * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5
}

/// Applies `f` to each element of `x` (and `g`), in parallel chunks.
fn map(x: &[f32], g: Option<&[f32]>, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(TASK).enumerate().for_each(|(c, out)| {
        let start = c * TASK;
        for (i, o) in out.iter_mut().enumerate() {
            *o = f(x[start + i], g.map_or(0., |g| g[start + i]));
        }
    });
    y
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = map(slice(s, l)?, None, |x, _| cdf(x) * x);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// `grad * (Φ(x) + x φ(x))`.
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(xs, xl)?, slice(gs, gl)?);
        if x.len() != g.len() {
            candle_core::bail!("gelu-erf-grad: {} inputs, {} gradients", x.len(), g.len());
        }
        let y = map(x, Some(g), |x, g| {
            g * (cdf(x) + x * FRAC_1_SQRT_2PI * (-0.5 * x * x).exp())
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn inputs() -> Vec<f32> {
        (-400..=400).map(|i| i as f32 * 0.02).collect()
    }

    #[test]
    fn forward_is_candles_gelu_erf_bit_for_bit() {
        let x = Tensor::new(inputs(), &Device::Cpu).unwrap();
        let ours = gelu_erf(&x).unwrap().to_vec1::<f32>().unwrap();
        let theirs = x.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(ours, theirs);
    }

    /// The derivative against the closed form `Φ(x) + x φ(x)` in f64.
    #[test]
    fn gradient_matches_the_closed_form() {
        let x = Var::new(inputs(), &Device::Cpu).unwrap();
        let grads = gelu_erf(&x).unwrap().sum_all().unwrap().backward().unwrap();
        let ours = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for (x, d) in inputs().into_iter().zip(ours) {
            let x = f64::from(x);
            let exact = 0.5 * (1. + libm::erf(x / 2f64.sqrt()))
                + x * (-0.5 * x * x).exp() / (2. * std::f64::consts::PI).sqrt();
            assert!((f64::from(d) - exact).abs() < 1e-6, "x {x}: {d} vs {exact}");
        }
    }

    /// The backward against central finite differences of the forward, in f64 from the
    /// f32 kernel on inputs where f32 rounding is small against the step.
    #[test]
    fn gradient_matches_finite_differences() {
        let h = 1e-2f32;
        let xs: Vec<f32> = (-30..=30).map(|i| i as f32 * 0.1 + 0.05).collect();
        let x = Var::new(xs.as_slice(), &Device::Cpu).unwrap();
        let grads = gelu_erf(&x).unwrap().sum_all().unwrap().backward().unwrap();
        let ours = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let f = |d: f32| {
            let t = Tensor::new(xs.iter().map(|x| x + d).collect::<Vec<_>>(), &Device::Cpu);
            gelu_erf(&t.unwrap()).unwrap().to_vec1::<f32>().unwrap()
        };
        let (up, down) = (f(h), f(-h));
        for i in 0..xs.len() {
            let fd = (f64::from(up[i]) - f64::from(down[i])) / (2. * f64::from(h));
            assert!((fd - f64::from(ours[i])).abs() < 2e-4, "x {}", xs[i]);
        }
    }
}
