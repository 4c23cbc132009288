//! The fused IVON step on contiguous f32 CPU tensors.
//!
//! Per element it reads the gradient, the current noise, the mean, `h` and the momentum,
//! and writes the new mean, `h`, momentum, the next sample's noise and the sampled weight:
//! the Welford mean of one sample (the gradient itself), the momentum, the Hessian update
//! with its correction, the clipped mean step, the next Philox/Box-Muller draw and
//! `m + noise`. Large tensors are split across rayon's threads at fixed boundaries of the
//! draw stream, so any split gives the same bits. While the generator computes one window
//! of draws, the rows of a later window are prefetched.

use std::cell::Cell;

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use super::{Draws, IvonCoeffs, HESS, MEAN, MOMENTUM, NOISE, ROWS};
use crate::noise::{normal_batch, BATCH_BLOCKS};
use crate::vector_unit::widest_vector_unit;

/// Elements per thread task; a multiple of the draws of a generator batch.
const CHUNK: usize = 1 << 15;
const BATCH: usize = 4 * BATCH_BLOCKS;
const _: () = assert!(CHUNK.is_multiple_of(BATCH));

pub(super) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("the fused IVON kernel needs contiguous f32 tensors"),
    }
}

fn f32_slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("the fused IVON kernel needs contiguous f32 tensors"),
    }
}

/// Whether a contiguous f32 slice holds only finite values, in one parallel read.
pub(super) fn all_finite(v: &[f32]) -> bool {
    // Exponent bits all set: Inf or NaN. Folded without early exit, so it vectorises.
    let finite = |c: &[f32]| {
        c.iter().fold(true, |ok, x| {
            ok & (x.to_bits() & 0x7f80_0000 != 0x7f80_0000)
        })
    };
    if v.len() > CHUNK {
        v.par_chunks(CHUNK).all(finite)
    } else {
        finite(v)
    }
}

/// One fused IVON step for one var, whose `state` rows are mean, `h`, momentum and the
/// current noise. Writes the new rows, the next noise and `var = mean + noise` in place.
pub(crate) fn ivon_step(
    var: &Var,
    state: &Tensor,
    grad: &Tensor,
    draws: Draws,
    c: &IvonCoeffs,
) -> candle_core::Result<()> {
    var.as_tensor()
        .inplace_op2(grad, &VarPass { state, draws, c })
}

/// Holds the var's storage (written) and the gradient's (read); the state's comes next.
struct VarPass<'a> {
    state: &'a Tensor,
    draws: Draws,
    c: &'a IvonCoeffs,
}

impl InplaceOp2 for VarPass<'_> {
    fn name(&self) -> &'static str {
        "ivon-fused-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let theta = f32_slice_mut(s1, l1)?;
        let grad = f32_slice(s2, l2)?;
        let n = theta.len();
        let (grad, hess_sample) = match self.c.averaged {
            false if grad.len() == n => (grad, None),
            true if grad.len() == 2 * n => {
                let (g, h) = grad.split_at(n);
                (g, Some(h))
            }
            _ => candle_core::bail!("gradient and var sizes differ"),
        };
        self.state.inplace_op1(&StatePass {
            theta: Cell::new(Some(theta)),
            grad,
            hess_sample,
            draws: self.draws,
            c: self.c,
        })
    }
}

struct StatePass<'a> {
    theta: Cell<Option<&'a mut [f32]>>,
    grad: &'a [f32],
    hess_sample: Option<&'a [f32]>,
    draws: Draws,
    c: &'a IvonCoeffs,
}

impl InplaceOp1 for StatePass<'_> {
    fn name(&self) -> &'static str {
        "ivon-fused-step"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some(theta) = self.theta.take() else {
            candle_core::bail!("the fused IVON pass ran twice")
        };
        let state = f32_slice_mut(s, l)?;
        let n = theta.len();
        if state.len() != ROWS * n {
            candle_core::bail!("IVON state of {} values for a var of {n}", state.len());
        }
        // The rows in the contract's order (MEAN, HESS, MOMENTUM, NOISE are 0 to 3).
        const _: () = assert!(MEAN == 0 && HESS == 1 && MOMENTUM == 2 && NOISE == 3 && ROWS == 4);
        let (mean, rest) = state.split_at_mut(n);
        let (hess, rest) = rest.split_at_mut(n);
        let (momentum, noise) = rest.split_at_mut(n);
        let slices = Slices {
            theta,
            grad: self.grad,
            hess_sample: self.hess_sample,
            mean,
            hess,
            momentum,
            noise,
        };
        // Split at multiples of CHUNK in the draw stream (offset + element index).
        let offset = self.draws.offset;
        let first = (CHUNK - offset % CHUNK).min(n);
        let mut parts = Vec::with_capacity(n / CHUNK + 2);
        let (mut rest, mut start) = (slices, 0);
        while start < n {
            let len = if start == 0 {
                first
            } else {
                CHUNK.min(n - start)
            };
            let (head, tail) = rest.split_at(len);
            parts.push((start, head));
            rest = tail;
            start += len;
        }
        let (draws, c) = (self.draws, self.c);
        let run = |(start, part): (usize, Slices<'_>)| dispatch(part, offset + start, draws, c);
        if parts.len() > 1 {
            parts.into_par_iter().for_each(run);
        } else {
            parts.into_iter().for_each(run);
        }
        Ok(())
    }
}

