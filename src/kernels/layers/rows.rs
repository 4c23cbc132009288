//! Moving a padded batch's real tokens in and out of its padded layout: gathering rows
//! and scattering them back among zero rows, each the other's backward pass.
//!
//! candle's `index_select` and `zeros(..).index_add(..)` do this on one thread, and the
//! latter zeroes and then copies the whole padded output first: a forward pass does it
//! four times per transformer layer.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::{cpu_f32, par_output, rows_per_task, slice};
use crate::{Error, Result};

/// Strictly ascending row positions in a layout of `positions` rows: the real tokens of a
/// padded batch.
#[derive(Clone, Debug)]
pub(crate) struct RowIndex {
    rows: Arc<[u32]>,
    /// The same positions as a tensor, for candle's ops where the kernels do not run.
    tensor: Tensor,
    positions: usize,
}

impl RowIndex {
    /// Errors unless `rows` ascend strictly and stay below `positions`; the index tensor
    /// for candle's ops goes on `device`.
    pub(crate) fn new(rows: Vec<u32>, positions: usize, device: &Device) -> Result<Self> {
        let ascending = rows.windows(2).all(|w| w[0] < w[1]);
        if !ascending || rows.last().is_some_and(|&r| r as usize >= positions) {
            return Err(Error::InvalidInput(format!(
                "row positions must ascend strictly below {positions}"
            )));
        }
        let tensor = Tensor::new(rows.as_slice(), device)?;
        Ok(Self {
            rows: rows.into(),
            tensor,
            positions,
        })
    }

    /// The positions.
    pub(crate) fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// The rows of `x` `(positions, width)` at the index: `(rows, width)`.
    pub(crate) fn gather(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !cpu_f32(&[x]) {
            return x.index_select(&self.tensor, 0);
        }
        x.contiguous()?.apply_op1(Gather(self.clone()))
    }

    /// `x` `(rows, width)` put at the index's positions of `(positions, width)`, zero
    /// elsewhere.
    pub(crate) fn scatter(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !cpu_f32(&[x]) {
            let zeros = Tensor::zeros((self.positions, x.dim(1)?), x.dtype(), x.device())?;
            return zeros.index_add(&self.tensor, x, 0);
        }
        x.contiguous()?.apply_op1(Scatter(self.clone()))
    }
}

/// The width of `l` `(n, width)`, checking that it has `expected` rows.
fn width(l: &Layout, expected: usize, op: &str) -> candle_core::Result<usize> {
    match l.dims() {
        [n, w] if *n == expected => Ok(*w),
        dims => candle_core::bail!("{op}: input of shape {dims:?}, expected ({expected}, width)"),
    }
}

struct Gather(RowIndex);

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "gather-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, rows) = (slice(s, l)?, &self.0.rows);
        let w = width(l, self.0.positions, self.name())?;
        let y = par_output(rows.len() * w, rows_per_task(w) * w, |start, y| {
            let first = start / w.max(1);
            for (row, &at) in y.chunks_exact_mut(w).zip(&rows[first..]) {
                let at = at as usize * w;
                row.copy_from_slice(&x[at..at + w]);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((rows.len(), w))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.scatter(grad)?))
    }
}

struct Scatter(RowIndex);

impl CustomOp1 for Scatter {
    fn name(&self) -> &'static str {
        "scatter-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, rows) = (slice(s, l)?, &self.0.rows);
        let w = width(l, rows.len(), self.name())?;
        let positions = self.0.positions;
        let y = par_output(positions * w, rows_per_task(w) * w, |start, y| {
            // The index ascends: the rows that land in this chunk are one run of it.
            let (lo, hi) = (start / w.max(1), (start + y.len()) / w.max(1));
            let from = rows.partition_point(|&r| (r as usize) < lo);
            let to = rows.partition_point(|&r| (r as usize) < hi);
            for (k, &at) in rows[from..to].iter().enumerate() {
                let dst = (at as usize - lo) * w;
                let src = (from + k) * w;
                y[dst..dst + w].copy_from_slice(&x[src..src + w]);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((positions, w))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.gather(grad)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::super::test_util::{max_diff, weighted_grad};
    use super::*;

    /// Every third row of 3000 (spanning several rayon tasks), as a padded batch's real
    /// tokens are.
    fn index() -> RowIndex {
        let rows: Vec<u32> = (0..3000).filter(|r| r % 3 != 1).collect();
        RowIndex::new(rows, 3000, &Device::Cpu).unwrap()
    }

    /// Forward and backward against candle's `index_select` and `index_add`.
    #[test]
    fn gather_and_scatter_match_candles_index_ops() {
        let idx = index();
        let dev = &Device::Cpu;
        let x = Var::randn(0f32, 1., (3000, 7), dev).unwrap();
        let (ours, theirs) = (
            idx.gather(&x).unwrap(),
            x.index_select(&idx.tensor, 0).unwrap(),
        );
        assert_eq!(max_diff(&ours, &theirs), 0.0);
        let weights = Tensor::randn(0f32, 1., ours.dims(), dev).unwrap();
        let g = |y: &Tensor| weighted_grad(y, &weights, &x);
        assert_eq!(max_diff(&g(&ours), &g(&theirs)), 0.0);

        let t = Var::randn(0f32, 1., (idx.rows.len(), 7), dev).unwrap();
        let ours = idx.scatter(&t).unwrap();
        let zeros = Tensor::zeros((3000, 7), candle_core::DType::F32, dev).unwrap();
        let theirs = zeros.index_add(&idx.tensor, &t, 0).unwrap();
        assert_eq!(max_diff(&ours, &theirs), 0.0);
        let weights = Tensor::randn(0f32, 1., (3000, 7), dev).unwrap();
        let g = |y: &Tensor| weighted_grad(y, &weights, &t);
        assert_eq!(max_diff(&g(&ours), &g(&theirs)), 0.0);
    }

    #[test]
    fn bad_indices_and_shapes_are_errors() {
        let dev = &Device::Cpu;
        assert!(RowIndex::new(vec![2, 1], 3, dev).is_err());
        assert!(RowIndex::new(vec![1, 1], 3, dev).is_err());
        assert!(RowIndex::new(vec![0, 3], 3, dev).is_err());
        let x = Tensor::zeros((10, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(index().gather(&x).is_err());
        assert!(index().scatter(&x).is_err());
    }
}
