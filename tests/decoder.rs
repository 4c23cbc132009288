//! The Llama-family decoder against transformers' `LlamaForCausalLM`, `Qwen2ForCausalLM`
//! and `Qwen3ForCausalLM` on tiny random models saved as Hugging Face safetensors
//! (tools/reference/record_decoder.py), and its backward pass to the adapters against
//! finite differences.

mod common;

use common::tiny_decoder::{expected, fixture_dir, load, without_adapters};

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use varlora::lora::LoraConfig;
use varlora::models::{AdapterSpec, LlamaConfig, LlamaDecoder};

/// The largest difference at real (unpadded) positions, over the largest |logit| there.
fn relative_error(ours: &Tensor, theirs: &Tensor, mask: &Tensor) -> f32 {
    let keep: Vec<Vec<u32>> = mask.to_vec2().unwrap();
    let (mut diff, mut scale) = (0f32, 0f32);
    for (b, row) in keep.iter().enumerate() {
        for (t, &k) in row.iter().enumerate() {
            if k == 0 {
                continue;
            }
            let a: Vec<f32> = ours
                .i((b, t))
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            let e: Vec<f32> = theirs.i((b, t)).unwrap().to_vec1().unwrap();
            for (x, y) in a.iter().zip(&e) {
                diff = diff.max((x - y).abs());
                scale = scale.max(y.abs());
            }
        }
    }
    diff / scale
}

/// Every logit at a real position within 1e-5 of the largest, for each architecture:
/// tied embeddings and GQA (Llama), q/k/v biases and an untied output (Qwen2), per-head
/// q/k norms and a head width apart from hidden / heads (Qwen3).
#[test]
fn logits_match_transformers() {
    for arch in ["llama", "qwen2", "qwen3"] {
        let (model, _) = load(arch, DType::F32, None, &[]);
        let (ids, mask, theirs) = expected(arch);
        let ours = model.logits(&ids, &mask, false).unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let err = relative_error(&ours, &theirs, &mask);
        eprintln!("{arch}: largest logit difference / largest logit {err:e}");
        assert!(err < 1e-5, "{arch}: relative error {err}");
    }
}

/// Adapters as they start (LoRA's `B` zero) leave the model's logits as they were, and
/// land on the modules peft's `target_modules` names.
#[test]
fn inert_adapters_keep_the_logits_and_sit_on_their_targets() {
    let spec = AdapterSpec::Lora(LoraConfig::new(4).alpha(8.0));
    let (model, varmap) = load(
        "llama",
        DType::F32,
        Some(&spec),
        &["q_proj", "v_proj", "down_proj"],
    );
    let (ids, mask, theirs) = expected("llama");
    let ours = model.logits(&ids, &mask, false).unwrap();
    assert!(relative_error(&ours, &theirs, &mask) < 1e-5);
    assert_eq!(model.adapters().count(), 2 * 3);
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names.len(), 2 * 3 * 2);
    assert!(names.iter().all(|n| {
        n.starts_with("model.layers.")
            && (n.contains(".self_attn.q_proj.")
                || n.contains(".self_attn.v_proj.")
                || n.contains(".mlp.down_proj."))
    }));
}

