//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};

use candle_core::{DType, Device, Tensor};
use varlora::noise::NoiseSource;

pub mod tiny_bert;
pub mod tiny_decoder;

/// Seeded standard-normal draws of `shape`, times `std` (candle's `Tensor::randn` is
/// unseeded on the CPU).
pub fn randn(seed: u64, std: f64, shape: &[usize], dtype: DType) -> Tensor {
    let n = shape.iter().product();
    let z = varlora::noise::PhiloxNormal::new(seed)
        .standard_normal(n, dtype, &Device::Cpu)
        .unwrap();
    (z.reshape(shape).unwrap() * std).unwrap()
}

/// Sets every LoRA `B` in `varmap` (zero at init), in the order of their names, to
/// N(0, std^2) draws seeded `first_seed`, `first_seed + 1`, ...: adapters that move the
/// output, so that a check of them can fail.
pub fn randomize_lora_b(varmap: &candle_nn::VarMap, first_seed: u64, std: f64, dtype: DType) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().filter(|k| k.ends_with("lora_b")).collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        var.set(&randn(first_seed + i as u64, std, var.dims(), dtype))
            .unwrap();
    }
}

/// Replays recorded standard-normal draws in order; zeros once they run out.
pub struct ReplayNoise {
    pub draws: VecDeque<Tensor>,
}

impl NoiseSource for ReplayNoise {
    fn standard_normal(
        &mut self,
        numel: usize,
        dtype: DType,
        device: &Device,
    ) -> varlora::Result<Tensor> {
        match self.draws.pop_front() {
            Some(z) => {
                assert_eq!(z.dims(), &[numel], "replayed draw has the wrong size");
                Ok(z.to_dtype(dtype)?.to_device(device)?)
            }
            None => Ok(Tensor::zeros(numel, dtype, device)?),
        }
    }
}

/// A recorded reference trajectory (see tools/reference/record_ivon.py).
pub struct Fixture {
    pub name: String,
    pub config: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = format!(
            "{}/tests/fixtures/ivon/{name}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let config = meta.metadata().as_ref().unwrap()["config"].clone();
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        Fixture {
            name: name.into(),
            config: serde_json::from_str(&config).unwrap(),
            tensors,
        }
    }

    pub fn get(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor {key}", self.name))
    }

    pub fn vec(&self, key: &str) -> Vec<f32> {
        self.get(key).to_vec1().unwrap()
    }
}

pub const FIXTURES: [&str; 4] = [
    "price_mc1_debias_rescale",
    "price_mc3_clip_nodebias",
    "gradsq_mc3_clip_wd0",
    "gradsq_mc1_rescale_nodebias",
];

/// Distance in units in the last place between two f32 values (0 for equal values).
pub fn ulps(a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            i32::MIN - i
        } else {
            i
        }
    };
    (key(a) as i64 - key(b) as i64).unsigned_abs() as u32
}

