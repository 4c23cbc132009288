//! The fused CPU kernel against the tensor-op path: same inputs, same draws, the same
//! bits after every step (signed zeros included).

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use varlora::optim::{HessApprox, Ivon, IvonConfig, ParamGroup};

/// Sizes chosen so that vars straddle generator batches (64 draws) and thread chunks
/// (32768 elements) at unaligned offsets within their group.
const GROUPS: [&[usize]; 2] = [&[37, 70_001, 5], &[3, 40_000]];

fn values(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 97 {
            0 => 0.0,
            1 => -0.0,
            _ => scale * (rng.random::<f32>() * 2.0 - 1.0),
        })
        .collect()
}

fn run(config: &IvonConfig, fused: bool, steps: usize) -> (Vec<Vec<u32>>, u64) {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(5);
    let mut groups = Vec::new();
    let mut vars = Vec::new();
    for (gi, sizes) in GROUPS.iter().enumerate() {
        let vs: Vec<Var> = sizes
            .iter()
            .map(|&n| Var::from_vec(values(&mut rng, n, 0.5), n, &dev).unwrap())
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
                Tensor::from_vec(values(&mut rng, v.elem_count(), 2.0), v.shape(), &dev).unwrap();
            grads.insert(v.as_tensor(), g);
        }
        opt.try_step(&grads).unwrap();
    }
    let mut out = Vec::new();
    for gi in 0..opt.num_groups() {
        for p in opt.group_params(gi).unwrap() {
            let ts = [
                p.var().as_tensor().clone(),
                p.mean().unwrap(),
                p.hess().unwrap(),
                p.momentum().unwrap(),
                p.noise().unwrap().unwrap(),
            ];
            for t in ts {
                out.push(
                    t.to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect(),
                );
            }
        }
    }
    (out, opt.fused_steps())
}

fn check(config: IvonConfig) {
    let (fused, n_fused) = run(&config, true, 4);
    let (plain, n_plain) = run(&config, false, 4);
    assert_eq!(n_fused, 4, "the fused kernel was not used");
    assert_eq!(n_plain, 0);
    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ,
            0,
            "{config:?}: tensor {i} differs in {differ} of {} elements",
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

/// Where the kernel does not apply, the tensor-op path runs and the results still agree.
#[test]
fn fallback_when_not_fusable() {
    let config = IvonConfig::new(0.1, 500.0).mc_samples(2).seed(4);
    let (a, n) = run(&config, true, 4);
    let (b, _) = run(&config, false, 4);
    assert_eq!(n, 0);
    assert_eq!(a, b);
}
