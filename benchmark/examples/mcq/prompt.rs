//! The two scorings' prompts, and questions encoded into batches for the decoder's heads.
//!
//! - **Lettered**, bayesian-peft's zero-shot layout ("Return the label of the correct
//!   answer for the question below. ... Answer:"), the answer tokens " A", " B", ...; for
//!   BoolQ its passage prompt and " False" / " True". Two deviations: the choices are
//!   written "A) text" (bayesian-peft's ARC and OpenBookQA code zips text and label the
//!   other way round, writing "text) A"), and BoolQ's " True" is the answer when the
//!   answer is true (its label table maps true to " False").
//! - **Cloze**, lm-eval's: "Question: ...\nAnswer:" and each choice after it, scored by its
//!   summed token log-likelihood; BoolQ's passage first and " no" / " yes"; WinoGrande's
//!   partial scoring (the blank filled with each option, the rest of the sentence
//!   scored); HellaSwag and COPA continue their context.
//!
//! Questions with fewer choices than the batch's widest get their missing choices'
//! logits pushed to [`ABSENT`], so that they take no probability.

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;
use varlora::models::{AnswerTokens, ClozeBatch, LlamaDecoder};

use crate::data::{Form, Question};

/// The logit given to a choice a question does not have: its probability underflows to
/// zero, and `0 * log 0` stays finite in the predictive's entropies.
pub const ABSENT: f64 = -1e4;
/// SmolLM2's padding token (`<|endoftext|>`); the mask hides it.
const PAD: u32 = 0;
/// bayesian-peft cuts BoolQ's passages to 1024 characters.
const PASSAGE_CHARS: usize = 1024;

/// The scoring of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    Lettered,
    /// Each choice's summed token log-likelihood.
    Cloze,
    /// Each choice's mean token log-likelihood (lm-eval's `acc_norm` by tokens): choices
    /// of different lengths on one scale, and logits of a tamer size.
    ClozeMean,
}

fn passage(q: &Question) -> String {
    q.context
        .as_deref()
        .unwrap_or_default()
        .chars()
        .take(PASSAGE_CHARS)
        .collect()
}

/// The lettered prompt of `q`.
pub fn lettered_prompt(q: &Question) -> String {
    if q.form == Form::YesNo {
        return format!(
            "Read the passage below and answer the question with the words 'true' or \
             'false'.\n\nPassage: {}\nQuestion: {}\nAnswer (true or false):",
            passage(q),
            q.text
        );
    }
    let choices: Vec<String> = q
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}) {c}", letter(i)))
        .collect();
    let context = q
        .context
        .as_deref()
        .map_or(String::new(), |c| format!("{c}\n"));
    format!(
        "Return the label of the correct answer for the question below.\n\n{context}Question: \
         {}\nChoices:\n{}\nAnswer:",
        q.text,
        choices.join("\n")
    )
}

fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// The lettered answer strings for questions of up to `width` choices.
pub fn answer_strings(form: Form, width: usize) -> Vec<String> {
    match form {
        Form::YesNo => vec![" False".into(), " True".into()],
        _ => (0..width).map(|i| format!(" {}", letter(i))).collect(),
    }
}

/// The cloze rows of `q`, one (context, scored continuation) per choice.
pub fn cloze_rows(q: &Question) -> Vec<(String, String)> {
    match q.form {
        Form::Question | Form::YesNo => {
            let head = match q.form {
                Form::YesNo => format!("{}\n", passage(q)),
                _ => q
                    .context
                    .as_deref()
                    .map_or(String::new(), |c| format!("{c}\n")),
            };
            let prompt = format!("{head}Question: {}\nAnswer:", q.text);
            q.choices
                .iter()
                .map(|c| (prompt.clone(), format!(" {c}")))
                .collect()
        }
        Form::FillBlank => {
            let (before, after) = q.text.split_once('_').unwrap_or((&q.text, ""));
            let rest = format!(" {}", after.trim());
            q.choices
                .iter()
                .map(|c| (format!("{before}{c}"), rest.clone()))
                .collect()
        }
        Form::Continuation => q
            .choices
            .iter()
            .map(|c| (q.text.clone(), format!(" {c}")))
            .collect(),
    }
}

/// Left-padded ids and mask of `rows` token lists, each cut to its last `max_len` tokens.
fn pad_left(
    rows: &[Vec<u32>],
    max_len: usize,
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let len = rows.iter().map(|r| r.len().min(max_len)).max().unwrap_or(0);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for r in rows {
        let r = &r[r.len().saturating_sub(max_len)..];
        ids.extend(std::iter::repeat_n(PAD, len - r.len()).chain(r.iter().copied()));
        mask.extend((0..len).map(|t| u32::from(t >= len - r.len())));
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), len), dev)?,
        Tensor::from_vec(mask, (rows.len(), len), dev)?,
    ))
}

/// `logits` `(n, width)` with the choices past each question's own count at [`ABSENT`].
fn mask_absent(logits: &Tensor, qs: &[&Question]) -> candle_core::Result<Tensor> {
    let width = logits.dim(1)?;
    let offset: Vec<f32> = qs
        .iter()
        .flat_map(|q| {
            (0..width).map(move |c| {
                if c < q.choices.len() {
                    0.0
                } else {
                    ABSENT as f32
                }
            })
        })
        .collect();
    logits.broadcast_add(&Tensor::from_vec(
        offset,
        (qs.len(), width),
        logits.device(),
    )?)
}

/// A model and tokenizer scoring questions one way.
pub struct Scorer<'a> {
    pub tokenizer: &'a Tokenizer,
    pub scoring: Scoring,
    /// Every question's choices are scored as this many (the task's widest).
    pub width: usize,
    pub max_len: usize,
}

