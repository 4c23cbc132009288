//! The erf GELU, `x Φ(x)`, forward and backward in one pass each.
//!
//! `Φ` comes from erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), the
//! approximation PyTorch's vectorised CPU erf uses: one `exp` per element, which the
//! backward pass shares with the normal density. candle's `gelu_erf` calls a full-precision
//! erf (two `exp`s) and takes nine tensor ops backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::exp::exp_nonpositive;
use super::{cpu_f32, par_output, slice, TASK};
use crate::vector_unit::widest_vector_unit;

/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// GELU with the exact (erf) Φ, as BERT uses.
pub(crate) fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if !cpu_f32(&[x]) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}

/// `Φ(x)`, the standard normal CDF, and `exp(-x^2 / 2)`. With `z = |x| / sqrt 2`,
/// `erfc(z) = t (a1 + a2 t + ... + a5 t^4) exp(-z^2)` with `t = 1 / (1 + p z)`, and
/// `Φ(x) = 1 - erfc(z) / 2` for `x >= 0`, `erfc(z) / 2` below (so no cancellation there).
/// Branch-free, so that the loops over it vectorise.
#[inline(always)]
fn cdf_and_gauss(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let gauss = exp_nonpositive(-z * z);
    let t = 1. / (1. + P * z);
    let poly = A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4])));
    let half_erfc = 0.5 * t * poly * gauss;
    let cdf = if x >= 0. { 1. - half_erfc } else { half_erfc };
    (cdf, gauss)
}

widest_vector_unit! {
    /// `x Φ(x)` of each value of `x` into `y`, with the widest vector unit.
    fn gelu_values, gelu_values_avx512, gelu_values_avx2 => gelu_values_baseline(
        x: &[f32],
        y: &mut [f32],
    )
}

#[inline(always)]
fn gelu_values_baseline(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = cdf_and_gauss(x).0 * x;
    }
}

widest_vector_unit! {
    /// `g (Φ(x) + x φ(x))` of each value of `x` and `g` into `y`, with the widest vector
    /// unit.
    fn gelu_grads, gelu_grads_avx512, gelu_grads_avx2 => gelu_grads_baseline(
        x: &[f32],
        g: &[f32],
        y: &mut [f32],
    )
}

#[inline(always)]
fn gelu_grads_baseline(x: &[f32], g: &[f32], y: &mut [f32]) {
    for ((y, &x), &g) in y.iter_mut().zip(x).zip(g) {
        let (cdf, gauss) = cdf_and_gauss(x);
        *y = g * (cdf + x * FRAC_1_SQRT_2PI * gauss);
    }
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let y = par_output(x.len(), TASK, |start, y| {
            gelu_values(&x[start..start + y.len()], y);
        });
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
        let y = par_output(x.len(), TASK, |start, y| {
            let range = start..start + y.len();
            gelu_grads(&x[range.clone()], &g[range], y);
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// [-8, 8] in steps of 4e-4: enough values to span several rayon tasks.
    fn inputs() -> Vec<f32> {
        (-20_000..=20_000).map(|i| i as f32 * 4e-4).collect()
    }

    /// `x Φ(x)` against the closed form in f64: Φ within 2.5e-7 (the approximation's
    /// 7.5e-8 plus the f32 rounding of its polynomial), plus the rounding of the product.
    #[test]
    fn forward_matches_the_closed_form() {
        let x = Tensor::new(inputs(), &Device::Cpu).unwrap();
        let ours = gelu_erf(&x).unwrap().to_vec1::<f32>().unwrap();
        for (x, y) in inputs().into_iter().zip(ours) {
            let x = f64::from(x);
            let exact = 0.5 * x * (1. + libm::erf(x / 2f64.sqrt()));
            let bound = 2.5e-7 * x.abs() + 6e-8 * exact.abs();
            assert!(
                (f64::from(y) - exact).abs() <= bound,
                "x {x}: {y} vs {exact}"
            );
        }
        // Far in the tails: 0 and x exactly.
        let tails = Tensor::new(&[-30f32, 30.], &Device::Cpu).unwrap();
        assert_eq!(
            gelu_erf(&tails).unwrap().to_vec1::<f32>().unwrap(),
            [0., 30.]
        );
    }

    /// The derivative `Φ(x) + x φ(x)` against the closed form in f64.
    #[test]
    fn gradient_matches_the_closed_form() {
        let x = Var::new(inputs(), &Device::Cpu).unwrap();
        let grads = gelu_erf(&x).unwrap().sum_all().unwrap().backward().unwrap();
        let ours = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        for (x, d) in inputs().into_iter().zip(ours) {
            let x = f64::from(x);
            let exact = 0.5 * (1. + libm::erf(x / 2f64.sqrt()))
                + x * (-0.5 * x * x).exp() / (2. * std::f64::consts::PI).sqrt();
            assert!((f64::from(d) - exact).abs() < 3e-7, "x {x}: {d} vs {exact}");
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

    /// Every vector-unit variant gives the baseline's bits, forward and backward.
    #[test]
    fn simd_variants_match_the_baseline() {
        let x = inputs();
        let g: Vec<f32> = x.iter().map(|v| (v * 3.1).sin()).collect();
        let run = |f: &dyn Fn(&mut [f32], &mut [f32])| {
            let (mut y, mut gy) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            f(&mut y, &mut gy);
            (y, gy)
        };
        let baseline = run(&|y, gy| {
            gelu_values_baseline(&x, y);
            gelu_grads_baseline(&x, &g, gy);
        });
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present.
                let avx2 = run(&|y, gy| unsafe {
                    gelu_values_avx2(&x, y);
                    gelu_grads_avx2(&x, &g, gy);
                });
                assert_eq!(avx2, baseline);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is present.
                let avx512 = run(&|y, gy| unsafe {
                    gelu_values_avx512(&x, y);
                    gelu_grads_avx512(&x, &g, gy);
                });
                assert_eq!(avx512, baseline);
            }
        }
    }
}
