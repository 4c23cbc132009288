//! Data-parallel IVON over the thread backend: the ranks stay identical, equal one process
//! with `mc_samples` = world size fed the same draws and gradients, resume from rank 0's
//! checkpoint, and agree on NaN gradients and mismatches instead of diverging or hanging.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use common::ReplayNoise;
use varlora::collective::{Collective, ReduceOp, ThreadCollective, ThreadGroup};
use varlora::optim::{HessApprox, Ivon, IvonConfig, NonFinite, ParamGroup};
use varlora::Error;

const STEPS: usize = 4;

fn config(approx: HessApprox) -> IvonConfig {
    IvonConfig::new(0.05, 50.0)
        .hess_init(0.5)
        .beta2(0.9)
        .hess_approx(approx)
        .clip_radius(0.5)
        .seed(11)
}

/// A fresh replica: w (3 x 4) and b (4), the same start on every rank.
fn replica() -> Vec<Var> {
    let w = Var::from_tensor(&common::randn(1, 0.5, &[3, 4], DType::F32)).unwrap();
    let b = Var::from_tensor(&common::randn(2, 0.5, &[4], DType::F32)).unwrap();
    vec![w, b]
}

/// The gradient of sample `k` of step `t`: a squared error on data of its own.
fn grads(vars: &[Var], t: usize, k: usize) -> GradStore {
    scaled_grads(vars, t, k, 1.0)
}

/// The gradient of that loss times `scale`.
fn scaled_grads(vars: &[Var], t: usize, k: usize, scale: f64) -> GradStore {
    let seed = 1000 + 100 * t as u64 + k as u64;
    let x = common::randn(seed, 1.0, &[5, 3], DType::F32);
    let y = common::randn(seed + 50, 1.0, &[5, 4], DType::F32);
    let pred = x
        .matmul(vars[0].as_tensor())
        .unwrap()
        .broadcast_add(vars[1].as_tensor())
        .unwrap();
    let loss = (pred - y).unwrap().sqr().unwrap().sum_all().unwrap();
    (loss * scale).unwrap().backward().unwrap()
}

/// The draw of sample `k` of step `t` (16 values: w and b).
fn draw(t: usize, k: usize) -> Tensor {
    common::randn(5000 + 100 * t as u64 + k as u64, 1.0, &[16], DType::F32)
}

