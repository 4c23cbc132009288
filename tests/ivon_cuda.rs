//! The fused CUDA kernel against the fused CPU kernel: the same vars, gradients and seed
//! give the same bits after every step. Needs `--features cuda` and a GPU
//! (`scripts/gpu-check.sh`); the default build compiles nothing here.
#![cfg(feature = "cuda")]

mod common;

use candle_core::Device;
use varlora::optim::IvonConfig;

/// Vars that straddle the CPU's generator batches and thread chunks at unaligned offsets,
/// and one large enough for the kernel's grid to stride.
const GROUPS: [&[usize]; 2] = [&[37, 70_001, 5], &[3, 40_000_003]];

fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| {
        panic!("these tests need a CUDA GPU (run scripts/gpu-check.sh on a GPU machine): {e}")
    })
}

fn run(config: &IvonConfig, dev: &Device, fused: bool, steps: usize) -> (Vec<Vec<u32>>, u64) {
    common::ivon_trajectory(config, GROUPS, dev, fused, steps)
}

fn check(config: IvonConfig) {
    let (gpu_bits, gpu_fused) = run(&config, &gpu(), true, 4);
    let (cpu_bits, cpu_fused) = run(&config, &Device::Cpu, true, 4);
    assert_eq!(
        (gpu_fused, cpu_fused),
        (4, 4),
        "the fused kernels were not used"
    );
    for (i, (a, b)) in gpu_bits.iter().zip(&cpu_bits).enumerate() {
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ,
            0,
            "{config:?}: tensor {i} differs in {differ} of {}",
            a.len()
        );
    }
}

#[test]
fn price_debias_rescale_no_clip() {
    check(common::price_debias_rescale_no_clip());
}

#[test]
fn price_clip_no_debias_no_rescale() {
    check(common::price_clip_no_debias_no_rescale());
}

#[test]
fn gradsq_clip_wd0() {
    check(common::gradsq_clip_wd0());
}

/// The tensor-op path on the GPU (candle's kernels, compiled with fused multiply-adds)
/// stays within a few ulps of the fused kernel: the reference the fused path replaces.
#[test]
fn tensor_ops_on_the_gpu_agree_within_ulps() {
    let config = common::price_debias_rescale_no_clip();
    let (fused, _) = run(&config, &gpu(), true, 2);
    let (plain, n) = run(&config, &gpu(), false, 2);
    assert_eq!(n, 0);
    for (a, b) in fused.iter().zip(&plain) {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.iter().map(|&x| f32::from_bits(x)).collect(),
            b.iter().map(|&x| f32::from_bits(x)).collect(),
        );
        // Relative to the tensor's scale: m + noise may cancel.
        let scale = a.iter().fold(0f32, |s, x| s.max(x.abs()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * scale, "fused {x} vs tensor ops {y}");
        }
    }
}

/// The GPU's NaN/Inf check (its own kernel) finds one bad value anywhere in a large
/// gradient, at either end and in the middle, refuses the step and changes nothing.
#[test]
fn nonfinite_gradient_on_the_gpu_is_an_error_that_changes_nothing() {
    use candle_core::backprop::GradStore;
    use candle_core::{Tensor, Var};
    use varlora::optim::Ivon;
    use varlora::Error;

    let dev = gpu();
    let n = 3_000_001;
    let var = Var::from_tensor(&Tensor::zeros(n, candle_core::DType::F32, &dev).unwrap()).unwrap();
    let mut opt = Ivon::new(vec![var.clone()], IvonConfig::new(0.1, 1e4)).unwrap();
    let before = var.as_tensor().to_vec1::<f32>().unwrap();
    let steps = opt.step_count();
    for (at, bad) in [
        (0, f32::NAN),
        (n / 2, f32::INFINITY),
        (n - 1, f32::NEG_INFINITY),
    ] {
        let mut g = vec![1e-3f32; n];
        g[at] = bad;
        let mut grads = GradStore::default();
        grads.insert(var.as_tensor(), Tensor::from_vec(g, n, &dev).unwrap());
        match opt.try_step(&grads) {
            Err(Error::NonFiniteGradient { .. }) => {}
            other => panic!("a {bad} at {at}: expected NonFiniteGradient, got {other:?}"),
        }
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), before);
        assert_eq!(opt.step_count(), steps);
    }
    let mut grads = GradStore::default();
    grads.insert(var.as_tensor(), Tensor::full(1e30f32, n, &dev).unwrap());
    opt.try_step(&grads)
        .expect("large finite gradients pass the check");
}
