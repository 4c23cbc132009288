//! AdamW versus IVON on a small MLP over the digits data (8x8 handwritten digits, 10
//! classes), from the same initialisation and the same batches. The training loop is
//! plain candle; the optimizer line is the only difference.
//!
//! `cargo run --release --example quickstart`

use std::io::Read;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{linear, loss, ops, Linear, Module, Optimizer, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};
use varlora::metrics;
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::{predictive, predictive_at_point};

const EPOCHS: usize = 40;
const BATCH: usize = 32;
const TEST: usize = 500;
const MC_SAMPLES: usize = 32;
const SEED: u64 = 0;

/// The digits data bundled with scikit-learn (UCI, CC BY 4.0); see data/README.md.
fn digits(dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(&include_bytes!("../data/digits.csv.gz")[..])
        .read_to_string(&mut text)?;
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v = line
            .split(',')
            .map(|s| s.parse::<f32>().map_err(candle_core::Error::wrap))
            .collect::<candle_core::Result<Vec<f32>>>()?;
        if v.len() != 65 {
            candle_core::bail!("digits row with {} fields, expected 65", v.len());
        }
        xs.extend(v[..64].iter().map(|p| p / 16.0));
        ys.push(v[64] as u32);
    }
    let n = ys.len();
    Ok((
        Tensor::from_vec(xs, (n, 64), dev)?,
        Tensor::from_vec(ys, n, dev)?,
    ))
}

struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            fc1: linear(64, 64, vb.pp("fc1"))?,
            fc2: linear(64, 10, vb.pp("fc2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.relu()?)
    }
}

/// Trains with any candle optimizer and returns the mean time of a training step and of
/// the optimizer's part of it.
fn train<O: Optimizer>(
    model: &Mlp,
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
    let (x, y) = digits(&dev)?;
    let n = y.dim(0)?;
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut rng);
    let take = |ids: &[u32]| -> candle_core::Result<(Tensor, Tensor)> {
        let ids = Tensor::new(ids, &dev)?;
        Ok((x.index_select(&ids, 0)?, y.index_select(&ids, 0)?))
    };
    let (x_test, y_test) = take(&order[..TEST])?;
    let train_ids = &order[TEST..];
    let mut batches = Vec::new();
    for _ in 0..EPOCHS {
        let mut ids = train_ids.to_vec();
        ids.shuffle(&mut rng);
        for chunk in ids.chunks_exact(BATCH) {
            batches.push(take(chunk)?);
        }
    }

    // Two copies of one seeded initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as in
    // PyTorch (fan_in is 64 for both layers).
    let (adamw_vars, ivon_vars) = (VarMap::new(), VarMap::new());
    let adamw_model = Mlp::new(VarBuilder::from_varmap(&adamw_vars, DType::F32, &dev))?;
    let ivon_model = Mlp::new(VarBuilder::from_varmap(&ivon_vars, DType::F32, &dev))?;
    let init = Uniform::new(-0.125f32, 0.125)?;
    for varmap in [&adamw_vars, &ivon_vars] {
        let mut rng = StdRng::seed_from_u64(SEED);
        let vars = varmap.data().lock().map_err(|_| "poisoned")?;
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for name in names {
            let var = &vars[name];
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| init.sample(&mut rng))
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &dev)?)?;
        }
    }

    // Learning rates and hess_init chosen by validation NLL on 200 training examples held
    // out, averaged over 3 seeds (see README).
    let mut adamw = candle_nn::AdamW::new_lr(adamw_vars.all_vars(), 3e-2)?;
    let config = IvonConfig::new(1.0, train_ids.len() as f64)
        .hess_init(1.0)
        .weight_decay(2e-4);
    let mut ivon = Ivon::from_varmap(&ivon_vars, config)?;

    let adamw_time = train(&adamw_model, &mut adamw, &batches)?;
    let ivon_time = train(&ivon_model, &mut ivon, &batches)?;

    let adamw_logp = ops::log_softmax(&adamw_model.forward(&x_test)?, D::Minus1)?;
    let forward = || ivon_model.forward(&x_test);
    let ivon_mean_logp = predictive_at_point(&mut ivon, forward)?.log_probs;
    let ivon_mc_logp = predictive(&mut ivon, MC_SAMPLES, false, forward)?.log_probs;

    println!(
        "digits: {} train / {TEST} test, MLP 64-64-10, {EPOCHS} epochs of batch {BATCH} ({} steps)\n",
        train_ids.len(),
        batches.len()
    );
    println!("| model            |  accuracy |    NLL | ECE-15 |  Brier |");
    println!("|------------------|-----------|--------|--------|--------|");
    println!("{}", row("AdamW", &adamw_logp, &y_test)?);
    println!("{}", row("IVON @ mean", &ivon_mean_logp, &y_test)?);
    println!(
        "{}",
        row(
            &format!("IVON {MC_SAMPLES} samples"),
            &ivon_mc_logp,
            &y_test
        )?
    );
    println!("\n| optimizer | training step | of which optimizer |");
    println!("|-----------|---------------|--------------------|");
    for (name, (step, opt)) in [("AdamW", adamw_time), ("IVON", ivon_time)] {
        println!(
            "| {name:<9} | {:>10.1} us | {:>15.1} us |",
            micros(step),
            micros(opt)
        );
    }
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
