//! The cloze head packs a question's sequences into one row (their shared beginning once,
//! each rest reading it and itself at its own positions). It must give what the same
//! sequences give one by one, which `multiple_choice_heads_match_transformers_logits`
//! checks against transformers: the log-likelihoods, their gradients to the adapters, and
//! every member's, on questions that share a question, share a beginning only up to a
//! blank (WinoGrande's layout), or share nothing (their rows then share lines with the
//! others': three lines of 13 tokens for the five rows).

mod common;

use candle_core::{DType, Device, Tensor};
use common::tiny_decoder::load;
use common::{max_abs, max_abs_diff};
use varlora::lora::LoraConfig;
use varlora::models::{AdapterSpec, ClozeBatch, LlamaDecoder};

/// Packed against one by one, relative to the largest value (see the first test).
const TOL: f32 = 1e-6;

/// Three questions of three choices, each sequence with its scored length: a shared
/// question and choices of 1 to 3 tokens; WinoGrande's layout (the options fill a blank,
/// the same rest is scored); and sequences that share nothing.
fn questions() -> Vec<(Vec<u32>, usize)> {
    vec![
        (vec![3, 7, 11, 2, 5], 1),
        (vec![3, 7, 11, 2, 9, 14], 2),
        (vec![3, 7, 11, 2, 21, 22, 23], 3),
        (vec![4, 6, 8, 12, 30, 31], 2),
        (vec![4, 6, 8, 13, 30, 31], 2),
        (vec![4, 6, 15, 30, 31], 2),
        (vec![1, 2, 3], 1),
        (vec![9, 8, 7, 6], 1),
        (vec![10, 11], 1),
    ]
}

/// The sequences left-padded into a batch, as `ClozeBatch::encode` lays them out.
fn batch(dev: &Device) -> ClozeBatch {
    let rows = questions();
    let len = rows.iter().map(|(s, _)| s.len()).max().unwrap();
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for (s, _) in &rows {
        ids.extend(std::iter::repeat_n(0u32, len - s.len()).chain(s.iter().copied()));
        mask.extend((0..len).map(|t| u32::from(t >= len - s.len())));
    }
    ClozeBatch {
        ids: Tensor::from_vec(ids, (rows.len(), len), dev).unwrap(),
        mask: Tensor::from_vec(mask, (rows.len(), len), dev).unwrap(),
        choice_lens: rows.iter().map(|&(_, k)| k).collect(),
        choices: 3,
    }
}

/// The sequences one by one: the unpacked head, reshaped as the packed one's output.
fn unpacked(model: &LlamaDecoder, b: &ClozeBatch) -> Tensor {
    let ll = model
        .choice_log_likelihoods(&b.ids, &b.mask, &b.choice_lens, true)
        .unwrap();
    ll.reshape(((), b.choices)).unwrap()
}

fn relative(ours: &Tensor, theirs: &Tensor) -> f32 {
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    max_abs_diff(&f(ours), &f(theirs)) / max_abs(&f(theirs))
}

/// In f64, so that a packing error is not lost in rounding: the log-likelihoods and every
/// adapter var's gradient of a loss that weighs each choice differently. What rounding is
/// left comes from RoPE's tables, f32 as transformers computes them: a padded sequence's
/// positions start later than its packed twin's, and the same distance is then rotated by
/// angles rounded differently (3e-8 of the largest log-likelihood on Qwen3's base).
#[test]
fn packed_cloze_equals_the_sequences_one_by_one() {
    let spec = AdapterSpec::Lora(LoraConfig::new(2).alpha(4.0));
    // f32 runs the fused CPU kernels (per-sequence RoPE tables, the masked softmax's
    // per-query bias) that f64 composes from candle's ops.
    for (arch, dtype, tol) in [
        ("llama", DType::F64, TOL),
        ("qwen3", DType::F64, TOL),
        ("qwen3", DType::F32, 1e-4),
    ] {
        let (model, varmap) = load(arch, dtype, Some(&spec), &["q_proj", "v_proj"]);
        common::randomize_lora_b(&varmap, 70, 0.3, dtype);
        let b = batch(&Device::Cpu);
        let (packed, single) = (model.cloze_logits(&b, true).unwrap(), unpacked(&model, &b));
        assert_eq!(packed.dims(), [3, 3]);
        let err = relative(&packed, &single);
        assert!(
            err < tol,
            "{arch} {dtype:?}: log-likelihoods differ by {err:e}"
        );

        let weights = common::randn(5, 1.0, &[3, 3], dtype);
        let grads = |out: &Tensor| (out * &weights).unwrap().sum_all().unwrap().backward();
        let (gp, gs) = (grads(&packed).unwrap(), grads(&single).unwrap());
        let vars = varmap.all_vars();
        assert!(!vars.is_empty());
        for v in &vars {
            let (p, s) = (gp.get(v).unwrap(), gs.get(v).unwrap());
            assert!(max_abs(&s.to_dtype(DType::F32).unwrap()) > 0.0);
            let err = relative(p, s);
            assert!(err < tol, "{arch} {dtype:?}: a gradient differs by {err:e}");
        }
    }
}

/// Each LoRA-Ensemble member's rows of the packed head are its sequences' log-likelihoods
/// one by one, member-major.
#[test]
fn packed_cloze_keeps_each_member() {
    let spec = AdapterSpec::Ensemble {
        members: 3,
        rank: 2,
    };
    let (model, varmap) = load("llama", DType::F64, Some(&spec), &["q_proj", "v_proj"]);
    common::randomize_lora_b(&varmap, 70, 0.3, DType::F64);
    let b = batch(&Device::Cpu);
    let packed = model.cloze_logits(&b, false).unwrap();
    assert_eq!(packed.dims(), [3 * 3, 3]);
    let err = relative(&packed, &unpacked(&model, &b));
    assert!(err < TOL, "members' log-likelihoods differ by {err:e}");
}

/// A batch whose parts disagree is an error, and so is a choice with nothing before it.
#[test]
fn packed_cloze_refuses_a_malformed_batch() {
    let (model, _) = load("llama", DType::F32, None, &[]);
    let mut b = batch(&Device::Cpu);
    b.choice_lens.pop();
    let err = model.cloze_logits(&b, false).unwrap_err().to_string();
    assert!(err.contains("9 sequences with 8 choice lengths"), "{err}");
    let mut b = batch(&Device::Cpu);
    b.choice_lens[8] = 2;
    let err = model.cloze_logits(&b, false).unwrap_err().to_string();
    assert!(
        err.contains("a sequence of 2 tokens with a choice of 2"),
        "{err}"
    );
}
