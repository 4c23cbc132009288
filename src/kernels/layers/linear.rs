//! A linear layer with frozen weights whose backward pass computes only the input's
//! gradient.
//!
//! candle's matmul backward computes the gradient of both operands. For a frozen `Linear`
//! inside a trained model that is a weight-gradient matmul per layer (for a batch of
//! sequences a batched one, then summed over the batch) that is thrown away: a third of a
//! LoRA step's matmul work.
//!
//! The weight may be stored in bf16 (a base model kept at half its f32 memory): the kernel
//! widens it to f32 for the matmul, one layer at a time, and computes in f32.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, par_output, rows_per_task, slice, with_slice};

/// `y = x W^T + b` with `W` (out x in, f32 or bf16) and `b` frozen.
#[derive(Clone, Debug)]
pub(crate) struct FrozenLinear {
    linear: candle_nn::Linear,
    fused: bool,
}

impl FrozenLinear {
    /// The fused kernel runs when the weights are untracked contiguous CPU tensors, the
    /// weight f32 or bf16 and the bias f32; otherwise candle-nn's `Linear` does the work,
    /// gradients of the weights included.
    pub(crate) fn new(linear: candle_nn::Linear) -> Self {
        let w = linear.weight();
        let params: Vec<&Tensor> = std::iter::once(w).chain(linear.bias()).collect();
        let fused = w.device().is_cpu()
            && matches!(w.dtype(), DType::F32 | DType::BF16)
            && cpu_f32(&linear.bias().into_iter().collect::<Vec<_>>())
            && params.iter().all(|t| !t.track_op() && t.is_contiguous())
            && w.rank() == 2
            && linear.bias().is_none_or(|b| b.dims() == [w.dims()[0]]);
        Self { linear, fused }
    }

    /// The wrapped layer.
    pub(crate) fn linear(&self) -> &candle_nn::Linear {
        &self.linear
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.fused && cpu_f32(&[x]) {
            return x.contiguous()?.apply_op1(self.clone());
        }
        if self.linear.weight().dtype() == x.dtype() {
            return self.linear.forward(x);
        }
        // A bf16 weight off the fused path (on a GPU): widened for this call.
        let w = self.linear.weight().to_dtype(x.dtype())?;
        candle_nn::Linear::new(w, self.linear.bias().cloned()).forward(x)
    }