impl Scorer<'_> {
    /// The logits `(questions, width)` (`(members * questions, width)` for a model with
    /// members) of `qs` under `model`.
    pub fn logits(
        &self,
        model: &LlamaDecoder,
        qs: &[&Question],
        train: bool,
    ) -> varlora::Result<Tensor> {
        let logits = match self.scoring {
            Scoring::Lettered => self.lettered(model, qs, train)?,
            Scoring::Cloze => self.cloze(model, qs, train, false)?,
            Scoring::ClozeMean => self.cloze(model, qs, train, true)?,
        };
        let m = model.members();
        let masked: Vec<Tensor> = (0..m)
            .map(|i| mask_absent(&logits.narrow(0, i * qs.len(), qs.len())?, qs))
            .collect::<candle_core::Result<_>>()?;
        Ok(Tensor::cat(&masked, 0)?)
    }

    fn lettered(
        &self,
        model: &LlamaDecoder,
        qs: &[&Question],
        train: bool,
    ) -> varlora::Result<Tensor> {
        let form = qs.first().map_or(Form::Question, |q| q.form);
        let answers = answer_strings(form, self.width);
        let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
        let answers = AnswerTokens::from_strings(self.tokenizer, &answers)?;
        let rows = qs
            .iter()
            .map(|q| tokens(self.tokenizer, &lettered_prompt(q)))
            .collect::<varlora::Result<Vec<_>>>()?;
        let (ids, mask) = pad_left(&rows, self.max_len, &Device::Cpu)?;
        model.answer_logits(&ids, &mask, &answers, train)
    }

    fn cloze(
        &self,
        model: &LlamaDecoder,
        qs: &[&Question],
        train: bool,
        mean: bool,
    ) -> varlora::Result<Tensor> {
        let mut rows = Vec::new();
        for q in qs {
            let mut own = cloze_rows(q);
            // A question with fewer choices repeats its last one; the score is masked.
            while own.len() < self.width {
                own.push(own[own.len() - 1].clone());
            }
            rows.extend(own);
        }
        let pairs: Vec<(&str, &str)> = rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let mut batch =
            ClozeBatch::encode_pairs(self.tokenizer, &pairs, self.width, PAD, &Device::Cpu)?;
        let len = batch.ids.dim(1)?;
        if len > self.max_len {
            // Left-padded: the last columns hold every row's end, its choice included.
            batch.ids = batch.ids.narrow(1, len - self.max_len, self.max_len)?;
            batch.mask = batch.mask.narrow(1, len - self.max_len, self.max_len)?;
        }
        let logits = model.cloze_logits(&batch, train)?;
        if !mean {
            return Ok(logits);
        }
        let lens: Vec<f32> = batch.choice_lens.iter().map(|&k| k as f32).collect();
        let lens = Tensor::from_vec(lens, (qs.len(), self.width), &Device::Cpu)?;
        let m = logits.dim(0)? / qs.len();
        Ok(logits.broadcast_div(&Tensor::cat(&vec![lens; m], 0)?)?)
    }
}

fn tokens(t: &Tokenizer, s: &str) -> varlora::Result<Vec<u32>> {
    Ok(t.encode(s, false)
        .map_err(|e| varlora::Error::InvalidInput(format!("{s:?} does not tokenize: {e}")))?
        .get_ids()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(form: Form, text: &str, choices: &[&str], context: Option<&str>) -> Question {
        Question {
            context: context.map(String::from),
            text: text.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            answer: 0,
            form,
        }
    }

    #[test]
    fn prompts_lay_out_each_form() {
        let arc = q(Form::Question, "Which?", &["x", "y"], None);
        assert_eq!(
            lettered_prompt(&arc),
            "Return the label of the correct answer for the question below.\n\nQuestion: \
             Which?\nChoices:\nA) x\nB) y\nAnswer:"
        );
        assert_eq!(
            cloze_rows(&arc),
            [
                ("Question: Which?\nAnswer:".to_string(), " x".to_string()),
                ("Question: Which?\nAnswer:".into(), " y".into())
            ]
        );
        let boolq = q(Form::YesNo, "is it?", &["no", "yes"], Some("P."));
        assert!(lettered_prompt(&boolq)
            .ends_with("Passage: P.\nQuestion: is it?\nAnswer (true or false):"));
        assert_eq!(
            cloze_rows(&boolq)[1],
            ("P.\nQuestion: is it?\nAnswer:".into(), " yes".into())
        );
        assert_eq!(answer_strings(Form::YesNo, 2), [" False", " True"]);
        let wino = q(
            Form::FillBlank,
            "Ann beat Bo so _ won.",
            &["Ann", "Bo"],
            None,
        );
        assert_eq!(
            cloze_rows(&wino)[1],
            ("Ann beat Bo so Bo".into(), " won.".into())
        );
        let copa = q(
            Form::Continuation,
            "It rained therefore",
            &["we got wet."],
            None,
        );
        assert_eq!(
            cloze_rows(&copa)[0],
            ("It rained therefore".into(), " we got wet.".into())
        );
    }

    #[test]
    fn missing_choices_take_no_probability() {
        let (two, three) = (
            q(Form::Question, "a", &["x", "y"], None),
            q(Form::Question, "b", &["x", "y", "z"], None),
        );
        let logits = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let masked = mask_absent(&logits, &[&two, &three]).unwrap();
        let p: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(&masked)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(p[0][2], 0.0);
        assert!((p[0][0] - 0.5).abs() < 1e-6 && (p[1][2] - 1.0 / 3.0).abs() < 1e-6);
    }
}
