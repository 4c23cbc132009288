//! The decoder's two multiple-choice heads.
//!
//! - **Lettered**, as bayesian-peft and ivon-lora score: the prompt lists the choices
//!   under letters, and the predictive is the softmax over the answer tokens' logits at
//!   the last position, `logits[:, -1, answer_ids]`. Only those tokens' rows of the output
//!   matrix are multiplied, never the whole vocabulary's.
//! - **Cloze**, as lm-eval and the model cards score small models: each choice follows
//!   the question in a sequence of its own, and its logit is the summed log-likelihood of
//!   its tokens. That needs the whole vocabulary's projection, but only at the positions
//!   that predict a choice token.

use candle_core::{IndexOp, Tensor, D};
use tokenizers::Tokenizer;

use super::{packing, Attend, LlamaDecoder};
use crate::{Error, Result};

/// Multiple-choice questions encoded for the cloze head: each question followed by each
/// of its choices, one sequence apiece, question-major, left-padded.
#[derive(Clone, Debug)]
pub struct ClozeBatch {
    /// Token ids, `(questions * choices, len)`.
    pub ids: Tensor,
    /// 1 for tokens, 0 for padding, as `ids`.
    pub mask: Tensor,
    /// Each sequence's choice tokens, counted from its end.
    pub choice_lens: Vec<usize>,
    /// Choices per question.
    pub choices: usize,
}

impl ClozeBatch {
    /// Encodes `questions`, each a prompt and its choices (every question with as many),
    /// padding on the left with `pad_id`. A choice's tokens are those that the prompt
    /// followed by the choice has beyond the prompt's own, so a choice usually starts
    /// with its space (`" Paris"`); a pair that does not tokenize as the prompt's tokens
    /// and then the choice's is an error, and so is a choice with no tokens.
    pub fn encode(
        tokenizer: &Tokenizer,
        questions: &[(&str, &[&str])],
        pad_id: u32,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        let choices = questions.first().map_or(0, |q| q.1.len());
        let mut rows = Vec::new();
        for (prompt, options) in questions {
            if options.len() != choices || choices == 0 {
                return Err(Error::InvalidInput(format!(
                    "{prompt:?} has {} choices where the first question has {choices}: give \
                     every question as many, at least one",
                    options.len()
                )));
            }
            rows.extend(options.iter().map(|option| (*prompt, *option)));
        }
        Self::encode_pairs(tokenizer, &rows, choices, pad_id, dev)
    }

    /// Encodes sequences given as a context and the continuation that is scored, `choices`
    /// consecutive rows to a question: the general form of [`Self::encode`], for tasks
    /// whose choices change the context rather than the continuation (WinoGrande's
    /// partial scoring: the sentence up to its blank filled with each option, then the
    /// same rest, scored). The continuation's tokens are those that context and
    /// continuation together have beyond the context's own; a row that does not tokenize
    /// so, a continuation with no tokens, and a row count that is not a multiple of
    /// `choices` are errors.
    pub fn encode_pairs(
        tokenizer: &Tokenizer,
        rows: &[(&str, &str)],
        choices: usize,
        pad_id: u32,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        if choices == 0 || !rows.len().is_multiple_of(choices) {
            return Err(Error::InvalidInput(format!(
                "{} sequences for questions of {choices} choices: give each question all of \
                 its choices",
                rows.len()
            )));
        }
        let tokens = |s: &str| -> Result<Vec<u32>> {
            Ok(tokenizer
                .encode(s, false)
                .map_err(|e| Error::InvalidInput(format!("{s:?} does not tokenize: {e}")))?
                .get_ids()
                .to_vec())
        };
        let (mut seqs, mut choice_lens) = (Vec::new(), Vec::new());
        for (context, continuation) in rows {
            let head = tokens(context)?;
            let row = tokens(&format!("{context}{continuation}"))?;
            if !row.starts_with(&head) || row.len() == head.len() {
                return Err(Error::InvalidInput(format!(
                    "{context:?} followed by {continuation:?} does not tokenize as the \
                     context's tokens and then the continuation's"
                )));
            }
            choice_lens.push(row.len() - head.len());
            seqs.push(row);
        }
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for r in &seqs {
            ids.extend(std::iter::repeat_n(pad_id, len - r.len()).chain(r.iter().copied()));
            mask.extend((0..len).map(|t| u32::from(t >= len - r.len())));
        }
        let shape = (seqs.len(), len);
        Ok(Self {
            ids: Tensor::from_vec(ids, shape, dev)?,
            mask: Tensor::from_vec(mask, shape, dev)?,
            choice_lens,
            choices,
        })
    }
}

/// The token of each answer, in the order of the choices: what the lettered head scores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerTokens(Vec<u32>);

