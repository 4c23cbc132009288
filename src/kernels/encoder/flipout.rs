//! BLoB's Flipout noise term `scale * (((x * R) E^T) * S) B^T` in one pass over the rows
//! per direction, with the random signs `R` (rows x in) and `S` (rows x rank) read from
//! packed bits.
//!
//! Composed from candle's ops (the reference path in `lora::blob`), the term is a sign
//! tensor the size of the input drawn into memory, an elementwise product, two rank-`r`
//! matmuls, two more products and an addition, and as many passes again backward: per
//! adapted layer about as much memory traffic as the frozen matmul itself. Here each row
//! is read once forward and once backward, and the signs are one bit each.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{rows_per_task, slice, with_slice};

/// Random signs packed 32 to a word: bit `i % 32` of word `i / 32` set means +1, the
/// layout of [`crate::noise::PhiloxNormal::sign_bits`].
#[derive(Clone, Debug)]
pub(crate) struct Signs(Arc<Vec<u32>>);

impl Signs {
    pub(crate) fn new(bits: Vec<u32>) -> Self {
        Self(Arc::new(bits))
    }

    /// How many signs the bits hold at most.
    fn capacity(&self) -> usize {
        32 * self.0.len()
    }

    /// `x` times sign `i`, by flipping the sign bit where the sign is -1.
    #[inline]
    fn apply(&self, i: usize, x: f32) -> f32 {
        let plus = (self.0[i / 32] >> (i % 32)) & 1;
        f32::from_bits(x.to_bits() ^ ((plus ^ 1) << 31))
    }

    /// The signs as ±1 floats, for the reference path.
    pub(crate) fn to_f32(&self, n: usize) -> Vec<f32> {
        (0..n).map(|i| self.apply(i, 1.0)).collect()
    }
}

/// The fused op: its inputs are `x` (rows x in, any leading dims), `E` (rank x in) and
/// `B` (out x rank), all contiguous f32 CPU tensors.
#[derive(Clone, Debug)]
pub(crate) struct Flipout {
    r: Signs,
    s: Signs,
    scale: f32,
}

/// `scale * (((x * R) E^T) * S) B^T`, over the last dim of `x`. The caller checks that
/// every tensor is f32 on the CPU ([`super::cpu_f32`]).
pub(crate) fn flipout(
    x: &Tensor,
    e: &Tensor,
    b: &Tensor,
    (r, s): (Signs, Signs),
    scale: f64,
) -> candle_core::Result<Tensor> {
    let op = Flipout {
        r,
        s,
        scale: scale as f32,
    };
    x.contiguous()?
        .apply_op3(&e.contiguous()?, &b.contiguous()?, op)
}

/// The sizes of one application, checked against the signs.
struct Dims {
    rows: usize,
    input: usize,
    rank: usize,
    out: usize,
}

impl Flipout {
    fn dims(&self, x: &[usize], e: &[usize], b: &[usize]) -> candle_core::Result<Dims> {
        let (&input, lead) = x
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("flipout: a scalar input".into()))?;
        let rows: usize = lead.iter().product();
        match (e, b) {
            ([rank, ein], [out, brank]) if *ein == input && brank == rank => {
                let d = Dims {
                    rows,
                    input,
                    rank: *rank,
                    out: *out,
                };
                if self.r.capacity() < rows * input || self.s.capacity() < rows * d.rank {
                    candle_core::bail!("flipout: fewer signs than {rows} rows need")
                }
                Ok(d)
            }
            _ => candle_core::bail!("flipout: input {x:?}, E {e:?} and B {b:?} do not fit"),
        }
    }

    /// Row `t`'s sign-flipped input into `xr` and its projection `((x R) E^T) S` into `v`.
    #[inline]
    fn project(&self, d: &Dims, t: usize, x: &[f32], e: &[f32], xr: &mut [f32], v: &mut [f32]) {
        let base = t * d.input;
        for (i, (o, &xi)) in xr.iter_mut().zip(x).enumerate() {
            *o = self.r.apply(base + i, xi);
        }
        for (k, vk) in v.iter_mut().enumerate() {
            let ek = &e[k * d.input..(k + 1) * d.input];
            *vk = self.s.apply(t * d.rank + k, dot(xr, ek));
        }
    }
}

