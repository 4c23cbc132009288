//! Rotary position embeddings in transformers' Llama layout (each head's first half paired
//! with its second half), forward and backward in one pass each: the backward of a
//! rotation is the rotation by the opposite angle.
//!
//! Composed, that is two narrows, a negation, a concatenation, two products and a sum
//! forward, and as many backward, over each query and key tensor.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};

use super::{cpu_f32, par_output, slice, TASK};

/// `x * cos + rotate_half(x) * sin` with `rotate_half([a, b]) = [-b, a]`, for `x` of shape
/// `(batch, heads, len, head_dim)` and tables `cos`, `sin` of shape `(len, head_dim)`, one
/// row per position (each frequency repeated for the two halves), or `(batch, len,
/// head_dim)`, a row per sequence and position, for sequences whose positions differ (a
/// question's choices packed after it). The tables get no gradient.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (b, _, len, d) = x.dims4()?;
    let per_sequence = cos.rank() == 3;
    let tables_fit = [&[len, d][..], &[b, len, d][..]].contains(&cos.dims())
        && sin.dims() == cos.dims()
        && d % 2 == 0;
    if !cpu_f32(&[x, cos, sin]) || !tables_fit || cos.track_op() || sin.track_op() {
        let (cos, sin) = match per_sequence {
            true => (cos.unsqueeze(1)?, sin.unsqueeze(1)?),
            false => (cos.clone(), sin.clone()),
        };
        let half = d / 2;
        let (first, second) = (
            x.narrow(D::Minus1, 0, half)?,
            x.narrow(D::Minus1, half, half)?,
        );
        let rotated = Tensor::cat(&[&second.neg()?, &first], D::Minus1)?;
        return x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?;
    }
    x.contiguous()?.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        Rope { per_sequence },
    )
}

struct Rope {
    /// Whether the tables have a row per sequence and position, not per position only.
    per_sequence: bool,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (slice(xs, xl)?, slice(cs, cl)?, slice(ss, sl)?);
        let (_, heads, len, d) = xl.shape().dims4()?;
        let half = d / 2;
        // The table row of the input's row `r`, which is position `r % len` of sequence
        // `r / (heads * len)`.
        let per_sequence = self.per_sequence;
        let table_row = move |r: usize| match per_sequence {
            true => r / (heads * len) * len + r % len,
            false => r % len,
        };
        // Whole heads' rows per task, so that each row is rotated in one piece.
        let task = (TASK / d).max(1) * d;
        let y = par_output(x.len(), task, |start, y| {
            let x = &x[start..start + y.len()];
            for (r, (y, x)) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let t = table_row(start / d + r);
                let (cos, sin) = (&cos[t * d..t * d + half], &sin[t * d..t * d + half]);
                let (a, b) = x.split_at(half);
                let (ya, yb) = y.split_at_mut(half);
                for i in 0..half {
                    ya[i] = a[i] * cos[i] - b[i] * sin[i];
                    yb[i] = b[i] * cos[i] + a[i] * sin[i];
                }
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, &sin.neg()?, self)?;
        Ok((Some(gx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{max_diff, weighted_grad};
    use super::*;

    /// Output and input gradient against the composed ops, on a shape that spans several
    /// rayon tasks, with tables whose rows differ (a position mix-up shows): one row per
    /// position, and one per sequence and position.
    #[test]
    fn matches_composed_rope() {
        let dev = Device::Cpu;
        let (b, h, len, d) = (3, 5, 41, 16);
        for tables in [vec![len, d / 2], vec![b, len, d / 2]] {
            let x = Var::randn(0f32, 1., (b, h, len, d), &dev).unwrap();
            let angles = Tensor::randn(0f32, 2., tables, &dev).unwrap();
            let angles = Tensor::cat(&[&angles, &angles], D::Minus1).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let ours = rope(&x, &cos, &sin).unwrap();
            let (first, second) = (
                x.narrow(3, 0, d / 2).unwrap(),
                x.narrow(3, d / 2, d / 2).unwrap(),
            );
            let rotated = Tensor::cat(&[&second.neg().unwrap(), &first], 3).unwrap();
            let (cos, sin) = match cos.rank() {
                3 => (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap()),
                _ => (cos, sin),
            };
            let theirs =
                (x.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-6, "tables {:?}", cos.dims());
            let weights = Tensor::randn(0f32, 1., (b, h, len, d), &dev).unwrap();
            let g = |y: &Tensor| weighted_grad(y, &weights, &x);
            assert!(
                max_diff(&g(&ours), &g(&theirs)) < 1e-6,
                "tables {:?}",
                cos.dims()
            );
        }
    }
}