/// Flattens each tensor and concatenates them.
pub fn flat(ts: &[Tensor]) -> Vec<f32> {
    ts.iter()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

/// The largest absolute value of an f32 tensor.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// The largest absolute elementwise difference of two f32 tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// `n` values uniform in [-scale, scale], with exact zeros of both signs every 97
/// elements (the signed-zero cases of the fused kernels).
pub fn signed_values(rng: &mut rand::rngs::StdRng, n: usize, scale: f32) -> Vec<f32> {
    use rand::Rng;
    (0..n)
        .map(|i| match i % 97 {
            0 => 0.0,
            1 => -0.0,
            _ => scale * (rng.random::<f32>() * 2.0 - 1.0),
        })
        .collect()
}

/// Runs `steps` IVON steps on `dev` over two groups of vars of the given sizes (the second
/// with its own lr, weight decay and beta1), on seeded values and gradients. Returns the
/// bits of every var, mean, `h`, momentum and noise, and the number of fused steps.
pub fn ivon_trajectory(
    config: &varlora::optim::IvonConfig,
    groups: [&[usize]; 2],
    dev: &Device,
    fused: bool,
    steps: usize,
) -> (Vec<Vec<u32>>, u64) {
    use candle_core::backprop::GradStore;
    use candle_core::Var;
    use rand::SeedableRng;
    use varlora::optim::{Ivon, ParamGroup};

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut param_groups = Vec::new();
    let mut vars = Vec::new();
    for (gi, sizes) in groups.iter().enumerate() {
        let vs: Vec<Var> = sizes
            .iter()
            .map(|&n| Var::from_vec(signed_values(&mut rng, n, 0.5), n, dev).unwrap())
            .collect();
        let group = ParamGroup::new(vs.clone());
        param_groups.push(if gi == 1 {
            group.lr(0.03).weight_decay(0.0).beta1(0.7)
        } else {
            group
        });
        vars.extend(vs);
    }
    let mut opt = Ivon::with_groups(param_groups, config.clone().fused(fused)).unwrap();
    for _ in 0..steps {
        let mut grads = GradStore::default();
        for v in &vars {
            let g = signed_values(&mut rng, v.elem_count(), 2.0);
            grads.insert(v.as_tensor(), Tensor::from_vec(g, v.shape(), dev).unwrap());
        }
        opt.try_step(&grads).unwrap();
    }
    let mut out = Vec::new();
    for gi in 0..opt.num_groups() {
        for p in opt.group_params(gi).unwrap() {
            for t in [
                p.var().as_tensor().clone(),
                p.mean().unwrap(),
                p.hess().unwrap(),
                p.momentum().unwrap(),
                p.noise().unwrap().unwrap(),
            ] {
                let v = t.to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
                out.push(v.iter().map(|x| x.to_bits()).collect());
            }
        }
    }
    (out, opt.fused_steps())
}

/// The settings the fused kernels are checked under: price with debiasing and lr
/// rescaling, no clip.
pub fn price_debias_rescale_no_clip() -> varlora::optim::IvonConfig {
    varlora::optim::IvonConfig::new(0.1, 500.0)
        .hess_init(0.3)
        .seed(1)
}

/// Price with a clip and weight decay, without debiasing or lr rescaling.
pub fn price_clip_no_debias_no_rescale() -> varlora::optim::IvonConfig {
    varlora::optim::IvonConfig::new(0.05, 2000.0)
        .hess_init(0.2)
        .weight_decay(2e-4)
        .clip_radius(1e-3)
        .debias(false)
        .rescale_lr(false)
        .seed(2)
}

/// The gradsq estimator with a clip and no weight decay.
pub fn gradsq_clip_wd0() -> varlora::optim::IvonConfig {
    varlora::optim::IvonConfig::new(0.2, 800.0)
        .hess_approx(varlora::optim::HessApprox::Gradsq)
        .weight_decay(0.0)
        .clip_radius(0.05)
        .beta2(0.999)
        .seed(3)
}

/// Each of `strings` tokenizes with `tokenizer` (no special tokens added) to the ids that
/// both `references["transformers"]` and `references["tokenizers"]` recorded for it.
pub fn assert_same_ids(
    tokenizer: &tokenizers::Tokenizer,
    strings: &[serde_json::Value],
    references: &serde_json::Value,
    what: &str,
) {
    for (i, s) in strings.iter().enumerate() {
        let s = s.as_str().unwrap();
        let ours: Vec<u64> = tokenizer
            .encode(s, false)
            .unwrap()
            .get_ids()
            .iter()
            .map(|&id| u64::from(id))
            .collect();
        for reference in ["transformers", "tokenizers"] {
            let theirs: Vec<u64> =
                serde_json::from_value(references[reference][i].clone()).unwrap();
            assert_eq!(ours, theirs, "{what}, {s:?}: ours against {reference}'s");
        }
    }
}
