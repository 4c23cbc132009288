//! Fine-tunes SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantized) with LoRA and IVON on
//! multiple-choice questions scored by cloze (each choice's summed log-likelihood after
//! the question is its logit; a model this small learns nothing from lettered choices),
//! then prints the predictive, with its epistemic part, for a question of yours. The
//! questions are generated here: sums of two numbers below 50, four choices one apart (no
//! licence to state; nothing is downloaded but the model).
//!
//! `bash scripts/fetch-assets.sh --llm`, then
//! `cargo run --release --example smollm2_ivon [-- "What is 12 + 9?" 20 21 22 23]`

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss, Optimizer, VarBuilder, VarMap};
use tokenizers::Tokenizer;
use varlora::lora::LoraConfig;
use varlora::lora::TargetModules;
use varlora::models::{gguf_tokenizer, AdapterSpec, ClozeBatch, GgufDecoder, LlamaDecoder};
use varlora::optim::{Ivon, IvonConfig};
use varlora::predict::predictive;

const GGUF: &str = "assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
type Res<T> = Result<T, Box<dyn std::error::Error>>;
type Question = (String, Vec<String>, u32);

/// Question `i`: its prompt, four choices and the index of the right one.
fn question(i: u64) -> (String, Vec<String>, u32) {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16;
    let (a, b, right) = (h % 50, (h >> 8) % 50, (h >> 16) % 4);
    let choices = (0..4).map(|c| format!(" {}", a + b + c - right)).collect();
    (
        format!("Question: What is {a} + {b}?\nAnswer:"),
        choices,
        right as u32,
    )
}

/// The `(questions, 4)` cloze logits of `qs`: each choice's log-likelihood.
fn logits(
    m: &LlamaDecoder,
    t: &Tokenizer,
    qs: &[Question],
    train: bool,
) -> varlora::Result<Tensor> {
    let choices: Vec<Vec<&str>> = qs
        .iter()
        .map(|q| q.1.iter().map(String::as_str).collect())
        .collect();
    let pairs: Vec<(&str, &[&str])> = qs
        .iter()
        .zip(&choices)
        .map(|(q, c)| (q.0.as_str(), c.as_slice()))
        .collect();
    m.cloze_logits(&ClozeBatch::encode(t, &pairs, 2, &Device::Cpu)?, train)
}

fn main() -> Res<()> {
    varlora::alloc::keep_freed_memory();
    let dev = Device::Cpu;
    let gguf = GgufDecoder::read(GGUF.as_ref(), &dev)
        .map_err(|e| format!("{e}: run bash scripts/fetch-assets.sh --llm"))?;
    let tokenizer = gguf_tokenizer(GGUF.as_ref())?;
    let adapters = VarMap::new();
    let model = LlamaDecoder::load(
        VarBuilder::from_tensors(gguf.tensors, DType::F32, &dev),
        VarBuilder::from_varmap(&adapters, DType::F32, &dev),
        &gguf.config,
        Some(&AdapterSpec::Lora(LoraConfig::new(8).alpha(16.0))),
        &TargetModules::new(["q_proj", "v_proj"]),
    )?;
    model.init(0)?;
    // IVON with ivon-lora's ARC setting of ess (1e6), not tuned here.
    let mut ivon = Ivon::from_varmap(&adapters, IvonConfig::new(0.03, 1e6).clip_radius(0.02))?;
    let (train, test): (Vec<_>, Vec<_>) = (
        (0..160).map(question).collect(),
        (1000..1048).map(question).collect(),
    );

    // Predictions run on a detached copy (the same weights, IVON's samples included),
    // which keeps no autograd graph.
    let frozen = model.detach();
    // Accuracy and mean mutual information of 10 posterior samples on the test questions
    // (before training B is zero, so every sample is the pretrained model).
    let evaluate = |ivon: &mut Ivon, what: &str| -> Res<()> {
        let (mut right, mut mi) = (0, 0f64);
        for qs in test.chunks(8) {
            let pred = predictive(ivon, 10, false, || {
                logits(&frozen, &tokenizer, qs, false).map_err(candle_core::Error::wrap)
            })?;
            let best: Vec<u32> = pred.probs.argmax(1)?.to_vec1()?;
            right += best.iter().zip(qs).filter(|(b, q)| **b == q.2).count();
            mi += pred
                .epistemic
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        let n = test.len() as f64;
        println!(
            "{what}: accuracy {:.1}% on {n} test questions, mean mutual information {mi:.1e}",
            100.0 * right as f64 / n,
            mi = mi / n
        );
        Ok(())
    };
    evaluate(&mut ivon, "before fine-tuning")?;
    for (step, qs) in train.chunks(4).enumerate() {
        let labels = Tensor::new(qs.iter().map(|q| q.2).collect::<Vec<_>>(), &dev)?;
        let nll = loss::cross_entropy(&logits(&model, &tokenizer, qs, true)?, &labels)?;
        if step % 10 == 0 {
            println!("step {step:3}: loss {:.3}", nll.to_scalar::<f32>()?);
        }
        ivon.backward_step(&nll)?;
    }
    evaluate(&mut ivon, "after 40 IVON steps")?;

    // Yours: a question and four choices on the command line, or a generated one.
    let q = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [text, a, b, c, d] => (
            format!("Question: {text}\nAnswer:"),
            [a, b, c, d].map(|x| format!(" {x}")).to_vec(),
            0,
        ),
        _ => question(7777),
    };
    let pred = predictive(&mut ivon, 10, false, || {
        logits(&frozen, &tokenizer, std::slice::from_ref(&q), false)
            .map_err(candle_core::Error::wrap)
    })?;
    println!("\n{}", q.0);
    let p: Vec<f64> = pred.probs.squeeze(0)?.to_dtype(DType::F64)?.to_vec1()?;
    for (choice, p) in q.1.iter().zip(&p) {
        println!("  {choice:>6}  {p:.3}");
    }
    let nats =
        |t: &Tensor| -> Res<f64> { Ok(t.to_dtype(DType::F64)?.squeeze(0)?.to_scalar::<f64>()?) };
    let (total, aleatoric, epistemic) = (
        nats(&pred.total)?,
        nats(&pred.aleatoric)?,
        nats(&pred.epistemic)?,
    );
    println!("uncertainty (nats): total {total:.4} = aleatoric {aleatoric:.4} + epistemic {epistemic:.1e}");
    Ok(())
}
