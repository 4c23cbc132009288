//! Seeded adapter initialisation: each adapter's tensors from the distribution of its
//! reference, the same seed giving the same values whatever candle drew, and errors where
//! there are no vars to set.

mod common;

use common::randn;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};
use varlora::ensemble::LoraEnsembleLinear;
use varlora::lora::{Adapter, BayesianLoraLinear, BlobConfig, BlobSampler, LoraConfig, LoraLinear};

const IN: usize = 300;
const OUT: usize = 40;
const RANK: usize = 8;

fn base() -> Linear {
    Linear::new(randn(1, 0.1, &[OUT, IN], DType::F32), None)
}

fn values(varmap: &VarMap, name: &str) -> Vec<f32> {
    let data = varmap.data().lock().unwrap();
    data[name].flatten_all().unwrap().to_vec1().unwrap()
}

/// Checks that `v` fills U(lo, hi): within the bounds, reaching near both ends, with the
/// uniform's mean and variance to five standard errors.
fn assert_uniform(name: &str, v: &[f32], lo: f64, hi: f64) {
    let n = v.len() as f64;
    let (min, max) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| {
        (a.min(f64::from(x)), b.max(f64::from(x)))
    });
    let width = hi - lo;
    assert!(
        min >= lo - 1e-7 && max <= hi + 1e-7,
        "{name}: [{min}, {max}] outside [{lo}, {hi}]"
    );
    assert!(
        min < lo + 0.01 * width && max > hi - 0.01 * width,
        "{name}: [{min}, {max}] too narrow"
    );
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    let (want_mean, want_var) = ((lo + hi) / 2.0, width * width / 12.0);
    assert!(
        (mean - want_mean).abs() < 5.0 * (want_var / n).sqrt(),
        "{name}: mean {mean}"
    );
    // The variance of (x - mean)^2 for a uniform is width^4 / 180.
    let se_var = (width.powi(4) / 180.0 / n).sqrt();
    assert!(
        (var - want_var).abs() < 5.0 * se_var,
        "{name}: variance {var} vs {want_var}"
    );
}

fn lora(varmap: &VarMap) -> LoraLinear {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
    LoraLinear::new(base(), LoraConfig::new(RANK), vb.pp("q")).unwrap()
}

#[test]
fn lora_a_is_kaiming_uniform_and_b_zero() {
    let varmap = VarMap::new();
    let layer = lora(&varmap);
    layer.init(3).unwrap();
    let bound = 1.0 / (IN as f64).sqrt();
    assert_uniform("lora_a", &values(&varmap, "q.lora_a"), -bound, bound);
    assert!(values(&varmap, "q.lora_b").iter().all(|&b| b == 0.0));
}

#[test]
fn blob_mean_std_and_b_follow_the_reference() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = BlobConfig::new(LoraConfig::new(RANK));
    let eps = config.bayes_eps;
    let layer = BayesianLoraLinear::new(base(), config, vb.pp("v"), &BlobSampler::new(0)).unwrap();
    // Whatever candle drew, init replaces it.
    varmap.data().lock().unwrap()["v.lora_b"]
        .set(&randn(4, 1.0, &[OUT, RANK], DType::F32))
        .unwrap();
    layer.init(5).unwrap();
    let bound = 1.0 / (IN as f64).sqrt();
    assert_uniform("M", &values(&varmap, "v.lora_a"), -bound, bound);
    assert_uniform("G", &values(&varmap, "v.lora_a_g"), eps / 2f64.sqrt(), eps);
    assert!(values(&varmap, "v.lora_b").iter().all(|&b| b == 0.0));
    // M and G are drawn from streams of their own: not the same draws rescaled.
    let (m, g) = (values(&varmap, "v.lora_a"), values(&varmap, "v.lora_a_g"));
    let rescaled = |x: f32| (f64::from(x) + bound) / (2.0 * bound);
    let same = m
        .iter()
        .zip(&g)
        .filter(|(&m, &g)| {
            (rescaled(m) - (f64::from(g) - eps / 2f64.sqrt()) / (eps - eps / 2f64.sqrt())).abs()
                < 1e-4
        })
        .count();
    assert!(same < m.len() / 100, "{same} of M's draws match G's");
}

#[test]
fn ensemble_members_are_xavier_uniform_with_gain_ten() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let layer = LoraEnsembleLinear::new(base(), 4, RANK, vb.pp("k")).unwrap();
    layer.init(1).unwrap();
    let bound = 10.0 * (6.0 / (IN + RANK) as f64).sqrt();
    let a = values(&varmap, "k.lora_a");
    assert_uniform("A", &a, -bound, bound);
    // The members' diversity comes from these draws: no two members alike.
    let per = RANK * IN;
    for (i, j) in [(0, 1), (1, 2), (2, 3), (0, 3)] {
        assert_ne!(a[i * per..(i + 1) * per], a[j * per..(j + 1) * per]);
    }
    assert!(values(&varmap, "k.lora_b").iter().all(|&b| b == 0.0));
}

/// Two layers built separately (candle draws differently each time) agree after init with
/// one seed, in either order of building; another seed or another name draws otherwise.
#[test]
fn the_same_seed_and_name_give_the_same_values() {
    let (first, second) = (VarMap::new(), VarMap::new());
    let (a, b) = (lora(&first), lora(&second));
    assert_ne!(values(&first, "q.lora_a"), values(&second, "q.lora_a"));
    b.init(42).unwrap();
    a.init(42).unwrap();
    assert_eq!(values(&first, "q.lora_a"), values(&second, "q.lora_a"));
    a.init(43).unwrap();
    assert_ne!(values(&first, "q.lora_a"), values(&second, "q.lora_a"));

    let other = VarMap::new();
    let vb = VarBuilder::from_varmap(&other, DType::F32, &Device::Cpu);
    let renamed = LoraLinear::new(base(), LoraConfig::new(RANK), vb.pp("v")).unwrap();
    renamed.init(42).unwrap();
    assert_ne!(values(&other, "v.lora_a"), values(&second, "q.lora_a"));
}

#[test]
fn init_without_vars_is_an_error_that_changes_nothing() {
    let varmap = VarMap::new();
    let layer = lora(&varmap);
    let before = values(&varmap, "q.lora_a");
    let detached = layer.detach();
    let err = Adapter::init(&detached, 0).unwrap_err();
    assert!(err.to_string().contains("VarMap"), "{err}");
    assert_eq!(values(&varmap, "q.lora_a"), before);

    let a = Tensor::zeros((RANK, IN), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((OUT, RANK), DType::F32, &Device::Cpu).unwrap();
    let loaded = LoraLinear::from_parts(base(), a, b, LoraConfig::new(RANK)).unwrap();
    assert!(loaded.init(0).is_err());

    let mut merged = lora(&VarMap::new());
    merged.merge().unwrap();
    assert!(
        merged.init(0).is_err(),
        "a merged layer would keep the old update"
    );
}
