//! The NaN/Inf check of IVON's gradients in one read of each, on the CPU and on CUDA:
//! the check runs before the fused step, so that a bad gradient leaves the state untouched.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

/// Whether `t` holds only finite values: one read by a kernel for contiguous f32 tensors on
/// the CPU (or, with the `cuda` feature, a CUDA device); `sum(t * 0) == 0` otherwise.
pub(crate) fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    if t.dtype() == DType::F32 && t.is_contiguous() && super::fused_on(t.device()) {
        let bad = t.apply_op1_no_bwd(&NonFiniteFlag)?;
        return Ok(bad.to_dtype(DType::U32)?.to_vec1::<u32>()?[0] == 0);
    }
    // 0 * x is 0 for finite x and NaN otherwise.
    let s = (t * 0.0)?.sum_all()?.to_dtype(DType::F64)?;
    Ok(s.to_scalar::<f64>()? == 0.0)
}

/// One value, 1 when the input holds NaN or Inf.
struct NonFiniteFlag;

impl CustomOp1 for NonFiniteFlag {
    fn name(&self) -> &'static str {
        "ivon-nonfinite-flag"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let ok = super::cpu::all_finite(super::cpu::f32_slice(s, l)?);
        Ok((CpuStorage::U8(vec![u8::from(!ok)]), Shape::from(1)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::cuda::nonfinite_flag(s, l)?, Shape::from(1)))
    }
}
