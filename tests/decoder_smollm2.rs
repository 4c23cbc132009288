//! The real SmolLM2-135M-Instruct, read from its Q4_1 GGUF and dequantized, against
//! transformers loading the same file (tools/reference/record_smollm2.py): the prompts
//! left-padded into one batch give each prompt's last-position logits as transformers
//! computes them one prompt at a time.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp};
use varlora::models::GgufDecoder;

/// The repository's root and the SmolLM2 GGUF's path in it, which must be there.
fn smollm2() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "no {}: run bash scripts/fetch-assets.sh --llm",
        path.display()
    );
    (root, path)
}

/// Every last-position logit within 1e-3 of the largest, and the same top token, on
/// every prompt.
#[test]
#[ignore = "needs the real SmolLM2: bash scripts/fetch-assets.sh --llm, then \
            cargo test --test decoder_smollm2 -- --ignored"]
fn smollm2_gguf_matches_transformers() {
    against_transformers(DType::F32, 1e-3);
}

/// With the base stored in bf16 (half the memory), the same top token on every prompt,
/// and every last-position logit within 1e-2 of the largest: the cost of rounding each
/// dequantized weight to bf16's 8 bits of mantissa.
#[test]
#[ignore = "needs the real SmolLM2: bash scripts/fetch-assets.sh --llm, then \
            cargo test --test decoder_smollm2 -- --ignored"]
fn smollm2_in_bf16_keeps_transformers_top_tokens() {
    against_transformers(DType::BF16, 1e-2);
}

/// SmolLM2 read with its base in `dtype`, against transformers' f32 logits: the same top
/// token on every prompt, and every last-position logit within `tol` of the largest.
fn against_transformers(dtype: DType, tol: f32) {
    let (root, path) = smollm2();
    let dev = Device::Cpu;
    let gguf = GgufDecoder::read_as(&path, dtype, &dev).unwrap();
    assert_eq!(
        (
            gguf.config.num_hidden_layers,
            gguf.config.kv_heads(),
            gguf.config.head_dim()
        ),
        (30, 3, 64)
    );
    assert!(gguf.config.tie_word_embeddings);
    let model = common::tiny_decoder::without_adapters(gguf, dtype);
    let fixture = root.join("tests/fixtures/decoder/smollm2/expected.safetensors");
    let t = candle_core::safetensors::load(fixture, &dev).unwrap();
    let ids = t["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = t["attention_mask"].to_dtype(DType::U32).unwrap();
    let theirs = &t["last_logits"];
    let logits = model.logits(&ids, &mask, false).unwrap();
    let len = ids.dim(1).unwrap();
    for p in 0..ids.dim(0).unwrap() {
        let ours: Vec<f32> = logits.i((p, len - 1)).unwrap().to_vec1().unwrap();
        let expected: Vec<f32> = theirs.i(p).unwrap().to_vec1().unwrap();
        let top = |v: &[f32]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        let diff = ours
            .iter()
            .zip(&expected)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{dtype:?} base, prompt {p}: top token {} (transformers {}), largest difference \
             {diff:e} of {scale}",
            top(&ours),
            top(&expected)
        );
        assert_eq!(top(&ours), top(&expected), "prompt {p}: another top token");
        assert!(
            diff <= tol * scale,
            "prompt {p}: {diff} against the largest {scale}"
        );
    }
}

/// The tokenizer from the GGUF file's metadata splits each string as transformers'
/// tokenizer from the same file and the `tokenizers` package built from its vocabulary,
/// merges and SmolLM2's pre-tokenizer do (tools/reference/record_gguf_tokenizer.py):
/// digits one by one, no prefix space, chat tokens whole.
#[test]
#[ignore = "needs the real SmolLM2: bash scripts/fetch-assets.sh --llm, then \
            cargo test --test decoder_smollm2 -- --ignored"]
fn smollm2_tokenizer_matches_transformers_and_tokenizers() {
    let (root, path) = smollm2();
    let tokenizer = varlora::models::gguf_tokenizer(&path).unwrap();
    let fixture = root.join("tests/fixtures/decoder/smollm2/tokenizer.json");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let strings = record["strings"].as_array().unwrap();
    common::assert_same_ids(&tokenizer, strings, &record, "SmolLM2");
}

/// On the real model and tokenizer, the cloze head's packed questions (each question's
/// tokens once, its choices beside each other) give the log-likelihoods of the choices'
/// sequences one by one, within 1e-5 of the largest: ARC-like questions of four short
/// choices, and PIQA-like ones of two long ones.
#[test]
#[ignore = "needs the real SmolLM2: bash scripts/fetch-assets.sh --llm, then \
            cargo test --test decoder_smollm2 -- --ignored"]
fn smollm2_packed_cloze_equals_one_sequence_per_choice() {
    use varlora::models::{gguf_tokenizer, ClozeBatch};
    let (_, path) = smollm2();
    let dev = Device::Cpu;
    let model =
        common::tiny_decoder::without_adapters(GgufDecoder::read(&path, &dev).unwrap(), DType::F32);
    let tokenizer = gguf_tokenizer(&path).unwrap();
    let arc: [(&str, &[&str]); 2] = [
        (
            "Question: Which gas do plants take in from the air to make food?\nAnswer:",
            &[" oxygen", " carbon dioxide", " nitrogen", " helium"],
        ),
        (
            "Question: What is the freezing point of water at sea level?\nAnswer:",
            &[
                " 0 degrees Celsius",
                " 50 degrees Celsius",
                " 100 degrees",
                " -40",
            ],
        ),
    ];
    let piqa: [(&str, &[&str]); 2] = [
        (
            "Question: How do I keep bread fresh for longer?\nAnswer:",
            &[
                " Store it in a sealed bag at room temperature, away from sunlight.",
                " Leave it uncovered on the counter next to the stove.",
            ],
        ),
        (
            "Question: To open a jar with a stuck lid,\nAnswer:",
            &[
                " run the lid under hot water for a minute, then twist.",
                " put the jar in the freezer overnight.",
            ],
        ),
    ];
    for questions in [&arc[..], &piqa[..]] {
        let b = ClozeBatch::encode(&tokenizer, questions, 0, &dev).unwrap();
        let packed = model.cloze_logits(&b, false).unwrap();
        let single = model
            .choice_log_likelihoods(&b.ids, &b.mask, &b.choice_lens, false)
            .unwrap()
            .reshape(packed.dims())
            .unwrap();
        let err = common::max_abs_diff(&packed, &single) / common::max_abs(&single);
        eprintln!("packed against one sequence per choice: {err:e} of the largest");
        assert!(err < 1e-5, "relative difference {err:e}");
    }
}