/// A dot product with 16 partial sums, so that it vectorises.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += a x`.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `m` (rows x cols) transposed.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = m[i * cols + j];
        }
    }
    t
}

impl CustomOp3 for Flipout {
    fn name(&self) -> &'static str {
        "flipout"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        es: &CpuStorage,
        el: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(xl.dims(), el.dims(), bl.dims())?;
        let (x, e) = (slice(xs, xl)?, slice(es, el)?);
        let bt = transpose(slice(bs, bl)?, d.out, d.rank);
        let mut y = vec![0f32; d.rows * d.out];
        let task = rows_per_task(d.input);
        y.par_chunks_mut(task * d.out)
            .enumerate()
            .for_each(|(c, ys)| {
                let (mut xr, mut v) = (vec![0f32; d.input], vec![0f32; d.rank]);
                for (j, yt) in ys.chunks_exact_mut(d.out).enumerate() {
                    let t = c * task + j;
                    let xt = &x[t * d.input..(t + 1) * d.input];
                    self.project(&d, t, xt, e, &mut xr, &mut v);
                    for (k, &vk) in v.iter().enumerate() {
                        axpy(yt, self.scale * vk, &bt[k * d.out..(k + 1) * d.out]);
                    }
                }
            });
        let mut shape = xl.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = d.out;
        }
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    /// With `g` the output's gradient and `v` the row's projection:
    /// `dv = S (scale B^T g)`, `dx = R (E^T dv)`, `dE = sum_t dv (x R)^T` and
    /// `dB = scale sum_t g v^T`. Partial sums over fixed blocks of rows, added in order, so
    /// that the result does not depend on the thread count.
    fn bwd(
        &self,
        x: &Tensor,
        e: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = self.dims(x.dims(), e.dims(), b.dims())?;
        let task = rows_per_task(d.input);
        let grad = grad.contiguous()?;
        let bt = with_slice(b, |b| Ok(transpose(b, d.out, d.rank)))?;
        let mut gx = vec![0f32; d.rows * d.input];
        let partials: Vec<(Vec<f32>, Vec<f32>)> = with_slice(x, |x| {
            with_slice(e, |e| {
                with_slice(&grad, |g| {
                    Ok(gx
                        .par_chunks_mut(task * d.input)
                        .enumerate()
                        .map(|(c, gxs)| self.backward_rows(&d, c * task, (x, e, g, &bt), gxs))
                        .collect())
                })
            })
        })?;
        let (mut ge, mut gbt) = (vec![0f32; d.rank * d.input], vec![0f32; d.rank * d.out]);
        for (pe, pb) in partials {
            axpy(&mut ge, 1.0, &pe);
            axpy(&mut gbt, 1.0, &pb);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(gx, x.shape(), dev)?),
            Some(Tensor::from_vec(ge, e.shape(), dev)?),
            Some(Tensor::from_vec(
                transpose(&gbt, d.rank, d.out),
                b.shape(),
                dev,
            )?),
        ))
    }
}

