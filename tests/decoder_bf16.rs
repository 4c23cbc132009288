//! The decoder with its base stored in bf16: it computes, in f32, what the f32 model whose
//! weights are rounded to bf16 computes, forward and backward, on every architecture.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::tiny_decoder::{expected, fixture_dir};
use common::{max_abs, max_abs_diff};
use varlora::lora::{LoraConfig, TargetModules};
use varlora::models::{AdapterSpec, LlamaConfig, LlamaDecoder};

fn config(arch: &str) -> LlamaConfig {
    let text = std::fs::read_to_string(fixture_dir(arch).join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn weights(arch: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir(arch).join("model.safetensors"), &Device::Cpu)
        .unwrap()
}

/// The model over `base` stored in `dtype`, with seeded LoRA (B non-zero) on q and v.
fn model(arch: &str, base: HashMap<String, Tensor>, dtype: DType) -> (LlamaDecoder, VarMap) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let spec = AdapterSpec::Lora(LoraConfig::new(2).alpha(4.0));
    let model = LlamaDecoder::load(
        VarBuilder::from_tensors(base, dtype, &dev),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        &config(arch),
        Some(&spec),
        &TargetModules::new(["q_proj", "v_proj"]),
    )
    .unwrap();
    model.init(1).unwrap();
    common::randomize_lora_b(&varmap, 60, 0.2, DType::F32);
    (model, varmap)
}

/// The logits and the LoRA vars' gradients of a cross-entropy on the last position.
fn logits_and_grads(model: &LlamaDecoder, varmap: &VarMap, arch: &str) -> (Tensor, Vec<Tensor>) {
    let (ids, mask, _) = expected(arch);
    let logits = model.logits(&ids, &mask, false).unwrap();
    let last = logits
        .narrow(1, logits.dim(1).unwrap() - 1, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    let target = Tensor::new(&[3u32, 5], &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&last, &target).unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    let g = names
        .iter()
        .map(|n| grads.get(data[n].as_tensor()).unwrap().clone())
        .collect();
    (logits, g)
}

#[test]
fn a_bf16_base_computes_what_its_rounded_f32_weights_compute() {
    for arch in ["llama", "qwen2", "qwen3"] {
        let original = weights(arch);
        let rounded: HashMap<String, Tensor> = original
            .iter()
            .map(|(k, v)| {
                let r = v
                    .to_dtype(DType::BF16)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                (k.clone(), r)
            })
            .collect();
        let (half, half_vars) = model(arch, original.clone(), DType::BF16);
        assert_eq!(half.compute_dtype(), DType::F32);
        let (wide, wide_vars) = model(arch, rounded, DType::F32);
        let (hl, hg) = logits_and_grads(&half, &half_vars, arch);
        let (wl, wg) = logits_and_grads(&wide, &wide_vars, arch);
        assert_eq!(hl.dtype(), DType::F32);
        let err = max_abs_diff(&hl, &wl) / max_abs(&wl);
        eprintln!("{arch}: bf16 base against the rounded f32 model: logits {err:e}");
        assert!(err < 1e-5, "{arch}: logits differ by {err:e}");
        for (h, w) in hg.iter().zip(&wg) {
            let err = max_abs_diff(h, w) / max_abs(w);
            assert!(err < 1e-4, "{arch}: a gradient differs by {err:e}");
        }
        // Rounding the base moves the logits, so the two paths are not trivially one.
        let (full, _) = model(arch, original, DType::F32);
        let (fl, _) = logits_and_grads(&full, &VarMap::new(), arch);
        let rounding = max_abs_diff(&fl, &wl) / max_abs(&fl);
        eprintln!("{arch}: bf16 rounding of the base moves the logits by {rounding:e}");
        assert!(
            max_abs_diff(&fl, &wl) > 1e-6,
            "{arch}: bf16 rounding changed nothing"
        );
    }
}

#[test]
fn the_parameter_count_is_the_weight_files_count() {
    for arch in ["llama", "qwen2", "qwen3"] {
        let in_file: usize = weights(arch).values().map(|t| t.elem_count()).sum();
        assert_eq!(config(arch).parameter_count(), in_file as u64, "{arch}");
    }
}

#[test]
fn a_base_in_another_dtype_is_refused() {
    let err = LlamaDecoder::load(
        VarBuilder::from_tensors(weights("llama"), DType::F16, &Device::Cpu),
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu),
        &config("llama"),
        None,
        &TargetModules::new(Vec::<String>::new()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("bf16"), "{err}");
}
