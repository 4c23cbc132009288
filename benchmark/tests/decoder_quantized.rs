//! The decoder on the real SmolLM2 against candle-transformers' `quantized_llama` at the
//! last position. That model keeps the weights quantized and quantizes its activations
//! for each matmul (to Q8_1), so the logits differ by more than rounding: the test asks for
//! the same top token on every prompt and reports the difference. It lives here, beside
//! the other check against candle-transformers, so that the core crate's builds need not
//! compile that crate.

#[path = "../../tests/common/mod.rs"]
mod common;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, IndexOp, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use varlora::models::GgufDecoder;

#[test]
#[ignore = "needs the real SmolLM2: bash scripts/fetch-assets.sh --llm, then \
            cargo test -p varlora-benchmark --test decoder_quantized -- --ignored"]
fn smollm2_matches_quantized_llama_top_tokens() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "no {}: run bash scripts/fetch-assets.sh --llm",
        path.display()
    );
    let dev = Device::Cpu;
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut theirs = ModelWeights::from_gguf(content, &mut file, &dev).unwrap();
    let gguf = GgufDecoder::read(&path, &dev).unwrap();
    let ours = common::tiny_decoder::without_adapters(gguf, DType::F32);
    // The prompts of tests/fixtures/decoder/smollm2, each on its own (no padding, which
    // quantized_llama does not take).
    let fixture = root.join("tests/fixtures/decoder/smollm2/expected.safetensors");
    let t = candle_core::safetensors::load(fixture, &dev).unwrap();
    let ids: Vec<Vec<u32>> = t["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mask: Vec<Vec<u32>> = t["attention_mask"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (p, (row, keep)) in ids.iter().zip(&mask).enumerate() {
        let real: Vec<u32> = row
            .iter()
            .zip(keep)
            .filter(|(_, &k)| k != 0)
            .map(|(&i, _)| i)
            .collect();
        let x = Tensor::new(real.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let q: Vec<f32> = theirs
            .forward(&x, 0)
            .unwrap()
            .i(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let all = ours.logits(&x, &x.ones_like().unwrap(), false).unwrap();
        let o: Vec<f32> = all.i((0, real.len() - 1)).unwrap().to_vec1().unwrap();
        let top = |v: &[f32]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        let scale = o.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = o
            .iter()
            .zip(&q)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "prompt {p}: top token {} (quantized_llama {}), largest difference {diff} of {scale}",
            top(&o),
            top(&q)
        );
        assert_eq!(top(&o), top(&q), "prompt {p}: another top token");
    }
}
