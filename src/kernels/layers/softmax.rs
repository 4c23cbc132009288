//! Attention probabilities: the softmax of scaled scores plus a mask bias (per key for an
//! encoder's padding, per query and key for a decoder's causal padding), forward and
//! backward in one pass each.
//!
//! Composed, that is a division, a broadcast add and five softmax ops forward, and about a
//! dozen ops backward, each over a `(batch, heads, tokens, tokens)` tensor.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, D};

use super::exp::exp_nonpositive;
use super::{cpu_f32, par_output, rows_per_task, slice};
use crate::vector_unit::widest_vector_unit;

/// `softmax(scores * scale + bias)` over the last dimension, for `scores`
/// `(batch, heads, queries, keys)` and a `bias` shared by the heads: `(batch, keys)` (per
/// key: 0 for a token, a large negative value for padding) or `(batch, queries, keys)`
/// (per query and key, e.g. causal and padding together). The bias gets no gradient.
pub(crate) fn masked_softmax(
    scores: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, _, q, k) = scores.dims4()?;
    let bias_rows = match bias.dims() {
        [bb, bk] if (*bb, *bk) == (b, k) => 1,
        [bb, bq, bk] if (*bb, *bq, *bk) == (b, q, k) => q,
        _ => 0,
    };
    if bias.track_op() || !cpu_f32(&[scores, bias]) || bias_rows == 0 {
        let bias = match bias.rank() {
            2 => bias.unsqueeze(1)?.unsqueeze(1)?,
            _ => bias.unsqueeze(1)?,
        };
        return candle_nn::ops::softmax(&(scores * scale)?.broadcast_add(&bias)?, D::Minus1);
    }
    scores.contiguous()?.apply_op2(
        &bias.contiguous()?,
        MaskedSoftmax {
            scale: scale as f32,
            bias_rows,
        },
    )
}

struct MaskedSoftmax {
    scale: f32,
    /// The bias's rows per sentence: 1 (per key) or the queries (per query and key).
    bias_rows: usize,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(
        &self,
        ss: &CpuStorage,
        sl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (s, bias) = (slice(ss, sl)?, slice(bs, bl)?);
        let (_, heads, queries, keys) = sl.shape().dims4()?;
        // The rows of one sentence (its heads' queries) share its bias rows.
        let rows_per_sentence = heads * queries;
        let p = par_output(s.len(), rows_per_task(keys) * keys, |start, p| {
            let rows = Rows {
                first: start / keys.max(1),
                keys,
                per_sentence: rows_per_sentence,
                bias_rows: self.bias_rows,
                scale: self.scale,
            };
            softmax_rows(&s[start..start + p.len()], bias, rows, p);
        });
        Ok((CpuStorage::F32(p), sl.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _bias: &Tensor,
        p: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let gs = p.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })?;
        Ok((Some(gs), None))
    }
}

/// Where a chunk of rows sits: its first row, the row width, the rows per sentence (which
/// share the sentence's bias), the bias's rows per sentence (1, or one per query) and the
/// scores' scale.
#[derive(Clone, Copy)]
struct Rows {
    first: usize,
    keys: usize,
    per_sentence: usize,
    bias_rows: usize,
    scale: f32,
}

widest_vector_unit! {
    /// The softmax of each row of scores `s` plus its sentence's key bias, into `p`, with
    /// the widest vector unit.
    fn softmax_rows, softmax_rows_avx512, softmax_rows_avx2 => softmax_rows_baseline(
        s: &[f32],
        bias: &[f32],
        rows: Rows,
        p: &mut [f32],
    )
}

/// Lanes of the partial maxima and sums: the rows' reductions vectorise.
const LANES: usize = 16;

#[inline(always)]
fn softmax_rows_baseline(s: &[f32], bias: &[f32], rows: Rows, p: &mut [f32]) {
    let keys = rows.keys;
    for (r, (p, s)) in p
        .chunks_exact_mut(keys)
        .zip(s.chunks_exact(keys))
        .enumerate()
    {
        let row = rows.first + r;
        // Query q of any head reads bias row q (or row 0 of a per-key bias).
        let at =
            (row / rows.per_sentence) * rows.bias_rows + (row % rows.per_sentence) % rows.bias_rows;
        let bias = &bias[at * keys..(at + 1) * keys];
        let mut max = [f32::NEG_INFINITY; LANES];
        for ((p, &s), &b) in p.iter_mut().zip(s).zip(bias) {
            *p = s * rows.scale + b;
        }
        for chunk in p.chunks(LANES) {
            for (m, &v) in max.iter_mut().zip(chunk) {
                *m = m.max(v);
            }
        }
        let max = max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = [0f32; LANES];
        for chunk in p.chunks_mut(LANES) {
            for (acc, v) in sum.iter_mut().zip(chunk) {
                // Masked keys sit near f32::MIN and come out 0.
                *v = exp_nonpositive(*v - max);
                *acc += *v;
            }
        }
        let sum: f32 = sum.iter().sum();
        for v in p.iter_mut() {
            *v /= sum;
        }
    }
}

