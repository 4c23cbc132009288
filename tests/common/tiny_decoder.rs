//! The tiny decoders of `tests/fixtures/decoder/` (recorded by
//! `tools/reference/record_decoder.py`): transformers' models saved as safetensors, with
//! the logits transformers computed.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use varlora::lora::TargetModules;
use varlora::models::{AdapterSpec, GgufDecoder, LlamaConfig, LlamaDecoder};

/// The fixture folder of `arch` (`llama`, `qwen2`, `qwen3`).
pub fn fixture_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/decoder/{arch}"))
}

/// The model of `arch` in `dtype`, with `adapter` on `targets`, and its adapter vars.
pub fn load(
    arch: &str,
    dtype: DType,
    adapter: Option<&AdapterSpec>,
    targets: &[&str],
) -> (LlamaDecoder, VarMap) {
    let dir = fixture_dir(arch);
    let config: LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let dev = Device::Cpu;
    // SAFETY: the fixture is not modified while mapped.
    let base = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], dtype, &dev).unwrap()
    };
    let varmap = VarMap::new();
    let model = LlamaDecoder::load(
        base,
        VarBuilder::from_varmap(&varmap, dtype, &dev),
        &config,
        adapter.map(|a| a as _),
        &TargetModules::new(targets.iter().copied()),
    )
    .unwrap();
    model.init(0).unwrap();
    (model, varmap)
}

/// The decoder a GGUF file read into, its base stored in `dtype`, with no adapters.
pub fn without_adapters(gguf: GgufDecoder, dtype: DType) -> LlamaDecoder {
    let dev = Device::Cpu;
    LlamaDecoder::load(
        VarBuilder::from_tensors(gguf.tensors, dtype, &dev),
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev),
        &gguf.config,
        None,
        &TargetModules::new(Vec::<String>::new()),
    )
    .unwrap()
}

/// The recorded ids, mask (as u32) and transformers' logits.
pub fn expected(arch: &str) -> (Tensor, Tensor, Tensor) {
    let t = candle_core::safetensors::load(
        fixture_dir(arch).join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let u32_of = |k: &str| t[k].to_dtype(DType::U32).unwrap();
    (
        u32_of("input_ids"),
        u32_of("attention_mask"),
        t["logits"].clone(),
    )
}
