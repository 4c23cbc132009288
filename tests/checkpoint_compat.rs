//! Checkpoints written by an earlier varlora still load and continue as they would have:
//! the fixtures are an IVON and a BLoB run saved at step k and at step k + 1 by the code
//! before the optimizer shell (commit 79f87cb). Loading the first and taking one step must
//! give the second's vars and state, bit for bit.
//!
//! To record them again (only when a format changes on purpose, with a new version):
//! `VARLORA_RECORD=1 cargo test --test checkpoint_compat -- --ignored`.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{loss, Linear, Optimizer, VarBuilder, VarMap};
use varlora::lora::{BayesianLoraLinear, BlobConfig, BlobSampler, LoraConfig};
use varlora::optim::{Blob, BlobOptimConfig, Ivon, IvonConfig, ParamGroup};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/checkpoints/{name}"))
}

fn bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    v.iter().map(|x| x.to_bits()).collect()
}

/// IVON with two samples per update over two named vars, and its loss.
struct IvonRun {
    vars: Vec<Var>,
    opt: Ivon,
}

impl IvonRun {
    fn new() -> Self {
        let vars = vec![
            Var::from_tensor(&common::randn(1, 1.0, &[3, 2], DType::F32)).unwrap(),
            Var::from_tensor(&common::randn(2, 1.0, &[4], DType::F32)).unwrap(),
        ];
        let group = ParamGroup::named([
            ("a".to_string(), vars[0].clone()),
            ("b".into(), vars[1].clone()),
        ]);
        let config = IvonConfig::new(0.1, 100.0).mc_samples(2).seed(5);
        let opt = Ivon::with_groups(vec![group], config).unwrap();
        Self { vars, opt }
    }

    fn step(&mut self) {
        let x = Tensor::new(&[1f32, -2.], &Device::Cpu).unwrap();
        let a = self.vars[0]
            .as_tensor()
            .matmul(&x.unsqueeze(1).unwrap())
            .unwrap();
        let loss = (a.sqr().unwrap().sum_all().unwrap()
            + self.vars[1].as_tensor().sin().unwrap().sum_all().unwrap())
        .unwrap();
        self.opt.backward_step(&loss).unwrap();
    }

    /// The vars and every var's mean, Hessian and momentum.
    fn state(&self) -> Vec<Vec<u32>> {
        let mut out: Vec<_> = self.vars.iter().map(|v| bits(v.as_tensor())).collect();
        for p in self.opt.group_params(0).unwrap() {
            for t in [p.mean().unwrap(), p.hess().unwrap(), p.momentum().unwrap()] {
                out.push(bits(&t));
            }
        }
        out
    }
}

/// A BLoB layer and head trained by `Blob`, with its sampler.
struct BlobRun {
    layer: BayesianLoraLinear,
    varmap: VarMap,
    opt: Blob,
}

impl BlobRun {
    fn new() -> Self {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let sampler = BlobSampler::new(3);
        let base = Linear::new(common::randn(4, 0.5, &[3, 5], DType::F32), None);
        let config = BlobConfig::new(LoraConfig::new(2));
        let layer = BayesianLoraLinear::new(base, config, vb.pp("fc"), &sampler).unwrap();
        let opt = Blob::new(
            Self::sorted(&varmap),
            vec![layer.posterior_vars().unwrap()],
            BlobOptimConfig::new(64, 8).lr(1e-2).kl_lr(1e-2),
        )
        .unwrap();
        Self { layer, varmap, opt }
    }

    fn sorted(varmap: &VarMap) -> Vec<Var> {
        let data = varmap.data().lock().unwrap();
        let mut named: Vec<_> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    fn step(&mut self) {
        let x = common::randn(6, 1.0, &[4, 5], DType::F32);
        let y = Tensor::new(&[0u32, 2, 1, 2], &Device::Cpu).unwrap();
        let logits = self.layer.forward_t(&x, true).unwrap();
        self.opt
            .backward_step(&loss::cross_entropy(&logits, &y).unwrap())
            .unwrap();
    }

    fn state(&self) -> Vec<Vec<u32>> {
        Self::sorted(&self.varmap)
            .iter()
            .map(|v| bits(v.as_tensor()))
            .collect()
    }
}

#[test]
#[ignore = "records the fixtures: run with VARLORA_RECORD=1 only when a format changes"]
fn record() {
    assert!(
        std::env::var_os("VARLORA_RECORD").is_some(),
        "set VARLORA_RECORD=1"
    );
    std::fs::create_dir_all(fixture("")).unwrap();
    let mut ivon = IvonRun::new();
    for name in ["ivon-k.safetensors", "ivon-k1.safetensors"] {
        // Three calls of two samples per update: the first file stands mid-update.
        ivon.step();
        ivon.step();
        ivon.step();
        ivon.opt.save(fixture(name)).unwrap();
    }
    let mut blob = BlobRun::new();
    for name in ["blob-k.safetensors", "blob-k1.safetensors"] {
        blob.step();
        blob.step();
        blob.opt.save(fixture(name)).unwrap();
    }
}

#[test]
fn an_earlier_ivon_checkpoint_loads_and_continues_as_it_would_have() {
    let mut resumed = IvonRun::new();
    resumed
        .opt
        .load_state(fixture("ivon-k.safetensors"))
        .unwrap();
    for _ in 0..3 {
        resumed.step();
    }
    let mut later = IvonRun::new();
    later
        .opt
        .load_state(fixture("ivon-k1.safetensors"))
        .unwrap();
    assert_eq!(resumed.opt.step_count(), later.opt.step_count());
    assert_eq!(resumed.state(), later.state());
}

#[test]
fn an_earlier_blob_checkpoint_loads_and_continues_as_it_would_have() {
    let mut resumed = BlobRun::new();
    resumed
        .opt
        .load_state(fixture("blob-k.safetensors"))
        .unwrap();
    resumed.step();
    resumed.step();
    let mut later = BlobRun::new();
    later
        .opt
        .load_state(fixture("blob-k1.safetensors"))
        .unwrap();
    assert_eq!(resumed.opt.step_count(), 4);
    assert_eq!(resumed.state(), later.state());
}
