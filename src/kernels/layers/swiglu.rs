//! SwiGLU's gate, `silu(gate) * up`, forward in one pass and each input's gradient in one
//! pass: the decoder's MLP between its projections.
//!
//! Composed, that is the SiLU and a product forward, and about six ops backward, each over
//! a `(tokens, intermediate)` tensor.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::exp::exp_nonpositive;
use super::{cpu_f32, par_output, slice, TASK};

/// `silu(gate) * up` with `silu(g) = g sigmoid(g)`, for `gate` and `up` of one shape.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    if !cpu_f32(&[gate, up]) || gate.dims() != up.dims() {
        return candle_nn::ops::silu(gate)? * up;
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// `sigmoid(g)`, from `e^-|g|` so that it neither overflows nor loses precision.
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    let e = exp_nonpositive(-g.abs());
    if g >= 0. {
        1. / (1. + e)
    } else {
        e / (1. + e)
    }
}

/// The inputs as slices of equal length.
fn pair<'a>(
    a: (&'a CpuStorage, &Layout),
    b: (&'a CpuStorage, &Layout),
    what: &str,
) -> candle_core::Result<(&'a [f32], &'a [f32])> {
    let (a, b) = (slice(a.0, a.1)?, slice(b.0, b.1)?);
    if a.len() != b.len() {
        candle_core::bail!("{what}: {} and {} values", a.len(), b.len());
    }
    Ok((a, b))
}

/// `f(a[i], b[i])` for every element, in parallel.
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    par_output(a.len(), TASK, |start, out| {
        let (a, b) = (&a[start..start + out.len()], &b[start..start + out.len()]);
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = f(a, b);
        }
    })
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = pair((gs, gl), (us, ul), "swiglu")?;
        let y = map2(g, u, |g, u| g * sigmoid(g) * u);
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gate = gate.apply_op3_no_bwd(up, &grad, &GateGrad)?;
        let d_up = gate.apply_op2_no_bwd(&grad, &UpGrad)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// The gate's gradient: `grad u s (1 + g (1 - s))` with `s = sigmoid(g)`.
struct GateGrad;

impl CustomOp3 for GateGrad {
    fn name(&self) -> &'static str {
        "swiglu-gate-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = pair((gs, gl), (us, ul), "swiglu-gate-grad")?;
        let (_, d) = pair((gs, gl), (ds, dl), "swiglu-gate-grad")?;
        let out = par_output(g.len(), TASK, |start, out| {
            let range = start..start + out.len();
            let (g, u, d) = (&g[range.clone()], &u[range.clone()], &d[range]);
            for (i, o) in out.iter_mut().enumerate() {
                let s = sigmoid(g[i]);
                *o = d[i] * u[i] * s * (1. + g[i] * (1. - s));
            }
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// The up projection's gradient: `grad silu(g)`.
struct UpGrad;

impl CustomOp2 for UpGrad {
    fn name(&self) -> &'static str {
        "swiglu-up-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, d) = pair((gs, gl), (ds, dl), "swiglu-up-grad")?;
        let out = map2(g, d, |g, d| d * g * sigmoid(g));
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::super::test_util::{max_diff, weighted_grad};
    use super::*;

    /// Output and both inputs' gradients against the composed ops, over values wide
    /// enough to reach both tails of the sigmoid, on a shape that spans several rayon
    /// tasks.
    #[test]
    fn matches_composed_swiglu() {
        let dev = Device::Cpu;
        let shape = (70, 1000);
        let gate = Var::randn(0f32, 6., shape, &dev).unwrap();
        let up = Var::randn(0f32, 1., shape, &dev).unwrap();
        let ours = swiglu(&gate, &up).unwrap();
        let theirs = (candle_nn::ops::silu(&gate).unwrap() * up.as_tensor()).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
        let weights = Tensor::randn(0f32, 1., shape, &dev).unwrap();
        for x in [&gate, &up] {
            let g = |y: &Tensor| weighted_grad(y, &weights, x);
            assert!(max_diff(&g(&ours), &g(&theirs)) < 1e-5);
        }
    }
}