impl AnswerTokens {
    /// The answers' token ids. Two choices with the same token could not be told apart,
    /// so that is an error.
    ///
    /// ```
    /// use varlora::models::AnswerTokens;
    /// assert!(AnswerTokens::new(vec![330, 389, 340]).is_ok());
    /// assert!(AnswerTokens::new(vec![330, 330]).is_err());
    /// ```
    pub fn new(ids: Vec<u32>) -> Result<Self> {
        if ids.is_empty() {
            return Err(Error::InvalidInput(
                "no answer tokens: give one per choice".into(),
            ));
        }
        for (i, id) in ids.iter().enumerate() {
            if let Some(j) = ids[..i].iter().position(|x| x == id) {
                return Err(Error::InvalidInput(format!(
                    "choices {j} and {i} map to the same token {id}: give answers whose \
                     last tokens differ"
                )));
            }
        }
        Ok(Self(ids))
    }

    /// Each answer string's last sub-token, as bayesian-peft takes it (`" A"` and `"A"`
    /// may be different tokens: give the answers as they follow the prompt).
    pub fn from_strings(tokenizer: &Tokenizer, answers: &[&str]) -> Result<Self> {
        let ids = answers
            .iter()
            .map(|a| {
                let enc = tokenizer.encode(*a, false).map_err(|e| {
                    Error::InvalidInput(format!("answer {a:?} does not tokenize: {e}"))
                })?;
                enc.get_ids()
                    .last()
                    .copied()
                    .ok_or_else(|| Error::InvalidInput(format!("answer {a:?} has no tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(ids)
    }

    /// The ids, in the choices' order.
    pub fn ids(&self) -> &[u32] {
        &self.0
    }
}

impl LlamaDecoder {
    /// The lettered head: the last position's logits of the answer tokens, `(batch,
    /// choices)` (`(members * batch, choices)` with members), from those tokens' rows of
    /// the output matrix only. The prompts are left-padded, so the last column is every
    /// row's last token.
    pub fn answer_logits(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        answers: &AnswerTokens,
        train: bool,
    ) -> Result<Tensor> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = answers.ids().iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "answer token {bad} is out of range for a vocabulary of {vocab}"
            )));
        }
        let real: Vec<Vec<u32>> = mask.to_dtype(candle_core::DType::U32)?.to_vec2()?;
        for (row, keep) in real.iter().enumerate() {
            left_padded(keep, row)?;
        }
        let h = self.hidden_states(ids, mask, train)?;
        let last = h.i((.., h.dim(1)? - 1))?;
        let rows = Tensor::new(answers.ids(), ids.device())?;
        let w = self.output_rows(Some(&rows))?;
        Ok(last.matmul(&w.t()?)?)
    }

    /// The cloze head's logits `(questions, choices)` for an encoded batch: each choice's
    /// summed log-likelihood after its question, the numbers of
    /// [`Self::choice_log_likelihoods`] on the batch's rows. With members (LoRA-Ensemble,
    /// stacked samples) they are `(members * questions, choices)`, member-major.
    ///
    /// A question's sequences are packed into one row (see `packing`): the tokens they
    /// all begin with go through the layers once, each choice's rest reading them and
    /// itself only, at its own positions (sequences that share no token keep a row
    /// each). The likelihoods are the same up to float rounding. Noise drawn per token
    /// (adapter dropout, MC dropout's masks, BLoB's Flipout signs) is drawn once for the
    /// shared tokens, where separate sequences would draw it once per choice: each
    /// choice then meets the same perturbed question, as under a weight sample.
    pub fn cloze_logits(&self, batch: &ClozeBatch, train: bool) -> Result<Tensor> {
        let (rows, _) = batch.ids.dims2()?;
        if batch.choice_lens.len() != rows || batch.mask.dims() != batch.ids.dims() {
            return Err(Error::ShapeMismatch(format!(
                "a cloze batch of {rows} sequences with {} choice lengths and a mask of \
                 shape {:?}: give one length per sequence and a mask like the ids",
                batch.choice_lens.len(),
                batch.mask.dims()
            )));
        }
        let ids: Vec<Vec<u32>> = batch.ids.to_dtype(candle_core::DType::U32)?.to_vec2()?;
        let keep: Vec<Vec<u32>> = batch.mask.to_dtype(candle_core::DType::U32)?.to_vec2()?;
        let mut seqs = Vec::with_capacity(rows);
        for (row, (ids, keep)) in ids.iter().zip(&keep).enumerate() {
            let first = left_padded(keep, row)?;
            seqs.push(ids[first..].to_vec());
        }
        self.fits_context(seqs.iter().map(Vec::len).max().unwrap_or(0))?;
        let dev = batch.ids.device();
        let packed = packing::pack(&seqs, &batch.choice_lens, batch.choices, 0, dev)?;
        let (cos, sin) = self.rope.tables_at(&packed.positions)?;
        let at = Attend {
            cos,
            sin,
            bias: packed.bias,
        };
        let h = self.attend(&packed.ids, at, train)?;
        let scored = Scored {
            predictors: &packed.predictors,
            targets: &packed.targets,
            lens: &batch.choice_lens,
        };
        let ll = self.summed_log_likelihoods(&h, &scored)?;
        let questions = rows / batch.choices.max(1);
        Ok(ll.reshape((self.members * questions, batch.choices))?)
    }