impl Flipout {
    /// The input's gradient for the rows from `first` (into `gx`), and these rows' sums
    /// for `E`'s and `B^T`'s gradients.
    fn backward_rows(
        &self,
        d: &Dims,
        first: usize,
        (x, e, g, bt): (&[f32], &[f32], &[f32], &[f32]),
        gx: &mut [f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let (mut ge, mut gbt) = (vec![0f32; d.rank * d.input], vec![0f32; d.rank * d.out]);
        let (mut xr, mut v) = (vec![0f32; d.input], vec![0f32; d.rank]);
        let mut gxr = vec![0f32; d.input];
        for (j, gxt) in gx.chunks_exact_mut(d.input).enumerate() {
            let t = first + j;
            let xt = &x[t * d.input..(t + 1) * d.input];
            let gt = &g[t * d.out..(t + 1) * d.out];
            self.project(d, t, xt, e, &mut xr, &mut v);
            gxr.fill(0.0);
            for k in 0..d.rank {
                let btk = &bt[k * d.out..(k + 1) * d.out];
                let dv = self.s.apply(t * d.rank + k, self.scale * dot(gt, btk));
                axpy(&mut gxr, dv, &e[k * d.input..(k + 1) * d.input]);
                axpy(&mut ge[k * d.input..(k + 1) * d.input], dv, &xr);
                axpy(&mut gbt[k * d.out..(k + 1) * d.out], self.scale * v[k], gt);
            }
            for (i, (o, &gi)) in gxt.iter_mut().zip(&gxr).enumerate() {
                *o = self.r.apply(t * d.input + i, gi);
            }
        }
        (ge, gbt)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::max_diff;
    use super::*;

    fn signs(n: usize, seed: u64) -> Signs {
        Signs::new(crate::noise::PhiloxNormal::new(seed).sign_bits(n))
    }

    /// The composed ops of the reference path.
    fn composed(x: &Tensor, e: &Tensor, b: &Tensor, (r, s): (&Signs, &Signs)) -> Tensor {
        let dims = x.dims();
        let (rank, input) = e.dims2().unwrap();
        let rows = x.elem_count() / input;
        let rt = Tensor::from_vec(r.to_f32(rows * input), dims, x.device()).unwrap();
        let mut sd = dims.to_vec();
        *sd.last_mut().unwrap() = rank;
        let st = Tensor::from_vec(s.to_f32(rows * rank), sd, x.device()).unwrap();
        let u = ((x * rt).unwrap().broadcast_matmul(&e.t().unwrap()).unwrap() * st).unwrap();
        (u.broadcast_matmul(&b.t().unwrap()).unwrap() * 1.5).unwrap()
    }

    /// Output and the gradients of x, E and B against the composed ops, on rows that span
    /// several tasks and an input width that leaves a remainder in the dot products.
    #[test]
    fn matches_the_composed_ops() {
        let dev = Device::Cpu;
        let (input, rank, out) = (300, 3, 7);
        let x = Var::randn(0f32, 1., (2, 80, input), &dev).unwrap();
        let e = Var::randn(0f32, 0.1, (rank, input), &dev).unwrap();
        let b = Var::randn(0f32, 1., (out, rank), &dev).unwrap();
        assert!(160 > rows_per_task(input));
        let (r, s) = (signs(160 * input, 1), signs(160 * rank, 2));
        let ours = flipout(&x, &e, &b, (r.clone(), s.clone()), 1.5).unwrap();
        let theirs = composed(&x, &e, &b, (&r, &s));
        assert_eq!(ours.dims(), &[2, 80, out]);
        assert!(max_diff(&ours, &theirs) < 1e-4);
        let weights = Tensor::randn(0f32, 1., (2, 80, out), &dev).unwrap();
        let grads = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (go, gt) = (grads(&ours), grads(&theirs));
        for v in [&x, &e, &b] {
            let (a, b) = (go.get(v).unwrap(), gt.get(v).unwrap());
            assert!(max_diff(a, b) < 1e-3, "{:?}: {}", v.dims(), max_diff(a, b));
        }
    }

    #[test]
    fn too_few_signs_or_misfit_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::ones((4, 6), candle_core::DType::F32, &dev).unwrap();
        let e = Tensor::ones((2, 6), candle_core::DType::F32, &dev).unwrap();
        let b = Tensor::ones((3, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(flipout(&x, &e, &b, (signs(24, 1), signs(8, 2)), 1.0).is_ok());
        assert!(flipout(&x, &e, &b, (signs(24, 1), signs(0, 2)), 1.0).is_err());
        assert!(flipout(&x, &e.t().unwrap(), &b, (signs(24, 1), signs(8, 2)), 1.0).is_err());
    }
}