/// The scores' gradient: `scale p (grad - sum(grad p))` per row.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "masked-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        ps: &CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (p, g) = (slice(ps, pl)?, slice(gs, gl)?);
        if p.len() != g.len() {
            candle_core::bail!(
                "masked-softmax-grad: {} probs, {} gradients",
                p.len(),
                g.len()
            );
        }
        let keys = pl.dims().last().copied().unwrap_or(1);
        let gs = par_output(p.len(), rows_per_task(keys) * keys, |start, gs| {
            let range = start..start + gs.len();
            let (p, g) = (&p[range.clone()], &g[range]);
            let rows = gs.chunks_exact_mut(keys).zip(p.chunks_exact(keys));
            for ((gs, p), g) in rows.zip(g.chunks_exact(keys)) {
                let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                for j in 0..keys {
                    gs[j] = self.scale * p[j] * (g[j] - dot);
                }
            }
        });
        Ok((CpuStorage::F32(gs), pl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{max_diff, weighted_grad};
    use super::*;

    /// Probabilities and the scores' gradient against the composed ops, with padded keys,
    /// and enough rows to span several rayon tasks.
    #[test]
    fn matches_composed_softmax() {
        let dev = Device::Cpu;
        let (b, heads, t) = (3, 4, 37);
        let scores = Var::randn(0f32, 3., (b, heads, t, t), &dev).unwrap();
        let mut bias = vec![0f32; b * t];
        for (i, v) in bias.iter_mut().enumerate() {
            // Sentence s has its last 5 s keys padded.
            if i % t >= t - 5 * (i / t) {
                *v = f32::MIN;
            }
        }
        let bias = Tensor::from_vec(bias, (b, t), &dev).unwrap();
        let scale = 0.125;
        let ours = masked_softmax(&scores, &bias, scale).unwrap();
        let composed = (scores.as_tensor() * scale)
            .unwrap()
            .broadcast_add(&bias.unsqueeze(1).unwrap().unsqueeze(1).unwrap())
            .unwrap();
        let theirs = candle_nn::ops::softmax(&composed, D::Minus1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
        // Padded keys get nothing.
        let last = ours.get(2).unwrap().get(0).unwrap().get(0).unwrap();
        assert_eq!(
            last.narrow(0, t - 10, 10)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.
        );
        let weights = Tensor::randn(0f32, 1., (b, heads, t, t), &dev).unwrap();
        let g = |y: &Tensor| weighted_grad(y, &weights, &scores);
        assert!(max_diff(&g(&ours), &g(&theirs)) < 1e-6);
    }

    /// A bias per query and key (causal, with left padding) against the composed ops, on
    /// probabilities and the scores' gradient, over several rayon tasks.
    #[test]
    fn per_query_bias_matches_composed_softmax() {
        let dev = Device::Cpu;
        let (b, heads, t) = (3, 4, 37);
        let scores = Var::randn(0f32, 3., (b, heads, t, t), &dev).unwrap();
        // Sentence s is left-padded by 5 s; query i reads keys j <= i that are tokens.
        let bias: Vec<f32> = (0..b * t * t)
            .map(|i| {
                let (s, q, k) = (i / (t * t), (i / t) % t, i % t);
                if k <= q && k >= 5 * s {
                    0.0
                } else {
                    f32::MIN
                }
            })
            .collect();
        let bias = Tensor::from_vec(bias, (b, t, t), &dev).unwrap();
        let scale = 0.125;
        let ours = masked_softmax(&scores, &bias, scale).unwrap();
        let composed = (scores.as_tensor() * scale)
            .unwrap()
            .broadcast_add(&bias.unsqueeze(1).unwrap())
            .unwrap();
        let theirs = candle_nn::ops::softmax(&composed, D::Minus1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
        let weights = Tensor::randn(0f32, 1., (b, heads, t, t), &dev).unwrap();
        let g = |y: &Tensor| weighted_grad(y, &weights, &scores);
        assert!(max_diff(&g(&ours), &g(&theirs)) < 1e-6);
    }

    /// Every vector-unit variant gives the baseline's bits, on rows of a width that
    /// leaves a partial lane block and with masked keys.
    #[test]
    fn simd_variants_match_the_baseline() {
        let (keys, n) = (37, 40);
        let s: Vec<f32> = (0..keys * n)
            .map(|i| (i as f32 * 0.37).sin() * 4.0)
            .collect();
        let bias: Vec<f32> = (0..2 * keys)
            .map(|j| if j % 5 == 0 { -1e30 } else { 0.0 })
            .collect();
        let rows = Rows {
            first: 0,
            keys,
            per_sentence: n / 2,
            bias_rows: 1,
            scale: 0.5,
        };
        let run = |f: &dyn Fn(&mut [f32])| {
            let mut p = vec![0f32; s.len()];
            f(&mut p);
            p
        };
        let baseline = run(&|p| softmax_rows_baseline(&s, &bias, rows, p));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present.
                let avx2 = run(&|p| unsafe { softmax_rows_avx2(&s, &bias, rows, p) });
                assert_eq!(avx2, baseline);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is present.
                let avx512 = run(&|p| unsafe { softmax_rows_avx512(&s, &bias, rows, p) });
                assert_eq!(avx512, baseline);
            }
        }
    }
}
