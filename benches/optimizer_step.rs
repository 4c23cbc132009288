//! One optimizer step of IVON against candle-nn's AdamW on f32 parameters on the CPU.
//!
//! `cargo bench --bench optimizer_step`

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
        group.bench_function(BenchmarkId::new("adamw", n), |b| {
            let (var, grads) = setup(n);
            let mut opt = AdamW::new(vec![var], ParamsAdamW::default()).unwrap();
            b.iter(|| opt.step(&grads).unwrap());
        });
        group.bench_function(BenchmarkId::new("ivon", n), |b| {
            let (var, grads) = setup(n);
            let config = IvonConfig::new(0.1, 1e4).hess_init(0.5);
            let mut opt = Ivon::new(vec![var], config).unwrap();
            b.iter(|| opt.step(&grads).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, optimizer_step);
criterion_main!(benches);