    /// The cloze head: for each row of `ids` (a question followed by one choice, padded on
    /// the left), the summed log-likelihood of its last `choice_lens[row]` tokens, each
    /// predicted from the tokens before it: `(batch,)`, or `(members * batch,)`
    /// member-major with members. A choice needs at least one token before it and one of
    /// its own.
    pub fn choice_log_likelihoods(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        choice_lens: &[usize],
        train: bool,
    ) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        if choice_lens.len() != batch {
            return Err(Error::InvalidInput(format!(
                "{} choice lengths for {batch} sequences: give one per sequence",
                choice_lens.len()
            )));
        }
        let real: Vec<Vec<u32>> = mask.to_dtype(candle_core::DType::U32)?.to_vec2()?;
        for (row, (&k, keep)) in choice_lens.iter().zip(&real).enumerate() {
            let tokens = keep.iter().filter(|&&m| m != 0).count();
            if k == 0 || k >= tokens {
                return Err(Error::InvalidInput(format!(
                    "sequence {row} has {tokens} tokens and a choice of {k}: a choice needs \
                     at least one token, and at least one token before it"
                )));
            }
            left_padded(keep, row)?;
        }
        let h = self.hidden_states(ids, mask, train)?;
        // Position p predicts token p + 1: the rows before each choice token.
        let (mut predictors, mut targets) = (Vec::new(), Vec::new());
        let flat_ids: Vec<Vec<u32>> = ids.to_dtype(candle_core::DType::U32)?.to_vec2()?;
        for (row, (&k, row_ids)) in choice_lens.iter().zip(&flat_ids).enumerate() {
            for (p, &id) in row_ids.iter().enumerate().skip(len - k) {
                predictors.push((row * len + p - 1) as u32);
                targets.push(id);
            }
        }
        let scored = Scored {
            predictors: &predictors,
            targets: &targets,
            lens: choice_lens,
        };
        self.summed_log_likelihoods(&h, &scored)
    }

    /// Each sequence's summed log-likelihood of its scored tokens, `(members *
    /// sequences,)` member-major, from the hidden states `h` `(members * batch, len,
    /// hidden)`.
    fn summed_log_likelihoods(&self, h: &Tensor, s: &Scored) -> Result<Tensor> {
        let (rows, len, hidden) = h.dims3()?;
        let members = self.members;
        let per_member = rows / members * len;
        let h = h.reshape((rows * len, hidden))?;
        let predictors: Vec<u32> = (0..members)
            .flat_map(|m| {
                s.predictors
                    .iter()
                    .map(move |&p| (m * per_member) as u32 + p)
            })
            .collect();
        let targets: Vec<u32> = s.targets.repeat(members);
        let dev = h.device();
        let states = h.index_select(&Tensor::new(predictors.as_slice(), dev)?, 0)?;
        let logits = states.matmul(&self.output_rows(None)?.t()?)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = log_probs
            .gather(&Tensor::new(targets.as_slice(), dev)?.unsqueeze(1)?, 1)?
            .squeeze(1)?;
        let mut sums = Vec::with_capacity(members * s.lens.len());
        let mut start = 0;
        for &k in s.lens.iter().cycle().take(members * s.lens.len()) {
            sums.push(picked.narrow(0, start, k)?.sum_all()?);
            start += k;
        }
        Ok(Tensor::stack(&sums, 0)?)
    }
}

/// The tokens a cloze head scores: for each, the flat row of `(batch * len)` (one member's)
/// that predicts it and its id, sequence by sequence; `lens` of them to a sequence.
struct Scored<'a> {
    predictors: &'a [u32],
    targets: &'a [u32],
    lens: &'a [usize],
}

/// The first real column of a row of the mask, refusing one that is not left-padded: the
/// heads read a sequence's last tokens from the last columns, which padding on the right
/// would put there.
fn left_padded(keep: &[u32], row: usize) -> Result<usize> {
    let first = keep.iter().position(|&m| m != 0).unwrap_or(keep.len());
    if first == keep.len() || keep[first..].contains(&0) {
        return Err(Error::InvalidInput(format!(
            "sequence {row} is not padded on the left (mask {keep:?}): pad on the left, so \
             that every sequence ends in the last column"
        )));
    }
    Ok(first)
}
