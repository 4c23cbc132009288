//! RMSNorm over the last dimension with a frozen scale, forward and backward in one pass
//! each: the decoder's normalisation.
//!
//! candle-nn's fused `rms_norm` has no backward pass, and composed it takes six tensor ops
//! forward and about fifteen backward.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, D};

use super::{cpu_f32, norm_grad, par_output, rows_per_task, slice};

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension. The fused kernel treats
/// `weight` as frozen; where it is tracked, or off the CPU or f32, the composed ops run.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let h = x.dim(D::Minus1)?;
    if weight.track_op() || !cpu_f32(&[x, weight]) || weight.dims() != [h] {
        let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + f64::from(eps))?.sqrt()?;
        return x.broadcast_div(&scale)?.broadcast_mul(weight);
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps })
}

/// `1 / sqrt(mean(x^2) + eps)` of a row, with eight partial sums that vectorise.
fn rstd(row: &[f32], eps: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    let mean = (acc.iter().sum::<f32>() + tail) / row.len() as f32;
    1. / (mean + eps).sqrt()
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(xs, xl)?, slice(ws, wl)?);
        let h = w.len();
        let y = par_output(x.len(), rows_per_task(h) * h, |start, y| {
            let x = &x[start..start + y.len()];
            for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                let r = rstd(x, self.eps);
                for i in 0..h {
                    y[i] = x[i] * r * w[i];
                }
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gx = x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &RmsNormGrad {
                weight: weight.clone(),
                eps: self.eps,
            },
        )?;
        Ok((Some(gx), None))
    }
}

/// The input's gradient: with `x^ = x rstd` and `d = grad * weight`,
/// `rstd (d - x^ mean(d x^))`.
struct RmsNormGrad {
    weight: Tensor,
    eps: f32,
}

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let row = |gx: &mut [f32], x: &[f32], g: &[f32], w: &[f32]| {
            let h = w.len();
            let r = rstd(x, self.eps);
            let dx_mean = (0..h).map(|i| g[i] * w[i] * x[i] * r).sum::<f32>() / h as f32;
            for i in 0..h {
                gx[i] = r * (g[i] * w[i] - x[i] * r * dx_mean);
            }
        };
        norm_grad("rms-norm-grad", (xs, xl), (gs, gl), &self.weight, row)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{assert_input_grad_matches_fd, max_diff, weighted_grad};
    use super::*;

    /// The composed ops, as the fallback runs them.
    fn composed(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let scale = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
            .unwrap()
            .sqrt()
            .unwrap();
        x.broadcast_div(&scale).unwrap().broadcast_mul(w).unwrap()
    }

    /// Output and input gradient against the composed ops, on a width with a tail past
    /// the eight partial sums; the second shape spans several rayon tasks.
    #[test]
    fn matches_composed_rms_norm() {
        let w = (Tensor::randn(0f32, 0.3, 19, &Device::Cpu).unwrap() + 1.).unwrap();
        for shape in [(3, 5, 19), (2, 1000, 19)] {
            let x = Var::new(
                (Tensor::randn(0f32, 2., shape, &Device::Cpu).unwrap() + 1.)
                    .unwrap()
                    .to_vec3::<f32>()
                    .unwrap(),
                &Device::Cpu,
            )
            .unwrap();
            let ours = rms_norm(&x, &w, 1e-5).unwrap();
            let theirs = composed(&x, &w, 1e-5);
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let weights = Tensor::randn(0f32, 1., shape, &Device::Cpu).unwrap();
            let g = |y: &Tensor| weighted_grad(y, &weights, &x);
            assert!(max_diff(&g(&ours), &g(&theirs)) < 1e-5);
        }
    }

    /// The input gradient against central finite differences, computed in f64 from the
    /// definition.
    #[test]
    fn gradient_matches_finite_differences() {
        let xs = [0.3f64, -1.2, 2.0, 0.7, -0.4, 1.1];
        let ws = [1.2f64, 0.8, -0.5, 1.0, 0.3, 2.0];
        let cs = [0.5f64, -1.0, 0.25, 2.0, -0.75, 1.5];
        let (h, eps) = (xs.len(), 1e-5);
        let loss = |x: &[f64]| {
            let r = 1. / (x.iter().map(|v| v * v).sum::<f64>() / h as f64 + eps).sqrt();
            (0..h).map(|i| cs[i] * x[i] * r * ws[i]).sum::<f64>()
        };
        let op = |x: &Var, w: &Tensor| rms_norm(x, w, eps as f32).unwrap();
        assert_input_grad_matches_fd((&xs, &ws, &cs), op, loss);
    }
}