/// The streams of one chunk: six, and the ranks' mean Hessian statistic when averaged.
struct Slices<'a> {
    theta: &'a mut [f32],
    grad: &'a [f32],
    hess_sample: Option<&'a [f32]>,
    mean: &'a mut [f32],
    hess: &'a mut [f32],
    momentum: &'a mut [f32],
    noise: &'a mut [f32],
}

impl<'a> Slices<'a> {
    fn split_at(self, k: usize) -> (Slices<'a>, Slices<'a>) {
        let (t0, t1) = self.theta.split_at_mut(k);
        let (g0, g1) = self.grad.split_at(k);
        let (s0, s1) = match self.hess_sample {
            Some(h) => {
                let (a, b) = h.split_at(k);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let (m0, m1) = self.mean.split_at_mut(k);
        let (h0, h1) = self.hess.split_at_mut(k);
        let (p0, p1) = self.momentum.split_at_mut(k);
        let (n0, n1) = self.noise.split_at_mut(k);
        (
            Slices {
                theta: t0,
                grad: g0,
                hess_sample: s0,
                mean: m0,
                hess: h0,
                momentum: p0,
                noise: n0,
            },
            Slices {
                theta: t1,
                grad: g1,
                hess_sample: s1,
                mean: m1,
                hess: h1,
                momentum: p1,
                noise: n1,
            },
        )
    }
}

widest_vector_unit! {
    /// Runs the chunk with the widest vector unit the processor has (AVX-512, AVX2 or the
    /// x86-64 baseline), with the same bits on each.
    fn dispatch, chunk_avx512, chunk_avx2 => chunk(
        s: Slices<'_>,
        idx: usize,
        draws: Draws,
        c: &IvonCoeffs,
    )
}

/// One chunk whose first element is draw `idx` of the group's request.
#[inline(always)]
fn chunk(s: Slices<'_>, idx: usize, draws: Draws, c: &IvonCoeffs) {
    let n = s.theta.len();
    let mut z = [0f32; BATCH];
    let mut done = 0;
    while done < n {
        let at = idx + done;
        let window = at / BATCH;
        prefetch(&s, done + PREFETCH_AHEAD * BATCH);
        normal_batch(
            draws.seed,
            draws.block + (window * BATCH_BLOCKS) as u64,
            &mut z,
        );
        let lane = at - window * BATCH;
        let len = (BATCH - lane).min(n - done);
        let r = done..done + len;
        let rows = Rows {
            theta: &mut s.theta[r.clone()],
            grad: &s.grad[r.clone()],
            mean: &mut s.mean[r.clone()],
            hess: &mut s.hess[r.clone()],
            momentum: &mut s.momentum[r.clone()],
            noise: &mut s.noise[r.clone()],
            z: &z[lane..lane + len],
        };
        match s.hess_sample {
            None => elements(rows, c),
            Some(h) => averaged_elements(rows, &h[r], c),
        }
        done += len;
    }
}

/// How many windows ahead of the update the rows are prefetched: while the generator
/// computes a window's draws, the loads of a later window's rows are in flight.
const PREFETCH_AHEAD: usize = 2;

/// Asks for the cache lines of the window of rows that starts at element `from` (none past
/// the chunk's end). Prefetches change no value, only when the loads arrive.
#[inline(always)]
fn prefetch(s: &Slices<'_>, from: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let n = s.theta.len();
        let rows = [
            s.grad.as_ptr(),
            s.mean.as_ptr(),
            s.hess.as_ptr(),
            s.momentum.as_ptr(),
            s.noise.as_ptr(),
            s.theta.as_ptr(),
        ];
        // One 64-byte line holds 16 values.
        for i in (from..(from + BATCH).min(n)).step_by(16) {
            for row in rows {
                // SAFETY: `i < n`, within every row; a prefetch reads nothing it returns.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.add(i).cast()) };
            }
            if let Some(h) = s.hess_sample {
                // SAFETY: as above; the averaged statistic has a row of n values too.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(h.as_ptr().add(i).cast()) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, from);
}

/// One window of a chunk: the state rows and the window's draws.
struct Rows<'a> {
    theta: &'a mut [f32],
    grad: &'a [f32],
    mean: &'a mut [f32],
    hess: &'a mut [f32],
    momentum: &'a mut [f32],
    noise: &'a mut [f32],
    z: &'a [f32],
}

/// Each element's update with its own Hessian statistic: the current noise times the
/// gradient (price) or the squared gradient (gradsq).
#[inline(always)]
fn elements(r: Rows<'_>, c: &IvonCoeffs) {
    let it = r
        .theta
        .iter_mut()
        .zip(r.grad)
        .zip(r.mean.iter_mut())
        .zip(r.hess.iter_mut())
        .zip(r.momentum.iter_mut())
        .zip(r.noise.iter_mut())
        .zip(r.z);
    for ((((((theta, &g), m), h), mom), n), &z) in it {
        let hess_sample = if c.price { *n * g } else { g * g };
        element(theta, g, hess_sample, m, h, mom, n, z, c);
    }
}

/// Each element's update with the ranks' mean Hessian statistic. A loop of its own
/// rather than a choice per element in [`elements`], so that both loops vectorise.
#[inline(always)]
fn averaged_elements(r: Rows<'_>, hess_sample: &[f32], c: &IvonCoeffs) {
    let it = r
        .theta
        .iter_mut()
        .zip(r.grad)
        .zip(hess_sample)
        .zip(r.mean.iter_mut())
        .zip(r.hess.iter_mut())
        .zip(r.momentum.iter_mut())
        .zip(r.noise.iter_mut())
        .zip(r.z);
    for (((((((theta, &g), &hs), m), h), mom), n), &z) in it {
        element(theta, g, hs, m, h, mom, n, z, c);
    }
}

/// The update of one element, mirroring `optim::ivon::math` operation for operation.
/// `x * k + 0.0` is candle's scalar multiply (`affine(k, 0)`), kept so that even the sign
/// of a zero agrees.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn element(
    theta: &mut f32,
    g: f32,
    hess_sample: f32,
    m: &mut f32,
    h: &mut f32,
    mom: &mut f32,
    n: &mut f32,
    z: f32,
    c: &IvonCoeffs,
) {
    let new_mom = (*mom * c.beta1 + 0.0) + (g * c.one_minus_beta1 + 0.0);
    let h_wd = *h + c.weight_decay;
    let f = if c.price {
        (hess_sample * h_wd) * c.ess + 0.0
    } else {
        hess_sample * c.ess + 0.0
    };
    let d = *h - f;
    let correction = ((d * d) * c.correction + 0.0) / h_wd;
    let new_h = ((*h * c.beta2 + 0.0) + (f * c.one_minus_beta2 + 0.0)) + correction;
    let g_bc = match c.debias {
        Some(bc) => new_mom / bc,
        None => new_mom,
    };
    let mut step = (g_bc + (*m * c.weight_decay + 0.0)) / (new_h + c.weight_decay);
    if c.clip_radius.is_finite() {
        // candle's clamp: maximum(-r), then minimum(r).
        step = if step < -c.clip_radius {
            -c.clip_radius
        } else {
            step
        };
        step = if step > c.clip_radius {
            c.clip_radius
        } else {
            step
        };
    }
    let new_m = *m - (step * c.lr + 0.0);
    let new_n = z / ((new_h + c.weight_decay) * c.ess + 0.0).sqrt();
    *mom = new_mom;
    *h = new_h;
    *m = new_m;
    *n = new_n;
    *theta = new_m + new_n;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one code path over fresh copies of the same inputs.
    fn run(path: fn(Slices<'_>, usize, Draws, &IvonCoeffs), price: bool) -> Vec<Vec<u32>> {
        let n = 1000;
        let wave = |k: f32| {
            (0..n)
                .map(move |i| (i as f32 * k).sin() * 0.5)
                .collect::<Vec<f32>>()
        };
        let grad = wave(0.37);
        let mut theta = vec![0f32; n];
        let mut mean = wave(0.11);
        let mut hess: Vec<f32> = wave(0.23).iter().map(|v| v.abs() + 0.1).collect();
        let mut momentum = wave(0.05);
        let mut noise: Vec<f32> = wave(0.71).iter().map(|v| v * 0.01).collect();
        let c = IvonCoeffs::for_tests(price, Some(0.19), 0.5);
        let draws = Draws {
            seed: 9,
            block: 3,
            offset: 13,
        };
        let s = Slices {
            theta: &mut theta,
            grad: &grad,
            hess_sample: None,
            mean: &mut mean,
            hess: &mut hess,
            momentum: &mut momentum,
            noise: &mut noise,
        };
        path(s, draws.offset, draws, &c);
        [theta, mean, hess, momentum, noise]
            .iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect()
    }

    /// Every vector-unit variant gives the baseline's bits, whichever the test machine's
    /// processor would pick.
    #[test]
    fn simd_variants_match_the_baseline() {
        for price in [true, false] {
            let baseline = run(chunk, price);
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: AVX2 is present.
                    let avx2 = run(|s, i, d, c| unsafe { chunk_avx2(s, i, d, c) }, price);
                    assert_eq!(avx2, baseline);
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: AVX-512F is present.
                    let avx512 = run(|s, i, d, c| unsafe { chunk_avx512(s, i, d, c) }, price);
                    assert_eq!(avx512, baseline);
                }
            }
            assert_eq!(run(dispatch, price), baseline);
        }
    }
}