/// m, h and the momentum of every var, flattened.
fn state(opt: &Ivon) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for p in opt.group_params(0).unwrap() {
        for t in [p.mean(), p.hess(), p.momentum()] {
            out.push(t.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }
    out
}

/// Runs one closure per rank on its own thread; their results in rank order.
fn on_ranks<T: Send>(
    ranks: Vec<ThreadCollective>,
    f: impl Fn(ThreadCollective) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks.into_iter().map(|c| s.spawn(|| f(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Each rank's state after every step, from replayed draws.
fn data_parallel(world: usize, approx: HessApprox) -> Vec<Vec<Vec<Vec<f32>>>> {
    on_ranks(ThreadGroup::new(world).unwrap().into_ranks(), |c| {
        let r = c.rank();
        let draws: VecDeque<Tensor> = (0..=STEPS).map(|t| draw(t, r)).collect();
        let vars = replica();
        let noise = Box::new(ReplayNoise { draws });
        let group = vec![ParamGroup::new(vars.clone())];
        let mut opt = Ivon::with_noise(group, config(approx), noise).unwrap();
        opt.set_collective(Arc::new(c)).unwrap();
        (0..STEPS)
            .map(|t| {
                opt.try_step(&grads(&vars, t, r)).unwrap();
                state(&opt)
            })
            .collect()
    })
}

/// One process with `world` samples per step, fed the ranks' draws in rank order.
fn one_process(world: usize, approx: HessApprox) -> Vec<Vec<Vec<f32>>> {
    let draws: VecDeque<Tensor> = (0..=STEPS)
        .flat_map(|t| (0..world).map(move |k| draw(t, k)))
        .collect();
    let vars = replica();
    let group = vec![ParamGroup::new(vars.clone())];
    let config = config(approx).mc_samples(world);
    let mut opt = Ivon::with_noise(group, config, Box::new(ReplayNoise { draws })).unwrap();
    (0..STEPS)
        .map(|t| {
            for k in 0..world {
                opt.try_step(&grads(&vars, t, k)).unwrap();
            }
            state(&opt)
        })
        .collect()
}

fn check_against_one_process(world: usize, approx: HessApprox) {
    let ranks = data_parallel(world, approx);
    for (r, run) in ranks.iter().enumerate() {
        assert_eq!(run, &ranks[0], "rank {r} diverged from rank 0");
    }
    // Bitwise: the thread backend's mean is IVON's running mean in rank order.
    assert_eq!(ranks[0], one_process(world, approx));
    // And the steps moved the state.
    assert_ne!(ranks[0][0], ranks[0][STEPS - 1]);
}

#[test]
fn two_and_four_ranks_equal_one_process_with_as_many_samples_bitwise() {
    check_against_one_process(2, HessApprox::Price);
    check_against_one_process(4, HessApprox::Price);
}

#[test]
fn gradsq_syncs_its_squared_gradients_too() {
    check_against_one_process(2, HessApprox::Gradsq);
    check_against_one_process(4, HessApprox::Gradsq);
}

/// Each rank's state and current sample after `steps` more steps from `opt`.
fn run_on(opt: &mut Ivon, vars: &[Var], from: usize, steps: usize, r: usize) -> Vec<Vec<f32>> {
    for t in from..from + steps {
        opt.try_step(&grads(vars, t, r)).unwrap();
    }
    let mut s = state(opt);
    for v in vars {
        s.push(
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    s
}

#[test]
fn a_checkpoint_saved_on_rank_0_resumes_every_rank_bit_identically() {
    let dir = std::env::temp_dir().join(format!("varlora-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rank0.safetensors");
    let world = 3;
    let continued = on_ranks(ThreadGroup::new(world).unwrap().into_ranks(), |c| {
        let r = c.rank();
        let c: Arc<dyn Collective> = Arc::new(c);
        let vars = replica();
        let mut opt = Ivon::new(vars.clone(), config(HessApprox::Price)).unwrap();
        opt.set_collective(c.clone()).unwrap();
        run_on(&mut opt, &vars, 0, 3, r);
        if r == 0 {
            opt.save(&path).unwrap();
        }
        c.barrier().unwrap();
        run_on(&mut opt, &vars, 3, 2, r)
    });
    let resumed = on_ranks(ThreadGroup::new(world).unwrap().into_ranks(), |c| {
        let r = c.rank();
        let vars = replica();
        let mut opt = Ivon::new(vars.clone(), config(HessApprox::Price)).unwrap();
        opt.load_state(&path).unwrap();
        opt.set_collective(Arc::new(c)).unwrap();
        run_on(&mut opt, &vars, 3, 2, r)
    });
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(resumed, continued);
    // The ranks drew different samples (their own streams), yet share the posterior.
    let current_sample = |s: &Vec<Vec<f32>>| s[s.len() - 2].clone();
    assert_ne!(current_sample(&continued[0]), current_sample(&continued[1]));
    assert_eq!(continued[0][..6], continued[1][..6]);
}

/// Per rank: each step's outcome, the skipped steps and the final state.
type RankRun = (Vec<Result<(), String>>, u64, Vec<Vec<f32>>);

/// Rank 1's gradient at step 1 is NaN.
fn with_nan_on_rank_1(on_nonfinite: NonFinite) -> Vec<RankRun> {
    on_ranks(ThreadGroup::new(2).unwrap().into_ranks(), |c| {
        let r = c.rank();
        let vars = replica();
        let mut opt = Ivon::new(
            vars.clone(),
            config(HessApprox::Price).on_nonfinite(on_nonfinite),
        )
        .unwrap();
        opt.set_collective(Arc::new(c)).unwrap();
        let mut results = Vec::new();
        for t in 0..3 {
            let scale = if r == 1 && t == 1 { f64::NAN } else { 1.0 };
            let g = scaled_grads(&vars, t, r, scale);
            results.push(opt.try_step(&g).map_err(|e| match e {
                Error::NonFiniteGradient { .. } => "nonfinite here".to_string(),
                Error::Collective(_) => "nonfinite elsewhere".to_string(),
                other => other.to_string(),
            }));
        }
        (results, opt.skipped_steps(), state(&opt))
    })
}

#[test]
fn a_nan_on_one_rank_makes_every_rank_skip_or_fail_the_same_step() {
    let skipped = with_nan_on_rank_1(NonFinite::SkipStep);
    for (results, skips, _) in &skipped {
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(*skips, 1);
    }
    assert_eq!(skipped[0].2, skipped[1].2, "the ranks stay identical");

    let failed = with_nan_on_rank_1(NonFinite::Error);
    assert_eq!(failed[0].0[1], Err("nonfinite elsewhere".to_string()));
    assert_eq!(failed[1].0[1], Err("nonfinite here".to_string()));
    for (results, _, _) in &failed {
        assert!(results[0].is_ok() && results[2].is_ok());
    }
    assert_eq!(failed[0].2, failed[1].2, "the ranks stay identical");
}

#[test]
fn mismatched_optimizers_buffers_and_absent_ranks_get_errors_not_hangs() {
    // Different shapes on rank 1.
    let errs = on_ranks(ThreadGroup::new(2).unwrap().into_ranks(), |c| {
        let shape = if c.rank() == 0 { [3, 4] } else { [4, 3] };
        let w = Var::zeros(&shape, DType::F32, &Device::Cpu).unwrap();
        let mut opt = Ivon::new(vec![w], config(HessApprox::Price)).unwrap();
        opt.set_collective(Arc::new(c)).is_err()
    });
    assert_eq!(errs, vec![true, true]);

    // Buffers of different sizes in one all-reduce.
    let errs = on_ranks(ThreadGroup::new(2).unwrap().into_ranks(), |c| {
        let t = Tensor::zeros(2 + c.rank(), DType::F32, &Device::Cpu).unwrap();
        matches!(c.all_reduce(&t, ReduceOp::Sum), Err(Error::Collective(_)))
    });
    assert_eq!(errs, vec![true, true]);

    // Rank 1 never calls: rank 0 times out and says who is missing.
    let ranks = ThreadGroup::with_timeout(2, Duration::from_millis(200))
        .unwrap()
        .into_ranks();
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let err = ranks[0]
        .all_reduce(&t, ReduceOp::Mean)
        .unwrap_err()
        .to_string();
    assert!(err.contains("[1]"), "{err}");
    assert!(ranks[1].barrier().is_err(), "the group stays broken");
}

#[test]
fn all_reduce_sums_means_and_maxima_in_f32_and_f64() {
    let out = on_ranks(ThreadGroup::new(3).unwrap().into_ranks(), |c| {
        let r = c.rank() as f64;
        let t = Tensor::new(&[r, -r, 1.0 / (r + 1.0)], &Device::Cpu).unwrap();
        let f = |op, dtype| {
            let t = t.to_dtype(dtype).unwrap();
            let got = c.all_reduce(&t, op).unwrap();
            assert_eq!(got.dtype(), dtype);
            got.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
        };
        (
            f(ReduceOp::Sum, DType::F64),
            f(ReduceOp::Mean, DType::F32),
            f(ReduceOp::Max, DType::F32),
        )
    });
    for (sum, mean, max) in out {
        assert_eq!(sum, vec![3.0, -3.0, 1.0 + 0.5 + 1.0 / 3.0]);
        let third = (1.0f32 + 0.5 + 1.0 / 3.0) / 3.0;
        assert!((mean[2] - f64::from(third)).abs() < 1e-7 && mean[0] == 1.0);
        assert_eq!(max[..2], [2.0, 0.0]);
    }
}

/// Each rank's state, current sample and fused-step count after `STEPS` steps with the
/// default noise, fused or not.
fn philox_ranks(world: usize, approx: HessApprox, fused: bool) -> Vec<(Vec<Vec<f32>>, u64)> {
    on_ranks(ThreadGroup::new(world).unwrap().into_ranks(), |c| {
        let r = c.rank();
        let vars = replica();
        // An empty var between the two: nothing to reduce or update for it.
        let empty = Var::zeros(0, DType::F32, &Device::Cpu).unwrap();
        let with_empty = vec![vars[0].clone(), empty, vars[1].clone()];
        let mut opt = Ivon::new(with_empty, config(approx).fused(fused)).unwrap();
        opt.set_collective(Arc::new(c)).unwrap();
        let s = run_on(&mut opt, &vars, 0, STEPS, r);
        (s, opt.fused_steps())
    })
}

#[test]
fn the_fused_kernel_averages_over_ranks_with_the_unfused_paths_bits() {
    for approx in [HessApprox::Price, HessApprox::Gradsq] {
        for world in [2, 4] {
            let fused = philox_ranks(world, approx, true);
            let unfused = philox_ranks(world, approx, false);
            for (r, ((f, f_steps), (u, u_steps))) in fused.iter().zip(&unfused).enumerate() {
                assert_eq!((*f_steps, *u_steps), (STEPS as u64, 0), "rank {r}");
                assert_eq!(f, u, "{approx:?}, {world} ranks, rank {r}");
                // m, h and the momentum (3 vars, 9 rows) agree across ranks; the
                // samples that follow them do not.
                assert_eq!(f[..9], fused[0].0[..9], "rank {r} diverged");
            }
            assert_ne!(fused[0].0[9], fused[1].0[9]);
        }
    }
}