/// The gradient of a loss of the logits with respect to every adapter var, by backprop in
/// f64 against central finite differences, on each architecture.
#[test]
fn adapter_gradients_match_finite_differences() {
    let spec = AdapterSpec::Lora(LoraConfig::new(2).alpha(4.0));
    for arch in ["llama", "qwen2", "qwen3"] {
        let (model, varmap) = load(
            arch,
            DType::F64,
            Some(&spec),
            &["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"],
        );
        let vars: HashMap<String, Var> = varmap.data().lock().unwrap().clone();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        // B starts at zero, where A's gradient vanishes: give every var a seeded value.
        for (i, name) in names.iter().enumerate() {
            let v = &vars[*name];
            v.set(&common::randn(i as u64, 0.3, v.dims(), DType::F64))
                .unwrap();
        }
        let (ids, mask, _) = expected(arch);
        let weights = common::randn(99, 1.0, &[2, 7, 40], DType::F64);
        // Only real positions count, so that the padding rows' meaningless values do not.
        let keep = mask.to_dtype(DType::F64).unwrap().unsqueeze(2).unwrap();
        let loss = |m: &LlamaDecoder| -> Tensor {
            let logits = m.logits(&ids, &mask, false).unwrap();
            (logits.broadcast_mul(&keep).unwrap() * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(&model).backward().unwrap();
        let mut worst = 0f64;
        for name in names {
            let var = &vars[name];
            let grad: Vec<f64> = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let values: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
            // Three entries of each var.
            for idx in [0, values.len() / 2, values.len() - 1] {
                // 1e-5, not smaller: at 1e-6 the rounding of the f64 loss (about 1e-16 of
                // it, over 2h) already reaches 1e-5 of a small gradient.
                let h = 1e-5;
                let at = |delta: f64| {
                    let mut moved = values.clone();
                    moved[idx] += delta;
                    var.set(&Tensor::from_vec(moved, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    let l = loss(&model).to_scalar::<f64>().unwrap();
                    var.set(&Tensor::from_vec(values.clone(), var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    l
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                let err = (grad[idx] - numeric).abs() / (1e-3 + numeric.abs());
                worst = worst.max(err);
                assert!(
                    err < 1e-5,
                    "{arch} {name}[{idx}]: backprop {} against {numeric}",
                    grad[idx]
                );
            }
        }
        eprintln!("{arch}: worst relative gradient error {worst:e}");
    }
}

/// Input the model cannot take is an error that names what is wrong.
#[test]
fn bad_input_is_a_typed_error() {
    let (model, _) = load("llama", DType::F32, None, &[]);
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 2, 40]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1]], &dev).unwrap();
    let err = model.logits(&ids, &mask, false).unwrap_err().to_string();
    assert!(err.contains("token id 40 is out of range"), "{err}");
    let err = model
        .logits(&ids, &mask.narrow(1, 0, 2).unwrap(), false)
        .unwrap_err();
    assert!(err.to_string().contains("mask of shape"), "{err}");
    let long = Tensor::zeros((1, 65), DType::U32, &dev).unwrap();
    let err = model
        .logits(&long, &long.ones_like().unwrap(), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("past the model's context of 64"), "{err}");

    let mut config: LlamaConfig = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("llama").join("config.json")).unwrap(),
    )
    .unwrap();
    config.num_key_value_heads = Some(3);
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("num_key_value_heads"));
    config.num_key_value_heads = Some(2);
    config.model_type = "mistral".into();
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("model_type"));
}

/// The tiny Llama written as llama.cpp's converter writes a GGUF (its names, q and k rows
/// permuted for llama.cpp's RoPE layout, f32 so that nothing is lost), read back.
fn write_tiny_gguf(path: &std::path::Path, arch: &str, truncate: usize) {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let dir = fixture_dir("llama");
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let permute = |w: &Tensor, heads: usize| {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((heads, 2, rows / heads / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    };
    let gguf_name = |hf: &str| -> String {
        let tail = |t: &str| match t {
            "input_layernorm.weight" => "attn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            other => panic!("{other}"),
        };
        match hf {
            "model.embed_tokens.weight" => "token_embd.weight".into(),
            "model.norm.weight" => "output_norm.weight".into(),
            _ => {
                let rest = hf.strip_prefix("model.layers.").unwrap();
                let (layer, t) = rest.split_once('.').unwrap();
                format!("blk.{layer}.{}", tail(t))
            }
        }
    };
    let mut tensors = Vec::new();
    for (name, w) in &weights {
        let w = if name.ends_with("q_proj.weight") {
            permute(w, 4)
        } else if name.ends_with("k_proj.weight") {
            permute(w, 2)
        } else {
            w.clone()
        };
        tensors.push((
            gguf_name(name),
            QTensor::quantize(&w, GgmlDType::F32).unwrap(),
        ));
    }
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.block_count"), Value::U32(2)),
        (format!("{arch}.embedding_length"), Value::U32(32)),
        (format!("{arch}.feed_forward_length"), Value::U32(40)),
        (format!("{arch}.attention.head_count"), Value::U32(4)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(2)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(100000.0)),
        (format!("{arch}.context_length"), Value::U32(64)),
        (format!("{arch}.vocab_size"), Value::U32(40)),
    ];
    let mut file = std::fs::File::create(path).unwrap();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - truncate as u64).unwrap();
}

