//! The fused IVON step on CUDA (feature `cuda`): `ivon.cu`, compiled at run time by NVRTC
//! (so no nvcc is needed to build the crate) and launched on the var's stream, one launch
//! per var.
//!
//! Element `i` of a var takes draw `offset + i` of its group's request, as on the CPU, and
//! every operation is correctly rounded in the same order, so a step on the GPU gives the
//! CPU kernel's bits.

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::cuda::cudarc::driver::{
    CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use candle_core::cuda::WrapErr;
use candle_core::{CpuStorage, CudaStorage, InplaceOp1, InplaceOp2, Layout, Tensor, Var};

use super::contract::{c_header, VlCoeffs, ROWS};
use super::{Draws, IvonCoeffs};

const SOURCE: &str = include_str!("ivon.cu");
const MODULE: &str = "varlora_ivon";

// SAFETY: a plain `repr(C)` struct of f32 and i32, laid out as the kernel's `VlCoeffs`
// (both come from `contract`).
unsafe impl DeviceRepr for VlCoeffs {}

/// The PTX of `ivon.cu`, compiled once per process: the source is fixed, and NVRTC takes
/// a noticeable fraction of a second.
fn ptx() -> candle_core::Result<&'static str> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    let compiled = PTX.get_or_init(|| {
        let opts = CompileOptions {
            fmad: Some(false),
            prec_div: Some(true),
            prec_sqrt: Some(true),
            ftz: Some(false),
            use_fast_math: Some(false),
            ..Default::default()
        };
        compile_ptx_with_opts(format!("{}{SOURCE}", c_header()), opts)
            .map(|p| p.to_src())
            .map_err(|e| e.to_string())
    });
    compiled
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("NVRTC could not compile ivon.cu: {e}")))
}

/// One fused IVON step for one var on a CUDA device (see `cpu::ivon_step`).
pub(crate) fn ivon_step(
    var: &Var,
    state: &Tensor,
    grad: &Tensor,
    draws: Draws,
    c: &IvonCoeffs,
) -> candle_core::Result<()> {
    var.as_tensor().inplace_op2(
        grad,
        &VarPass {
            state,
            draws,
            coeffs: c.into(),
        },
    )
}

fn contiguous(l: &Layout) -> candle_core::Result<(usize, usize)> {
    l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("the fused IVON kernel needs contiguous tensors".into())
    })
}

/// Holds the var's storage (written) and the gradient's (read); the state's comes next.
struct VarPass<'a> {
    state: &'a Tensor,
    draws: Draws,
    coeffs: VlCoeffs,
}

impl InplaceOp2 for VarPass<'_> {
    fn name(&self) -> &'static str {
        "ivon-fused-step-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("the CUDA IVON pass was given CPU tensors")
    }

    fn cuda_fwd(
        &self,
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (a1, b1) = contiguous(l1)?;
        let (a2, b2) = contiguous(l2)?;
        // The ranks' mean gradient and mean Hessian statistic when averaged.
        let per_element = if self.coeffs.averaged != 0 { 2 } else { 1 };
        if per_element * (b1 - a1) != b2 - a2 {
            candle_core::bail!("gradient and var sizes differ");
        }
        let theta = s1.as_cuda_slice_mut::<f32>()?.slice_mut(a1..b1);
        let grad = s2.as_cuda_slice::<f32>()?.slice(a2..b2);
        self.state.inplace_op1(&StatePass {
            theta: Cell::new(Some(theta)),
            grad,
            draws: self.draws,
            coeffs: self.coeffs,
        })
    }
}

struct StatePass<'a> {
    theta: Cell<Option<CudaViewMut<'a, f32>>>,
    grad: CudaView<'a, f32>,
    draws: Draws,
    coeffs: VlCoeffs,
}

impl InplaceOp1 for StatePass<'_> {
    fn name(&self) -> &'static str {
        "ivon-fused-step-cuda"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("the CUDA IVON pass was given a CPU state")
    }

    fn cuda_fwd(&self, s: &mut CudaStorage, l: &Layout) -> candle_core::Result<()> {
        let Some(mut theta) = self.theta.take() else {
            candle_core::bail!("the fused IVON pass ran twice")
        };
        let n = theta.len();
        let (a, b) = contiguous(l)?;
        if b - a != ROWS * n {
            candle_core::bail!("IVON state of {} values for a var of {n}", b - a);
        }
        if n == 0 {
            return Ok(());
        }
        let func = s
            .device
            .get_or_load_custom_func("ivon_step", MODULE, ptx()?)?;
        let mut state = s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let (n64, seed, block, offset) = (
            n as u64,
            self.draws.seed,
            self.draws.block,
            self.draws.offset as u64,
        );
        // A thread per Philox block of draws; enough blocks to fill the GPU several times
        // over, the kernel strides the rest.
        let philox_blocks = (offset + n64 - 1) / 4 - offset / 4 + 1;
        let cfg = LaunchConfig {
            grid_dim: (philox_blocks.div_ceil(256).min(65_535) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = func.builder();
        launch
            .arg(&mut theta)
            .arg(&self.grad)
            .arg(&mut state)
            .arg(&n64)
            .arg(&seed)
            .arg(&block)
            .arg(&offset)
            .arg(&self.coeffs);
        // SAFETY: the arguments match `ivon_step` in ivon.cu: three f32 buffers of n, n
        // (2n when averaged) and 4n elements (checked above), four u64 and the `repr(C)`
        // coefficients.
        unsafe { launch.launch(cfg) }.w()?;
        Ok(())
    }
}

/// A one-element u32 flag on the tensor's device: 1 if the contiguous f32 input holds NaN
/// or Inf, else 0.
pub(crate) fn nonfinite_flag(s: &CudaStorage, l: &Layout) -> candle_core::Result<CudaStorage> {
    let (a, b) = contiguous(l)?;
    let x = s.as_cuda_slice::<f32>()?.slice(a..b);
    let dev = &s.device;
    let mut flag = dev.alloc_zeros::<u32>(1)?;
    let n = (b - a) as u64;
    if n > 0 {
        let func = dev.get_or_load_custom_func("ivon_nonfinite", MODULE, ptx()?)?;
        // A few blocks per multiprocessor suffice for a read-only pass.
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(256).min(2048) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = func.builder();
        launch.arg(&x).arg(&n).arg(&mut flag);
        // SAFETY: the arguments match `ivon_nonfinite` in ivon.cu: an f32 buffer of n
        // elements, n, and one u32.
        unsafe { launch.launch(cfg) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(flag, dev.clone()))
}
