//! The corpora, the seeded split (written out for the PyTorch reference) and tokenised
//! batches.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::Tokenizer;

pub type Rows = Vec<(String, u32)>;

/// Sentences and labels of a CSV with `"label","text"` rows (labels 1 / -1 -> 1 / 0).
pub fn read_corpus(path: &Path) -> Result<Rows, Box<dyn std::error::Error>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        let label = record
            .get(0)
            .ok_or("missing label")?
            .trim_start_matches('\u{feff}');
        let text = record.get(1).ok_or("missing text")?.to_string();
        rows.push((text, u32::from(label == "1")));
    }
    Ok(rows)
}

/// The sentences of MultiEmo's English hotel and medicine reviews, if
/// `scripts/fetch-assets.sh --multiemo` fetched them (bigbench task files, whose examples'
/// `input` is the sentence).
fn read_multiemo(corpora: &Path) -> Result<Option<Vec<String>>, Box<dyn std::error::Error>> {
    let dir = corpora.join("multiemo");
    if !dir.exists() {
        return Ok(None);
    }
    let mut sentences = Vec::new();
    for domain in ["hotels", "medicine"] {
        let path = dir.join(format!("{domain}_sentence_en.json"));
        let task: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let examples = task["examples"]
            .as_array()
            .ok_or_else(|| format!("{}: no examples", path.display()))?;
        for e in examples {
            let text = e["input"]
                .as_str()
                .ok_or_else(|| format!("{}: an example without input", path.display()))?;
            sentences.push(text.to_string());
        }
    }
    Ok(Some(sentences))
}

/// Training, evaluation (test or validation) and OOD sentences: Wikipedia, and MultiEmo's
/// reviews of other domains when fetched.
pub struct Split {
    pub train: Rows,
    /// 400 training-pool sentences never trained on (the pool's last), for fitting a
    /// temperature; empty when the training set leaves fewer than 400 over.
    pub calibration: Rows,
    pub eval: Rows,
    pub ood: Rows,
    pub ood_multiemo: Option<Rows>,
}

impl Split {
    /// 800 test and 3200 training polarity sentences (the last 400 of them held out for
    /// validation on request; the training set then cut to `train_size`, and the pool's
    /// last 400 kept for calibration when the cut leaves them out), OOD Wikipedia
    /// sentences as many as evaluation ones (at most
    /// 800) and as many MultiEmo sentences if fetched (drawn with a generator of their own
    /// from `seed`, so that the other sets do not depend on whether they were); every set
    /// cut to `limit`. The split is drawn as row indices and written to
    /// `split_file`, so that the PyTorch reference (tools/reference/finetune.py) trains and
    /// evaluates on exactly the same sentences.
    pub fn draw(
        corpora: &Path,
        rng: &mut StdRng,
        spec: &SplitSpec,
        split_file: &Path,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let polarity = read_corpus(&corpora.join("polarity-en-pang&lee2.csv"))?;
        let wiki = read_corpus(&corpora.join("uncertainty-conll2010.csv"))?;
        if polarity.len() < 1600 || wiki.len() < 800 {
            return Err(
                "the corpora are shorter than expected: run scripts/fetch-assets.sh".into(),
            );
        }
        let multiemo = read_multiemo(corpora)?;
        let sizes = (polarity.len(), wiki.len(), multiemo.as_ref().map(Vec::len));
        let idx = SplitIndices::draw(sizes, rng, spec);
        std::fs::write(split_file, serde_json::to_string(&idx)?)?;
        let pick = |rows: &Rows, idx: &[usize]| idx.iter().map(|&i| rows[i].clone()).collect();
        Ok(Self {
            train: pick(&polarity, &idx.train),
            calibration: pick(&polarity, &idx.calibration),
            eval: pick(&polarity, &idx.eval),
            ood: pick(&wiki, &idx.ood),
            ood_multiemo: multiemo
                .zip(idx.ood_multiemo)
                .map(|(m, idx)| idx.iter().map(|&i| (m[i].clone(), 0)).collect()),
        })
    }
}

/// How [`Split::draw`] draws: the seed of MultiEmo's own generator, whether to hold out
/// a validation set, the training set's size, and the cut of every set.
pub struct SplitSpec {
    pub seed: u64,
    pub validation: bool,
    pub train_size: usize,
    pub limit: usize,
}

/// The split as row indices into the corpora: the split file's contents (its fields in
/// the files' alphabetical order).
#[derive(serde::Serialize)]
struct SplitIndices {
    calibration: Vec<usize>,
    eval: Vec<usize>,
    ood: Vec<usize>,
    ood_multiemo: Option<Vec<usize>>,
    polarity_rows: usize,
    train: Vec<usize>,
    wiki_rows: usize,
}

impl SplitIndices {
    /// The indices for corpora of `(polarity, wiki, multiemo)` rows.
    fn draw(
        (polarity_rows, wiki_rows, multiemo_rows): (usize, usize, Option<usize>),
        rng: &mut StdRng,
        spec: &SplitSpec,
    ) -> Self {
        let mut order: Vec<usize> = (0..polarity_rows).collect();
        order.shuffle(rng);
        let (test, train) = order.split_at(800);
        let (train, eval) = if spec.validation {
            train.split_at(train.len() - 400)
        } else {
            (train, test)
        };
        let mut wiki_order: Vec<usize> = (0..wiki_rows).collect();
        wiki_order.shuffle(rng);
        let calibration = if spec.train_size.saturating_add(400) <= train.len() {
            &train[train.len() - 400..]
        } else {
            &[]
        };
        let limit = spec.limit;
        let eval = &eval[..eval.len().min(limit)];
        let ood = &wiki_order[..eval.len().min(800)];
        let ood_multiemo = multiemo_rows.map(|rows| {
            let mut order: Vec<usize> = (0..rows).collect();
            order.shuffle(&mut StdRng::seed_from_u64(spec.seed ^ 0x3e30));
            order.truncate(ood.len());
            order
        });
        Self {
            calibration: calibration[..calibration.len().min(limit)].to_vec(),
            eval: eval.to_vec(),
            ood: ood.to_vec(),
            ood_multiemo,
            polarity_rows,
            train: train[..train.len().min(spec.train_size)].to_vec(),
            wiki_rows,
        }
    }
}

pub struct Batch {
    pub ids: Tensor,
    pub types: Tensor,
    pub mask: Tensor,
    pub labels: Tensor,
}

/// Tokenised batches of `size` rows, in order.
pub fn batches(
    tokenizer: &Tokenizer,
    rows: &[(String, u32)],
    size: usize,
    dev: &Device,
) -> Result<Vec<Batch>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for chunk in rows.chunks(size) {
        let texts: Vec<&str> = chunk.iter().map(|(t, _)| t.as_str()).collect();
        let (ids, types, mask) = crate::minilm::encode(tokenizer, texts, dev)?;
        out.push(Batch {
            ids,
            types,
            mask,
            labels: Tensor::new(chunk.iter().map(|(_, y)| *y).collect::<Vec<_>>(), dev)?,
        });
    }
    Ok(out)
}
