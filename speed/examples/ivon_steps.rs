//! A fixed amount of IVON work: `STEPS` steps (fused by default) on one var of `N` f32,
//! with the optimizer_step bench's setup, and the mean time per step. Where timings cannot
//! tell two builds apart, the instructions it executes can:
//!
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/ivon_steps 1000000 50`
//!
//! `cargo run --release --example ivon_steps -- [N] [STEPS] [--unfused]` (defaults 1e6, 50)

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;
use varlora::optim::{Ivon, IvonConfig};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| -> Res<usize> {
        Ok(match args.iter().filter(|a| !a.starts_with("--")).nth(i) {
            Some(a) => a.parse()?,
            None => default,
        })
    };
    let (n, steps) = (number(0, 1_000_000)?, number(1, 50)?);
    let fused = !args.iter().any(|a| a == "--unfused");
    let dev = Device::Cpu;
    let var = Var::from_tensor(&Tensor::randn(0f32, 0.1, n, &dev)?)?;
    let grad = Tensor::randn(0f32, 1e-2, n, &dev)?;
    let mut grads = var.as_tensor().sum_all()?.backward()?;
    grads.insert(var.as_tensor(), grad);
    let config = IvonConfig::new(0.1, 1e4).hess_init(0.5).fused(fused);
    let mut opt = Ivon::new(vec![var], config)?;
    let start = Instant::now();
    for _ in 0..steps {
        opt.step(&grads)?;
    }
    let per_step = start.elapsed().as_secs_f64() / steps.max(1) as f64;
    println!(
        "{steps} {} IVON steps on {n} f32: {:.3} ms per step ({} fused)",
        if fused { "fused" } else { "unfused" },
        per_step * 1e3,
        opt.fused_steps()
    );
    Ok(())
}
