//! Data-parallel IVON on the digits MLP: 2 ranks (threads of one process, each with its
//! own model replica) each take half of every batch of 64 and draw their own weight
//! sample; before every update they average their gradient statistics over the thread
//! backend. Beside it, one process with `mc_samples` 2 over the same halves: the same
//! algorithm, which the ranks reproduce bit for bit when fed the same draws
//! (tests/ivon_sync.rs); here each rank draws from its own stream.
//!
//! `cargo run --release --example digits_data_parallel`

mod common;

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, Module, VarBuilder, VarMap};
use varlora::collective::{Collective, ThreadGroup};
use varlora::metrics;
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::predictive;

const EPOCHS: usize = 40;
const BATCH: usize = 64;
const TEST: usize = 500;
const SEED: u64 = 0;
const RANKS: usize = 2;

/// A freshly initialised MLP (the same on every call) and its vars.
fn replica(dev: &Device) -> candle_core::Result<(common::Mlp, VarMap)> {
    let vars = VarMap::new();
    let model = common::Mlp::new(VarBuilder::from_varmap(&vars, DType::F32, dev))?;
    common::seeded_init(&vars, 0.125, SEED, dev)?;
    Ok((model, vars))
}

fn config(n_train: usize, mc_samples: usize) -> IvonConfig {
    IvonConfig::new(1.0, n_train as f64)
        .hess_init(1.0)
        .weight_decay(2e-4)
        .mc_samples(mc_samples)
        .seed(SEED)
}

/// Part `k` of `parts` of a batch.
fn part(t: &Tensor, k: usize, parts: usize) -> candle_core::Result<Tensor> {
    let n = t.dim(0)? / parts;
    t.narrow(0, k * n, n)
}

/// Test log-probabilities of 32 posterior samples.
fn test_log_probs(opt: &mut Ivon, model: &common::Mlp, x: &Tensor) -> varlora::Result<Tensor> {
    Ok(predictive(opt, 32, false, || model.forward(x))?.log_probs)
}

fn row(name: &str, logp: &Tensor, y: &Tensor, ms: f64) -> varlora::Result<String> {
    let p = logp.exp()?;
    Ok(format!(
        "| {name:<34} | {:>7.2}% | {:.4} | {:.4} | {ms:>8.3} |",
        100.0 * metrics::accuracy(&p, y)?,
        metrics::nll(logp, y)?,
        metrics::ece(&p, y, 15)?,
    ))
}

/// One process, `RANKS` MC samples per update, sample k on part k of the batch: the test
/// log-probabilities and ms per update.
fn one_process(data: &common::Data) -> varlora::Result<(Tensor, f64)> {
    let (model, vars) = replica(&Device::Cpu)?;
    let mut opt = Ivon::from_varmap(&vars, config(data.n_train, RANKS))?;
    let start = Instant::now();
    for (x, y) in &data.batches {
        for k in 0..RANKS {
            let logits = model.forward(&part(x, k, RANKS)?)?;
            opt.try_step(&loss::cross_entropy(&logits, &part(y, k, RANKS)?)?.backward()?)?;
        }
    }
    let ms = 1e3 * start.elapsed().as_secs_f64() / data.batches.len() as f64;
    Ok((test_log_probs(&mut opt, &model, &data.x_test)?, ms))
}

/// Rank `c`'s training on its part of every batch, one sample each, statistics averaged
/// before each update; its test log-probabilities.
fn rank(c: varlora::collective::ThreadCollective, data: &common::Data) -> varlora::Result<Tensor> {
    let (model, vars) = replica(&Device::Cpu)?;
    let mut opt = Ivon::from_varmap(&vars, config(data.n_train, 1))?;
    let k = c.rank();
    opt.set_collective(Arc::new(c))?;
    for (x, y) in &data.batches {
        let logits = model.forward(&part(x, k, RANKS)?)?;
        let nll = loss::cross_entropy(&logits, &part(y, k, RANKS)?)?;
        opt.try_step(&nll.backward()?)?;
    }
    test_log_probs(&mut opt, &model, &data.x_test)
}

/// `RANKS` thread ranks: each rank's test log-probabilities, and ms per update.
fn data_parallel(data: &common::Data) -> varlora::Result<(Vec<Tensor>, f64)> {
    let ranks = ThreadGroup::new(RANKS)?.into_ranks();
    let start = Instant::now();
    let results: Vec<varlora::Result<Tensor>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .map(|c| s.spawn(move || rank(c, data)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank panicked"))
            .collect()
    });
    let ms = 1e3 * start.elapsed().as_secs_f64() / data.batches.len() as f64;
    Ok((results.into_iter().collect::<varlora::Result<_>>()?, ms))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data = common::load(TEST, EPOCHS, BATCH, SEED, &Device::Cpu)?;
    let (one, one_ms) = one_process(&data)?;
    let (parallel, parallel_ms) = data_parallel(&data)?;
    let same = (&parallel[0] - &parallel[1])?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    println!(
        "digits: {} train / {TEST} test, {EPOCHS} epochs of batch {BATCH} ({} updates), 32 test samples\n",
        data.n_train,
        data.batches.len()
    );
    println!("| run                                | accuracy |    NLL |    ECE | ms/update |");
    println!("|------------------------------------|----------|--------|--------|-----------|");
    let y = &data.y_test;
    println!("{}", row("1 process, mc_samples 2", &one, y, one_ms)?);
    let name = "2 thread ranks, 1 sample each";
    println!("{}", row(name, &parallel[0], y, parallel_ms)?);
    println!("\nthe ranks' test predictions differ by at most {same:e} (the same posterior)");
    Ok(())
}
