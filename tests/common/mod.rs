//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};

use candle_core::{DType, Device, Tensor};
use varlora::noise::NoiseSource;

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

/// The largest absolute elementwise difference of two f32 tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}
