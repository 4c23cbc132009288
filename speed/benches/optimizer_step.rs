//! One optimizer step on f32 parameters on the CPU: IVON's fused kernel, IVON's tensor-op
//! path and candle-nn's AdamW, against a plain copy of the parameters (the memory floor),
//! single-threaded and on every core as the fused kernel runs (report both).
//! With `--features cuda`, the same on GPU 0 against a device-to-device copy, each step
//! followed by a synchronisation (`scripts/gpu-check.sh`).
//!
//! `cargo bench --bench optimizer_step`
//!
//! A second group times the fused step on one thread with data in cache, against the
//! Gaussian draws alone, to show how the step's time splits between them.
//!
//! IVON's step moves about 32 bytes per parameter (read gradient, mean, h, momentum; write
//! mean, h, momentum and the sampled weight); the fused kernel also reads and writes the
//! sample's noise and reads the gradient once more for the NaN check, 44 bytes in all. A
//! copy moves 8 bytes per element.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use rayon::prelude::*;
use varlora::noise::PhiloxNormal;
use varlora::optim::{Ivon, IvonConfig};

fn setup(n: usize, dev: &Device) -> (Var, GradStore) {
    let var = Var::from_tensor(&Tensor::randn(0f32, 0.1, n, dev).unwrap()).unwrap();
    let mut grads = GradStore::default();
    grads.insert(var.as_tensor(), Tensor::randn(0f32, 1e-2, n, dev).unwrap());
    (var, grads)
}

/// AdamW and IVON (fused and tensor ops) on `dev`, each step synchronised.
fn optimizers(group: &mut BenchmarkGroup<'_, WallTime>, n: usize, dev: &Device) {
    group.bench_function(BenchmarkId::new("adamw", n), |b| {
        let (var, grads) = setup(n, dev);
        let mut opt = AdamW::new(vec![var], ParamsAdamW::default()).unwrap();
        b.iter(|| {
            opt.step(&grads).unwrap();
            dev.synchronize().unwrap();
        });
    });
    for (name, fused) in [("ivon_fused", true), ("ivon_tensor_ops", false)] {
        group.bench_function(BenchmarkId::new(name, n), |b| {
            let (var, grads) = setup(n, dev);
            let config = IvonConfig::new(0.1, 1e4).hess_init(0.5).fused(fused);
            let mut opt = Ivon::new(vec![var], config).unwrap();
            b.iter(|| {
                opt.step(&grads).unwrap();
                dev.synchronize().unwrap();
            });
        });
    }
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
        group.bench_function(BenchmarkId::new("memcpy_all_cores", n), |b| {
            let src = vec![1f32; n];
            let mut dst = vec![0f32; n];
            let chunk = n.div_ceil(rayon::current_num_threads()).max(1 << 14);
            b.iter(|| {
                dst.par_chunks_mut(chunk)
                    .zip(std::hint::black_box(&src).par_chunks(chunk))
                    .for_each(|(d, s)| d.copy_from_slice(s));
                std::hint::black_box(&mut dst);
            });
        });
        optimizers(&mut group, n, &Device::Cpu);
    }
    group.finish();
}

/// Where the fused step's time goes, on one thread and data that stay in cache (3e4
/// parameters, about 0.8 MB): the whole step, and the Gaussian draws alone
/// (`PhiloxNormal::fill`, the generator the kernel runs, plus a copy out of registers).
/// The difference is the update's own arithmetic.
fn in_cache(c: &mut Criterion) {
    // Below one thread task's 32768 elements the kernel runs on the calling thread.
    let n = 30_000;
    let mut group = c.benchmark_group("optimizer_step_in_cache");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(BenchmarkId::new("ivon_fused_one_thread", n), |b| {
        let (var, grads) = setup(n, &Device::Cpu);
        let mut opt = Ivon::new(vec![var], IvonConfig::new(0.1, 1e4).hess_init(0.5)).unwrap();
        b.iter(|| opt.step(&grads).unwrap());
    });
    group.bench_function(BenchmarkId::new("philox_normal_fill", n), |b| {
        let mut noise = PhiloxNormal::new(0);
        let mut z = vec![0f32; n];
        b.iter(|| noise.fill(std::hint::black_box(&mut z)));
    });
    group.finish();
}

/// The same on GPU 0; the floor is a device-to-device copy of the parameters.
#[cfg(feature = "cuda")]
fn optimizer_step_cuda(c: &mut Criterion) {
    let dev = match Device::new_cuda(0) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("no CUDA device, the cuda benchmarks are skipped: {e}");
            return;
        }
    };
    let mut group = c.benchmark_group("optimizer_step_cuda");
    for n in [100_000usize, 1_000_000, 10_000_000, 100_000_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("dtod_copy", n), |b| {
            let src = Tensor::zeros(n, candle_core::DType::F32, &dev).unwrap();
            let dst = Tensor::zeros(n, candle_core::DType::F32, &dev).unwrap();
            b.iter(|| {
                dst.slice_set(&src, 0, 0).unwrap();
                dev.synchronize().unwrap();
            });
        });
        optimizers(&mut group, n, &dev);
    }
    group.finish();
}

#[cfg(feature = "cuda")]
criterion_group!(benches, optimizer_step, in_cache, optimizer_step_cuda);
#[cfg(not(feature = "cuda"))]
criterion_group!(benches, optimizer_step, in_cache);
criterion_main!(benches);
