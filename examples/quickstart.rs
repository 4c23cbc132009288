//! AdamW versus IVON on a small MLP over the digits data (8x8 handwritten digits, 10
//! classes), from the same initialisation and the same batches. The training loop is
//! plain candle; the optimizer line is the only difference.
//!
//! `cargo run --release --example quickstart`

mod common;

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{loss, ops, Module, Optimizer, VarBuilder, VarMap};
use varlora::metrics;
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{predictive, predictive_at_point};

const EPOCHS: usize = 40;
const BATCH: usize = 32;
const TEST: usize = 500;
const MC_SAMPLES: usize = 32;
const SEED: u64 = 0;

/// Trains with any candle optimizer and returns the mean time of a training step and of
/// the optimizer's part of it.
fn train<O: Optimizer>(
    model: &common::Mlp,
    opt: &mut O,
    batches: &[(Tensor, Tensor)],
) -> candle_core::Result<(Duration, Duration)> {
    let (mut total, mut in_opt) = (Duration::ZERO, Duration::ZERO);
    for (x, y) in batches {
        let start = Instant::now();
        let grads = loss::cross_entropy(&model.forward(x)?, y)?.backward()?;
        let before_opt = Instant::now();
        opt.step(&grads)?;
        in_opt += before_opt.elapsed();
        total += start.elapsed();
    }
    let n = batches.len() as u32;
    Ok((total / n, in_opt / n))
}

fn row(name: &str, logp: &Tensor, y: &Tensor) -> varlora::Result<String> {
    let p = logp.exp()?;
    Ok(format!(
        "| {name:<16} | {:>8.2}% | {:>6.4} | {:>6.4} | {:>6.4} |",
        100.0 * metrics::accuracy(&p, y)?,
        metrics::nll(logp, y)?,
        metrics::ece(&p, y, 15)?,
        metrics::brier(&p, y)?,
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let common::Data {
        x_test,
        y_test,
        batches,
        n_train,
    } = common::load(TEST, EPOCHS, BATCH, SEED, &dev)?;

    // Two copies of one seeded initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in
    // PyTorch (fan_in is 64 for both layers).
    let (adamw_vars, ivon_vars) = (VarMap::new(), VarMap::new());
    let adamw_model = common::Mlp::new(VarBuilder::from_varmap(&adamw_vars, DType::F32, &dev))?;
    let ivon_model = common::Mlp::new(VarBuilder::from_varmap(&ivon_vars, DType::F32, &dev))?;
    for varmap in [&adamw_vars, &ivon_vars] {
        common::seeded_init(varmap, 0.125, SEED, &dev)?;
    }

    // Learning rates and hess_init chosen by validation NLL on 200 training examples held
    // out, averaged over 3 seeds (see docs/benchmarks.md).
    let mut adamw = candle_nn::AdamW::new_lr(adamw_vars.all_vars(), 3e-2)?;
    let config = IvonConfig::new(1.0, n_train as f64)
        .hess_init(1.0)
        .weight_decay(2e-4);
    let mut ivon = Ivon::from_varmap(&ivon_vars, config)?;

    let adamw_time = train(&adamw_model, &mut adamw, &batches)?;
    let ivon_time = train(&ivon_model, &mut ivon, &batches)?;

    let adamw_logp = ops::log_softmax(&adamw_model.forward(&x_test)?, D::Minus1)?;
    let forward = || ivon_model.forward(&x_test);
    let ivon_mean_logp = predictive_at_point(&mut ivon, forward)?.log_probs;
    let ivon_mc_logp = predictive(&mut ivon, MC_SAMPLES, false, forward)?.log_probs;

    let predictions = [
        ("AdamW".to_string(), adamw_logp),
        ("IVON @ mean".to_string(), ivon_mean_logp),
        (format!("IVON {MC_SAMPLES} samples"), ivon_mc_logp),
    ];
    let times = [("AdamW", adamw_time), ("IVON", ivon_time)];
    print_tables((n_train, batches.len()), &predictions, &y_test, &times)
}

/// The metrics of each model's test log-probabilities, then each optimizer's step time.
fn print_tables(
    (n_train, steps): (usize, usize),
    predictions: &[(String, Tensor)],
    y: &Tensor,
    times: &[(&str, (Duration, Duration))],
) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "digits: {n_train} train / {TEST} test, MLP 64-64-10, {EPOCHS} epochs of batch {BATCH} ({steps} steps)\n"
    );
    println!("| model            |  accuracy |    NLL | ECE-15 |  Brier |");
    println!("|------------------|-----------|--------|--------|--------|");
    for (name, logp) in predictions {
        println!("{}", row(name, logp, y)?);
    }
    println!("\n| optimizer | training step | of which optimizer |");
    println!("|-----------|---------------|--------------------|");
    for (name, (step, opt)) in times {
        println!(
            "| {name:<9} | {:>10.1} us | {:>15.1} us |",
            micros(*step),
            micros(*opt)
        );
    }
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
