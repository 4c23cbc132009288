//! Fused CPU kernels for the models' layers (the encoder's, and the frozen linear layers
//! every model shares), each with its backward pass.
//!
//! candle composes a layer norm, a masked softmax or an erf GELU from a chain of tensor
//! ops, each a pass over memory and an allocation, forward and backward; and its matmul
//! backward computes the gradient of a frozen weight that nobody asked for. These kernels
//! do each in one pass per direction on contiguous f32 CPU tensors. Every entry point falls
//! back to the composed ops on other devices and dtypes, and where a weight the kernel
//! treats as frozen is tracked (a var, or computed from one), so that no gradient is ever
//! silently dropped.

mod exp;
mod gelu;
mod layer_norm;
mod linear;
mod rms_norm;
mod rope;
mod rows;
mod softmax;
mod swiglu;

pub(crate) use gelu::gelu_erf;
pub(crate) use layer_norm::layer_norm;
pub(crate) use linear::FrozenLinear;
pub(crate) use rms_norm::rms_norm;
pub(crate) use rope::rope;
pub(crate) use rows::RowIndex;
pub(crate) use softmax::masked_softmax;
pub(crate) use swiglu::swiglu;

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};
use rayon::prelude::*;

/// Elements per rayon task: enough to amortise the task, few enough to share the work.
const TASK: usize = 1 << 14;

/// Whether every tensor is an f32 tensor on the CPU.
fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Rows per rayon task for rows of `width` elements.
fn rows_per_task(width: usize) -> usize {
    (TASK / width.max(1)).max(1)
}

/// A kernel's output of `len` values, written chunk by chunk in parallel: `fill(start,
/// chunk)` gets the `chunk` values from `start` (`task` values, the last chunk fewer),
/// zeroed. Zeroed on the workers, a chunk at a time while it is in cache, rather than by
/// `vec![0.0; len]`: the allocator hands back a freed block and zeroes it on one thread,
/// a whole serial pass over memory per kernel.
fn par_output(len: usize, task: usize, fill: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    let task = task.max(1);
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(task)
        .enumerate()
        .for_each(|(c, chunk)| {
            for x in chunk.iter_mut() {
                x.write(0.0);
            }
            // SAFETY: every value of the chunk was just initialised, and `MaybeUninit<f32>`
            // has `f32`'s layout.
            let chunk = unsafe { &mut *(std::ptr::from_mut(chunk) as *mut [f32]) };
            fill(c * task, chunk);
        });
    // SAFETY: the chunks cover `0..len`, and every value was initialised above.
    unsafe { v.set_len(len) };
    v
}

/// The input gradient of a normalisation over rows with a frozen `weight` of the rows'
/// width, for a norm's backward `CustomOp2` (input, incoming gradient): `row(gx, x, g, w)`
/// fills each row of the gradient from that row of the input and of the incoming
/// gradient, rows in parallel. `name` is the op's, for the length check's message.
fn norm_grad(
    name: &str,
    (xs, xl): (&CpuStorage, &Layout),
    (gs, gl): (&CpuStorage, &Layout),
    weight: &Tensor,
    row: impl Fn(&mut [f32], &[f32], &[f32], &[f32]) + Sync + Send,
) -> candle_core::Result<(CpuStorage, candle_core::Shape)> {
    let (x, g) = (slice(xs, xl)?, slice(gs, gl)?);
    if x.len() != g.len() {
        candle_core::bail!("{name}: {} inputs, {} gradients", x.len(), g.len());
    }
    let gx = with_slice(weight, |w| {
        let h = w.len();
        Ok(par_output(x.len(), rows_per_task(h) * h, |start, gx| {
            let range = start..start + gx.len();
            let (x, g) = (&x[range.clone()], &g[range]);
            let rows = gx.chunks_exact_mut(h).zip(x.chunks_exact(h));
            for ((gx, x), g) in rows.zip(g.chunks_exact(h)) {
                row(gx, x, g, w);
            }
        }))
    })?;
    Ok((CpuStorage::F32(gx), xl.shape().clone()))
}

/// The contiguous f32 data of a CPU storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("the fused encoder kernels need contiguous f32 CPU tensors"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor held by a kernel (a weight).
fn with_slice<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => candle_core::bail!("the fused encoder kernels need CPU tensors"),
    }
}

#[cfg(test)]
mod tests {
    /// Every chunk is filled from its own start, the last one short, and what a fill
    /// leaves alone is zero.
    #[test]
    fn par_output_fills_every_chunk_from_its_start() {
        let len = 3 * 64 + 5;
        let v = super::par_output(len, 64, |start, out| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = (start + i) as f32;
            }
        });
        assert_eq!(v, (0..len).map(|i| i as f32).collect::<Vec<_>>());
        assert!(super::par_output(len, 64, |_, _| {})
            .iter()
            .all(|&x| x == 0.0));
    }
}

/// What the kernels' tests share: the comparison with candle's ops.
#[cfg(test)]
mod test_util {
    use candle_core::{Tensor, Var};

    /// The largest absolute difference between two tensors.
    pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap()
    }

    /// The gradient with respect to `x` of `sum(y * weights)`: a loss that weighs every
    /// output differently, so that any error in a backward pass shows.
    pub(super) fn weighted_grad(y: &Tensor, weights: &Tensor, x: &Var) -> Tensor {
        let grads = (y * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        grads.get(x.as_tensor()).unwrap().clone()
    }

    /// The f32 gradient of `sum(c_i y_i)`, `y = op(x, w)`, with respect to `x`, against
    /// central finite differences of `loss`, the same sum computed in f64 from the op's
    /// definition: every entry within 1e-5.
    pub(super) fn assert_input_grad_matches_fd(
        (xs, ws, cs): (&[f64], &[f64], &[f64]),
        op: impl Fn(&Var, &Tensor) -> Tensor,
        loss: impl Fn(&[f64]) -> f64,
    ) {
        let to32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
        let dev = candle_core::Device::Cpu;
        let x = Var::new(to32(xs), &dev).unwrap();
        let w = Tensor::new(to32(ws), &dev).unwrap();
        let c = Tensor::new(to32(cs), &dev).unwrap();
        let ours: Vec<f32> = weighted_grad(&op(&x, &w), &c, &x).to_vec1().unwrap();
        for i in 0..xs.len() {
            let step = |d: f64| {
                let mut v = xs.to_vec();
                v[i] += d;
                loss(&v)
            };
            let fd = (step(1e-6) - step(-1e-6)) / 2e-6;
            assert!(
                (fd - f64::from(ours[i])).abs() < 1e-5,
                "{i}: {fd} vs {}",
                ours[i]
            );
        }
    }
}
