//! A question's cloze sequences packed into one row: the tokens they all begin with (the
//! question, usually) once, then each sequence's rest, each rest reading the shared
//! beginning and its own tokens only, at the positions it has in its own sequence.
//!
//! That is the same attention, token for token, as each sequence on its own, so the
//! choices' log-likelihoods are the same numbers (up to the order of float sums), while
//! the question's tokens go through the layers once rather than once per choice: ARC's
//! long questions and short answers shrink to about a third of the tokens. A question
//! whose sequences share no token keeps one row per sequence, as it would unpacked. Rows
//! short enough then share a line of the batch, up to the longest row's width, instead of
//! each being padded to it.

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Sequences packed a row per question (a row per sequence where a question's share
/// nothing), the rows in lines of the batch, left-padded, with what the cloze head reads.
pub(crate) struct Packed {
    /// Token ids `(lines, len)`.
    pub ids: Tensor,
    /// Each token's position in its own sequence, `(lines, len)`: the shared beginning
    /// from 0, each rest from where the beginning ends.
    pub positions: Tensor,
    /// The attention bias `(lines, len, len)`: 0 where a query may read a key, the lowest
    /// f32 elsewhere.
    pub bias: Tensor,
    /// For every scored token, sequence by sequence in order: the flat index into `(lines
    /// * len)` of the token that predicts it, and its id.
    pub predictors: Vec<u32>,
    pub targets: Vec<u32>,
}

/// One row before padding.
struct Row {
    ids: Vec<u32>,
    positions: Vec<u32>,
    /// Each token's segment: 0 for the shared beginning, `1 + s` for sequence `s`'s rest.
    segments: Vec<usize>,
    /// Scored tokens: (index in the row of the predicting token, id).
    scored: Vec<(usize, u32)>,
}

/// Packs `seqs` (each sequence's real tokens, `choices` consecutive ones a question) whose
/// last `choice_lens` tokens are scored. The shared beginning stops before any sequence's
/// scored tokens, so that every scored token is predicted inside its own segment or from
/// the beginning's last token. Each sequence needs a token before its scored ones.
pub(crate) fn pack(
    seqs: &[Vec<u32>],
    choice_lens: &[usize],
    choices: usize,
    pad_id: u32,
    dev: &Device,
) -> Result<Packed> {
    if choices == 0 || !seqs.len().is_multiple_of(choices) || seqs.len() != choice_lens.len() {
        return Err(Error::InvalidInput(format!(
            "{} sequences and {} choice lengths for questions of {choices} choices: give \
             every question all of its choices, and one length per sequence",
            seqs.len(),
            choice_lens.len()
        )));
    }
    let questions: Vec<Vec<Row>> = seqs
        .chunks(choices)
        .zip(choice_lens.chunks(choices))
        .map(|(s, k)| pack_question(s, k))
        .collect::<Result<_>>()?;
    let rows: Vec<Row> = questions.into_iter().flatten().collect();
    let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let lines = share_lines(&rows, len);
    let mut batch = Batch::new(lines.len(), len, pad_id);
    // Where each row went: the flat index of its first token.
    let mut start = vec![0; rows.len()];
    for (l, line) in lines.iter().enumerate() {
        for (&r, first) in line
            .iter()
            .zip(batch.write(l, line.iter().map(|&r| &rows[r])))
        {
            start[r] = first;
        }
    }
    let (mut predictors, mut targets) = (Vec::new(), Vec::new());
    for (row, &first) in rows.iter().zip(&start) {
        for &(from, id) in &row.scored {
            predictors.push((first + from) as u32);
            targets.push(id);
        }
    }
    let shape = (lines.len(), len);
    Ok(Packed {
        ids: Tensor::from_vec(batch.ids, shape, dev)?,
        positions: Tensor::from_vec(batch.positions, shape, dev)?,
        bias: Tensor::from_vec(batch.bias, (lines.len(), len, len), dev)?,
        predictors,
        targets,
    })
}

/// A packed batch being written, line by line.
struct Batch {
    len: usize,
    pad_id: u32,
    ids: Vec<u32>,
    positions: Vec<u32>,
    bias: Vec<f32>,
}

impl Batch {
    /// `lines` lines of `len` columns, every key hidden from every query.
    fn new(lines: usize, len: usize, pad_id: u32) -> Self {
        Self {
            len,
            pad_id,
            ids: Vec::with_capacity(lines * len),
            positions: Vec::with_capacity(lines * len),
            bias: vec![f32::MIN; lines * len * len],
        }
    }

    /// Writes `rows` side by side into line `l` (the next one), padded on the left, each
    /// row's tokens reading their shared beginning and their own segment only; returns
    /// each row's first token as a flat index into `(lines * len)`.
    fn write<'a>(&mut self, l: usize, rows: impl Iterator<Item = &'a Row> + Clone) -> Vec<usize> {
        let len = self.len;
        let mut at = len - rows.clone().map(|r| r.ids.len()).sum::<usize>();
        self.ids.extend(std::iter::repeat_n(self.pad_id, at));
        self.positions.extend(std::iter::repeat_n(0, at));
        let mut firsts = Vec::new();
        for row in rows {
            firsts.push(l * len + at);
            self.ids.extend(&row.ids);
            self.positions.extend(&row.positions);
            for (i, &own) in row.segments.iter().enumerate() {
                let query = (l * len + at + i) * len + at;
                for (j, &seg) in row.segments[..=i].iter().enumerate() {
                    if seg == 0 || seg == own {
                        self.bias[query + j] = 0.0;
                    }
                }
            }
            at += row.ids.len();
        }
        firsts
    }
}