    /// The weight as f32 (a bf16 one widened: a transient copy).
    fn weight_f32(&self) -> candle_core::Result<Tensor> {
        self.linear.weight().to_dtype(DType::F32)
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (out_dim, in_dim) = self.linear.weight().dims2()?;
        let mut dims = l.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == in_dim => *last = out_dim,
            _ => candle_core::bail!(
                "frozen-linear: input of shape {:?} for a {out_dim}x{in_dim} weight",
                l.dims()
            ),
        }
        let rows = x.len() / in_dim;
        // The bias rows go in first and the product is added to them.
        let task = rows_per_task(out_dim) * out_dim;
        let mut y = match self.linear.bias() {
            Some(b) => with_slice(b, |b| {
                Ok(par_output(rows * out_dim, task, |_, y| {
                    y.chunks_exact_mut(out_dim)
                        .for_each(|row| row.copy_from_slice(b));
                }))
            })?,
            None => par_output(rows * out_dim, task, |_, _| {}),
        };
        with_f32_weight(self.linear.weight(), |w| {
            let threads = rayon::current_num_threads();
            // SAFETY: x is rows x in (row stride in), W^T is W read with swapped strides,
            // y is rows x out (row stride out); all three hold exactly those elements.
            unsafe {
                gemm::gemm(
                    rows,
                    out_dim,
                    in_dim,
                    y.as_mut_ptr(),
                    1,
                    out_dim as isize,
                    self.linear.bias().is_some(),
                    x.as_ptr(),
                    1,
                    in_dim as isize,
                    w.as_ptr(),
                    in_dim as isize,
                    1,
                    1f32,
                    1f32,
                    false,
                    false,
                    false,
                    if threads > 1 {
                        gemm::Parallelism::Rayon(threads)
                    } else {
                        gemm::Parallelism::None
                    },
                )
            };
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let w = self.weight_f32()?;
        let out_dim = w.dim(0)?;
        let rows = grad.elem_count() / out_dim;
        let gx = grad.reshape((rows, out_dim))?.matmul(&w)?;
        Ok(Some(gx.reshape(x.shape())?))
    }
}

/// Runs `f` on the weight's values as contiguous f32: borrowed when it is f32, widened in
/// parallel into a buffer that `f` alone keeps when it is bf16.
fn with_f32_weight<R>(
    w: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    if w.dtype() != DType::BF16 {
        return with_slice(w, f);
    }
    let (storage, layout) = w.storage_and_layout();
    let bf16 = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::BF16(v)), Some((a, b))) => &v[a..b],
        _ => candle_core::bail!("frozen-linear: a bf16 weight must be a contiguous CPU tensor"),
    };
    let mut wide = vec![0f32; bf16.len()];
    wide.par_chunks_mut(1 << 16)
        .zip(bf16.par_chunks(1 << 16))
        .for_each(|(out, inp)| out.iter_mut().zip(inp).for_each(|(o, i)| *o = i.to_f32()));
    f(&wide)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{max_diff, weighted_grad};
    use super::*;

    fn linear(bias: bool) -> candle_nn::Linear {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 7), &dev).unwrap();
        let b = bias.then(|| Tensor::randn(0f32, 1., 5, &dev).unwrap());
        candle_nn::Linear::new(w, b)
    }

    /// Output and input gradient against candle-nn's Linear on a batch of sequences; the
    /// second batch's output spans several rayon tasks.
    #[test]
    fn matches_candle_linear() {
        let cases = [
            (true, 3, 4),
            (false, 3, 4),
            (true, 2, 2000),
            (false, 2, 2000),
        ];
        for (bias, b, t) in cases {
            let reference = linear(bias);
            let fused = FrozenLinear::new(reference.clone());
            assert!(fused.fused);
            let x = Var::randn(0f32, 1., (b, t, 7), &Device::Cpu).unwrap();
            let ours = fused.forward(&x).unwrap();
            let theirs = reference.forward(&x).unwrap();
            assert_eq!(ours.dims(), &[b, t, 5]);
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let weights = Tensor::randn(0f32, 1., (b, t, 5), &Device::Cpu).unwrap();
            let g = |y: &Tensor| weighted_grad(y, &weights, &x);
            assert!(max_diff(&g(&ours), &g(&theirs)) < 1e-5);
        }
    }

    /// A bf16 weight computes what its f32 widening computes, forward and backward, on the
    /// fused path.
    #[test]
    fn a_bf16_weight_is_widened_exactly() {
        for bias in [true, false] {
            let reference = linear(bias);
            let w16 = reference.weight().to_dtype(DType::BF16).unwrap();
            let wide = candle_nn::Linear::new(
                w16.to_dtype(DType::F32).unwrap(),
                reference.bias().cloned(),
            );
            let fused = FrozenLinear::new(candle_nn::Linear::new(w16, reference.bias().cloned()));
            assert!(fused.fused);
            let x = Var::randn(0f32, 1., (3, 4, 7), &Device::Cpu).unwrap();
            let (ours, theirs) = (fused.forward(&x).unwrap(), wide.forward(&x).unwrap());
            assert_eq!(ours.dtype(), DType::F32);
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let weights = Tensor::randn(0f32, 1., (3, 4, 5), &Device::Cpu).unwrap();
            let g = |y: &Tensor| weighted_grad(y, &weights, &x);
            assert!(max_diff(&g(&ours), &g(&theirs)) < 1e-5);
        }
    }

    /// A trainable weight takes candle-nn's path, so its gradient is still computed.
    #[test]
    fn tracked_weights_keep_their_gradient() {
        let w = Var::randn(0f32, 1., (5, 7), &Device::Cpu).unwrap();
        let layer = FrozenLinear::new(candle_nn::Linear::new(w.as_tensor().clone(), None));
        assert!(!layer.fused);
        let x = Tensor::randn(0f32, 1., (2, 7), &Device::Cpu).unwrap();
        let grads = layer
            .forward(&x)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(grads.get(w.as_tensor()).is_some());
    }
}
