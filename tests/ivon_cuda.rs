//! The fused CUDA kernel against the fused CPU kernel: the same vars, gradients and seed
//! give the same bits after every step. Needs `--features cuda` and a GPU
//! (`scripts/gpu-check.sh`); the default build compiles nothing here.
#![cfg(feature = "cuda")]

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use varlora::optim::{HessApprox, Ivon, IvonConfig, ParamGroup};

/// Vars that straddle the CPU's generator batches and thread chunks at unaligned offsets,
/// and one large enough for the kernel's grid to stride.
const GROUPS: [&[usize]; 2] = [&[37, 70_001, 5], &[3, 40_000_003]];

fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| {
        panic!("these tests need a CUDA GPU (run scripts/gpu-check.sh on a GPU machine): {e}")
    })
}

fn values(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 97 {
            0 => 0.0,
            1 => -0.0,
            _ => scale * (rng.random::<f32>() * 2.0 - 1.0),
        })
        .collect()
}

/// The bits of every var and state row after `steps` steps on `dev`, and the fused steps.
fn run(config: &IvonConfig, dev: &Device, fused: bool, steps: usize) -> (Vec<Vec<u32>>, u64) {
    let mut rng = StdRng::seed_from_u64(5);
    let mut groups = Vec::new();
    let mut vars = Vec::new();
    for (gi, sizes) in GROUPS.iter().enumerate() {
        let vs: Vec<Var> = sizes
            .iter()
            .map(|&n| Var::from_vec(values(&mut rng, n, 0.5), n, dev).unwrap())
            .collect();
        let group = ParamGroup::new(vs.clone());
        groups.push(if gi == 1 {
            group.lr(0.03).weight_decay(0.0).beta1(0.7)
        } else {
            group
        });
        vars.extend(vs);
    }
    let mut opt = Ivon::with_groups(groups, config.clone().fused(fused)).unwrap();
    for _ in 0..steps {
        let mut grads = GradStore::default();
        for v in &vars {
            let g =
                Tensor::from_vec(values(&mut rng, v.elem_count(), 2.0), v.shape(), dev).unwrap();
            grads.insert(v.as_tensor(), g);
        }
        opt.try_step(&grads).unwrap();
    }
    let mut out = Vec::new();
    for gi in 0..opt.num_groups() {
        for p in opt.group_params(gi).unwrap() {
            for t in [
                p.var().as_tensor().clone(),
                p.mean().unwrap(),
                p.hess().unwrap(),
                p.momentum().unwrap(),
                p.noise().unwrap().unwrap(),
            ] {
                let v = t.to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
                out.push(v.iter().map(|x| x.to_bits()).collect());
            }
        }
    }
    (out, opt.fused_steps())
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
    check(IvonConfig::new(0.1, 500.0).hess_init(0.3).seed(1));
}

#[test]
fn price_clip_no_debias_no_rescale() {
    check(
        IvonConfig::new(0.05, 2000.0)
            .hess_init(0.2)
            .weight_decay(2e-4)
            .clip_radius(1e-3)
            .debias(false)
            .rescale_lr(false)
            .seed(2),
    );
}

#[test]
fn gradsq_clip_wd0() {
    check(
        IvonConfig::new(0.2, 800.0)
            .hess_approx(HessApprox::Gradsq)
            .weight_decay(0.0)
            .clip_radius(0.05)
            .beta2(0.999)
            .seed(3),
    );
}

/// The tensor-op path on the GPU (candle's kernels, compiled with fused multiply-adds)
/// stays within a few ulps of the fused kernel: the reference the fused path replaces.
#[test]
fn tensor_ops_on_the_gpu_agree_within_ulps() {
    let config = IvonConfig::new(0.1, 500.0).hess_init(0.3).seed(1);
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
