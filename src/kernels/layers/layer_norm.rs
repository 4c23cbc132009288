//! Layer norm over the last dimension with frozen scale and shift, forward and backward in
//! one pass each.
//!
//! candle-nn's fused `LayerNorm` has no backward pass (the gradient silently stops there),
//! and `layer_norm_slow` takes eight tensor ops forward and about twenty backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::{cpu_f32, norm_grad, par_output, rows_per_task, slice};

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension. The fused kernel
/// treats `weight` and `bias` as frozen; where either is tracked, the composed op computes
/// their gradients too.
pub(crate) fn layer_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
) -> candle_core::Result<Tensor> {
    let h = x.dim(candle_core::D::Minus1)?;
    let frozen = !weight.track_op() && !bias.track_op();
    if !frozen || !cpu_f32(&[x, weight, bias]) || weight.dims() != [h] || bias.dims() != [h] {
        return candle_nn::ops::layer_norm_slow(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps },
    )
}

/// The mean and `1 / sqrt(var + eps)` of a row, with eight partial sums that vectorise.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let sum8 = |f: &dyn Fn(f32) -> f32| {
        let mut acc = [0f32; 8];
        let chunks = row.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += f(v);
            }
        }
        acc.iter().sum::<f32>() + tail
    };
    let mean = sum8(&|v| v) / n;
    let var = sum8(&|v| (v - mean) * (v - mean)) / n;
    (mean, 1. / (var + eps).sqrt())
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(xs, xl)?, slice(ws, wl)?, slice(bs, bl)?);
        let h = w.len();
        let y = par_output(x.len(), rows_per_task(h) * h, |start, y| {
            let x = &x[start..start + y.len()];
            for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                let (mean, rstd) = moments(x, self.eps);
                for i in 0..h {
                    y[i] = (x[i] - mean) * rstd * w[i] + b[i];
                }
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &LayerNormGrad {
                weight: weight.clone(),
                eps: self.eps,
            },
        )?;
        Ok((Some(gx), None, None))
    }
}

/// The input's gradient: with `x^ = (x - mean) rstd` and `d = grad * weight`,
/// `rstd (d - mean(d) - x^ mean(d x^))`.
struct LayerNormGrad {
    weight: Tensor,
    eps: f32,
}

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
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
            let (mean, rstd) = moments(x, self.eps);
            let (mut d_mean, mut dx_mean) = (0f32, 0f32);
            for i in 0..h {
                let d = g[i] * w[i];
                d_mean += d;
                dx_mean += d * (x[i] - mean) * rstd;
            }
            let (d_mean, dx_mean) = (d_mean / h as f32, dx_mean / h as f32);
            for i in 0..h {
                let xhat = (x[i] - mean) * rstd;
                gx[i] = rstd * (g[i] * w[i] - d_mean - xhat * dx_mean);
            }
        };
        norm_grad("layer-norm-grad", (xs, xl), (gs, gl), &self.weight, row)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{assert_input_grad_matches_fd, max_diff, weighted_grad};
    use super::*;

    fn params(h: usize) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        let w = (Tensor::randn(0f32, 0.3, h, &dev).unwrap() + 1.).unwrap();
        (w, Tensor::randn(0f32, 0.3, h, &dev).unwrap())
    }

    /// Output and input gradient against candle-nn's composed `layer_norm_slow`, on rows
    /// with an offset (as residual streams have) and a width with a tail past the eight
    /// partial sums; the second shape spans several rayon tasks.
    #[test]
    fn matches_composed_layer_norm() {
        let (w, b) = params(19);
        for shape in [(3, 5, 19), (2, 1000, 19)] {
            let x = Var::new(
                (Tensor::randn(0f32, 2., shape, &Device::Cpu).unwrap() + 4.)
                    .unwrap()
                    .to_vec3::<f32>()
                    .unwrap(),
                &Device::Cpu,
            )
            .unwrap();
            let ours = layer_norm(&x, &w, &b, 1e-5).unwrap();
            let theirs = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-5).unwrap();
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
        let h = 6;
        let xs = [0.3f64, -1.2, 2.0, 0.7, -0.4, 1.1];
        let ws = [1.2f64, 0.8, -0.5, 1.0, 0.3, 2.0];
        let cs = [0.5f64, -1.0, 0.25, 2.0, -0.75, 1.5];
        let eps = 1e-5;
        // The loss sum_i c_i y_i in f64.
        let loss = |x: &[f64]| {
            let mean = x.iter().sum::<f64>() / h as f64;
            let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
            let rstd = 1. / (var + eps).sqrt();
            (0..h)
                .map(|i| cs[i] * (x[i] - mean) * rstd * ws[i])
                .sum::<f64>()
        };
        let op =
            |x: &Var, w: &Tensor| layer_norm(x, w, &w.zeros_like().unwrap(), eps as f32).unwrap();
        assert_input_grad_matches_fd((&xs, &ws, &cs), op, loss);
    }

    /// A trainable scale takes the composed path and gets its gradient.
    #[test]
    fn tracked_weights_keep_their_gradient() {
        let w = Var::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 4), &Device::Cpu).unwrap();
        let y = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let grads = (y.sqr().unwrap() * 0.5).unwrap().sum_all().unwrap();
        assert!(grads.backward().unwrap().get(w.as_tensor()).is_some());
    }
}
