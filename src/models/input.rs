//! From token ids to what the transformer layers take: the embeddings of the real tokens
//! (padding skipped), repeated for ensemble members, and the attention mask's bias.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{embedding, Embedding, VarBuilder};

use super::norm::Norm;
use super::BertConfig;
use crate::ensemble::LoraEnsembleLinear;
use crate::kernels::layers::RowIndex;
use crate::{Error, Result};

/// The embedding layer: word, position and token-type tables, summed and normalised.
#[derive(Clone, Debug)]
pub(crate) struct Embeddings {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: Norm,
}

/// A batch ready for the transformer layers.
pub(crate) struct Packed {
    /// The real tokens' normalised embeddings, `(members * tokens, hidden)`, member-major.
    pub x: Tensor,
    /// Where the real tokens sit in the padded `(members * batch, seq)` layout.
    pub tokens: Tokens,
    /// `(members * batch, seq)`: 0 for a token, a large negative number for padding, so
    /// that padded keys get no attention.
    pub key_bias: Tensor,
}

impl Embeddings {
    /// The tables and norm under `vb` (`embeddings` of a BERT checkpoint).
    pub(crate) fn load(config: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = config.hidden_size;
        Ok(Self {
            word: embedding(config.vocab_size, h, vb.pp("word_embeddings"))?,
            position: embedding(
                config.max_position_embeddings,
                h,
                vb.pp("position_embeddings"),
            )?,
            token_type: embedding(config.type_vocab_size, h, vb.pp("token_type_embeddings"))?,
            norm: Norm::load(h, config.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    /// From the tables `(rows, hidden)` and the norm.
    pub(crate) fn new(
        word: Tensor,
        position: Tensor,
        token_type: Tensor,
        norm: Norm,
    ) -> Result<Self> {
        let h = word.dim(1)?;
        Ok(Self {
            word: Embedding::new(word, h),
            position: Embedding::new(position, h),
            token_type: Embedding::new(token_type, h),
            norm,
        })
    }

    /// The tables' device.
    pub(crate) fn device(&self) -> &Device {
        self.word.embeddings().device()
    }

    /// The tables' dtype, which the layers compute in.
    pub(crate) fn dtype(&self) -> DType {
        self.word.embeddings().dtype()
    }

    /// The tables and norm under their Hugging Face names (`embeddings.*`).
    pub(crate) fn insert_into(&self, out: &mut HashMap<String, Tensor>) {
        for (name, e) in [
            ("word_embeddings", &self.word),
            ("position_embeddings", &self.position),
            ("token_type_embeddings", &self.token_type),
        ] {
            out.insert(format!("embeddings.{name}.weight"), e.embeddings().clone());
        }
        self.norm.insert_into(out, "embeddings.LayerNorm");
    }

    /// The batch `input_ids` and `token_type_ids` `(batch, seq)` with `attention_mask`
    /// (1 for tokens, 0 for padding; all ones if `None`), for `members` members. Shapes
    /// that do not fit each other or `config` are a `ShapeMismatch` error.
    pub(crate) fn pack(
        &self,
        config: &BertConfig,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        members: usize,
    ) -> Result<Packed> {
        let (batch, seq) = input_ids.dims2()?;
        check_inputs(config, batch, seq, token_type_ids, attention_mask)?;
        let positions = Tensor::arange(0u32, seq as u32, input_ids.device())?;
        let x = (self.word.forward(input_ids)? + self.token_type.forward(token_type_ids)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let mask = match attention_mask {
            Some(m) => m.ne(0u32)?,
            None => input_ids.ones_like()?.to_dtype(DType::U8)?,
        };
        let mask = repeat_members(&mask, members)?;
        let tokens = Tokens::new(&mask)?;
        let x = repeat_members(&x, members)?.reshape(((), config.hidden_size))?;
        let x = self.norm.forward(&tokens.pack(&x)?)?;
        let key_bias = ((1. - mask.to_dtype(x.dtype())?)? * f64::from(f32::MIN))?;
        Ok(Packed {
            x,
            tokens,
            key_bias,
        })
    }
}

/// `seq` within the model's positions, and the token types and mask `(batch, seq)`.
fn check_inputs(
    config: &BertConfig,
    batch: usize,
    seq: usize,
    token_type_ids: &Tensor,
    attention_mask: Option<&Tensor>,
) -> Result<()> {
    if seq > config.max_position_embeddings {
        return Err(Error::InvalidInput(format!(
            "{seq} tokens, but the model has {} positions",
            config.max_position_embeddings
        )));
    }
    for (name, t) in [
        ("token_type_ids", Some(token_type_ids)),
        ("attention_mask", attention_mask),
    ] {
        if let Some(t) = t {
            if t.dims() != [batch, seq] {
                return Err(Error::ShapeMismatch(format!(
                    "{name} of shape {:?} for input_ids of shape [{batch}, {seq}]",
                    t.dims()
                )));
            }
        }
    }
    Ok(())
}

/// `x` `(batch, ...)` repeated `members` times, member-major: `(members * batch, ...)`.
pub(crate) fn repeat_members(x: &Tensor, members: usize) -> Result<Tensor> {
    if members == 1 {
        return Ok(x.clone());
    }
    let mut dims = x.dims().to_vec();
    let stacked = LoraEnsembleLinear::repeat_members(x, members)?;
    dims[0] *= members;
    Ok(stacked.reshape(dims)?)
}

/// The real tokens of a padded batch: the rows of the flattened `(batch * seq, hidden)`
/// positions the mask keeps.
pub(crate) struct Tokens {
    /// Flat positions of the real tokens, ascending; `None` when there is no padding.
    index: Option<RowIndex>,
    positions: usize,
}

impl Tokens {
    pub(crate) fn new(mask: &Tensor) -> Result<Self> {
        let keep = mask.flatten_all()?.to_vec1::<u8>()?;
        let index: Vec<u32> = (0..keep.len() as u32)
            .filter(|&i| keep[i as usize] != 0)
            .collect();
        let index = if index.len() == keep.len() {
            None
        } else {
            Some(RowIndex::new(index, keep.len(), mask.device())?)
        };
        Ok(Self {
            index,
            positions: keep.len(),
        })
    }

    /// `(batch * seq, hidden)` to the real tokens' rows.
    pub(crate) fn pack(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.index {
            Some(i) => i.gather(x),
            None => Ok(x.clone()),
        }
    }

    /// The sequence (row of the mask) each real token belongs to, `(tokens,)` u32.
    pub(crate) fn sequence_of_tokens(&self, seq: usize, dev: &Device) -> Result<Tensor> {
        let seq = seq.max(1) as u32;
        let flat: Vec<u32> = match &self.index {
            Some(i) => i.rows().to_vec(),
            None => (0..self.positions as u32).collect(),
        };
        let n = flat.len();
        Ok(Tensor::from_vec(
            flat.into_iter().map(|p| p / seq).collect::<Vec<_>>(),
            n,
            dev,
        )?)
    }

    /// The real tokens' rows back to `(batch * seq, hidden)`, zero at padding.
    pub(crate) fn unpack(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.index {
            Some(i) => i.scatter(x),
            None => Ok(x.clone()),
        }
    }
}
