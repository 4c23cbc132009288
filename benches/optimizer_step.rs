//! One optimizer step on f32 parameters on the CPU: IVON's fused kernel, IVON's tensor-op
//! path and candle-nn's AdamW, against a plain copy of the parameters (the memory floor).
//!
//! `cargo bench --bench optimizer_step`
//!
//! IVON's step moves about 32 bytes per parameter (read gradient, mean, h, momentum; write
//! mean, h, momentum and the sampled weight); the fused kernel also reads and writes the
//! sample's noise and reads the gradient once more for the NaN check, 44 bytes in all. A
//! copy moves 8 bytes per element.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use varlora::optim::{Ivon, IvonConfig};

fn setup(n: usize) -> (Var, GradStore) {
    let dev = Device::Cpu;
    let var = Var::from_tensor(&Tensor::randn(0f32, 0.1, n, &dev).unwrap()).unwrap();
    let mut grads = GradStore::default();
    grads.insert(var.as_tensor(), Tensor::randn(0f32, 1e-2, n, &dev).unwrap());
    (var, grads)
}

fn optimizer_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("optimizer_step");
    group.sample_size(10);
    for n in [100_000usize, 1_000_000, 10_000_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("memcpy", n), |b| {
            let src = vec![1f32; n];
            let mut dst = vec![0f32; n];
            b.iter(|| {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
            });
        });
        group.bench_function(BenchmarkId::new("adamw", n), |b| {
            let (var, grads) = setup(n);
            let mut opt = AdamW::new(vec![var], ParamsAdamW::default()).unwrap();
            b.iter(|| opt.step(&grads).unwrap());
        });
        for (name, fused) in [("ivon_fused", true), ("ivon_tensor_ops", false)] {
            group.bench_function(BenchmarkId::new(name, n), |b| {
                let (var, grads) = setup(n);
                let config = IvonConfig::new(0.1, 1e4).hess_init(0.5).fused(fused);
                let mut opt = Ivon::new(vec![var], config).unwrap();
                b.iter(|| opt.step(&grads).unwrap());
            });
        }
    }
    group.finish();
}

criterion_group!(benches, optimizer_step);
criterion_main!(benches);
