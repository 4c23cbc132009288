//! The NCCL backend in a world of one GPU, which runs every part of the data-parallel
//! path: NCCL's all-reduce of f32 and f64, and IVON reducing its statistics through it,
//! bit for bit as through the thread backend. Needs `--features nccl`, a GPU and
//! libnccl (`scripts/gpu-check.sh`); the default build compiles nothing here.
#![cfg(feature = "nccl")]

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use varlora::collective::{Collective, NcclCollective, NcclId, ReduceOp, ThreadGroup};
use varlora::optim::{Ivon, IvonConfig};

fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| {
        panic!("these tests need a CUDA GPU (run scripts/gpu-check.sh on a GPU machine): {e}")
    })
}

fn world_of_one(dev: &Device) -> NcclCollective {
    let id = NcclId::from_bytes(NcclId::new().unwrap().to_bytes());
    NcclCollective::new(id, 0, 1, dev).unwrap()
}

#[test]
fn all_reduce_in_a_world_of_one_returns_the_buffer() {
    let dev = gpu();
    let c = world_of_one(&dev);
    for dtype in [DType::F32, DType::F64] {
        let t = common::randn(3, 1.0, &[1000], dtype)
            .to_device(&dev)
            .unwrap();
        for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max] {
            let got = c.all_reduce(&t, op).unwrap();
            assert_eq!(common::max_abs_diff(&got, &t), 0.0, "{op:?} {dtype:?}");
        }
    }
    c.barrier().unwrap();
    let cpu = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(
        c.all_reduce(&cpu, ReduceOp::Sum).is_err(),
        "a CPU tensor is refused"
    );
}

/// m, h and the momentum after 3 steps of IVON on the GPU through `c`, and how many of
/// the steps ran the fused kernel.
fn trajectory(c: Arc<dyn Collective>, dev: &Device, fused: bool) -> (Vec<Vec<f32>>, u64) {
    let w = Var::from_tensor(
        &common::randn(1, 0.5, &[64, 33], DType::F32)
            .to_device(dev)
            .unwrap(),
    )
    .unwrap();
    let config = IvonConfig::new(0.1, 100.0).seed(4).fused(fused);
    let mut opt = Ivon::new(vec![w.clone()], config).unwrap();
    opt.set_collective(c).unwrap();
    for t in 0..3 {
        let x = common::randn(10 + t, 1.0, &[8, 64], DType::F32)
            .to_device(dev)
            .unwrap();
        let loss = x
            .matmul(w.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        opt.try_step(&loss.backward().unwrap()).unwrap();
    }
    let p = &opt.group_params(0).unwrap()[0];
    let state = [p.mean(), p.hess(), p.momentum()]
        .into_iter()
        .map(|t| t.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    (state, opt.fused_steps())
}

#[test]
fn ivon_through_nccl_equals_ivon_through_the_thread_backend() {
    let dev = gpu();
    let thread = || Arc::new(ThreadGroup::new(1).unwrap().into_ranks().remove(0));
    let nccl = trajectory(Arc::new(world_of_one(&dev)), &dev, true);
    assert_eq!(nccl.1, 3, "the CUDA kernel ran the synced steps");
    assert_eq!(nccl, trajectory(thread(), &dev, true));
    // The fused kernel reading the averaged statistics gives the tensor ops' bits.
    let unfused = trajectory(thread(), &dev, false);
    assert_eq!((nccl.0, 0), unfused);
}