/// A GGUF written as llama.cpp writes a Llama gives transformers' logits once read, and
/// files the reader cannot take are errors that say why.
#[test]
fn gguf_reads_back_to_transformers_logits_and_refuses_what_it_cannot_read() {
    let dir = std::env::temp_dir().join(format!("varlora-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    let dev = Device::Cpu;

    write_tiny_gguf(&path, "llama", 0);
    let gguf = varlora::models::GgufDecoder::read(&path, &dev).unwrap();
    assert!(gguf.config.tie_word_embeddings);
    let model = without_adapters(gguf, DType::F32);
    let (ids, mask, theirs) = expected("llama");
    let ours = model.logits(&ids, &mask, false).unwrap();
    assert!(relative_error(&ours, &theirs, &mask) < 1e-5);

    // Read as bf16, every tensor is stored so, and the model stays near the f32 one.
    let half = varlora::models::GgufDecoder::read_as(&path, DType::BF16, &dev).unwrap();
    assert!(half.tensors.values().all(|t| t.dtype() == DType::BF16));
    let model = without_adapters(half, DType::BF16);
    let err = relative_error(&model.logits(&ids, &mask, false).unwrap(), &theirs, &mask);
    assert!(err < 2e-2, "bf16 logits off by {err}");

    // It carries no tokenizer.
    let err = varlora::models::gguf_tokenizer(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no metadata `tokenizer.ggml.model`"), "{err}");

    write_tiny_gguf(&path, "gpt2", 0);
    let err = varlora::models::GgufDecoder::read(&path, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("architecture `gpt2` is not supported"),
        "{err}"
    );

    write_tiny_gguf(&path, "llama", 100);
    let err = varlora::models::GgufDecoder::read(&path, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tiny.gguf") && err.contains("remaining in file"),
        "{err}"
    );

    std::fs::write(&path, b"not a gguf file").unwrap();
    let err = varlora::models::GgufDecoder::read(&path, &dev)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a readable GGUF file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lettered head equals transformers' `logits[:, -1, answers]` and the cloze head the
/// summed log-softmax of transformers' logits at the choice tokens, on a tied (Llama) and
/// an untied (Qwen2) output matrix.
#[test]
fn multiple_choice_heads_match_transformers_logits() {
    use varlora::models::AnswerTokens;
    for arch in ["llama", "qwen2"] {
        let (model, _) = load(arch, DType::F32, None, &[]);
        let (ids, mask, theirs) = expected(arch);
        let answers = AnswerTokens::new(vec![5, 17, 3, 39]).unwrap();
        let ours = model.answer_logits(&ids, &mask, &answers, false).unwrap();
        let scale = common::max_abs(&theirs);
        for b in 0..2 {
            for (c, &id) in answers.ids().iter().enumerate() {
                let e = theirs
                    .i((b, 6, id as usize))
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let o = ours.i((b, c)).unwrap().to_scalar::<f32>().unwrap();
                assert!(
                    (o - e).abs() <= 1e-5 * scale,
                    "{arch} row {b} choice {c}: {o} against {e}"
                );
            }
        }

        let lens = [2usize, 3];
        let ours = model
            .choice_log_likelihoods(&ids, &mask, &lens, false)
            .unwrap();
        let ids_v: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        for (b, &k) in lens.iter().enumerate() {
            let mut expected = 0f64;
            for p in 7 - k..7 {
                let row: Vec<f32> = theirs.i((b, p - 1)).unwrap().to_vec1().unwrap();
                let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (x as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                expected += row[ids_v[b][p] as usize] as f64 - lse;
            }
            let o = ours.i(b).unwrap().to_scalar::<f32>().unwrap() as f64;
            assert!(
                (o - expected).abs() < 1e-4 * expected.abs().max(1.0),
                "{arch} row {b}: {o} against {expected}"
            );
        }
    }
    assert!(AnswerTokens::new(vec![4, 9, 4])
        .unwrap_err()
        .to_string()
        .contains("same token 4"));
    let (model, _) = load("llama", DType::F32, None, &[]);
    let (ids, mask, _) = expected("llama");
    // Row 1 has 4 real tokens: a choice of 4 leaves none before it.
    let err = model
        .choice_log_likelihoods(&ids, &mask, &[2, 4], false)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("sequence 1 has 4 tokens and a choice of 4"),
        "{err}"
    );
    let err = model
        .answer_logits(&ids, &mask, &AnswerTokens::new(vec![40]).unwrap(), false)
        .unwrap_err();
    assert!(
        err.to_string().contains("answer token 40 is out of range"),
        "{err}"
    );
    // Padding on the right would put a padding token in the last column.
    let right = Tensor::new(
        &[[1u32, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]],
        &Device::Cpu,
    )
    .unwrap();
    let answers = AnswerTokens::new(vec![5]).unwrap();
    let err = model
        .answer_logits(&ids, &right, &answers, false)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("sequence 1 is not padded on the left"),
        "{err}"
    );
    let err = model
        .choice_log_likelihoods(&ids, &right, &[1, 1], false)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("sequence 1 is not padded on the left"),
        "{err}"
    );
}

/// IVON's weight samples reach the decoder through its adapters: a sample's logits differ
/// from the mean's, and the mean's (B still zero) are the pretrained model's.
#[test]
fn ivon_samples_move_the_decoder_logits() {
    use varlora::optim::{Ivon, IvonConfig};
    let spec = AdapterSpec::Lora(LoraConfig::new(4).alpha(8.0));
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &["q_proj", "v_proj"]);
    let mut ivon = Ivon::from_varmap(&varmap, IvonConfig::new(0.03, 1e4)).unwrap();
    let (ids, mask, theirs) = expected("llama");
    let logits = || {
        model
            .logits(&ids, &mask, false)
            .map_err(candle_core::Error::wrap)
    };
    let mean = ivon.with_mean(logits).unwrap();
    let sample = ivon.with_sample(logits).unwrap();
    assert!(relative_error(&mean, &theirs, &mask) < 1e-5);
    let moved = relative_error(&sample, &theirs, &mask);
    eprintln!("a sample's logits differ from the mean's by {moved:e} of the largest");
    assert!(
        moved > 1e-3,
        "the sample left the logits as they were ({moved})"
    );
}

/// A tokenizer of whole words over a tiny vocabulary, for the cloze batch's layout.
fn word_tokenizer() -> tokenizers::Tokenizer {
    let json = r#"{"version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "?",
                  "vocab": {"?": 0, "pad": 1, "q": 2, "is": 3, "x": 4, "y": 5, "z": 6, "w": 7}}}"#;
    json.parse().unwrap()
}