/// The rows grouped into lines of at most `len` tokens, first fit in decreasing length:
/// rows that fit beside each other in the longest row's width share a line rather than
/// each being padded to it, so that padding costs no layer any work it can spare. A line's
/// rows never read each other.
fn share_lines(rows: &[Row], len: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&r| std::cmp::Reverse(rows[r].ids.len()));
    let mut lines: Vec<(usize, Vec<usize>)> = Vec::new();
    for r in order {
        let n = rows[r].ids.len();
        match lines.iter_mut().find(|(used, _)| used + n <= len) {
            Some((used, line)) => {
                *used += n;
                line.push(r);
            }
            None => lines.push((n, vec![r])),
        }
    }
    lines.into_iter().map(|(_, line)| line).collect()
}

/// One question's sequences as one row, or one row each where they share no token:
/// packed, they would only meet in a longer attention.
fn pack_question(seqs: &[Vec<u32>], choice_lens: &[usize]) -> Result<Vec<Row>> {
    for (s, &k) in seqs.iter().zip(choice_lens) {
        if k == 0 || k >= s.len() {
            return Err(Error::InvalidInput(format!(
                "a sequence of {} tokens with a choice of {k}: a choice needs at least one \
                 token, and at least one token before it",
                s.len()
            )));
        }
    }
    let first = &seqs[0];
    let shared = seqs
        .iter()
        .zip(choice_lens)
        .map(|(s, &k)| {
            let common = s.iter().zip(first).take_while(|(a, b)| a == b).count();
            common.min(s.len() - k)
        })
        .min()
        .unwrap_or(0);
    if shared == 0 {
        return Ok(seqs
            .iter()
            .zip(choice_lens)
            .map(|(s, &k)| layout(std::slice::from_ref(s), &[k], s.len() - k))
            .collect());
    }
    Ok(vec![layout(seqs, choice_lens, shared)])
}

/// `seqs` in one row: their first `shared` tokens (the same in each, none of them
/// scored) once, then each sequence's rest.
fn layout(seqs: &[Vec<u32>], choice_lens: &[usize], shared: usize) -> Row {
    let mut row = Row {
        ids: seqs[0][..shared].to_vec(),
        positions: (0..shared as u32).collect(),
        segments: vec![0; shared],
        scored: Vec::new(),
    };
    for (n, (s, &k)) in seqs.iter().zip(choice_lens).enumerate() {
        for (p, &id) in s.iter().enumerate().skip(shared) {
            if p >= s.len() - k {
                // Position p is predicted by position p - 1: the rest's previous token, or
                // the shared beginning's last.
                let at = if p == shared {
                    shared - 1
                } else {
                    row.ids.len() - 1
                };
                row.scored.push((at, id));
            }
            row.ids.push(id);
            row.positions.push(p as u32);
            row.segments.push(n + 1);
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two questions: the first's choices share "5 6" and take one row; the second's share
    /// nothing and take a row each, the two side by side in one line. Each scored token
    /// is predicted by the token before it in its own sequence, and each rest reads the
    /// beginning and itself only.
    #[test]
    fn packs_shared_beginnings_once() {
        let seqs = vec![vec![5, 6, 7], vec![5, 6, 8, 9], vec![1, 2], vec![3, 4]];
        let p = pack(&seqs, &[1, 2, 1, 1], 2, 0, &Device::Cpu).unwrap();
        let ids: Vec<Vec<u32>> = p.ids.to_vec2().unwrap();
        assert_eq!(ids, [[5, 6, 7, 8, 9], [0, 1, 2, 3, 4]]);
        let pos: Vec<Vec<u32>> = p.positions.to_vec2().unwrap();
        assert_eq!(pos, [[0, 1, 2, 2, 3], [0, 0, 1, 0, 1]]);
        // 7 from 6 (line 0, column 1); 8 from 6; 9 from 8 (column 3); 2 from 1 (line 1,
        // column 1: flat 5 + 1); 4 from 3 (flat 5 + 3).
        assert_eq!(p.predictors, [1, 1, 3, 6, 8]);
        assert_eq!(p.targets, [7, 8, 9, 2, 4]);
        let reads = |q: usize, i: usize| -> Vec<usize> {
            let b: Vec<Vec<Vec<f32>>> = p.bias.to_vec3().unwrap();
            (0..5).filter(|&j| b[q][i][j] == 0.0).collect()
        };
        assert_eq!(reads(0, 2), [0, 1, 2]);
        assert_eq!(reads(0, 4), [0, 1, 3, 4]);
        assert_eq!(reads(1, 2), [1, 2]);
        assert_eq!(reads(1, 4), [3, 4]);
        assert_eq!(reads(1, 0), Vec::<usize>::new());
    }

    #[test]
    fn refuses_a_choice_with_nothing_before_it() {
        let err = pack(&[vec![5, 6]], &[2], 1, 0, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("a sequence of 2 tokens with a choice of 2"),
            "{err}"
        );
    }
}
