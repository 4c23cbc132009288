//! What the digits examples share: the data, a seeded split and a seeded initialisation.

use std::io::Read;

use candle_core::{Device, Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};

/// The digits data bundled with scikit-learn (UCI, CC BY 4.0; see data/README.md):
/// pixels scaled to [0, 1], `(1797, 64)`, and labels `(1797,)`.
fn digits(dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(&include_bytes!("../../data/digits.csv.gz")[..])
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

/// The examples' classifier: 64 pixels -> 64 (ReLU) -> 10 classes.
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// Its two layers, named `fc1` and `fc2` under `vb`.
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
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

/// The digits split by [`split`], as tensors: the test inputs and labels, the training
/// batches, and the number of training examples.
pub struct Data {
    pub x_test: Tensor,
    pub y_test: Tensor,
    pub batches: Vec<(Tensor, Tensor)>,
    pub n_train: usize,
}

/// Loads the digits and splits them as [`split`] does.
pub fn load(
    test: usize,
    epochs: usize,
    batch: usize,
    seed: u64,
    dev: &Device,
) -> candle_core::Result<Data> {
    let (x, y) = digits(dev)?;
    let (test_ids, train_ids, batch_ids) = split(y.dim(0)?, test, epochs, batch, seed);
    let take = |ids: &[u32]| -> candle_core::Result<(Tensor, Tensor)> {
        let ids = Tensor::new(ids, dev)?;
        Ok((x.index_select(&ids, 0)?, y.index_select(&ids, 0)?))
    };
    let (x_test, y_test) = take(&test_ids)?;
    let batches = batch_ids
        .iter()
        .map(|ids| take(ids))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Data {
        x_test,
        y_test,
        batches,
        n_train: train_ids.len(),
    })
}

/// A seeded split: `test` examples held out, then shuffled batches of `batch` over
/// `epochs` epochs of the rest. Returns (test ids, train ids, batches of train ids).
fn split(
    n: usize,
    test: usize,
    epochs: usize,
    batch: usize,
    seed: u64,
) -> (Vec<u32>, Vec<u32>, Vec<Vec<u32>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(&mut rng);
    let (test_ids, train_ids) = order.split_at(test);
    let mut batches = Vec::new();
    for _ in 0..epochs {
        let mut ids = train_ids.to_vec();
        ids.shuffle(&mut rng);
        batches.extend(ids.chunks_exact(batch).map(|c| c.to_vec()));
    }
    (test_ids.to_vec(), train_ids.to_vec(), batches)
}

/// Sets every var of `varmap`, in name order, to U(-bound, bound) draws from `seed`.
pub fn seeded_init(
    varmap: &VarMap,
    bound: f32,
    seed: u64,
    dev: &Device,
) -> candle_core::Result<()> {
    let init = Uniform::new(-bound, bound).map_err(candle_core::Error::wrap)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::msg("poisoned VarMap"))?;
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| init.sample(&mut rng))
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), dev)?)?;
    }
    Ok(())
}