/// Questions and their choices become one left-padded sequence per choice, question-major,
/// with each choice's token count; uneven choices and choices that do not follow their
/// prompt's tokens are errors.
#[test]
fn cloze_batch_lays_out_each_choice_after_its_question() {
    use varlora::models::ClozeBatch;
    let t = word_tokenizer();
    let qs: [(&str, &[&str]); 2] = [("q is", &[" x", " y z"]), ("q", &[" w", " x"])];
    let b = ClozeBatch::encode(&t, &qs, 1, &Device::Cpu).unwrap();
    let ids: Vec<Vec<u32>> = b.ids.to_vec2().unwrap();
    let mask: Vec<Vec<u32>> = b.mask.to_vec2().unwrap();
    assert_eq!(
        ids,
        [[1, 2, 3, 4], [2, 3, 5, 6], [1, 1, 2, 7], [1, 1, 2, 4]]
    );
    assert_eq!(
        mask,
        [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    );
    assert_eq!(
        (b.choice_lens.as_slice(), b.choices),
        (&[1, 2, 1, 1][..], 2)
    );

    let uneven: [(&str, &[&str]); 2] = [("q", &[" x", " y"]), ("q", &[" x"])];
    let err = ClozeBatch::encode(&t, &uneven, 1, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has 1 choices where the first question has 2"),
        "{err}"
    );
    // "is" glued to the prompt's last word changes the prompt's own last token.
    let glued: [(&str, &[&str]); 1] = [("q is", &["x"])];
    let err = ClozeBatch::encode(&t, &glued, 1, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not tokenize as the context's tokens"),
        "{err}"
    );

    // WinoGrande's layout: the choice fills the context, the same rest is scored.
    let rows = [("q x", " is y"), ("q w", " is y")];
    let b = ClozeBatch::encode_pairs(&t, &rows, 2, 1, &Device::Cpu).unwrap();
    let ids: Vec<Vec<u32>> = b.ids.to_vec2().unwrap();
    assert_eq!(ids, [[2, 4, 3, 5], [2, 7, 3, 5]]);
    assert_eq!((b.choice_lens.as_slice(), b.choices), (&[2, 2][..], 2));
    let err = ClozeBatch::encode_pairs(&t, &rows, 3, 1, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 sequences for questions of 3 choices"),
        "{err}"
    );
}

/// One LoRA step's gradients equal peft's on the tiny Llama: the same factors
/// (tools/reference/record_decoder_lora_grads.py), the lettered loss on the recorded
/// batch, every factor's gradient within 1e-4 of its largest entry.
#[test]
fn lora_gradients_match_peft() {
    use varlora::models::AnswerTokens;
    let spec = AdapterSpec::Lora(LoraConfig::new(4).alpha(8.0));
    let (model, varmap) = load("llama", DType::F32, Some(&spec), &["q_proj", "v_proj"]);
    let fixture = candle_core::safetensors::load(
        fixture_dir("llama").join("lora_grads.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let vars = varmap.data().lock().unwrap().clone();
    assert_eq!(vars.len(), 8);
    for (name, var) in &vars {
        var.set(&fixture[name.as_str()]).unwrap();
    }
    let (ids, mask, _) = expected("llama");
    let answers = AnswerTokens::new(vec![5, 17, 3, 39]).unwrap();
    let labels = Tensor::new(&[1u32, 2], &Device::Cpu).unwrap();
    let logits = model.answer_logits(&ids, &mask, &answers, true).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let theirs = fixture["loss"].to_vec1::<f32>().unwrap()[0];
    let ours = loss.to_scalar::<f32>().unwrap();
    assert!(
        (ours - theirs).abs() < 1e-5 * theirs.abs(),
        "loss {ours} against peft's {theirs}"
    );
    let grads = loss.backward().unwrap();
    for (name, var) in &vars {
        let g = grads.get(var).unwrap();
        let e = &fixture[format!("{name}.grad").as_str()];
        let scale = common::max_abs(e);
        let diff = common::max_abs_diff(g, e);
        assert!(
            diff <= 1e-4 * scale,
            "{name}: gradient off by {diff} of {scale}"
        );
    }
}

/// BLoB's Bayesian LoRA (Flipout noise) and MC dropout's LoRA run on the decoder as on the
/// encoder: sample k is reproducible, samples differ from each other and from the point
/// estimate, BLoB's KL is there, and its training forward reaches all three of its vars.
#[test]
fn blob_and_mc_dropout_adapters_run_on_the_decoder() {
    use varlora::lora::{BlobConfig, BlobSampler, McDropout};
    use varlora::predict::Posterior;
    let (ids, mask, _) = expected("llama");
    let blob = BlobSampler::new(3);
    let mc = McDropout::new(3);
    let specs = [
        AdapterSpec::Blob(BlobConfig::new(LoraConfig::new(4).alpha(8.0)), blob.clone()),
        AdapterSpec::McDropout(LoraConfig::new(4).alpha(8.0).dropout(0.3), mc.clone()),
    ];
    for (i, spec) in specs.iter().enumerate() {
        let (model, varmap) = load("llama", DType::F32, Some(spec), &["q_proj", "v_proj"]);
        // B starts at zero, which would hide the noise on A: give every var a value.
        let vars = varmap.data().lock().unwrap().clone();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for (j, name) in names.iter().enumerate() {
            if name.ends_with("lora_b") {
                let v = &vars[*name];
                v.set(&common::randn(j as u64, 0.3, v.dims(), DType::F32))
                    .unwrap();
            }
        }
        let logits = || {
            model
                .logits(&ids, &mask, false)
                .map_err(candle_core::Error::wrap)
        };
        let (point, a, again, b) = if i == 0 {
            let mut s = blob.clone();
            (
                s.with_point_estimate(logits).unwrap(),
                s.with_posterior_sample(0, logits).unwrap(),
                s.with_posterior_sample(0, logits).unwrap(),
                s.with_posterior_sample(1, logits).unwrap(),
            )
        } else {
            let mut s = mc.clone();
            (
                s.with_point_estimate(logits).unwrap(),
                s.with_posterior_sample(0, logits).unwrap(),
                s.with_posterior_sample(0, logits).unwrap(),
                s.with_posterior_sample(1, logits).unwrap(),
            )
        };
        let diff = |x: &Tensor, y: &Tensor| relative_error(x, y, &mask);
        assert_eq!(diff(&a, &again), 0.0, "spec {i}: sample 0 twice differs");
        assert!(
            diff(&a, &point) > 1e-4 && diff(&a, &b) > 1e-4,
            "spec {i}: samples do not move"
        );
        if i == 0 {
            let kl: f64 = model
                .adapters()
                .map(|a| a.kl().unwrap().unwrap().to_scalar::<f64>().unwrap())
                .sum();
            assert!(kl.is_finite() && kl > 0.0, "KL {kl}");
            let total = model.blob_kl().unwrap().to_scalar::<f64>().unwrap();
            assert!(
                (total - kl).abs() <= 1e-12 * kl,
                "blob_kl {total} against {kl}"
            );
            // q and v of both layers: what optim::Blob trains.
            assert_eq!(model.blob_layers().unwrap().len(), 4);
            let loss = model
                .logits(&ids, &mask, true)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            for name in &names {
                assert!(grads.get(&vars[*name]).is_some(), "no gradient for {name}");
            }
        }
    }
}

/// Qwen2's and Llama 3's pre-tokenizers (`tokenizer.ggml.pre` = `qwen2`, `llama-bpe`) on
/// a tiny byte-level BPE written as GGUF: the ids of transformers' tokenizer loaded from
/// the same file and of the `tokenizers` package built with their split
/// (tools/reference/record_gguf_pretokenizers.py), on strings where the two splits differ
/// (digits one by one against in threes) and where they differ from SmolLM2's.
#[test]
fn gguf_pretokenizers_match_transformers_and_tokenizers() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder/pretokenizers");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let strings = record["strings"].as_array().unwrap();
    for pre in ["qwen2", "llama-bpe"] {
        let tokenizer = varlora::models::gguf_tokenizer(&dir.join(format!("{pre}.gguf"))).unwrap();
        common::assert_same_ids(&tokenizer, strings, &record[pre], pre);
    }
}
